"""The contract every mirror database adapter (sink) implements."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from applier.transaction import MirrorPosition, Transaction
from funnel.errors import SinkError


class Sink(Protocol):
    """A mirror database that applies whole source transactions with their position.

    The position is stored in the mirror itself, in the same database transaction as
    the rows it describes, so after any crash the mirror and its position agree.
    """

    def read_position(self, funnel: str, mirror: str) -> MirrorPosition | None:
        """The stored position of ``mirror`` for ``funnel``, or None if it never applied.

        Raises SinkError if the state table cannot be read.
        """
        ...

    def claim(self, funnel: str, mirror: str) -> MirrorPosition | None:
        """Take the state row of ``mirror`` for this sink and return its position (None: never applied).

        Every sink that claimed it before is fenced from then on: its next ``apply`` of
        that mirror rolls back and raises FencedError.  Raises SinkError.
        """
        ...

    def check_fence(self, funnel: str, mirror: str) -> None:
        """Raises FencedError when another sink claimed ``mirror`` after this one did."""
        ...

    def epoch(self, funnel: str, mirror: str) -> int | None:
        """The epoch this sink claimed for ``mirror`` (None: it never claimed it)."""
        ...

    def apply(self, transactions: Sequence[Transaction], position: MirrorPosition) -> int:
        """Apply all ``transactions`` in order and store ``position``, in ONE database transaction.

        Returns the number of row changes applied.  On any error nothing of the call is
        applied (rows and position are rolled back together) and SinkError is raised,
        naming the table and transaction where possible; FencedError when the mirror
        was claimed by another sink since this one claimed it.
        """
        ...

    def close(self) -> None:
        """Release the connection.  Idempotent."""
        ...


def check_key(table: str, columns: Sequence[str], key: Sequence[str]) -> None:
    """Raises SinkError when ``key`` is empty or names a column not in ``columns``."""
    if not key:
        raise SinkError(
            f"table {table!r} has no key columns; the mirror needs a primary key to apply changes",
            hint="Give the source table a primary key, or exclude it from capture.",
        )
    missing = [column for column in key if column not in columns]
    if missing:
        raise SinkError(f"table {table!r}: key column {missing[0]!r} is not among the event's columns")

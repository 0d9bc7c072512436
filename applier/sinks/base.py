"""The contract every mirror database adapter (sink) implements."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from applier.sinks.collapse import Batch
from applier.transaction import MirrorPosition, Transaction
from funnel.errors import SinkError
from funnel.events import TableChanges


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
    """Raises SinkError when ``key`` names a column not in ``columns``.

    An empty key is valid: the table is keyless (see ``is_keyless``).
    """
    missing = [column for column in key if column not in columns]
    if missing:
        raise SinkError(f"table {table!r}: key column {missing[0]!r} is not among the event's columns")


def is_keyless(key: Sequence[str]) -> bool:
    """True for a table without key, whose rows the mirror keeps as a multiset.

    Inserts add a row, even a duplicate; an update or delete changes exactly one row whose
    columns all equal the before image (NULL equal to NULL), as PostgreSQL's logical
    replication does for a REPLICA IDENTITY FULL table without key.  Sinks never merge
    or collapse such rows.
    """
    return not key


def no_matching_row(table: str, mode: str, missing: int, txids: str) -> SinkError:
    """The error of keyless updates or deletes (``mode``) whose before image matched no mirror row."""
    what = "update" if mode.startswith("update") else "delete"
    return SinkError(
        f"mirror table {table!r} (txid {txids}): {missing} keyless {what}(s) found no row equal to the "
        "before image; the mirror differs from production",
        hint="Compare the table with production; re-initialise the mirror from a new funnel if it diverged.",
    )


class Writer(Protocol):
    """What one database adds to the sink algorithm (``applier.sinks.mirror.MirrorSink``).

    Transactions: ``begin``/``commit``/``rollback`` frame one apply or claim; after a
    rollback the writer forgets what it learnt in it (tables it created may be gone).
    Errors: the database's own, listed in ``errors`` (``integrity_errors`` for constraint
    violations, a subset); the sink wraps them with the table and txid.
    """

    placeholder: str  # "?" or "%s"
    where: str  # the database, for messages (path, or URL without password)
    errors: tuple[type[BaseException], ...]
    integrity_errors: tuple[type[BaseException], ...]

    def message(self, error: BaseException) -> str:
        """The database's error on one line."""
        ...

    def ensure_open(self) -> None:
        """Reconnect a lost connection, or raise SinkError when closed."""
        ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None:
        """Roll back if a transaction is open and forget cached tables; never raises."""
        ...

    def execute(self, sql: str, params: Sequence[object] = ()) -> object:
        """One statement in the open transaction (the state table's)."""
        ...

    def read_position(self, funnel: str, mirror: str) -> MirrorPosition | None: ...

    def plan(self, group: TableChanges) -> object:
        """The prepared plan of a group's table layout (``keyless``, ``key_of``), cached;
        creates a missing table where the database may.  Raises SinkError without txid."""
        ...

    def display(self, plan: object) -> str:
        """The mirror table of a plan, for messages."""
        ...

    def write(self, batch: Batch, exact: bool) -> int:
        """Send a batch (``applier.sinks.collapse``).  ``exact``: the items may repeat keys
        and must be applied one by one in order.  Returns how many keyless updates or
        deletes matched no row."""
        ...

    def truncate(self, source_table: str, txid: str) -> None:
        """Empty the mirror table of ``source_table`` (nothing if there is none).  Raises SinkError."""
        ...

    def schema_change(self, group: TableChanges, txid: str) -> None:
        """Apply a DDL event (``applier.sinks.ddl``) and forget plans.  Raises SinkError."""
        ...

    def close(self) -> None: ...

"""The one sink algorithm, over a small per-database ``Writer`` (``applier.sinks.base``).

``MirrorSink.apply`` applies whole source transactions and the position in ONE database
transaction, fenced (``applier.sinks.state``).  Row changes are folded into their net
effect per table and key, or per image for a keyless table (``applier.sinks.collapse``),
between barriers -- schema changes (``applier.sinks.ddl``, through the writer) and
truncates -- and each table's deletes and upserts reach the writer as one batch each.  Nothing in between is visible to anyone, so
the result is the result of ordered replay, with one exception the sink takes care of:
a mirror-only constraint across rows (a secondary unique index, a foreign key) may
refuse the net effect where the source's order passed, and a keyless delete of the net
effect may find fewer rows than it asks (the mirror compares values more loosely than
the count did).  Then the call is rolled back and replayed in exact order
(``Ordered``); an error then is a real one.

Errors are SinkError naming the table and the transaction(s), FencedError when another
sink claimed the mirror; nothing of a failed call is applied.

Not thread-safe: one applier thread owns a sink.
"""
from __future__ import annotations

from collections.abc import Sequence

from applier.sinks import collapse
from applier.sinks.base import Writer, no_matching_row
from applier.sinks.collapse import BARRIERS, Batch, Ordered, Stretch
from applier.sinks.state import StateWriter
from applier.transaction import MirrorPosition, Transaction
from funnel.errors import SinkError
from funnel.events import Op, TableChanges

# What a malformed row image raises while we pick values out of it (a None image, a short row).
_ROW_ERRORS = (TypeError, IndexError)



class _Replay(Exception):
    """The net effect tripped a constraint: roll back and apply the call in exact order."""


class MirrorSink:
    """A mirror database written through ``writer`` (see the module docstring)."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._state = StateWriter(writer.placeholder, writer.where)
        # The last plan per table, found by comparing lists: cheaper than the writer's
        # tuple-keyed cache for every one-row group of an OLTP stream.  Emptied whenever
        # the writer may have forgotten its plans (a new transaction, a barrier).
        self._recent: dict[str, tuple[list[str], list[str], object]] = {}

    def __enter__(self) -> MirrorSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection.  Idempotent; an open transaction is rolled back."""
        self._writer.close()

    # -- position and fencing --------------------------------------------------------
    def read_position(self, funnel: str, mirror: str) -> MirrorPosition | None:
        """The stored position for (funnel, mirror), or None.  Raises SinkError."""
        with self._wrapped(f"cannot read the position of mirror {mirror!r} in"):
            return self._writer.read_position(funnel, mirror)

    def claim(self, funnel: str, mirror: str) -> MirrorPosition | None:
        """Take the mirror's state row for this sink (fencing every earlier claimer) and return its position.

        Raises SinkError.
        """
        return self._transaction(lambda: self._state.claim(self._writer.execute, funnel, mirror),
                                 f"cannot claim mirror {mirror!r} in")

    def epoch(self, funnel: str, mirror: str) -> int | None:
        """The epoch this sink claimed for the mirror (None: never claimed), shown in status."""
        return self._state.epoch(funnel, mirror)

    def check_fence(self, funnel: str, mirror: str) -> None:
        """Raises FencedError when a newer applier claimed the mirror since this sink did."""
        with self._wrapped(f"cannot read the state of mirror {mirror!r} in"):
            self._writer.ensure_open()
            self._state.check(self._writer.execute, funnel, mirror)

    # -- apply -------------------------------------------------------------------------
    def apply(self, transactions: Sequence[Transaction], position: MirrorPosition) -> int:
        """Apply ``transactions`` in order and store ``position``, as one database transaction.

        Returns the number of row changes applied.  Raises SinkError (and applies
        nothing of the call) on any database error, a malformed row, a missing mirror
        table or column; FencedError when another sink claimed the mirror.
        """
        if not isinstance(transactions, (list, tuple)):
            transactions = list(transactions)  # a replay reads them a second time

        def attempt(exact: bool) -> int:
            def work() -> int:
                applied = self._apply_all(transactions, exact)
                self._state.write(self._writer.execute, position)
                return applied
            return self._transaction(work, "cannot apply to mirror database", replay=not exact)

        try:
            return attempt(exact=False)
        except _Replay:
            return attempt(exact=True)

    def _transaction(self, work, failure: str, replay: bool = False):
        """Run ``work`` in one database transaction.  ``replay``: a constraint violation
        (also a deferred one, at commit) asks for an exact replay instead of failing."""
        writer = self._writer
        self._recent.clear()
        with self._wrapped(failure):
            writer.begin()
        try:
            result = work()
            writer.commit()
        except BaseException as exc:
            writer.rollback()
            self._state.rolled_back()
            if replay and isinstance(exc, writer.integrity_errors):
                raise _Replay() from exc
            if isinstance(exc, writer.errors):
                raise SinkError(f"{failure} {writer.where}: {writer.message(exc)}") from exc
            raise
        self._state.committed()
        return result

    def _wrapped(self, failure: str):
        return _Wrap(self._writer, failure)

    def _apply_all(self, transactions: Sequence[Transaction], exact: bool) -> int:
        pending = Ordered() if exact else Stretch()
        add = self._add_exact if exact else self._add
        applied = 0
        for transaction in transactions:
            txid = transaction.txid
            for batch in transaction.batches:
                for group in batch.changes:
                    if group.op in BARRIERS:
                        self._flush(pending, exact)
                        self._recent.clear()
                        self._barrier(group, txid)
                        continue
                    plan = self._plan(group, txid)
                    if not exact and not pending.fits(group.table, plan):
                        self._flush(pending, exact)  # a new column layout: see collapse
                    add(pending, group, plan, txid)
                    applied += len(group.rows)
        self._flush(pending, exact)
        return applied

    def _plan(self, group: TableChanges, txid: str):
        recent = self._recent.get(group.table)
        if recent is not None and recent[0] == group.columns and recent[1] == group.key:
            return recent[2]
        writer = self._writer
        try:
            plan = writer.plan(group)
            self._recent[group.table] = (group.columns, group.key, plan)
            return plan
        except SinkError as exc:
            raise SinkError(f"{exc} (txid {txid})", hint=exc.hint) from exc
        except writer.errors as exc:
            raise SinkError(f"cannot prepare mirror table for {group.table!r} (txid {txid}): "
                            f"{writer.message(exc)}") from exc

    @staticmethod
    def _add(pending: Stretch, group: TableChanges, plan, txid: str) -> None:
        try:
            pending.add(group.table, group, plan, txid)
        except (*_ROW_ERRORS, ValueError) as exc:
            raise _group_error(group, txid, exc) from exc

    @staticmethod
    def _add_exact(pending: Ordered, group: TableChanges, plan, txid: str) -> None:
        try:
            pending.add(group, plan, txid)
        except (*_ROW_ERRORS, ValueError) as exc:
            raise _group_error(group, txid, exc) from exc

    def _barrier(self, group: TableChanges, txid: str) -> None:
        writer = self._writer
        if group.op == Op.TRUNCATE:
            writer.truncate(group.table, txid)
            return
        if group.ddl is None:
            raise SinkError(f"schema change of table {group.table!r} (txid {txid}) carries no definition")
        writer.schema_change(group, txid)

    def _flush(self, pending: Stretch | Ordered, exact: bool) -> None:
        if exact:
            batches = pending.batches()
        else:
            deletes, rest = pending.batches()
            batches = deletes + rest
        for batch in batches:
            self._write(batch, exact)

    def _write(self, batch: Batch, exact: bool) -> None:
        writer = self._writer
        display = writer.display(batch.plan)
        try:
            unmatched = writer.write(batch, exact)
        except writer.integrity_errors as exc:
            if not exact:
                raise _Replay() from exc
            raise SinkError(f"cannot apply to mirror table {display!r} (txid {batch.txids}): "
                            f"{writer.message(exc)}") from exc
        except writer.errors as exc:
            raise SinkError(f"cannot apply to mirror table {display!r} (txid {batch.txids}): "
                            f"{writer.message(exc)}") from exc
        except _ROW_ERRORS as exc:
            raise SinkError(f"malformed row image for table {display!r} (txid {batch.txids}): {exc}") from exc
        if unmatched:
            if not exact:
                # The net effect may ask a keyless delete for copies that ordered replay
                # inserts before deleting them (images that Python counts apart but the
                # mirror finds equal); in order, an unmatched row is a real difference.
                raise _Replay()
            mode = "update" if batch.kind == collapse.UPDATE_ONE else "delete"
            raise no_matching_row(display, mode, unmatched, batch.txids)


class _Wrap:
    """Turns the writer's database errors into SinkError naming the database."""

    def __init__(self, writer: Writer, failure: str) -> None:
        self._writer, self._failure = writer, failure

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, traceback) -> bool:
        if exc is not None and isinstance(exc, self._writer.errors):
            raise SinkError(f"{self._failure} {self._writer.where}: {self._writer.message(exc)}") from exc
        return False


def _group_error(group: TableChanges, txid: str, exc: Exception) -> SinkError:
    if isinstance(exc, ValueError):
        return SinkError(f"unknown operation {group.op!r} for table {group.table!r} (txid {txid})")
    return SinkError(f"malformed {_op_name(group.op)} row image for table {group.table!r} (txid {txid}): {exc}")


def _op_name(op: object) -> str:
    return str(getattr(op, "value", op))

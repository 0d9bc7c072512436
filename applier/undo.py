"""Undoing an applied transaction: the same rows, inverted, newest change first.

Backward seek applies the inverse of each transaction through the ordinary sink, so
undo needs no sink code of its own and keeps every sink's atomicity: an insert
becomes a delete of its after image, a delete re-inserts its before image, an update
writes its before image back (deleting the new key first when the key changed).
Keyless tables invert exactly the same way, one row at a time: the sink deletes, or
writes back, one row equal to the image, so an undone duplicate leaves its twin.
"""
from __future__ import annotations

import functools
from operator import itemgetter
from typing import Callable, Sequence

from funnel.errors import TimeFunnelError
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges

from applier.transaction import Transaction


class UndoError(TimeFunnelError):
    """A transaction cannot be undone (no before image, a truncate, the initial copy)."""


def invert(transaction: Transaction) -> Transaction:
    """The transaction that takes the mirror from after ``transaction`` back to before it.

    Raises UndoError when the funnel lacks what is needed: the initial copy, a
    truncate (the truncated rows are not in the funnel), or an update without its
    before image (a PostgreSQL table without REPLICA IDENTITY FULL).
    """
    if transaction.kind in (Kind.SNAPSHOT, Kind.SNAPSHOT_END):
        raise UndoError(f"transaction {transaction.txid!r} is the initial copy: the mirror cannot go back before it",
                        hint="choose a target time after the initial copy")
    groups = [group for batch in reversed(transaction.batches) for group in reversed(batch.changes)]
    inverted = [_invert_group(group, transaction.txid) for group in groups]
    batch = ChangeBatch(source="undo", txid=transaction.txid, commit_ts=transaction.commit_ts, position=0, seq=0,
                        tx_rows=sum(len(g.rows) for g in inverted), kind=transaction.kind, changes=inverted)
    return Transaction(transaction.txid, transaction.commit_ts, transaction.kind, transaction.first_offset,
                       transaction.last_offset, [batch])


_new_row = tuple.__new__  # a Row without the Python-level namedtuple constructor: undo makes one per row


def _invert_group(group: TableChanges, txid: str) -> TableChanges:
    rows = group.rows[::-1]
    if group.op is Op.INSERT:
        return TableChanges(group.table, Op.DELETE, group.columns, group.key,
                            [_new_row(Row, (row[1], None)) for row in rows])
    if group.op is Op.DELETE:
        _require_before(group, rows, txid)
        return TableChanges(group.table, Op.INSERT, group.columns, group.key,
                            [_new_row(Row, (None, row[0])) for row in rows])
    if group.op is Op.UPDATE:
        _require_before(group, rows, txid)
        return TableChanges(group.table, Op.UPDATE, group.columns, group.key,
                            [_new_row(Row, (row[1], row[0])) for row in rows])
    if group.op is Op.TRUNCATE:
        raise UndoError(f"transaction {txid!r} truncated {group.table!r}: the removed rows are not in the funnel, "
                        f"so the mirror cannot go back before it", hint="choose a target time after that transaction")
    if group.op is Op.DDL:
        # Not every schema change has an exact inverse (a dropped column's values are not
        # in the funnel); refusing them all keeps the mirror unchanged and exact.
        tag = group.ddl.tag if group.ddl is not None else "DDL"
        raise UndoError(f"transaction {txid!r} changed the schema of {group.table!r} ({tag}): backward seek "
                        "does not undo schema changes, so the mirror cannot go back before it",
                        hint="choose a target time after that transaction")
    raise UndoError(f"transaction {txid!r} holds initial-copy rows of {group.table!r}: it cannot be undone")


@functools.lru_cache(maxsize=1024)
def _non_key_nulls(columns: tuple[str, ...], key: tuple[str, ...]) -> tuple[Callable[[Sequence], object], object] | None:
    """(pick the non-key values of an image, what they are when all NULL), or None for a
    keyless table or one with only key columns.  Cached: the same few layouts, row after row."""
    keys = set(key)
    non_key = [i for i, column in enumerate(columns) if column not in keys] if key else []
    if not non_key:
        return None
    return itemgetter(*non_key), (None if len(non_key) == 1 else (None,) * len(non_key))


def _require_before(group: TableChanges, rows: list[Row], txid: str) -> None:
    # A keyless table is captured only with full before images (REPLICA IDENTITY FULL),
    # and a row of NULLs is a real row there: only a missing image is refused.
    nulls = _non_key_nulls(tuple(group.columns), tuple(group.key or ()))
    for row in rows:
        before = row[0]
        # A before image with only the key (PostgreSQL without REPLICA IDENTITY FULL
        # sends the other columns as NULL) cannot restore the row. A real row whose
        # other columns are all NULL is refused too: refusing is safe, guessing is not.
        # (``==`` against a tuple of None is true only for values that are None.)
        if before is None or (nulls is not None and nulls[0](before) == nulls[1]):
            raise UndoError(f"transaction {txid!r} changed {group.table!r} without a full before image: "
                            f"backward seek is not available for this table",
                            hint="capture it with --replica-identity-full, or seek forward only")

"""The net effect of a window of whole transactions: per table and key, the last image or the delete.

A drain (promote, seek, undo, catch-up) writes a window of many transactions in ONE
database transaction with the position after it.  Nobody can see the states between
the window's transactions, so only the window's end state matters: for a keyed table
each key ends either present with its last after image or deleted.  Writing that state
instead of every change is exact because both sinks upsert whole images and delete by
key, both idempotent.  A keyless table (a multiset) ends with its rows plus the net
copies of each image (``applier.sinks.collapse.fold_keyless``): a DELETE group of the
images with fewer copies, which were all in the mirror before the window, then an
INSERT group of those with more.

Collapsing stops (the window is cut into segments, each collapsed on its own, in order)
where merging would not be exact:

- a schema change or a truncate (the rows before and after it live in other layouts);
- a group whose columns or key differ from what the segment already holds for that
  table (an update that leaves out an unchanged TOAST value carries fewer columns);
- a keyless group with an image that cannot be counted (an unhashable value).

Those groups pass through unchanged, in their order.  Within a segment each table's
deletes are written before its upserts: the keys differ, and a unique column freed by a
delete can then be taken by another key's insert, as it was in production.

The per-key rule itself (a key change is delete-old plus upsert-new; which groups fold,
which are barriers) is the sink's, ``applier.sinks.collapse.fold_keyed``: a window keeps
the before image of a deleted key, so its result is plain ``TableChanges`` that cross a
process boundary and that the sink folds again by the same rule.
"""
from __future__ import annotations

import contextlib
import gc
from operator import itemgetter
from typing import Callable, Iterable, Iterator

from applier.sinks.collapse import ROW_OPS, fold_keyed, fold_keyless, keyless_net
from applier.transaction import Transaction
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges


class _Table:
    """One table's net state within a segment: key -> last after image, or the delete Row."""

    __slots__ = ("name", "columns", "key", "key_of", "net")

    def __init__(self, group: TableChanges) -> None:
        self.name = group.table
        self.columns = group.columns
        self.key = group.key
        index = [group.columns.index(column) for column in group.key]
        # One index: the value itself, as the sink's keys.  Keyless: unused.
        self.key_of: Callable = itemgetter(*index) if index else tuple
        self.net: dict = {}

    def fits(self, group: TableChanges) -> bool:
        return group.columns == self.columns and group.key == self.key

    def absorb(self, group: TableChanges) -> bool:
        fold_keyed(self.net, group.op, group.rows, self.key_of, keep_before=True)
        return True

    def groups(self) -> list[TableChanges]:
        net = self.net.values()
        deleted = [entry for entry in net if type(entry) is Row]
        upserted = [Row(None, entry) for entry in net if type(entry) is not Row]
        out = []
        if deleted:
            out.append(TableChanges(self.name, Op.DELETE, self.columns, self.key, deleted))
        if upserted:
            out.append(TableChanges(self.name, Op.INSERT, self.columns, self.key, upserted))
        return out


class _Keyless(_Table):
    """A keyless table's net state within a segment: image -> net copies."""

    __slots__ = ()

    def absorb(self, group: TableChanges) -> bool:
        return fold_keyless(self.net, group.op, group.rows)

    def groups(self) -> list[TableChanges]:
        deleted, inserted = keyless_net(self.net)
        out = []
        if deleted:
            out.append(TableChanges(self.name, Op.DELETE, self.columns, self.key,
                                    [Row(image, None) for image in deleted]))
        if inserted:
            out.append(TableChanges(self.name, Op.INSERT, self.columns, self.key,
                                    [Row(None, image) for image in inserted]))
        return out


class _Segments:
    """Collects the window's groups into collapsed segments and pass-through groups, in order."""

    def __init__(self) -> None:
        self.tables: dict[str, _Table] = {}
        self.out: list[TableChanges] = []

    def add(self, group: TableChanges) -> None:
        if group.op not in ROW_OPS:  # a barrier
            self.pass_through(group)
            return
        table = self.tables.get(group.table)
        if table is not None and not table.fits(group):
            self.flush()
            table = None
        if table is None:
            table = self.tables[group.table] = _Table(group) if group.key else _Keyless(group)
        if not table.absorb(group):  # a keyless image that cannot be counted: in order
            self.pass_through(group)

    def pass_through(self, group: TableChanges) -> None:
        self.flush()
        self.out.append(group)

    def flush(self) -> None:
        for table in self.tables.values():
            self.out.extend(table.groups())
        self.tables = {}


def net_effect(transactions: Iterable[Transaction]) -> list[Transaction]:
    """Transactions that take the mirror to the same state as ``transactions`` in order.

    The row changes between schema changes become one transaction each, named by the
    txids of the first and last transaction that changed rows ("a..b", what sink errors
    name); a transaction with a schema change passes through whole and unchanged, so an
    error applying it names its own txid.  Returns [] when nothing changes.  Apply the
    result in one database transaction with the position after the last of
    ``transactions``, never as a visible step.
    """
    out: list[Transaction] = []
    fold = _Fold()
    for transaction in transactions:
        if any(group.op is Op.DDL for batch in transaction.batches for group in batch.changes):
            out.extend(fold.take())
            out.append(transaction)
        else:
            fold.add(transaction)
    out.extend(fold.take())
    return out


class _Fold:
    """Whole transactions folded into their net effect, until ``take``."""

    def __init__(self) -> None:
        self.segments = _Segments()
        self.first: Transaction | None = None
        self.last: Transaction | None = None
        self.kinds: set[Kind] = set()

    def add(self, transaction: Transaction) -> None:
        changed = False
        for batch in transaction.batches:
            for group in batch.changes:
                self.segments.add(group)
                changed = True
        if changed:  # heartbeats change nothing and name nothing
            self.first = self.first or transaction
            self.last = transaction
            self.kinds.add(transaction.kind)

    def take(self) -> list[Transaction]:
        """The folded transactions as one (or none), and a fresh start."""
        segments, first, last, kinds = self.segments, self.first, self.last, self.kinds
        self.__init__()
        segments.flush()
        if last is None or not segments.out:
            return []
        kind = Kind.SNAPSHOT if kinds <= {Kind.SNAPSHOT, Kind.SNAPSHOT_END} else Kind.CHANGES
        rows = sum(len(group.rows) for group in segments.out)
        txid = last.txid if first is last else f"{first.txid}..{last.txid}"  # what sink errors name
        batch = ChangeBatch(source="window", txid=txid, commit_ts=last.commit_ts, position=0, seq=0,
                            tx_rows=rows, kind=kind, changes=segments.out)
        return [Transaction(txid, last.commit_ts, kind, first.first_offset, last.last_offset, [batch])]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a window is decoded and written.

    A window is hundreds of thousands of new lists and tuples without cycles; each
    allocation burst would trigger full collections that scan them all again and again
    (measured: 40 % of a drain's CPU).  Reference counting frees them as usual.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

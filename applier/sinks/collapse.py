"""The net effect of row changes on a mirror: pure functions and containers, no database.

One ``Sink.apply`` call is one database transaction, so nothing between its first and
its last change is ever visible.  The sink therefore sends, per table, only what is
left at the end of a *stretch* (the changes between two barriers, see below):

* a keyed table: per key, the last image (upsert) or a delete.  An update that changes
  the key is a delete of the old key and an upsert of the new one;
* a keyless table (a multiset): per distinct row image its net count of copies, +1
  for every after image (insert, snapshot, an update's after) and -1 for every before
  image (delete, an update's before).  The end state is the mirror's rows plus that net;
  since production's order was valid, every image with a negative count is in the
  mirror before the stretch, so its copies are deleted first and the positive ones
  inserted after, whatever the order in between.  An image that cannot be counted (an
  unhashable value) sends its table back to every change in order for the rest of the
  stretch, consecutive ones of one kind merged into one batch.

Barriers end a stretch: schema changes and truncates, applied in order between the
stretch before and the one after; and a table whose rows change column layout while
it has pending rows (a PostgreSQL row that leaves out an unchanged TOASTed value), since
a partial image must not replace a whole one.

``fold_keyed`` is the one definition of the per-key rule, ``fold_keyless`` of the
multiset one; drain windows (``applier.window``) fold with them too, keeping a deleted
key's delete row.
``ROW_OPS`` and ``BARRIERS`` say which groups fold and which are barriers, for both.

Memory is proportional to the distinct keys and keyless images of a stretch, not to
the number of changes.  ``Ordered`` is the exact alternative: every change in source
order, consecutive statements of one kind merged; the sink falls back to it when the
net effect trips a constraint that ordered replay may not (a secondary unique index or
a foreign key on the mirror).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol

from funnel.events import Op, Row, TableChanges, Value

Image = Sequence[Value]
KeyOf = Callable[[Image], Hashable]

_AFTER = itemgetter(1)
_BEFORE = itemgetter(0)
UPSERT_OPS = (Op.SNAPSHOT, Op.INSERT)
ROW_OPS = (Op.SNAPSHOT, Op.INSERT, Op.UPDATE, Op.DELETE)  # row changes: these fold
BARRIERS = (Op.DDL, Op.TRUNCATE)  # end a stretch, applied in order between the folded rows

# Batch kinds, what a writer is asked to do with a list of items.
UPSERT = "upsert"  # keyed: after images
DELETE = "delete"  # keyed: keys as ``plan.key_of`` gives them
INSERT = "insert"  # keyless: after images
DELETE_ONE = "delete_one"  # keyless: rows, each deletes one mirror row equal to its before image
UPDATE_ONE = "update_one"  # keyless: rows, each updates one mirror row equal to its before image


class Plan(Protocol):
    """What the collapse needs to know of a table layout (a writer's prepared plan)."""

    keyless: bool
    key_of: KeyOf  # the key of a row image, hashable (a value or a tuple)


@dataclass(slots=True)
class Batch:
    """A list of items of one kind for one plan, from transactions ``first_txid..last_txid``."""

    plan: Any
    kind: str
    items: list[Any]
    first_txid: str
    last_txid: str
    snapshot: bool = False  # holds rows of the initial copy

    @property
    def txids(self) -> str:
        return self.first_txid if self.first_txid == self.last_txid else f"{self.first_txid}..{self.last_txid}"


@dataclass(slots=True)
class _TableNet:
    plan: Any
    first_txid: str
    last_txid: str = ""
    rows: dict[Hashable, Image | None] = field(default_factory=dict)  # key -> last image, None: deleted
    keyless: list[Batch] = field(default_factory=list)  # a keyless table's changes in order
    counts: dict[Hashable, int] | None = None  # a keyless table's net copies per image (fold_keyless)
    snapshot: bool = False


def changed_key_rows(rows: Sequence[Row], key_of: KeyOf) -> list[int]:
    """Indexes of update rows whose key differs between before and after.

    Raises TypeError or IndexError for a malformed image.
    """
    try:
        old = list(map(key_of, map(_BEFORE, rows)))
    except TypeError:  # an update without before image (an upsert): look row by row
        return [i for i, (before, after) in enumerate(rows) if before is not None and key_of(before) != key_of(after)]
    new = list(map(key_of, map(_AFTER, rows)))
    if old == new:  # the common case, decided without a Python step per row
        return []
    return [i for i, (before, after) in enumerate(zip(old, new)) if before != after]


def keyed_steps(op: Op, rows: Sequence[Row], key_of: KeyOf) -> Iterator[tuple[str, list[Any]]]:
    """A keyed group as (UPSERT, after images) and (DELETE, before images) steps in order:
    an update that changes the key deletes the old key, then upserts the new one.

    Raises TypeError or IndexError for a malformed image, SinkError-free otherwise;
    ValueError for an operation without rows to apply.
    """
    if op == Op.DELETE:
        yield DELETE, list(map(_BEFORE, rows))
    elif op == Op.UPDATE:
        start = 0
        for i in changed_key_rows(rows, key_of):
            if i > start:
                yield UPSERT, list(map(_AFTER, rows[start:i]))
            yield DELETE, [rows[i].before]
            start = i
        yield UPSERT, list(map(_AFTER, rows[start:]))
    elif op in UPSERT_OPS:
        yield UPSERT, list(map(_AFTER, rows))
    else:
        raise ValueError(f"unknown operation {op!r}")


def gone(before: Image) -> Row:
    """A deleted key's entry in a net that keeps before images: the delete row itself."""
    return _new_row(Row, (before, None))


_new_row = tuple.__new__  # a Row without the Python-level namedtuple constructor
_SMALL = 16  # rows up to which a group is folded row by row: building lists costs more


def fold_keyed(net: dict[Hashable, Any], op: Op, rows: Sequence[Row], key_of: KeyOf,
               keep_before: bool = False) -> None:
    """Fold a keyed group into ``net``: key -> the key's last after image, or for a deleted
    key None (``keep_before``: the delete ``Row(before, None)``, see ``gone``; an image is
    never a Row).  THE per-key rule of a net effect, for the sink's stretches and the
    drains' windows alike; as ``keyed_steps`` applied in order.

    Raises TypeError or IndexError for a malformed image (``net`` is then unusable),
    ValueError for an operation that is not a row change.
    """
    if op in UPSERT_OPS:
        if len(rows) <= _SMALL:
            for _, after in rows:
                net[key_of(after)] = after
        else:
            _fold_upserts(net, list(map(_AFTER, rows)), key_of)
    elif op == Op.DELETE:
        if len(rows) <= _SMALL and keep_before:
            for row in rows:
                net[key_of(row[0])] = row if type(row) is Row and row[1] is None else gone(row[0])
        elif len(rows) <= _SMALL:
            for before, _ in rows:
                net[key_of(before)] = None
        else:
            _fold_deletes(net, list(map(_BEFORE, rows)), key_of, keep_before)
    elif op == Op.UPDATE and len(rows) <= _SMALL:
        for before, after in rows:
            new = key_of(after)
            if before is not None:
                old = key_of(before)
                if old != new:  # the key changed: the old key is gone
                    net[old] = _new_row(Row, (before, None)) if keep_before else None
            net[new] = after
    else:
        for kind, images in keyed_steps(op, rows, key_of):
            if kind == UPSERT:
                _fold_upserts(net, images, key_of)
            else:
                _fold_deletes(net, images, key_of, keep_before)


def _fold_upserts(net: dict[Hashable, Any], images: list[Image], key_of: KeyOf) -> None:
    net.update(zip(map(key_of, images), images))


def _fold_deletes(net: dict[Hashable, Any], befores: list[Image], key_of: KeyOf, keep_before: bool) -> None:
    if keep_before:
        net.update(zip(map(key_of, befores), map(gone, befores)))
    else:
        net.update(dict.fromkeys(map(key_of, befores)))


class _Tagged:
    """A row image holding floats or bools, counted by a key that tells apart what the
    mirror stores differently although Python finds it equal: 1, 1.0 and True; 0.0 and
    -0.0.  Every NaN is one value here, as on a PostgreSQL mirror."""

    __slots__ = ("image", "_key", "_hash")

    def __init__(self, image: tuple[Value, ...]) -> None:
        self.image = image
        self._key = tuple(_tag(value) for value in image)
        self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return type(other) is _Tagged and self._key == other._key


def _tag(value: Value) -> Hashable:
    if type(value) is float:
        return float, value.hex()
    if type(value) is bool:
        return bool, value
    return value


_TAGGED_TYPES = frozenset({float, bool})


def image_key(image: Image) -> Hashable:
    """The counting key of a keyless row image: the image as a tuple (see ``_Tagged``).

    Raises TypeError for an image that is not a sequence.
    """
    key = tuple(image)
    return key if _TAGGED_TYPES.isdisjoint(map(type, key)) else _Tagged(key)


_ONE_IMAGE = {Op.INSERT: 1, Op.SNAPSHOT: 1, Op.DELETE: 0}  # the image a one-row group counts


def fold_keyless(counts: dict[Hashable, int], op: Op, rows: Sequence[Row]) -> bool:
    """Fold a keyless group into ``counts``: image key -> net copies, +1 per after image,
    -1 per before image.  THE multiset rule of a net effect, for the sink's stretches and
    the drains' windows alike (``keyless_net`` reads the result).

    Returns False, leaving ``counts`` as it was, when an image cannot be counted (a value
    without hash, a missing image): apply that group in order instead.  Raises
    ValueError for an operation that is not a row change.
    """
    if len(rows) == 1 and op in _ONE_IMAGE:  # an OLTP transaction's row: no Counter
        try:
            key = image_key(rows[0][_ONE_IMAGE[op]])
            copies = counts.get(key, 0)
        except TypeError:
            return False
        counts[key] = copies + (1 if op in UPSERT_OPS else -1)
        return True
    if op in UPSERT_OPS:
        plus, minus = map(_AFTER, rows), ()
    elif op == Op.DELETE:
        plus, minus = (), map(_BEFORE, rows)
    elif op == Op.UPDATE:
        plus, minus = map(_AFTER, rows), map(_BEFORE, rows)
    else:
        raise ValueError(f"unknown operation {op!r}")
    try:
        delta = Counter(map(image_key, plus))
        delta.subtract(map(image_key, minus))
    except TypeError:
        return False
    get = counts.get
    for key, copies in delta.items():
        counts[key] = get(key, 0) + copies
    return True


def keyless_net(counts: dict[Hashable, int]) -> tuple[list[Image], list[Image]]:
    """(before images to delete, after images to insert) of ``counts``: each image as many
    times as its net count says.  Write the deletes first: they are all in the mirror."""
    deleted: list[Image] = []
    inserted: list[Image] = []
    for key, copies in counts.items():
        if copies:
            image = key.image if type(key) is _Tagged else key
            if copies < 0:
                deleted.extend([image] * -copies)
            else:
                inserted.extend([image] * copies)
    return deleted, inserted


def keyless_step(op: Op, rows: Sequence[Row]) -> tuple[str, list[Any]]:
    """A keyless group as one step.  Raises ValueError for an unknown operation."""
    if op == Op.DELETE:
        return DELETE_ONE, list(rows)
    if op == Op.UPDATE:
        return UPDATE_ONE, list(rows)
    if op in UPSERT_OPS:
        return INSERT, list(map(_AFTER, rows))
    raise ValueError(f"unknown operation {op!r}")


class Stretch:
    """The net row changes of a stretch, per table (see the module docstring)."""

    __slots__ = ("_tables",)

    def __init__(self) -> None:
        self._tables: dict[str, _TableNet] = {}

    def __bool__(self) -> bool:
        return bool(self._tables)

    def fits(self, table: str, plan: Plan) -> bool:
        """False when ``table`` has pending rows of another layout: end the stretch first."""
        net = self._tables.get(table)
        return net is None or net.plan is plan

    def add(self, table: str, group: TableChanges, plan: Plan, txid: str) -> None:
        """Fold ``group`` (rows of ``table`` laid out as ``plan``) into the net changes.

        The caller checked ``fits``.  Raises TypeError or IndexError for a malformed
        image (the stretch is then unusable), ValueError for an unknown operation.
        """
        net = self._tables.get(table)
        if net is None:
            net = self._tables[table] = _TableNet(plan, txid, counts={} if plan.keyless else None)
        net.last_txid = txid
        if group.op == Op.SNAPSHOT:
            net.snapshot = True
        if not plan.keyless:
            fold_keyed(net.rows, group.op, group.rows, plan.key_of)
            return
        if net.counts is not None:
            if fold_keyless(net.counts, group.op, group.rows):
                return
            _keyless_batches(net, net.keyless, net.keyless)  # in order from here on
            net.counts = None
        kind, items = keyless_step(group.op, group.rows)
        _append(net.keyless, plan, kind, items, txid, group.op == Op.SNAPSHOT)

    def batches(self) -> tuple[list[Batch], list[Batch]]:
        """(deletes, the rest): every table's deletes first (keyed ones, and a keyless
        table's net deletes), then its upserts and keyless inserts (or a keyless table's
        changes in order), tables in the order they first changed.  Empties the stretch.

        Deletes go first so that a key freed in one table and taken in another never
        collides; what still collides on a mirror-only constraint is replayed in order.
        """
        deletes: list[Batch] = []
        rest: list[Batch] = []
        for net in self._tables.values():
            if net.counts is not None:
                _keyless_batches(net, deletes, rest)
                continue
            if net.keyless:
                rest.extend(net.keyless)
                continue
            deleted = [key for key, image in net.rows.items() if image is None]
            images = [image for image in net.rows.values() if image is not None]
            if deleted:
                deletes.append(Batch(net.plan, DELETE, deleted, net.first_txid, net.last_txid))
            if images:
                rest.append(Batch(net.plan, UPSERT, images, net.first_txid, net.last_txid, net.snapshot))
        self._tables = {}
        return deletes, rest


def _keyless_batches(net: _TableNet, deletes: list[Batch], inserts: list[Batch]) -> None:
    """A keyless table's net copies as a DELETE_ONE batch (to ``deletes``) and an INSERT batch."""
    deleted, inserted = keyless_net(net.counts)
    net.counts = {}
    if deleted:
        deletes.append(Batch(net.plan, DELETE_ONE, list(map(gone, deleted)), net.first_txid, net.last_txid))
    if inserted:
        inserts.append(Batch(net.plan, INSERT, inserted, net.first_txid, net.last_txid, net.snapshot))


class Ordered:
    """Every change in source order; consecutive items of one kind for one plan and one
    transaction form one batch, so that an error names the transaction exactly."""

    __slots__ = ("_batches",)

    def __init__(self) -> None:
        self._batches: list[Batch] = []

    def add(self, group: TableChanges, plan: Plan, txid: str) -> None:
        """Raises TypeError or IndexError for a malformed image, ValueError for an unknown operation."""
        snapshot = group.op == Op.SNAPSHOT
        if plan.keyless:
            kind, items = keyless_step(group.op, group.rows)
            _append(self._batches, plan, kind, items, txid, snapshot, same_txid=True)
            return
        key_of = plan.key_of
        for kind, images in keyed_steps(group.op, group.rows, key_of):
            items = images if kind == UPSERT else list(map(key_of, images))
            _append(self._batches, plan, kind, items, txid, snapshot, same_txid=True)

    def batches(self) -> list[Batch]:
        """The batches so far, in order.  Empties the container."""
        batches, self._batches = self._batches, []
        return batches


def _append(batches: list[Batch], plan: Any, kind: str, items: list[Any], txid: str, snapshot: bool,
            same_txid: bool = False) -> None:
    if not items:
        return
    last = batches[-1] if batches else None
    if (last is not None and last.plan is plan and last.kind == kind
            and not (same_txid and last.last_txid != txid)):
        last.items.extend(items)
        last.last_txid = txid
        last.snapshot = last.snapshot or snapshot
    else:
        batches.append(Batch(plan, kind, items, txid, txid, snapshot))

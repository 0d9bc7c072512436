"""Inverting transactions for backward seek (pure; applied through a real SQLite sink)."""
from __future__ import annotations

import sqlite3

import pytest

from applier.sinks.sqlite import SqliteSink
from applier.transaction import MirrorPosition, Transaction
from applier.undo import UndoError, invert
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges

COLS, KEY = ["id", "name", "qty"], ["id"]


def tx(txid: str, *groups: TableChanges, kind: Kind = Kind.CHANGES) -> Transaction:
    rows = sum(len(g.rows) for g in groups)
    return Transaction(txid, 1, kind, 0, 0, [ChangeBatch("s", txid, 1, 1, 0, rows, kind, list(groups))])


def group(op: Op, *rows: Row) -> TableChanges:
    return TableChanges("main.items", op, COLS, KEY, list(rows))


def state(db) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT * FROM items ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.fixture
def sink(tmp_path):
    sink = SqliteSink(tmp_path / "m.db")
    yield sink
    sink.close()


def pos(n: int) -> MirrorPosition:
    return MirrorPosition("f", "m", "f", 0, n)


def test_undo_restores_the_state_before_each_transaction(sink, tmp_path):
    base = tx("t0", group(Op.INSERT, Row(None, [1, "a", 1]), Row(None, [2, "b", 2]), Row(None, [3, "c", 3])))
    change = tx("t1",
                group(Op.UPDATE, Row([1, "a", 1], [1, "a", 10])),
                group(Op.DELETE, Row([2, "b", 2], None)),
                group(Op.INSERT, Row(None, [4, "d", 4])),
                group(Op.UPDATE, Row([3, "c", 3], [30, "c", 3])),  # the key changes
                group(Op.UPDATE, Row([30, "c", 3], [30, "c", 33])))  # and the row changes again
    sink.apply([base], pos(1))
    before = state(tmp_path / "m.db")
    sink.apply([change], pos(2))
    assert state(tmp_path / "m.db") == [(1, "a", 10), (4, "d", 4), (30, "c", 33)]
    sink.apply([invert(change)], pos(1))
    assert state(tmp_path / "m.db") == before


def test_inverse_reverses_the_order_of_changes():
    change = tx("t1", group(Op.INSERT, Row(None, [1, "a", 1]), Row(None, [2, "b", 2])),
                group(Op.DELETE, Row([1, "a", 1], None)))
    inverted = invert(change).changes
    assert [g.op for g in inverted] == [Op.INSERT, Op.DELETE]
    assert [r.after for r in inverted[0].rows] == [[1, "a", 1]]
    assert [r.before for r in inverted[1].rows] == [[2, "b", 2], [1, "a", 1]]


@pytest.mark.parametrize("bad, message", [
    (tx("t9", group(Op.TRUNCATE)), "truncated"),
    (tx("s", group(Op.SNAPSHOT, Row(None, [1, "a", 1])), kind=Kind.SNAPSHOT), "initial copy"),
    (tx("t8", group(Op.UPDATE, Row(None, [1, "a", 2]))), "before image"),
    (tx("t7", group(Op.UPDATE, Row([1, None, None], [1, "a", 2]))), "before image"),
    (tx("t6", group(Op.DELETE, Row(None, None))), "before image"),
])
def test_what_cannot_be_undone_is_refused(bad, message):
    with pytest.raises(UndoError, match=message):
        invert(bad)


def test_a_keyless_row_of_nulls_can_be_undone_but_a_missing_image_cannot():
    # Keyless tables always have full before images: a row of NULLs is a real row there.
    nulls = TableChanges("main.log", Op.DELETE, COLS, [], [Row([None, None, None], None)])
    assert invert(tx("t1", nulls)).changes[0].rows == [Row(None, [None, None, None])]
    with pytest.raises(UndoError, match="before image"):
        invert(tx("t2", TableChanges("main.log", Op.UPDATE, COLS, [], [Row(None, [1, "a", 1])])))


def _funnel_of_updates(transactions: int):
    """Summaries of ``transactions`` one-row updates of keys 0..9 (qty i-1 -> i), with their events."""
    from funnel.codec import EventCodec
    from funnel.reader import TransactionSummary

    codec = EventCodec()
    summaries = []
    for i in range(transactions):
        rows = [Row([i % 10, "n", i - 1], [i % 10, "n", i])]
        batch = ChangeBatch("s", f"t{i}", 1_000 + i, i, 0, 1, Kind.CHANGES, [group(Op.UPDATE, *rows)])
        summaries.append(TransactionSummary(f"t{i}", batch.commit_ts, Kind.CHANGES, i, i, 1, 1, [codec.encode(batch)]))
    return summaries


@pytest.mark.parametrize("keep", ["nothing", "two batches", "everything"])
def test_undo_writes_the_same_batches_whether_the_check_kept_them_or_not(monkeypatch, keep: str) -> None:
    """Batches kept from the check (no second decode) and batches decoded again are written alike."""
    from applier import pointintime
    from funnel.codec import EventCodec

    summaries = _funnel_of_updates(40)
    keep_bytes = {"nothing": 0, "everything": 10**9,
                  "two batches": sum(len(p) for summary in summaries[26:40] for p in summary.payloads)}[keep]

    class Reader:
        topic = "shop"

        def transactions(self, start, end, keep_payloads=False):
            yield from summaries[start:end]

    class Sink:
        def __init__(self) -> None:
            self.applied = []

        def apply(self, transactions, position):
            self.applied.append(([[(g.op, [tuple(r[1] if r[1] is not None else r[0]) for r in g.rows])
                                   for t in transactions for b in t.batches for g in b.changes]],
                                 position.next_offset))
            return 0

    class CountingCodec(EventCodec):
        decoded = 0

        def decode(self, payload):
            type(self).decoded += 1
            return super().decode(payload)

    monkeypatch.setattr(pointintime, "UNDO_BATCH_ROWS", 7)
    monkeypatch.setattr(pointintime, "UNDO_KEEP_BYTES", keep_bytes)
    start = MirrorPosition("shop", "m1", "shop", 0, 40, None, None, None, snapshot_done=True)
    sink = Sink()
    end = pointintime.undo_back(sink, Reader(), start, 5, CountingCodec())
    assert end.next_offset == 5
    assert [offset for _, offset in sink.applied] == [33, 26, 19, 12, 5]
    # Each batch holds every key's oldest before image: qty of the oldest undone update minus one.
    first = sink.applied[0][0][0]
    assert sorted(image for _, images in first for image in images) == sorted(
        (key, "n", min(i for i in range(33, 40) if i % 10 == key) - 1) for key in {i % 10 for i in range(33, 40)})
    if keep_bytes == 0:  # nothing kept: every event decoded for the check and again for the undo
        assert CountingCodec.decoded == 70
    elif keep_bytes >= 10**9:  # everything kept: once
        assert CountingCodec.decoded == 35
    else:  # the two newest batches (14 transactions) once, the three others twice
        assert CountingCodec.decoded == 14 + 2 * 21
    assert sink.applied == _undo_with_everything_kept(monkeypatch, Reader(), Sink, start)


def _undo_with_everything_kept(monkeypatch, reader, sink_class, start):
    from applier import pointintime
    from funnel.codec import EventCodec

    monkeypatch.setattr(pointintime, "UNDO_KEEP_BYTES", 10**9)
    sink = sink_class()
    pointintime.undo_back(sink, reader, start, 5, EventCodec())
    return sink.applied

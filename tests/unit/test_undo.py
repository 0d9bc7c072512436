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

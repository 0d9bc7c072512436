"""SqliteSink against real SQLite files: what only SQLite does (names, exact values, errors, WAL, lifecycle).

What every sink does is in test_sink_contract.py.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from applier.sinks import open_sink
from applier.sinks.sqlite import SqliteSink
from applier.sinks.sqlite_sql import STATE_TABLE
from applier.transaction import MirrorPosition, Transaction
from funnel.errors import ConfigError, SinkError
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges, Value
from tests.support.sinks import dele, ins, upd

COLUMNS = ["id", "name", "total"]
KEY = ["id"]
COMMIT = 1_700_000_000_000_000


def changes(op: Op, *rows: Row, table: str = "main.orders", columns: list[str] | None = None,
            key: list[str] | None = None) -> TableChanges:
    return TableChanges(table, op, columns or COLUMNS, key or KEY, list(rows))


def tx(txid: str, *groups: TableChanges, offset: int = 0, kind: Kind = Kind.CHANGES) -> Transaction:
    rows = sum(len(group.rows) for group in groups)
    batch = ChangeBatch("src", txid, COMMIT + offset, offset, 0, rows, kind, list(groups))
    return Transaction(txid, COMMIT + offset, kind, offset, offset, [batch])


def position(next_offset: int, last_txid: str | None = None, mirror: str = "m1") -> MirrorPosition:
    return MirrorPosition("shop", mirror, "shop", 0, next_offset, last_txid, COMMIT + next_offset,
                          COMMIT + next_offset, snapshot_done=True)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "mirror.db"


@pytest.fixture
def sink(db_path: Path) -> Iterator[SqliteSink]:
    with SqliteSink(db_path) as opened:
        yield opened


def rows(path: Path, table: str = "orders") -> list[tuple[Value, ...]]:
    """The mirror table as an independent reader sees it, in key order."""
    reader = sqlite3.connect(path)
    try:
        return reader.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2').fetchall()
    finally:
        reader.close()


def tables(path: Path) -> set[str]:
    reader = sqlite3.connect(path)
    try:
        return {name for (name,) in reader.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        reader.close()


def seed(sink: SqliteSink, *values: list[Value]) -> None:
    sink.apply([tx("seed", changes(Op.INSERT, *(ins(*v) for v in values)))], position(1, "seed"))


# --- operations -------------------------------------------------------------------


def test_insert_creates_the_mapped_table_and_counts_rows(sink: SqliteSink, db_path: Path) -> None:
    applied = sink.apply(
        [tx("t1", changes(Op.INSERT, ins(1, "a", 10), ins(2, "b", 20)),
            changes(Op.INSERT, ins(7, "x", 1), table="sales.orders"))],
        position(1),
    )
    assert applied == 3
    assert rows(db_path) == [(1, "a", 10), (2, "b", 20)]
    assert rows(db_path, "sales_orders") == [(7, "x", 1)]
    assert tables(db_path) == {"orders", "sales_orders", STATE_TABLE}

def test_truncate_of_an_unknown_table_is_a_no_op(sink: SqliteSink, db_path: Path) -> None:
    sink.apply([tx("t1", TableChanges("main.ghost", Op.TRUNCATE, [], []))], position(1))
    assert "ghost" not in tables(db_path)
    assert sink.read_position("shop", "m1") == position(1)


def test_awkward_table_and_column_names(sink: SqliteSink, db_path: Path) -> None:
    cols = ["select", "a b", 'q"uote']
    sink.apply([tx("t1", changes(Op.INSERT, ins("k", 1, 2), table='main.my "odd" table', columns=cols,
                                 key=["select"]))], position(1))
    assert rows(db_path, 'my ""odd"" table') == [("k", 1, 2)]


# --- values -------------------------------------------------------------------------


EXACT_VALUES: list[Value] = [
    None,
    b"\x00\xff binary",
    b"",
    0.1,
    -0.0,
    1e308,
    5e-324,
    float("inf"),
    1.0,  # stays a float: untyped columns do not coerce
    2**63 - 1,
    -(2**63),
    "007",  # stays text
    "",
    "größe ✓ 🚀 e\u0301",
    "nul\x00inside",
]


def test_values_round_trip_exactly_with_their_types(sink: SqliteSink, db_path: Path) -> None:
    cols = ["id", "v"]
    sink.apply([tx("t1", changes(Op.INSERT, *(ins(i, v) for i, v in enumerate(EXACT_VALUES)),
                                 table="vals", columns=cols))], position(1))
    stored = rows(db_path, "vals")
    assert [v for _, v in stored] == EXACT_VALUES
    assert [type(v) for _, v in stored] == [type(v) for v in EXACT_VALUES]
    assert str(stored[4][1]) == "-0.0"  # the sign of zero survives


def test_booleans_are_stored_as_integers(sink: SqliteSink, db_path: Path) -> None:
    sink.apply([tx("t1", changes(Op.INSERT, ins(1, True, False)))], position(1))
    assert rows(db_path) == [(1, 1, 0)]


def test_text_and_blob_keys_are_distinct(sink: SqliteSink, db_path: Path) -> None:
    sink.apply([tx("t1", changes(Op.INSERT, ins("k", "text", 1), ins(b"k", "blob", 2)))], position(1))
    sink.apply([tx("t2", changes(Op.DELETE, dele(b"k", "blob", 2)))], position(2))
    assert rows(db_path) == [("k", "text", 1)]


# --- errors and atomicity -----------------------------------------------------------


def test_error_in_third_transaction_applies_nothing(sink: SqliteSink, db_path: Path) -> None:
    seed(sink, [1, "a", 10])
    before = sink.read_position("shop", "m1")
    # t4 and t5 share one executemany, so the error names the range of transactions.
    with pytest.raises(SinkError, match=r"mirror table 'orders' \(txid t4\.\.t5\)"):
        sink.apply(
            [tx("t3", changes(Op.INSERT, ins(1, "x", 1), table="main.items"), offset=3),
             tx("t4", changes(Op.UPDATE, upd([1, "a", 10], [1, "changed", 11])), offset=4),
             tx("t5", changes(Op.INSERT, ins(2, "b", 2**64)), offset=5)],  # too big for SQLite
            position(6, "t5"),
        )
    assert rows(db_path) == [(1, "a", 10)]
    assert "items" not in tables(db_path)  # the CREATE TABLE rolled back too
    assert sink.read_position("shop", "m1") == before
    # The sink forgot the rolled-back table and recreates it on the next call.
    assert sink.apply([tx("t3", changes(Op.INSERT, ins(1, "x", 1), table="main.items"))], position(4)) == 1
    assert rows(db_path, "items") == [(1, "x", 1)]


def test_constraint_violation_from_sqlite_rolls_back(sink: SqliteSink, db_path: Path) -> None:
    reader = sqlite3.connect(db_path)
    reader.execute('CREATE TABLE "orders" ("id", "name" NOT NULL, "total", PRIMARY KEY ("id"))')
    reader.commit()
    reader.close()
    with pytest.raises(SinkError, match="NOT NULL constraint failed") as raised:
        sink.apply([tx("t1", changes(Op.INSERT, ins(1, "a", 1))),
                    tx("t2", changes(Op.INSERT, ins(2, None, 2)))], position(2))
    assert "\n" not in str(raised.value)
    assert rows(db_path) == []
    assert sink.read_position("shop", "m1") is None


def test_missing_mirror_column_names_table_and_column(sink: SqliteSink, db_path: Path) -> None:
    reader = sqlite3.connect(db_path)
    reader.execute('CREATE TABLE "orders" ("id", "name", PRIMARY KEY ("id"))')
    reader.commit()
    reader.close()
    with pytest.raises(SinkError, match=r"mirror table 'orders' has no column 'total'.*txid t2") as raised:
        sink.apply([tx("t1", changes(Op.INSERT, ins(1, "x", 1), table="main.other")),
                    tx("t2", changes(Op.INSERT, ins(1, "a", 10)))], position(2))
    assert raised.value.hint is not None and "ADD COLUMN" in raised.value.hint
    assert tables(db_path) == {"orders", STATE_TABLE}
    assert sink.read_position("shop", "m1") is None


def test_a_column_added_while_the_sink_runs_is_found_without_a_failure(sink: SqliteSink, db_path: Path) -> None:
    seed(sink, [1, "a", 10])  # the sink now knows the table's columns
    operator = sqlite3.connect(db_path)
    operator.execute('ALTER TABLE "orders" ADD COLUMN "colour"')  # the README's procedure: mirror first
    operator.commit()
    operator.close()
    sink.apply([tx("t2", changes(Op.INSERT, ins(2, "b", 20, "red"), columns=["id", "name", "total", "colour"]))],
               position(2))
    assert rows(db_path) == [(1, "a", 10, None), (2, "b", 20, "red")]


def test_added_column_is_picked_up_after_a_failed_call(sink: SqliteSink, db_path: Path) -> None:
    seed(sink, [1, "a", 10])
    wider = changes(Op.INSERT, ins(2, "b", 20, "red"), columns=["id", "name", "total", "colour"])
    with pytest.raises(SinkError, match="no column 'colour'"):
        sink.apply([tx("t2", wider)], position(2))
    operator = sqlite3.connect(db_path)
    operator.execute('ALTER TABLE "orders" ADD COLUMN "colour"')
    operator.commit()
    operator.close()
    sink.apply([tx("t2", wider)], position(2))
    assert rows(db_path) == [(1, "a", 10, None), (2, "b", 20, "red")]


def test_column_names_match_case_insensitively_like_sqlite(sink: SqliteSink, db_path: Path) -> None:
    seed(sink, [1, "a", 10])
    sink.apply([tx("t2", changes(Op.INSERT, ins(2, "b", 20), columns=["ID", "Name", "TOTAL"], key=["ID"]))],
               position(2))
    assert rows(db_path) == [(1, "a", 10), (2, "b", 20)]

def test_table_without_key_is_kept_as_a_multiset(sink: SqliteSink, db_path: Path) -> None:
    sink.apply([tx("t1", TableChanges("main.logs", Op.INSERT, ["n", "line"], [], [ins(1, "x"), ins(1, "x")]))], position(1))
    assert rows(db_path, "logs") == [(1, "x"), (1, "x")]  # more in tests/integration/test_keyless_sinks.py


# --- position -----------------------------------------------------------------------

def test_apply_stores_hold_and_promotion_with_the_position(sink: SqliteSink, db_path: Path) -> None:
    from dataclasses import replace

    held = replace(position(1), hold_until=50, excluded_txids=("a", "b"))
    sink.apply([], held)
    assert sink.read_position("shop", "m1") == held
    assert held.mode == "holding"
    promoted = replace(held, next_offset=2, hold_until=None, promoted_at=7, promote_target=8)
    sink.apply([], promoted)
    assert sink.read_position("shop", "m1") == promoted and promoted.mode == "promoted"
    operator = sqlite3.connect(db_path)
    state = operator.execute(f"SELECT promoted_at, promote_target, excluded_txids, next_offset FROM {STATE_TABLE}")
    assert state.fetchall() == [(7, 8, '["a", "b"]', 2)]
    operator.close()


# --- lifecycle ----------------------------------------------------------------------


def test_reopen_after_close_continues(db_path: Path) -> None:
    first = SqliteSink(db_path)
    seed(first, [1, "a", 10])
    first.close()
    first.close()  # idempotent
    with SqliteSink(db_path) as second:
        assert second.read_position("shop", "m1") == position(1, "seed")
        second.apply([tx("t2", changes(Op.UPDATE, upd([1, "a", 10], [1, "b", 11])))], position(2, "t2"))
        assert second.read_position("shop", "m1") == position(2, "t2")
    assert rows(db_path) == [(1, "b", 11)]


def test_mirror_is_in_wal_mode(sink: SqliteSink, db_path: Path) -> None:
    reader = sqlite3.connect(db_path)
    assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reader.close()


def test_a_reader_does_not_block_apply(sink: SqliteSink, db_path: Path) -> None:
    seed(sink, [1, "a", 10])
    reader = sqlite3.connect(db_path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    sink.apply([tx("t2", changes(Op.INSERT, ins(2, "b", 20)))], position(2))
    assert reader.execute("SELECT count(*) FROM orders").fetchone() == (1,)  # its snapshot holds
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM orders").fetchone() == (2,)
    reader.close()


def test_unopenable_path_is_a_one_line_sink_error(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="cannot open mirror database") as raised:
        SqliteSink(tmp_path / "missing-dir" / "mirror.db")
    assert "\n" not in str(raised.value)
    assert raised.value.hint


def test_non_database_file_is_a_sink_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SinkError, match="not a database"):
        SqliteSink(junk)


def test_apply_after_close_is_a_sink_error(db_path: Path) -> None:
    closed = SqliteSink(db_path)
    closed.close()
    with pytest.raises(SinkError):
        closed.apply([], position(1))


# --- open_sink ----------------------------------------------------------------------


def test_open_sink_reads_sqlite_url_as_absolute_path(db_path: Path) -> None:
    sink = open_sink(f"sqlite://{db_path}")
    try:
        assert isinstance(sink, SqliteSink)
        sink.apply([], position(1))
    finally:
        sink.close()
    assert STATE_TABLE in tables(db_path)


@pytest.mark.parametrize("url", ["mysql://h/db", "/tmp/x.db", "sqlite://host/x.db", "sqlite://"])
def test_open_sink_rejects_unknown_or_malformed_urls(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        open_sink(url)
    assert "\n" not in str(raised.value)

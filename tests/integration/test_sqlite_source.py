"""SqliteSource against real SQLite files, with real writer processes (no Kafka, no mocks)."""
from __future__ import annotations

import math
import multiprocessing
import random
import sqlite3
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from funnel.errors import SourceError
from funnel.events import Op, TableChanges
from producer.sources.base import SourceTransaction
from producer.sources.sqlite import CHANGELOG, GROUPS, SqliteSource

SPAWN = multiprocessing.get_context("spawn")
WAIT_S = 30  # bound on waiting for a writer process; never reached when things work


# -- helpers ------------------------------------------------------------------------


def make_db(path: Path, *ddl: str, journal_mode: str = "wal") -> str:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    for statement in ddl:
        conn.execute(statement)
    conn.close()
    return str(path)


def connect(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=WAIT_S)


def schema(path: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name").fetchall()


def write(path: str, *statements: tuple[str, tuple]) -> None:
    """Runs the statements as one application transaction."""
    conn = connect(path)
    conn.execute("BEGIN")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.execute("COMMIT")
    conn.close()


def all_transactions(source: SqliteSource, position: int) -> list[SourceTransaction]:
    """Every sealed group after ``position``, read a few groups at a time."""
    result: list[SourceTransaction] = []
    while batch := source.transactions_after(position, 7):
        result += batch
        position = batch[-1].position
    return result


def same(a: object, b: object) -> bool:
    """Equal in type and value; floats bit for bit (so -0.0 differs from 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


def replay(state: dict[tuple, list], changes: Iterable[TableChanges]) -> None:
    """Applies changes to ``state`` (key -> row) and checks every image against it:
    an insert's key must be new, an update's or delete's before image must be current."""
    for group in changes:
        key_at = [group.columns.index(k) for k in group.key]
        for row in group.rows:
            if group.op in (Op.UPDATE, Op.DELETE):
                old = (group.table, *(row.before[i] for i in key_at))
                assert state.pop(old) == row.before, f"stale before image {row.before}"
            if group.op in (Op.INSERT, Op.SNAPSHOT, Op.UPDATE):
                new = (group.table, *(row.after[i] for i in key_at))
                assert new not in state, f"{group.op.value} of existing key {new}"
                state[new] = row.after


def table_state(path: str, table: str, key: list[str]) -> dict[tuple, list]:
    conn = connect(path)
    cursor = conn.execute(f'SELECT * FROM "{table}"')
    columns = [d[0] for d in cursor.description]
    at = [columns.index(k) for k in key]
    state = {(table, *(r[i] for i in at)): list(r) for r in cursor}
    conn.close()
    return state


# -- writer processes (module level so that spawn can import them) -------------------


@dataclass
class Pace:
    """What a writer process and the sealing test tell each other (under ``cond``)."""

    cond: Any = field(default_factory=SPAWN.Condition)
    commits: Any = field(default_factory=lambda: SPAWN.Value("i", 0))
    seals: Any = field(default_factory=lambda: SPAWN.Value("i", 0))
    waiting: Any = field(default_factory=lambda: SPAWN.Value("i", 0))  # for a seal
    done: Any = field(default_factory=lambda: SPAWN.Value("i", 0))


def insert_transactions(path: str, count: int, rows_per_tx: int, pace: Pace) -> None:
    """``count`` transactions, each inserting ``rows_per_tx`` rows tagged with its number
    and bumping the counter row.

    Every 20 transactions it waits for a seal that began after its last commit: SQLite's
    locks are not fair, so a writer that never pauses would starve the sealer until it
    ends (a real application leaves gaps).  In between, the sealer competes with
    back-to-back transactions.
    """
    conn = connect(path)
    for tx in range(count):
        conn.execute("BEGIN IMMEDIATE")
        for i in range(rows_per_tx):
            conn.execute("INSERT INTO events(tx, i) VALUES (?, ?)", (tx, i))
        conn.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
        conn.execute("COMMIT")
        with pace.cond:
            pace.commits.value += 1
            pace.waiting.value = int(tx % 20 == 19)
            pace.cond.notify_all()
            if pace.waiting.value:  # a seal counted now may have begun before the commit
                target = pace.seals.value + 2
                pace.cond.wait_for(lambda: pace.seals.value >= target, WAIT_S)
                pace.waiting.value = 0
    conn.close()
    with pace.cond:
        pace.done.value = 1
        pace.cond.notify_all()


def churn(path: str, first_id: int, stop, progress, max_tx: int) -> None:
    """Inserts, updates and deletes items until ``stop`` (at most ``max_tx`` transactions);
    sets ``progress`` after every commit."""
    rng = random.Random(7)
    conn = connect(path)
    next_id = first_id
    for tx in range(max_tx):
        if stop.is_set():
            break
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(3):
            conn.execute("INSERT INTO items VALUES (?, ?, ?, 'new')", (next_id, tx, rng.random()))
            next_id += 1
        for _ in range(4):
            conn.execute("UPDATE items SET tx = ?, val = ?, note = note || '+' WHERE id = ?",
                         (tx, rng.random() * 1e6, rng.randrange(next_id)))
        conn.execute("DELETE FROM items WHERE id = ?", (rng.randrange(next_id),))
        conn.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
        conn.execute("COMMIT")
        progress.set()
    conn.close()


# -- refusing what cannot be captured ------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path) -> str:
    return make_db(
        tmp_path / "shop.db",
        "CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT, qty INTEGER)",
        "CREATE TABLE lines(order_id INTEGER, n INTEGER, sku TEXT, PRIMARY KEY (order_id, n))",
        "CREATE TABLE log(msg TEXT)",
        "CREATE VIEW big_orders AS SELECT * FROM orders WHERE qty > 10",
    )


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (["orders", "nosuch"], 'table "nosuch" does not exist'),
        (["big_orders"], '"big_orders" in .* is a view'),
        (["log"], 'table "log" .* has no PRIMARY KEY'),
        (None, 'table "log" .* has no PRIMARY KEY'),
        ([CHANGELOG], "does not exist|internal table"),
        (["sqlite_schema"], "internal table|does not exist"),
    ],
)
def test_refuses_uncapturable_tables_before_creating_anything(shop, tables, message):
    before = schema(shop)
    with pytest.raises(SourceError, match=message) as caught:
        SqliteSource(shop, tables)
    assert "\n" not in str(caught.value)
    assert schema(shop) == before
    if "PRIMARY KEY" in message:  # the CLI user reads the hint too
        assert "--rowid-key" in caught.value.hint


def test_an_application_table_with_the_reserved_prefix_is_refused_not_left_out(shop):
    write(shop, ("CREATE TABLE _timefunnel_audit(id INTEGER PRIMARY KEY, what TEXT)", ()))
    before = schema(shop)
    with pytest.raises(SourceError, match='table "_timefunnel_audit" .* reserved prefix') as caught:
        SqliteSource(shop, rowid_key=True)
    assert "--table" in caught.value.hint
    assert schema(shop) == before
    source = SqliteSource(shop, ["orders"])  # leaving it out by name is the operator's choice
    source.install()
    source.close()
    write(shop, ("DROP TABLE _timefunnel_audit", ()))
    SqliteSource(shop, rowid_key=True).close()  # the capture's own tables are not the application's


def test_missing_file_is_refused_and_not_created(tmp_path):
    path = tmp_path / "absent.db"
    with pytest.raises(SourceError, match="does not exist"):
        SqliteSource(str(path))
    assert not path.exists()


def test_install_rechecks_tables_and_creates_nothing_when_one_lost_its_key(shop):
    source = SqliteSource(shop, ["orders", "lines"])
    write(shop, ("DROP TABLE lines", ()), ("CREATE TABLE lines(order_id, n, sku)", ()))
    before = schema(shop)
    with pytest.raises(SourceError, match='"lines"'):
        source.install()
    assert schema(shop) == before
    source.close()


def test_rowid_key_is_opt_in_and_carries_rowid_first(shop):
    source = SqliteSource(shop, rowid_key=True)
    assert source.tables == ["lines", "log", "orders"]  # views are not "every table"
    source.install()
    write(shop, ("INSERT INTO log(rowid, msg) VALUES (41, 'hello')", ()),
          ("UPDATE log SET msg = 'bye' WHERE rowid = 41", ()))
    source.seal()
    (tx,) = source.transactions_after(0, 10)
    assert [(c.table, c.op, c.columns, c.key) for c in tx.changes] == [
        ("log", Op.INSERT, ["rowid", "msg"], ["rowid"]),
        ("log", Op.UPDATE, ["rowid", "msg"], ["rowid"]),
    ]
    assert tx.changes[1].rows[0] == ([41, "hello"], [41, "bye"])
    with source.snapshot() as snap:
        chunks = [c for c in snap if c.table == "log"]
    assert chunks[0].columns == ["rowid", "msg"] and chunks[0].rows[0].after == [41, "bye"]
    source.close()


def test_every_table_means_user_tables_only(shop):
    first = SqliteSource(shop, ["orders", "lines"])
    first.install()
    again = SqliteSource(shop, rowid_key=True)
    assert not any(name.startswith(("sqlite_", "_timefunnel_")) for name in again.tables)
    assert set(again.tables) == {"orders", "lines", "log"}
    first.close()
    again.close()


# -- row images ----------------------------------------------------------------------

EXACT_VALUES = [
    None, 0, 1, -1, 2**63 - 1, -(2**63),
    0.1, 1e308, -1e308, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
    1.1545580616824966e232,  # one that printf('%!.17g') does not round-trip on SQLite 3.40
    -0.0, 0.0, 1.0, float("inf"), float("-inf"), 1 / 3,
    "", "plain", "quotes ' \" and \\ backslash", "new\nline\ttab\r", "emoji 😀 ü 中文 \u2028",
    "nul \x00 inside", "{json-like: [1, 2]}",
    b"", bytes(range(256)), b"\x00",
]


def random_doubles(count: int) -> list[float]:
    rng = random.Random(1)
    bits = (rng.getrandbits(64).to_bytes(8, "little") for _ in range(count))
    values = [struct.unpack("<d", b)[0] for b in bits]
    return [v for v in values if not math.isnan(v)]  # SQLite stores NaN as NULL


def test_every_value_is_captured_exactly(tmp_path):
    path = make_db(tmp_path / "v.db", "CREATE TABLE v(id INTEGER PRIMARY KEY, x, r REAL, t TEXT)")
    source = SqliteSource(path)
    source.install()
    values = EXACT_VALUES + random_doubles(3000)
    write(path, *[("INSERT INTO v VALUES (?, ?, ?, ?)", (i, x, x, x))
                  for i, x in enumerate(values)])
    # what the table holds is the truth: REAL and TEXT columns convert on storage
    with connect(path) as conn:
        truth = [list(row) for row in conn.execute("SELECT * FROM v ORDER BY id")]
    assert all(same(row[1], x) for row, x in zip(truth, values))  # untyped keeps all, -0.0 too
    write(path, ("UPDATE v SET x = x, r = r, t = t", ()))
    write(path, ("DELETE FROM v", ()))
    source.seal()
    (tx,) = source.transactions_after(0, 10)
    inserts, updates, deletes = tx.changes
    assert (inserts.op, updates.op, deletes.op) == (Op.INSERT, Op.UPDATE, Op.DELETE)
    assert len(inserts.rows) == len(updates.rows) == len(deletes.rows) == len(truth)
    for expected, ins, upd, dele in zip(truth, inserts.rows, updates.rows, deletes.rows):
        for image in (ins.after, upd.before, upd.after, dele.before):
            assert len(image) == 4 and all(map(same, image, expected)), f"{image} != {expected}"
    source.close()


def test_snapshot_values_are_exact(tmp_path):
    path = make_db(tmp_path / "v.db", "CREATE TABLE v(id INTEGER PRIMARY KEY, x)")
    write(path, *[("INSERT INTO v VALUES (?, ?)", (i, x)) for i, x in enumerate(EXACT_VALUES)])
    source = SqliteSource(path)
    source.install()
    rows = [row.after for chunk in source.snapshot(chunk_rows=7) for row in chunk.rows]
    assert len(rows) == len(EXACT_VALUES)
    assert all(same(r[1], x) for r, x in zip(rows, EXACT_VALUES))
    source.close()


def test_images_and_grouping_of_consecutive_changes(shop):
    source = SqliteSource(shop, ["orders", "lines"])
    source.install()
    write(
        shop,
        ("INSERT INTO orders VALUES (1, 'tea', 2), (2, 'cake', 1)", ()),
        ("INSERT INTO lines VALUES (1, 1, 'T-1')", ()),
        ("UPDATE lines SET n = 2, sku = 'T-2' WHERE order_id = 1", ()),  # key changes
        ("UPDATE orders SET qty = qty + 1", ()),
        ("DELETE FROM orders WHERE id = 2", ()),
    )
    source.seal()
    (tx,) = source.transactions_after(0, 10)
    summary = [(c.table, c.op, c.columns, c.key, [tuple(r) for r in c.rows]) for c in tx.changes]
    assert summary == [
        ("orders", Op.INSERT, ["id", "item", "qty"], ["id"],
         [(None, [1, "tea", 2]), (None, [2, "cake", 1])]),
        ("lines", Op.INSERT, ["order_id", "n", "sku"], ["order_id", "n"], [(None, [1, 1, "T-1"])]),
        ("lines", Op.UPDATE, ["order_id", "n", "sku"], ["order_id", "n"],
         [([1, 1, "T-1"], [1, 2, "T-2"])]),
        ("orders", Op.UPDATE, ["id", "item", "qty"], ["id"],
         [([1, "tea", 2], [1, "tea", 3]), ([2, "cake", 1], [2, "cake", 2])]),
        ("orders", Op.DELETE, ["id", "item", "qty"], ["id"], [([2, "cake", 2], None)]),
    ]
    assert tx.row_count == 7 and tx.position > 0
    source.close()


def test_generated_columns_are_left_out(tmp_path):
    path = make_db(tmp_path / "g.db",
                   "CREATE TABLE g(id INTEGER PRIMARY KEY, a INT, b INT AS (a * 2) STORED)")
    source = SqliteSource(path)
    source.install()
    write(path, ("INSERT INTO g(id, a) VALUES (1, 21)", ()))
    source.seal()
    (tx,) = source.transactions_after(0, 1)
    assert tx.changes[0].columns == ["id", "a"] and tx.changes[0].rows[0].after == [1, 21]
    source.close()


# -- install -------------------------------------------------------------------------


def test_install_is_idempotent(shop):
    source = SqliteSource(shop, ["orders"])
    source.install()
    installed = schema(shop)
    source.install()
    SqliteSource(shop, ["orders"]).install()
    assert schema(shop) == installed
    assert sum(1 for kind, name, _ in installed if kind == "trigger") == 3
    write(shop, ("INSERT INTO orders VALUES (1, 'tea', 2)", ()))
    source.seal()
    (tx,) = source.transactions_after(0, 10)
    assert tx.row_count == 1  # one trigger per operation, not one per install
    source.close()


def test_install_drops_triggers_of_tables_no_longer_captured(shop):
    SqliteSource(shop, ["orders", "lines"]).install()
    source = SqliteSource(shop, ["orders"])
    source.install()
    write(shop, ("INSERT INTO lines VALUES (1, 1, 'x')", ()),
          ("INSERT INTO orders VALUES (1, 'a', 1)", ()))
    source.seal()
    (tx,) = source.transactions_after(0, 10)
    assert [c.table for c in tx.changes] == ["orders"]
    source.close()


def test_snapshot_before_install_is_refused(shop):
    source = SqliteSource(shop, ["orders"])
    with pytest.raises(SourceError, match="capture is not installed") as caught:
        source.snapshot()
    assert caught.value.hint == "call install() first"
    source.close()


# -- sealing ---------------------------------------------------------------------------


def test_seal_groups_with_injected_clock(shop):
    stamps = iter([1_000, 2_000, 1_500, 9_000])
    source = SqliteSource(shop, ["orders"], clock=lambda: next(stamps))
    source.install()
    assert source.seal() is None  # nothing to seal: no group, clock untouched
    write(shop, ("INSERT INTO orders VALUES (1, 'a', 1)", ()))
    first = source.seal()
    assert source.seal() is None
    write(shop, ("INSERT INTO orders VALUES (2, 'b', 1)", ()))
    write(shop, ("INSERT INTO orders VALUES (3, 'c', 1), (4, 'd', 1)", ()))
    second = source.seal()
    write(shop, ("DELETE FROM orders WHERE id = 4", ()))
    third = source.seal()  # the clock stepped back to 1_500
    txs = source.transactions_after(0, 10)
    assert [(t.txid, t.commit_ts, t.row_count) for t in txs] == [
        (str(first), 1_000, 1), (str(second), 2_000, 3), (str(third), 2_000, 1),
    ]
    assert txs[0].position < txs[1].position < txs[2].position
    assert source.transactions_after(0, 1) == txs[:1]
    assert source.transactions_after(txs[0].position, 10) == txs[1:]
    assert source.transactions_after(txs[2].position, 10) == []
    source.close()


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_groups_never_split_application_transactions(tmp_path, journal_mode):
    path = make_db(
        tmp_path / "w.db",
        "CREATE TABLE events(id INTEGER PRIMARY KEY, tx INTEGER, i INTEGER)",
        "CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER)",
        "INSERT INTO counter VALUES (1, 0)",
        journal_mode=journal_mode,
    )
    source = SqliteSource(path)
    source.install()
    count, rows_per_tx = 300, 10
    pace = Pace()
    writer = SPAWN.Process(target=insert_transactions, args=(path, count, rows_per_tx, pace))
    writer.start()
    seen, finished = 0, False
    while not finished:  # seal after every commit the writer reports, while it writes
        with pace.cond:
            pace.cond.wait_for(
                lambda: pace.commits.value > seen or pace.waiting.value or pace.done.value, WAIT_S
            )
            seen, finished = pace.commits.value, pace.done.value or not writer.is_alive()
        source.seal()
        with pace.cond:
            pace.seals.value += 1
            pace.cond.notify_all()
    writer.join(WAIT_S)
    assert writer.exitcode == 0
    txs = all_transactions(source, 0)
    groups_of_tx: dict[int, set[str]] = {}
    rows_of_tx: Counter[int] = Counter()
    for tx in txs:
        for change in (c for c in tx.changes if c.table == "events"):
            for row in change.rows:
                groups_of_tx.setdefault(row.after[1], set()).add(tx.txid)
                rows_of_tx[row.after[1]] += 1
    for tx in txs:
        # transaction t ends by moving the counter from t to t + 1: a group holds the
        # ends of exactly the transactions whose rows it holds
        ended = {r.before[1] for c in tx.changes if c.table == "counter" for r in c.rows}
        assert ended == {t for t, gids in groups_of_tx.items() if tx.txid in gids}
    assert len(txs) >= count // 20
    assert set(rows_of_tx) == set(range(count))
    assert all(n == rows_per_tx for n in rows_of_tx.values())
    assert all(len(gids) == 1 for gids in groups_of_tx.values())


# -- snapshot --------------------------------------------------------------------------


def test_snapshot_meets_changes_exactly_while_a_writer_runs(tmp_path):
    path = make_db(
        tmp_path / "s.db",
        "CREATE TABLE items(id INTEGER PRIMARY KEY, tx INTEGER, val REAL, note TEXT)",
        "CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER)",
        "INSERT INTO counter VALUES (1, 0)",
    )
    size = 100_000
    write(path, *[("INSERT INTO items VALUES (?, -1, ?, 'initial')", (i, i / 7))
                  for i in range(size)])
    source = SqliteSource(path)
    source.install()
    stop, progress = SPAWN.Event(), SPAWN.Event()
    writer = SPAWN.Process(target=churn, args=(path, size, stop, progress, 200_000))
    writer.start()
    try:
        assert progress.wait(WAIT_S), "writer did not start"
        state: dict[tuple, list] = {}
        chunk_rows = 4_000
        snap = source.snapshot(chunk_rows=chunk_rows)
        for number, chunk in enumerate(snap):
            assert chunk.op is Op.SNAPSHOT and 0 < len(chunk.rows) <= chunk_rows
            replay(state, [chunk])
            if number == 0:  # prove that the writer commits while the copy is open
                progress.clear()
                assert progress.wait(WAIT_S), "writer made no commit during the snapshot"
    finally:
        stop.set()
        writer.join(WAIT_S)
    assert writer.exitcode == 0
    source.seal()
    after = all_transactions(source, snap.position)
    assert after and all(tx.position > snap.position for tx in after)
    snapshot_count = state[("counter", 1)][1]
    replay(state, (c for tx in after for c in tx.changes))  # checks every before image
    final = table_state(path, "items", ["id"])
    final.update(table_state(path, "counter", ["id"]))
    assert state == final
    bumps = [r for tx in after for c in tx.changes if c.table == "counter" for r in c.rows]
    assert [r.before[1] for r in bumps] == list(range(snapshot_count, snapshot_count + len(bumps)))
    source.close()


def test_position_inside_a_group_splits_it_at_the_commit_boundary(shop):
    source = SqliteSource(shop, ["orders"])
    source.install()
    write(shop, ("INSERT INTO orders VALUES (1, 'a', 1), (2, 'b', 1)", ()))
    with connect(shop) as conn:  # where a snapshot taken now would stand
        middle = conn.execute(f"SELECT max(seq) FROM {CHANGELOG}").fetchone()[0]
    write(shop, ("INSERT INTO orders VALUES (3, 'c', 1)", ()))
    gid = source.seal()
    (tx,) = source.transactions_after(middle, 10)
    assert tx.txid == str(gid) and [r.after[0] for r in tx.changes[0].rows] == [3]
    (whole,) = source.transactions_after(0, 10)
    assert whole.row_count == 3 and whole.position == tx.position
    source.close()


def test_snapshot_position_is_a_group_boundary(shop):
    source = SqliteSource(shop, ["orders"])
    source.install()
    write(shop, ("INSERT INTO orders VALUES (1, 'a', 1)", ()))
    with source.snapshot() as snap:
        copied = [row.after for chunk in snap for row in chunk.rows]
    write(shop, ("UPDATE orders SET qty = 5 WHERE id = 1", ()))
    source.seal()
    assert copied == [[1, "a", 1]]
    (before, ) = source.transactions_after(0, 10)[:1]
    assert before.position == snap.position  # the snapshot sealed exactly at its point
    (tx,) = source.transactions_after(snap.position, 10)
    assert [c.op for c in tx.changes] == [Op.UPDATE]
    source.close()


# -- acknowledge -----------------------------------------------------------------------


def test_acknowledge_removes_published_rows_and_never_reuses_numbers(shop):
    source = SqliteSource(shop, ["orders"])
    source.install()
    write(shop, ("INSERT INTO orders VALUES (1, 'a', 1)", ()))
    source.seal()
    write(shop, ("INSERT INTO orders VALUES (2, 'b', 1)", ()))
    source.seal()
    first, second = source.transactions_after(0, 10)
    source.acknowledge(first.position)
    assert source.transactions_after(0, 10) == [second]
    source.acknowledge(second.position)
    with connect(shop) as conn:
        assert conn.execute(f"SELECT count(*) FROM {CHANGELOG}").fetchone()[0] == 0
        assert conn.execute(f"SELECT count(*) FROM {GROUPS}").fetchone()[0] == 0
    write(shop, ("INSERT INTO orders VALUES (3, 'c', 1)", ()))
    source.seal()
    (third,) = source.transactions_after(0, 10)
    assert third.position > second.position and int(third.txid) > int(second.txid)
    with source.snapshot() as snap:
        assert snap.position == third.position
        assert sum(len(c.rows) for c in snap) == 3
    source.close()


# -- schema changes that change no captured table (the ones that do: test_sqlite_follow.py) --


def installed_with_one_sealed_row(shop: str) -> tuple[SqliteSource, SourceTransaction]:
    source = SqliteSource(shop, ["orders", "lines"])
    source.install()
    write(shop, ("INSERT INTO orders VALUES (1, 'tea', 2)", ()))
    source.seal()
    (first,) = source.transactions_after(0, 10)
    return source, first


def test_ddl_that_changes_no_captured_table_goes_on(shop):
    source, first = installed_with_one_sealed_row(shop)
    write(shop, ("CREATE TABLE IF NOT EXISTS orders(x)", ()), ("CREATE VIEW v AS SELECT 1", ()))
    write(shop, ("CREATE TRIGGER audit AFTER INSERT ON orders BEGIN SELECT 1; END", ()))
    write(shop, ("INSERT INTO orders VALUES (2, 'cake', 1)", ()))
    source.seal()
    (second,) = source.transactions_after(first.position, 10)
    assert second.changes[0].rows[0].after == [2, "cake", 1]
    source.close()


def test_an_index_is_published_after_the_rows_before_it(shop):
    source, first = installed_with_one_sealed_row(shop)
    write(shop, ("INSERT INTO orders VALUES (2, 'cake', 1)", ()), ("CREATE UNIQUE INDEX orders_item ON orders(item)", ()))
    source.seal()
    rows, index = source.transactions_after(first.position, 10)
    assert rows.changes[0].rows[0].after == [2, "cake", 1]
    (ddl,) = [c.ddl for c in index.changes]
    assert (ddl.tag, ddl.actions[0].columns, ddl.actions[0].unique) == ("CREATE INDEX", ("item",), True)
    write(shop, ("DROP INDEX orders_item", ()))
    source.seal()
    (dropped,) = source.transactions_after(index.position, 10)
    assert [c.ddl.tag for c in dropped.changes] == ["DROP INDEX"]
    source.close()


def test_dotted_table_names_are_qualified_in_events(tmp_path):
    shop = make_db(tmp_path / "names.db", 'CREATE TABLE "a.b"(id INTEGER PRIMARY KEY, v TEXT)',
                   "CREATE TABLE a_b(id INTEGER PRIMARY KEY, v TEXT)",
                   'CREATE TABLE "main.t"(id INTEGER PRIMARY KEY, v TEXT)', "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    source = SqliteSource(shop)
    source.install()
    with source.snapshot() as snap:
        assert sorted(chunk.table for chunk in snap) == ["a_b", "main.a.b", "main.main.t", "t"]
    write(shop, ('INSERT INTO "a.b" VALUES (1, "x")', ()), ('INSERT INTO "main.t" VALUES (1, "y")', ()))
    source.seal()
    (tx,) = source.transactions_after(snap.position, 10)
    assert [(c.table, c.rows[0].after) for c in tx.changes] == [("main.a.b", [1, "x"]), ("main.main.t", [1, "y"])]
    source.close()

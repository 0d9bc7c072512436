"""SQLite capture follows the application's migrations (real SQLite files, the real SQLite sink, no Kafka).

Each test installs capture, makes the initial copy into a mirror with the SQLite sink,
runs a migration the way an application would (its own connection, rows written before
and after the DDL in the same transaction), seals, and applies what was published: the
mirror must then equal production, schema (column names) and rows.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from applier.sinks.sqlite import SqliteSink
from applier.transaction import MirrorPosition, Transaction
from funnel.ddl import DROP_COLUMN
from funnel.errors import SchemaChangedError, SourceError
from funnel.events import ChangeBatch, Kind, Op
from producer.sources.sqlite import SqliteSource

TABLES = ("CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT, qty INTEGER)",
          "CREATE TABLE lines(order_id INTEGER, n INTEGER, sku TEXT, PRIMARY KEY (order_id, n))")


class Mirror:
    """A SQLite mirror fed straight from the source: the initial copy, then every sealed group."""

    def __init__(self, source: SqliteSource, path: Path) -> None:
        self.source, self.path, self.sink, self.offset = source, path, SqliteSink(path), 0
        with source.snapshot() as snap:
            self._apply("snapshot", list(snap), Kind.SNAPSHOT)
            self.position = snap.position

    def _apply(self, txid: str, changes: list, kind: Kind = Kind.CHANGES) -> None:
        batch = ChangeBatch("shop", txid, 1, 0, 0, sum(len(c.rows) for c in changes), kind, changes)
        self.sink.apply([Transaction(txid, 1, kind, self.offset, self.offset, [batch])],
                        MirrorPosition("shop", "m1", "shop", 0, self.offset + 1, snapshot_done=True))
        self.offset += 1

    def follow(self) -> list:
        self.source.seal()
        transactions = self.source.transactions_after(self.position, 100)
        for tx in transactions:
            self._apply(tx.txid, tx.changes)
            self.position = tx.position
        return transactions


def make_db(path: Path, *ddl: str) -> str:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in ddl:
        conn.execute(statement)
    conn.close()
    return str(path)


def run(path: str, script: str) -> None:
    """One application transaction on its own connection."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.executescript(f"BEGIN; {script}; COMMIT")
    finally:
        conn.close()  # rolls a failed transaction back


def dump(path: str | Path) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every user table: its column names and its rows, ordered."""
    conn = sqlite3.connect(path)
    tables = [n for (n,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' AND "
                                         "name NOT LIKE '\\_timefunnel\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' "
                                         "ESCAPE '\\' ORDER BY name")]
    result = {}
    for table in tables:
        columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
        result[table] = (columns, sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr))
    conn.close()
    return result


def indexes(path: str | Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT name, tbl_name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL "
                            "AND name NOT LIKE '\\_timefunnel\\_%' ESCAPE '\\' ORDER BY name").fetchall()
    finally:
        conn.close()


@pytest.fixture
def shop(tmp_path: Path) -> str:
    path = make_db(tmp_path / "shop.db", *TABLES)
    run(path, "INSERT INTO orders VALUES (1, 'tea', 2); INSERT INTO lines VALUES (1, 1, 'x')")
    return path


@pytest.mark.parametrize(
    ("migration", "then", "tags"),
    [
        ("ALTER TABLE orders ADD COLUMN price REAL DEFAULT 1.5", "UPDATE orders SET price = 9 WHERE id = 3",
         ["ALTER TABLE"]),
        ("ALTER TABLE orders RENAME COLUMN qty TO amount", "UPDATE orders SET amount = 8 WHERE id = 1",
         ["ALTER TABLE"]),
        ("DROP TABLE lines", "SELECT 1", ["DROP TABLE"]),
        ("ALTER TABLE lines RENAME TO order_lines", "INSERT INTO order_lines VALUES (3, 1, 'z')", ["ALTER TABLE"]),
        ("CREATE TABLE coupons(code TEXT PRIMARY KEY, pct INTEGER); INSERT INTO coupons VALUES ('A', 5)",
         "INSERT INTO coupons VALUES ('B', 6)", ["CREATE TABLE"]),
        # SQLite's way to change a type: a new table, copied, renamed over the old one; our triggers go
        ("CREATE TABLE l2(order_id INTEGER, n INTEGER, sku BLOB, PRIMARY KEY (order_id, n)); "
         "INSERT INTO l2 SELECT * FROM lines; DROP TABLE lines; ALTER TABLE l2 RENAME TO lines",
         "UPDATE lines SET sku = x'00'", ["ALTER TABLE"]),
        ("CREATE INDEX orders_qty ON orders(qty)", "DROP INDEX orders_qty; CREATE UNIQUE INDEX o_item ON orders(item)",
         ["CREATE INDEX"]),
    ],
    ids=["add-column", "rename-column", "drop-table", "rename-table", "create-table", "rebuild-table", "index"],
)
def test_a_migration_is_followed_with_the_rows_around_it(shop, tmp_path, migration, then, tags):
    source = SqliteSource(shop)
    source.install()
    mirror = Mirror(source, tmp_path / "mirror.db")
    run(shop, "INSERT INTO orders VALUES (2, 'cake', 1)")
    mirror.follow()
    # Rows before and after the DDL in one application transaction, and one after it.
    run(shop, f"INSERT INTO orders VALUES (3, 'jam', 4); UPDATE lines SET sku = 'y'; {migration}; {then}; "
              "UPDATE orders SET item = 'toast' WHERE id = 1; DELETE FROM orders WHERE id = 2")
    run(shop, "INSERT INTO orders(id, item) VALUES (5, 'pie')")
    published = mirror.follow()
    ddl = [c.ddl.tag for tx in published for c in tx.changes if c.op is Op.DDL]
    assert ddl == tags
    assert dump(mirror.path) == dump(shop)
    assert indexes(mirror.path) == indexes(shop)
    # and capture goes on with the new triggers
    run(shop, "INSERT INTO orders(id, item) VALUES (6, 'bun'); UPDATE orders SET item = 'tart' WHERE id = 3")
    assert not [c for tx in mirror.follow() for c in tx.changes if c.op is Op.DDL]
    assert dump(mirror.path) == dump(shop)
    source.close()


def test_drop_column_through_funnel_migrate_is_followed(shop, tmp_path):
    source = SqliteSource(shop)
    source.install()
    mirror = Mirror(source, tmp_path / "mirror.db")
    with pytest.raises(sqlite3.OperationalError, match="error in trigger _timefunnel_"):
        run(shop, "ALTER TABLE orders DROP COLUMN qty")  # SQLite: our trigger names the column
    SqliteSource(shop).migrate("ALTER TABLE orders DROP COLUMN qty; INSERT INTO orders VALUES (7, 'a;b')")
    run(shop, "SELECT 1 FROM orders; INSERT INTO orders VALUES (8, 'c')")  # before capture's next seal
    published = mirror.follow()
    assert [a.kind for tx in published for c in tx.changes if c.op is Op.DDL for a in c.ddl.actions] == [DROP_COLUMN]
    assert dump(mirror.path) == dump(shop)
    assert dump(shop)["orders"][0] == ["id", "item"]
    source.close()


def test_a_failing_migration_applies_nothing(shop):
    source = SqliteSource(shop)
    source.install()
    with pytest.raises(SourceError, match="migration statement 2 failed.*nothing of the migration was applied"):
        source.migrate("ALTER TABLE orders DROP COLUMN qty; ALTER TABLE nope ADD COLUMN x")
    assert dump(shop)["orders"][0] == ["id", "item", "qty"]
    source.close()


def test_a_resumed_capture_follows_what_changed_while_it_was_stopped(shop, tmp_path):
    source = SqliteSource(shop)
    source.install()
    mirror = Mirror(source, tmp_path / "mirror.db")
    source.close()
    run(shop, "INSERT INTO orders VALUES (2, 'x', 1); ALTER TABLE orders ADD COLUMN note TEXT; "
              "UPDATE orders SET note = 'n' WHERE id = 1; CREATE TABLE coupons(code TEXT PRIMARY KEY); "
              "INSERT INTO coupons VALUES ('A')")
    resumed = SqliteSource(shop)
    resumed.install(resuming=True)
    mirror.source = resumed
    mirror.follow()
    assert dump(mirror.path) == dump(shop)
    resumed.close()


@pytest.mark.parametrize(
    ("migration", "message"),
    [
        ("CREATE TABLE o2(id INTEGER, item TEXT, qty INTEGER, PRIMARY KEY (id, item)); INSERT INTO o2 SELECT * FROM orders; "
         "DROP TABLE orders; ALTER TABLE o2 RENAME TO orders", "re-created with primary key"),
        ("CREATE TABLE notes(body TEXT)", 'table "notes" in .* has no PRIMARY KEY'),
    ],
    ids=["key-change", "new-table-without-key"],
)
def test_what_cannot_be_followed_still_stops_before_anything_after_it(shop, tmp_path, migration, message):
    source = SqliteSource(shop)
    source.install()
    mirror = Mirror(source, tmp_path / "mirror.db")
    run(shop, f"INSERT INTO orders VALUES (3, 'jam', 4); {migration}")
    for _ in range(2):
        with pytest.raises(SchemaChangedError, match=message) as caught:
            source.seal()
        assert "cannot follow" in str(caught.value) and "new funnel" in caught.value.hint
    assert source.transactions_after(mirror.position, 10) == []
    source.close()


def test_a_new_table_joins_a_capture_of_every_table_but_not_one_of_named_tables(shop):
    everything, named = SqliteSource(shop), SqliteSource(shop, ["orders"])
    everything.install()
    run(shop, "CREATE TABLE coupons(code TEXT PRIMARY KEY); INSERT INTO coupons VALUES ('X')")
    everything.seal()
    (tx,) = everything.transactions_after(0, 10)
    assert [(c.table, c.op) for c in tx.changes] == [("coupons", Op.DDL), ("coupons", Op.INSERT)]
    run(shop, "INSERT INTO orders VALUES (2, 'cake', 1); INSERT INTO coupons VALUES ('Y')")
    named.seal()  # named captures only orders: coupons is not followed, its rows are recorded for everything
    (second,) = named.transactions_after(tx.position, 10)
    assert sorted(c.table for c in second.changes) == ["coupons", "orders"]
    everything.close()
    named.close()


def test_the_schema_change_is_stamped_after_the_rows_before_it(shop, tmp_path):
    source = SqliteSource(shop, clock=lambda: 1_000)  # a clock that does not move
    source.install()
    run(shop, "INSERT INTO orders VALUES (2, 'cake', 1); ALTER TABLE orders ADD COLUMN note TEXT")
    source.seal()
    before, change = source.transactions_after(0, 10)
    assert [c.op for c in change.changes][0] is Op.DDL
    assert change.commit_ts > before.commit_ts, "promote --at the DDL's time must keep the rows before it"
    source.close()

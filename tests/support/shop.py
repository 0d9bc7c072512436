"""The shop: the test application of the SQLite drills (tests/scenarios), in one place.

Three tables (customers, orders, items) written in small transactions: every fifth
order brings a new customer, each order two items, and most also update an older order,
so updates, inserts and multi-table transactions all travel through the funnel.  The
drills drive it from a thread of their own (``test_disaster_drill.Shop``,
``test_switchback.App``); this module is what they share.
"""
from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

from tests.support.processes import table_rows

TABLES = ["customers", "orders", "items"]
POLL = "20ms"  # capture poll interval: groups stay small, so drills have many transactions
SCHEMA = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL, note TEXT);
CREATE TABLE items (id INTEGER PRIMARY KEY, order_id INTEGER, sku TEXT, qty INTEGER);
"""


def create_shop(path: Path) -> None:
    """The shop's tables in a new SQLite file, in WAL mode (the application and capture read concurrently)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
    finally:
        conn.close()


def place_order(conn: sqlite3.Connection, n: int, rng: random.Random) -> None:
    """Order ``n`` as one transaction (``conn`` in autocommit mode, ``isolation_level=None``)."""
    conn.execute("BEGIN IMMEDIATE")
    if n % 5 == 1:
        conn.execute("INSERT INTO customers VALUES (?, ?)", (n, f"customer {n}"))
    conn.execute("INSERT INTO orders VALUES (?, ?, ?, ?)", (n, n - n % 5 + 1, rng.random() * 100, f"o{n}"))
    conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?)",
                     [(n * 10 + i, n, f"sku-{rng.randrange(50)}", rng.randrange(1, 5)) for i in range(2)])
    if n > 3:
        conn.execute("UPDATE orders SET total = total + 1, note = note || '+' WHERE id = ?", (rng.randrange(1, n),))
    conn.execute("COMMIT")


def copy_of(path: Path) -> Path:
    """A consistent copy of the database at ``path`` beside it (SQLite's online backup)."""
    copy = path.with_name(f"copy-{time.time_ns()}.db")
    source, target = sqlite3.connect(path), sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return copy


def rows(db: Path) -> dict[str, list[tuple]]:
    """Every row of the shop's tables, by table."""
    return {table: table_rows(db, table) for table in TABLES}


def snapshot_applied(mirror: Path) -> bool:
    """The mirror holds the initial copy (its state row says so)."""
    conn = sqlite3.connect(mirror)
    try:
        return conn.execute("SELECT snapshot_done FROM _timefunnel_state").fetchone() == (1,)
    finally:
        conn.close()


def ok(result) -> str:
    """The stdout of a CLI run that must succeed (else its exit code and output)."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout

"""Removing what a capture installed (``Source.uninstall``, ``producer.sources.uninstall_capture``),
as the switchback does on production before its reset and on the mirror at the end: it must
work where capturing would be refused (a table without a key, a database frozen read-only)."""
from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import psycopg

from producer.sources import uninstall_capture
from producer.sources.postgres import PostgresSource, default_publication_name, default_slot_name
from producer.sources.sqlite import CAPTURED, CHANGELOG, GROUPS, LAYOUTS, SqliteSource
from tests.integration.test_postgres_source import admin, created_objects, db  # noqa: F401 (db is a fixture)


def sqlite_objects(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'").fetchall())


def test_sqlite_uninstall_leaves_only_the_application(tmp_path: Path) -> None:
    path = tmp_path / "prod.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT)")
        conn.execute("INSERT INTO orders VALUES (1, 'pen')")
    with SqliteSource(str(path)) as source:
        source.install()
    with sqlite3.connect(path) as conn:  # capture would now refuse this file: a table without a key
        conn.execute("CREATE TABLE notes(text TEXT)")
    assert ("table", CHANGELOG) in sqlite_objects(path)
    assert uninstall_capture(f"sqlite:///{path}", "f1") == ["3 capture triggers", CHANGELOG, GROUPS, LAYOUTS, CAPTURED]
    assert sqlite_objects(path) == [("table", "notes"), ("table", "orders")]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT * FROM orders").fetchall() == [(1, "pen")]
    assert uninstall_capture(f"sqlite:///{path}", "f1") == []
    assert uninstall_capture(f"sqlite:///{tmp_path / 'missing.db'}", "f1") == []


def test_sqlite_source_uninstall_method(tmp_path: Path) -> None:
    path = tmp_path / "prod.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT)")
    with SqliteSource(str(path)) as source:
        source.install()
        assert source.uninstall() == ["3 capture triggers", CHANGELOG, GROUPS, LAYOUTS, CAPTURED]
    assert sqlite_objects(path) == [("table", "orders")]


def test_postgres_uninstall_drops_slot_and_publication_of_a_frozen_database(db: str) -> None:  # noqa: F811
    funnel = f"f_{uuid.uuid4().hex[:8]}"
    slot = default_slot_name(funnel)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders(id int PRIMARY KEY, item text)")
    source = PostgresSource(db, slot=slot)
    try:
        source.install()
        source.snapshot().close()  # creates the slot
    finally:
        source.close()
    assert created_objects(db) == (1, 1)
    dbname = psycopg.conninfo.conninfo_to_dict(db)["dbname"]
    with admin(db) as conn:  # what the switchback's freeze does
        conn.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
    assert uninstall_capture(db, funnel) == [f"replication slot {slot}",
                                             f"publication {default_publication_name(slot)}"]
    assert created_objects(db) == (0, 0)
    assert uninstall_capture(db, funnel) == []

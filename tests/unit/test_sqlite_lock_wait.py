"""Waiting for SQLite's write lock while watching a stop event (funnel.databases.sqlite.begin_immediate)."""
from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing

import pytest

from funnel.databases import sqlite as sqlite_files
from producer.sources.base import SourceStopped
from producer.sources.sqlite import SqliteSource


def _database(tmp_path) -> str:
    path = str(tmp_path / "prod.db")
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    return path


def test_a_free_lock_is_taken_and_the_busy_timeout_is_restored(tmp_path) -> None:
    with closing(sqlite_files.connect(_database(tmp_path), timeout=7)) as conn:
        assert sqlite_files.begin_immediate(conn, 7, lambda: True)
        assert conn.in_transaction
        conn.execute("ROLLBACK")
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 7000


def test_a_held_lock_is_waited_for_until_stop_then_nothing_begins(tmp_path) -> None:
    path = _database(tmp_path)
    stop = threading.Event()
    with closing(sqlite_files.connect(path)) as application, closing(sqlite_files.connect(path)) as conn:
        application.execute("BEGIN IMMEDIATE")
        threading.Timer(0.5, stop.set).start()
        started = time.monotonic()
        assert not sqlite_files.begin_immediate(conn, 30, stop.is_set)
        assert time.monotonic() - started < 5 and not conn.in_transaction


def test_a_lock_held_past_the_busy_timeout_fails_as_before(tmp_path) -> None:
    path = _database(tmp_path)
    with closing(sqlite_files.connect(path)) as application, closing(sqlite_files.connect(path)) as conn:
        application.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            sqlite_files.begin_immediate(conn, 0.6, lambda: False)


def test_a_stopped_capture_seals_nothing_while_the_application_holds_the_lock(tmp_path) -> None:
    path = _database(tmp_path)
    stop = threading.Event()
    with SqliteSource(path) as source, closing(sqlite_files.connect(path)) as application:
        source.install()
        source.stop_waits_on(stop)
        application.execute("BEGIN IMMEDIATE")
        application.execute("INSERT INTO t VALUES (1, 'held')")
        stop.set()
        with pytest.raises(SourceStopped):
            source.seal()
        application.execute("COMMIT")
        stop.clear()
        assert source.seal() is not None  # the change is sealed once the capture runs again

"""Trust under real conditions: names never merge, columns never change meaning silently,
and nothing applies into the database its own capture reads.

Real SQLite files and PostgreSQL databases, the real CLI as processes, the session broker;
what the funnel holds is read back with ``funnel.reader``.
"""
from __future__ import annotations

import hashlib
import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest

from funnel.codec import EventCodec
from funnel.control import ControlChannel
from funnel.kafka import KafkaSettings
from funnel.reader import FunnelReader
from producer.sources.marks import capture_slots, refuse_capture_source
from producer.sources.postgres import default_slot_name
from producer.sources.sqlite import SqliteSource
from tests.support.processes import run_funnel, start_funnel, table_rows, wait_for, write_transaction

WAIT_S = 60  # bound on waiting for the processes; never reached when things work


def funnel_rows(bootstrap: str, funnel: str) -> list[tuple[str, list, list]]:
    """Every row change the funnel holds: (table, columns, after image or before image)."""
    codec = EventCodec()
    with FunnelReader(KafkaSettings(bootstrap), funnel) as reader:
        low, high = reader.watermarks()
        return [(group.table, group.columns, row.after or row.before)
                for tx in reader.transactions(low, high, keep_payloads=True)
                for batch in map(codec.decode, tx.payloads) for group in batch.changes for row in group.rows]


def error_lines(output: str) -> tuple[str, str]:
    """The capture's or apply's `Error:` and `Try:` lines; there is no traceback."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    hints = [line for line in output.splitlines() if line.startswith("Try: ")]
    assert len(errors) == 1 and len(hints) == 1, output
    return errors[0], hints[0]


# -- 2b: a schema change capture cannot follow stops it before anything wrong is published --


@pytest.mark.parametrize(
    ("ddl", "after", "message"),
    [
        # Capture follows migrations (test_sqlite_follow.py), except what a mirror cannot follow in place.
        ("CREATE TABLE o2 (id INTEGER, item TEXT, qty INTEGER, PRIMARY KEY (id, item)); "
         "INSERT INTO o2 SELECT * FROM orders; DROP TABLE orders; ALTER TABLE o2 RENAME TO orders",
         "INSERT INTO orders VALUES (2, 'cake', 1)", 'table "orders" was re-created with primary key (id, item)'),
        ("CREATE TABLE notes (body TEXT)", "INSERT INTO notes VALUES ('cake')", 'table "notes" in'),
    ],
    ids=["key-change", "new-table-without-key"],
)
def test_a_schema_change_stops_capture_before_anything_wrong_is_published(
        bootstrap, funnel_name, procs, tmp_path, ddl, after, message):
    prod = tmp_path / "prod.db"
    write_transaction(prod, "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT, qty INTEGER)",
          "INSERT INTO orders VALUES (0, 'bread', 3)")
    capture = start_funnel(bootstrap, procs, tmp_path, "capture", f"sqlite://{prod}", "--funnel", funnel_name)
    write_transaction(prod, "INSERT INTO orders VALUES (1, 'tea', 2)")
    wait_for(lambda: ("orders", ["id", "item", "qty"], [1, "tea", 2]) in funnel_rows(bootstrap, funnel_name),
             WAIT_S, interval=0.3, what="the row before the schema change in the funnel")

    write_transaction(prod, *ddl.split("; "))
    write_transaction(prod, after)  # the changelog holds it with the columns from before the change
    wait_for(lambda: not capture.alive(), WAIT_S, what="the capture to stop")
    assert capture.stop() == 1
    error, hint = error_lines(capture.output())
    assert message in error and "before publishing any change made after that" in error
    assert "re-initialise" in hint and "new funnel" in hint

    rows = funnel_rows(bootstrap, funnel_name)
    assert rows == [("orders", ["id", "item", "qty"], [0, "bread", 3]),
                    ("orders", ["id", "item", "qty"], [1, "tea", 2])], "the funnel holds something wrong"
    # and a restart resumes nothing wrong either
    result = run_funnel(bootstrap, "capture", f"sqlite://{prod}", "--funnel", funnel_name, timeout=WAIT_S)
    assert result.returncode == 1 and message in error_lines(result.stderr)[0]
    assert funnel_rows(bootstrap, funnel_name) == rows


# -- 2: distinct production tables get distinct mirror tables ------------------------------


def test_dotted_and_main_prefixed_tables_get_their_own_mirror_tables(bootstrap, funnel_name, procs, tmp_path):
    prod, mirror = tmp_path / "prod.db", tmp_path / "mirror.db"
    tables = ["a.b", "a_b", "main.t", "t"]
    write_transaction(prod, *[f'CREATE TABLE "{t}" (id INTEGER PRIMARY KEY, v TEXT)' for t in tables],
          *[f"INSERT INTO \"{t}\" VALUES (1, 'copy of {t}')" for t in tables])
    start_funnel(bootstrap, procs, tmp_path, "capture", f"sqlite://{prod}", "--funnel", funnel_name)
    start_funnel(bootstrap, procs, tmp_path, "apply", f"sqlite://{mirror}", "--funnel", funnel_name,
                 "--mirror", "m1", "--delay", "0s")
    write_transaction(prod, *[f"INSERT INTO \"{t}\" VALUES (2, 'change of {t}')" for t in tables])
    wait_for(lambda: all(len(table_rows(mirror, t)) == 2 for t in tables), WAIT_S,
             what="every table's copy and change on the mirror")
    for table in tables:
        assert table_rows(mirror, table) == table_rows(prod, table) == [(1, f"copy of {table}"),
                                                                      (2, f"change of {table}")]
    with sqlite3.connect(mirror) as conn:
        names = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert names == {*tables, "_timefunnel_state"}


# -- 3: never apply into the database the capture reads --------------------------------------


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_apply_and_seek_into_the_captured_sqlite_production_are_refused(bootstrap, funnel_name, tmp_path):
    prod = tmp_path / "prod.db"
    write_transaction(prod, "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)", "INSERT INTO orders VALUES (1, 'tea')")
    with SqliteSource(str(prod)) as source:
        source.install()  # what `funnel capture` does first
    before = file_digest(prod)

    result = run_funnel(bootstrap, "apply", f"sqlite://{prod}", "--funnel", funnel_name, "--mirror", "m1",
                        "--delay", "0s")
    assert result.returncode == 1
    error, hint = error_lines(result.stderr)
    assert str(prod) in error and "refusing to apply into it" in error and "separate mirror" in hint
    result = run_funnel(bootstrap, "seek", "m1", "--to", "-1m", "--funnel", funnel_name, "--sink", f"sqlite://{prod}")
    assert result.returncode == 1 and "refusing to apply into it" in error_lines(result.stderr)[0]
    assert file_digest(prod) == before, "the refused commands changed production"
    assert not Path(f"{prod}-wal").exists() or Path(f"{prod}-wal").stat().st_size == 0


@pytest.fixture
def pg_db(postgres_url):
    """A fresh PostgreSQL database for one test, dropped with its slots afterwards."""
    name = f"tf_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name, postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                     (name,))
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_apply_into_the_postgresql_database_holding_the_capture_slot_is_refused(bootstrap, funnel_name, pg_db):
    name, url = pg_db
    slot = default_slot_name(funnel_name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))

    result = run_funnel(bootstrap, "apply", url, "--funnel", funnel_name, "--mirror", "m1", "--delay", "0s")
    assert result.returncode == 1
    error, _ = error_lines(result.stderr)
    assert f"funnel {funnel_name!r} captures" in error and f"replication slot {slot}" in error
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert tables == ["orders"], "the refused apply created its state table"
    refuse_capture_source(url, "other")  # a mirror of another funnel may be captured itself (a chain)


def test_apply_into_a_postgresql_production_captured_with_its_own_slot_is_refused(bootstrap, funnel_name, pg_db,
                                                                                   procs, tmp_path):
    # `capture --slot orders_slot`: no timefunnel_<funnel> slot marks the production, the
    # capture's status record names the slot instead, and stays on the control topic after it stops
    name, url = pg_db
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    capture = start_funnel(bootstrap, procs, tmp_path, "capture", url, "--funnel", funnel_name,
                           "--slot", "orders_slot")
    control = ControlChannel(KafkaSettings(bootstrap), funnel_name)
    wait_for(lambda: capture_slots(control.state()) == ["orders_slot"], WAIT_S, what="the capture's status record")
    capture.stop()
    other_spelling = url.replace("127.0.0.1", "localhost").replace("postgresql://", "postgres://")
    result = run_funnel(bootstrap, "apply", other_spelling, "--funnel", funnel_name, "--mirror", "m1", "--delay", "0s")
    assert result.returncode == 1, result.stderr
    error, _ = error_lines(result.stderr)
    assert f"funnel {funnel_name!r} captures" in error and "replication slot orders_slot" in error
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert tables == ["orders"], "the refused apply created its state table"

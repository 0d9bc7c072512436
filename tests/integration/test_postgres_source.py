"""PostgresSource against the real PostgreSQL server (and, end to end, the real broker).

Each test gets its own database; slots on it are dropped at the end so that the server
is not left with slots that retain WAL.  An independent decoder, the server's own
``test_decoding`` plugin on a second slot, is the oracle for xids, commit times and LSNs.
"""
from __future__ import annotations

import logging
import math
import re
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from funnel.errors import ConfigError, SourceError
from funnel.events import Op, TableChanges
from producer.sources import open_source
from producer.sources.base import SourceTransaction
from producer.sources.postgres.pgoutput import lsn_from_text
from producer.sources.postgres import PostgresSource, default_slot_name
from tests.support.pgserver import PrivatePostgres, find_pg_bin
from tests.support.processes import Background, run_funnel, wait_for

WAIT_S = 30


# -- fixtures and helpers -------------------------------------------------------------


def url_with(url: str, dbname: str | None = None, user: str | None = None) -> str:
    """``url`` (postgresql://...) naming another database or user."""
    parts = urlsplit(url)
    netloc = f"{user}@{parts.netloc.rsplit('@', 1)[-1]}" if user else parts.netloc
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{dbname}" if dbname else parts.path))


def admin(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def drop_slots(conn: psycopg.Connection, where: str, value: str) -> None:
    """Drops the slots matching ``where`` (after ending the walsenders that hold them)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        conn.execute(f"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                     f"WHERE {where} = %s AND active_pid IS NOT NULL", (value,))
        try:
            conn.execute(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         f"WHERE {where} = %s", (value,))
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def db(postgres_url) -> Iterable[str]:
    """A fresh database (URL) for one test; dropped with its slots afterwards."""
    name = f"tf_{uuid.uuid4().hex[:10]}"
    with admin(postgres_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield url_with(postgres_url, dbname=name)
    with admin(postgres_url) as conn:
        drop_slots(conn, "database", name)
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def sources() -> Iterable[list[PostgresSource]]:
    opened: list[PostgresSource] = []
    yield opened
    for source in opened:
        source.close()


def open_pg(sources: list, url: str, tables: list[str] | None = None, **options) -> PostgresSource:
    options.setdefault("slot", f"tf_{uuid.uuid4().hex[:12]}")
    source = PostgresSource(url, tables, **options)
    sources.append(source)
    return source


def run(url: str, *statements: str) -> None:
    with admin(url) as conn:
        for statement in statements:
            conn.execute(statement)


def commit_xid(url: str, *statements: str) -> int:
    """Runs ``statements`` as one transaction; returns its (32-bit) xid."""
    with psycopg.connect(url) as conn:
        for statement in statements:
            conn.execute(statement)
        xid = conn.execute("SELECT (pg_current_xact_id()::text::bigint % 4294967296)::bigint").fetchone()[0]
        conn.commit()
    return xid


def read_until(source: PostgresSource, position: int, done: Callable[[list[SourceTransaction]], bool],
               limit: int = 50) -> list[SourceTransaction]:
    found: list[SourceTransaction] = []
    deadline = time.monotonic() + WAIT_S
    while not done(found):
        assert time.monotonic() < deadline, f"timed out; got {[t.txid for t in found]}"
        batch = source.transactions_after(position, limit)
        if batch:
            found += batch
            position = batch[-1].position
        else:
            time.sleep(0.02)
    return found


def has_xid(xid: int) -> Callable[[list[SourceTransaction]], bool]:
    return lambda found: any(tx.txid == str(xid) for tx in found)


def slot_row(url: str, slot: str) -> tuple | None:
    with admin(url) as conn:
        return conn.execute("SELECT confirmed_flush_lsn::text, active_pid FROM pg_replication_slots "
                            "WHERE slot_name = %s", (slot,)).fetchone()


def confirmed(url: str, slot: str) -> int:
    row = slot_row(url, slot)
    assert row is not None, f"slot {slot} does not exist"
    return lsn_from_text(row[0])


def created_objects(url: str) -> tuple[int, int]:
    with admin(url) as conn:
        slots = conn.execute("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()")
        publications = conn.execute("SELECT count(*) FROM pg_publication").fetchone()[0]
        return slots.fetchone()[0], publications


def replay(state: dict[tuple, list], changes: Iterable[TableChanges]) -> None:
    """Applies changes to ``state`` ((table, key) -> row), checking each against it:
    an insert's key must be new, an update's or delete's old key must be there."""
    for group in changes:
        at = [group.columns.index(k) for k in group.key]
        if group.op is Op.TRUNCATE:
            for key in [k for k in state if k[0] == group.table]:
                del state[key]
        for row in group.rows:
            if group.op in (Op.UPDATE, Op.DELETE):
                old = (group.table, *(row.before[i] for i in at))
                assert old in state, f"{group.op.value} of missing key {old}"
                current = state.pop(old)
                if group.op is Op.UPDATE:  # columns left out keep their value
                    current = dict(zip(group.columns, row.after), **{
                        c: v for c, v in current.items() if c not in group.columns})
            if group.op in (Op.INSERT, Op.SNAPSHOT, Op.UPDATE):
                new = (group.table, *(row.after[i] for i in at))
                assert new not in state, f"{group.op.value} of existing key {new} (doubled at the seam?)"
                state[new] = current if group.op is Op.UPDATE else dict(zip(group.columns, row.after))


# -- values ---------------------------------------------------------------------------

TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN posint AS int8 CHECK (VALUE > 0);
CREATE TABLE typed (
  id int4 PRIMARY KEY, i2 int2, i8 int8, f4 float4, f8 float8, ok bool, raw bytea,
  t text, vc varchar(10), ch char(4), num numeric(12, 3), nnan numeric, d date, tm time, ttz timetz,
  ts timestamp, tstz timestamptz, iv interval, u uuid, j json, jb jsonb, ints int[], texts text[],
  m mood, p posint, ip inet, doubled int GENERATED ALWAYS AS (id * 2) STORED)"""

TYPES_ROW = """(%(id)s, -32768, 9223372036854775807, %(f4)s, %(f8)s, true, '\\x00ff0a5c'::bytea,
  E'tab\\there\\nnewline \\\\ back ünï ✓', 'short', 'ab', 12345.600, 'NaN', '2024-02-29', '13:14:15.5',
  '13:14:15+02', '2024-02-29 13:14:15.123456', '2024-02-29 15:14:15.123456+02',
  '1 year 2 months 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b": 1,  "a": [1,2]}',
  '{"b": 1,  "a": [1,2]}', '{1,NULL,3}', ARRAY['x y', 'q"uote', NULL], 'happy', 7, '192.168.0.1/24')"""

# What each column of TYPES_ROW becomes in an event (f4 and f8 are checked separately).
EXPECTED = {
    "i2": -32768, "i8": 9223372036854775807, "ok": True, "raw": b"\x00\xff\n\\",
    "t": "tab\there\nnewline \\ back ünï ✓", "vc": "short", "ch": "ab  ", "num": "12345.600", "nnan": "NaN",
    "d": "2024-02-29", "tm": "13:14:15.5", "ttz": "13:14:15+02", "ts": "2024-02-29 13:14:15.123456",
    "tstz": "2024-02-29 13:14:15.123456+00", "iv": "1 year 2 mons 3 days 04:05:06.789",
    "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "j": '{"b": 1,  "a": [1,2]}', "jb": '{"a": [1, 2], "b": 1}',
    "ints": "{1,NULL,3}", "texts": '{"x y","q\\"uote",NULL}', "m": "happy", "p": 7, "ip": "192.168.0.1/24",
}
FLOATS = [(1, "1.1", "1e308"), (2, "NaN", "NaN"), (3, "Infinity", "-Infinity"), (4, "-0", "-0"),
          (5, "-3.4e38", "5e-324"), (6, "0.1", "0.30000000000000004")]


def same_float(a: object, b: float) -> bool:
    return isinstance(a, float) and (math.isnan(b) and math.isnan(a) or (a == b and math.copysign(1, a) ==
                                                                          math.copysign(1, b)))


def check_typed_row(row: dict, f4: str, f8: str) -> None:
    for column, value in EXPECTED.items():
        assert row[column] == value and type(row[column]) is type(value), (column, row[column])
    assert same_float(row["f8"], float(f8)), row["f8"]
    assert same_float(row["f4"], float(f4)), row["f4"]
    assert type(row["id"]) is int


def test_values_read_the_same_from_snapshot_and_stream(db, sources):
    run(db, TYPES_DDL, "CREATE TABLE empty_one (id int PRIMARY KEY)")
    for id_, f4, f8 in FLOATS[:3]:
        run(db, "INSERT INTO typed VALUES " + TYPES_ROW % {"id": id_, "f4": f"'{f4}'", "f8": f"'{f8}'"})
    run(db, "INSERT INTO typed (id) VALUES (100)")
    source = open_pg(sources, db)
    source.install()
    definitions = {d["table"]: d for d in source.table_definitions()}
    assert [c["name"] for c in definitions["public.typed"]["columns"]][-3:] == ["m", "p", "ip"]  # no generated
    types = {c["name"]: c["type"] for c in definitions["public.typed"]["columns"]}
    assert types["num"] == "numeric(12,3)" and types["vc"] == "character varying(10)" and types["p"] == "posint"
    assert definitions["public.typed"]["key"] == ["id"] and definitions["public.empty_one"]["key"] == ["id"]

    snapshot = source.snapshot(chunk_rows=2)
    for id_, f4, f8 in FLOATS[3:]:
        run(db, "INSERT INTO typed VALUES " + TYPES_ROW % {"id": id_, "f4": f"'{f4}'", "f8": f"'{f8}'"})
    last = commit_xid(db, "INSERT INTO typed (id) VALUES (101)")
    chunks = list(snapshot)
    assert [len(c.rows) for c in chunks] == [2, 2] and {c.table for c in chunks} == {"public.typed"}
    rows = {r.after[0]: dict(zip(c.columns, r.after)) for c in chunks for r in c.rows}
    changes = read_until(source, snapshot.position, has_xid(last))
    rows.update({r.after[0]: dict(zip(g.columns, r.after)) for tx in changes for g in tx.changes for r in g.rows})
    assert sorted(rows) == [1, 2, 3, 4, 5, 6, 100, 101]
    for id_, f4, f8 in FLOATS:  # three rows came from the snapshot, three from the stream
        check_typed_row(rows[id_], f4, f8)
    assert set(rows[100].values()) == {100, None} and set(rows[101].values()) == {101, None}
    assert "doubled" not in rows[1]


def test_unchanged_toast_values_and_before_images(db, sources):
    big = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 800) g)"  # 25 kB, stored out of line
    run(db, "CREATE TABLE keyed (id int PRIMARY KEY, note text, doc text)",
        "CREATE TABLE fully (id int PRIMARY KEY, note text, doc text)",
        "CREATE TABLE nokey (a int, b text)", "ALTER TABLE fully REPLICA IDENTITY FULL",
        "ALTER TABLE nokey REPLICA IDENTITY FULL",
        f"INSERT INTO keyed VALUES (1, 'a', {big})", f"INSERT INTO fully VALUES (1, 'a', {big})",
        "INSERT INTO nokey VALUES (1, 'x')")
    with admin(db) as conn:
        doc = conn.execute(f"SELECT {big}").fetchone()[0]
    source = open_pg(sources, db)
    source.install()
    keys = {d["table"]: (d["key"], d["before_images"]) for d in source.table_definitions()}
    assert keys == {"public.keyed": (["id"], "key"), "public.fully": (["id"], "full"),
                    "public.nokey": ([], "full")}  # keyless: a multiset on mirrors
    snapshot = source.snapshot()
    list(snapshot)
    xid = commit_xid(db, "UPDATE keyed SET note = 'b'", "UPDATE fully SET note = 'b'",
                     "UPDATE keyed SET id = 2", "DELETE FROM fully", "UPDATE nokey SET b = 'y'")
    (tx,) = read_until(source, snapshot.position, has_xid(xid))
    groups = [(g.table, g.op, g.columns, [tuple(r) for r in g.rows]) for g in tx.changes]
    assert groups == [
        # the unchanged document was not sent and the old row is not logged: the column is left out
        ("public.keyed", Op.UPDATE, ["id", "note"], [([1, None], [1, "b"])]),
        # under REPLICA IDENTITY FULL the old row has it
        ("public.fully", Op.UPDATE, ["id", "note", "doc"], [([1, "a", doc], [1, "b", doc])]),
        ("public.keyed", Op.UPDATE, ["id", "note"], [([1, None], [2, "b"])]),
        ("public.fully", Op.DELETE, ["id", "note", "doc"], [([1, "b", doc], None)]),
        ("public.nokey", Op.UPDATE, ["a", "b"], [([1, "x"], [1, "y"])]),
    ]


# -- transactions and positions ---------------------------------------------------------


def test_transactions_have_exact_xids_commit_times_positions_and_groups(db, sources):
    run(db, "CREATE TABLE a (id int PRIMARY KEY, v text)", "CREATE TABLE b (id int PRIMARY KEY)",
        "CREATE TABLE other (id int PRIMARY KEY)", "INSERT INTO a VALUES (0, 'seed')")
    source = open_pg(sources, db, ["a", "public.b"])
    assert source.tables == ["public.a", "public.b"]
    source.install()
    snapshot = source.snapshot()
    run(db, "SELECT pg_create_logical_replication_slot('oracle_' || current_database(), 'test_decoding')")
    xids = [
        commit_xid(db, "INSERT INTO a VALUES (1, 'x'), (2, 'y')", "INSERT INTO b VALUES (1)",
                   "INSERT INTO a VALUES (3, 'z')", "UPDATE a SET v = v || '!' WHERE id IN (1, 2)",
                   "DELETE FROM a WHERE id = 0", "INSERT INTO other VALUES (1)"),
        commit_xid(db, "INSERT INTO other VALUES (2)"),  # nothing captured: never published
        commit_xid(db, "TRUNCATE a, b"),
        commit_xid(db, "INSERT INTO b VALUES (7)"),
    ]
    found = read_until(source, snapshot.position, has_xid(xids[-1]))
    assert [tx.txid for tx in found] == [str(xids[0]), str(xids[2]), str(xids[3])]
    first, truncate, last = found
    assert [(g.table, g.op, len(g.rows)) for g in first.changes] == [
        ("public.a", Op.INSERT, 2), ("public.b", Op.INSERT, 1), ("public.a", Op.INSERT, 1),
        ("public.a", Op.UPDATE, 2), ("public.a", Op.DELETE, 1)]
    assert first.changes[3].rows[0] == ([1, None], [1, "x!"])
    assert [(g.table, g.op, g.rows) for g in truncate.changes] == [
        ("public.a", Op.TRUNCATE, []), ("public.b", Op.TRUNCATE, [])]
    assert snapshot.position < first.position < truncate.position < last.position

    with admin(db) as conn:  # the server's own decoder says the same
        conn.execute("SET TimeZone = 'UTC'")
        oracle = conn.execute(
            "SELECT lsn::text, xid::text, data FROM pg_logical_slot_get_changes("
            "'oracle_' || current_database(), NULL, NULL, 'include-timestamp', '1') WHERE data LIKE 'COMMIT%%'"
        ).fetchall()
    commits = {xid: (lsn_from_text(lsn), data) for lsn, xid, data in oracle}
    for tx in found:
        lsn, data = commits[tx.txid]
        assert tx.position == lsn
        stamp = datetime.fromisoformat(re.search(r"\(at (.+)\)", data).group(1))
        assert tx.commit_ts == (stamp - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


def test_restart_resends_unacknowledged_transactions_only(db, sources):
    run(db, "CREATE TABLE t (id int PRIMARY KEY)")
    slot = "tf_restart_" + uuid.uuid4().hex[:8]
    source = open_pg(sources, db, slot=slot)
    source.install()
    snapshot = source.snapshot()
    xids = [commit_xid(db, f"INSERT INTO t VALUES ({i})") for i in range(5)]
    found = read_until(source, snapshot.position, lambda f: len(f) == 5)
    assert [tx.txid for tx in found] == [str(x) for x in xids]
    source.acknowledge(found[1].position)
    with pytest.raises(SourceError, match="only up to"):
        source.acknowledge(found[-1].position + 1)
    source.close()
    assert confirmed(db, slot) == found[1].position

    again = open_pg(sources, db, slot=slot)
    resent = read_until(again, snapshot.position, lambda f: len(f) == 3)
    assert [tx.txid for tx in resent] == [str(x) for x in xids[2:]]
    assert [tx.position for tx in resent] == [tx.position for tx in found[2:]]
    more = commit_xid(db, "INSERT INTO t VALUES (99)")
    tail = read_until(again, resent[-1].position, has_xid(more))
    assert [tx.txid for tx in tail] == [str(more)]
    again.close()

    # a restart whose funnel already has the third transaction skips it by LSN
    third = open_pg(sources, db, slot=slot)
    skipped = read_until(third, found[2].position, has_xid(more))
    assert [tx.txid for tx in skipped] == [str(xids[3]), str(xids[4]), str(more)]


def test_idle_slot_advances_only_when_nothing_is_pending(db, postgres_url, sources):
    run(db, "CREATE TABLE t (id int PRIMARY KEY)")
    source = open_pg(sources, db)
    source.install()
    snapshot = source.snapshot()
    other, busy = url_with(postgres_url, dbname="postgres"), f"busy_{uuid.uuid4().hex[:8]}"
    run(other, f"CREATE TABLE {busy} (id serial PRIMARY KEY, v text)")

    def other_database_writes_until(condition: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            run(other, f"INSERT INTO {busy} (v) SELECT 'x' FROM generate_series(1, 100)")
            assert source.transactions_after(snapshot.position, 10) == []
            if condition():
                return True
            time.sleep(0.05)
        return False

    try:
        start = confirmed(db, source.slot)
        assert other_database_writes_until(lambda: confirmed(db, source.slot) > start, 15)

        # A transaction read but not yet acknowledged (in Kafka, for all we know) holds the slot.
        xid = commit_xid(db, "INSERT INTO t VALUES (1)")
        (tx,) = read_until(source, snapshot.position, has_xid(xid))
        held = confirmed(db, source.slot)
        assert held < tx.position
        assert not other_database_writes_until(lambda: confirmed(db, source.slot) != held, 2)
        source.acknowledge(tx.position)
        assert other_database_writes_until(lambda: confirmed(db, source.slot) > tx.position, 15)
    finally:
        run(other, f"DROP TABLE {busy}")


# -- the initial copy while production writes ---------------------------------------------


PGBENCH_SCRIPT = r"""
\set id random(1, 3000)
BEGIN;
INSERT INTO seam (id, v, client) VALUES (:id, 1, :client_id) ON CONFLICT (id) DO UPDATE SET v = seam.v + 1;
UPDATE counters SET n = n + 1 WHERE id = :client_id;
END;
DELETE FROM seam WHERE id = :id + 1;
"""


def pgbench(url: str, script: Path, seconds: int, clients: int = 4) -> subprocess.Popen:
    params = conninfo_to_dict(url)
    return subprocess.Popen(
        [str(find_pg_bin() / "pgbench"), "-n", "-c", str(clients), "-T", str(seconds), "-f", str(script),
         "-h", params["host"], "-p", str(params["port"]), "-U", params["user"], params["dbname"]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_initial_copy_while_production_writes_has_an_exact_seam(db, sources, tmp_path):
    run(db, "CREATE TABLE seam (id int PRIMARY KEY, v int NOT NULL, client int)",
        "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)",
        "INSERT INTO counters SELECT g, 0 FROM generate_series(0, 3) g",
        "INSERT INTO seam SELECT g, 0, NULL FROM generate_series(1, 20000, 2) g")
    script = tmp_path / "seam.sql"
    script.write_text(PGBENCH_SCRIPT)
    source = open_pg(sources, db)
    source.install()
    bench = pgbench(db, script, seconds=4)
    try:
        time.sleep(1.0)  # production is busy before and during the copy
        snapshot = source.snapshot(chunk_rows=1000)
        state: dict[tuple, dict] = {}
        replay(state, snapshot)
    finally:
        output, _ = bench.communicate(timeout=60)
    assert bench.returncode == 0, output
    last = commit_xid(db, "UPDATE counters SET n = n + 1000 WHERE id = 0")
    changes = read_until(source, snapshot.position, has_xid(last), limit=500)
    with admin(db) as conn:
        counters_final = {r[0]: r[1] for r in conn.execute("SELECT id, n FROM counters")}
    replay(state, (g for tx in changes for g in tx.changes))
    with admin(db) as conn:
        expected = {("public.seam", r[0]): {"id": r[0], "v": r[1], "client": r[2]}
                    for r in conn.execute("SELECT id, v, client FROM seam")}
        expected.update({("public.counters", r[0]): {"id": r[0], "n": r[1]}
                         for r in conn.execute("SELECT id, n FROM counters")})
    assert state == expected
    bench_tx = sum(counters_final.values()) - 1000
    streamed = sum(1 for tx in changes for g in tx.changes if g.table == "public.counters")
    assert bench_tx > 200 and 0 < streamed - 1 < bench_tx, (bench_tx, streamed)  # the copy fell mid-run


# -- refusals before anything is created -------------------------------------------------


def test_a_table_without_key_is_refused_before_anything_is_created(db, sources):
    run(db, "CREATE TABLE good (id int PRIMARY KEY)", "CREATE TABLE loose (a int, b text)",
        "CREATE TABLE nothing (id int PRIMARY KEY)", "ALTER TABLE nothing REPLICA IDENTITY NOTHING",
        "CREATE UNLOGGED TABLE fast (id int PRIMARY KEY)")
    with pytest.raises(SourceError, match=r"table public\.loose has no primary key") as error:
        open_pg(sources, db)  # every table of the database, loose among them
    assert "REPLICA IDENTITY" in error.value.hint
    with pytest.raises(SourceError, match="REPLICA IDENTITY NOTHING"):
        open_pg(sources, db, ["nothing"])
    with pytest.raises(SourceError, match="unlogged"):
        open_pg(sources, db, ["fast"])
    with pytest.raises(SourceError, match="does not exist"):
        open_pg(sources, db, ["missing"])
    assert created_objects(db) == (0, 0)
    # with --replica-identity-full the table is captured keyless: an empty key, nullable
    # columns, so that mirrors keep its rows as a multiset
    source = open_pg(sources, db, ["good", "loose"], replica_identity_full=True)
    source.install()
    with admin(db) as conn:
        assert conn.execute("SELECT relreplident FROM pg_class WHERE relname = 'loose'").fetchone()[0] == "f"
    loose = source.table_definitions()[1]
    assert loose["key"] == [] and loose["before_images"] == "full"
    assert [c["not_null"] for c in loose["columns"]] == [False, False]


def test_tables_a_sqlite_mirror_would_merge_are_refused_naming_both(db, sources):
    run(db, "CREATE SCHEMA sales", "CREATE TABLE sales.orders (id int PRIMARY KEY)",
        "CREATE TABLE public.sales_orders (id int PRIMARY KEY)", 'CREATE TABLE public."Items" (id int PRIMARY KEY)',
        "CREATE TABLE public.items (id int PRIMARY KEY)")
    with pytest.raises(SourceError, match=r'"public.sales_orders" and "sales.orders" .* SQLite table "sales_orders"'):
        open_pg(sources, db, ["public.sales_orders", "sales.orders"])
    with pytest.raises(SourceError, match=r'"public.Items" and "public.items"'):
        open_pg(sources, db, ['public."Items"', "public.items"])
    assert created_objects(db) == (0, 0)
    open_pg(sources, db, ["sales.orders", "public.items"]).install()  # one of each pair is fine


def test_a_schema_with_a_dot_is_refused_before_its_tables_merge(db, sources):
    # "a.b".c and a."b.c" would both be the event table a.b.c, read back as schema a, table b.c
    run(db, 'CREATE SCHEMA "a.b"', "CREATE SCHEMA a", 'CREATE TABLE "a.b".c (id int PRIMARY KEY)',
        'CREATE TABLE a."b.c" (id int PRIMARY KEY)')
    with pytest.raises(SourceError, match=r'schema "a\.b" of database \S+ has a dot in its name') as error:
        open_pg(sources, db)
    assert "rename the schema" in error.value.hint
    assert created_objects(db) == (0, 0)
    open_pg(sources, db, ['a."b.c"']).install()  # a dot in a table's name is fine


def test_replica_identity_full_over_an_identity_index_keeps_one_key(db, sources):
    # --replica-identity-full replaces REPLICA IDENTITY USING INDEX: the definition, the
    # initial copy, the stream and a restarted capture must name the same (empty) key,
    # or a mirror made with --create-tables refuses the rows
    run(db, "CREATE TABLE byidx (id int NOT NULL, v text)", "CREATE UNIQUE INDEX byidx_id ON byidx (id)",
        "ALTER TABLE byidx REPLICA IDENTITY USING INDEX byidx_id", "INSERT INTO byidx VALUES (1, 'x')")
    source = open_pg(sources, db, replica_identity_full=True)
    source.install()
    (definition,) = source.table_definitions()
    snapshot = source.snapshot()
    (chunk,) = list(snapshot)
    xid = commit_xid(db, "UPDATE byidx SET v = 'y'")
    (tx,) = read_until(source, snapshot.position, has_xid(xid))
    restarted = open_pg(sources, db, slot=source.slot, replica_identity_full=True).table_definitions()[0]
    assert definition["key"] == chunk.key == tx.changes[0].key == restarted["key"] == []


def test_a_role_without_replication_is_refused(db, sources, postgres_url):
    role = f"tf_norepl_{uuid.uuid4().hex[:6]}"
    run(db, "CREATE TABLE t (id int PRIMARY KEY)", f"CREATE ROLE {role} LOGIN", f"GRANT SELECT ON t TO {role}")
    try:
        with pytest.raises(SourceError, match=f"role {role} has no REPLICATION attribute") as error:
            open_pg(sources, url_with(db, user=role))
        assert error.value.hint == f"ALTER ROLE {role} REPLICATION;"
        assert created_objects(db) == (0, 0)
    finally:
        run(db, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_wal_level_other_than_logical_is_refused():
    server = PrivatePostgres().start()
    try:
        run(server.url, "ALTER SYSTEM SET wal_level = replica", "CREATE TABLE t (id int PRIMARY KEY)")
        server._run(str(server.bin / "pg_ctl"), "-D", str(server.data), "-l", str(server.root / "server.log"),
                    "-m", "fast", "-w", "restart")
        with pytest.raises(SourceError, match="wal_level is 'replica': capture needs 'logical'"):
            PostgresSource(server.url, slot="tf_never")
        assert created_objects(server.url) == (0, 0)
    finally:
        server.stop()


def test_a_replication_role_that_owns_nothing_uses_the_owners_publication(db, sources, caplog):
    role = f"tf_reader_{uuid.uuid4().hex[:6]}"
    run(db, "CREATE TABLE orders (id int PRIMARY KEY, item text)", "INSERT INTO orders VALUES (1, 'pen')",
        f"CREATE ROLE {role} LOGIN REPLICATION", f"GRANT SELECT ON orders TO {role}")
    url = url_with(db, user=role)
    try:
        with pytest.raises(SourceError, match=f"role {role} does not own table public.orders") as error:
            open_pg(sources, url, slot="tf_reader")
        assert "CREATE PUBLICATION timefunnel_tf_reader FOR TABLE public.orders" in error.value.hint
        assert created_objects(db) == (0, 0)
        with pytest.raises(SourceError, match="publication ops does not exist"):
            open_pg(sources, url, publication="ops")
        run(db, "CREATE PUBLICATION ops FOR TABLE orders")
        with caplog.at_level(logging.WARNING, "timefunnel.capture.postgres"):
            source = open_pg(sources, url, publication="ops")
        assert "public.orders has REPLICA IDENTITY DEFAULT" in caplog.text
        source.install()
        snapshot = source.snapshot()
        assert [r.after for c in snapshot for r in c.rows] == [[1, "pen"]]
        xid = commit_xid(db, "INSERT INTO orders VALUES (2, 'ink')")
        (tx,) = read_until(source, snapshot.position, has_xid(xid))
        assert tx.changes[0].rows[0].after == [2, "ink"]
        source.acknowledge(tx.position)
        source.drop()
        assert created_objects(db) == (0, 1)  # the operator's publication stays
    finally:
        for source in sources:
            source.close()
        sources.clear()
        with admin(db) as conn:
            drop_slots(conn, "database", conninfo_to_dict(db)["dbname"])
        run(db, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def test_publications_that_would_drop_changes_are_refused(db, sources):
    run(db, "CREATE TABLE t (id int PRIMARY KEY, v text)", "CREATE SCHEMA s2", "CREATE TABLE s2.x (id int PRIMARY KEY)",
        "CREATE PUBLICATION rows_only FOR TABLE t WHERE (id > 5)", "CREATE PUBLICATION some_cols FOR TABLE t (id)",
        "CREATE PUBLICATION inserts FOR TABLE t WITH (publish = 'insert')", "CREATE PUBLICATION other FOR TABLE s2.x")
    for publication in ("rows_only", "some_cols"):
        with pytest.raises(SourceError, match=f"publication {publication} filters the rows or columns of table t"):
            open_pg(sources, db, ["t"], publication=publication)
    with pytest.raises(SourceError, match="publication inserts does not publish every operation"):
        open_pg(sources, db, ["t"], publication="inserts")
    with pytest.raises(SourceError, match=r"publication other does not include table public\.t"):
        open_pg(sources, db, ["t"], publication="other")
    assert open_pg(sources, db, schemas=["s2"], publication="other").tables == ["s2.x"]
    assert open_pg(sources, db).tables == ["public.t", "s2.x"]
    assert created_objects(db) == (0, 4)


def test_open_source_urls_and_options(db, sources):
    run(db, "CREATE TABLE t (id int PRIMARY KEY)")
    params = conninfo_to_dict(db)
    url = f"postgres://{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"
    source = open_source(url, ["t"], funnel="Orders.EU-1")
    sources.append(source)
    assert source.slot == default_slot_name("Orders.EU-1")
    assert re.fullmatch(r"timefunnel_orders_eu_1_[0-9a-f]{8}", source.slot)
    assert source.publication == source.slot
    assert default_slot_name("orders") == "timefunnel_orders"
    with pytest.raises(ConfigError, match="rowid-key"):
        open_source(url, rowid_key=True, funnel="f")
    with pytest.raises(ConfigError, match="bad replication slot name"):
        open_source(url, slot="Bad-Name")
    with pytest.raises(ConfigError, match="for PostgreSQL sources only"):
        open_source("sqlite:///tmp/x.db", slot="s")


# -- end to end: funnel capture postgresql://... into a SQLite mirror ----------------------


def sqlite_rows(path: Path, table: str) -> list[tuple]:
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def production_rows(url: str) -> list[tuple]:
    """orders as the events carry them: native ints, floats, bools, bytes; the rest as text."""
    with psycopg.connect(url, options="-c timezone=UTC -c datestyle=ISO -c extra_float_digits=3") as conn:
        return conn.execute("SELECT id, qty, price, paid, payload, amount::text, created::text, tags::text, note "
                            "FROM orders ORDER BY id").fetchall()


def test_funnel_capture_from_postgresql_into_a_sqlite_mirror(db, bootstrap, topic_name, tmp_path):
    run(db, "CREATE TABLE orders (id int PRIMARY KEY, qty int8, price float8, paid bool, payload bytea, "
            "amount numeric(10,2), created timestamptz, tags text[], note text)",
        "INSERT INTO orders SELECT g, g * 10, g / 4.0, g % 2 = 0, int4send(g), g * 1.25, "
        "'2024-01-01 00:00+00'::timestamptz + g * interval '1 minute', ARRAY['a', g::text], "
        "CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END FROM generate_series(1, 2000) g")
    assert run_funnel(bootstrap, "create", topic_name, "--retention", "1d").returncode == 0
    mirror = tmp_path / "mirror.db"
    capture = Background(bootstrap, tmp_path / "capture.log", "capture", db, "--funnel", topic_name,
                         "--replica-identity-full", "--heartbeat", "0.5s")
    apply = Background(bootstrap, tmp_path / "apply.log", "apply", f"sqlite://{mirror}", "--funnel", topic_name,
                       "--mirror", "m1", "--delay", "0s")
    try:
        wait_for(lambda: len(sqlite_rows(mirror, "orders")) == 2000, 60, 0.2, "the initial copy on the mirror")
        run(db, "UPDATE orders SET qty = -qty, note = 'upd' WHERE id % 7 = 0",
            "DELETE FROM orders WHERE id % 11 = 0",
            "INSERT INTO orders VALUES (5000, 1, 'NaN', NULL, '\\x', 'NaN', 'infinity', '{}', 'é')")
        commit_xid(db, "UPDATE orders SET id = id + 10000 WHERE id BETWEEN 100 AND 110",
                   "UPDATE orders SET price = '-0' WHERE id = 1")
        expected = production_rows(db)

        def mirrored() -> bool:
            got = sqlite_rows(mirror, "orders")
            return len(got) == len(expected) and all(
                g == e or (isinstance(e[2], float) and math.isnan(e[2]) and g[:2] == e[:2] and g[3:] == e[3:])
                for g, e in zip(got, expected))

        wait_for(mirrored, 60, 0.2, "the mirror to equal production")
        assert capture.alive() and apply.alive(), capture.output() + apply.output()
        row_one = sqlite_rows(mirror, "orders")[0]
        assert row_one[2] == 0.0 and math.copysign(1, row_one[2]) == -1.0  # -0 survives
    finally:
        capture.stop()
        apply.stop()
    with admin(db) as conn:
        slot = conn.execute("SELECT slot_name, confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots "
                            "WHERE database = current_database()").fetchall()
    assert slot == [(default_slot_name(topic_name), True)]

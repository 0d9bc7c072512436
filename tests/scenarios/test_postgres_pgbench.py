"""PostgreSQL as production and as mirror, under pgbench, through the real CLI and broker.

pgbench_history has no primary key; like an operator would, the test gives it one
(``ALTER TABLE … ADD COLUMN id bigserial PRIMARY KEY``) before capture: timefunnel
refuses tables without a key (tested in test_postgres_source.py).
"""
from __future__ import annotations

import random
import sqlite3
import subprocess
import time
from pathlib import Path

import psycopg

from tests.support.pgserver import find_pg_bin
from tests.support.processes import start_funnel, wait_for

TABLES = {"pgbench_accounts": "aid", "pgbench_branches": "bid", "pgbench_tellers": "tid",
          "pgbench_history": "id"}


def database_url(server_url: str, name: str) -> str:
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def pgbench(url: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    parts = psycopg.conninfo.conninfo_to_dict(url)
    command = [str(find_pg_bin() / "pgbench"), "-h", parts["host"], "-p", str(parts["port"]), "-U", parts["user"],
               *args, parts["dbname"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result


def pgbench_load(url: str, seconds: int, clients: int = 4) -> subprocess.Popen:
    parts = psycopg.conninfo.conninfo_to_dict(url)
    return subprocess.Popen([str(find_pg_bin() / "pgbench"), "-h", parts["host"], "-p", str(parts["port"]),
                             "-U", parts["user"], "-c", str(clients), "-j", "2", "-T", str(seconds), "-n",
                             parts["dbname"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def prepare_production(url: str, scale: int) -> None:
    pgbench(url, "-i", "-s", str(scale), "-q")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY")


def pg_checksums(url: str) -> dict[str, tuple[int, str]]:
    """Row count and an ordered md5 of all columns, per pgbench table."""
    with psycopg.connect(url) as conn:
        return {table: conn.execute(
            f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t.{key})), '') FROM {table} t"
        ).fetchone() for table, key in TABLES.items()}


def mirror_checksums(url: str) -> dict | None:
    """pg_checksums, or None while the mirror's tables do not exist yet."""
    try:
        return pg_checksums(url)
    except psycopg.errors.UndefinedTable:
        return None


def pg_rows_as_text(url: str, table: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        columns = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (table,))]
        # format('%s') uses each type's output function: char(n) keeps its padding, as
        # capture sends it (a cast to text would strip it).
        select = ", ".join(f"CASE WHEN {c} IS NULL THEN NULL ELSE format('%s', {c}) END" for c in columns)
        return conn.execute(f"SELECT {select} FROM {table} ORDER BY {TABLES[table]}").fetchall()


def sqlite_rows_as_text(path: Path, table: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(f'SELECT * FROM "{table}" ORDER BY "{TABLES[table]}"').fetchall()
    finally:
        conn.close()
    return [tuple(None if v is None else str(v) for v in row) for row in rows]


def history_ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM pgbench_history ORDER BY id")]


def test_pgbench_into_postgresql_and_sqlite_mirrors(bootstrap, funnel_name, pg_databases, procs, tmp_path):
    prod, mirror = pg_databases
    prepare_production(prod, scale=10)
    load = pgbench_load(prod, seconds=30)
    time.sleep(2)  # the initial copy is made while pgbench runs
    started = time.monotonic()
    start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name)
    start_funnel(bootstrap, procs, tmp_path, "apply", mirror, "--funnel", funnel_name, "--mirror", "pg", "--delay", "0s",
          "--create-tables")
    sqlite_mirror = tmp_path / "mirror.db"
    start_funnel(bootstrap, procs, tmp_path, "apply", f"sqlite://{sqlite_mirror}", "--funnel", funnel_name, "--mirror",
          "lite", "--delay", "0s")
    out, err = load.communicate(timeout=120)
    assert load.returncode == 0, err
    assert "number of transactions actually processed" in out
    expected = pg_checksums(prod)
    wait_for(lambda: mirror_checksums(mirror) == expected, 180, 1.0, "the PostgreSQL mirror to equal production")
    print(f"PostgreSQL mirror equal {time.monotonic() - started:.1f}s after capture started")
    ids = history_ids(mirror)
    assert ids == history_ids(prod) and len(ids) == len(set(ids)) and len(ids) > 1000
    for table in TABLES:  # canonical text of every value (docs: type mapping into SQLite)
        expected_rows = pg_rows_as_text(prod, table)
        wait_for(lambda: sqlite_rows_as_text(sqlite_mirror, table) == expected_rows, 120, 1.0,
                 f"{table} on the SQLite mirror")


def test_kill_9_of_capture_and_applier_during_pgbench(bootstrap, funnel_name, pg_databases, procs, tmp_path):
    prod, mirror = pg_databases
    prepare_production(prod, scale=2)
    load = pgbench_load(prod, seconds=25, clients=2)
    capture = start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name)
    apply_args = ("apply", mirror, "--funnel", funnel_name, "--mirror", "pg", "--delay", "0s", "--create-tables")
    applier = start_funnel(bootstrap, procs, tmp_path, *apply_args)
    rng = random.Random(15)
    for _ in range(5):
        time.sleep(rng.uniform(1.0, 2.0))
        applier.kill9()
        applier = start_funnel(bootstrap, procs, tmp_path, *apply_args)
        time.sleep(rng.uniform(1.0, 2.0))
        capture.kill9()
        capture = start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name)
    out, err = load.communicate(timeout=120)
    assert load.returncode == 0, err
    expected = pg_checksums(prod)
    wait_for(lambda: mirror_checksums(mirror) == expected, 180, 1.0, "the mirror to equal production")
    ids = history_ids(mirror)
    assert ids == history_ids(prod) and len(ids) == len(set(ids)) and len(ids) > 500

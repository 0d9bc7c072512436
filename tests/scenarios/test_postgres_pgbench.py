"""PostgreSQL as production, PostgreSQL and SQLite as mirrors, under stock pgbench, through the real CLI.

The pgbench tables are used as ``pgbench -i`` makes them: pgbench_history has no primary
key, so capture runs with --replica-identity-full and publishes it keyless; the mirrors
keep it as a multiset (its ``filler`` column is NULL in every row).  Mirrors are compared
with production as multisets of rows, whatever their order.
"""
from __future__ import annotations

import random
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import psycopg

from tests.support.pgserver import find_pg_bin
from tests.support.processes import start_funnel, wait_for

TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


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
    pgbench(url, "-i", "-s", str(scale), "-q")  # stock tables, unmodified


def pg_checksums(url: str) -> dict[str, tuple[int, str]]:
    """Row count and an md5 of all rows in sorted order (a multiset's fingerprint), per pgbench table."""
    with psycopg.connect(url) as conn:
        return {table: conn.execute(
            f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"
        ).fetchone() for table in TABLES}


def mirror_checksums(url: str) -> dict | None:
    """pg_checksums, or None while the mirror's tables do not exist yet."""
    try:
        return pg_checksums(url)
    except psycopg.errors.UndefinedTable:
        return None


def pg_rows_as_text(url: str, table: str) -> Counter:
    with psycopg.connect(url) as conn:
        columns = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (table,))]
        # format('%s') uses each type's output function: char(n) keeps its padding, as
        # capture sends it (a cast to text would strip it).
        select = ", ".join(f"CASE WHEN {c} IS NULL THEN NULL ELSE format('%s', {c}) END" for c in columns)
        return Counter(conn.execute(f"SELECT {select} FROM {table}").fetchall())


def sqlite_rows_as_text(path: Path, table: str) -> Counter:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
    finally:
        conn.close()
    return Counter(tuple(None if v is None else str(v) for v in row) for row in rows)


def assert_sqlite_mirror_equals(prod: str, path: Path) -> None:
    for table in TABLES:  # canonical text of every value (docs: type mapping into SQLite)
        expected_rows = pg_rows_as_text(prod, table)
        wait_for(lambda: sqlite_rows_as_text(path, table) == expected_rows, 120, 1.0,
                 f"{table} on the SQLite mirror")


def assert_history_is_keyless_with_nulls(prod: str, mirror: str) -> None:
    with psycopg.connect(prod) as conn:
        assert conn.execute("SELECT count(*) FROM pgbench_history WHERE filler IS NULL").fetchone()[0] > 500
    with psycopg.connect(mirror) as conn:  # created as on production: no key, nullable
        assert conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'pgbench_history'::regclass"
                            ).fetchone()[0] == 0


def kill_capture_during_initial_copy(bootstrap, procs, tmp_path, prod, funnel_name):
    """Start capture, kill -9 it once the copy has begun and before it is published; start it again."""
    capture = start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name,
                           "--replica-identity-full", "--verbose")
    wait_for(lambda: "created replication slot" in capture.output(), 60, 0.05, "capture to start its initial copy")
    time.sleep(0.3)
    capture.kill9()
    assert "initial copy:" not in capture.output()  # killed during the copy
    return start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name,
                        "--replica-identity-full")


def test_pgbench_into_postgresql_and_sqlite_mirrors(bootstrap, funnel_name, pg_databases, procs, tmp_path):
    prod, mirror = pg_databases
    prepare_production(prod, scale=5)
    load = pgbench_load(prod, seconds=20)
    time.sleep(2)  # the initial copy is made while pgbench runs
    started = time.monotonic()
    kill_capture_during_initial_copy(bootstrap, procs, tmp_path, prod, funnel_name)
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
    assert_history_is_keyless_with_nulls(prod, mirror)
    assert_sqlite_mirror_equals(prod, sqlite_mirror)
    print(f"SQLite mirror equal {time.monotonic() - started:.1f}s after capture started")


def test_kill_9_of_capture_and_appliers_during_pgbench(bootstrap, funnel_name, pg_databases, procs, tmp_path):
    prod, mirror = pg_databases
    prepare_production(prod, scale=2)
    load = pgbench_load(prod, seconds=25, clients=2)
    capture_args = ("capture", prod, "--funnel", funnel_name, "--replica-identity-full")
    capture = start_funnel(bootstrap, procs, tmp_path, *capture_args)
    sqlite_mirror = tmp_path / "mirror.db"
    apply_args = [("apply", mirror, "--funnel", funnel_name, "--mirror", "pg", "--delay", "0s", "--create-tables"),
                  ("apply", f"sqlite://{sqlite_mirror}", "--funnel", funnel_name, "--mirror", "lite", "--delay", "0s")]
    appliers = [start_funnel(bootstrap, procs, tmp_path, *args) for args in apply_args]
    rng = random.Random(15)
    for _ in range(5):
        time.sleep(rng.uniform(1.0, 2.0))
        for i, args in enumerate(apply_args):
            appliers[i].kill9()
            appliers[i] = start_funnel(bootstrap, procs, tmp_path, *args)
        time.sleep(rng.uniform(1.0, 2.0))
        capture.kill9()
        capture = start_funnel(bootstrap, procs, tmp_path, *capture_args)
    out, err = load.communicate(timeout=120)
    assert load.returncode == 0, err
    expected = pg_checksums(prod)
    assert expected["pgbench_history"][0] > 500
    wait_for(lambda: mirror_checksums(mirror) == expected, 180, 1.0, "the PostgreSQL mirror to equal production")
    assert_sqlite_mirror_equals(prod, sqlite_mirror)

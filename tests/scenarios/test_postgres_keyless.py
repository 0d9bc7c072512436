"""A PostgreSQL table without key, through the real CLI into PostgreSQL and SQLite mirrors:
duplicates and NULL rows survive capture, backward seek and promote with an excluded transaction."""
from __future__ import annotations

import sqlite3
import time
from collections import Counter

import psycopg

from funnel.timeparse import format_time
from tests.support.processes import run_funnel, start_funnel, wait_for

LOG = "CREATE TABLE log (who text, n integer, note text)"  # no key, nullable: like pgbench_history


def prod_rows(url: str) -> Counter:
    with psycopg.connect(url) as conn:
        return Counter(conn.execute("SELECT * FROM log").fetchall())


def mirror_rows(url: str) -> Counter | None:
    try:
        if url.startswith("sqlite://"):
            conn = sqlite3.connect(url.removeprefix("sqlite://"))
            try:
                return Counter(conn.execute("SELECT * FROM log").fetchall())
            finally:
                conn.close()
        return prod_rows(url)
    except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):
        return None


def ok(result) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_keyless_table_through_capture_seek_and_promote(bootstrap, funnel_name, pg_databases, procs, tmp_path):
    prod, pg_mirror = pg_databases
    mirrors = {"pg": pg_mirror, "lite": f"sqlite://{tmp_path / 'mirror.db'}"}
    with psycopg.connect(prod, autocommit=True) as conn:
        conn.execute(LOG)
        conn.execute("INSERT INTO log VALUES ('a', 1, NULL), ('a', 1, NULL), (NULL, NULL, NULL), ('b', 2, 'x')")
    start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name, "--replica-identity-full")
    appliers = [start_funnel(bootstrap, procs, tmp_path, "apply", url, "--funnel", funnel_name, "--mirror", name,
                             "--delay", "0s", "--create-tables") for name, url in mirrors.items()]

    def wait_equal(expected: Counter, what: str) -> None:
        for url in mirrors.values():
            wait_for(lambda: mirror_rows(url) == expected, 60, 0.3, f"{what} on {url}")

    wait_equal(prod_rows(prod), "the initial copy")
    with psycopg.connect(prod, autocommit=True) as conn:
        conn.execute("INSERT INTO log VALUES ('a', 1, NULL), ('c', 3, NULL)")  # a third equal row
        time.sleep(1.0)
        moment, at_moment = time.time(), prod_rows(prod)
        time.sleep(1.0)
        conn.execute("UPDATE log SET note = 'one' WHERE ctid = (SELECT ctid FROM log WHERE who = 'a' LIMIT 1)")
        with conn.transaction():  # the bad transaction, excluded at the end
            removed = Counter(conn.execute("DELETE FROM log WHERE note IS NULL RETURNING *").fetchall())
            bad_txid = str(conn.execute("SELECT pg_current_xact_id()").fetchone()[0])
        conn.execute("INSERT INTO log VALUES (NULL, NULL, NULL), ('d', 4, NULL)")
        conn.execute("DELETE FROM log WHERE who = 'b'")
    final = prod_rows(prod)
    assert removed == Counter({("a", 1, None): 2, (None, None, None): 1, ("c", 3, None): 1})
    wait_equal(final, "the changes")

    for name in mirrors:  # backward, with the appliers running: the undo of every keyless change
        ok(run_funnel(bootstrap, "seek", name, "--to", format_time(int(moment * 1_000_000)), "--funnel", funnel_name))
    wait_equal(at_moment, "the backward seek")

    for applier in appliers:
        assert applier.stop() == 0
    for name, url in mirrors.items():
        ok(run_funnel(bootstrap, "promote", name, "--funnel", funnel_name, "--exclude-txid", bad_txid, "--sink", url))
        assert mirror_rows(url) == final + removed, f"{name}: everything but the bad transaction"

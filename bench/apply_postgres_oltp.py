"""A pgbench backlog drained by `funnel capture`, then by `funnel apply` into PostgreSQL and SQLite.

Issue 13's realistic OLTP stream, on stock pgbench tables (``pgbench_history`` keyless,
captured with ``--replica-identity-full`` and mirrored as a multiset):

1. ``pgbench -i -s SCALE`` makes production (SCALE x 100,000 accounts);
2. `funnel capture` publishes the initial copy and is stopped; `funnel apply
   --create-tables` brings a PostgreSQL and a SQLite mirror up to it (not timed);
3. ``pgbench -n -c 4 -t TX/4`` commits the backlog (4 row changes per transaction),
   then one marker update whose commit tells when capture has published everything;
4. timed: `funnel capture` drains the backlog (until the slot's confirmed position
   passes the marker), then `funnel apply --delay 0s --until-caught-up` into each mirror;
5. timed: `funnel seek --sink` moves the PostgreSQL mirror back to before the backlog
   (the backward seek undoes every backlog transaction); the mirror must then equal
   production as it was before the backlog. ``undo`` reports transactions/s and
   ``ratio_to_forward`` = forward apply seconds / seek seconds.

Each process gets rows/s and CPU seconds per 100k rows (user + system of the process,
from /proc or wait4; times and CPU run from the process's start, start-up included; the
server's backends are not counted, except capture's walsender, given apart). Baselines
in the same run, on the same server and disk, apply the same final rows to a copy of
each mirror as it was before the backlog:

* PostgreSQL: binary ``COPY`` of the final image of every changed row into temp tables
  and one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` per keyed table, the history
  rows COPYed straight in, all in one commit (synchronous_commit off, as the sink);
* SQLite: raw ``executemany`` upserts of those rows (history: plain inserts) in
  1,000-row commits, WAL, synchronous=NORMAL.

The baselines' rows/s are the backlog's row changes over their time, so ``ratio`` = apply
rows/s / baseline rows/s = baseline seconds / apply seconds. Both mirrors and both
baselines are checked equal to production (counts and balance sums) before printing.

    ../.venv/bin/python apply_postgres_oltp.py [--scale 10] [--transactions 50000]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from apply_postgres import fresh_database, server  # noqa: I001
from common import broker, load_average, new_funnel, process_cpu_s, run_measured, vm_hwm_kb

import psycopg

from applier.sinks.sqlite_sql import upsert_sql
from sink_sqlite import WAL_NORMAL
from funnel.timeparse import format_time
from tests.support.pgserver import find_pg_bin

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CLIENTS = 4
ROWS_PER_TX = 4  # tpcb-like: accounts, tellers and branches updated, one history row inserted
KEYS = {"pgbench_accounts": "aid", "pgbench_tellers": "tid", "pgbench_branches": "bid"}
# the final image of every row the backlog changed: history names each changed key
CHANGED = {table: f"SELECT * FROM {table} WHERE {key} IN (SELECT {key} FROM pgbench_history)"
           for table, key in KEYS.items()} | {"pgbench_history": "SELECT * FROM pgbench_history"}
CHECKS = {"pgbench_accounts": "count(*), sum(abalance)", "pgbench_tellers": "count(*), sum(tbalance)",
          "pgbench_branches": "count(*), sum(bbalance)", "pgbench_history": "count(*), sum(delta), sum(aid)"}


def in_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def funnel_cmd(kafka, *args: str) -> list[str]:
    return [sys.executable, "-m", "funnel.cli", *args, "--bootstrap", kafka.bootstrap]


def pg_tool(name: str, url: str, *args: str) -> None:
    parts = urlsplit(url)
    subprocess.run([str(find_pg_bin() / name), "-h", parts.hostname, "-p", str(parts.port), "-U", parts.username,
                    *args, parts.path.lstrip("/")], check=True, capture_output=True)


def initial_copy(kafka, funnel: str, prod: str) -> None:
    """Run capture until it has published the initial copy (it logs so), then stop it."""
    process = subprocess.Popen(funnel_cmd(kafka, "capture", prod, "--funnel", funnel, "--replica-identity-full",
                                          "--verbose"), cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "capturing into" in line:
            break
    else:
        raise SystemExit(f"capture ended before publishing the initial copy (exit {process.wait()})")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)


def marker(prod: str) -> int:
    """Commits one captured update; returns an LSN its commit ends after (as pg_lsn numeric)."""
    with psycopg.connect(prod) as conn:
        conn.execute("UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1")
        return conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()[0]


def drain_capture(kafka, funnel: str, prod: str, end_lsn: int) -> dict[str, float]:
    """Time a capture from start until the slot confirms past ``end_lsn``; then stop it."""
    admin = psycopg.connect(prod, autocommit=True)
    started = time.perf_counter()
    process = subprocess.Popen(funnel_cmd(kafka, "capture", prod, "--funnel", funnel, "--replica-identity-full"),
                               cwd=ROOT, env=ENV, stderr=subprocess.DEVNULL)
    streaming_s = walsender = None
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"funnel capture exited with code {process.returncode}")
            confirmed, active_pid = admin.execute(
                "SELECT confirmed_flush_lsn - '0/0'::pg_lsn, active_pid FROM pg_replication_slots "
                "WHERE database = current_database()").fetchone()
            if active_pid is not None and streaming_s is None:  # started up: the slot streams
                streaming_s, walsender = time.perf_counter() - started, active_pid
            if confirmed is not None and confirmed >= end_lsn:
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        figures = {"seconds": seconds, "cpu_s": process_cpu_s(process.pid),
                   "peak_rss_mb": vm_hwm_kb(process.pid) / 1024,
                   "streaming_after_s": streaming_s, "walsender_cpu_s": process_cpu_s(walsender)}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        admin.close()
    return figures


def drain_apply(kafka, funnel: str, mirror: str, sink_url: str) -> dict[str, float]:
    return run_measured(funnel_cmd(kafka, "apply", sink_url, "--funnel", funnel, "--mirror", mirror, "--delay", "0s",
                                   "--create-tables", "--until-caught-up"), cwd=ROOT, env=ENV,
                        stderr=subprocess.DEVNULL)


def seek_back(kafka, funnel: str, mirror: str, sink_url: str, to_micros: int) -> dict[str, float]:
    """Time a backward `funnel seek --sink` of ``mirror`` to ``to_micros``; seconds and undone transactions."""
    started = time.perf_counter()
    done = subprocess.run(funnel_cmd(kafka, "seek", mirror, "--to", format_time(to_micros), "--funnel", funnel,
                                     "--sink", sink_url, "--json"), cwd=ROOT, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"seek failed: {done.stderr}")
    return {"seconds": seconds, "transactions": json.loads(done.stdout)["plan"]["undo"]["transactions"]}


def final_rows_binary(prod: str) -> tuple[dict[str, bytes], dict[str, int]]:
    """The backlog's final rows per table as binary COPY data (read before the baseline is
    timed), and their counts."""
    with psycopg.connect(prod) as conn:
        data, counts = {}, {}
        for table, query in CHANGED.items():
            with conn.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT BINARY)") as copy:
                data[table] = b"".join(bytes(block) for block in copy)
            counts[table] = conn.execute(f"SELECT count(*) FROM ({query}) AS changed").fetchone()[0]
        return data, counts


def create_from_template(admin: str, name: str, template: str) -> None:
    """CREATE DATABASE ... TEMPLATE, once the stopped capture's walsender has let go of it."""
    deadline = time.monotonic() + 60
    with psycopg.connect(admin, autocommit=True) as conn:
        while True:
            try:
                conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
                return
            except psycopg.errors.ObjectInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def postgres_baseline(url: str, data: dict[str, bytes]) -> dict[str, float]:
    """COPY + merge of the final rows into ``url``'s tables, one commit; wall and CPU seconds."""
    with psycopg.connect(url, application_name="timefunnel-bench-baseline") as conn:
        conn.execute("SET synchronous_commit = off")
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.commit()
        started, client, server_cpu = time.perf_counter(), time.process_time(), process_cpu_s(backend)
        with conn.transaction():
            for table, payload in data.items():
                _copy_merge(conn, table, payload)
        return {"seconds": time.perf_counter() - started, "client_cpu_s": time.process_time() - client,
                "server_cpu_s": process_cpu_s(backend) - server_cpu}


def _copy_merge(conn: psycopg.Connection, table: str, payload: bytes) -> None:
    key = KEYS.get(table)
    target = f"stage_{table}" if key else table
    if key:
        conn.execute(f"CREATE TEMP TABLE {target} (LIKE {table}) ON COMMIT DROP")
    with conn.cursor().copy(f"COPY {target} FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(payload)
    if key:
        columns = [row[0] for row in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (table,))]
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != key)
        conn.execute(f"INSERT INTO {table} SELECT * FROM {target} ON CONFLICT ({key}) DO UPDATE SET {updates}")


def sqlite_baseline(final_from: Path, target: Path) -> dict[str, float]:
    """Raw executemany upserts (history: inserts) of the final rows, 1,000-row commits, WAL + NORMAL."""
    source = sqlite3.connect(final_from)
    conn = sqlite3.connect(target, isolation_level=None)
    for pragma in WAL_NORMAL:
        conn.execute(pragma)
    seconds = 0.0
    for table, query in CHANGED.items():
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
            # the sink creates a table with its first rows: an empty history came after the copy
            conn.execute(source.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0])
        cursor = source.execute(query)
        columns = [d[0] for d in cursor.description]
        sql = (upsert_sql(table, columns, [KEYS[table]]) if table in KEYS else
               f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})")
        while rows := cursor.fetchmany(1000):
            started = time.perf_counter()
            conn.execute("BEGIN")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
            seconds += time.perf_counter() - started
    conn.close()
    source.close()
    return {"seconds": seconds}


def postgres_state(url: str) -> dict[str, list]:
    with psycopg.connect(url) as conn:
        return {t: [int(v or 0) for v in conn.execute(f"SELECT {c} FROM {t}").fetchone()] for t, c in CHECKS.items()}


def sqlite_state(path: Path) -> dict[str, list]:
    with sqlite3.connect(path) as conn:
        return {t: [int(v or 0) for v in conn.execute(f"SELECT {c} FROM {t}").fetchone()] for t, c in CHECKS.items()}


def sqlite_copy(source: Path, target: Path) -> None:
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def per_process(figures: dict[str, float], rows: int) -> dict[str, float]:
    result = {"seconds": round(figures["seconds"], 2), "rows_per_s": round(rows / figures["seconds"]),
              "cpu_s": round(figures["cpu_s"], 2), "cpu_s_per_100k_rows": round(figures["cpu_s"] * 1e5 / rows, 2),
              "cpu_us_per_row": round(figures["cpu_s"] * 1e6 / rows)}
    if figures.get("peak_rss_mb"):
        result["peak_rss_mb"] = round(figures["peak_rss_mb"], 1)
    if figures.get("streaming_after_s") is not None:  # capture: its start-up, and the server's decoding
        result["streaming_after_s"] = round(figures["streaming_after_s"], 2)
        result["walsender_cpu_s"] = round(figures["walsender_cpu_s"], 2)
    return result


def run(kafka, admin: str, scratch: Path, scale: int, transactions: int) -> dict[str, object]:
    prod_db, mirror_db = "tf_oltp_prod", "tf_oltp_mirror"
    prod, mirror, base = (in_database(admin, n) for n in (prod_db, mirror_db, "tf_oltp_baseline"))
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in (prod_db, mirror_db):
            conn.execute(f"CREATE DATABASE {name}")
    started = time.perf_counter()
    pg_tool("pgbench", prod, "-i", "-q", "-s", str(scale))
    init_s = time.perf_counter() - started
    funnel = new_funnel(kafka)
    started = time.perf_counter()
    initial_copy(kafka, funnel, prod)
    snapshot_s = time.perf_counter() - started
    lite, lite_before = scratch / "mirror.db", scratch / "baseline.db"
    drain_apply(kafka, funnel, "pg", mirror)
    drain_apply(kafka, funnel, "lite", f"sqlite://{lite}")
    sqlite_copy(lite, lite_before)  # the baselines start where the mirrors stand before the backlog
    create_from_template(admin, "tf_oltp_baseline", prod_db)
    before_backlog, before_micros = postgres_state(prod), int(time.time() * 1e6)
    started = time.perf_counter()
    pg_tool("pgbench", prod, "-n", "-c", str(CLIENTS), "-j", "2", "-t", str(transactions // CLIENTS))
    backlog_s = time.perf_counter() - started
    end_lsn = marker(prod)
    rows = transactions // CLIENTS * CLIENTS * ROWS_PER_TX + 1  # + the marker
    capture = drain_capture(kafka, funnel, prod, end_lsn)
    pg_apply = drain_apply(kafka, funnel, "pg", mirror)
    lite_apply = drain_apply(kafka, funnel, "lite", f"sqlite://{lite}")
    data, final_rows = final_rows_binary(prod)
    pg_base = postgres_baseline(base, data)
    lite_base = sqlite_baseline(lite, lite_before)
    expected = postgres_state(prod)
    for name, state in (("PostgreSQL mirror", postgres_state(mirror)), ("SQLite mirror", sqlite_state(lite)),
                        ("PostgreSQL baseline", postgres_state(base)), ("SQLite baseline", sqlite_state(lite_before))):
        if state != expected:
            raise SystemExit(f"{name} differs from production: {state} != {expected}")
    undo = seek_back(kafka, funnel, "pg", mirror, before_micros)
    if postgres_state(mirror) != before_backlog:
        raise SystemExit("PostgreSQL mirror after the backward seek differs from production before the backlog")
    pg_rate, lite_rate = rows / pg_apply["seconds"], rows / lite_apply["seconds"]
    return {
        "bench": "apply_postgres_oltp", "scale": scale, "accounts": scale * 100_000, "transactions": transactions,
        "rows": rows, "final_rows": final_rows,
        "pgbench_init_s": round(init_s, 2), "initial_copy_s": round(snapshot_s, 2),
        "backlog_commit_s": round(backlog_s, 2),
        "capture": per_process(capture, rows),
        "apply_postgres": {**per_process(pg_apply, rows),
                           "baseline_copy_merge_s": round(pg_base["seconds"], 3),
                           "baseline_copy_merge_rows_per_s": round(rows / pg_base["seconds"]),
                           "baseline_client_cpu_s": round(pg_base["client_cpu_s"], 2),
                           "baseline_server_cpu_s": round(pg_base["server_cpu_s"], 2),
                           "ratio": round(pg_rate / (rows / pg_base["seconds"]), 4)},
        "apply_sqlite": {**per_process(lite_apply, rows),
                         "baseline_executemany_s": round(lite_base["seconds"], 3),
                         "baseline_executemany_rows_per_s": round(rows / lite_base["seconds"]),
                         "ratio": round(lite_rate / (rows / lite_base["seconds"]), 4)},
        "undo_postgres": {"transactions": undo["transactions"], "seconds": round(undo["seconds"], 2),
                          "transactions_per_s": round(undo["transactions"] / undo["seconds"]),
                          "ratio_to_forward": round(pg_apply["seconds"] / undo["seconds"], 4),
                          "target_transactions_per_s": 10_000},
        "mirrors_equal_production": True, "load_average": load_average(), "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale (100,000 accounts each)")
    parser.add_argument("--transactions", type=int, default=50_000, help="pgbench transactions in the backlog")
    args = parser.parse_args()
    with broker() as kafka, server() as (url, description), fresh_database(url) as admin, \
            tempfile.TemporaryDirectory() as scratch:
        try:
            result = run(kafka, admin, Path(scratch), args.scale, args.transactions)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                for name in ("tf_oltp_prod", "tf_oltp_mirror", "tf_oltp_baseline"):
                    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    result["server"] = description
    print(json.dumps(result))


if __name__ == "__main__":
    main()

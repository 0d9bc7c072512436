"""Seconds from `funnel promote` to the takeover hook, deep funnel, PostgreSQL mirror.

bench/promote_drain.py's funnel (``--hours`` of ``--tps`` 3-row transactions: two
inserts and a delete, none applied yet) promoted with ``--sink`` into a PostgreSQL
mirror. The baseline, in the same run on the same server, applies the same row changes
without Kafka in commits of about 1,000 row changes, collapsed to their net effect per key
as a merge does: binary COPY of the surviving images into a temp table, one
``INSERT ... SELECT ... ON CONFLICT DO UPDATE``, one ``DELETE ... = ANY``
(synchronous_commit off, as the sink). ``ratio_to_copy_merge_baseline`` = promote rows/s /
baseline rows/s. The mirror and the baseline table must end with the same rows.

    ../.venv/bin/python promote_drain_postgres.py [--hours 1] [--tps 300]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from apply_postgres import fresh_database, server  # noqa: I001
from common import broker, load_average, new_funnel, publish_all
from promote_drain import ROOT, change_chunks, funnel_cmd, run_measured, traffic

import psycopg

TABLE = "main.ledger"  # where a PostgreSQL mirror puts the events' main.ledger
BASELINE_TABLE = "main.ledger_baseline"
DDL = "(id bigint PRIMARY KEY, account integer, amount float8, note text)"


def make_mirror(kafka, funnel: str, url: str) -> None:
    """A mirror that holds the initial copy and nothing else (its delay is longer than the funnel)."""
    process = subprocess.Popen(funnel_cmd(kafka, "apply", url, "--funnel", funnel, "--mirror", "m", "--delay", "3h"),
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                time.sleep(0.5)
                try:
                    if conn.execute("SELECT bool_and(snapshot_done::int = 1) FROM _timefunnel_state").fetchone()[0]:
                        return
                except psycopg.errors.UndefinedTable:
                    pass
        raise SystemExit("the mirror did not get the initial copy within 60 s")
    finally:
        process.terminate()
        process.wait(30)


def baseline_rows_per_s(url: str, hours: float, tps: int) -> float:
    """COPY + merge of the traffic's net effect per ~1,000-row commit; rows/s of row changes."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute(f"CREATE TABLE {BASELINE_TABLE} {DDL}")
        conn.execute("CREATE TEMP TABLE stage (id int8, account int4, amount float8, note text) "
                     "ON COMMIT DELETE ROWS")
        upsert = (f"INSERT INTO {BASELINE_TABLE} SELECT * FROM stage ON CONFLICT (id) DO UPDATE SET "
                  "account = EXCLUDED.account, amount = EXCLUDED.amount, note = EXCLUDED.note")
        rows, seconds = 0, 0.0
        for images, keys in change_chunks(hours, tps):
            deleted = {key[0] for key in keys}
            latest = {image[0]: image for image in images if image[0] not in deleted}
            started = time.perf_counter()
            with conn.transaction():
                cursor = conn.cursor()
                with cursor.copy("COPY stage FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "int4", "float8", "text"])
                    for image in latest.values():
                        copy.write_row(image)
                cursor.execute(upsert)
                cursor.execute(f"DELETE FROM {BASELINE_TABLE} WHERE id = ANY(%s)", (list(deleted),))
            seconds += time.perf_counter() - started
            rows += len(images) + len(keys)
    return rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--tps", type=int, default=300)
    args = parser.parse_args()
    with broker() as kafka, server() as (admin, description), fresh_database(admin) as url, \
            tempfile.TemporaryDirectory() as tmp:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA main")
            conn.execute(f"CREATE TABLE {TABLE} {DDL}")
        funnel = new_funnel(kafka)
        started = time.perf_counter()
        first = next(traffic(args.hours, args.tps)).commit_ts
        rows = publish_all(kafka, funnel, traffic(args.hours, args.tps), per_kafka_tx=2000, snapshot_ts=first - 1)
        publish_seconds = time.perf_counter() - started
        make_mirror(kafka, funnel, url)
        hook_file = Path(tmp, "hook.ts")
        started_ns = time.time_ns()
        promoted = run_measured(funnel_cmd(kafka, "promote", "m", "--funnel", funnel, "--sink", url,
                                           "--on-promote", f"date +%s%N > {hook_file}"),
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
        to_hook = (int(hook_file.read_text()) - started_ns) / 1e9
        base = baseline_rows_per_s(url, args.hours, args.tps)
        with psycopg.connect(url) as conn:
            differ = conn.execute(f"SELECT count(*) FROM ((TABLE {TABLE} EXCEPT TABLE {BASELINE_TABLE}) UNION ALL "
                                  f"(TABLE {BASELINE_TABLE} EXCEPT TABLE {TABLE})) AS d").fetchone()[0]
            mirror_rows = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
    if differ:
        raise SystemExit(f"the promoted mirror and the baseline table differ in {differ} rows")
    print(json.dumps({
        "bench": "promote_drain_postgres", "transactions": int(args.hours * 3600 * args.tps), "rows": rows,
        "seconds_to_hook": round(to_hook, 2), "rows_per_s": round(rows / to_hook),
        "baseline_copy_merge_rows_per_s": round(base), "ratio_to_copy_merge_baseline": round(rows / to_hook / base, 3),
        "promote_cpu_s": round(promoted["cpu_s"], 2), "promote_peak_rss_mb": round(promoted["peak_rss_mb"], 1),
        "worker_peak_rss_mb": round(promoted["worker_peak_rss_mb"], 1),
        "mirror_rows": mirror_rows, "publish_seconds": round(publish_seconds, 2), "load_average": load_average(),
        "server": description, "target_seconds": 60}))


if __name__ == "__main__":
    main()

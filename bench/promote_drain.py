"""Seconds from `funnel promote` to the takeover hook, with a deep funnel behind the mirror.

The funnel holds ``--hours`` of traffic at ``--tps`` transactions/s of 3 rows each
(default 1 h at 300 tx/s: 1,080,000 transactions), none applied yet (the mirror's delay
is longer). `funnel promote --sink` (applier stopped) drains it all and runs the hook.
The rate is reported with its ratio to a plain drain of the same funnel by
`funnel apply --until-caught-up` (bench/apply_sqlite.py's path), and with
``ratio_to_raw_baseline``: drain rows/s / the rows/s of raw ``executemany`` upserts (and
deletes) of the same row changes in 1,000-row commits, WAL, synchronous=NORMAL, no Kafka,
both measured in this run. The promoting process's CPU seconds (its decoding worker's
included) and peak RSS (and its worker's, apart) are given too.

    .venv/bin/python bench/promote_drain.py [--hours 1] [--tps 300]
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

from common import broker, load_average, new_funnel, publish_all, vm_hwm_kb  # noqa: I001

from applier.sinks.sqlite_sql import create_table_sql, upsert_sql
from funnel.events import Op, Row, TableChanges
from producer.sources.base import SourceTransaction
from sink_sqlite import WAL_NORMAL

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["id", "account", "amount", "note"]


def traffic(hours: float, tps: int):
    """3-row transactions (an insert, an update, a delete) spread over the last ``hours``."""
    count = int(hours * 3600 * tps)
    start = time.time_ns() // 1000 - int(hours * 3600 * 1e6) - 60_000_000
    for n in range(count):
        key = n * 2
        changes = [TableChanges("main.ledger", Op.INSERT, COLUMNS, ["id"],
                                [Row(None, [key, n % 1000, n * 0.01, "deposit"]),
                                 Row(None, [key + 1, n % 997, 1.0, "fee"])]),
                   TableChanges("main.ledger", Op.DELETE, COLUMNS, ["id"],
                                [Row([key - 1, (n - 1) % 997, 1.0, "fee"], None)] if n else [])]
        yield SourceTransaction(str(n + 1), start + n * 1_000_000 // tps, n + 1, [c for c in changes if c.rows])


def change_chunks(hours: float, tps: int, rows: int = 1000):
    """The traffic's row changes in commits of about ``rows``: (upserted images, deleted keys).

    Within a chunk the upserts may all run before the deletes: a key is only ever
    deleted after the transaction that inserted it, never inserted again.
    """
    images: list[list] = []
    keys: list[list] = []
    for tx in traffic(hours, tps):
        for group in tx.changes:
            if group.op is Op.DELETE:
                keys += [[row.before[0]] for row in group.rows]
            else:
                images += [row.after for row in group.rows]
        if len(images) + len(keys) >= rows:
            yield images, keys
            images, keys = [], []
    if images or keys:
        yield images, keys


def raw_sqlite_rows_per_s(hours: float, tps: int, path: Path) -> tuple[float, int]:
    """Raw executemany of the traffic into a SQLite file, 1,000-row commits; (rows/s, final rows)."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in WAL_NORMAL:
        conn.execute(pragma)
    conn.execute(create_table_sql("ledger", COLUMNS, ["id"]))
    upsert, delete = upsert_sql("ledger", COLUMNS, ["id"]), "DELETE FROM ledger WHERE id = ?"
    rows, seconds = 0, 0.0
    for images, keys in change_chunks(hours, tps):
        started = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(upsert, images)
        conn.executemany(delete, keys)
        conn.execute("COMMIT")
        seconds += time.perf_counter() - started
        rows += len(images) + len(keys)
    final = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
    conn.close()
    return rows / seconds, final


def run_measured(command: list[str], **popen: object) -> dict[str, float]:
    """common.run_measured, plus the peak RSS of the promote's children (its decoding worker).

    CPU is wait4's rusage of the promote, its waited-for worker included; ``peak_rss_mb``
    is the promote's own VmHWM, ``worker_peak_rss_mb`` the largest child's.
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, **popen)
    peak_kb = worker_kb = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak_kb = max(peak_kb, vm_hwm_kb(process.pid))
        worker_kb = max([worker_kb] + [vm_hwm_kb(child) for child in children(process.pid)])
        time.sleep(0.1)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:5])} … failed with exit code {os.waitstatus_to_exitcode(status)}")
    return {"seconds": time.perf_counter() - started, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": peak_kb / 1024, "worker_peak_rss_mb": worker_kb / 1024}


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            return [int(child) for child in listed.read().split()]
    except OSError:
        return []


def funnel_cmd(kafka, *args: str) -> list[str]:
    return [sys.executable, "-m", "funnel.cli", *args, "--bootstrap", kafka.bootstrap]


def make_mirror(kafka, funnel: str, mirror: Path) -> None:
    """A mirror that holds the initial copy and nothing else (its delay is longer than the funnel)."""
    process = subprocess.Popen(funnel_cmd(kafka, "apply", f"sqlite://{mirror}", "--funnel", funnel, "--mirror", "m",
                                          "--delay", "3h"), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            if sqlite3.connect(mirror).execute("SELECT snapshot_done FROM _timefunnel_state").fetchone() == (1,):
                break
        except sqlite3.OperationalError:
            pass
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--tps", type=int, default=300)
    args = parser.parse_args()
    with broker() as kafka, tempfile.TemporaryDirectory() as tmp:
        funnel = new_funnel(kafka)
        started = time.perf_counter()
        first = next(traffic(args.hours, args.tps)).commit_ts
        rows = publish_all(kafka, funnel, traffic(args.hours, args.tps), per_kafka_tx=2000, snapshot_ts=first - 1)
        publish_seconds = time.perf_counter() - started
        mirror, hook_file = Path(tmp, "mirror.db"), Path(tmp, "hook.ts")
        make_mirror(kafka, funnel, mirror)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        started_ns = time.time_ns()
        promoted = run_measured(funnel_cmd(kafka, "promote", "m", "--funnel", funnel, "--sink", f"sqlite://{mirror}",
                                           "--on-promote", f"date +%s%N > {hook_file}"), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL)
        to_hook = (int(hook_file.read_text()) - started_ns) / 1e9
        mirror_rows = sqlite3.connect(mirror).execute("SELECT count(*) FROM ledger").fetchone()[0]
        transactions = int(args.hours * 3600 * args.tps)
        baseline_mirror = Path(tmp, "plain.db")
        started = time.perf_counter()
        subprocess.run(funnel_cmd(kafka, "apply", f"sqlite://{baseline_mirror}", "--funnel", funnel, "--mirror",
                                  "plain", "--delay", "0s", "--until-caught-up"), cwd=ROOT, env=env, check=True,
                       capture_output=True)
        plain_seconds = time.perf_counter() - started
        raw_rows_per_s, raw_final = raw_sqlite_rows_per_s(args.hours, args.tps, Path(tmp, "raw.db"))
    if raw_final != mirror_rows:
        raise SystemExit(f"the promoted mirror holds {mirror_rows} rows, the raw baseline {raw_final}")
    print(json.dumps({
        "bench": "promote_drain", "transactions": transactions, "rows": rows,
        "seconds_to_hook": round(to_hook, 2), "rows_per_s": round(rows / to_hook),
        "plain_apply_seconds": round(plain_seconds, 2), "plain_apply_rows_per_s": round(rows / plain_seconds),
        "ratio_to_plain_apply": round(plain_seconds / to_hook, 3),
        "raw_executemany_rows_per_s": round(raw_rows_per_s),
        "ratio_to_raw_baseline": round(rows / to_hook / raw_rows_per_s, 3),
        "promote_cpu_s": round(promoted["cpu_s"], 2), "promote_peak_rss_mb": round(promoted["peak_rss_mb"], 1),
        "worker_peak_rss_mb": round(promoted["worker_peak_rss_mb"], 1),
        "mirror_rows": mirror_rows, "load_average": load_average(),
        "publish_seconds": round(publish_seconds, 2), "target_seconds": 60}))


if __name__ == "__main__":
    main()

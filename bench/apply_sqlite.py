"""End-to-end apply rate into a SQLite mirror, against raw executemany in the same run.

Drains a funnel of ``--rows`` row events (source transactions of 10 rows, 8 mixed-type
columns, half inserts half updates; bench/sink_sqlite.py's workload) into a fresh SQLite
mirror with delay 0 through the real `funnel apply` process and the real broker. The
baseline upserts the same rows with ``executemany`` in 1,000-row commits, WAL,
synchronous=NORMAL, no Kafka. ``--memory-rows`` adds a second, deeper funnel and reports
the applier process's peak RSS while draining it.

    .venv/bin/python bench/apply_sqlite.py [--rows 1000000] [--memory-rows 5000000]
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import broker, new_funnel, publish_all  # noqa: I001  (bench/ is on sys.path as a script dir)

from applier.sinks.sqlite_sql import create_table_sql, upsert_sql
from producer.sources.base import SourceTransaction
from sink_sqlite import COLUMNS, KEY, MIRROR_TABLE, WAL_NORMAL, Workload

ROOT = Path(__file__).resolve().parent.parent


def source_transactions(rows: int):
    workload = Workload()
    for offset in range(rows // 10):
        tx = workload.transaction(offset)
        yield SourceTransaction(tx.txid, time.time_ns() // 1000 - 3_600_000_000, offset + 1, tx.changes)


def baseline_rows_per_s(rows: int, directory: str) -> float:
    conn = sqlite3.connect(Path(directory, "baseline.db"), isolation_level=None)
    for pragma in WAL_NORMAL:
        conn.execute(pragma)
    conn.execute(create_table_sql(MIRROR_TABLE, COLUMNS, KEY))
    sql = upsert_sql(MIRROR_TABLE, COLUMNS, KEY)
    workload, images, seconds = Workload(), [], 0.0
    for offset in range(rows // 10):
        images += [row.after for group in workload.transaction(offset).changes for row in group.rows]
        if len(images) >= 1000:
            started = time.perf_counter()
            conn.execute("BEGIN")
            conn.executemany(sql, images)
            conn.execute("COMMIT")
            seconds += time.perf_counter() - started
            images = []
    conn.close()
    return rows / seconds


def drain(kafka, funnel: str, mirror: Path | str) -> tuple[float, float]:
    """Run `funnel apply --until-caught-up` into a SQLite file or a sink URL; returns (seconds, peak RSS MB)."""
    url = mirror if isinstance(mirror, str) else f"sqlite://{mirror}"
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "funnel.cli", "apply", url, "--funnel", funnel,
                                "--mirror", "bench", "--delay", "0s", "--until-caught-up",
                                "--bootstrap", kafka.bootstrap], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    # Peak RSS since exec (VmHWM): rusage's ru_maxrss would also count the forked copy of
    # this bench process from before exec, which holds the whole workload.
    peak_kb = 0
    while process.poll() is None:
        peak_kb = max(peak_kb, _vm_hwm_kb(process.pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"funnel apply failed with exit code {process.returncode}")
    return seconds, peak_kb / 1024


def _vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    except (OSError, ValueError):
        return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--memory-rows", type=int, default=0, help="also drain a funnel this deep, report peak RSS")
    args = parser.parse_args()
    with broker() as kafka, tempfile.TemporaryDirectory() as tmp:
        funnel = new_funnel(kafka)
        started = time.perf_counter()
        published = publish_all(kafka, funnel, source_transactions(args.rows))
        publish_seconds = time.perf_counter() - started
        seconds, rss = drain(kafka, funnel, Path(tmp, "mirror.db"))
        applied = sqlite3.connect(Path(tmp, "mirror.db")).execute(f"SELECT count(*) FROM {MIRROR_TABLE}").fetchone()[0]
        base = baseline_rows_per_s(args.rows, tmp)
        result = {"bench": "apply_sqlite", "rows": published, "mirror_rows": applied,
                  "seconds": round(seconds, 2), "rows_per_s": round(published / seconds),
                  "baseline_executemany_rows_per_s": round(base), "ratio": round(published / seconds / base, 3),
                  "peak_rss_mb": round(rss, 1), "publish_rows_per_s": round(published / publish_seconds),
                  "targets": {"rows_per_s": 100_000, "ratio": 0.25, "peak_rss_mb": 300}}
        if args.memory_rows:
            deep = new_funnel(kafka)
            publish_all(kafka, deep, source_transactions(args.memory_rows))
            deep_seconds, deep_rss = drain(kafka, deep, Path(tmp, "deep.db"))
            result["memory"] = {"rows": args.memory_rows, "seconds": round(deep_seconds, 2),
                                "rows_per_s": round(args.memory_rows / deep_seconds), "peak_rss_mb": round(deep_rss, 1)}
    result["load_average"] = [round(x, 2) for x in os.getloadavg()[:2]]
    print(json.dumps(result))


if __name__ == "__main__":
    main()

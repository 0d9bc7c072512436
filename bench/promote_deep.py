"""Promote time and memory with a deep funnel (default 10M row changes) behind a SQLite mirror.

bench/promote_drain.py's 3-row transactions (two inserts, a delete) at 5,000 row changes/s
of production time, ``--rows`` of them, none applied yet (the mirror's delay is longer).
`funnel promote --sink` drains it all and runs the takeover hook. Reported: seconds to the
hook, rows/s, CPU seconds and peak RSS (VmHWM) of the promoting process, and the time this
rate gives for a 4-hour funnel at 5,000 rows/s (72M rows).

Baselines in the same run: raw ``executemany`` of the same row changes in 1,000-row
commits, WAL, synchronous=NORMAL (``ratio_to_raw_baseline``), and the promote of a funnel
``--small-rows`` deep, whose peak RSS shows whether memory grows with the funnel's depth.

    ../.venv/bin/python promote_deep.py [--rows 10000000] [--small-rows 500000]
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from common import broker, load_average, new_funnel, publish_all  # noqa: I001
from promote_drain import ROOT, funnel_cmd, make_mirror, raw_sqlite_rows_per_s, run_measured, traffic

ROWS_PER_S = 5_000  # production's rate the funnel stands for
ROWS_PER_TX = 3
FOUR_HOURS_ROWS = 4 * 3600 * ROWS_PER_S


def shape(rows: int) -> tuple[float, int]:
    """(hours, tps) of traffic() that make about ``rows`` row changes at ROWS_PER_S."""
    tps = ROWS_PER_S // ROWS_PER_TX
    return rows / ROWS_PER_TX / tps / 3600, tps


def promote(kafka, rows: int, tmp: Path, name: str) -> dict[str, float]:
    """Publish a funnel of ``rows`` changes, give a mirror its initial copy, time its promote."""
    hours, tps = shape(rows)
    funnel = new_funnel(kafka)
    started = time.perf_counter()
    first = next(traffic(hours, tps)).commit_ts
    published = publish_all(kafka, funnel, traffic(hours, tps), per_kafka_tx=2000, snapshot_ts=first - 1)
    publish_seconds = time.perf_counter() - started
    mirror, hook_file = tmp / f"{name}.db", tmp / f"{name}.hook"
    make_mirror(kafka, funnel, mirror)
    started_ns = time.time_ns()
    measured = run_measured(funnel_cmd(kafka, "promote", "m", "--funnel", funnel, "--sink", f"sqlite://{mirror}",
                                       "--on-promote", f"date +%s%N > {hook_file}"),
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = (int(hook_file.read_text()) - started_ns) / 1e9
    mirror_rows = sqlite3.connect(mirror).execute("SELECT count(*) FROM ledger").fetchone()[0]
    mirror.unlink()
    return {"rows": published, "seconds": seconds, "cpu_s": measured["cpu_s"], "peak_rss_mb": measured["peak_rss_mb"],
            "worker_peak_rss_mb": measured["worker_peak_rss_mb"],
            "publish_seconds": publish_seconds, "mirror_rows": mirror_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="row changes in the deep funnel")
    parser.add_argument("--small-rows", type=int, default=500_000, help="row changes in the memory baseline's funnel")
    args = parser.parse_args()
    with broker() as kafka, tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        small = promote(kafka, args.small_rows, tmp, "small")
        deep = promote(kafka, args.rows, tmp, "deep")
        raw_rows_per_s, raw_final = raw_sqlite_rows_per_s(*shape(args.rows), tmp / "raw.db")
    if raw_final != deep["mirror_rows"]:
        raise SystemExit(f"the promoted mirror holds {deep['mirror_rows']} rows, the raw baseline {raw_final}")
    rate = deep["rows"] / deep["seconds"]
    print(json.dumps({
        "bench": "promote_deep", "rows": deep["rows"], "seconds_to_hook": round(deep["seconds"], 2),
        "rows_per_s": round(rate), "promote_cpu_s": round(deep["cpu_s"], 2),
        "cpu_s_per_100k_rows": round(deep["cpu_s"] * 1e5 / deep["rows"], 2),
        "peak_rss_mb": round(deep["peak_rss_mb"], 1), "worker_peak_rss_mb": round(deep["worker_peak_rss_mb"], 1),
        "extrapolated_4h_at_5000_rows_per_s": {"rows": FOUR_HOURS_ROWS, "seconds": round(FOUR_HOURS_ROWS / rate),
                                               "minutes": round(FOUR_HOURS_ROWS / rate / 60, 1)},
        "raw_executemany_rows_per_s": round(raw_rows_per_s), "ratio_to_raw_baseline": round(rate / raw_rows_per_s, 3),
        "small_funnel": {"rows": small["rows"], "seconds_to_hook": round(small["seconds"], 2),
                         "rows_per_s": round(small["rows"] / small["seconds"]),
                         "peak_rss_mb": round(small["peak_rss_mb"], 1)},
        "peak_rss_ratio_to_small_funnel": round(deep["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "mirror_rows": deep["mirror_rows"], "publish_seconds": round(deep["publish_seconds"], 2),
        "load_average": load_average()}))


if __name__ == "__main__":
    main()

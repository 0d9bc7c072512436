"""Seconds from `funnel promote` to the takeover hook, with a deep funnel behind the mirror.

The funnel holds ``--hours`` of traffic at ``--tps`` transactions/s of 3 rows each
(default 1 h at 300 tx/s: 1,080,000 transactions), none applied yet (the mirror's delay
is longer). `funnel promote --sink` (applier stopped) drains it all and runs the hook.
The rate is reported with its ratio to a plain drain of the same funnel by
`funnel apply --until-caught-up` (bench/apply_sqlite.py's path), measured in this run.

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

from common import broker, new_funnel, publish_all  # noqa: I001

from funnel.events import Op, Row, TableChanges
from producer.sources.base import SourceTransaction

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
        done = subprocess.run(funnel_cmd(kafka, "promote", "m", "--funnel", funnel, "--sink", f"sqlite://{mirror}",
                                         "--on-promote", f"date +%s%N > {hook_file}"), cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"promote failed: {done.stderr}")
        to_hook = (int(hook_file.read_text()) - started_ns) / 1e9
        transactions = int(args.hours * 3600 * args.tps)
        baseline_mirror = Path(tmp, "plain.db")
        started = time.perf_counter()
        subprocess.run(funnel_cmd(kafka, "apply", f"sqlite://{baseline_mirror}", "--funnel", funnel, "--mirror",
                                  "plain", "--delay", "0s", "--until-caught-up"), cwd=ROOT, env=env, check=True,
                       capture_output=True)
        plain_seconds = time.perf_counter() - started
    print(json.dumps({
        "bench": "promote_drain", "transactions": transactions, "rows": rows,
        "seconds_to_hook": round(to_hook, 2), "rows_per_s": round(rows / to_hook),
        "plain_apply_seconds": round(plain_seconds, 2), "plain_apply_rows_per_s": round(rows / plain_seconds),
        "ratio_to_plain_apply": round(plain_seconds / to_hook, 3),
        "publish_seconds": round(publish_seconds, 2), "target_seconds": 60}))


if __name__ == "__main__":
    main()

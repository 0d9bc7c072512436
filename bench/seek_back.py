"""Seconds to undo ``--transactions`` applied transactions with a backward seek.

The mirror applies the whole funnel (3-row transactions, bench/promote_drain.py's
traffic), then `funnel seek --to <before the first> --sink` undoes them all. The ratio
compares with the forward apply of the same transactions, measured in this run.

    .venv/bin/python bench/seek_back.py [--transactions 100000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import broker, new_funnel, publish_all  # noqa: I001
from promote_drain import ROOT, funnel_cmd, traffic

from funnel.timeparse import format_time


def timed(command: list[str], env: dict) -> tuple[float, float, float, str]:
    """(seconds, CPU seconds of the process and the children it waited for, its peak RSS in
    MB, stdout) of a command that must succeed.  CPU is steadier than seconds on a shared machine."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{command[3]} failed: {err.read().decode()}")
        return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.read().decode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=100_000)
    args = parser.parse_args()
    tps = 300
    with broker() as kafka, tempfile.TemporaryDirectory() as tmp:
        funnel = new_funnel(kafka)
        transactions = list(traffic(args.transactions / 3600 / tps, tps))
        first_commit = transactions[0].commit_ts
        rows = publish_all(kafka, funnel, iter(transactions), per_kafka_tx=2000, snapshot_ts=first_commit - 1)
        mirror = Path(tmp, "mirror.db")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        forward, forward_cpu, _, _ = timed(funnel_cmd(kafka, "apply", f"sqlite://{mirror}", "--funnel", funnel,
                                                   "--mirror", "m", "--delay", "0s", "--until-caught-up"), env)
        seconds, cpu, rss, output = timed(funnel_cmd(kafka, "seek", "m", "--to", format_time(first_commit), "--funnel",
                                                funnel, "--sink", f"sqlite://{mirror}", "--json"), env)
        undone = json.loads(output)["plan"]["undo"]["transactions"]
    print(json.dumps({"bench": "seek_back", "transactions": undone, "rows": rows, "seconds": round(seconds, 2),
                      "cpu_s": round(cpu, 2), "peak_rss_mb": round(rss, 1), "forward_apply_seconds": round(forward, 2),
                      "forward_apply_cpu_s": round(forward_cpu, 2), "ratio_to_forward": round(forward / seconds, 3),
                      "target_seconds": 30,
                      "issue13_target_seconds": 10, "load_average": [round(x, 2) for x in os.getloadavg()[:2]]}))


if __name__ == "__main__":
    main()

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
import tempfile
from pathlib import Path

from common import broker, new_funnel, publish_all, run_measured  # noqa: I001
from promote_drain import ROOT, funnel_cmd, traffic

from funnel.timeparse import format_time


def measured(command: list[str], env: dict) -> tuple[dict[str, float], str]:
    """``common.run_measured``'s figures (seconds, CPU seconds, peak RSS) and the stdout of a
    command that must succeed.  CPU is steadier than seconds on a shared machine."""
    with tempfile.TemporaryFile() as out:
        figures = run_measured(command, cwd=ROOT, env=env, stdout=out)
        out.seek(0)
        return figures, out.read().decode()


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
        forward, _ = measured(funnel_cmd(kafka, "apply", f"sqlite://{mirror}", "--funnel", funnel, "--mirror", "m",
                                         "--delay", "0s", "--until-caught-up"), env)
        seek, output = measured(funnel_cmd(kafka, "seek", "m", "--to", format_time(first_commit), "--funnel", funnel,
                                           "--sink", f"sqlite://{mirror}", "--json"), env)
        undone = json.loads(output)["plan"]["undo"]["transactions"]
    seconds = seek["seconds"]
    print(json.dumps({"bench": "seek_back", "transactions": undone, "rows": rows, "seconds": round(seconds, 2),
                      "cpu_s": round(seek["cpu_s"], 2), "peak_rss_mb": round(seek["peak_rss_mb"], 1),
                      "forward_apply_seconds": round(forward["seconds"], 2),
                      "forward_apply_cpu_s": round(forward["cpu_s"], 2),
                      "ratio_to_forward": round(forward["seconds"] / seconds, 3),
                      "target_seconds": 30,
                      "issue13_target_seconds": 10, "load_average": [round(x, 2) for x in os.getloadavg()[:2]]}))


if __name__ == "__main__":
    main()

"""What the end-to-end benches share: a real broker, a funnel, synthetic transactions, RSS.

A bench uses ``$FUNNEL_BENCH_BOOTSTRAP`` if set, else starts the project's local
Apache Kafka in a temporary state directory (jars cached as for the tests).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from funnel.kafka import KafkaSettings  # noqa: E402
from funnel.topic import FunnelAdmin, FunnelSpec  # noqa: E402
from producer.publisher import EventPublisher  # noqa: E402
from producer.sources.base import SourceTransaction  # noqa: E402


@contextlib.contextmanager
def broker() -> Iterator[KafkaSettings]:
    explicit = os.environ.get("FUNNEL_BENCH_BOOTSTRAP")
    if explicit:
        yield KafkaSettings(explicit)
        return
    from funnel.broker import LocalBroker

    with tempfile.TemporaryDirectory(prefix="timefunnel-bench-broker-") as state:
        with LocalBroker(state) as local:
            yield KafkaSettings(local.bootstrap)


def new_funnel(kafka: KafkaSettings, retention_s: float = 7 * 86400) -> str:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    FunnelAdmin(kafka).create(FunnelSpec(name, retention_s))
    return name


def publish_all(kafka: KafkaSettings, funnel: str, transactions: Iterator[SourceTransaction],
                per_kafka_tx: int = 500, snapshot: bool = True, snapshot_ts: int | None = None) -> int:
    """Publish an (empty) initial copy marker and then every transaction; returns rows.

    ``snapshot_ts`` dates the initial copy (µs); give one before the first transaction's
    commit time when the traffic is back-dated, so the funnel's time runs forward.
    """
    publisher = EventPublisher(kafka, funnel, "bench", **({"clock": lambda: snapshot_ts} if snapshot_ts else {}))
    publisher.start()
    if snapshot:
        publisher.publish_snapshot(0, iter(()))
    rows = 0
    pending: list[SourceTransaction] = []
    for tx in transactions:
        pending.append(tx)
        if len(pending) >= per_kafka_tx:
            rows += publisher.publish(pending)
            pending = []
    if pending:
        rows += publisher.publish(pending)
    publisher.close()
    return rows


def child_peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def run_measured(command: list[str], **popen: object) -> dict[str, float]:
    """Run ``command`` to its end; its wall seconds, CPU seconds and peak RSS (VmHWM, MB).

    CPU comes from wait4's rusage of exactly this child (user + system, including its
    own waited-for children). Peak RSS is polled from /proc: rusage's ru_maxrss would
    also count the forked copy of this bench process from before exec.
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, **popen)
    peak_kb = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        peak_kb = max(peak_kb, vm_hwm_kb(process.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:5])} … failed with exit code {process.returncode}")
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": peak_kb / 1024}


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set of a live process since exec (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
    except (OSError, ValueError):
        return 0


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()[:2]]

"""What the end-to-end benches share: a real broker, a funnel, synthetic transactions, RSS.

A bench uses ``$FUNNEL_BENCH_BOOTSTRAP`` if set, else starts the project's local
Apache Kafka in a temporary state directory (jars cached as for the tests).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
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

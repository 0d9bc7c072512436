"""Prometheus metrics of a running capture, read from its status record (``Capture.status``) at scrape time.

Counters are the publisher's own tallies since the process started: transactions
(snapshots and source transactions; heartbeats are not transactions), events (Kafka
messages, heartbeats included, so a healthy idle capture still counts up once per
heartbeat interval), rows and encoded bytes.
"""
from __future__ import annotations

from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from funnel.metrics_endpoint import MetricsEndpoint, new_registry, sample, serve_registry

MICROS = 1_000_000


class CaptureCollector(Collector):
    """Reads one Capture whenever Prometheus scrapes."""

    def __init__(self, capture) -> None:
        self.capture = capture

    def collect(self) -> Iterator[Metric]:
        # The numbers it also reports on the control topic come from that one record.
        status, stats = self.capture.status(), self.capture.stats
        labels = [status.funnel, status.source]

        def family(kind, name: str, doc: str, value: float | None):
            return sample(kind, name, doc, ("funnel", "source"), labels, value)

        yield from family(CounterMetricFamily, "timefunnel_published_transactions",
                          "Source transactions and initial copies published into the funnel.",
                          status.published_transactions)
        yield from family(CounterMetricFamily, "timefunnel_published_events",
                          "Kafka messages published into the funnel, heartbeats included.", status.published_events)
        yield from family(CounterMetricFamily, "timefunnel_published_rows", "Row changes published into the funnel.",
                          status.published_rows)
        yield from family(CounterMetricFamily, "timefunnel_published_bytes",
                          "Encoded bytes of the published events (before Kafka compression).",
                          status.published_bytes)
        yield from family(CounterMetricFamily, "timefunnel_snapshot_rows",
                          "Rows read for the initial copy by this process.", stats.snapshot_rows)
        yield from family(GaugeMetricFamily, "timefunnel_capture_lag_seconds",
                          "Source commit to committed in Kafka, for the last published transaction "
                          "(0 after an idle heartbeat).", status.capture_lag_s)
        yield from family(CounterMetricFamily, "timefunnel_capture_restarts",
                          "Recoveries from a failed broker or source connection (a new producer, the tail "
                          "read again), by this process.", status.restarts)
        yield from family(GaugeMetricFamily, "timefunnel_capture_interrupted_seconds",
                          "How long capture has been retrying through an outage (0 while it publishes).",
                          self.capture.interrupted_s())
        yield from family(GaugeMetricFamily, "timefunnel_source_position",
                          "Source position (LSN, changelog sequence) published last.", status.position)
        yield from family(GaugeMetricFamily, "timefunnel_source_last_commit_timestamp_seconds",
                          "Source commit time of the last published transaction (unix seconds).",
                          status.last_commit_ts / MICROS if status.last_commit_ts else None)


def serve(capture, port: int, addr: str = "127.0.0.1") -> MetricsEndpoint:
    """Serve the capture's metrics on http://addr:port/metrics (port 0: any free port).

    Raises ConfigError when the address cannot be bound.
    """
    return serve_registry(new_registry(CaptureCollector(capture)), port, addr)

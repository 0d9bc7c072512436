"""Prometheus metrics of a running applier, read from its real state at scrape time.

What each number is made of (nothing is estimated):

- position, delay, valid-as-of, the held buffer, applied counters and the funnel's
  watermarks are the applier's own fields, read when Prometheus scrapes;
- the funnel's retention comes from the broker (``FunnelAdmin.describe``), re-read
  every ``retention_refresh_s`` so a changed ``retention.ms`` shows within seconds;
- pending work counts what ``funnel status`` counts: every whole non-heartbeat
  transaction at or after the mirror's next offset, with its Kafka messages ("events")
  and rows, from message headers.  The applier itself holds at most ``buffer_rows`` of
  it, so the rest is counted in the funnel: a background thread keeps two header-only
  tallies from the offset the applier started at, one up to the end of the funnel and
  one up to the applier's next offset, and pending is their difference.  Memory stays
  flat however deep the funnel is, and each message is read once by each tally.

Until the tallies have read to the end of the funnel once, the pending series are left
out (absent, not wrong).  ``timefunnel_pending_offsets`` is the raw Kafka lag (high
watermark minus next offset): it also counts heartbeats and transaction markers.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from applier import schedule
from funnel import headers
from funnel.errors import FunnelError, TimeFunnelError
from funnel.events import Kind
from funnel.kafka import KafkaSettings
from funnel.records import oldest_pending, oldest_pending_age_s, retention_headroom_s
from funnel.metrics_endpoint import MetricsEndpoint, new_registry, sample, serve_registry
from funnel.topic import FunnelAdmin

log = logging.getLogger("timefunnel.metrics")
MICROS = 1_000_000
STATES = ("running", "holding", "promoted")  # MirrorPosition.mode
LABELS = ("funnel", "mirror")
# Group commits take milliseconds to seconds (docs/ARCHITECTURE.md: 1 to 20,000 rows per commit).
APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# -- counting the funnel from headers ------------------------------------------------
@dataclass(frozen=True, slots=True)
class Tally:
    """Whole non-heartbeat transactions counted so far; every transaction ending below ``boundary`` is in."""

    transactions: int = 0
    events: int = 0
    rows: int = 0
    boundary: int = 0

    def minus(self, other: "Tally") -> "Tally":
        return Tally(self.transactions - other.transactions, self.events - other.events,
                     self.rows - other.rows, self.boundary)


class TransactionCounter:
    """Assembles transactions from consecutive messages (headers only) and counts the whole ones.

    The same rule as ``FunnelReader.transactions``: a message with another txid starts a
    new transaction (an aborted one is invisible to read_committed), the ``tf-end``
    header closes it, heartbeats are not counted.
    """

    def __init__(self, topic: str, start: int) -> None:
        self.topic = topic
        self.transactions = self.events = self.rows = 0
        self.boundary = start
        self._txid: bytes | None = None
        self._events = self._rows = 0

    @property
    def tally(self) -> Tally:
        return Tally(self.transactions, self.events, self.rows, self.boundary)

    def add(self, offset: int, key: bytes | None, message_headers: list | None) -> None:
        """Raises CodecError for a message without timefunnel headers."""
        meta = headers.decode(message_headers, f"{self.topic}[0] offset {offset}")
        if key != self._txid:
            self._txid, self._events, self._rows = key, 0, 0
        self._events += 1
        self._rows += meta.rows
        if meta.ends_transaction:
            if meta.kind is not Kind.HEARTBEAT:
                self.transactions += 1
                self.events += self._events
                self.rows += self._rows
            self.boundary = offset + 1
            self._txid = None


class FunnelTally:
    """A ``TransactionCounter`` fed by its own read_committed consumer from ``start``."""

    def __init__(self, kafka: KafkaSettings, topic: str, start: int) -> None:
        self.counter = TransactionCounter(topic, start)
        self._stash: list[Message] = []  # fetched beyond the limit of the last advance
        self.partition = TopicPartition(topic, 0)
        self.consumer = Consumer(kafka.client(**{
            "group.id": f"timefunnel-metrics-{uuid.uuid4().hex}", "enable.auto.commit": False,
            "isolation.level": "read_committed", "auto.offset.reset": "earliest",
            "queued.max.messages.kbytes": 4096}))
        try:
            _, self._end_at_start = self.consumer.get_watermark_offsets(self.partition, timeout=10, cached=False)
        except KafkaException as exc:
            self.consumer.close()
            raise FunnelError(f"metrics: cannot read the watermarks of {topic!r}: {exc}") from exc
        self.consumer.assign([TopicPartition(topic, 0, start)])
        # Read everything the funnel held when counting began (a busy funnel never
        # reports end-of-partition, so this compares the position instead).
        self.caught_up = start >= self._end_at_start

    @property
    def tally(self) -> Tally:
        return self.counter.tally

    def advance(self, limit: int | None = None, budget_s: float = 0.5, wait_s: float = 0.1) -> None:
        """Count whole transactions lying below ``limit`` (None: as far as the funnel goes).

        Returns after ``budget_s`` at most.  Raises FunnelError when the consumer fails
        or a message is not a timefunnel event.
        """
        deadline = time.monotonic() + budget_s
        try:
            while time.monotonic() < deadline:
                if limit is not None and self.counter.boundary >= limit:
                    return
                batch, self._stash = self._stash or self.consumer.consume(1000, timeout=wait_s), []
                if not batch:
                    return
                for index, msg in enumerate(batch):
                    if msg.error() is not None:
                        self._check(msg.error())
                        continue
                    if limit is not None and msg.offset() >= limit:
                        self._stash = batch[index:]
                        return
                    self.counter.add(msg.offset(), msg.key(), msg.headers())
        finally:
            if not self.caught_up:
                self.caught_up = self.consumer.position([self.partition])[0].offset >= self._end_at_start

    def _check(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        raise FunnelError(f"metrics: reading {self.counter.topic!r} failed: {error.str()}")

    def close(self) -> None:
        self.consumer.close()


@dataclass(frozen=True, slots=True)
class Pending:
    """Pending work as of ``next_offset``: a consistent pair of tallies, subtracted."""

    next_offset: int
    transactions: int
    events: int
    rows: int


class PendingScanner:
    """Keeps ``pending`` and ``retention_s`` current in a daemon thread (see the module docstring)."""

    def __init__(self, applier, retention_refresh_s: float = 5.0) -> None:
        self.applier = applier
        self.retention_refresh_s = retention_refresh_s
        self.pending: Pending | None = None
        self.retention_s: float | None = None
        self.errors = 0
        self._admin = FunnelAdmin(applier.kafka)
        self._tail: FunnelTally | None = None
        self._done: FunnelTally | None = None
        self._retention_read = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="timefunnel-metrics", daemon=True)

    def start(self) -> "PendingScanner":
        self._refresh_retention()  # fails loudly at start: the funnel must be describable
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan_once()
                if time.monotonic() - self._retention_read >= self.retention_refresh_s:
                    self._refresh_retention()
            except (TimeFunnelError, KafkaException) as exc:
                # Metrics must not stop the mirror; the error is logged and counted
                # (timefunnel_metrics_errors_total) and the scan starts over.
                self.errors += 1
                log.warning("metrics: %s", exc)
                self._rebase(None)
                self._stop.wait(1.0)
            except Exception:
                # A bug: stop counting (the pending series disappear) and say so loudly.
                self.errors += 1
                log.exception("metrics: counting the funnel failed; pending counts are no longer reported")
                self._rebase(None)
                return

    def scan_once(self) -> None:
        target = self.applier.position.next_offset
        if self._done is None or self._done.tally.boundary > target:
            self._rebase(target)  # first scan, or the mirror moved back (seek undid transactions)
        self._done.advance(target)
        self._tail.advance(None)
        done, tail = self._done.tally, self._tail.tally
        if done.boundary == target and tail.boundary >= target and self._tail.caught_up:
            left = tail.minus(done)
            self.pending = Pending(target, left.transactions, left.events, left.rows)

    def _rebase(self, start: int | None) -> None:
        for tally in (self._tail, self._done):
            if tally is not None:
                tally.close()
        self._tail = self._done = None
        self.pending = None
        if start is not None:
            topic = self.applier.topic
            self._tail = FunnelTally(self.applier.kafka, topic, start)
            self._done = FunnelTally(self.applier.kafka, topic, start)

    def _refresh_retention(self) -> None:
        self.retention_s = self._admin.describe(self.applier.options.funnel).retention_s
        self._retention_read = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._rebase(None)


# -- the collector --------------------------------------------------------------------
class ApplierCollector(Collector):
    """Reads one Applier (and its PendingScanner) whenever Prometheus scrapes."""

    def __init__(self, applier, scanner: PendingScanner) -> None:
        self.applier = applier
        self.scanner = scanner

    def collect(self) -> Iterator[Metric]:
        a = self.applier
        now = a.clock()
        labels = [a.options.funnel, a.options.mirror]
        position = a.position
        held = list(a.held)  # one C-level copy: the apply thread may change the deque meanwhile
        oldest = oldest_pending(held)
        retention_s = self.scanner.retention_s

        def gauge(name: str, doc: str, value: float | None) -> Iterable[Metric]:
            return sample(GaugeMetricFamily, name, doc, LABELS, labels, value)

        def counter(name: str, doc: str, value: float) -> Metric:
            return sample(CounterMetricFamily, name, doc, LABELS, labels, value)[0]

        yield from gauge("timefunnel_mirror_delay_seconds", "Configured delay of the mirror.", a.delay_us / MICROS)
        yield from gauge("timefunnel_mirror_valid_as_of_timestamp_seconds",
                         "The mirror shows production as of this time (unix seconds).",
                         position.valid_as_of / MICROS if position.valid_as_of else None)
        yield from self._pending(labels)
        yield from gauge("timefunnel_pending_offsets",
                         "Funnel high watermark minus the mirror's next offset: Kafka lag, including "
                         "heartbeats and transaction markers.", max(0, a.high_watermark - position.next_offset))
        yield from gauge("timefunnel_buffered_rows", "Rows held in the applier's memory, waiting to be due.",
                         a.held_rows)
        yield from gauge("timefunnel_oldest_pending_age_seconds",
                         "Age of the oldest pending (not yet applied) transaction; 0 when none.",
                         oldest_pending_age_s(oldest, now))
        yield from gauge("timefunnel_behind_schedule_seconds",
                         "How late the oldest pending transaction is against commit time + delay.",
                         schedule.seconds_behind(oldest, a.delay_us, now))
        yield from gauge("timefunnel_funnel_retention_seconds", "Retention of the funnel topic.", retention_s)
        yield from gauge("timefunnel_retention_headroom_seconds",
                         "Time until the oldest pending transaction expires from the funnel "
                         "(its commit time + retention - now); +Inf for unlimited retention.",
                         None if retention_s is None else retention_headroom_s(oldest, retention_s, now))
        state = GaugeMetricFamily("timefunnel_mirror_state", "1 for the mirror's current state, else 0.",
                                  labels=["funnel", "mirror", "state"])
        current = position.mode
        for name in STATES:
            state.add_metric(labels + [name], 1.0 if name == current else 0.0)
        yield state
        yield counter("timefunnel_applied_transactions", "Transactions applied to the mirror (heartbeats not "
                      "counted) since the applier started.", a.stats.applied_transactions)
        yield counter("timefunnel_applied_rows", "Row changes applied to the mirror since the applier started.",
                      a.stats.applied_rows)
        yield counter("timefunnel_apply_commits", "Database transactions (group commits) on the mirror since "
                      "the applier started.", a.stats.commits)
        yield counter("timefunnel_metrics_errors", "Failed attempts of the metrics thread to read the funnel.",
                      self.scanner.errors)

    def _pending(self, labels: list[str]) -> Iterator[Metric]:
        pending = self.scanner.pending
        if pending is None:
            return
        for name, doc, value in (
                ("timefunnel_pending_transactions", "Whole transactions (heartbeats not counted) in the funnel at "
                 "or after the mirror's next offset.", pending.transactions),
                ("timefunnel_pending_events", "Kafka messages of the pending transactions.", pending.events),
                ("timefunnel_pending_rows", "Row changes in the pending transactions.", pending.rows)):
            yield from sample(GaugeMetricFamily, name, doc, LABELS, labels, value)


# -- apply durations and the endpoint ------------------------------------------------
def registry_for(applier, scanner: PendingScanner) -> CollectorRegistry:
    """The applier's collector plus the apply-duration histogram, fed by ``apply_observers``."""
    registry = new_registry(ApplierCollector(applier, scanner))
    histogram = Histogram("timefunnel_apply_duration_seconds", "Duration of one group commit onto the mirror.",
                          ["funnel", "mirror"], registry=registry, buckets=APPLY_BUCKETS)
    observe = histogram.labels(applier.options.funnel, applier.options.mirror).observe
    applier.apply_observers.append(lambda seconds, *_: observe(seconds))
    return registry


def serve(applier, port: int, addr: str = "127.0.0.1", retention_refresh_s: float = 5.0) -> MetricsEndpoint:
    """Expose ``applier`` (already started) on /metrics. Raises ConfigError, FunnelError."""
    scanner = PendingScanner(applier, retention_refresh_s).start()
    try:
        return serve_registry(registry_for(applier, scanner), port, addr, on_close=scanner.close)
    except BaseException:
        scanner.close()
        raise

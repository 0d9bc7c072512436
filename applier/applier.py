"""The delayed applier: reads the funnel, holds each transaction until it is due, applies it whole.

Loop, in one thread (threads do not help under the GIL, see DESIGN.md):

1. ``consume`` a batch of messages from the funnel and the control topic;
2. control records change the delay at once;
3. funnel messages are grouped into whole transactions by their headers and kept as
   raw bytes (memory stays small; decoding happens only when a transaction is due);
   when the buffer is full the partition is paused, so memory stays bounded however
   deep the funnel is;
4. every transaction whose ``commit_ts + delay <= now`` (snapshot rows at once) is
   decoded and applied, several per database transaction (group commit), together
   with the new position in the mirror's state table.

Exactly once onto the mirror: the position lives in the mirror, in the same database
transaction as the rows, and the consumer starts from it.  Consumer-group offsets are
committed too, but only for lag tools (kafka-consumer-groups, Burrow).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from applier import schedule
from applier.sinks.base import Sink
from applier.transaction import MirrorPosition, Transaction
from funnel import headers
from funnel.codec import EventCodec
from funnel.control import ControlChannel, decode_record, delay_key, status_key
from funnel.errors import CodecError, ConfigError, EventsExpiredError, FunnelError
from funnel.events import Kind
from funnel.kafka import KafkaSettings, control_topic, data_topic, kafka_error

log = logging.getLogger("timefunnel.applier")
MICROS = 1_000_000


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class ApplierOptions:
    """How one mirror follows one funnel. ``delay_s=None`` takes the delay from the control topic."""

    funnel: str
    mirror: str
    delay_s: float | None = None
    buffer_rows: int = 100_000  # pause the funnel partition beyond this many held rows
    max_commit_rows: int = 20_000  # rows per database transaction in group commit
    status_interval_s: float = 1.0

    def validate(self) -> None:
        if not self.mirror or "/" in self.mirror:
            raise ConfigError(f"invalid mirror id {self.mirror!r}: use letters, digits, '.', '_' and '-'")
        if self.delay_s is not None and self.delay_s < 0:
            raise ConfigError("the delay cannot be negative")
        if self.buffer_rows < 1 or self.max_commit_rows < 1:
            raise ConfigError("buffer and commit sizes must be positive")


@dataclass(slots=True)
class HeldTransaction:
    """A whole transaction read from the funnel, still encoded."""

    txid: str
    commit_ts: int
    kind: Kind
    first_offset: int
    last_offset: int
    rows: int = 0
    payloads: list[bytes] = field(default_factory=list)


@dataclass
class ApplierStats:
    """What the applier knows about itself; published as status and as metrics."""

    applied_transactions: int = 0
    applied_rows: int = 0
    apply_seconds: float = 0.0
    commits: int = 0


class Assembler:
    """Groups consecutive messages of one transaction; yields it when its last chunk arrives."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.open: HeldTransaction | None = None

    def add(self, msg: Message) -> HeldTransaction | None:
        where = f"{self.topic}[{msg.partition()}] offset {msg.offset()}"
        meta = headers.decode(msg.headers(), where)
        txid = (msg.key() or b"").decode()
        if self.open is not None and self.open.txid != txid:
            # A producer never interleaves transactions; a cut one was aborted and is
            # invisible to read_committed. Anything else is a corrupt funnel.
            raise FunnelError(f"{where}: transaction {txid!r} starts before {self.open.txid!r} ended",
                              hint="the funnel has a writer that is not a timefunnel producer")
        if self.open is None:
            self.open = HeldTransaction(txid, meta.commit_ts, meta.kind, msg.offset(), msg.offset())
        held = self.open
        held.last_offset = msg.offset()
        held.rows += meta.rows
        held.payloads.append(msg.value())
        if meta.ends_transaction:
            self.open = None
            return held
        return None


class Applier:
    """One mirror following one funnel with a delay."""

    def __init__(self, kafka: KafkaSettings, sink: Sink, options: ApplierOptions,
                 clock: Callable[[], int] = now_us, codec: EventCodec | None = None) -> None:
        options.validate()
        self.kafka = kafka
        self.sink = sink
        self.options = options
        self.clock = clock
        self.codec = codec or EventCodec()
        self.topic = data_topic(options.funnel)
        self.partition = TopicPartition(self.topic, 0)
        self.control = ControlChannel(kafka, options.funnel)
        self.stats = ApplierStats()
        self.held: deque[HeldTransaction] = deque()
        self.held_rows = 0
        self.assembler = Assembler(self.topic)
        self.delay_us = 0
        self.position: MirrorPosition | None = None
        self.paused = False
        self.low_watermark = 0
        self.high_watermark = 0
        self._consumer: Consumer | None = None
        self._last_status = 0.0
        self._last_watermarks = 0.0

    # -- start ------------------------------------------------------------------
    def start(self) -> None:
        """Read the position and the delay, check nothing expired, and start consuming.

        Raises EventsExpiredError when the funnel no longer holds the next event to
        apply, FunnelError for an unknown funnel, ConfigError when no delay is known.
        """
        stored = self.sink.read_position(self.options.funnel, self.options.mirror)
        self.position = stored or MirrorPosition(self.options.funnel, self.options.mirror, self.topic, 0, 0)
        control_records = self.control.read_all()
        self._set_initial_delay(control_records)
        consumer = Consumer(self.kafka.client(**{
            "group.id": f"timefunnel.{self.options.funnel}.{self.options.mirror}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "isolation.level": "read_committed", "auto.offset.reset": "error",
            # librdkafka prefetches up to 64 MiB per partition by default; the applier's
            # own buffer does the holding, so keep the prefetch small.
            "queued.max.messages.kbytes": 16384, "fetch.max.bytes": 8 * 1024 * 1024,
        }))
        self._consumer = consumer
        self._refresh_watermarks(force=True)
        self._check_not_expired(self.position.next_offset)
        _, control_high = consumer.get_watermark_offsets(TopicPartition(control_topic(self.options.funnel), 0),
                                                         timeout=15, cached=False)
        consumer.assign([TopicPartition(self.topic, 0, self.position.next_offset),
                         TopicPartition(control_topic(self.options.funnel), 0, control_high)])
        log.info("mirror %s follows %s from offset %d with delay %.3fs", self.options.mirror, self.topic,
                 self.position.next_offset, self.delay_us / MICROS)

    def _set_initial_delay(self, records: dict) -> None:
        if self.options.delay_s is not None:
            self.delay_us = int(self.options.delay_s * MICROS)
            # An explicit --delay wins at start (it is the deployment's configuration);
            # publish it so `funnel status` and retention checks know it.
            self.control.write(delay_key(self.options.mirror),
                               {"delay_s": self.options.delay_s, "set_at": self.clock()})
            return
        known = records.get(delay_key(self.options.mirror))
        if known is None:
            raise ConfigError(f"no delay known for mirror {self.options.mirror!r}",
                              hint="pass --delay, e.g. --delay 4h")
        self.delay_us = int(float(known["delay_s"]) * MICROS)

    def _check_not_expired(self, next_offset: int) -> None:
        if next_offset < self.low_watermark:
            raise EventsExpiredError(
                f"events {self.topic}[0] offsets {next_offset}..{self.low_watermark - 1} expired from the funnel "
                f"before mirror {self.options.mirror!r} applied them; the mirror can no longer be kept exact",
                hint="re-initialise the mirror (new mirror database, or a new funnel with a fresh initial copy) "
                     "and give the funnel a longer retention")

    def _refresh_watermarks(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_watermarks < 1.0:
            return
        try:
            self.low_watermark, self.high_watermark = self._consumer.get_watermark_offsets(
                self.partition, timeout=10, cached=False)
        except KafkaException as exc:
            if force:
                raise kafka_error(exc, f"cannot read funnel {self.options.funnel!r}") from exc
            log.warning("cannot read watermarks of %s: %s", self.topic, exc)
            return
        self._last_watermarks = time.monotonic()

    # -- the loop -----------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, until: Callable[["Applier"], bool] | None = None) -> None:
        """Apply until ``stop`` is set or ``until(self)`` is true. Raises on any expected failure."""
        stop = stop or threading.Event()
        if self._consumer is None:
            self.start()
        try:
            while not stop.is_set():
                self.step()
                if until is not None and until(self):
                    break
        finally:
            self.close()

    def step(self, poll_timeout_s: float = 0.05) -> int:
        """One round: consume, hold, apply what is due. Returns rows applied."""
        for msg in self._consumer.consume(2000, timeout=self._poll_timeout(poll_timeout_s)):
            self._receive(msg)
        self._flow_control()
        applied = self._apply_due()
        self._refresh_watermarks()
        self._publish_status()
        return applied

    def _poll_timeout(self, default: float) -> float:
        """Sleep in consume no longer than until the next held transaction is due."""
        if not self.held:
            return default
        wait_us = schedule.due_at(self.held[0].commit_ts, self.delay_us) - self.clock()
        return max(0.0, min(default, wait_us / MICROS))

    def _receive(self, msg: Message) -> None:
        if msg.error():
            self._raise_consumer_error(msg.error())
        if msg.topic() != self.topic:
            self._control_record(msg)
            return
        held = self.assembler.add(msg)
        if held is not None:
            self.held.append(held)
            self.held_rows += held.rows

    def _raise_consumer_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
            self._refresh_watermarks(force=True)
            self._check_not_expired(self.position.next_offset)
            raise EventsExpiredError(f"funnel {self.topic!r}: events before offset {self.low_watermark} expired "
                                     f"while mirror {self.options.mirror!r} still needed them ({error.str()})",
                                     hint="re-initialise the mirror and give the funnel a longer retention")
        if error.fatal():
            raise FunnelError(f"Kafka consumer failed: {error.str()}")
        log.warning("Kafka consumer: %s", error.str())  # transient: librdkafka retries by itself

    def _control_record(self, msg: Message) -> None:
        key, value = decode_record(msg.key(), msg.value())
        if key == delay_key(self.options.mirror) and value is not None:
            self.delay_us = int(float(value["delay_s"]) * MICROS)
            log.info("mirror %s: delay is now %.3fs", self.options.mirror, self.delay_us / MICROS)

    def _flow_control(self) -> None:
        limit = self.options.buffer_rows
        if not self.paused and self.held_rows >= limit:
            self._consumer.pause([self.partition])
            self.paused = True
        elif self.paused and self.held_rows < limit // 2:
            self._consumer.resume([self.partition])
            self.paused = False

    # -- applying -----------------------------------------------------------------
    def due_transactions(self, now: int) -> list[HeldTransaction]:
        """The held transactions that may be applied now, oldest first, up to one commit's worth."""
        due: list[HeldTransaction] = []
        rows = 0
        for held in self.held:
            if held.kind not in (Kind.SNAPSHOT, Kind.SNAPSHOT_END) and not schedule.is_due(
                    held.commit_ts, self.delay_us, now):
                break
            if due and rows + held.rows > self.options.max_commit_rows:
                break
            due.append(held)
            rows += held.rows
        return due

    def _apply_due(self) -> int:
        due = self.due_transactions(self.clock())
        if not due:
            return 0
        started = time.perf_counter()
        transactions = [self._decode(held) for held in due]
        position = self._position_after(transactions)
        rows = self.sink.apply(transactions, position)
        self.position = position
        for held in due:
            self.held.popleft()
            self.held_rows -= held.rows
        self.stats.applied_transactions += sum(1 for t in transactions if t.kind is not Kind.HEARTBEAT)
        self.stats.applied_rows += rows
        self.stats.apply_seconds += time.perf_counter() - started
        self.stats.commits += 1
        self._consumer.commit(offsets=[TopicPartition(self.topic, 0, position.next_offset)], asynchronous=True)
        return rows

    def _decode(self, held: HeldTransaction) -> Transaction:
        batches = []
        for index, payload in enumerate(held.payloads):
            try:
                batches.append(self.codec.decode(payload))
            except CodecError as exc:
                raise CodecError(f"{self.topic}[0] transaction {held.txid!r} from offset {held.first_offset} "
                                 f"(chunk {index}): {exc}", hint=exc.hint) from exc
        return Transaction(held.txid, held.commit_ts, held.kind, held.first_offset, held.last_offset, batches)

    def _position_after(self, transactions: list[Transaction]) -> MirrorPosition:
        last = transactions[-1]
        previous = self.position
        snapshot_done = previous.snapshot_done or any(t.kind is Kind.SNAPSHOT_END for t in transactions)
        changes = [t for t in transactions if t.kind in (Kind.CHANGES, Kind.HEARTBEAT, Kind.SNAPSHOT_END)]
        valid_as_of = max([previous.valid_as_of or 0] + [t.commit_ts for t in changes]) or None
        return MirrorPosition(previous.funnel, previous.mirror, self.topic, 0, last.last_offset + 1,
                              last.txid, last.commit_ts, valid_as_of, snapshot_done)

    # -- status -------------------------------------------------------------------
    def status(self) -> dict:
        """The applier's view of itself, as published on the control topic."""
        now = self.clock()
        oldest = next((h.commit_ts for h in self.held if h.kind is Kind.CHANGES), None)
        pending = [h for h in self.held if h.kind is not Kind.HEARTBEAT]
        return {
            "mirror": self.options.mirror, "funnel": self.options.funnel, "state": "running",
            "delay_s": self.delay_us / MICROS, "next_offset": self.position.next_offset,
            "last_txid": self.position.last_txid, "last_commit_ts": self.position.last_commit_ts,
            "valid_as_of": self.position.valid_as_of, "snapshot_done": self.position.snapshot_done,
            "held_transactions": len(pending), "held_rows": sum(h.rows for h in pending),
            "oldest_held_ts": oldest,
            "behind_s": schedule.seconds_behind(oldest, self.delay_us, now),
            "applied_transactions": self.stats.applied_transactions, "applied_rows": self.stats.applied_rows,
            "low_watermark": self.low_watermark, "high_watermark": self.high_watermark,
            "updated_at": now,
        }

    def _publish_status(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_status < self.options.status_interval_s:
            return
        self._last_status = time.monotonic()
        try:
            self.control.write(status_key(self.options.mirror), self.status(), flush=False)
        except (FunnelError, BufferError) as exc:  # status is advisory; the mirror's state table is the truth
            log.warning("cannot publish status: %s", exc)

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._publish_status(force=True)
                self.control.close()
            except Exception as exc:  # closing must not hide the error that stopped us
                log.warning("closing control channel: %s", exc)
            self._consumer.close()
            self._consumer = None
        self.sink.close()

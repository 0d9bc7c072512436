"""Reading a range of the funnel without joining any consumer group that matters.

Used by `funnel status` (count what is pending) and `funnel inspect` (list what the
funnel holds). Transactions are assembled from the message headers alone, so
scanning does not pay for Avro decoding unless row images are asked for.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

from confluent_kafka import Consumer, Message, TopicPartition

from funnel import headers
from funnel.errors import FunnelError
from funnel.events import Kind
from funnel.kafka import KafkaSettings, data_topic, retry_transient

TIMEOUT_S = 30.0


@dataclass(slots=True)
class TransactionSummary:
    """One source transaction as the funnel holds it, from headers only."""

    txid: str
    commit_ts: int
    kind: Kind
    first_offset: int
    last_offset: int
    rows: int = 0
    events: int = 0
    payloads: list[bytes] = field(default_factory=list)  # only when asked for


class Assembler:
    """Groups consecutive messages of one transaction, from their headers; returns it whole.

    A producer never interleaves transactions, and a cut one was aborted (invisible to
    read_committed): a transaction that starts before the open one ended means the funnel
    has a foreign writer. A scan that starts inside a transaction assembles its tail.
    """

    def __init__(self, topic: str, keep_payloads: bool = False) -> None:
        self.topic = topic
        self.keep_payloads = keep_payloads
        self.open: TransactionSummary | None = None

    def add(self, msg: Message) -> TransactionSummary | None:
        """Raises CodecError for a message without timefunnel headers, FunnelError for interleaving."""
        offset = msg.offset()

        def where() -> str:  # only for an error: every message read passes here
            return f"{self.topic}[{msg.partition()}] offset {offset}"

        meta = headers.decode(msg.headers(), where)
        txid = (msg.key() or b"").decode()
        if self.open is not None and self.open.txid != txid:
            raise FunnelError(f"{where()}: transaction {txid!r} starts before {self.open.txid!r} ended",
                              hint="the funnel has a writer that is not a timefunnel producer")
        if self.open is None:
            self.open = TransactionSummary(txid, meta.commit_ts, meta.kind, offset, offset)
        summary = self.open
        summary.last_offset = offset
        summary.rows += meta.rows
        summary.events += 1
        if self.keep_payloads:
            summary.payloads.append(msg.value())
        if not meta.ends_transaction:
            return None
        self.open = None
        return summary


class FunnelReader:
    """Scans offsets [start, end) of a funnel's data partition with read_committed."""

    def __init__(self, kafka: KafkaSettings, funnel: str) -> None:
        self.kafka = kafka
        self.topic = data_topic(funnel)
        self.partition = TopicPartition(self.topic, 0)
        self.consumer = self._new_consumer()

    def _new_consumer(self) -> Consumer:
        return Consumer(self.kafka.client(**{
            "group.id": f"timefunnel-reader-{uuid.uuid4().hex}", "enable.auto.commit": False,
            "isolation.level": "read_committed", "auto.offset.reset": "earliest",
            # librdkafka prefetches up to 64 MiB by default: a scan of a deep funnel (a
            # promote's plan) would hold that much in memory; a scan reads in order anyway.
            "queued.max.messages.kbytes": 16384, "queued.min.messages": 50000}))

    def watermarks(self) -> tuple[int, int]:
        return retry_transient(lambda: self.consumer.get_watermark_offsets(self.partition, timeout=TIMEOUT_S,
                                                                           cached=False),
                               f"cannot read funnel {self.topic!r}")

    def offset_for_time(self, ts_us: int) -> int:
        """The first offset whose commit time is at or after ``ts_us`` (the high watermark if none)."""
        found = self.consumer.offsets_for_times([TopicPartition(self.topic, 0, ts_us // 1000)], timeout=TIMEOUT_S)
        offset = found[0].offset
        return offset if offset >= 0 else self.watermarks()[1]

    def transactions(self, start: int, end: int, keep_payloads: bool = False) -> Iterator[TransactionSummary]:
        """Whole transactions whose messages lie in [start, end), in order."""
        if end <= start:
            return
        # librdkafka keeps reporting the previous scan's position after a new assign, so
        # every scan gets a consumer of its own: the end test below relies on position().
        self.consumer.close()
        self.consumer = self._new_consumer()
        self.consumer.assign([TopicPartition(self.topic, 0, start)])
        assembler = Assembler(self.topic, keep_payloads)
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            batch = self.consumer.consume(2000, timeout=0.2)
            for msg in batch:
                if msg.error() or msg.offset() >= end:
                    continue
                summary = assembler.add(msg)
                if summary is not None:
                    yield summary
            if batch:
                deadline = time.monotonic() + TIMEOUT_S
            if self.consumer.position([self.partition])[0].offset >= end:
                return
            if time.monotonic() > deadline:
                raise FunnelError(f"reading {self.topic!r} offsets {start}..{end} stalled for {TIMEOUT_S:g}s")

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> "FunnelReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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

from confluent_kafka import Consumer, KafkaException, TopicPartition

from funnel import headers
from funnel.errors import FunnelError
from funnel.events import Kind
from funnel.kafka import KafkaSettings, data_topic, kafka_error

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
            "isolation.level": "read_committed", "auto.offset.reset": "earliest"}))

    def watermarks(self) -> tuple[int, int]:
        try:
            return self.consumer.get_watermark_offsets(self.partition, timeout=TIMEOUT_S, cached=False)
        except KafkaException as exc:
            raise kafka_error(exc, f"cannot read funnel {self.topic!r}") from exc

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
        open_tx: TransactionSummary | None = None
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            batch = self.consumer.consume(2000, timeout=0.2)
            for msg in batch:
                if msg.error() or msg.offset() >= end:
                    continue
                where = f"{self.topic}[0] offset {msg.offset()}"
                meta = headers.decode(msg.headers(), where)
                txid = (msg.key() or b"").decode()
                if open_tx is None or open_tx.txid != txid:
                    open_tx = TransactionSummary(txid, meta.commit_ts, meta.kind, msg.offset(), msg.offset())
                open_tx.last_offset = msg.offset()
                open_tx.rows += meta.rows
                open_tx.events += 1
                if keep_payloads:
                    open_tx.payloads.append(msg.value())
                if meta.ends_transaction:
                    yield open_tx
                    open_tx = None
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

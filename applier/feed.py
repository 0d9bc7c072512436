"""What the applier reads: the funnel's data partition and its control topic, behind one small interface.

The applier's loop needs only Kafka's own verbs (assign, poll, watermarks, pause,
resume, commit) on two partitions, plus a whole-transaction reader for planning and
undo and the control channel for status and delays.  ``KafkaFeed`` is the real one;
``applier.memory_feed`` keeps the same promises in memory so the loop can be unit-tested
without a broker.

Consumer errors are classified here, once: end of partition and transient errors are
not returned; a lost offset (expired events) raises ``OffsetLost`` for the applier to
explain; a fatal error raises FunnelError.
"""
from __future__ import annotations

import logging
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from funnel.control import ControlChannel
from funnel.errors import FunnelError
from funnel.kafka import KafkaSettings, control_topic, data_topic, retry_transient
from funnel.reader import FunnelReader

log = logging.getLogger("timefunnel.applier")


class OffsetLost(FunnelError):
    """The feed's position is no longer in the funnel (its events expired while we read)."""


class FeedMessage(Protocol):
    """The parts of a Kafka message the applier reads."""

    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...


class Feed(Protocol):
    """The funnel's partition 0 (``topic``) and the control topic, read together."""

    topic: str

    def assign(self, funnel_offset: int, control_offset: int) -> None:
        """Read the funnel from ``funnel_offset`` and the control topic from ``control_offset`` (both unpaused)."""

    def poll(self, max_messages: int, timeout_s: float) -> list[FeedMessage]:
        """Up to ``max_messages`` messages of both partitions. Raises OffsetLost, FunnelError."""

    def watermarks(self, cached: bool = False) -> tuple[int, int]:
        """(low, high) of the funnel partition; ``cached`` may answer from the last fetch. Raises FunnelError."""

    def control_end(self) -> int:
        """The control topic's high watermark. Raises FunnelError."""

    def position(self) -> int:
        """The next funnel offset ``poll`` returns (-1 or less when unknown yet)."""

    def control_position(self) -> int:
        """The next control offset ``poll`` returns (-1 or less when unknown yet)."""

    def pause(self) -> None: ...
    def resume(self) -> None: ...

    def commit(self, next_offset: int) -> None:
        """Record the mirror's next offset for lag tools (asynchronously; the mirror holds the truth)."""

    def reopen(self) -> None:
        """Forget everything fetched (after the position moved back); ``assign`` follows."""

    def close(self) -> None: ...

    def reader(self) -> FunnelReader:
        """A whole-transaction reader of the same funnel (a context manager)."""

    def control(self) -> ControlChannel:
        """The funnel's control channel, for status and delay records."""


class KafkaFeed:
    """A ``Feed`` on one read_committed consumer, grouped as ``timefunnel.<funnel>.<mirror>`` for lag tools."""

    def __init__(self, kafka: KafkaSettings, funnel: str, mirror: str) -> None:
        self.kafka = kafka
        self.funnel = funnel
        self.group = f"timefunnel.{funnel}.{mirror}"
        self.topic = data_topic(funnel)
        self.partition = TopicPartition(self.topic, 0)
        self.control_partition = TopicPartition(control_topic(funnel), 0)
        self._opened: Consumer | None = None

    @property
    def _consumer(self) -> Consumer:
        # Created on first use: constructing an applier connects to nothing.
        if self._opened is None:
            self._opened = self._new_consumer()
        return self._opened

    def _new_consumer(self) -> Consumer:
        return Consumer(self.kafka.client(**{
            "group.id": self.group,
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "isolation.level": "read_committed", "auto.offset.reset": "error",
            # librdkafka prefetches up to 64 MiB per partition by default; the applier's
            # own buffer does the holding, so keep the prefetch small.
            "queued.max.messages.kbytes": 16384, "queued.min.messages": 50000, "fetch.max.bytes": 8 * 1024 * 1024,
        }))

    def assign(self, funnel_offset: int, control_offset: int) -> None:
        self._consumer.assign([TopicPartition(self.topic, 0, funnel_offset),
                               TopicPartition(self.control_partition.topic, 0, control_offset)])

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        received = []
        for msg in self._consumer.consume(max_messages, timeout=timeout_s):
            if msg.error():
                self._check(msg.error())
                continue
            received.append(msg)
        return received

    @staticmethod
    def _check(error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
            raise OffsetLost(error.str())
        if error.fatal():
            raise FunnelError(f"Kafka consumer failed: {error.str()}")
        log.warning("Kafka consumer: %s", error.str())  # transient: librdkafka retries by itself

    def watermarks(self, cached: bool = False) -> tuple[int, int]:
        def read(cached: bool) -> tuple[int, int]:
            return retry_transient(lambda: self._consumer.get_watermark_offsets(self.partition, timeout=10,
                                                                               cached=cached),
                                   f"cannot read funnel {self.funnel!r}")
        low, high = read(cached)
        if low < 0 or high < 0:  # nothing cached yet
            low, high = read(False)
        return low, high

    def control_end(self) -> int:
        return self._consumer.get_watermark_offsets(self.control_partition, timeout=15, cached=False)[1]

    def position(self) -> int:
        return self._consumer.position([self.partition])[0].offset

    def control_position(self) -> int:
        return self._consumer.position([self.control_partition])[0].offset

    def pause(self) -> None:
        self._consumer.pause([self.partition])

    def resume(self) -> None:
        self._consumer.resume([self.partition])

    def commit(self, next_offset: int) -> None:
        self._consumer.commit(offsets=[TopicPartition(self.topic, 0, next_offset)], asynchronous=True)

    def reopen(self) -> None:
        # librdkafka would keep reporting the old position after a re-assign: a new consumer.
        self.close()

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def reader(self) -> FunnelReader:
        return FunnelReader(self.kafka, self.funnel)

    def control(self) -> ControlChannel:
        return ControlChannel(self.kafka, self.funnel)

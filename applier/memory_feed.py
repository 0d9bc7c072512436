"""A funnel and its control topic in memory: the ``Feed`` the applier's unit tests run on.

It keeps the promises of ``applier.feed.KafkaFeed`` that the loop relies on: offsets
grow by one per message, the low watermark rises when events expire (``expire``),
a poll past the low watermark raises ``OffsetLost``, a paused funnel partition returns
nothing while the control topic still does, and the control channel's records are
messages of the control topic that the feed returns too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from funnel import headers
from funnel.codec import EventCodec
from funnel.events import ChangeBatch
from funnel.kafka import control_topic, data_topic
from funnel.reader import Assembler, TransactionSummary
from applier.feed import OffsetLost


@dataclass(frozen=True)
class MemoryMessage:
    """A Kafka message as the applier reads it (the accessor methods of confluent_kafka.Message)."""

    _topic: str
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _headers: list[tuple[str, bytes]] | None = None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers


class MemoryFunnel:
    """The two partitions; ``feed()``, ``reader()`` and ``control()`` read and write them."""

    def __init__(self, funnel: str, codec: EventCodec | None = None) -> None:
        self.funnel = funnel
        self.topic = data_topic(funnel)
        self.control_topic = control_topic(funnel)
        self.codec = codec or EventCodec()
        self.messages: list[MemoryMessage] = []  # every offset ever written; expired ones stay below ``low``
        self.control_log: list[MemoryMessage] = []
        self.low = 0
        self.committed: int | None = None  # the last offset the applier committed for lag tools

    # -- writing ---------------------------------------------------------------
    def publish(self, *batches: ChangeBatch) -> int:
        """Append one message per batch (headers as the publisher writes them); returns the last offset."""
        for batch in batches:
            meta = headers.encode(batch.commit_ts, batch.kind, batch.row_count, batch.ends_transaction)
            self.messages.append(MemoryMessage(self.topic, len(self.messages), batch.txid.encode(),
                                               self.codec.encode(batch), meta))
        return len(self.messages) - 1

    def write_control(self, key: str, value: dict[str, Any] | None) -> None:
        payload = None if value is None else json.dumps(value).encode()
        self.control_log.append(MemoryMessage(self.control_topic, len(self.control_log), key.encode(), payload))

    def expire(self, before: int) -> None:
        """Retention deleted every offset below ``before``."""
        self.low = max(self.low, before)

    @property
    def high(self) -> int:
        return len(self.messages)

    # -- the three views ---------------------------------------------------------
    def feed(self) -> "MemoryFeed":
        return MemoryFeed(self)

    def reader(self) -> "MemoryReader":
        return MemoryReader(self)

    def control(self) -> "MemoryControl":
        return MemoryControl(self)


class MemoryFeed:
    """``applier.feed.Feed`` over a ``MemoryFunnel``."""

    def __init__(self, funnel: MemoryFunnel) -> None:
        self.funnel = funnel
        self.topic = funnel.topic
        self._next = -1001  # librdkafka's "invalid offset" until assigned
        self._control_next = -1001
        self.paused = False

    def assign(self, funnel_offset: int, control_offset: int) -> None:
        self._next, self._control_next, self.paused = funnel_offset, control_offset, False

    def poll(self, max_messages: int, timeout_s: float) -> list[MemoryMessage]:
        out = self.funnel.control_log[self._control_next:][:max_messages] if self._control_next >= 0 else []
        self._control_next += len(out)
        if self.paused or self._next < 0 or len(out) >= max_messages:
            return out
        if self._next < self.funnel.low:
            raise OffsetLost(f"offset {self._next} is below the low watermark {self.funnel.low}")
        data = self.funnel.messages[self._next:][:max_messages - len(out)]
        self._next += len(data)
        return out + data

    def watermarks(self, cached: bool = False) -> tuple[int, int]:
        return self.funnel.low, self.funnel.high

    def control_end(self) -> int:
        return len(self.funnel.control_log)

    def position(self) -> int:
        return self._next

    def control_position(self) -> int:
        return self._control_next

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def commit(self, next_offset: int) -> None:
        self.funnel.committed = next_offset

    def reopen(self) -> None:
        self._next = self._control_next = -1001

    def close(self) -> None:
        self.reopen()

    def reader(self) -> "MemoryReader":
        return self.funnel.reader()

    def control(self) -> "MemoryControl":
        return self.funnel.control()


class MemoryReader:
    """``funnel.reader.FunnelReader`` over a ``MemoryFunnel``."""

    def __init__(self, funnel: MemoryFunnel) -> None:
        self.funnel = funnel
        self.topic = funnel.topic

    def watermarks(self) -> tuple[int, int]:
        return self.funnel.low, self.funnel.high

    def offset_for_time(self, ts_us: int) -> int:
        found = (m.offset() for m in self.funnel.messages[self.funnel.low:]
                 if headers.decode(m.headers(), "memory").commit_ts >= ts_us)
        return next(found, self.funnel.high)

    def transactions(self, start: int, end: int, keep_payloads: bool = False) -> Iterator[TransactionSummary]:
        assembler = Assembler(self.topic, keep_payloads)
        for msg in self.funnel.messages[max(start, self.funnel.low):end]:
            summary = assembler.add(msg)
            if summary is not None:
                yield summary

    def close(self) -> None:
        pass

    def __enter__(self) -> "MemoryReader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class MemoryControl:
    """``funnel.control.ControlChannel`` over a ``MemoryFunnel``: writes are control messages."""

    def __init__(self, funnel: MemoryFunnel) -> None:
        self.funnel = funnel

    def write(self, key: str, value: dict[str, Any] | None, flush: bool = True) -> None:
        self.funnel.write_control(key, value)

    def read_all(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        for msg in self.funnel.control_log:
            key = msg.key().decode()
            if msg.value() is None:
                records.pop(key, None)
            else:
                records[key] = json.loads(msg.value())
        return records

    def latest(self, key: str) -> dict[str, Any] | None:
        return self.read_all().get(key)

    def values(self, key: str) -> Sequence[dict[str, Any]]:
        """Every record ever written under ``key``, oldest first (tombstones left out)."""
        return [json.loads(m.value()) for m in self.funnel.control_log if m.key().decode() == key and m.value()]

    def close(self) -> None:
        pass

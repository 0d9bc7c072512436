"""The capture's pipelining (producer.capture, Pipelining): a step's Kafka commit runs in
the background while the next step reads, and the source hears of a position only once
Kafka committed it.  A real EventPublisher on a producer double whose commits the test
holds or fails (no broker)."""
from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError, KafkaException

from funnel.errors import FunnelError
from funnel.events import Op, Row, TableChanges
from funnel.kafka import KafkaSettings
from producer.capture import Capture, CaptureOptions
from producer.publisher import EventPublisher
from producer.sources.base import SourceTransaction

WAIT_S = 10.0  # a bound on every wait, so a broken test fails instead of hanging


class HeldProducer:
    """The producer calls the publisher makes; each commit waits for ``release`` or fails."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.release = threading.Event()
        self.fail_commits = 0
        self.keys: list[bytes] = []
        self.aborts = 0

    def init_transactions(self, timeout: float) -> None:
        pass

    def begin_transaction(self) -> None:
        self.pending: list[bytes] = []

    def produce(self, topic: str, **message) -> None:
        self.pending.append(message["key"])

    def poll(self, timeout: float) -> int:
        return 0

    def commit_transaction(self, timeout: float) -> None:
        assert self.release.wait(WAIT_S), "the test never released the commit"
        if self.fail_commits:
            self.fail_commits -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        self.keys += self.pending
        self.log.append(("commit", self.pending[-1].decode()))

    def abort_transaction(self, timeout: float) -> None:
        self.aborts += 1

    def purge(self) -> None:
        pass

    def flush(self, timeout: float) -> int:
        return 0


class HeldPublisher(EventPublisher):
    def __init__(self, log: list) -> None:
        self.log = log
        super().__init__(KafkaSettings("localhost:1"), "shop", "prod")

    def _new_producer(self) -> HeldProducer:  # type: ignore[override]
        return HeldProducer(self.log)

    def start(self, timeout_s: float = 30.0) -> int:
        self._started = True  # the real one reads the funnel's tail from a broker
        return 0


class Source:
    """Positions 1..last, two transactions per read; stops the capture at the last acknowledgement."""

    def __init__(self, log: list, last: int, stop: threading.Event | None = None) -> None:
        self.log, self.last, self.stop = log, last, stop
        self.acknowledged: list[int] = []

    def install(self, resuming: bool = False) -> None:
        pass

    def seal(self) -> None:
        pass

    def transactions_after(self, position: int, limit_groups: int) -> list[SourceTransaction]:
        return [SourceTransaction(f"tx{p}", 0, p, [TableChanges("t", Op.INSERT, ["id"], ["id"], [Row(None, [p])])])
                for p in range(position + 1, min(self.last, position + limit_groups) + 1)]

    def acknowledge(self, position: int) -> None:
        self.acknowledged.append(position)
        self.log.append(("ack", position))
        if self.stop is not None and position >= self.last:
            self.stop.set()

    def close(self) -> None:
        pass


def pipelined(last: int, stop: threading.Event | None = None) -> tuple[Capture, HeldProducer, Source, list]:
    log: list = []
    publisher = HeldPublisher(log)
    source = Source(log, last, stop)
    capture = Capture(source, publisher, options=CaptureOptions(groups_per_publish=2, poll_interval_s=0.001))
    capture.start()
    return capture, publisher._producer, source, log


def test_a_position_is_acknowledged_only_after_its_kafka_commit_while_the_next_step_reads_on():
    capture, producer, source, log = pipelined(last=6)
    assert capture.step(0, seal=False) == (True, 2), "a full step: more is waiting"
    assert source.acknowledged == [], "the commit of tx1, tx2 is still in flight"
    producer.release.set()
    assert capture.step(2, seal=False) == (True, 4)
    assert source.acknowledged == [2]
    capture.settle()
    assert log == [("commit", "tx2"), ("ack", 2), ("commit", "tx4"), ("ack", 4)]
    assert capture.stats.position == 4 and capture.publisher.published_rows == 4


def test_a_failed_commit_is_met_by_the_next_step_and_nothing_of_it_is_acknowledged():
    capture, producer, source, log = pipelined(last=6)
    producer.fail_commits = 1
    capture.step(0, seal=False)
    producer.release.set()
    with pytest.raises(FunnelError, match="publishing to funnel 'shop' failed"):
        capture.step(2, seal=False)
    assert source.acknowledged == [] and producer.aborts == 1
    assert capture.publisher.published_rows == 0


def test_a_running_capture_publishes_each_position_once_and_acknowledges_the_last_at_close():
    stop = threading.Event()
    capture, producer, source, log = pipelined(last=9, stop=stop)
    producer.release.set()
    runner = threading.Thread(target=capture.run, args=(stop,))
    runner.start()
    runner.join(WAIT_S)
    assert not runner.is_alive()
    assert producer.keys == [f"tx{p}".encode() for p in range(1, 10)]
    assert source.acknowledged[-1] == 9 and source.acknowledged == sorted(source.acknowledged)

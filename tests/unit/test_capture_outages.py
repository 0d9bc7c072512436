"""The capture loop's outage rules, with fakes for the publisher and the source (no broker)."""
from __future__ import annotations

import threading

import pytest

from funnel.errors import FunnelError, SourceError
from producer import capture as capture_module
from producer.capture import Capture, CaptureGaveUp, CaptureOptions
from producer.publisher import FencedError
from producer.sources.base import SourceDisconnected, SourceTransaction


class FakePublisher:
    """Fails ``publish`` with each error of ``publish_failures``, ``restart`` with each of ``restart_failures``."""

    funnel = source = "fake"
    published_transactions = published_events = published_rows = published_bytes = 0

    def __init__(self, tail: int, publish_failures=(), restart_failures=()) -> None:
        self.tail = tail
        self.publish_failures = list(publish_failures)
        self.restart_failures = list(restart_failures)
        self.published: list[int] = []
        self.restarts = 0

    def start(self, timeout_s: float = 30.0) -> int:
        return self.tail

    def restart(self, timeout_s: float = 30.0) -> int:
        self.restarts += 1
        if self.restart_failures:
            raise self.restart_failures.pop(0)
        return self.tail

    def publish(self, transactions) -> None:
        if self.publish_failures:
            raise self.publish_failures.pop(0)
        self.published += [tx.position for tx in transactions]
        self.tail = self.published[-1]

    def heartbeat(self, position: int) -> None:
        pass

    def close(self, timeout_s: float = 30.0) -> None:
        pass


class FakeSource:
    """Positions 1..last, one transaction each; stops the capture once all are acknowledged."""

    def __init__(self, last: int, stop: threading.Event) -> None:
        self.last = last
        self.stop = stop
        self.rewinds = 0

    def install(self, resuming: bool = False) -> None:
        pass

    def seal(self) -> None:
        pass

    def transactions_after(self, position: int, limit_groups: int) -> list[SourceTransaction]:
        return [SourceTransaction(f"tx{p}", 0, p) for p in range(position + 1, min(self.last, position + 2) + 1)]

    def acknowledge(self, position: int) -> None:
        if position >= self.last:
            self.stop.set()

    def rewind(self) -> None:
        self.rewinds += 1

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(capture_module, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(capture_module, "RETRY_MAX_S", 0.02)


def run(publisher: FakePublisher, last: int, give_up_after_s: float = 5.0) -> FakeSource:
    stop = threading.Event()
    source = FakeSource(last, stop)
    Capture(source, publisher, options=CaptureOptions(poll_interval_s=0.001, give_up_after_s=give_up_after_s)
            ).run(stop)
    return source


def test_a_failed_publish_resumes_from_the_funnels_tail_and_publishes_each_position_once():
    publisher = FakePublisher(tail=2, publish_failures=[FunnelError("broker gone")],
                              restart_failures=[FunnelError("still gone"), FunnelError("still gone")])
    source = run(publisher, last=9)
    assert publisher.published == list(range(3, 10))
    assert publisher.restarts == 3 and source.rewinds == 1


def test_a_dropped_source_connection_is_rewound_and_resumed():
    publisher = FakePublisher(tail=0)
    stop = threading.Event()
    source = FakeSource(6, stop)
    reads = source.transactions_after

    def dropping_once(position: int, limit: int):
        source.transactions_after = reads
        raise SourceDisconnected("replication stream ended")

    source.transactions_after = dropping_once
    Capture(source, publisher, options=CaptureOptions(poll_interval_s=0.001)).run(stop)
    assert publisher.published == list(range(1, 7)) and source.rewinds == 1


def test_a_fenced_capture_stops_at_once_without_retrying():
    publisher = FakePublisher(tail=0, publish_failures=[FencedError("fenced by a newer capture of this source")])
    with pytest.raises(FencedError):
        run(publisher, last=3)
    assert publisher.restarts == 0


def test_a_fencing_met_while_retrying_stops_too():
    publisher = FakePublisher(tail=0, publish_failures=[FunnelError("broker gone")],
                              restart_failures=[FencedError("fenced by a newer capture of this source")])
    with pytest.raises(FencedError):
        run(publisher, last=3)
    assert publisher.restarts == 1


def test_an_outage_longer_than_give_up_after_ends_with_a_clear_error():
    publisher = FakePublisher(tail=0, publish_failures=[FunnelError("broker gone")],
                              restart_failures=[FunnelError("cannot start a transactional producer")] * 1000)
    with pytest.raises(CaptureGaveUp, match=r"gave up after 200ms: .* \(last error: cannot start"):
        run(publisher, last=3, give_up_after_s=0.2)
    assert publisher.restarts > 1


def test_other_source_errors_are_not_retried():
    publisher = FakePublisher(tail=0)
    stop = threading.Event()
    source = FakeSource(3, stop)

    def broken(position: int, limit: int):
        raise SourceError("table t lost its key column")

    source.transactions_after = broken
    with pytest.raises(SourceError, match="lost its key"):
        Capture(source, publisher, options=CaptureOptions(poll_interval_s=0.001)).run(stop)
    assert publisher.restarts == 0


def test_metrics_count_the_restarts_and_time_an_outage(monkeypatch):
    from funnel.metrics_endpoint import new_registry
    from producer.metrics import CaptureCollector

    publisher = FakePublisher(tail=0, publish_failures=[FunnelError("broker gone")])
    stop = threading.Event()
    runner = Capture(FakeSource(4, stop), publisher, options=CaptureOptions(poll_interval_s=0.001))
    runner.run(stop)
    labels = {"funnel": "fake", "source": "fake"}
    registry = new_registry(CaptureCollector(runner))
    assert registry.get_sample_value("timefunnel_capture_restarts_total", labels) == 1
    assert registry.get_sample_value("timefunnel_capture_interrupted_seconds", labels) == 0
    monkeypatch.setattr(runner.stats, "interrupted_since", capture_module.time.monotonic() - 3)
    assert registry.get_sample_value("timefunnel_capture_interrupted_seconds", labels) >= 3


class SlowCoordinator:
    """A producer whose ``init_transactions`` times out every time (the broker is gone)."""

    def __init__(self, stop: threading.Event, stop_after_calls: int) -> None:
        self.timeouts: list[float] = []
        self.stop = stop
        self.stop_after_calls = stop_after_calls

    def init_transactions(self, timeout_s: float) -> None:
        from confluent_kafka import KafkaError, KafkaException

        self.timeouts.append(timeout_s)
        if len(self.timeouts) == self.stop_after_calls:
            self.stop.set()  # SIGTERM arrives while librdkafka waits
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True))


def test_a_stop_ends_the_wait_for_the_broker_within_a_slice():
    from funnel.kafka import KafkaSettings
    from producer.publisher import INIT_SLICE_S, EventPublisher

    stop = threading.Event()
    publisher = EventPublisher(KafkaSettings("127.0.0.1:9"), "shop", "prod")
    publisher._producer = SlowCoordinator(stop, stop_after_calls=3)
    publisher.stop_waits_on(stop)
    with pytest.raises(FunnelError, match="stopped while waiting for the broker"):
        publisher.start(timeout_s=30.0)
    assert publisher._producer.timeouts == [INIT_SLICE_S] * 3  # not one 30 s wait


def test_without_a_stop_event_the_broker_gets_the_whole_timeout_in_one_wait():
    from funnel.kafka import KafkaSettings
    from producer.publisher import EventPublisher

    publisher = EventPublisher(KafkaSettings("127.0.0.1:9"), "shop", "prod")
    publisher._producer = SlowCoordinator(threading.Event(), stop_after_calls=0)
    with pytest.raises(FunnelError, match="cannot start a transactional producer"):
        publisher.start(timeout_s=7.0)
    assert len(publisher._producer.timeouts) == 1 and publisher._producer.timeouts[0] == pytest.approx(7.0, abs=0.1)


class FailingStart(FakePublisher):
    def start(self, timeout_s: float = 30.0) -> int:
        raise FunnelError("broker not reachable yet")


def test_an_outage_at_start_installs_capture_before_it_resumes():
    """start() failed before it installed capture: the resume installs it, as start would have."""
    publisher = FailingStart(tail=2)
    stop = threading.Event()
    source = FakeSource(5, stop)
    installs = []
    source.install = lambda resuming=False: installs.append(resuming)
    Capture(source, publisher, options=CaptureOptions(poll_interval_s=0.001)).run(stop)
    assert installs == [True] and publisher.published == [3, 4, 5]

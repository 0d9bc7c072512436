"""The broker properties timefunnel relies on, checked against the real broker.

Kafka-compatible imitations get exactly these wrong (docs/ARCHITECTURE.md, Local broker).
"""
from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create_topic(bootstrap: str, name: str, **config: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1, config=config)])
    futures[name].result(timeout=30)


def consumer(bootstrap: str, **extra: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex}",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest", **extra})


def read_all(bootstrap: str, topic: str, expected_at_least: int = 0, timeout_s: float = 20,
             **extra: str) -> list:
    cons = consumer(bootstrap, **extra)
    cons.assign([TopicPartition(topic, 0, 0)])
    messages, deadline = [], time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = cons.consume(500, timeout=0.5)
            messages += [m for m in batch if not m.error()]
            low, high = cons.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
            position = cons.position([TopicPartition(topic, 0)])[0].offset
            if len(messages) >= expected_at_least and position >= high:
                break
    finally:
        cons.close()
    return messages


def test_offsets_for_times_returns_first_offset_at_or_after_timestamp(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    producer = Producer({"bootstrap.servers": bootstrap})
    base = 1_700_000_000_000
    timestamps = [base + 1000 * i for i in range(10)]  # one message per second of event time
    for i, ts in enumerate(timestamps):
        producer.produce(topic_name, value=f"m{i}".encode(), timestamp=ts)
    assert producer.flush(30) == 0
    cons = consumer(bootstrap)
    try:
        def lookup(ts: int) -> int:
            found = cons.offsets_for_times([TopicPartition(topic_name, 0, ts)], timeout=10)
            return found[0].offset
        assert lookup(base) == 0
        assert lookup(base + 3000) == 3  # exact match
        assert lookup(base + 3001) == 4  # between two: the first one after
        assert lookup(base + 2999) == 3
        assert lookup(base + 9000) == 9
        assert lookup(base + 9001) == -1  # after the last: no offset (end)
    finally:
        cons.close()


def test_high_watermark_is_last_offset_plus_one(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(17):
        producer.produce(topic_name, value=b"x")
    assert producer.flush(30) == 0
    messages = read_all(bootstrap, topic_name, expected_at_least=17)
    cons = consumer(bootstrap)
    try:
        low, high = cons.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10, cached=False)
    finally:
        cons.close()
    assert (low, high) == (0, 17)
    assert messages[-1].offset() + 1 == high


def test_aborted_transaction_is_invisible_to_read_committed(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{topic_name}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic_name, value=b"committed-1")
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic_name, value=b"aborted")
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic_name, value=b"committed-2")
    producer.commit_transaction(30)

    committed = read_all(bootstrap, topic_name, expected_at_least=2, **{"isolation.level": "read_committed"})
    uncommitted = read_all(bootstrap, topic_name, expected_at_least=3, **{"isolation.level": "read_uncommitted"})
    assert [m.value() for m in committed] == [b"committed-1", b"committed-2"]
    assert b"aborted" in [m.value() for m in uncommitted]


def test_compacted_topic_keeps_latest_value_per_key(bootstrap, topic_name):
    create_topic(bootstrap, topic_name, **{"cleanup.policy": "compact", "segment.ms": "100",
                                           "min.cleanable.dirty.ratio": "0.001",
                                           "min.compaction.lag.ms": "0", "delete.retention.ms": "100"})
    producer = Producer({"bootstrap.servers": bootstrap})
    for version in range(5):
        for key in ("a", "b", "c"):
            producer.produce(topic_name, key=key.encode(), value=f"{key}{version}".encode())
        producer.flush(30)
        time.sleep(0.2)  # let segments roll: only closed segments are compacted
    deadline = time.monotonic() + 90
    latest = None
    while time.monotonic() < deadline:
        producer.produce(topic_name, key=b"roll", value=b"r")  # rolls the active segment
        producer.flush(30)
        messages = read_all(bootstrap, topic_name)
        values = [m.value() for m in messages if m.key() != b"roll"]
        if len(values) == 3:
            latest = values
            break
        time.sleep(1)
    assert latest is not None, "the log cleaner did not compact the topic within 90 s"
    assert sorted(latest) == [b"a4", b"b4", b"c4"]


def test_unknown_topic_is_not_auto_created(bootstrap, topic_name):
    # The funnel CLI must report an unknown funnel, not create an empty one silently.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": 3000})
    errors: list = []
    producer.produce(topic_name, value=b"x", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(10)
    assert errors and errors[0] is not None
    assert topic_name not in admin.list_topics(timeout=10).topics

"""A message the broker refuses fails its whole Kafka transaction (producer.publisher).

The publisher gives its messages no delivery callback: it relies on librdkafka's
``commit_transaction`` failing when any message of the transaction failed.  Here the
broker refuses one message of a publish (larger than the topic's ``max.message.bytes``):
the publish must fail and leave nothing visible to read_committed readers, and a
restarted publisher (as capture rides through a failure) publishes again.
"""
from __future__ import annotations

import os

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from funnel.errors import FunnelError
from funnel.events import Op, Row, TableChanges
from funnel.kafka import KafkaSettings
from funnel.reader import FunnelReader
from producer.publisher import EventPublisher
from producer.sources.base import SourceTransaction

LIMIT = 4000  # bytes per message on this topic; the publisher's own limit is 900 kB


def transaction(txid: str, position: int, value: bytes) -> SourceTransaction:
    group = TableChanges("public.docs", Op.INSERT, ["id", "body"], ["id"], [Row(None, [position, value])])
    return SourceTransaction(txid, 1_700_000_000_000_000 + position, position, [group])


def test_a_message_the_broker_refuses_fails_the_publish_and_leaves_nothing_visible(bootstrap, topic_name):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # the limit is set at creation: a later config change reaches the broker asynchronously
    new = NewTopic(topic_name, num_partitions=1, replication_factor=1, config={"max.message.bytes": str(LIMIT)})
    admin.create_topics([new])[topic_name].result(timeout=30)
    kafka = KafkaSettings(bootstrap)
    publisher = EventPublisher(kafka, topic_name, "prod")
    try:
        assert publisher.start() is None
        refused = os.urandom(4 * LIMIT)  # random: zstd cannot shrink it under the limit
        with pytest.raises(FunnelError, match="publishing to funnel"):
            publisher.publish([transaction("t1", 1, b"small"), transaction("t2", 2, refused)])
        assert publisher.published_rows == 0
        # what capture does after a failed publish (Capture.ride_through): a new producer, the tail read again
        assert publisher.restart() is None, "nothing of the failed publish was committed"
        assert publisher.publish([transaction("t3", 3, b"after")]) == 1
    finally:
        publisher.close()
    with FunnelReader(kafka, topic_name) as reader:
        low, high = reader.watermarks()
        assert [summary.txid for summary in reader.transactions(low, high)] == ["t3"], \
            "the refused publish left none of its transactions visible"

"""What EventPublisher hands to Kafka, message by message, on a recording producer (no
broker): every message's headers describe that message, also when a batch too large
for one Kafka message is cut in parts (producer.publisher)."""
from __future__ import annotations

from funnel import headers
from funnel.codec import EventCodec
from funnel.events import Op, Row, TableChanges
from funnel.kafka import KafkaSettings
from funnel.reader import Assembler
from producer.publisher import MAX_MESSAGE_BYTES, EventPublisher
from producer.sources.base import SourceTransaction


class RecordingProducer:
    """The few confluent_kafka.Producer calls the publisher makes, recorded."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    def init_transactions(self, timeout: float) -> None:
        pass

    def begin_transaction(self) -> None:
        pass

    def produce(self, topic: str, **message) -> None:
        self.messages.append(message)

    def poll(self, timeout: float) -> int:
        return 0

    def commit_transaction(self, timeout: float) -> None:
        pass


class Message:
    """The slice of confluent_kafka.Message that funnel.reader.Assembler reads."""

    def __init__(self, offset: int, recorded: dict) -> None:
        self._offset, self._recorded = offset, recorded

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def headers(self):
        return self._recorded["headers"]

    def key(self) -> bytes:
        return self._recorded["key"]

    def value(self) -> bytes:
        return self._recorded["value"]


class RecordingPublisher(EventPublisher):
    def _new_producer(self) -> RecordingProducer:  # type: ignore[override]
        return RecordingProducer()


def publisher() -> tuple[EventPublisher, RecordingProducer]:
    pub = RecordingPublisher(KafkaSettings("localhost:1"), "shop", "prod", chunk_rows=1000)
    pub._started = True  # start() would read the funnel's tail from a broker
    return pub, pub._producer


def big_transaction(rows: int, value_bytes: int) -> SourceTransaction:
    group = TableChanges("public.docs", Op.INSERT, ["id", "body"], ["id"],
                         [Row(None, [i, "x" * value_bytes]) for i in range(rows)])
    return SourceTransaction("tx-1", 1_700_000_000_000_000, 42, [group])


def test_a_batch_cut_in_parts_ends_its_transaction_only_at_the_last_part():
    pub, recording = publisher()
    tx = big_transaction(rows=12, value_bytes=200_000)  # one 2.4 MB batch: cut in parts below 900 kB
    assert pub.publish([tx]) == 12
    messages = recording.messages
    assert len(messages) > 2 and all(len(m["value"]) <= MAX_MESSAGE_BYTES for m in messages)
    metas = [headers.decode(m["headers"], "test") for m in messages]
    codec = EventCodec()
    assert [meta.rows for meta in metas] == [codec.decode(m["value"]).row_count for m in messages], \
        "each message's header counts its own rows"
    assert [meta.ends_transaction for meta in metas] == [False] * (len(messages) - 1) + [True]
    assembler = Assembler("shop")
    done = [assembler.add(Message(offset, m)) for offset, m in enumerate(messages)]
    assert done[:-1] == [None] * (len(messages) - 1), "no reader takes a part for the whole transaction"
    assert (done[-1].txid, done[-1].rows, done[-1].events) == ("tx-1", 12, len(messages))


def test_a_small_transaction_is_one_message_whose_headers_close_it():
    pub, recording = publisher()
    group = TableChanges("public.docs", Op.UPDATE, ["id", "body"], ["id"], [Row([1, "a"], [1, "b"])])
    truncate = TableChanges("public.other", Op.TRUNCATE, ["k"], ["k"], [])
    assert pub.publish([SourceTransaction("tx-2", 1_700_000_000_000_000, 43, [group, truncate])]) == 1
    [message] = recording.messages
    meta = headers.decode(message["headers"], "test")
    assert (meta.rows, meta.ends_transaction, message["key"]) == (1, True, b"tx-2")
    batch = EventCodec().decode(message["value"])
    assert [(g.table, g.op, g.rows) for g in batch.changes] == [
        ("public.docs", Op.UPDATE, [Row([1, "a"], [1, "b"])]), ("public.other", Op.TRUNCATE, [])]
    assert (batch.seq, batch.tx_rows, pub.published_transactions, pub.published_events) == (0, 1, 1, 1)

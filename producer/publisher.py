"""Publishing source transactions into the funnel, exactly once.

Each call of :meth:`EventPublisher.publish` is one Kafka transaction holding one or
more whole source transactions, so a reader with ``isolation.level=read_committed``
sees a source transaction entirely or not at all.  The ``transactional.id`` is derived
from the funnel and the source: a second producer for the same source fences the
first, and ``init_transactions`` aborts whatever a crashed predecessor left open.
After that, the funnel's tail says which source position was published last, and the
capture resumes after it: nothing lost, nothing doubled.

The same holds after a failure: :meth:`EventPublisher.restart` throws the producer away
(whatever it left open is aborted by its successor) and starts again exactly as at
start.  The one failure that must not be retried is being fenced: then a newer capture
of this source runs, and retrying would fence it in turn (:class:`FencedError`).
"""
from __future__ import annotations

import contextlib
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from funnel import headers
from funnel.clock import now_us
from funnel.codec import EventCodec
from funnel.errors import CodecError, FunnelError, TimeFunnelError
from funnel.events import ChangeBatch, Kind, TableChanges
from funnel.kafka import KafkaSettings, data_topic, kafka_error, retry_transient
from producer.sources.base import SourceTransaction

TIMEOUT_S = 30.0
INIT_SLICE_S = 1.0  # how often a wait for init_transactions looks at the stop event
RETRY_PAUSE_S = 0.2  # at least this long between two init_transactions calls of one slice loop
# Keep each message well under the broker's default message.max.bytes (1 MiB).
MAX_MESSAGE_BYTES = 900_000
# What librdkafka reports when a newer producer with our transactional.id took over.
_FENCED_CODES = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED})
# How many messages are produced between two polls of the producer's event queue: a poll
# per message cost as much as the produce itself for small transactions, and nothing
# waits on these events (delivery is checked by the commit, see _in_kafka_transaction).
POLL_EVERY = 256


class FencedError(FunnelError):
    """A newer capture of the same source (same funnel and source name) took over."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """Whole source transactions as their messages, encoded but not sent (EventPublisher.encode)."""

    messages: list[tuple[ChangeBatch, bytes, int]]  # (batch, payload, rows)
    transactions: int
    rows: int


class PendingCommit:
    """A Kafka transaction whose messages are produced and whose commit runs in the
    background (EventPublisher.start_commit); ``wait`` says whether it committed."""

    def __init__(self, publisher: EventPublisher, future: Future, encoded: Encoded) -> None:
        self._publisher = publisher
        self._future = future
        self.encoded = encoded

    def wait(self) -> int:
        """Waits for the commit; returns the rows it published.

        Raises FencedError or FunnelError when it failed; the transaction is then aborted.
        """
        publisher = self._publisher
        try:
            self._future.result()
        except KafkaException as exc:
            publisher._abort_quietly()
            raise publish_error(exc, f"publishing to funnel {publisher.funnel!r} failed") from exc
        except BaseException:
            if self._future.done():  # never abort while the commit still runs: one call at a time
                publisher._abort_quietly()
            raise
        finally:
            if publisher._inflight is self and self._future.done():
                publisher._inflight = None
        publisher.published_rows += self.encoded.rows
        publisher.published_transactions += self.encoded.transactions
        return self.encoded.rows


def chunk_transaction(tx: SourceTransaction, source: str, chunk_rows: int,
                      kind: Kind = Kind.CHANGES) -> list[ChangeBatch]:
    """Split a source transaction into batches of at most ``chunk_rows`` rows, in order.

    Table groups larger than a chunk are cut; ``seq`` counts rows from the start of
    the transaction so the applier knows when it holds all of it.
    """
    return [batch for batch, _ in counted_chunks(tx, source, chunk_rows, kind)]


def counted_chunks(tx: SourceTransaction, source: str, chunk_rows: int,
                   kind: Kind = Kind.CHANGES) -> list[tuple[ChangeBatch, int]]:
    """``chunk_transaction`` with each batch's row count, counted once here rather than
    again by each step of publishing (for small transactions, counting cost as much as
    encoding the rows)."""
    total = tx.row_count
    if total <= chunk_rows:
        # The common case, once per source transaction: one batch, nothing to cut, so
        # the groups go as they are (no copies; the loop below would make the same batch).
        return [(ChangeBatch(source, tx.txid, tx.commit_ts, tx.position, 0, total, kind, list(tx.changes)), total)]
    batches: list[ChangeBatch] = []
    current: list[TableChanges] = []
    seq = filled = 0

    def seal() -> None:
        nonlocal current, seq, filled
        batches.append(ChangeBatch(source, tx.txid, tx.commit_ts, tx.position, seq, total, kind, current))
        seq += filled
        current, filled = [], 0

    for group in tx.changes:
        if not group.rows:  # truncate, or an empty table announced by a snapshot
            current.append(group)
            continue
        start = 0
        while start < len(group.rows):
            # Seal a full chunk only when more rows come: rowless groups after the last
            # row (a DROP TABLE, a truncate) stay in the transaction's last chunk, which
            # a reader takes as the end of the transaction (seq + rows == tx_rows).
            if filled >= chunk_rows:
                seal()
            take = min(chunk_rows - filled, len(group.rows) - start)
            current.append(TableChanges(group.table, group.op, group.columns, group.key,
                                        group.rows[start:start + take]))
            filled += take
            start += take
    if current or not batches:
        seal()
    return [(batch, batch.row_count) for batch in batches]


class EventPublisher:
    """A transactional producer for one source into one funnel."""

    def __init__(self, kafka: KafkaSettings, funnel: str, source: str, chunk_rows: int = 1000,
                 codec: EventCodec | None = None, clock=now_us, commit_timeout_s: float = TIMEOUT_S) -> None:
        self.kafka = kafka
        self.funnel = funnel
        self.topic = data_topic(funnel)
        self.source = source
        self.chunk_rows = chunk_rows
        self.codec = codec or EventCodec()
        self.clock = clock
        # How long one Kafka commit may wait for the broker before it counts as failed.
        self.commit_timeout_s = commit_timeout_s
        self.published_transactions = 0
        self.published_events = 0
        self.published_rows = 0
        self.published_bytes = 0
        self._producer = self._new_producer()
        self._started = False
        self._stop: threading.Event | None = None  # see stop_waits_on
        self._committer: ThreadPoolExecutor | None = None  # runs start_commit's commits
        self._inflight: PendingCommit | None = None  # the commit start_commit began, until waited for

    def _new_producer(self) -> Producer:
        return Producer(self.kafka.client(**{
            "transactional.id": f"timefunnel.{self.funnel}.{self.source}",
            "compression.type": "zstd", "linger.ms": 5, "batch.size": 1_000_000,
            # A snapshot is one Kafka transaction; give big tables time.
            "transaction.timeout.ms": 900_000,
        }))

    # -- start and resume -----------------------------------------------------
    def start(self, timeout_s: float = TIMEOUT_S) -> int | None:
        """Fence older producers of this source, then return the last published position.

        Returns None when this source never published into the funnel.
        Raises FencedError when a newer capture of this source took over meanwhile,
        FunnelError when the funnel does not exist or the broker is unreachable.
        """
        self._init_transactions(timeout_s)
        self._started = True
        return last_published_position(self.kafka, self.funnel, self.source, self.codec)

    def stop_waits_on(self, stop: threading.Event) -> None:
        """Once ``stop`` is set, waiting for the broker to start a transactional producer
        ends within ``INIT_SLICE_S`` with a FunnelError (the capture then stops)."""
        self._stop = stop

    def _init_transactions(self, timeout_s: float) -> None:
        """``init_transactions`` for up to ``timeout_s``, in slices between which the stop
        event is looked at: it blocks in librdkafka, where a SIGTERM is not seen, and a
        capture riding through a broker outage spends its time here.  A call that timed
        out, or met another retriable error, may be made again (librdkafka), so slicing
        changes nothing else.
        Raises FencedError, FunnelError (also when stopped meanwhile) or ConfigError."""
        what = f"cannot start a transactional producer on funnel {self.funnel!r}"
        deadline = time.monotonic() + timeout_s
        while True:
            stop = self._stop
            called = time.monotonic()
            left = max(0.0, deadline - called)
            try:
                self._producer.init_transactions(left if stop is None else min(left, INIT_SLICE_S))
                return
            except KafkaException as exc:
                # A resumed call may return what the background attempt met meanwhile (a
                # coordinator still loading): retriable, as one long call would have retried it.
                if stop is None or not _retriable(exc) or time.monotonic() >= deadline:
                    raise publish_error(exc, what) from exc
                # The pause keeps an error returned at once from spinning; it watches the stop too.
                if stop.is_set() or stop.wait(max(0.0, min(RETRY_PAUSE_S - (time.monotonic() - called),
                                                           deadline - time.monotonic()))):
                    raise FunnelError(f"{what}: stopped while waiting for the broker") from exc

    def restart(self, timeout_s: float = TIMEOUT_S) -> int | None:
        """After a failure: a new transactional producer, started exactly like :meth:`start`.

        Its ``init_transactions`` aborts whatever the old one left open, so the tail it
        returns holds every transaction that was committed and none that was not.
        Raises like :meth:`start`.
        """
        self._forget_inflight()
        self._discard_producer()
        self._producer = self._new_producer()
        return self.start(timeout_s)

    def _discard_producer(self) -> None:
        # Nothing queued in it matters: uncommitted messages are aborted by the successor.
        # Purging keeps destroying it from waiting for a broker that may be gone.
        self._started = False
        try:
            self._producer.purge()
        except KafkaException:
            pass  # a producer in a fatal state may refuse; it is dropped all the same
        self._producer = None

    # -- publishing -----------------------------------------------------------
    def publish(self, transactions: Iterable[SourceTransaction]) -> int:
        """Publish whole source transactions atomically; returns rows published.
        Raises FencedError, FunnelError, CodecError."""
        return self.start_commit(self.encode(transactions)).wait()

    def encode(self, transactions: Iterable[SourceTransaction]) -> Encoded:
        """The messages of whole source transactions, encoded, nothing sent: it does not
        touch the producer, so it may run while a commit is in flight (capture encodes
        the next transactions meanwhile).  Raises CodecError."""
        count = 0

        def chunks() -> Iterator[tuple[ChangeBatch, int]]:
            nonlocal count
            for tx in transactions:
                count += 1
                yield from counted_chunks(tx, self.source, self.chunk_rows)

        messages = list(self._encoded(chunks()))
        return Encoded(messages, count, sum(rows for _, _, rows in messages))

    def start_commit(self, encoded: Encoded) -> PendingCommit:
        """Produces ``encoded`` in a new Kafka transaction and starts its commit in the
        background; nothing else may use the producer until its ``wait`` returned.

        Raises FencedError or FunnelError if the messages cannot be produced (the
        transaction is then aborted), CodecError, RuntimeError while another commit is in flight.
        """
        self._produce_in_transaction(encoded.messages)
        if self._committer is None:
            self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="timefunnel-commit")
        future = self._committer.submit(self._producer.commit_transaction, self.commit_timeout_s)
        self._inflight = PendingCommit(self, future, encoded)
        return self._inflight

    def _forget_inflight(self) -> None:
        """After a failure elsewhere: lets a commit in flight end (its owner gave up on it)."""
        pending = self._inflight
        if pending is not None:
            try:
                pending.wait()
            except TimeFunnelError:
                pass  # aborted; the caller is restarting or closing the producer anyway
            self._inflight = None

    def _encoded(self, chunks: Iterable[tuple[ChangeBatch, int]]) -> Iterator[tuple[ChangeBatch, bytes, int]]:
        """Each (batch, rows) as (batch, payload, rows), cut in parts where a batch does not fit
        one message.  Raises CodecError."""
        encode = self.codec.encode
        for batch, rows in chunks:
            payload = encode(batch)
            if len(payload) <= MAX_MESSAGE_BYTES:  # the common case, without the list of parts
                yield batch, payload, rows
            else:
                yield from self._encode_fitting(batch, rows, payload)

    def publish_snapshot(self, position: int, chunks: Iterable[TableChanges]) -> int:
        """Publish an initial copy (consistent at ``position``) and its end marker in one transaction."""
        commit_ts = self.clock()
        txid = f"snapshot-{position}"

        def batches() -> Iterator[tuple[ChangeBatch, int]]:
            seq = 0
            for group in chunks:
                rows = len(group.rows)
                # Each snapshot chunk stands alone (seq + rows == tx_rows): snapshot rows
                # apply at once, so the applier never needs to hold the whole copy.
                yield ChangeBatch(self.source, txid, commit_ts, position, seq, seq + rows, Kind.SNAPSHOT, [group]), rows
                seq += rows
            yield ChangeBatch(self.source, txid, commit_ts, position, seq, seq, Kind.SNAPSHOT_END, []), 0
            self.published_transactions += 1

        return self._in_kafka_transaction(batches())

    def heartbeat(self, position: int) -> None:
        """Say that the source is idle but alive now, at ``position``."""
        ts = self.clock()
        self._in_kafka_transaction([(ChangeBatch(self.source, f"heartbeat-{ts}", ts, position, 0, 0, Kind.HEARTBEAT,
                                                 []), 0)])

    def _in_kafka_transaction(self, chunks: Iterable[tuple[ChangeBatch, int]]) -> int:
        """Produces each (batch, its rows) as one message or more and commits them as one
        Kafka transaction, encoding as it goes (an initial copy is never held whole);
        returns the rows.  Raises FencedError, FunnelError, CodecError."""
        rows = self._produce_in_transaction(self._encoded(chunks))
        with self._aborted_on_failure():
            self._producer.commit_transaction(self.commit_timeout_s)
        self.published_rows += rows
        return rows

    def _produce_in_transaction(self, messages: Iterable[tuple[ChangeBatch, bytes, int]]) -> int:
        """Begins a Kafka transaction and produces (batch, payload, rows) messages into it;
        returns the rows.  The caller commits.  Raises FencedError, FunnelError, CodecError,
        the transaction aborted.

        No message carries a delivery callback: a transactional producer's commit waits
        for every message and fails if any of them failed (librdkafka's
        ``commit_transaction``), so the commit is the one check, and the 2 callbacks per
        message of small transactions (creating it, calling it) are saved.
        """
        if not self._started:
            raise FunnelError("EventPublisher.start() must be called before publishing")
        if self._inflight is not None:  # a bug: one Kafka transaction at a time
            raise RuntimeError("a Kafka transaction is still committing: wait for it first")
        rows = produced = 0
        produce = self._produce
        with self._aborted_on_failure():
            self._producer.begin_transaction()
            for batch, payload, batch_rows in messages:
                produce(batch, payload, batch_rows)
                rows += batch_rows
                produced += 1
                if produced >= POLL_EVERY:
                    self._producer.poll(0)
                    produced = 0
        return rows

    @contextlib.contextmanager
    def _aborted_on_failure(self) -> Iterator[None]:
        """Whatever fails inside aborts the Kafka transaction; librdkafka's errors become
        FunnelError (FencedError when fenced)."""
        try:
            yield
        except KafkaException as exc:
            self._abort_quietly()
            raise publish_error(exc, f"publishing to funnel {self.funnel!r} failed") from exc
        except BaseException:
            self._abort_quietly()
            raise

    def _produce(self, batch: ChangeBatch, payload: bytes, rows: int) -> None:
        """One message: ``payload`` is ``batch`` encoded, holding ``rows`` rows."""
        message_headers = batch_headers(batch, rows)
        while True:
            try:
                self._producer.produce(self.topic, value=payload, key=batch.txid.encode(),
                                       timestamp=batch.commit_ts // 1000, headers=message_headers)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
        self.published_events += 1
        self.published_bytes += len(payload)

    def _encode_fitting(self, batch: ChangeBatch, rows: int,
                        payload: bytes | None = None) -> list[tuple[ChangeBatch, bytes, int]]:
        """Encode a batch of ``rows`` rows (``payload`` if encoded already); halve it until
        each part fits in one Kafka message.

        Returns (part, its payload, its rows) for each part: each message's headers must
        describe its own part (its rows, and whether it ends the transaction), not the
        batch it was cut from, or a reader would end the transaction at the first half.
        """
        if payload is None:
            payload = self.codec.encode(batch)
        if len(payload) <= MAX_MESSAGE_BYTES or rows <= 1:
            if len(payload) > MAX_MESSAGE_BYTES:
                raise CodecError(f"a single row of {batch.changes[0].table!r} encodes to {len(payload)} bytes, "
                                 f"more than a Kafka message holds ({MAX_MESSAGE_BYTES})")
            return [(batch, payload, rows)]
        return [part for half in split_batch(batch) for part in self._encode_fitting(half, half.row_count)]

    def _abort_quietly(self) -> None:
        try:
            # Bounded like the commit: a broker that is gone would hold the abort as long.
            self._producer.abort_transaction(self.commit_timeout_s)
        except KafkaException:
            pass  # the transaction times out on the broker; the next init_transactions fences it

    def close(self, timeout_s: float = TIMEOUT_S) -> None:
        self._forget_inflight()
        if self._committer is not None:
            self._committer.shutdown()
            self._committer = None
        if self._producer is not None:
            self._producer.flush(timeout_s)


def _retriable(exc: KafkaException) -> bool:
    """An error after which ``init_transactions`` may simply be called again (librdkafka's rule)."""
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.retriable() and not error.fatal()


def publish_error(exc: KafkaException, what: str) -> FunnelError:
    """A Kafka failure of the transactional producer: FencedError when a newer producer
    of this source took over (never worth retrying), else what :func:`kafka_error` says."""
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError) and error.code() in _FENCED_CODES:
        return FencedError(f"{what}: fenced by a newer capture of this source ({error.str()})",
                           hint="run one capture per source; the newer one goes on. To run this one "
                                "instead, stop the other and start this one again")
    return kafka_error(exc, what)


def batch_headers(batch: ChangeBatch, rows: int | None = None) -> list[tuple[str, bytes]]:
    """What a reader needs to schedule a message without decoding it (see funnel.headers).
    ``rows``: ``batch.row_count`` when the caller knows it already."""
    rows = batch.row_count if rows is None else rows
    return headers.encode(batch.commit_ts, batch.kind, rows, batch.seq + rows >= batch.tx_rows)


def split_batch(batch: ChangeBatch) -> list[ChangeBatch]:
    """Two batches holding the first and second half of ``batch``'s rows, in order."""
    half = batch.row_count // 2
    first: list[TableChanges] = []
    second: list[TableChanges] = []
    taken = 0
    for group in batch.changes:
        if taken >= half:
            second.append(group)
            continue
        take = min(half - taken, len(group.rows))
        first.append(TableChanges(group.table, group.op, group.columns, group.key, group.rows[:take], group.ddl))
        if take < len(group.rows):
            second.append(TableChanges(group.table, group.op, group.columns, group.key, group.rows[take:]))
        taken += take
    tail_tx_rows = batch.tx_rows if batch.kind is not Kind.SNAPSHOT else batch.seq + batch.row_count
    head_tx_rows = batch.tx_rows if batch.kind is not Kind.SNAPSHOT else batch.seq + half
    return [ChangeBatch(batch.source, batch.txid, batch.commit_ts, batch.position, batch.seq, head_tx_rows,
                        batch.kind, first),
            ChangeBatch(batch.source, batch.txid, batch.commit_ts, batch.position, batch.seq + half,
                        tail_tx_rows, batch.kind, second)]


def last_published_position(kafka: KafkaSettings, funnel: str, source: str,
                            codec: EventCodec | None = None) -> int | None:
    """The highest position ``source`` published into the funnel, read from its tail.

    Reads committed messages only, backwards in growing windows from the end, so a
    long funnel costs a few small reads. Raises FunnelError for an unknown funnel.
    """
    codec = codec or EventCodec()
    topic = data_topic(funnel)
    consumer = Consumer(kafka.client(**{"group.id": f"timefunnel-tail-{uuid.uuid4().hex}",
                                        "enable.auto.commit": False, "isolation.level": "read_committed"}))
    try:
        # retried like every watermark read: a funnel created a moment ago may not have
        # its partition leader yet (NOT_LEADER_FOR_PARTITION passes by itself)
        low, high = retry_transient(
            lambda: consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=TIMEOUT_S, cached=False),
            f"cannot read the tail of funnel {funnel!r}")
        window = 64
        end = high
        while end > low:
            start = max(low, end - window)
            found = _max_position_between(consumer, topic, start, end, source, codec)
            if found is not None:
                return found
            end, window = start, window * 4
        return None
    finally:
        consumer.close()


def _max_position_between(consumer: Consumer, topic: str, start: int, end: int, source: str,
                          codec: EventCodec) -> int | None:
    partition = TopicPartition(topic, 0)
    consumer.assign([TopicPartition(topic, 0, start)])
    best: int | None = None
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.2):
            if msg.error() or msg.offset() >= end:
                continue
            batch = codec.decode(msg.value())
            if batch.source == source and (best is None or batch.position > best):
                best = batch.position
        # Transaction markers and aborted records leave gaps; the position still advances.
        if consumer.position([partition])[0].offset >= end:
            return best
    raise FunnelError(f"reading funnel {topic!r} offsets {start}..{end} timed out")

"""The delayed applier: reads the funnel, holds each transaction until it is due, applies it whole.

Loop, in one thread (threads do not help under the GIL, see docs/ARCHITECTURE.md):

1. ``poll`` a batch of messages from the funnel and the control topic (``applier.feed``);
2. control records change the delay at once;
3. funnel messages are grouped into whole transactions by their headers and kept as
   raw bytes (memory stays small; decoding happens only when a transaction is due);
   when the buffer is full the partition is paused, so memory stays bounded however
   deep the funnel is;
4. every transaction whose ``commit_ts + delay <= now`` (snapshot rows at once) is
   decoded and applied, several per database transaction (group commit), together
   with the new position in the mirror's state table.

Exactly once onto the mirror: the position lives in the mirror, in the same database
transaction as the rows, and the consumer starts from it.  Consumer-group offsets are
committed too, but only for lag tools (kafka-consumer-groups, Burrow).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable

from applier import schedule
from applier.feed import Feed, FeedMessage, KafkaFeed, OffsetLost
from applier.pointintime import Plan, Target, make_plan, refuse_if_promoted, undo_back
from applier.sinks.base import Sink
from applier.startpoint import start_offset
from applier.transaction import MirrorPosition, Transaction
from applier.commands import ApplierStats, Command
from applier.decode_worker import Pipeline
from applier.window import gc_paused, net_effect
from funnel.clock import now_us
from funnel.codec import EventCodec
from funnel.control import check_mirror_id, command_key, decode_record, delay_key, status_key
from funnel.records import CommandRecord, DelayRecord, MirrorStatus, oldest_pending
from funnel.reader import Assembler, FunnelReader, TransactionSummary
from funnel.errors import CodecError, ConfigError, EventsExpiredError, FencedError, FunnelError, TimeFunnelError
from funnel.events import Kind
from funnel.kafka import KafkaSettings

log = logging.getLogger("timefunnel.applier")
MICROS = 1_000_000


@dataclass(frozen=True)
class ApplierOptions:
    """How one mirror follows one funnel. ``delay_s=None`` takes the delay from the control topic."""

    funnel: str
    mirror: str
    delay_s: float | None = None
    buffer_rows: int = 100_000  # pause the funnel partition beyond this many held rows
    max_commit_rows: int = 20_000  # rows per database transaction in group commit
    # Rows per window while draining to a hold time (seek, promote): the window's net effect
    # is written in one database transaction with the position after it.  10,000: up to three
    # windows are in flight while the decoding worker runs, and bench/promote_deep.py measured
    # peak RSS 142 MB (+38 MB worker) at 10,000 against 184-190 MB (+76 MB) at 50,000, at the
    # same speed (56-59k rows/s; promote_drain_postgres 32.6k vs 34.3k rows/s, within noise).
    drain_window_rows: int = 10_000
    decode_worker: bool = False  # drains of two windows or more decode in a worker process (applier.decode_worker)
    status_interval_s: float = 1.0
    announce_delay: bool = True  # publish --delay on the control topic at start (not for CLI drains)

    def validate(self) -> None:
        check_mirror_id(self.mirror)
        if self.delay_s is not None and self.delay_s < 0:
            raise ConfigError("the delay cannot be negative")
        if self.buffer_rows < 1 or self.max_commit_rows < 1 or self.drain_window_rows < 1:
            raise ConfigError("buffer and commit sizes must be positive")


class Applier:
    """One mirror following one funnel with a delay.

    ``feed`` is what it reads (``applier.feed``); given ``KafkaSettings`` it reads the
    funnel through a ``KafkaFeed``, the composition roots' usual case.
    """

    def __init__(self, feed: KafkaSettings | Feed, sink: Sink, options: ApplierOptions,
                 clock: Callable[[], int] = now_us, codec: EventCodec | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        options.validate()
        if isinstance(feed, KafkaSettings):
            feed = KafkaFeed(feed, options.funnel, options.mirror)
        self.monotonic = monotonic  # paces status publishing
        self.feed = feed
        self.kafka: KafkaSettings | None = getattr(feed, "kafka", None)  # the metrics' own funnel scans use it
        self.sink = sink
        self.options = options
        self.clock = clock
        self.codec = codec or EventCodec()
        self.topic = feed.topic
        self.control = feed.control()
        self.stats = ApplierStats()
        self.held: deque[TransactionSummary] = deque()
        self.held_rows = 0
        self.assembler = Assembler(self.topic, keep_payloads=True)
        self.delay_us = 0
        self.position: MirrorPosition | None = None
        self.paused = False
        self.low_watermark = 0
        self.high_watermark = 0
        self._started = False  # the feed is open: close() must publish the final status and close it
        # Called once per group commit with (seconds, transactions, rows): the metrics'
        # apply-duration histogram, which must include decoding, not only the sink.
        self.apply_observers: list[Callable[[float, int, int], None]] = []
        self.command: Command | None = None
        self.finished = False  # promoted: the loop ends
        self.sink_url: str | None = None  # reported in status (without password) for the takeover hook
        self._closing = False
        self._fenced: FencedError | None = None  # a newer applier took the mirror over: write nothing more
        self._last_status = float("-inf")
        self._last_watermarks = 0.0
        self._control_start = 0
        self.pipeline = Pipeline(self.topic)  # drain windows decoded by a worker, not yet written

    # -- start ------------------------------------------------------------------
    def start(self, announce: bool = True) -> None:
        """Read the position and the delay, check nothing expired, and start consuming.

        The mirror's state row is claimed (``Sink.claim``) once the delay and the funnel
        are known to be there, so a start that fails on them does not stop the applier
        that runs: from the claim on, any applier of this mirror that started earlier is
        fenced, and the position is read after the claim, so nothing an earlier applier
        wrote is missed.  A mirror without a position starts where ``applier.startpoint``
        says.

        Raises EventsExpiredError when the funnel no longer holds the next event to
        apply, FunnelError for an unknown funnel, ConfigError when no delay is known,
        PointInTimeError for a promoted mirror.  ``announce=False`` leaves publishing an
        explicit delay to the caller (``announce_delay``), for a start with more checks.
        """
        refuse_if_promoted(self.sink.read_position(self.options.funnel, self.options.mirror))
        control_records = self.control.read_all()
        self._set_initial_delay(control_records)
        self._started = True
        self._refresh_watermarks(force=True)
        stored = self.sink.claim(self.options.funnel, self.options.mirror)
        refuse_if_promoted(stored)
        self.position = stored or MirrorPosition(self.options.funnel, self.options.mirror, self.topic,
                                                 0, self._start_offset())
        self._check_not_expired(self.position.next_offset)
        control_high = self.feed.control_end()
        self._control_start = control_high  # commands written before we started are not ours to run
        self._assign(control_high)
        log.info("mirror %s follows %s from offset %d with delay %.3fs", self.options.mirror, self.topic,
                 self.position.next_offset, self.delay_us / MICROS)
        if announce:
            self.announce_delay()

    def announce_delay(self) -> None:
        """Publish an explicit ``--delay`` so that `funnel status` and retention checks know it.

        Only once the start can no longer be refused: a refused start changes nothing,
        not even the delay other commands see.  An explicit --delay wins at start (it is
        the deployment's configuration).
        """
        if self.options.delay_s is not None and self.options.announce_delay:
            self.control.write(delay_key(self.options.mirror),
                               DelayRecord(self.options.delay_s, self.clock()).to_json())

    def _start_offset(self) -> int:
        with self.feed.reader() as reader:
            return start_offset(reader, self.options.mirror, self.codec)

    def _assign(self, control_offset: int) -> None:
        self.feed.assign(self.position.next_offset, control_offset)
        self.paused = False

    def _set_initial_delay(self, records: dict) -> None:
        if self.options.delay_s is not None:
            self.delay_us = int(self.options.delay_s * MICROS)
            return
        known = records.get(delay_key(self.options.mirror))
        if known is None:
            raise ConfigError(f"no delay known for mirror {self.options.mirror!r}",
                              hint="pass --delay, e.g. --delay 4h")
        self.delay_us = DelayRecord.from_json(known).delay_us

    def _check_not_expired(self, next_offset: int) -> None:
        if next_offset < self.low_watermark:
            raise EventsExpiredError(
                f"events {self.topic}[0] offsets {next_offset}..{self.low_watermark - 1} expired from the funnel "
                f"before mirror {self.options.mirror!r} applied them; the mirror can no longer be kept exact",
                hint="re-initialise the mirror: a new, empty mirror database starts at the oldest whole initial "
                     "copy the funnel holds (`funnel status` shows a mirror that never ran as EXPIRED when there "
                     "is none); give the funnel a longer retention")

    def _refresh_watermarks(self, force: bool = False) -> None:
        """Low and high watermark of the funnel partition.

        ``force`` asks the broker. Otherwise, at most once a second, the values that
        fetch responses keep in librdkafka's cache: asking the broker costs a round trip
        that waits behind the consumer's own fetches (~0.2 s measured under load).
        """
        if not force and time.monotonic() - self._last_watermarks < 1.0:
            return
        try:
            low, high = self.feed.watermarks(cached=not force)
        except FunnelError as exc:
            if force:
                raise
            log.warning("cannot read watermarks of %s: %s", self.topic, exc)
            return
        self.low_watermark, self.high_watermark = low, high
        self._last_watermarks = time.monotonic()

    # -- the loop -----------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, until: Callable[["Applier"], bool] | None = None) -> None:
        """Apply until ``stop`` is set or ``until(self)`` is true. Raises on any expected failure."""
        stop = stop or threading.Event()
        if not self._started:
            self.start()
        try:
            while not stop.is_set() and not self.finished:
                self.step()
                if until is not None and until(self):
                    break
        except FencedError as exc:
            self._fenced = exc
            raise
        finally:
            self.close()

    def step(self, poll_timeout_s: float = 0.05) -> int:
        """One round: consume, hold, apply what is due. Returns rows applied.

        Raises FencedError once a newer applier of the mirror has started.
        """
        if self._fenced is not None:
            raise self._fenced
        try:
            messages = self.feed.poll(2000, self._poll_timeout(poll_timeout_s))
        except OffsetLost as exc:
            self._expired_while_reading(exc)
        # The funnel's messages first: a command in the same batch must see them held
        # (the feed's position is already past them, so "read to the end" would hold
        # otherwise, and a promote would finish before applying them).
        control = []
        for msg in messages:
            if msg.topic() == self.topic:
                self._receive(msg)
            else:
                control.append(msg)
        for msg in control:  # a backward seek among them repositions the feed and forgets what was held
            self._control_record(msg)
        self._flow_control()
        applied = self._apply_due()
        self._refresh_watermarks()
        self._check_command_done()
        self._publish_status()
        return applied

    def _poll_timeout(self, default: float) -> float:
        """Sleep in consume no longer than until the next held transaction is due."""
        if not self.held:
            return default
        wait_us = schedule.due_at(self.held[0].commit_ts, self.delay_us) - self.clock()
        return max(0.0, min(default, wait_us / MICROS))

    def _receive(self, msg: FeedMessage) -> None:
        held = self.assembler.add(msg)
        if held is not None:
            self.held.append(held)
            self.held_rows += held.rows

    def _expired_while_reading(self, lost: OffsetLost) -> None:
        self._refresh_watermarks(force=True)
        self._check_not_expired(self.position.next_offset)
        raise EventsExpiredError(f"funnel {self.topic!r}: events before offset {self.low_watermark} expired "
                                 f"while mirror {self.options.mirror!r} still needed them ({lost})",
                                 hint="re-initialise the mirror and give the funnel a longer retention") from lost

    def _control_record(self, msg: FeedMessage) -> None:
        key, value = decode_record(msg.key(), msg.value())
        if key == delay_key(self.options.mirror) and value is not None:
            self.delay_us = DelayRecord.from_json(value).delay_us
            log.info("mirror %s: delay is now %.3fs", self.options.mirror, self.delay_us / MICROS)
        elif key == command_key(self.options.mirror) and value is not None:
            record = CommandRecord.from_json(value)
            command = Command(record.id, record.kind, record.to, record.excluded)
            try:
                self.execute(command)
            except FencedError:
                raise
            except TimeFunnelError as exc:  # reported to the operator's CLI; the applier goes on
                command.state, command.error = "failed", str(exc)
                self.command = command
                log.error("mirror %s: %s %s failed: %s", self.options.mirror, command.kind, command.id, exc)
            self._publish_status(force=True)

    # -- seek, resume, promote ------------------------------------------------------
    def execute(self, command: Command, plan: Plan | None = None) -> None:
        """Start a seek/resume/promote. Seek and promote then proceed in the loop until ``command_done``.

        ``plan`` is a plan already made for this position and target, if any.

        Raises PointInTimeError (and UndoError, CodecError) when the target cannot be reached;
        the mirror is unchanged then, except for transactions already undone atomically.
        """
        refuse_if_promoted(self.position)
        while self.pipeline:  # the windows formed for the previous target are written first
            self._write_window(*self.pipeline.oldest())
        command.begin(self.stats)
        self.command = command
        if command.kind == "resume":
            self._persist(replace(self.position, hold_until=None, excluded_txids=()))
            command.state = "done"
            return
        with self.feed.reader() as reader:
            # A plan made by the caller for this very position (the CLI's, shown to the
            # operator) is reused: planning scans the whole funnel.
            if plan is None or plan.next_offset != self.position.next_offset or plan.to != command.to:
                command.phase = "planning"
                plan = make_plan(reader, self.position, Target(command.to, command.excluded),
                                 progress=self._publish_status)
            command.to = plan.to
            if self.options.decode_worker and plan.apply_rows >= 2 * self.options.drain_window_rows:
                self.pipeline.start()  # its imports overlap the first window's reading
            # Hold first, in its own database transaction: a crash from here on restarts
            # holding at the target instead of running ahead with the delay.
            self._persist(replace(self.position, hold_until=plan.to, excluded_txids=command.excluded))
            if plan.undo_from_offset is not None:
                command.phase = "undoing"
                self._undo_back(reader, plan.undo_from_offset)
        command.phase = "applying"
        self._check_command_done()

    def _undo_back(self, reader: FunnelReader, from_offset: int) -> None:
        base_tx, base_rows = self.stats.undone_transactions, self.stats.undone_rows

        def progress(transactions: int, rows: int) -> None:
            self.stats.undone_transactions, self.stats.undone_rows = base_tx + transactions, base_rows + rows
            self._publish_status()

        self.position = undo_back(self.sink, reader, self.position, from_offset, self.codec, progress,
                                  tick=self._publish_status)
        # What the feed holds now lies after the new position: read it again.
        self.held.clear()
        self.held_rows = 0
        self.assembler = Assembler(self.topic, keep_payloads=True)
        control_offset = self._control_offset()
        self.feed.reopen()
        self._assign(control_offset)

    def _control_offset(self) -> int:
        return max(self.feed.control_position(), self._control_start)

    def _persist(self, position: MirrorPosition) -> None:
        self.sink.apply([], position)
        self.position = position

    def reached_target(self) -> bool:
        """Holding, and everything before the hold time is applied."""
        hold = self.position.hold_until
        if hold is None or self.pipeline:
            return False
        if self.held:
            return self.held[0].commit_ts >= hold
        return self._read_to_end()

    def caught_up(self) -> bool:
        """Nothing held and nothing more in the funnel (after the due work is applied)."""
        return not self.held and not self.pipeline and self._read_to_end()

    def _read_to_end(self) -> bool:
        """Everything the funnel holds has been received; confirmed with the broker when it seems so."""
        if self.assembler.open is not None:
            return False
        self._refresh_watermarks()
        if not self._position_at_high_watermark():
            return False
        self._refresh_watermarks(force=True)
        return self._position_at_high_watermark()

    def _position_at_high_watermark(self) -> bool:
        return max(self.feed.position(), self.position.next_offset) >= self.high_watermark

    def command_done(self) -> bool:
        return self.command is None or self.command.state != "running"

    def _check_command_done(self) -> None:
        command = self.command
        if command is None or command.state != "running" or not self.reached_target():
            return
        if command.kind == "promote":
            self._persist(replace(self.position, hold_until=None, promoted_at=self.clock(),
                                  promote_target=command.to, excluded_txids=command.excluded))
            after_promote = getattr(self.sink, "after_promote", None)
            if after_promote is not None:  # PostgreSQL: sequences catch up with the applied keys
                moved = after_promote()
                log.info("mirror %s: advanced sequences %s", self.options.mirror, ", ".join(moved) or "(none)")
            self.finished = True
            log.info("mirror %s promoted at target %s", self.options.mirror, command.to)
        command.state = "done"
        self._publish_status(force=True)

    def _flow_control(self) -> None:
        # A drain holds two windows: the one being written and the next one filling; through
        # the worker a third, being decoded (pausing sooner starves the consumer's fetches).
        windows = 3 if self.pipeline.worker is not None else 2
        limit = max(self.options.buffer_rows, windows * self.options.drain_window_rows) if self.draining() \
            else self.options.buffer_rows
        held_rows = self.held_rows + self.pipeline.rows
        if not self.paused and held_rows >= limit:
            self.feed.pause()
            self.paused = True
        elif self.paused and held_rows <= limit // 2:
            self.feed.resume()
            self.paused = False

    # -- applying -----------------------------------------------------------------
    def draining(self) -> bool:
        """Holding at a target (seek, promote): the states before the target are never served,
        so whole windows of transactions are written as their net effect."""
        return self.position.hold_until is not None

    def is_due(self, held: TransactionSummary, now: int) -> bool:
        """Snapshot rows at once; while holding, everything before the hold time; else commit + delay."""
        if held.kind in (Kind.SNAPSHOT, Kind.SNAPSHOT_END):
            return True
        if self.position.hold_until is not None:
            return held.commit_ts < self.position.hold_until
        return schedule.is_due(held.commit_ts, self.delay_us, now)

    def due_transactions(self, now: int) -> list[TransactionSummary]:
        """The held transactions that may be applied now, oldest first, up to one commit's worth."""
        due: list[TransactionSummary] = []
        rows = 0
        if self.finished:
            return due
        limit = self.options.drain_window_rows if self.draining() else self.options.max_commit_rows
        for held in self.held:
            if not self.is_due(held, now):
                break
            if due and rows + held.rows > limit:
                break
            due.append(held)
            rows += held.rows
        return due

    def _window_filling(self, now: int) -> bool:
        """A drain writes full windows: it waits while the window is not full, nothing past the
        target arrived, the buffer has room and the funnel holds more. Steady apply never waits."""
        if not self.draining() or self.paused or not self.held or self.held_rows >= self.options.drain_window_rows:
            return False
        return self.is_due(self.held[-1], now) and not self._read_to_end()

    def _apply_due(self) -> int:
        now = self.clock()
        if self._window_filling(now):
            return 0
        due = self.due_transactions(now)
        excluded = set(self.position.excluded_txids)
        if self.pipeline.worker is not None:  # a drain of two windows or more: ``execute`` started it
            if due:  # decoded by the worker while this process writes the window before it
                previous = self.pipeline.windows[-1][1] if self.pipeline else self.position
                self.pipeline.submit(due, self._position_after(due, previous), excluded)
                for _ in due:
                    self.held.popleft()
                self.held_rows -= sum(held.rows for held in due)
            if len(self.pipeline) > 1 or (self.pipeline and not due):
                return self._write_window(*self.pipeline.oldest())
            return 0
        if not due:
            return 0
        started = time.perf_counter()
        position = self._position_after(due, self.position)
        # Excluded transactions (the erroneous ones a promote leaves out) are passed
        # over: the position moves past them, their rows are never applied.
        if self.draining():
            with gc_paused():  # each transaction is decoded and absorbed, then dropped: memory stays small
                self.sink.apply(net_effect(self._decode(held) for held in due if held.txid not in excluded), position)
            rows = sum(held.rows for held in due if held.txid not in excluded and held.kind is not Kind.HEARTBEAT)
        else:
            rows = self.sink.apply([self._decode(held) for held in due if held.txid not in excluded], position)
        for _ in due:
            self.held.popleft()
        self.held_rows -= sum(held.rows for held in due)
        return self._applied(due, position, rows, started)

    def _write_window(self, due: list[TransactionSummary], position: MirrorPosition, net: list[Transaction]) -> int:
        started = time.perf_counter()
        excluded = set(position.excluded_txids)
        with gc_paused():
            self.sink.apply(net, position)
        rows = sum(held.rows for held in due if held.txid not in excluded and held.kind is not Kind.HEARTBEAT)
        return self._applied(due, position, rows, started)

    def _applied(self, due: list[TransactionSummary], position: MirrorPosition, rows: int, started: float) -> int:
        self.position = position
        self.stats.applied_transactions += sum(1 for held in due if held.kind is not Kind.HEARTBEAT)
        self.stats.applied_rows += rows
        elapsed = time.perf_counter() - started
        self.stats.apply_seconds += elapsed
        self.stats.commits += 1
        for observe in self.apply_observers:
            observe(elapsed, len(due), rows)
        self.feed.commit(position.next_offset)
        return rows

    def _decode(self, held: TransactionSummary) -> Transaction:
        batches = []
        for index, payload in enumerate(held.payloads):
            try:
                batches.append(self.codec.decode(payload))
            except CodecError as exc:
                raise CodecError(f"{self.topic}[0] transaction {held.txid!r} from offset {held.first_offset} "
                                 f"(chunk {index}): {exc}", hint=exc.hint) from exc
        return Transaction(held.txid, held.commit_ts, held.kind, held.first_offset, held.last_offset, batches)

    def _position_after(self, transactions: list[TransactionSummary], previous: MirrorPosition) -> MirrorPosition:
        last = transactions[-1]
        snapshot_done = previous.snapshot_done or any(t.kind is Kind.SNAPSHOT_END for t in transactions)
        changes = [t for t in transactions if t.kind in (Kind.CHANGES, Kind.HEARTBEAT, Kind.SNAPSHOT_END)]
        valid_as_of = max([previous.valid_as_of or 0] + [t.commit_ts for t in changes]) or None
        return replace(previous, topic=self.topic, partition=0, next_offset=last.last_offset + 1,
                       last_txid=last.txid, last_commit_ts=last.commit_ts, valid_as_of=valid_as_of,
                       snapshot_done=snapshot_done)

    # -- status -------------------------------------------------------------------
    def status(self) -> dict:
        """The applier's view of itself, as published on the control topic (``MirrorStatus`` as JSON)."""
        return self.status_record().to_json()

    def status_record(self) -> MirrorStatus:
        now = self.clock()
        held = list(self.held)
        oldest = oldest_pending(held)
        pending = [h for h in held if h.kind is not Kind.HEARTBEAT]
        position = self.position
        return MirrorStatus(
            mirror=self.options.mirror, funnel=self.options.funnel,
            state="promoted" if self.finished else ("stopped" if self._closing else "running"),
            delay_s=self.delay_us / MICROS, next_offset=position.next_offset,
            last_txid=position.last_txid, last_commit_ts=position.last_commit_ts,
            valid_as_of=position.valid_as_of, snapshot_done=position.snapshot_done,
            held_transactions=len(pending), held_rows=sum(h.rows for h in pending),
            oldest_held_ts=oldest, behind_s=schedule.seconds_behind(oldest, self.delay_us, now),
            applied_transactions=self.stats.applied_transactions, applied_rows=self.stats.applied_rows,
            low_watermark=self.low_watermark, high_watermark=self.high_watermark,
            mode=position.mode, hold_until=position.hold_until,
            promoted_at=position.promoted_at, promote_target=position.promote_target,
            excluded_txids=tuple(position.excluded_txids),
            command=self.command.as_dict(self.stats) if self.command else None,
            sink_url=self.sink_url, epoch=self.sink.epoch(self.options.funnel, self.options.mirror),
            updated_at=now)

    def _publish_status(self, force: bool = False) -> None:
        """At most once per status interval (unless ``force``), also from inside long seeks, undos and
        drains (their progress callbacks), so that a busy applier never looks stopped.

        Checks the fence first: an applier that a newer one replaced must not publish its stale
        view over the newer one's (raises FencedError).
        """
        if self._fenced is not None:
            return
        if not force and self.monotonic() - self._last_status < self.options.status_interval_s:
            return
        self._last_status = self.monotonic()
        try:
            self.sink.check_fence(self.options.funnel, self.options.mirror)
        except FencedError as exc:
            self._fenced = exc
            raise
        try:
            self.control.write(status_key(self.options.mirror), self.status(), flush=False)
        except (FunnelError, BufferError) as exc:  # status is advisory; the mirror's state table is the truth
            log.warning("cannot publish status: %s", exc)

    def close(self) -> None:
        if self._started:
            self._closing = True
            try:
                self._publish_status(force=True)  # not once fenced: the newer applier's status stands
            except Exception as exc:  # closing must not hide the error that stopped us
                log.warning("publishing the final status: %s", exc)
            try:
                self.control.close()
            except Exception as exc:
                log.warning("closing control channel: %s", exc)
            self.feed.close()
            self._started = False
        self.pipeline.close()  # windows not written yet: their position was never recorded
        self.sink.close()

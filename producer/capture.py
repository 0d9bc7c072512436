"""The capture loop: initial copy once, then every committed change, into the funnel.

Resume rule: the funnel's tail says which source position was published last (read
after ``init_transactions`` has fenced and aborted any predecessor's open
transaction), and capture continues after it. Positions already in the funnel are
never published again; positions not in it are published, so a crash anywhere loses
nothing and doubles nothing.

Outages: when the broker or the source's connection fails while capture runs, capture
does in-process what a restart would do, again and again with a growing pause: a new
transactional producer (which aborts what the old one left open), the tail read again,
the source re-read from its last acknowledged position.  It gives up only after
``give_up_after_s`` without success, or at once when a newer capture of the source fenced
it (retrying would fence that one in turn).

Pipelining: while a backlog is drained, the Kafka commit of one step runs in the
background while the next step reads and encodes the following transactions; that
step waits for the commit before it produces anything, and only then acknowledges the
committed position to the source (``settle``).  So the source is never told more than
Kafka committed, and a failed commit is met by the next step and ridden through like
any other: what was read ahead is forgotten, and the source is rewound.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from funnel.control import ControlChannel, producer_key, table_key
from funnel.errors import FunnelError, TimeFunnelError
from funnel.records import CaptureStatus
from funnel.timeparse import format_duration
from producer.gc_pause import gc_paused
from producer.publisher import TIMEOUT_S, EventPublisher, FencedError, PendingCommit, now_us
from producer.sources.base import SourceDisconnected, SourceStopped, SourceTransaction

log = logging.getLogger("timefunnel.capture")

RETRY_FIRST_S = 0.5  # the first pause after a failure; it doubles up to RETRY_MAX_S
RETRY_MAX_S = 5.0
CLOSE_AFTER_FAILURE_S = 2.0  # what is still queued for a broker that is gone is not worth waiting for


class CaptureGaveUp(TimeFunnelError):
    """The broker or the source stayed unreachable longer than ``give_up_after_s``."""


class Snapshot(Protocol):
    """A consistent initial copy: its position and, when iterated, TableChanges chunks."""

    position: int

    def __iter__(self): ...


class Source(Protocol):
    """What the capture loop needs of a source adapter (SQLite, PostgreSQL).

    Optional: ``stop_waits_on(stop)`` for a source whose calls may wait long for the
    database (SQLite's write lock); it raises SourceStopped from such a wait once
    ``stop`` is set, and the capture ends as if stopped between two steps.
    """

    def install(self, resuming: bool = False) -> None: ...

    def snapshot(self, chunk_rows: int = ...) -> Snapshot: ...

    def seal(self) -> int | None: ...

    def transactions_after(self, position: int, limit_groups: int) -> list[SourceTransaction]: ...

    def acknowledge(self, position: int) -> None: ...

    def uninstall(self) -> list[str]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CaptureOptions:
    poll_interval_s: float = 0.2
    heartbeat_interval_s: float = 1.0
    # Many small source transactions per Kafka transaction: each Kafka commit costs
    # ~10 ms, so small transactions need large groups to keep up (bench/capture_postgres).
    groups_per_publish: int = 1000
    status_interval_s: float = 1.0
    # How long capture keeps retrying through a broker or source outage before it exits.
    give_up_after_s: float = 300.0


@dataclass
class CaptureStats:
    position: int | None = None
    last_commit_ts: int | None = None
    capture_lag_s: float = 0.0  # from source commit to committed in Kafka, last publish
    snapshot_rows: int = 0
    restarts: int = 0  # recoveries from a failed broker or source connection
    interrupted_since: float | None = None  # time.monotonic() when the current outage began


class Capture:
    """Runs one source into one funnel through a transactional publisher."""

    def __init__(self, source: Source, publisher: EventPublisher, control: ControlChannel | None = None,
                 options: CaptureOptions = CaptureOptions(), clock: Callable[[], int] = now_us) -> None:
        self.source = source
        self.publisher = publisher
        self.control = control
        self.options = options
        self.clock = clock
        self.stats = CaptureStats()
        self._last_publish = 0.0
        self._last_status = 0.0
        self._closing = False
        self._failed = False
        self._installed = False  # start() got as far as installing capture in the source
        # The Kafka transaction committing in the background, and the last source
        # transaction in it (see Pipelining in the module docstring).
        self._pending: tuple[PendingCommit, SourceTransaction] | None = None

    def start(self) -> int:
        """Find the resume position, install capture, make the initial copy if the funnel has none.

        The position comes first because a resumed capture must find the source as it was
        installed (SchemaChangedError otherwise), while a new one installs afresh.
        """
        position = self.publisher.start()
        self._install(position)
        self._publish_table_definitions()
        if position is None:
            position = self._initial_copy()
        self.stats.position = position
        log.info("capturing into %s from position %d", self.publisher.funnel, position)
        return position

    def _install(self, position: int | None) -> None:
        self.source.install(resuming=position is not None)
        self._installed = True

    def _publish_table_definitions(self) -> None:
        """Sources that know typed column definitions (PostgreSQL) publish them for mirrors."""
        describe = getattr(self.source, "table_definitions", None)
        if describe is None or self.control is None:
            return
        for definition in describe():
            self.control.write(table_key(definition["table"]), definition, flush=False)
        self.control.flush()

    def _initial_copy(self) -> int:
        snapshot = self.source.snapshot()
        rows = self.publisher.publish_snapshot(snapshot.position, _counting(snapshot, self.stats))
        log.info("initial copy: %d rows at position %d", rows, snapshot.position)
        return snapshot.position

    def run(self, stop: threading.Event | None = None) -> None:
        """Capture until ``stop`` is set, riding through outages (see the module docstring).

        Raises FencedError when a newer capture of this source took over, CaptureGaveUp
        when an outage outlasted ``give_up_after_s``, and any other TimeFunnelError that
        retrying cannot cure (a source that cannot be captured, a row too large).
        """
        stop = stop or threading.Event()
        # Waits for the database (SQLite's write lock) and the broker (a transactional
        # producer's start, during an outage) block where a SIGTERM is not seen: they
        # look at ``stop`` between short slices instead.
        for side in (self.source, self.publisher):
            stop_waits_on = getattr(side, "stop_waits_on", None)
            if stop_waits_on is not None:
                stop_waits_on(stop)
        try:
            self._loop(stop)
        except SourceStopped:
            log.info("capture stopped while the source waited for the database")
        except BaseException:
            self._failed = True
            raise
        finally:
            self.close()

    def _loop(self, stop: threading.Event) -> None:
        try:
            position: int | None = self.start()
        except (FunnelError, SourceDisconnected) as exc:  # e.g. the broker went away during the copy
            position = self.ride_through(exc, stop)
        backlog = False
        while position is not None and not stop.is_set():
            try:
                # Seal on a timer, not back to back: SQLite's write lock is not fair, and a
                # capture sealing in a tight loop would starve the application's writers.
                backlog, position = self.step(position, seal=not backlog)
            except (FunnelError, SourceDisconnected) as exc:
                position, backlog = self.ride_through(exc, stop), True
                continue
            if not backlog:
                stop.wait(self.options.poll_interval_s)

    def ride_through(self, failure: TimeFunnelError, stop: threading.Event) -> int | None:
        """Restart the publisher and rewind the source until both work; returns the
        position to continue from, or None when ``stop`` was set meanwhile.

        Raises FencedError at once, CaptureGaveUp once ``give_up_after_s`` passed without
        success.
        """
        if isinstance(failure, FencedError):
            raise failure
        self._drop_pending()
        give_up = self.options.give_up_after_s
        deadline = time.monotonic() + give_up
        pause = RETRY_FIRST_S
        self.stats.interrupted_since = time.monotonic()
        log.warning("capture interrupted, retrying for up to %s: %s", format_duration(give_up), failure)
        while True:
            if stop.wait(min(pause, max(0.0, deadline - time.monotonic()))):
                self._failed = True  # stopped mid-outage: do not wait on the broker while closing
                return None
            try:
                position = self._resume(deadline)
                self.stats.restarts += 1
                self.stats.interrupted_since = None
                log.warning("capture resumed at position %d", position)
                return position
            except FencedError:
                raise
            except (FunnelError, SourceDisconnected) as exc:
                failure = exc
                log.warning("capture still interrupted: %s", exc)
            if time.monotonic() >= deadline:
                raise CaptureGaveUp(
                    f"capture gave up after {format_duration(give_up)}: the broker or the source stayed "
                    f"unreachable (last error: {failure})",
                    hint="check that the broker and the source database are up and reachable, then start "
                         "capture again: it resumes exactly where it stopped (--give-up-after waits longer)"
                ) from failure
            pause = min(pause * 2, RETRY_MAX_S)

    def _resume(self, deadline: float) -> int:
        """What a restart of capture does: fence and read the tail, then rewind the source."""
        timeout = min(TIMEOUT_S, max(1.0, deadline - time.monotonic()))
        position = self.publisher.restart(timeout)
        if not self._installed:  # the outage cut start() short before it installed capture
            self._install(position)
        # Again, in case the outage cut start() short before them; the latest record wins.
        self._publish_table_definitions()
        if position is None:  # the initial copy never committed: make it again
            return self._initial_copy()
        # A source that holds what it read in memory (PostgreSQL's stream) reads again
        # from its last acknowledged position; SQLite reads its changelog every time.
        rewind = getattr(self.source, "rewind", None)
        if rewind is not None:
            rewind()
        return position

    def step(self, position: int, seal: bool = True) -> tuple[bool, int]:
        """Seal, publish what is new, acknowledge; heartbeat when idle.

        Returns (more sealed groups are waiting, the position read up to).  With more
        waiting, the commit of what this step published may still be in flight: the
        next step, ``settle`` or ``close`` waits for it and acknowledges it.
        Raises FencedError, FunnelError (a failed commit of this step or the last),
        SourceError, CodecError.
        """
        with gc_paused():  # see producer.gc_pause: a step makes a few containers per row, none in a cycle
            return self._step(position, seal)

    def _step(self, position: int, seal: bool) -> tuple[bool, int]:
        if seal:
            self.source.seal()
        transactions = self.source.transactions_after(position, self.options.groups_per_publish)
        backlog = len(transactions) >= self.options.groups_per_publish
        start_commit = getattr(self.publisher, "start_commit", None)
        if transactions and start_commit is not None:
            encoded = self.publisher.encode(transactions)  # while the last step's commit is in flight
            self.settle()
            self._pending = (start_commit(encoded), transactions[-1])
            position = transactions[-1].position
            if not backlog:  # nothing to read meanwhile: finish now
                self.settle()
        elif transactions:  # a publisher that commits in the foreground only
            self.settle()
            self.publisher.publish(transactions)
            position = transactions[-1].position
            self._acknowledge(transactions[-1])
        else:
            self.settle()
            if time.monotonic() - self._last_publish >= self.options.heartbeat_interval_s:
                self.publisher.heartbeat(position)
                self._last_publish = time.monotonic()
                self.stats.capture_lag_s = 0.0
                self.stats.position = position
        self._publish_status()
        return backlog, position

    def settle(self) -> None:
        """Waits for the Kafka transaction in flight, if any, then acknowledges its last
        position to the source.  Raises FencedError or FunnelError if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            commit, last = pending
            commit.wait()
            self._acknowledge(last)

    def _acknowledge(self, last: SourceTransaction) -> None:
        """Kafka committed everything up to ``last``: the source may forget it."""
        self.source.acknowledge(last.position)
        self._last_publish = time.monotonic()
        self.stats.capture_lag_s = max(0.0, (self.clock() - last.commit_ts) / 1e6)
        self.stats.last_commit_ts = last.commit_ts
        self.stats.position = last.position

    def _drop_pending(self) -> None:
        """After a failure: lets the commit in flight end, unacknowledged (the restart reads
        the funnel's tail, and the rewound source skips what is there)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending[0].wait()
            except TimeFunnelError as exc:
                log.warning("the Kafka transaction in flight did not commit either: %s", exc)

    def interrupted_s(self) -> float:
        """Seconds spent retrying through the current outage; 0 while capture publishes."""
        since = self.stats.interrupted_since
        return 0.0 if since is None else time.monotonic() - since

    def status(self) -> CaptureStatus:
        """What this capture reports on the control topic (``producer/<source>``)."""
        slot = getattr(self.source, "slot", None)
        return CaptureStatus(
            source=self.publisher.source, funnel=self.publisher.funnel,
            state="stopped" if self._closing else "running",
            position=self.stats.position, last_commit_ts=self.stats.last_commit_ts,
            restarts=self.stats.restarts, capture_lag_s=self.stats.capture_lag_s,
            published_transactions=self.publisher.published_transactions,
            published_events=self.publisher.published_events,
            published_rows=self.publisher.published_rows,
            published_bytes=self.publisher.published_bytes, updated_at=self.clock(),
            slot=slot if isinstance(slot, str) else None,
            # what a switchback's captures repeat (applier.switchback.reverse.forward_captures_ddl)
            capture_ddl=getattr(self.source, "capture_ddl", False) is True)

    def _publish_status(self, force: bool = False) -> None:
        if self.control is None:
            return
        if not force and time.monotonic() - self._last_status < self.options.status_interval_s:
            return
        self._last_status = time.monotonic()
        try:
            self.control.write(producer_key(self.publisher.source), self.status().to_json(), flush=False)
        except (FunnelError, BufferError) as exc:
            log.warning("cannot publish capture status: %s", exc)

    def close(self) -> None:
        self._closing = True  # the last status record says the capture stopped
        timeout = CLOSE_AFTER_FAILURE_S if self._failed else TIMEOUT_S
        try:
            self._settle_quietly()
            self._publish_status(force=True)
            if self.control is not None:
                self.control.close(timeout)
            self.publisher.close(timeout)
        finally:
            self.source.close()


    def _settle_quietly(self) -> None:
        """At close: the commit in flight is waited for and, if it committed, acknowledged;
        a failure is only logged (the capture is ending; the next one resumes exactly)."""
        try:
            self.settle()
        except TimeFunnelError as exc:
            self._failed = True
            log.warning("the last Kafka transaction of this capture did not commit: %s", exc)


def _counting(chunks, stats: CaptureStats):
    for chunk in chunks:
        stats.snapshot_rows += len(chunk.rows)
        yield chunk

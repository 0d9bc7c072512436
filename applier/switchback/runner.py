"""The switchback's steps: I/O around the pure state machine (``applier.switchback.state``).

``prepare`` runs in the foreground, like ``funnel capture`` and ``funnel apply``: it sets
up the reverse direction, then keeps production following the mirror until it is
stopped (SIGTERM, Ctrl-C) or ``complete`` takes over.  ``complete`` stops it through the
record (a running ``prepare`` watches it), runs the reverse pipeline itself for the last
mile, and goes on step by step.  Every step is recorded and idempotent, so a rerun of
either command after kill -9 goes on from the last recorded step.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from applier.applier import Applier, ApplierOptions
from applier.sinks import open_sink
from applier.switchback.compare import TableShape, compare_checksums, compare_tables, is_quiet, plan_reset
from applier.switchback.databases import Database, open_database
from applier.switchback.pipeline import CapturePort, ReversePipeline
from applier.switchback.state import (REVERSE_MIRROR, Phase, SwitchbackError, SwitchbackState, abort_plan, advance,
                                      complete_decision, failed, new_state, next_action, note, prepare_decision)
from applier.switchback.store import RecordWatcher, StateStore
from applier.transaction import MirrorPosition
from funnel.clock import now_us
from funnel.control import (STATUS_STALE_AFTER_S, ControlChannel, delay_key, producer_key, source_key,
                            status_is_fresh, status_key)
from funnel.errors import ConfigError, TimeFunnelError
from funnel.events import Kind
from funnel.identity import same_identity
from funnel.kafka import KafkaSettings, control_topic, data_topic, kafka_error
from funnel.reader import FunnelReader
from funnel.timeparse import format_duration, format_time
from funnel.topic import ADMIN_TIMEOUT_S, FunnelAdmin, FunnelSpec
from funnel.urls import without_password

HANDOVER_TIMEOUT_S = 30.0  # how long complete/abort wait for a running prepare to stop
PROGRESS_EVERY_S = 30.0
HookRunner = Callable[[str, dict[str, str]], dict]


@dataclass(frozen=True)
class CompleteOptions:
    """The button's settings. ``from_url``/``to_url`` override the record's (which carry no password)."""

    freeze_hook: str | None = None
    takeover_hook: str | None = None
    delay_s: float | None = None
    freeze_timeout_s: float = 30.0
    from_url: str | None = None
    to_url: str | None = None

    def validate(self) -> None:
        if self.freeze_timeout_s <= 0:
            raise ConfigError("--freeze-timeout must be positive")
        if self.delay_s is not None and self.delay_s < 0:
            raise ConfigError("the delay cannot be negative")


class Switchback:
    """Switchback of one promoted mirror of one funnel."""

    def __init__(self, kafka: KafkaSettings, funnel: str, mirror: str, port: CapturePort, run_hook: HookRunner,
                 echo: Callable[[str], None] = print, clock: Callable[[], int] = now_us,
                 poll_interval_s: float = 0.2) -> None:
        if not mirror or "/" in mirror:
            raise ConfigError(f"invalid mirror id {mirror!r}")
        self.kafka = kafka
        self.funnel = funnel
        self.mirror = mirror
        self.port = port
        self.run_hook = run_hook
        self.echo = echo
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.admin = FunnelAdmin(kafka)
        self.control = ControlChannel(kafka, funnel)
        self.store = StateStore(self.control, mirror)

    # == prepare ==========================================================================
    def prepare(self, to_url: str, from_url: str | None = None, source_name: str | None = None,
                stop: threading.Event | None = None) -> SwitchbackState:
        """Set up the reverse direction and keep production following the mirror until ``stop``
        or until ``complete``/``abort`` takes over.  Checks everything before it changes anything.

        Raises ConfigError for bad URLs, SwitchbackError when the mirror is unknown or not
        promoted, another switchback is under way, or the forward capture still runs.
        """
        stop = stop or threading.Event()
        info = self.admin.describe(self.funnel)
        records = self.control.read_all()
        previous = self.store.load(records)
        resuming = previous is not None and previous.active
        mirror_url = from_url or (previous.from_url if resuming else None) or self._mirror_url(records)
        mirror_db, production_db = self._open_sides(mirror_url, to_url)
        to_key = without_password(to_url)
        if resuming and to_key != previous.to_url and _names_same_database(to_url, previous.to_url):
            to_key = previous.to_url  # the same production, spelled differently
        decision = prepare_decision(previous, to_key, without_password(from_url) if from_url else None)
        self._check_promoted(mirror_db)
        production_db.check(must_exist=False)
        if decision == "new":
            self._refuse_running_capture(records)
            state = new_state(self.funnel, self.mirror, uuid.uuid4().hex[:8], without_password(mirror_url),
                              without_password(to_url), source_name or self._forward_source(records, to_url),
                              tuple(sorted(mirror_db.tables())), self.clock())
            state = self.store.save(state, previous)
            self.echo(f"switchback of mirror {self.mirror!r}: from {state.from_url} (promoted, serving) to "
                      f"{state.to_url} (production to rebuild), reverse funnel {state.reverse_funnel}")
        else:
            state = previous
            self.echo(f"resuming the switchback of mirror {self.mirror!r} ({state.phase.value}), reverse funnel "
                      f"{state.reverse_funnel}")
        state = self._ensure_reverse_funnel(state, info.retention_s)
        state = self._reset_production(state, mirror_db, production_db, to_url)
        return self._follow(state, mirror_url, to_url, stop)

    def _mirror_url(self, records: dict[str, dict]) -> str:
        status = records.get(status_key(self.mirror))
        if not status or not status.get("sink_url"):
            raise SwitchbackError(f"unknown mirror {self.mirror!r} on funnel {self.funnel!r}",
                                  hint="check the mirror id (`funnel status`), or pass --from URL of the mirror")
        return status["sink_url"]

    def _open_sides(self, mirror_url: str, to_url: str) -> tuple[Database, Database]:
        """Raises ConfigError for a bad URL, two different kinds or the same database however spelled
        (a hard link, a symlink, another host name or user), SwitchbackError for one that cannot be reached."""
        mirror_db, production_db = open_database(mirror_url), open_database(to_url)
        if mirror_db.kind != production_db.kind:
            raise ConfigError(f"the mirror is {mirror_db.kind} and production is {production_db.kind}: a "
                              f"switchback needs the same kind of database on both sides")
        if same_identity(mirror_db.identity(), production_db.identity()):
            raise ConfigError(f"--to {without_password(to_url)} is the mirror itself (the same database as "
                              f"{without_password(mirror_url)})", hint="--to names the original production to rebuild")
        return mirror_db, production_db

    def _check_promoted(self, mirror_db: Database) -> MirrorPosition:
        mirror_db.check(must_exist=True)
        position = mirror_db.read_position(self.funnel, self.mirror)
        if position is None:
            raise SwitchbackError(f"mirror {self.mirror!r} of funnel {self.funnel!r} has no state in "
                                  f"{without_password(mirror_db.url)}", hint="check --mirror and --from")
        if position.promoted_at is None:
            raise SwitchbackError(f"mirror {self.mirror!r} is not promoted ({position.mode}): a switchback starts "
                                  f"from a promoted mirror that serves the application",
                                  hint=f"promote it first: `funnel promote {self.mirror} --funnel {self.funnel}`")
        return position

    def _refuse_running_capture(self, records: dict[str, dict]) -> None:
        """A capture of the old production into the funnel must not run: production is rebuilt now.

        A stopped capture's last status looks fresh for a while, so a fresh one is read twice.
        """
        fresh = {key: value for key, value in records.items()
                 if key.startswith("producer/") and status_is_fresh(value, self.clock())}
        if not fresh:
            return
        time.sleep(2.5)
        again = self.control.read_all()
        for key, value in fresh.items():
            if again.get(key, {}).get("updated_at", 0) > value.get("updated_at", 0):
                raise SwitchbackError(f"the capture of funnel {self.funnel!r} (source {key.split('/', 1)[1]!r}) is "
                                      f"still running", hint="stop it first: production is rebuilt from the mirror")

    def _forward_source(self, records: dict[str, dict], to_url: str) -> str:
        sources = [key.split("/", 1)[1] for key in records if key.startswith("producer/")]
        return sources[0] if len(sources) == 1 else self.port.default_source_name(to_url)

    def _ensure_reverse_funnel(self, state: SwitchbackState, retention_s: float) -> SwitchbackState:
        if data_topic(state.reverse_funnel) in self.admin.topics():
            return state
        self.admin.create(FunnelSpec(state.reverse_funnel, retention_s))
        retention = format_duration(retention_s) if retention_s != float("inf") else "unlimited"
        return self._save(note(state, f"reverse funnel {state.reverse_funnel} created (retention {retention})",
                               self.clock()), state)

    def _reset_production(self, state: SwitchbackState, mirror_db: Database, production_db: Database,
                          to_url: str) -> SwitchbackState:
        """Empty production before the initial copy arrives, once: the reverse applier's state row
        in production says it is done (written last, so a crash before it redoes the reset)."""
        if production_db.read_position(state.reverse_funnel, REVERSE_MIRROR) is not None:
            return state
        removed = self.port.remove(to_url, self.funnel)
        plan = plan_reset(production_db.tables(), mirror_db.tables(), production_db.fold_case)
        production_db.reset(plan, mirror_db)
        production_db.write_position(MirrorPosition(state.reverse_funnel, REVERSE_MIRROR,
                                                    data_topic(state.reverse_funnel), 0, 0))
        summary = plan.summary()
        done = "; ".join(f"{what} {', '.join(names)}" for what, names in summary.items() if names) or "it was empty"
        text = f"production reset: {done}" + (f"; removed the old capture ({', '.join(removed)})" if removed else "")
        self.echo(text)
        return self._save(note(replace(state, reset=summary), text, self.clock()), state)

    def _pipeline(self, state: SwitchbackState, mirror_url: str, to_url: str) -> ReversePipeline:
        capture = self.port.open(mirror_url, state.reverse_funnel, f"switchback-{self.mirror}", list(state.tables),
                                 publish_status=True)
        reverse = state.reverse_funnel
        try:
            sink = open_sink(to_url, create_tables=True,
                             table_definitions=lambda: ControlChannel(self.kafka, reverse).table_definitions())
        except BaseException:
            capture.close()
            raise
        applier = Applier(self.kafka, sink, ApplierOptions(reverse, REVERSE_MIRROR, 0.0))
        applier.sink_url = without_password(to_url)
        return ReversePipeline(capture, applier, self.poll_interval_s)

    def _follow(self, state: SwitchbackState, mirror_url: str, to_url: str,
                stop: threading.Event) -> SwitchbackState:
        pipeline = self._pipeline(state, mirror_url, to_url)
        watcher = RecordWatcher(self.kafka, self.funnel)
        try:
            # A command that took over before the watcher started would go unseen: look once more.
            current = self.store.load()
            if current is None or _taken_over(current.as_record(), state):
                raise SwitchbackError(f"the switchback of mirror {self.mirror!r} is now "
                                      f"{current.phase.value if current else 'gone'}: prepare does not run",
                                      hint="see `funnel switchback status`")
            pipeline.start()
            self.echo(f"capturing the mirror into {state.reverse_funnel}; production applies it with delay 0 "
                      f"(the mirror keeps serving)")
            if state.phase is Phase.SYNCING:
                self._say_syncing()
            reported = time.monotonic()
            while not stop.is_set():
                pipeline.step()
                if state.phase is Phase.PREPARING and pipeline.copy_applied():
                    state = self._save(advance(state, Phase.SYNCING, self.clock(),
                                               "initial copy applied to production; following the mirror"), state)
                    self._say_syncing()
                seen = watcher.poll(self.store.key)
                if seen is not None and _taken_over(seen, state):
                    self.echo(f"switchback is now {seen.get('phase')}: prepare stops")
                    break
                if time.monotonic() - reported >= PROGRESS_EVERY_S:
                    reported = time.monotonic()
                    self.echo(_progress(pipeline))
            else:
                self.echo(f"prepare stopped ({state.phase.value}): production no longer follows the mirror until "
                          f"prepare or complete runs again")
        finally:
            watcher.close()
            pipeline.close()
        return state

    def _say_syncing(self) -> None:
        self.echo(f"syncing: production holds the initial copy and follows the mirror; run `funnel switchback "
                  f"complete --funnel {self.funnel} --mirror {self.mirror}` when ready")

    # == complete =========================================================================
    def complete(self, options: CompleteOptions) -> SwitchbackState:
        """Freeze, drain, verify, restart the forward funnel, take over, clean up; each step recorded.

        Raises SwitchbackError at the first step that fails, with the record saying where
        (a rerun goes on from there), ConfigError for bad options.
        """
        options.validate()
        info = self.admin.describe(self.funnel)
        if options.delay_s is not None and options.delay_s >= info.retention_s:
            raise ConfigError(f"delay {format_duration(options.delay_s)} is not shorter than funnel "
                              f"{self.funnel!r}'s retention {format_duration(info.retention_s)}")
        state = self.store.load()
        if complete_decision(state, self.mirror) == "done":
            self.echo(f"the switchback of mirror {self.mirror!r} is already done")
            return state
        mirror_url = _same_as(options.from_url, state.from_url, "--from")
        to_url = _same_as(options.to_url, state.to_url, "--to")
        mirror_db, production_db = self._open_sides(mirror_url, to_url)
        if state.phase is Phase.SYNCING:
            state = self._save(advance(state, Phase.COMPLETING, self.clock(), "complete takes over from prepare"),
                               state)
        if state.phase is Phase.COMPLETING:
            self._wait_prepare_stopped(state)
        if state.phase in (Phase.COMPLETING, Phase.FROZEN):
            state = self._freeze_and_drain(state, options, mirror_db, mirror_url, to_url)
        if state.phase is Phase.DRAINED:
            state = self._guarded(state, lambda s: self._verify(s, mirror_db, production_db))
        if state.phase is Phase.VERIFIED:
            state = self._guarded(state, lambda s: self._restart_forward(s, mirror_db, production_db, to_url))
        if state.phase is Phase.FORWARD_READY:
            state = self._guarded(state, lambda s: self._take_over(s, options, mirror_url, to_url))
        if state.phase is Phase.TAKEN_OVER:
            state = self._guarded(state, lambda s: self._finish(s, options, mirror_db, production_db, mirror_url))
        return state

    def _guarded(self, state: SwitchbackState, step: Callable[[SwitchbackState], SwitchbackState]) -> SwitchbackState:
        """Run a step; on an expected failure record it (the phase stays) and raise it on."""
        try:
            return step(state)
        except TimeFunnelError as exc:
            self._record_failure(state, str(exc))
            raise

    def _record_failure(self, state: SwitchbackState, error: str, back_to: Phase | None = None) -> None:
        try:
            current = self.store.load() or state
            moved = advance(current, back_to, self.clock(), "back to syncing") if back_to else current
            self.store.save(failed(moved, error, self.clock()), current)
        except TimeFunnelError as exc:  # the original error is the one to report
            self.echo(f"warning: could not record the failure: {exc}")

    def _wait_prepare_stopped(self, state: SwitchbackState) -> None:
        """Wait until no prepare runs the reverse pipeline (its applier's status is stopped or stale)."""
        if control_topic(state.reverse_funnel) not in self.admin.topics():
            return
        deadline = time.monotonic() + HANDOVER_TIMEOUT_S
        announced = False
        while True:
            status = ControlChannel(self.kafka, state.reverse_funnel).read_all().get(status_key(REVERSE_MIRROR))
            if not status or status.get("state") != "running" or \
                    (self.clock() - status.get("updated_at", 0)) / 1e6 > STATUS_STALE_AFTER_S:
                return
            if time.monotonic() > deadline:
                raise SwitchbackError(f"prepare still runs the reverse direction after {HANDOVER_TIMEOUT_S:.0f}s",
                                      hint="stop the `funnel switchback prepare` process, then rerun this command")
            if not announced:
                self.echo("waiting for the running prepare to hand over")
                announced = True
            time.sleep(0.5)

    def _freeze_and_drain(self, state: SwitchbackState, options: CompleteOptions, mirror_db: Database,
                          mirror_url: str, to_url: str) -> SwitchbackState:
        pipeline = self._pipeline(state, mirror_url, to_url)
        try:
            pipeline.start()
            if state.phase is Phase.COMPLETING:
                try:
                    state = self._freeze(state, options, pipeline, mirror_db, to_url)
                except TimeFunnelError as exc:
                    self._unfreeze_quietly(mirror_db)
                    self._record_failure(state, f"freeze failed, nothing frozen: {exc}", back_to=Phase.SYNCING)
                    raise
            return self._guarded(state, lambda s: self._drain(s, pipeline, mirror_db))
        finally:
            pipeline.close()

    def _unfreeze_quietly(self, mirror_db: Database) -> None:
        try:
            mirror_db.unfreeze()
        except TimeFunnelError as exc:
            self.echo(f"warning: could not unfreeze the mirror: {exc}")

    def _freeze(self, state: SwitchbackState, options: CompleteOptions, pipeline: ReversePipeline,
                mirror_db: Database, to_url: str) -> SwitchbackState:
        self._catch_up(pipeline)
        if options.freeze_hook:
            self.echo(f"freeze: running the freeze hook: {options.freeze_hook}")
            result = self.run_hook(options.freeze_hook, self._hook_env(state, "freeze", to_url))
            self.echo(_hook_line("freeze", result))
            if result["exit_code"] != 0:
                raise SwitchbackError(f"the freeze hook failed (exit {result['exit_code']})",
                                      hint="fix the hook and rerun `funnel switchback complete`")
        else:
            self.echo("freeze: no freeze hook given: waiting for the application to stop writing by itself")
        timeout = options.freeze_timeout_s
        self.echo(f"freeze: waiting up to {format_duration(timeout)} until no write reaches the mirror for "
                  f"{mirror_db.quiet_s:g}s")
        started = time.monotonic()
        deadline = started + timeout
        since_hook = mirror_db.write_marker()
        samples = [(started, since_hook)]
        while not is_quiet(samples, mirror_db.quiet_s):
            if time.monotonic() >= deadline:
                activity = mirror_db.activity_since(since_hook)
                raise SwitchbackError(f"writes still reach the mirror after {format_duration(timeout)}: "
                                      f"{activity.describe(time.monotonic() - started)}",
                                      hint="make the application stop writing to the mirror (check the freeze "
                                           "hook), then rerun `funnel switchback complete`; meanwhile rerun "
                                           "`funnel switchback prepare`: production follows the mirror only "
                                           "while it runs")
            pipeline.step_applier()  # production keeps following meanwhile
            time.sleep(0.1)
            samples.append((time.monotonic(), mirror_db.write_marker()))
            samples = [s for s in samples if s[0] >= samples[-1][0] - 2 * mirror_db.quiet_s] or samples[-1:]
        tables = sorted(mirror_db.tables())
        reason = f"timefunnel: {self.funnel}/{self.mirror} is frozen for switchback: write to {state.to_url}"
        marker = mirror_db.freeze(tables, max(deadline - time.monotonic(), 0.1), reason)
        at = self.clock()
        waited = round(time.monotonic() - started, 3)
        state = self._save(advance(state, Phase.FROZEN, at, f"mirror frozen (freeze point {marker})",
                                   freeze={"marker": marker, "at": at, "waited_s": waited}), state)
        self.echo(f"freeze: mirror frozen at {format_time(at)} after {waited:.1f}s: every write to it is refused "
                  f"from now on (freeze point {marker})")
        return state

    def _catch_up(self, pipeline: ReversePipeline) -> None:
        """Let production catch up while the application still writes, so the freeze stays short."""
        self.echo("freeze: production catches up with the mirror first")
        reported = time.monotonic()
        pipeline.step_capture(force=True)
        while not pipeline.caught_up():
            pipeline.step()
            if time.monotonic() - reported >= 5.0:
                reported = time.monotonic()
                self.echo(_progress(pipeline))

    def _drain(self, state: SwitchbackState, pipeline: ReversePipeline, mirror_db: Database) -> SwitchbackState:
        marker = state.freeze["marker"]
        self.echo("drain: capturing the mirror's last changes up to the freeze point")
        reported = time.monotonic()
        while not mirror_db.captured_through(marker, pipeline.capture):
            pipeline.step()
            if time.monotonic() - reported >= 5.0:
                reported = time.monotonic()
                self.echo(_progress(pipeline))
        self.echo("drain: waiting until production applied them")
        while not pipeline.caught_up():
            pipeline.step_applier()
        position = pipeline.applier.position
        self.echo(f"drain: production applied everything up to the freeze ({state.reverse_funnel} offset "
                  f"{position.next_offset})")
        return self._save(advance(state, Phase.DRAINED, self.clock(),
                                  f"production applied the reverse funnel up to offset {position.next_offset}"), state)

    def _verify(self, state: SwitchbackState, mirror_db: Database, production_db: Database) -> SwitchbackState:
        mirror_tables, production_tables = mirror_db.tables(), production_db.tables()
        problems = compare_tables(mirror_tables, production_tables, mirror_db.fold_case)
        sums = {}
        if not problems:
            fold = (lambda n: n.lower()) if production_db.fold_case else (lambda n: n)
            spelled = {fold(name): name for name in production_tables}
            shapes = list(mirror_tables.values())
            theirs_shapes = [TableShape(spelled[fold(s.name)], s.columns, s.key) for s in shapes]
            # The mirror's values as production's columns store them (see compare.py).
            declared = production_db.column_types(theirs_shapes)
            sums = mirror_db.checksums(shapes, {s.name: declared[t.name] for s, t in zip(shapes, theirs_shapes)})
            theirs = production_db.checksums(theirs_shapes)
            ours = {s.name: theirs[t.name] for s, t in zip(shapes, theirs_shapes)}
            problems = compare_checksums(sums, ours)
        if problems:
            raise SwitchbackError("production differs from the frozen mirror: " + "; ".join(problems[:5]),
                                  hint="`funnel switchback abort` unfreezes the mirror (it keeps serving); "
                                       "investigate, then prepare again")
        for table, checksum in sorted(sums.items()):
            self.echo(f"verify: {table}: {checksum.rows} rows, checksum {checksum.checksum} on both sides")
        return self._save(advance(state, Phase.VERIFIED, self.clock(),
                                  f"both sides equal: {len(sums)} tables, {sum(c.rows for c in sums.values())} rows",
                                  checksums={t: c.as_dict() for t, c in sums.items()}), state)

    def _restart_forward(self, state: SwitchbackState, mirror_db: Database, production_db: Database,
                         to_url: str) -> SwitchbackState:
        """A fresh forward funnel from the frozen point: the old timeline's events go, an initial copy
        of production is published, and the mirror (equal to it, verified) continues right after it."""
        forward = dict(state.forward or {})
        if "low_offset" not in forward:
            low, high = self._delete_old_events()
            forward["low_offset"] = high
            state = self._save(note(replace(state, forward=forward), f"forward funnel: deleted the old timeline "
                                    f"(offsets {low}..{high - 1})", self.clock()), state)
            self.echo(f"forward: deleted funnel {self.funnel!r}'s events before offset {high} (the timeline before "
                      f"the switchback)")
        capture = self.port.open(to_url, self.funnel, state.source_name, sorted(production_db.tables()),
                                 publish_status=False)
        try:
            position = capture.start()  # the initial copy, or the one a killed rerun already published
        finally:
            capture.close()
        self._record_source(state, production_db, position)
        first, end = self._fresh_copy(forward["low_offset"])
        # The mirror equals production (verified), but re-applies the copy all the same: then it
        # holds production's exact values (a REAL column's 5.0, not the 5 the application wrote
        # on the mirror), as if it had been made from production in the first place.
        mirror_db.write_position(MirrorPosition(self.funnel, self.mirror, data_topic(self.funnel), 0, first,
                                                valid_as_of=state.freeze["at"]))
        forward.update(next_offset=first, snapshot_end_offset=end.last_offset, snapshot_txid=end.txid,
                       copy_at=end.commit_ts, source_position=position)
        self.echo(f"forward: initial copy of production published as source {state.source_name!r} at offset "
                  f"{first}; mirror {self.mirror!r} continues from there (its promotion cleared)")
        return self._save(advance(state, Phase.FORWARD_READY, self.clock(),
                                  f"forward funnel restarts at offset {first} with an initial copy of production",
                                  forward=forward), state)

    def _record_source(self, state: SwitchbackState, production_db: Database, position: int) -> None:
        """Say which database the source continues in: the capture started after the switchback
        finds it there by identity, however production's file or URL is named (producer.lineage)."""
        self.control.write(source_key(state.source_name), {
            "source": state.source_name, "identity": production_db.identity(), "url": state.to_url,
            "mirror": self.mirror, "cycle": state.cycle, "position": position, "published_at": self.clock()})

    def _delete_old_events(self) -> tuple[int, int]:
        partition = TopicPartition(data_topic(self.funnel), 0)
        with FunnelReader(self.kafka, self.funnel) as reader:
            low, high = reader.watermarks()
        if high > low:
            try:
                futures = self.admin.admin.delete_records([TopicPartition(partition.topic, 0, high)],
                                                          request_timeout=ADMIN_TIMEOUT_S)
                for future in futures.values():
                    future.result(timeout=ADMIN_TIMEOUT_S)
            except KafkaException as exc:
                raise kafka_error(exc, f"cannot delete the old events of funnel {self.funnel!r}") from exc
        return low, high

    def _fresh_copy(self, from_offset: int) -> tuple[int, Any]:
        """First offset and end marker of the initial copy published after ``from_offset``."""
        with FunnelReader(self.kafka, self.funnel) as reader:
            low, high = reader.watermarks()
            copy = []
            for summary in reader.transactions(max(low, from_offset), high):
                if summary.kind in (Kind.SNAPSHOT, Kind.SNAPSHOT_END):
                    copy.append(summary)
                if summary.kind is Kind.SNAPSHOT_END:
                    return copy[0].first_offset, summary
        raise SwitchbackError(f"no initial copy of production in funnel {self.funnel!r} after offset "
                              f"{from_offset}", hint="is a forward capture running? stop it and rerun complete")

    def _take_over(self, state: SwitchbackState, options: CompleteOptions, mirror_url: str,
                   to_url: str) -> SwitchbackState:
        if options.takeover_hook:
            self.echo(f"takeover: running the takeover hook: {options.takeover_hook}")
            result = self.run_hook(options.takeover_hook, self._hook_env(state, "takeover", to_url))
            self.echo(_hook_line("takeover", result))
            if result["exit_code"] != 0:
                raise SwitchbackError(
                    f"the takeover hook failed (exit {result['exit_code']}); the mirror stays frozen",
                    hint="fix the hook and rerun `funnel switchback complete`, or move the service to production "
                         "by hand and rerun it without --takeover-hook")
            text = f"takeover hook exited 0 after {result['seconds']}s"
        else:
            self.echo(f"takeover: no takeover hook given: point the application at {state.to_url} yourself")
            text = "no takeover hook"
        return self._save(advance(state, Phase.TAKEN_OVER, self.clock(), text), state)

    def _finish(self, state: SwitchbackState, options: CompleteOptions, mirror_db: Database,
                production_db: Database, mirror_url: str) -> SwitchbackState:
        removed = self.port.remove(mirror_url, state.reverse_funnel)
        self.echo("cleanup: reverse capture removed from the mirror" + (f" ({', '.join(removed)})" if removed else ""))
        unfrozen = mirror_db.unfreeze()
        self.echo(f"cleanup: mirror unfrozen ({unfrozen} freeze objects dropped): from now on only `funnel apply` "
                  f"writes to it")
        production_db.forget_position(state.reverse_funnel, REVERSE_MIRROR)
        deleted = self._delete_reverse_funnel(state)
        self.echo(f"cleanup: reverse funnel {state.reverse_funnel} " + ("deleted" if deleted else "left in place"))
        if options.delay_s is not None:
            self.control.write(delay_key(self.mirror), {"delay_s": options.delay_s, "set_at": self.clock()})
            self.echo(f"delay of mirror {self.mirror!r} set to {format_duration(options.delay_s)}")
        delays = self.control.delays()
        delay = format_duration(delays[self.mirror]) if self.mirror in delays else "(set --delay)"
        state = self._save(advance(state, Phase.DONE, self.clock(), "switchback done"), state)
        self.echo(f"done: production is {state.to_url} again. Start the forward direction as before (the capture "
                  f"continues source {state.source_name!r}, recorded on the control topic):\n"
                  f"  funnel capture {state.to_url} --funnel {self.funnel}\n"
                  f"  funnel apply {state.from_url} --funnel {self.funnel} --mirror {self.mirror} --delay {delay}")
        return state

    def _delete_reverse_funnel(self, state: SwitchbackState) -> bool:
        """Best effort: the reverse funnel has done its job; a failure only leaves a topic behind."""
        topics = [t for t in (data_topic(state.reverse_funnel), control_topic(state.reverse_funnel))
                  if t in self.admin.topics()]
        if not topics:
            return True
        try:
            for future in self.admin.admin.delete_topics(topics, operation_timeout=ADMIN_TIMEOUT_S).values():
                future.result(timeout=ADMIN_TIMEOUT_S)
            return True
        except KafkaException as exc:
            self.echo(f"warning: could not delete the reverse funnel: {kafka_error(exc, 'delete topics')}")
            return False

    def _hook_env(self, state: SwitchbackState, step: str, to_url: str) -> dict[str, str]:
        env = {"FUNNEL_NAME": self.funnel, "FUNNEL_MIRROR": self.mirror, "FUNNEL_SWITCHBACK_STEP": step,
               "FUNNEL_SWITCHBACK_FROM": state.from_url, "FUNNEL_SWITCHBACK_TO": state.to_url,
               "FUNNEL_SINK_URL": without_password(to_url)}
        if state.freeze:
            env["FUNNEL_FROZEN_AT"] = format_time(state.freeze["at"])
        return env

    # == abort ============================================================================
    def abort(self, from_url: str | None = None, to_url: str | None = None) -> SwitchbackState:
        """Roll back what can be: stop prepare, unfreeze the mirror, remove the reverse capture and
        funnel.  Raises SwitchbackError when there is nothing to abort or it is past the point of no return."""
        self.admin.describe(self.funnel)
        state = self.store.load()
        plan = abort_plan(state, self.mirror)
        mirror_url = _same_as(from_url, state.from_url, "--from")
        production_url = _same_as(to_url, state.to_url, "--to")
        mirror_db, production_db = self._open_sides(mirror_url, production_url)
        if state.phase is not Phase.ABORTING:
            state = self._save(advance(state, Phase.ABORTING, self.clock(), "abort requested"), state)
        if plan.stop_prepare:
            self._wait_prepare_stopped(state)
        did = []
        if plan.unfreeze_mirror:
            did.append("mirror unfrozen: it accepts writes again" if mirror_db.unfreeze()
                       else "the mirror was not frozen")
        removed = self.port.remove(mirror_url, state.reverse_funnel)
        did.append("reverse capture removed from the mirror" + (f" ({', '.join(removed)})" if removed else ""))
        production_db.forget_position(state.reverse_funnel, REVERSE_MIRROR)
        did.append("reverse applier's state removed from production")
        did.append(f"reverse funnel {state.reverse_funnel} " + ("deleted" if self._delete_reverse_funnel(state)
                                                                else "could not be deleted"))
        for line in did:
            self.echo(f"abort: {line}")
        for line in plan.cannot_undo:
            self.echo(f"abort: not undone: {line}")
        self.echo(f"abort: mirror {self.mirror!r} stays promoted and serves the application")
        return self._save(advance(state, Phase.ABORTED, self.clock(), "aborted: " + "; ".join(did)), state)

    # == status ===========================================================================
    def status(self) -> dict[str, Any]:
        """The record, what to do next, and what the reverse direction reports right now."""
        self.admin.describe(self.funnel)
        records = self.control.read_all()
        state = self.store.load(records)
        report: dict[str, Any] = {"funnel": self.funnel, "mirror": self.mirror,
                                  "switchback": state.as_record() if state else None, "reverse": None}
        if state is None:
            known, promoted = self._promotion(records)
            report["mirror_promoted"] = promoted
            report["next"] = next_action(None, self.mirror, known=known, promoted=promoted)
            return report
        if state.active:
            try:
                report["mirror_frozen"] = open_database(state.from_url).frozen()
            except TimeFunnelError as exc:  # e.g. a PostgreSQL mirror whose password is not in the environment
                report["mirror_frozen"] = f"unknown: {exc}"
        if state.active and control_topic(state.reverse_funnel) in self.admin.topics():
            reverse = ControlChannel(self.kafka, state.reverse_funnel).read_all()
            applier = reverse.get(status_key(REVERSE_MIRROR))
            capture = reverse.get(producer_key(f"switchback-{self.mirror}"))
            now = self.clock()
            report["reverse"] = {
                "running": bool(applier) and applier.get("state") == "running" and status_is_fresh(applier, now),
                "production_valid_as_of": (applier or {}).get("valid_as_of"),
                "production_next_offset": (applier or {}).get("next_offset"),
                "captured_position": (capture or {}).get("position"),
            }
        running = report["reverse"]["running"] if report["reverse"] else (False if state.active else None)
        report["next"] = next_action(state, self.mirror, prepare_running=running)
        return report

    def _promotion(self, records: dict[str, dict]) -> tuple[bool, bool | None]:
        """(an applier reported the mirror, it is promoted): the mirror's own state row says, else
        its applier's last status (None when neither tells)."""
        status = records.get(status_key(self.mirror))
        if not status:
            return False, None
        try:
            position = open_database(status["sink_url"]).read_position(self.funnel, self.mirror) \
                if status.get("sink_url") else None
        except TimeFunnelError:  # e.g. a PostgreSQL mirror whose password is not in the environment
            position = None
        if position is not None:
            return True, position.promoted_at is not None
        return True, (status["promoted_at"] is not None) if "promoted_at" in status else None

    # == helpers ==========================================================================
    def _save(self, state: SwitchbackState, expected: SwitchbackState) -> SwitchbackState:
        return self.store.save(state, expected)

    def close(self) -> None:
        self.control.close()


def _names_same_database(url: str, other: str) -> bool:
    """Both URLs name one database (compared by identity); False when either cannot be told."""
    try:
        a, b = open_database(url), open_database(other)
        return a.kind == b.kind and same_identity(a.identity(), b.identity())
    except TimeFunnelError:
        return False


def _same_as(given: str | None, recorded: str, option: str) -> str:
    """The URL to use: the recorded one (no password), or ``given`` if it names the same database."""
    if given is None:
        return recorded
    if without_password(given) != recorded and not _names_same_database(given, recorded):
        raise SwitchbackError(f"{option} {without_password(given)} is not the switchback's {recorded}",
                              hint=f"omit {option}, or abort the switchback and prepare a new one")
    return given


def _taken_over(seen: dict[str, Any], state: SwitchbackState) -> bool:
    """A record written by another command means prepare must stop: complete or abort took over."""
    return seen.get("cycle") != state.cycle or seen.get("phase") not in (Phase.PREPARING.value, Phase.SYNCING.value)


def _progress(pipeline: ReversePipeline) -> str:
    position = pipeline.applier.position
    valid = format_time(position.valid_as_of) if position and position.valid_as_of else "-"
    stats = pipeline.applier.stats
    return (f"progress: production valid as of {valid}, applied {stats.applied_transactions} tx / "
            f"{stats.applied_rows} rows, captured up to position {pipeline.position}")


def _hook_line(step: str, result: dict) -> str:
    output = (result.get("output") or "").rstrip()
    return f"{step}: hook exited {result['exit_code']} after {result['seconds']}s" + (f":\n{output}" if output else "")

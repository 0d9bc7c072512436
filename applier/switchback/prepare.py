"""``switchback prepare``: set up the reverse direction, then keep production following the mirror.

It runs in the foreground, like ``funnel capture`` and ``funnel apply``, until it is
stopped (SIGTERM, Ctrl-C) or ``complete``/``abort`` take over through the record, which
it watches.  Everything is checked before anything changes; every step is recorded and
idempotent, so a rerun after kill -9 goes on from the last recorded step.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from applier.switchback.compare import plan_reset
from applier.switchback.context import SwitchbackContext, names_same_database
from applier.switchback.databases import Database
from applier.switchback.reverse import forward_captures_ddl, open_pipeline, progress_line
from applier.switchback.state import Phase, SwitchbackState, advance, new_state, note, prepare_decision, reverse_funnel_name
from funnel.errors import SwitchbackError
from funnel.records import REVERSE_MIRROR
from applier.switchback.store import RecordWatcher
from applier.transaction import MirrorPosition
from funnel.control import ControlState
from funnel.errors import SourceError
from funnel.kafka import data_topic
from funnel.timeparse import format_duration
from funnel.topic import FunnelSpec
from funnel.urls import without_password

PROGRESS_EVERY_S = 30.0


def prepare(ctx: SwitchbackContext, to_url: str, from_url: str | None = None, source_name: str | None = None,
            stop: threading.Event | None = None) -> SwitchbackState:
    """Set up the reverse direction and keep production following the mirror until ``stop``
    or until ``complete``/``abort`` takes over.  Checks everything before it changes anything.

    Raises ConfigError for bad URLs, SwitchbackError when the mirror is unknown or not
    promoted, another switchback is under way, or the forward capture still runs.
    """
    stop = stop or threading.Event()
    info = ctx.admin.describe(ctx.funnel)
    records = ctx.control.read_all()
    previous = ctx.store.load(records)
    resuming = previous is not None and previous.active
    mirror_url = from_url or (previous.from_url if resuming else None) or _mirror_url(ctx, records)
    mirror_db, production_db = ctx.open_sides(mirror_url, to_url)
    to_key = without_password(to_url)
    if resuming and to_key != previous.to_url and names_same_database(to_url, previous.to_url):
        to_key = previous.to_url  # the same production, spelled differently
    decision = prepare_decision(previous, to_key, without_password(from_url) if from_url else None)
    _check_promoted(ctx, mirror_db)
    production_db.check(must_exist=False)
    if decision == "new":
        _refuse_running_capture(ctx, records)
        cycle = uuid.uuid4().hex[:8]
        source_name = source_name or _forward_source(ctx, records, to_url)
        _check_capturable(ctx, mirror_url, reverse_funnel_name(ctx.funnel, cycle), mirror_db.tables(),
                          forward_captures_ddl(ctx, source_name))
        state = new_state(ctx.funnel, ctx.mirror, cycle, without_password(mirror_url),
                          without_password(to_url), source_name, tuple(sorted(mirror_db.tables())), ctx.clock())
        state = ctx.store.save(state, previous)
        ctx.echo(f"switchback of mirror {ctx.mirror!r}: from {state.from_url} (promoted, serving) to "
                 f"{state.to_url} (production to rebuild), reverse funnel {state.reverse_funnel}")
    else:
        state = previous
        ctx.echo(f"resuming the switchback of mirror {ctx.mirror!r} ({state.phase.value}), reverse funnel "
                 f"{state.reverse_funnel}")
    state = _ensure_reverse_funnel(ctx, state, info.retention_s)
    state = _reset_production(ctx, state, mirror_db, production_db, to_url)
    return _follow(ctx, state, mirror_url, to_url, stop)


def _check_capturable(ctx: SwitchbackContext, mirror_url: str, reverse_funnel: str, tables: Iterable[str],
                      capture_ddl: bool) -> None:
    """The reverse capture must be able to follow every table of the mirror (and, like the
    forward capture, its schema changes): found out before production is reset, not after."""
    try:
        ctx.port.check(mirror_url, reverse_funnel, sorted(tables), capture_ddl)
    except SourceError as exc:
        if capture_ddl and "--capture-ddl" in str(exc):
            raise SwitchbackError(
                f"the mirror cannot be captured for the switchback: {exc}",
                hint="the forward capture captured schema changes (--capture-ddl), so the switchback captures the "
                     "mirror the same way: pass --from with a superuser role of the mirror, then rerun prepare; "
                     "nothing was changed") from exc
        raise SwitchbackError(
            f"the mirror cannot be captured for the switchback: {exc}",
            hint="a switchback captures every table of the mirror, so each needs a primary key "
                 "(keyless tables such as pgbench_history are not supported yet): add one on the "
                 "mirror, then rerun prepare; nothing was changed") from exc


def _mirror_url(ctx: SwitchbackContext, records: dict[str, dict]) -> str:
    status = ControlState(records).status(ctx.mirror)
    if status is None or not status.sink_url:
        raise SwitchbackError(f"unknown mirror {ctx.mirror!r} on funnel {ctx.funnel!r}",
                              hint="check the mirror id (`funnel status`), or pass --from URL of the mirror")
    return status.sink_url


def _check_promoted(ctx: SwitchbackContext, mirror_db: Database) -> MirrorPosition:
    mirror_db.check(must_exist=True)
    position = mirror_db.read_position(ctx.funnel, ctx.mirror)
    if position is None:
        raise SwitchbackError(f"mirror {ctx.mirror!r} of funnel {ctx.funnel!r} has no state in "
                              f"{without_password(mirror_db.url)}", hint="check --mirror and --from")
    if position.promoted_at is None:
        raise SwitchbackError(f"mirror {ctx.mirror!r} is not promoted ({position.mode}): a switchback starts "
                              f"from a promoted mirror that serves the application",
                              hint=f"promote it first: `funnel promote {ctx.mirror} --funnel {ctx.funnel}`")
    return position


def _refuse_running_capture(ctx: SwitchbackContext, records: dict[str, dict]) -> None:
    """A capture of the old production into the funnel must not run: production is rebuilt now.

    A stopped capture's last status looks fresh for a while, so a fresh one is read twice.
    """
    fresh = {source: capture for source, capture in ControlState(records).captures().items()
             if capture.fresh(ctx.clock())}
    if not fresh:
        return
    time.sleep(2.5)
    again = ctx.control.state().captures()
    for source, capture in fresh.items():
        if source in again and again[source].updated_at > capture.updated_at:
            raise SwitchbackError(f"the capture of funnel {ctx.funnel!r} (source {source!r}) is "
                                  f"still running", hint="stop it first: production is rebuilt from the mirror")


def _forward_source(ctx: SwitchbackContext, records: dict[str, dict], to_url: str) -> str:
    sources = list(ControlState(records).captures())
    return sources[0] if len(sources) == 1 else ctx.port.default_source_name(to_url)


def _ensure_reverse_funnel(ctx: SwitchbackContext, state: SwitchbackState, retention_s: float) -> SwitchbackState:
    if data_topic(state.reverse_funnel) in ctx.admin.topics():
        return state
    ctx.admin.create(FunnelSpec(state.reverse_funnel, retention_s))
    retention = format_duration(retention_s) if retention_s != float("inf") else "unlimited"
    return ctx.save(note(state, f"reverse funnel {state.reverse_funnel} created (retention {retention})",
                         ctx.clock()), state)


def _reset_production(ctx: SwitchbackContext, state: SwitchbackState, mirror_db: Database, production_db: Database,
                      to_url: str) -> SwitchbackState:
    """Empty production before the initial copy arrives, once: the reverse applier's state row
    in production says it is done (written last, so a crash before it redoes the reset)."""
    if production_db.read_position(state.reverse_funnel, REVERSE_MIRROR) is not None:
        return state
    removed = ctx.port.remove(to_url, ctx.funnel)
    plan = plan_reset(production_db.tables(), mirror_db.tables(), production_db.fold_case)
    production_db.reset(plan, mirror_db)
    production_db.write_position(MirrorPosition(state.reverse_funnel, REVERSE_MIRROR,
                                                data_topic(state.reverse_funnel), 0, 0))
    summary = plan.summary()
    done = "; ".join(f"{what} {', '.join(names)}" for what, names in summary.items() if names) or "it was empty"
    text = f"production reset: {done}" + (f"; removed the old capture ({', '.join(removed)})" if removed else "")
    ctx.echo(text)
    return ctx.save(note(replace(state, reset=summary), text, ctx.clock()), state)


def _follow(ctx: SwitchbackContext, state: SwitchbackState, mirror_url: str, to_url: str,
            stop: threading.Event) -> SwitchbackState:
    pipeline = open_pipeline(ctx, state, mirror_url, to_url)
    watcher = RecordWatcher(ctx.kafka, ctx.funnel)
    try:
        # A command that took over before the watcher started would go unseen: look once more.
        current = ctx.store.load()
        if current is None or _taken_over(current.as_record(), state):
            raise SwitchbackError(f"the switchback of mirror {ctx.mirror!r} is now "
                                  f"{current.phase.value if current else 'gone'}: prepare does not run",
                                  hint="see `funnel switchback status`")
        pipeline.start()
        ctx.echo(f"capturing the mirror into {state.reverse_funnel}; production applies it with delay 0 "
                 f"(the mirror keeps serving)")
        if state.phase is Phase.SYNCING:
            _say_syncing(ctx)
        reported = time.monotonic()
        while not stop.is_set():
            pipeline.step()
            if state.phase is Phase.PREPARING and pipeline.copy_applied():
                state = ctx.save(advance(state, Phase.SYNCING, ctx.clock(),
                                         "initial copy applied to production; following the mirror"), state)
                _say_syncing(ctx)
            seen = watcher.poll(ctx.store.key)
            if seen is not None and _taken_over(seen, state):
                ctx.echo(f"switchback is now {seen.get('phase')}: prepare stops")
                break
            if time.monotonic() - reported >= PROGRESS_EVERY_S:
                reported = time.monotonic()
                ctx.echo(progress_line(pipeline))
        else:
            ctx.echo(f"prepare stopped ({state.phase.value}): production no longer follows the mirror until "
                     f"prepare or complete runs again")
    finally:
        watcher.close()
        pipeline.close()
    return state


def _say_syncing(ctx: SwitchbackContext) -> None:
    ctx.echo(f"syncing: production holds the initial copy and follows the mirror; run `funnel switchback "
             f"complete --funnel {ctx.funnel} --mirror {ctx.mirror}` when ready")


def _taken_over(seen: dict[str, Any], state: SwitchbackState) -> bool:
    """A record written by another command means prepare must stop: complete or abort took over."""
    return seen.get("cycle") != state.cycle or seen.get("phase") not in (Phase.PREPARING.value, Phase.SYNCING.value)

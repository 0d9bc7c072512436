"""``switchback complete``, first steps: freeze the mirror, then drain what it wrote into production.

Production catches up while the application still writes, so the freeze is short; the
freeze hook stops the application, the mirror is frozen once no write reaches it, and
the drain captures and applies everything up to the freeze point.
"""
from __future__ import annotations

import time

from applier.switchback.compare import is_quiet
from applier.switchback.context import SwitchbackContext
from applier.switchback.databases import Database
from applier.switchback.pipeline import ReversePipeline
from applier.switchback.reverse import open_pipeline, progress_line
from applier.switchback.state import Phase, SwitchbackState, advance
from funnel.errors import SwitchbackError
from funnel.errors import TimeFunnelError
from funnel.timeparse import format_duration, format_time

REPORT_EVERY_S = 5.0


def freeze_and_drain(ctx: SwitchbackContext, state: SwitchbackState, freeze_hook: str | None, timeout_s: float,
                     mirror_db: Database, mirror_url: str, to_url: str) -> SwitchbackState:
    """From COMPLETING (or FROZEN after a crash) to DRAINED.  A failed freeze leaves nothing
    frozen and goes back to SYNCING; raises SwitchbackError."""
    pipeline = open_pipeline(ctx, state, mirror_url, to_url)
    try:
        pipeline.start()
        if state.phase is Phase.COMPLETING:
            try:
                state = _freeze(ctx, state, freeze_hook, timeout_s, pipeline, mirror_db, to_url)
            except TimeFunnelError as exc:
                _unfreeze_quietly(ctx, mirror_db)
                ctx.record_failure(state, f"freeze failed, nothing frozen: {exc}", back_to=Phase.SYNCING)
                raise
        return ctx.guarded(state, lambda s: _drain(ctx, s, pipeline, mirror_db))
    finally:
        pipeline.close()


def _unfreeze_quietly(ctx: SwitchbackContext, mirror_db: Database) -> None:
    try:
        mirror_db.unfreeze()
    except TimeFunnelError as exc:
        ctx.echo(f"warning: could not unfreeze the mirror: {exc}")


def _freeze(ctx: SwitchbackContext, state: SwitchbackState, freeze_hook: str | None, timeout_s: float,
            pipeline: ReversePipeline, mirror_db: Database, to_url: str) -> SwitchbackState:
    _catch_up(ctx, pipeline)
    if freeze_hook:
        result = ctx.run_step_hook(state, "freeze", freeze_hook, to_url)
        if not result.ok:
            raise SwitchbackError(f"the freeze hook failed (exit {result.exit_code})",
                                  hint="fix the hook and rerun `funnel switchback complete`")
    else:
        ctx.echo("freeze: no freeze hook given: waiting for the application to stop writing by itself")
    ctx.echo(f"freeze: waiting up to {format_duration(timeout_s)} until no write reaches the mirror for "
             f"{mirror_db.quiet_s:g}s")
    started = time.monotonic()
    deadline = started + timeout_s
    since_hook = mirror_db.write_marker()
    samples = [(started, since_hook)]
    while not is_quiet(samples, mirror_db.quiet_s):
        if time.monotonic() >= deadline:
            activity = mirror_db.activity_since(since_hook)
            raise SwitchbackError(f"writes still reach the mirror after {format_duration(timeout_s)}: "
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
    reason = f"timefunnel: {ctx.funnel}/{ctx.mirror} is frozen for switchback: write to {state.to_url}"
    marker = mirror_db.freeze(tables, max(deadline - time.monotonic(), 0.1), reason)
    at = ctx.clock()
    waited = round(time.monotonic() - started, 3)
    state = ctx.save(advance(state, Phase.FROZEN, at, f"mirror frozen (freeze point {marker})",
                             freeze={"marker": marker, "at": at, "waited_s": waited}), state)
    ctx.echo(f"freeze: mirror frozen at {format_time(at)} after {waited:.1f}s: every write to it is refused "
             f"from now on (freeze point {marker})")
    return state


def _catch_up(ctx: SwitchbackContext, pipeline: ReversePipeline) -> None:
    """Let production catch up while the application still writes, so the freeze stays short."""
    ctx.echo("freeze: production catches up with the mirror first")
    reported = time.monotonic()
    pipeline.step_capture(force=True)
    while not pipeline.caught_up():
        pipeline.step()
        if time.monotonic() - reported >= REPORT_EVERY_S:
            reported = time.monotonic()
            ctx.echo(progress_line(pipeline))


def _drain(ctx: SwitchbackContext, state: SwitchbackState, pipeline: ReversePipeline,
           mirror_db: Database) -> SwitchbackState:
    marker = state.freeze["marker"]
    ctx.echo("drain: capturing the mirror's last changes up to the freeze point")
    reported = time.monotonic()
    while not mirror_db.captured_through(marker, pipeline.capture):
        pipeline.step()
        if time.monotonic() - reported >= REPORT_EVERY_S:
            reported = time.monotonic()
            ctx.echo(progress_line(pipeline))
    ctx.echo("drain: waiting until production applied them")
    while not pipeline.caught_up():
        pipeline.step_applier()
    position = pipeline.applier.position
    ctx.echo(f"drain: production applied everything up to the freeze ({state.reverse_funnel} offset "
             f"{position.next_offset})")
    return ctx.save(advance(state, Phase.DRAINED, ctx.clock(),
                            f"production applied the reverse funnel up to offset {position.next_offset}"), state)

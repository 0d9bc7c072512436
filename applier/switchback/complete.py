"""``switchback complete``, the button: freeze, drain, verify, restart the forward funnel,
take over, clean up.  Each step is recorded; a rerun after a failure or kill -9 goes on
from the last recorded step."""
from __future__ import annotations

from dataclasses import dataclass

from applier.switchback.compare import TableShape, compare_checksums, compare_tables
from applier.switchback.context import SwitchbackContext, same_as
from applier.switchback.databases import Database
from applier.switchback.forward import restart_forward
from applier.switchback.freeze import freeze_and_drain
from applier.switchback.reverse import delete_reverse_funnel, wait_prepare_stopped
from applier.switchback.state import Phase, SwitchbackState, advance, complete_decision
from funnel.records import REVERSE_MIRROR
from funnel.errors import SwitchbackError
from funnel.control import delay_key
from funnel.errors import ConfigError
from funnel.timeparse import format_duration


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


def complete(ctx: SwitchbackContext, options: CompleteOptions) -> SwitchbackState:
    """Freeze, drain, verify, restart the forward funnel, take over, clean up; each step recorded.

    Raises SwitchbackError at the first step that fails, with the record saying where
    (a rerun goes on from there), ConfigError for bad options.
    """
    options.validate()
    info = ctx.admin.describe(ctx.funnel)
    if options.delay_s is not None and options.delay_s >= info.retention_s:
        raise ConfigError(f"delay {format_duration(options.delay_s)} is not shorter than funnel "
                          f"{ctx.funnel!r}'s retention {format_duration(info.retention_s)}")
    state = ctx.store.load()
    if complete_decision(state, ctx.mirror) == "done":
        ctx.echo(f"the switchback of mirror {ctx.mirror!r} is already done")
        return state
    mirror_url = same_as(options.from_url, state.from_url, "--from")
    to_url = same_as(options.to_url, state.to_url, "--to")
    mirror_db, production_db = ctx.open_sides(mirror_url, to_url)
    if state.phase is Phase.SYNCING:
        state = ctx.save(advance(state, Phase.COMPLETING, ctx.clock(), "complete takes over from prepare"), state)
    if state.phase is Phase.COMPLETING:
        wait_prepare_stopped(ctx, state)
    if state.phase in (Phase.COMPLETING, Phase.FROZEN):
        state = freeze_and_drain(ctx, state, options.freeze_hook, options.freeze_timeout_s, mirror_db, mirror_url,
                                 to_url)
    if state.phase is Phase.DRAINED:
        state = ctx.guarded(state, lambda s: _verify(ctx, s, mirror_db, production_db))
    if state.phase is Phase.VERIFIED:
        state = ctx.guarded(state, lambda s: restart_forward(ctx, s, mirror_db, production_db, to_url))
    if state.phase is Phase.FORWARD_READY:
        state = ctx.guarded(state, lambda s: _take_over(ctx, s, options, to_url))
    if state.phase is Phase.TAKEN_OVER:
        state = ctx.guarded(state, lambda s: _finish(ctx, s, options, mirror_db, production_db, mirror_url))
    return state


def _verify(ctx: SwitchbackContext, state: SwitchbackState, mirror_db: Database,
            production_db: Database) -> SwitchbackState:
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
        ctx.echo(f"verify: {table}: {checksum.rows} rows, checksum {checksum.checksum} on both sides")
    return ctx.save(advance(state, Phase.VERIFIED, ctx.clock(),
                            f"both sides equal: {len(sums)} tables, {sum(c.rows for c in sums.values())} rows",
                            checksums={t: c.as_dict() for t, c in sums.items()}), state)


def _take_over(ctx: SwitchbackContext, state: SwitchbackState, options: CompleteOptions,
               to_url: str) -> SwitchbackState:
    if options.takeover_hook:
        result = ctx.run_step_hook(state, "takeover", options.takeover_hook, to_url)
        if not result.ok:
            raise SwitchbackError(
                f"the takeover hook failed (exit {result.exit_code}); the mirror stays frozen",
                hint="fix the hook and rerun `funnel switchback complete`, or move the service to production "
                     "by hand and rerun it without --takeover-hook")
        text = f"takeover hook exited 0 after {result.seconds}s"
    else:
        ctx.echo(f"takeover: no takeover hook given: point the application at {state.to_url} yourself")
        text = "no takeover hook"
    return ctx.save(advance(state, Phase.TAKEN_OVER, ctx.clock(), text), state)


def _finish(ctx: SwitchbackContext, state: SwitchbackState, options: CompleteOptions, mirror_db: Database,
            production_db: Database, mirror_url: str) -> SwitchbackState:
    removed = ctx.port.remove(mirror_url, state.reverse_funnel)
    ctx.echo("cleanup: reverse capture removed from the mirror" + (f" ({', '.join(removed)})" if removed else ""))
    unfrozen = mirror_db.unfreeze()
    ctx.echo(f"cleanup: mirror unfrozen ({unfrozen} freeze objects dropped): from now on only `funnel apply` "
             f"writes to it")
    production_db.forget_position(state.reverse_funnel, REVERSE_MIRROR)
    deleted = delete_reverse_funnel(ctx, state)
    ctx.echo(f"cleanup: reverse funnel {state.reverse_funnel} " + ("deleted" if deleted else "left in place"))
    if options.delay_s is not None:
        ctx.control.write(delay_key(ctx.mirror), {"delay_s": options.delay_s, "set_at": ctx.clock()})
        ctx.echo(f"delay of mirror {ctx.mirror!r} set to {format_duration(options.delay_s)}")
    delays = ctx.control.delays()
    delay = format_duration(delays[ctx.mirror]) if ctx.mirror in delays else "(set --delay)"
    state = ctx.save(advance(state, Phase.DONE, ctx.clock(), "switchback done"), state)
    ctx.echo(f"done: production is {state.to_url} again. Start the forward direction as before (the capture "
             f"continues source {state.source_name!r}, recorded on the control topic):\n"
             f"  funnel capture {state.to_url} --funnel {ctx.funnel}\n"
             f"  funnel apply {state.from_url} --funnel {ctx.funnel} --mirror {ctx.mirror} --delay {delay}")
    return state

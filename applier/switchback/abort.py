"""``switchback abort``: roll back what can be; the mirror keeps (or goes back to) serving."""
from __future__ import annotations

from applier.switchback.context import SwitchbackContext, same_as
from applier.switchback.reverse import delete_reverse_funnel, wait_prepare_stopped
from applier.switchback.state import Phase, SwitchbackState, abort_plan, advance
from funnel.records import REVERSE_MIRROR


def abort(ctx: SwitchbackContext, from_url: str | None = None, to_url: str | None = None) -> SwitchbackState:
    """Stop prepare, unfreeze the mirror, remove the reverse capture and funnel (``state.abort_plan``
    says what applies).  Raises SwitchbackError when there is nothing to abort or it is past the
    point of no return."""
    ctx.admin.describe(ctx.funnel)
    state = ctx.store.load()
    plan = abort_plan(state, ctx.mirror)
    mirror_url = same_as(from_url, state.from_url, "--from")
    production_url = same_as(to_url, state.to_url, "--to")
    mirror_db, production_db = ctx.open_sides(mirror_url, production_url)
    if state.phase is not Phase.ABORTING:
        state = ctx.save(advance(state, Phase.ABORTING, ctx.clock(), "abort requested"), state)
    if plan.stop_prepare:
        wait_prepare_stopped(ctx, state)
    did = []
    if plan.unfreeze_mirror:
        did.append("mirror unfrozen: it accepts writes again" if mirror_db.unfreeze()
                   else "the mirror was not frozen")
    removed = ctx.port.remove(mirror_url, state.reverse_funnel)
    did.append("reverse capture removed from the mirror" + (f" ({', '.join(removed)})" if removed else ""))
    production_db.forget_position(state.reverse_funnel, REVERSE_MIRROR)
    did.append("reverse applier's state removed from production")
    did.append(f"reverse funnel {state.reverse_funnel} " + ("deleted" if delete_reverse_funnel(ctx, state)
                                                            else "could not be deleted"))
    for line in did:
        ctx.echo(f"abort: {line}")
    for line in plan.cannot_undo:
        ctx.echo(f"abort: not undone: {line}")
    ctx.echo(f"abort: mirror {ctx.mirror!r} stays promoted and serves the application")
    return ctx.save(advance(state, Phase.ABORTED, ctx.clock(), "aborted: " + "; ".join(did)), state)

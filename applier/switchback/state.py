"""The switchback's state machine: pure, persisted as one JSON record per mirror.

A switchback rebuilds the original production from the promoted mirror and then
returns to the normal direction.  It spans two long commands and several processes,
any of which may be killed at any moment, so every step is recorded on the forward
funnel's control topic under ``switchback/<mirror>`` and every step is idempotent:
a rerun of ``prepare`` or ``complete`` redoes the last unrecorded step and goes on.

Phases, in order (``complete`` moves through the second half)::

    preparing -> syncing -> completing -> frozen -> drained -> verified
              -> forward_ready -> taken_over -> done
    (any phase before forward_ready) -> aborting -> aborted
    completing -> syncing (a freeze that failed: nothing was frozen)

- preparing: the reverse funnel is made, production is reset and the initial copy is
  under way (``prepare`` runs).
- syncing: production holds the initial copy and follows the mirror with delay 0.
- completing: ``complete`` took the reverse pipeline over from ``prepare``; a failed
  freeze goes back to syncing (nothing was frozen).
- frozen: the mirror refuses writes; the freeze point (changelog sequence or LSN) is known.
- drained: production applied everything captured up to the freeze point.
- verified: row counts and checksums are equal on both sides.
- forward_ready: the forward funnel starts afresh at the frozen point and the mirror's
  position says so (its promotion is cleared).  The funnel's older events were deleted:
  from here on the switchback can only go forward.
- taken_over: the takeover hook moved the service to production.
- done: the mirror is unfrozen and the reverse capture removed; run the forward
  ``funnel capture`` and ``funnel apply`` as before.

No I/O here: the phases (``prepare``, ``complete``, ``abort``, ``report``) read and write the
record and call these functions to decide.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from funnel.control import switchback_key
# The record lives with the other control records (funnel.records), so that `funnel status`
# reads it typed; this module is its state machine.
from funnel.errors import SwitchbackError
from funnel.records import SwitchbackPhase as Phase
from funnel.records import SwitchbackState

COMPLETE_PHASES = (Phase.COMPLETING, Phase.FROZEN, Phase.DRAINED, Phase.VERIFIED, Phase.FORWARD_READY,
                   Phase.TAKEN_OVER, Phase.DONE)
# Where an abort cannot take things back: the forward funnel's old events are deleted
# and the mirror follows production again.
NO_RETURN = (Phase.FORWARD_READY, Phase.TAKEN_OVER, Phase.DONE)

ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.PREPARING: frozenset({Phase.SYNCING, Phase.ABORTING}),
    Phase.SYNCING: frozenset({Phase.COMPLETING, Phase.ABORTING}),
    # A freeze that fails (hook, timeout) goes back to syncing: nothing was frozen.
    Phase.COMPLETING: frozenset({Phase.FROZEN, Phase.SYNCING, Phase.ABORTING}),
    Phase.FROZEN: frozenset({Phase.DRAINED, Phase.ABORTING}),
    Phase.DRAINED: frozenset({Phase.VERIFIED, Phase.ABORTING}),
    Phase.VERIFIED: frozenset({Phase.FORWARD_READY, Phase.ABORTING}),
    Phase.FORWARD_READY: frozenset({Phase.TAKEN_OVER}),
    Phase.TAKEN_OVER: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
    Phase.ABORTING: frozenset({Phase.ABORTED}),
    Phase.ABORTED: frozenset(),
}


def record_key(mirror: str) -> str:
    return switchback_key(mirror)


def reverse_funnel_name(funnel: str, cycle: str) -> str:
    """The reverse funnel of one switchback cycle: a fresh topic per cycle, never reused."""
    return f"{funnel}.switchback-{cycle}"


def new_state(funnel: str, mirror: str, cycle: str, from_url: str, to_url: str, source_name: str,
              tables: tuple[str, ...], now: int) -> SwitchbackState:
    state = SwitchbackState(funnel=funnel, mirror=mirror, cycle=cycle, phase=Phase.PREPARING, from_url=from_url,
                            to_url=to_url, reverse_funnel=reverse_funnel_name(funnel, cycle),
                            source_name=source_name, started_at=now, updated_at=now, tables=tables)
    return note(state, "switchback prepared: record made", now)


def advance(state: SwitchbackState, phase: Phase, now: int, text: str, **changes: Any) -> SwitchbackState:
    """``state`` moved to ``phase``, with a history line.  Raises SwitchbackError for a move the
    machine does not allow (a bug or a record changed by hand)."""
    if phase not in ALLOWED[state.phase]:
        raise SwitchbackError(f"switchback of mirror {state.mirror!r} cannot go from {state.phase.value} "
                              f"to {phase.value}")
    moved = replace(state, phase=phase, error=None, **changes)
    return note(moved, text, now)


def note(state: SwitchbackState, text: str, now: int) -> SwitchbackState:
    """``state`` with one more history line (the phase stays)."""
    entry = {"at": now, "phase": state.phase.value, "step": text}
    return replace(state, updated_at=now, history=state.history + (entry,))


def failed(state: SwitchbackState, error: str, now: int) -> SwitchbackState:
    return replace(note(state, f"failed: {error}", now), error=error)


# -- decisions ------------------------------------------------------------------------


def prepare_decision(state: SwitchbackState | None, to_url: str, from_url: str | None) -> str:
    """``"new"`` (start a cycle) or ``"resume"`` (rerun of an unfinished prepare).

    ``to_url``/``from_url`` are redacted like the record's.  Raises SwitchbackError when
    another switchback of this mirror is under way or past preparing.
    """
    if state is None or not state.active:
        return "new"
    if state.phase in (Phase.PREPARING, Phase.SYNCING):
        if state.to_url != to_url:
            raise SwitchbackError(
                f"a switchback of mirror {state.mirror!r} to {state.to_url} is already {state.phase.value}",
                hint="rerun prepare with that --to, or `funnel switchback abort` it first")
        if from_url is not None and state.from_url != from_url:
            raise SwitchbackError(
                f"the switchback of mirror {state.mirror!r} reads from {state.from_url}, not {from_url}",
                hint="rerun prepare without --from, or abort it first")
        return "resume"
    if state.phase is Phase.ABORTING:
        raise SwitchbackError(f"the switchback of mirror {state.mirror!r} is being aborted",
                              hint="rerun `funnel switchback abort` to finish the abort, then prepare again")
    raise SwitchbackError(f"the switchback of mirror {state.mirror!r} is past preparing ({state.phase.value})",
                          hint="rerun `funnel switchback complete` to finish it")


def complete_decision(state: SwitchbackState | None, mirror: str) -> str:
    """``"done"`` (nothing left) or ``"resume"``.  Raises SwitchbackError when there is nothing
    to complete or prepare has not finished the initial copy."""
    if state is None:
        raise SwitchbackError(f"no switchback of mirror {mirror!r} was prepared",
                              hint=f"run `funnel switchback prepare --mirror {mirror} --to URL` first")
    if state.phase is Phase.DONE:
        return "done"
    if state.phase in (Phase.ABORTING, Phase.ABORTED):
        raise SwitchbackError(f"the switchback of mirror {mirror!r} was aborted",
                              hint="prepare a new one with `funnel switchback prepare`")
    if state.phase is Phase.PREPARING:
        raise SwitchbackError(f"the switchback of mirror {mirror!r} is not prepared yet: production does not "
                              f"hold the initial copy", hint="(re)run `funnel switchback prepare` until it says "
                                                             "'syncing'")
    return "resume"


@dataclass(frozen=True)
class AbortPlan:
    """What ``abort`` will do, in order, and what it cannot undo."""

    stop_prepare: bool
    unfreeze_mirror: bool
    remove_reverse_capture: bool = True
    forget_production_state: bool = True
    delete_reverse_funnel: bool = True
    cannot_undo: tuple[str, ...] = ()


def abort_plan(state: SwitchbackState | None, mirror: str) -> AbortPlan:
    """Raises SwitchbackError when there is nothing to abort or it is too late."""
    if state is None or state.phase is Phase.ABORTED:
        raise SwitchbackError(f"no switchback of mirror {mirror!r} to abort")
    if state.phase in NO_RETURN:
        raise SwitchbackError(
            f"the switchback of mirror {mirror!r} is past the point of no return ({state.phase.value}): the "
            f"forward funnel already starts afresh from production",
            hint="finish it with `funnel switchback complete`")
    return AbortPlan(
        stop_prepare=state.phase in (Phase.PREPARING, Phase.SYNCING, Phase.ABORTING),
        # From `completing` on a freeze may have been put in place before it was recorded.
        unfreeze_mirror=state.phase.order >= Phase.COMPLETING.order,
        cannot_undo=(f"production at {state.to_url} keeps what prepare made of it (emptied tables and the part "
                     f"of the copy it received): its contents from before the switchback are not restored",))


def next_action(state: SwitchbackState | None, mirror: str, known: bool = True, promoted: bool | None = None,
                prepare_running: bool | None = None) -> str:
    """One line for `switchback status`: what the operator does next.

    Without a switchback, ``known`` says whether an applier ever reported the mirror and
    ``promoted`` whether it is promoted (None: cannot tell); with one, ``prepare_running``
    whether the reverse direction runs now (None: cannot tell).
    """
    if state is None:
        if not known:
            return (f"unknown mirror {mirror!r}: no applier ever reported it on this funnel; check the id "
                    f"(`funnel status` lists the mirrors)")
        if promoted is False:
            return (f"mirror {mirror!r} is not promoted: a switchback returns from a promoted mirror that serves "
                    f"the application; nothing to do")
        return f"nothing under way: `funnel switchback prepare --mirror {mirror} --to URL` starts one"
    funnel = f"--funnel {state.funnel} --mirror {mirror}"
    prepare = f"`funnel switchback prepare {funnel} --to {state.to_url}`"
    complete = f"`funnel switchback complete {funnel} --freeze-hook CMD --takeover-hook CMD`"
    if state.phase is Phase.PREPARING and prepare_running:
        return "prepare runs: production receives the initial copy; wait until it says syncing"
    if state.phase is Phase.SYNCING and prepare_running is False:
        # Typically after a failed freeze: complete stopped prepare and ran the reverse direction itself.
        return (f"prepare is not running, so production does not follow the mirror: rerun {prepare}; when it "
                f"says syncing: {complete}")
    return {
        Phase.PREPARING: f"(re)run {prepare} until it says syncing",
        Phase.SYNCING: f"keep prepare running; when ready: {complete}",
        Phase.ABORTING: f"rerun `funnel switchback abort {funnel}`",
        Phase.ABORTED: f"nothing under way: `funnel switchback prepare {funnel} --to URL` starts a new one",
        Phase.DONE: f"start the forward capture on {state.to_url} and `funnel apply {state.from_url} "
                    f"--funnel {state.funnel} --mirror {mirror}`",
    }.get(state.phase, f"rerun `funnel switchback complete {funnel}` to finish")

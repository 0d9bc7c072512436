"""``switchback status``: the record, what to do next, and what the reverse direction reports now."""
from __future__ import annotations

from typing import Any

from applier.switchback.context import SwitchbackContext
from applier.switchback.databases import open_database
from applier.switchback.state import next_action
from funnel.records import REVERSE_MIRROR
from funnel.control import ControlChannel, status_key
from funnel.errors import TimeFunnelError
from funnel.kafka import control_topic


def status(ctx: SwitchbackContext) -> dict[str, Any]:
    """{"funnel", "mirror", "switchback": the record or None, "reverse": what the reverse direction
    reports or None, "next": what to do next, and "mirror_frozen"/"mirror_promoted" when known}."""
    ctx.admin.describe(ctx.funnel)
    records = ctx.control.read_all()
    state = ctx.store.load(records)
    report: dict[str, Any] = {"funnel": ctx.funnel, "mirror": ctx.mirror,
                              "switchback": state.as_record() if state else None, "reverse": None}
    if state is None:
        known, promoted = _promotion(ctx, records)
        report["mirror_promoted"] = promoted
        report["next"] = next_action(None, ctx.mirror, known=known, promoted=promoted)
        return report
    if state.active:
        try:
            report["mirror_frozen"] = open_database(state.from_url).frozen()
        except TimeFunnelError as exc:  # e.g. a PostgreSQL mirror whose password is not in the environment
            report["mirror_frozen"] = f"unknown: {exc}"
    if state.active and control_topic(state.reverse_funnel) in ctx.admin.topics():
        reverse = ControlChannel(ctx.kafka, state.reverse_funnel).state()
        applier = reverse.status(REVERSE_MIRROR)
        capture = reverse.captures().get(f"switchback-{ctx.mirror}")
        report["reverse"] = {
            "running": applier is not None and applier.running(ctx.clock()),
            "production_valid_as_of": applier.valid_as_of if applier else None,
            "production_next_offset": applier.next_offset if applier else None,
            "captured_position": capture.position if capture else None,
        }
    running = report["reverse"]["running"] if report["reverse"] else (False if state.active else None)
    report["next"] = next_action(state, ctx.mirror, prepare_running=running)
    return report


def _promotion(ctx: SwitchbackContext, records: dict[str, dict]) -> tuple[bool, bool | None]:
    """(an applier reported the mirror, it is promoted): the mirror's own state row says, else
    its applier's last status (None when neither tells)."""
    status_record = records.get(status_key(ctx.mirror))
    if not status_record:
        return False, None
    try:
        position = open_database(status_record["sink_url"]).read_position(ctx.funnel, ctx.mirror) \
            if status_record.get("sink_url") else None
    except TimeFunnelError:  # e.g. a PostgreSQL mirror whose password is not in the environment
        position = None
    if position is not None:
        return True, position.promoted_at is not None
    return True, (status_record["promoted_at"] is not None) if "promoted_at" in status_record else None

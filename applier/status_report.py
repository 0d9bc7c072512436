"""What `funnel status` reports: every mirror and capture of a funnel, from real state.

Positions come from what appliers and captures publish on the control topic (their
own state); pending counts come from the funnel itself (watermarks and a header-only
scan from each mirror's next offset), not from estimates.  The derived numbers are the
shared definitions of ``funnel.records`` and ``applier.schedule``.
"""
from __future__ import annotations

import math
from typing import Any

from applier import schedule
from applier.startpoint import start_offset
from funnel.clock import now_us
from funnel.control import ControlChannel
from funnel.errors import EventsExpiredError
from funnel.events import Kind
from funnel.reader import FunnelReader
from funnel.records import (MirrorStatus, SwitchbackPhase, SwitchbackState, oldest_pending, oldest_pending_age_s,
                            retention_headroom_s)
from funnel.topic import FunnelAdmin


def mirror_position(mirror: str, status: MirrorStatus | None, switchback: SwitchbackState | None, reader: FunnelReader,
                    low: int, now: int) -> tuple[str, int, bool]:
    """(state, next offset, expired) of a mirror, from its status record and what else the funnel knows.

    A mirror that never ran starts where ``applier.startpoint`` says (the applier's own
    rule); a promoted mirror applies nothing, so nothing can expire for it; after
    `switchback complete` the mirror continues at the fresh initial copy, whatever its
    last status (from before the switchback) said.
    """
    promoted = status is not None and status.promoted
    if status is not None and status.fresh(now):
        return status.state, status.next_offset, not promoted and status.next_offset < low
    forward = switchback.forward_next_offset if switchback else None
    if forward is not None and (status is None or status.updated_at < switchback.updated_at):
        state = "not running (switched back)" if switchback.phase is SwitchbackPhase.DONE else "switching back"
        return state, forward, forward < low
    if status is None:
        try:
            return "never ran", start_offset(reader, mirror), False
        except EventsExpiredError:
            return "never ran", low, True
    if promoted:
        return "promoted", status.next_offset, False
    return "not running", status.next_offset, status.next_offset < low


def mirror_report(mirror: str, delay_s: float | None, status: MirrorStatus | None, reader: FunnelReader,
                  low: int, high: int, retention_s: float, now: int,
                  switchback: SwitchbackState | None = None) -> dict[str, Any]:
    """What `funnel status` says about one mirror."""
    state, next_offset, expired = mirror_position(mirror, status, switchback, reader, low, now)
    pending = ([] if state == "promoted" else
               [t for t in reader.transactions(max(next_offset, low), high) if t.kind is not Kind.HEARTBEAT])
    oldest = oldest_pending(pending)
    delay_us = int((delay_s or 0) * 1e6)
    headroom = retention_headroom_s(oldest, retention_s, now)
    return {
        "mirror": mirror,
        "state": state,
        "delay_s": delay_s,
        "valid_as_of": status.valid_as_of if status else None,
        "next_offset": next_offset,
        "pending_transactions": len(pending),
        "pending_events": sum(t.events for t in pending),
        "pending_rows": sum(t.rows for t in pending),
        "oldest_pending_age_s": oldest_pending_age_s(oldest, now),
        "behind_s": schedule.seconds_behind(oldest, delay_us, now),
        "retention_headroom_s": None if math.isinf(headroom) else headroom,
        "expired": expired,
        "status_age_s": status.age_s(now) if status else None,
    }


def funnel_report(kafka, funnel_name: str, now: int | None = None) -> dict[str, Any]:
    """The whole report of `funnel status --json`. Raises FunnelError for an unknown funnel."""
    now = now or now_us()
    info = FunnelAdmin(kafka).describe(funnel_name)
    control = ControlChannel(kafka, funnel_name).state()
    with FunnelReader(kafka, funnel_name) as reader:
        low, high = reader.watermarks()
        reports = []
        for m in control.mirrors():
            delay = control.delay(m)
            reports.append(mirror_report(m, delay.delay_s if delay else None, control.status(m), reader, low, high,
                                         info.retention_s, now, control.switchback(m)))
    producers = []
    for capture in control.captures().values():
        producers.append({**capture.to_json(), "state": capture.reported_state(now),
                          "status_age_s": capture.age_s(now)})
    return {"funnel": funnel_name, "retention_s": None if math.isinf(info.retention_s) else info.retention_s,
            "low_watermark": low, "high_watermark": high, "mirrors": reports, "producers": producers, "now": now}

"""``funnel status --funnel NAME [--json]``: every mirror and producer of a funnel, from real state.

Positions come from what appliers and captures publish on the control topic (their
own state); pending counts come from the funnel itself (watermarks and a header-only
scan from each mirror's next offset), not from estimates.
"""
from __future__ import annotations

import math
import time
from typing import Any

import click

from applier import schedule
from applier.startpoint import start_offset
from funnel.cli.options import echo_json, funnel_option, kafka_options, kafka_settings
from funnel.control import ControlChannel, status_is_fresh
from funnel.errors import EventsExpiredError
from funnel.events import Kind
from funnel.reader import FunnelReader
from funnel.timeparse import format_duration, format_time
from funnel.topic import FunnelAdmin



# Phases of a switchback from which the mirror's state row points into the fresh forward funnel.
_FORWARD_PHASES = ("forward_ready", "taken_over", "done")


def mirror_position(mirror: str, status: dict | None, switchback: dict | None, reader: FunnelReader, low: int,
                    now: int) -> tuple[str, int, bool]:
    """(state, next offset, expired) of a mirror, from its status record and what else the funnel knows.

    A mirror that never ran starts where ``applier.startpoint`` says (the applier's own
    rule); a promoted mirror applies nothing, so nothing can expire for it; after
    `switchback complete` the mirror continues at the fresh initial copy, whatever its
    last status (from before the switchback) said.
    """
    promoted = bool(status) and (status.get("state") == "promoted" or status.get("mode") == "promoted")
    if status_is_fresh(status, now):
        return status["state"], status["next_offset"], not promoted and status["next_offset"] < low
    forward = (switchback or {}).get("forward") or {}
    if (switchback or {}).get("phase") in _FORWARD_PHASES and "next_offset" in forward and (
            status is None or status.get("updated_at", 0) < switchback.get("updated_at", 0)):
        state = "not running (switched back)" if switchback["phase"] == "done" else "switching back"
        return state, forward["next_offset"], forward["next_offset"] < low
    if status is None:
        try:
            return "never ran", start_offset(reader, mirror), False
        except EventsExpiredError:
            return "never ran", low, True
    if promoted:
        return "promoted", status["next_offset"], False
    return "not running", status["next_offset"], status["next_offset"] < low


def mirror_report(mirror: str, delay_s: float | None, status: dict | None, reader: FunnelReader,
                  low: int, high: int, retention_s: float, now: int,
                  switchback: dict | None = None) -> dict[str, Any]:
    """What `funnel status` says about one mirror."""
    state, next_offset, expired = mirror_position(mirror, status, switchback, reader, low, now)
    pending = ([] if state == "promoted" else
               [t for t in reader.transactions(max(next_offset, low), high) if t.kind is not Kind.HEARTBEAT])
    oldest = pending[0].commit_ts if pending else None
    delay_us = int((delay_s or 0) * 1e6)
    return {
        "mirror": mirror,
        "state": state,
        "delay_s": delay_s,
        "valid_as_of": (status or {}).get("valid_as_of"),
        "next_offset": next_offset,
        "pending_transactions": len(pending),
        "pending_events": sum(t.events for t in pending),
        "pending_rows": sum(t.rows for t in pending),
        "oldest_pending_age_s": (now - oldest) / 1e6 if oldest else 0.0,
        "behind_s": schedule.seconds_behind(oldest, delay_us, now),
        "retention_headroom_s": (None if math.isinf(retention_s)
                                 else ((oldest or now) + retention_s * 1e6 - now) / 1e6),
        "expired": expired,
        "status_age_s": (now - status["updated_at"]) / 1e6 if status else None,
    }


def funnel_report(kafka, funnel_name: str, now: int | None = None) -> dict[str, Any]:
    now = now or time.time_ns() // 1000
    info = FunnelAdmin(kafka).describe(funnel_name)
    records = ControlChannel(kafka, funnel_name).read_all()
    mirrors = sorted({key.split("/", 1)[1] for key in records if key.startswith(("delay/", "status/"))})
    with FunnelReader(kafka, funnel_name) as reader:
        low, high = reader.watermarks()
        reports = [mirror_report(m, (records.get(f"delay/{m}") or {}).get("delay_s"), records.get(f"status/{m}"),
                                 reader, low, high, info.retention_s, now, records.get(f"switchback/{m}"))
                   for m in mirrors]
    producers = []
    for key, value in sorted(records.items()):
        if key.startswith("producer/"):
            producers.append({**value, "state": value.get("state") if status_is_fresh(value, now) else "not running",
                              "status_age_s": (now - value["updated_at"]) / 1e6})
    return {"funnel": funnel_name, "retention_s": None if math.isinf(info.retention_s) else info.retention_s, "low_watermark": low,
            "high_watermark": high, "mirrors": reports, "producers": producers, "now": now}


def _headroom(seconds: float | None) -> str:
    return "unlimited" if seconds is None else format_duration(max(0.0, seconds))


@click.command()
@funnel_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@kafka_options
def status(funnel_name: str, as_json: bool, bootstrap: str | None, settings: tuple[str, ...]) -> None:
    """Show each mirror's delay, valid-as-of time, pending work and headroom, and the producers."""
    report = funnel_report(kafka_settings(bootstrap, settings), funnel_name)
    if as_json:
        echo_json(report)
        return
    retention = format_duration(report["retention_s"]) if report["retention_s"] is not None else "unlimited"
    click.echo(f"funnel {funnel_name}: retention {retention}, "
               f"offsets {report['low_watermark']}..{report['high_watermark']}")
    for m in report["mirrors"]:
        valid = format_time(m["valid_as_of"]) if m["valid_as_of"] else "-"
        delay = format_duration(m["delay_s"]) if m["delay_s"] is not None else "-"
        click.echo(f"  mirror {m['mirror']}: {m['state']}, delay {delay}, valid as of {valid}, "
                   f"pending {m['pending_transactions']} tx / {m['pending_rows']} rows, "
                   f"oldest {m['oldest_pending_age_s']:.1f}s, behind {m['behind_s']:.1f}s, "
                   f"headroom {_headroom(m['retention_headroom_s'])}"
                   + ("  EXPIRED: re-initialise" if m["expired"] else ""))
    for p in report["producers"]:
        click.echo(f"  producer {p['source']}: {p['state']}, position {p['position']}, "
                   f"capture lag {p['capture_lag_s']:.2f}s, published {p['published_transactions']} tx")
    if not report["mirrors"] and not report["producers"]:
        click.echo("  no mirror or producer has reported yet")

"""``funnel status --funnel NAME [--json]``: every mirror and producer of a funnel, from real state.

The report is ``applier.status_report.funnel_report``; this module renders it.
"""
from __future__ import annotations

import click

from applier.status_report import funnel_report
from funnel.cli.options import echo_json, funnel_option, kafka_options, kafka_settings
from funnel.timeparse import format_duration, format_time


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

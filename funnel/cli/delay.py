"""``funnel delay ID 15m --funnel NAME``: change a mirror's delay at runtime."""
from __future__ import annotations

import click

from funnel.cli.options import DURATION, MIRROR_ID, funnel_option, kafka_options, kafka_settings
from funnel.clock import now_us
from funnel.control import ControlChannel
from funnel.records import DelayRecord, check_delay_fits_retention
from funnel.timeparse import format_duration
from funnel.topic import FunnelAdmin


@click.command()
@click.argument("mirror", type=MIRROR_ID)
@click.argument("delay", type=DURATION)
@funnel_option
@kafka_options
def delay(mirror: str, delay: float, funnel_name: str, bootstrap: str | None, settings: tuple[str, ...]) -> None:
    """Set mirror MIRROR's delay to DELAY (e.g. 15m); a running applier follows within a second."""
    kafka = kafka_settings(bootstrap, settings)
    info = FunnelAdmin(kafka).describe(funnel_name)
    check_delay_fits_retention(delay, info.retention_s, funnel_name)
    channel = ControlChannel(kafka, funnel_name)
    channel.write_delay(mirror, DelayRecord(delay, now_us()))
    never_ran = channel.state().status(mirror) is None
    channel.close()
    click.echo(f"mirror {mirror!r} on funnel {funnel_name!r}: delay set to {format_duration(delay)}")
    if never_ran:
        # Legitimate before a mirror's first start, but also what a typo in the id looks like.
        click.echo(f"note: no applier of mirror {mirror!r} has reported yet; it will start with this delay",
                   err=True)

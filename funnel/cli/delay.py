"""``funnel delay ID 15m --funnel NAME``: change a mirror's delay at runtime."""
from __future__ import annotations

import click

from funnel.cli.options import DURATION, MIRROR_ID, funnel_option, kafka_options, kafka_settings
from funnel.control import ControlChannel, delay_key
from funnel.errors import ConfigError
from funnel.timeparse import format_duration
from funnel.topic import FunnelAdmin


@click.command()
@click.argument("mirror", type=MIRROR_ID)
@click.argument("delay", type=DURATION)
@funnel_option
@kafka_options
def delay(mirror: str, delay: float, funnel_name: str, bootstrap: str | None, settings: tuple[str, ...]) -> None:
    """Set mirror MIRROR's delay to DELAY (e.g. 15m); a running applier follows within a second."""
    import time

    kafka = kafka_settings(bootstrap, settings)
    info = FunnelAdmin(kafka).describe(funnel_name)
    if delay >= info.retention_s:
        raise ConfigError(f"delay {format_duration(delay)} is not shorter than funnel {funnel_name!r}'s "
                          f"retention {format_duration(info.retention_s)}: events would expire before they are due",
                          hint="raise the topic's retention.ms first")
    channel = ControlChannel(kafka, funnel_name)
    channel.write(delay_key(mirror), {"delay_s": delay, "set_at": time.time_ns() // 1000})
    channel.close()
    click.echo(f"mirror {mirror!r} on funnel {funnel_name!r}: delay set to {format_duration(delay)}")

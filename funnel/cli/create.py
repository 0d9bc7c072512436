"""``funnel create NAME --retention 7d``."""
from __future__ import annotations

import click

from funnel.cli.options import DURATION, kafka_options, kafka_settings
from funnel.control import ControlChannel
from funnel.timeparse import format_duration
from funnel.topic import FunnelAdmin, FunnelSpec


@click.command()
@click.argument("name")
@click.option("--retention", type=DURATION, required=True,
              help="How long the funnel keeps events, e.g. 7d; longer than every mirror's delay.")
@click.option("--replication-factor", type=int, default=1, show_default=True,
              help="Kafka replication factor (3 in production).")
@click.option("--min-insync-replicas", type=int, default=None, help="min.insync.replicas (2 in production).")
@kafka_options
def create(name: str, retention: float, replication_factor: int, min_insync_replicas: int | None,
           bootstrap: str | None, settings: tuple[str, ...]) -> None:
    """Create the funnel NAME: its data topic and its compacted control topic."""
    kafka = kafka_settings(bootstrap, settings)
    admin = FunnelAdmin(kafka)
    spec = FunnelSpec(name, retention, replication_factor, min_insync_replicas)
    spec.validate()
    longest = 0.0
    if f"{name}.control" in admin.topics():  # a funnel re-created: its mirrors' delays still count
        longest = max(ControlChannel(kafka, name).delays().values(), default=0.0)
    created = admin.create(spec, longest)
    click.echo(f"created funnel {name!r} (retention {format_duration(retention)}): {', '.join(created)}")

"""``funnel capture SOURCE_URL --funnel NAME``: initial copy, then every committed change."""
from __future__ import annotations

import click

from funnel.cli.options import (DURATION, funnel_option, kafka_options, kafka_settings, metrics_options,
                                setup_logging, stop_on_signals)
from funnel.topic import FunnelAdmin


@click.command()
@click.argument("source_url")
@funnel_option
@click.option("--table", "-t", "tables", multiple=True, help="Capture only this table (repeatable; default: all).")
@click.option("--rowid-key", is_flag=True,
              help="SQLite: accept tables without a primary key, keyed by rowid (VACUUM may renumber them).")
@click.option("--replica-identity-full", is_flag=True,
              help="PostgreSQL: set REPLICA IDENTITY FULL on the captured tables (needs ownership), so updates "
                   "and deletes carry whole before images (what backward seek needs).")
@click.option("--publication", default=None, metavar="NAME",
              help="PostgreSQL: use this existing publication instead of creating one named like the slot "
                   "(for a role that does not own the tables).")
@click.option("--capture-ddl", is_flag=True,
              help="PostgreSQL: record schema changes with an event trigger (needs a superuser role) and publish "
                   "them in order, so mirrors follow migrations by themselves.")
@click.option("--slot", default=None, metavar="NAME",
              help="PostgreSQL: the logical replication slot [default: timefunnel_<funnel>].")
@click.option("--source-name", default=None, help="Name of this source in the events [default: the source that `switchback complete` "
                   "published for this database, else the file name].")
@click.option("--poll-interval", type=DURATION, default=0.2, show_default=True, help="How often to look for changes.")
@click.option("--heartbeat", "heartbeat_s", type=DURATION, default=1.0, show_default=True,
              help="Heartbeat interval while the source is idle.")
@click.option("--chunk-rows", type=click.IntRange(1), default=1000, show_default=True,
              help="Rows per Kafka message; larger transactions span several messages.")
@click.option("--give-up-after", "give_up_after", type=DURATION, default="5m", show_default=True,
              help="How long to keep retrying while the broker or the source is unreachable before exiting "
                   "with an error (capture resumes exactly either way).")
@click.option("--verbose", "-v", is_flag=True, help="Log what the capture does.")
@metrics_options
@kafka_options
def capture(source_url: str, funnel_name: str, tables: tuple[str, ...], rowid_key: bool,
            replica_identity_full: bool, publication: str | None, capture_ddl: bool, slot: str | None, source_name: str | None,
            poll_interval: float, heartbeat_s: float, chunk_rows: int, give_up_after: float, verbose: bool,
            metrics_port: int | None,
            metrics_addr: str, bootstrap: str | None, settings: tuple[str, ...]) -> None:
    """Capture the production database at SOURCE_URL (sqlite:///path, postgresql://...) into the funnel."""
    from funnel.control import ControlChannel
    from producer.capture import Capture, CaptureOptions
    from producer.lineage import continued_source, refuse_other_database
    from producer.publisher import TIMEOUT_S, EventPublisher
    from producer.sources import open_source, source_name_for

    setup_logging(verbose)
    kafka = kafka_settings(bootstrap, settings)
    FunnelAdmin(kafka).describe(funnel_name)
    control = ControlChannel(kafka, funnel_name)
    records = control.read_all()
    continued = None if source_name else continued_source(records, source_url)
    if not source_name and not continued:
        refuse_other_database(records, source_url, source_name_for(source_url))
    source = open_source(source_url, list(tables) or None, rowid_key, funnel=funnel_name, slot=slot,
                         publication=publication, replica_identity_full=replica_identity_full,
                         capture_ddl=capture_ddl)
    name = source_name or continued or source_name_for(source_url)
    # A commit waiting for a broker that is gone counts as failed once the operator's patience ends.
    publisher = EventPublisher(kafka, funnel_name, name, chunk_rows=chunk_rows,
                               commit_timeout_s=min(TIMEOUT_S, max(1.0, give_up_after)))
    runner = Capture(source, publisher, control,
                     CaptureOptions(poll_interval_s=poll_interval, heartbeat_interval_s=heartbeat_s,
                                    give_up_after_s=give_up_after))
    stop = stop_on_signals()
    click.echo(f"capturing {source_url} into funnel {funnel_name!r} as source {name!r}"
               + (" (the source switchback complete published for this database)" if continued else ""), err=True)
    if metrics_port is None:
        runner.run(stop)
        return
    from producer.metrics import serve

    endpoint = serve(runner, metrics_port, metrics_addr)
    click.echo(f"metrics on {endpoint.url}", err=True)
    try:
        runner.run(stop)
    finally:
        endpoint.close()

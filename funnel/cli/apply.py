"""``funnel apply SINK_URL --funnel NAME --mirror ID --delay 4h``: run the delayed applier."""
from __future__ import annotations

import click

from funnel.cli.options import (DURATION, MIRROR_ID, funnel_option, kafka_options, kafka_settings, metrics_options,
                                setup_logging, stop_on_signals)


@click.command()
@click.argument("sink_url")
@funnel_option
@click.option("--mirror", "-m", required=True, type=MIRROR_ID, help="This mirror's id (its position and delay are kept per id).")
@click.option("--delay", type=DURATION, default=None,
              help="How far the mirror stays behind production, e.g. 4h [default: the delay last set "
                   "with `funnel delay`].")
@click.option("--buffer-rows", type=int, default=100_000, show_default=True,
              help="Rows held in memory before reading the funnel pauses.")
@click.option("--create-tables", is_flag=True,
              help="PostgreSQL mirror: create missing tables from production's column definitions and "
                   "primary keys, as the capture published them on the control topic.")
@click.option("--until-caught-up", is_flag=True,
              help="Exit once everything due is applied and the funnel has nothing more (batch runs, benches).")
@click.option("--verbose", "-v", is_flag=True, help="Log what the applier does.")
@metrics_options
@kafka_options
def apply(sink_url: str, funnel_name: str, mirror: str, delay: float | None, buffer_rows: int,
          create_tables: bool, until_caught_up: bool, verbose: bool, metrics_port: int | None, metrics_addr: str,
          bootstrap: str | None, settings: tuple[str, ...]) -> None:
    """Apply the funnel to the mirror at SINK_URL (sqlite:///path), each transaction after its delay."""
    from applier.applier import ApplierOptions
    from applier.launch import check_options, start_applier
    from funnel.timeparse import format_duration
    from producer.sources.marks import refuse_funnel_source

    setup_logging(verbose)
    kafka = kafka_settings(bootstrap, settings)
    options = ApplierOptions(funnel_name, mirror, delay, buffer_rows=buffer_rows)
    check_options(kafka, options)
    # before the sink creates its file or state table
    refuse_funnel_source(kafka, sink_url, funnel_name)
    stop = stop_on_signals()
    endpoints = []

    def serve_metrics(started) -> None:  # part of the start: an address that cannot be served refuses it
        from applier.metrics import serve

        endpoints.append(serve(started, metrics_port, metrics_addr))

    applier = start_applier(kafka, sink_url, options, create_tables,
                            after_start=serve_metrics if metrics_port is not None else None)
    click.echo(f"mirror {mirror!r}: applying funnel {funnel_name!r} to {sink_url} from offset "
               f"{applier.position.next_offset}, delay {format_duration(applier.delay_us / 1e6)}", err=True)
    if not endpoints:
        applier.run(stop, until=(lambda a: a.caught_up()) if until_caught_up else None)
        return
    endpoint = endpoints[0]
    click.echo(f"metrics on {endpoint.url}", err=True)
    try:
        applier.run(stop, until=(lambda a: a.caught_up()) if until_caught_up else None)
    finally:
        endpoint.close()

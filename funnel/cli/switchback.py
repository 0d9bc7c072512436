"""``funnel switchback prepare|complete|status|abort``: return from a promoted mirror to production.

The CLI layer is where capture (``producer``) and applier meet: ``ProducerPort`` gives
the switchback (``applier.switchback``) the library's own capture to run and a way to
remove what a capture installed.
"""
from __future__ import annotations

import click

from funnel.cli.options import (DURATION, MIRROR_ID, echo_json, funnel_option, kafka_options, kafka_settings,
                                setup_logging, stop_on_signals)
from funnel.kafka import KafkaSettings
from funnel.timeparse import format_time

mirror_option = click.option("--mirror", "-m", required=True, type=MIRROR_ID, help="The promoted mirror's id.")


class ProducerPort:
    """Capture for the switchback: the reverse one on the mirror, the fresh forward one on production."""

    def __init__(self, kafka: KafkaSettings, poll_interval_s: float = 0.2) -> None:
        self.kafka = kafka
        self.poll_interval_s = poll_interval_s

    def open(self, url: str, funnel: str, source_name: str, tables: list[str] | None, publish_status: bool,
             capture_ddl: bool = False):
        from funnel.control import ControlChannel
        from producer.capture import Capture, CaptureOptions
        from producer.publisher import EventPublisher
        from producer.sources import open_source

        source = open_source(url, tables or None, funnel=funnel, capture_ddl=capture_ddl)
        try:
            publisher = EventPublisher(self.kafka, funnel, source_name)
        except BaseException:
            source.close()
            raise
        control = ControlChannel(self.kafka, funnel) if publish_status else None
        return Capture(source, publisher, control, CaptureOptions(poll_interval_s=self.poll_interval_s))

    def remove(self, url: str, funnel: str) -> list[str]:
        from producer.sources import uninstall_capture

        return uninstall_capture(url, funnel)

    def check(self, url: str, funnel: str, tables: list[str], capture_ddl: bool = False) -> None:
        from producer.sources import open_source

        open_source(url, tables or None, funnel=funnel, capture_ddl=capture_ddl).close()  # its checks create nothing

    def default_source_name(self, url: str) -> str:
        from producer.sources import source_name_for

        return source_name_for(url)


def _switchback(bootstrap: str | None, settings: tuple[str, ...], funnel: str, mirror: str,
                poll_interval_s: float = 0.2):
    from applier.switchback.runner import Switchback

    kafka = kafka_settings(bootstrap, settings)
    return Switchback(kafka, funnel, mirror, ProducerPort(kafka, poll_interval_s),
                      echo=lambda line: click.echo(line), poll_interval_s=poll_interval_s)


@click.group()
def switchback() -> None:
    """Rebuild the original production from the promoted mirror, then return to it."""


@switchback.command()
@funnel_option
@mirror_option
@click.option("--to", "to_url", required=True, metavar="URL",
              help="The original production to rebuild (emptied first: stale rows and tables do not survive).")
@click.option("--from", "from_url", default=None, metavar="URL",
              help="The promoted mirror [default: the sink URL its applier reported].")
@click.option("--source-name", default=None,
              help="Source name of the forward capture of production [default: the funnel's one capture, or the "
                   "file name], as `funnel capture --source-name` will use it after the switchback.")
@click.option("--poll-interval", type=DURATION, default=0.2, show_default=True,
              help="How often the reverse capture looks for changes on the mirror.")
@click.option("--verbose", "-v", is_flag=True, help="Log what capture and applier do.")
@kafka_options
def prepare(funnel_name: str, mirror: str, to_url: str, from_url: str | None, source_name: str | None,
            poll_interval: float, verbose: bool, bootstrap: str | None, settings: tuple[str, ...]) -> None:
    """Copy the promoted mirror to production and keep it following (foreground, until complete takes over)."""
    setup_logging(verbose)
    runner = _switchback(bootstrap, settings, funnel_name, mirror, poll_interval)
    try:
        runner.prepare(to_url, from_url, source_name, stop=stop_on_signals())
    finally:
        runner.close()


@switchback.command()
@funnel_option
@mirror_option
@click.option("--freeze-hook", default=None, metavar="CMD",
              help="Shell command that stops the application writing to the mirror (run first).")
@click.option("--takeover-hook", default=None, metavar="CMD",
              help="Shell command that points the application at production (run after the verification).")
@click.option("--delay", "delay", type=DURATION, default=None,
              help="The mirror's delay once the forward funnel runs again [default: the delay it had].")
@click.option("--freeze-timeout", type=DURATION, default=30.0, show_default=True,
              help="Longest wait for writes on the mirror to stop; then nothing is frozen and the writers are named.")
@click.option("--from", "from_url", default=None, metavar="URL", help="The mirror's URL with its password.")
@click.option("--to", "to_url", default=None, metavar="URL", help="Production's URL with its password.")
@click.option("--verbose", "-v", is_flag=True, help="Log what capture and applier do.")
@kafka_options
def complete(funnel_name: str, mirror: str, freeze_hook: str | None, takeover_hook: str | None,
             delay: float | None, freeze_timeout: float, from_url: str | None, to_url: str | None, verbose: bool,
             bootstrap: str | None, settings: tuple[str, ...]) -> None:
    """The button: freeze the mirror, drain, verify, restart the forward funnel, take over, clean up."""
    from applier.switchback.runner import CompleteOptions

    setup_logging(verbose)
    runner = _switchback(bootstrap, settings, funnel_name, mirror)
    try:
        runner.complete(CompleteOptions(freeze_hook, takeover_hook, delay, freeze_timeout, from_url, to_url))
    finally:
        runner.close()


@switchback.command()
@funnel_option
@mirror_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@kafka_options
def status(funnel_name: str, mirror: str, as_json: bool, bootstrap: str | None, settings: tuple[str, ...]) -> None:
    """Where the switchback of MIRROR is, what it did, and what to do next."""
    runner = _switchback(bootstrap, settings, funnel_name, mirror)
    try:
        report = runner.status()
    finally:
        runner.close()
    if as_json:
        return echo_json(report)
    record = report["switchback"]
    if record is None:
        click.echo(f"mirror {mirror!r}: no switchback")
    else:
        click.echo(f"switchback of mirror {mirror!r} (funnel {funnel_name}, cycle {record['cycle']}): "
                   f"{record['phase']}")
        click.echo(f"  from {record['from_url']}  to {record['to_url']}  via {record['reverse_funnel']}")
        for entry in record["history"]:
            click.echo(f"  {format_time(entry['at'])}  {entry['phase']:<13} {entry['step']}")
        if record.get("error"):
            click.echo(f"  last error: {record['error']}")
    if "mirror_frozen" in report:
        frozen = report["mirror_frozen"]
        click.echo(f"  mirror frozen: {'yes' if frozen is True else 'no' if frozen is False else frozen}")
    reverse = report.get("reverse")
    if reverse:
        valid = reverse["production_valid_as_of"]
        click.echo(f"  reverse direction: {'running' if reverse['running'] else 'not running'}, production valid "
                   f"as of {format_time(valid) if valid else '-'}")
    click.echo(f"  next: {report['next']}")


@switchback.command()
@funnel_option
@mirror_option
@click.option("--from", "from_url", default=None, metavar="URL", help="The mirror's URL with its password.")
@click.option("--to", "to_url", default=None, metavar="URL", help="Production's URL with its password.")
@kafka_options
def abort(funnel_name: str, mirror: str, from_url: str | None, to_url: str | None, bootstrap: str | None,
          settings: tuple[str, ...]) -> None:
    """Roll back an unfinished switchback: the mirror keeps (or goes back to) serving."""
    runner = _switchback(bootstrap, settings, funnel_name, mirror)
    try:
        runner.abort(from_url, to_url)
    finally:
        runner.close()

"""The ``funnel`` command line: thin click commands over the library.

Expected errors (``TimeFunnelError``) become ``Error: …`` and ``Try: …`` on stderr
with exit code 1 and no traceback; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import sys

import click
from confluent_kafka import KafkaException

from funnel import __version__
from funnel.errors import TimeFunnelError
from funnel.kafka import kafka_error


class FunnelGroup(click.Group):
    """A click group that renders TimeFunnelError as one line plus an optional hint."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except TimeFunnelError as exc:
            render(exc)
        except KafkaException as exc:
            # Kafka errors are wrapped where they happen; one that slipped through (the
            # broker went away mid-command) is still the broker's answer, not a bug of ours.
            render(kafka_error(exc, "Kafka request failed"))
        except BrokenPipeError:
            # The reader of our output went away (`funnel inspect | head -1`): it has all it
            # wanted, so stop quietly and successfully, as the shell's other tools do.
            silence_stdout()
            ctx.exit(0)
        ctx.exit(1)


def render(exc: TimeFunnelError) -> None:
    """``Error: <message>`` and ``Try: <hint>``, one line each, whatever the message holds
    (a PostgreSQL or Kafka message may span lines)."""
    click.echo(f"Error: {one_line(str(exc))}", err=True)
    if exc.hint:
        click.echo(f"Try: {one_line(exc.hint)}", err=True)


def silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of what is still buffered
    does not fail a second time on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. a test runner's stdout)
        pass


def one_line(text: str) -> str:
    return " ".join(text.split())


@click.group(cls=FunnelGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="funnel")
def main() -> None:
    """timefunnel: a time-delayed mirror for databases, built on Apache Kafka."""
    from funnel.cli.options import hide_librdkafka_log

    hide_librdkafka_log()


def _register() -> None:
    # Imported here so that `funnel --help` stays fast and the modules stay separate.
    from funnel.cli import (apply, broker, capture, create, delay, demo, inspect, migrate, promote, seek, status,
                            switchback, takeover)

    for command in (broker.broker, create.create, capture.capture, apply.apply, delay.delay,
                    status.status, inspect.inspect, seek.seek, seek.resume, promote.promote,
                    switchback.switchback, takeover.takeover, demo.demo, migrate.migrate):
        main.add_command(command)


_register()

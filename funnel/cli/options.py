"""Options shared by the commands: the broker, librdkafka settings, the funnel, durations."""
from __future__ import annotations

import json
import logging
import signal
import threading
from typing import Any, Callable

import click

from funnel.kafka import KafkaSettings, parse_overrides, resolve_bootstrap
from funnel.timeparse import parse_duration


def kafka_options(command: Callable) -> Callable:
    """--bootstrap and -X key=value, as kcat has them."""
    command = click.option("-X", "settings", multiple=True, metavar="KEY=VALUE",
                           help="Any librdkafka setting (TLS, SASL, timeouts), repeatable.")(command)
    command = click.option("--bootstrap", "-b", envvar="FUNNEL_BOOTSTRAP", default=None, metavar="HOST:PORT",
                           help="Kafka bootstrap servers [env FUNNEL_BOOTSTRAP; default: the local "
                                "broker of `funnel broker start`].")(command)
    return command


def metrics_options(command: Callable) -> Callable:
    """--metrics-port and --metrics-addr (loopback unless told otherwise) for long-running commands."""
    command = click.option("--metrics-addr", default="127.0.0.1", show_default=True, envvar="FUNNEL_METRICS_ADDR",
                           help="Address the metrics endpoint binds to [env FUNNEL_METRICS_ADDR].")(command)
    return click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, envvar="FUNNEL_METRICS_PORT",
                        help="Serve Prometheus metrics on this port at /metrics, 0 for any free port "
                             "[env FUNNEL_METRICS_PORT; default: no endpoint].")(command)


def funnel_option(command: Callable) -> Callable:
    return click.option("--funnel", "-f", "funnel_name", required=True, envvar="FUNNEL_NAME",
                        help="The funnel (Kafka topic) name [env FUNNEL_NAME].")(command)


def kafka_settings(bootstrap: str | None, settings: tuple[str, ...]) -> KafkaSettings:
    return KafkaSettings(resolve_bootstrap(bootstrap), parse_overrides(settings))


class Duration(click.ParamType):
    """``90s``, ``15m``, ``4h``, ``7d`` → seconds (float)."""

    name = "duration"

    def convert(self, value: Any, param, ctx) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        # A malformed duration raises ConfigError straight through click, so the
        # operator gets the same one-line "Error: … / Try: …" as for every other input.
        return parse_duration(value)


DURATION = Duration()


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM/SIGINT so long-running commands stop between transactions."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def parse_target_time(text: str) -> int:
    """An ISO-8601 time with zone or a relative time (-15m) → µs since the epoch. Raises ConfigError."""
    from datetime import datetime, timezone

    from funnel.timeparse import parse_time, to_micros

    return to_micros(parse_time(text, datetime.now(timezone.utc)))

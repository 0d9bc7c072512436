"""Options shared by the commands: the broker, librdkafka settings, the funnel, durations."""
from __future__ import annotations

import json
import logging
import signal
import threading
from typing import Any, Callable

import click

from funnel.control import check_mirror_id
from funnel.errors import ConfigError
from funnel.kafka import (DEFAULT_CONNECT_TIMEOUT_S, LIBRDKAFKA_LOG, KafkaSettings, check_reachable, parse_overrides,
                          resolve_bootstrap)
from funnel.timeparse import parse_duration

_CONNECT_TIMEOUT = "funnel.connect_timeout_s"  # ctx.meta key: kept out of every command's signature


def kafka_options(command: Callable) -> Callable:
    """--bootstrap, -X key=value (as kcat has them) and --connect-timeout."""
    command = click.option("--connect-timeout", type=DURATION, default=DEFAULT_CONNECT_TIMEOUT_S,
                           envvar="FUNNEL_CONNECT_TIMEOUT", expose_value=False, callback=_remember_connect_timeout,
                           help=f"How long to wait for the broker's first answer before giving up "
                                f"[env FUNNEL_CONNECT_TIMEOUT; default: {DEFAULT_CONNECT_TIMEOUT_S:g}s].")(command)
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
    """The command's Kafka settings, once the broker has answered.

    Raises ConfigError for a bad -X setting and BrokerUnreachableError when nothing
    answers at the bootstrap address within --connect-timeout.
    """
    overrides = parse_overrides(settings)
    if "log_level" in overrides:  # the operator asked to see librdkafka's own log
        show_librdkafka_log(logging.DEBUG)
    ctx = click.get_current_context(silent=True)
    timeout = ctx.meta.get(_CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT_S) if ctx else DEFAULT_CONNECT_TIMEOUT_S
    kafka = KafkaSettings(resolve_bootstrap(bootstrap), overrides, connect_timeout_s=timeout)
    check_reachable(kafka)
    return kafka


def _remember_connect_timeout(ctx: click.Context, _param, value: float) -> float:
    if value <= 0:
        raise ConfigError(f"--connect-timeout must be positive, not {value:g}s", hint="e.g. --connect-timeout 10s")
    ctx.meta[_CONNECT_TIMEOUT] = value
    return value


def show_librdkafka_log(level: int) -> None:
    """Let librdkafka's log through at ``level`` (the CLI hides it by default: its connection
    retries would bury the one Error line)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    LIBRDKAFKA_LOG.setLevel(level)


def hide_librdkafka_log() -> None:
    # Above CRITICAL: librdkafka logs a fenced or otherwise fatal producer at CRITICAL, and
    # the exception it also raises already becomes our one Error line.
    LIBRDKAFKA_LOG.setLevel(logging.CRITICAL + 1)


class MirrorId(click.ParamType):
    """A mirror id, checked by the one rule in funnel.control (ConfigError otherwise)."""

    name = "mirror"

    def convert(self, value: Any, param, ctx) -> str:
        return check_mirror_id(value)


MIRROR_ID = MirrorId()


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
    if verbose:
        show_librdkafka_log(logging.INFO)


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

"""Kafka client settings: the bootstrap address and ``-X key=value`` overrides.

Every librdkafka setting (TLS, SASL, timeouts) passes through ``-X`` unchanged, as in
kcat; timeouts and retries are the only things this module decides by itself.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from funnel.errors import ConfigError, FunnelError

T = TypeVar("T")
TRANSIENT_RETRY_S = 15.0


def parse_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["security.protocol=SSL", ...]`` → dict. Raises ConfigError on a pair without '='."""
    settings: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"malformed -X setting {pair!r}: use -X key=value")
        settings[key.strip()] = value
    return settings


def resolve_bootstrap(explicit: str | None) -> str:
    """--bootstrap, else $FUNNEL_BOOTSTRAP, else the local broker started by `funnel broker start`."""
    if explicit:
        return explicit
    from_env = os.environ.get("FUNNEL_BOOTSTRAP")
    if from_env:
        return from_env
    from funnel.broker import LocalBroker

    info = LocalBroker().running()
    if info:
        return info.bootstrap
    raise ConfigError("no Kafka broker given",
                      hint="pass --bootstrap host:port, set FUNNEL_BOOTSTRAP, or run `funnel broker start`")


@dataclass(frozen=True)
class KafkaSettings:
    """Where the broker is and how to talk to it; shared by every client we create."""

    bootstrap: str
    overrides: dict[str, str] = field(default_factory=dict)

    def client(self, **defaults: object) -> dict[str, object]:
        """A librdkafka config: our defaults, then the operator's -X settings on top."""
        # librdkafka logs informational chatter to stderr by default; keep errors only
        # unless the operator asks for more with -X log_level=7.
        return {"bootstrap.servers": self.bootstrap, "log_level": 3, **defaults, **self.overrides}


def data_topic(funnel: str) -> str:
    return funnel


def control_topic(funnel: str) -> str:
    return f"{funnel}.control"


def kafka_error(exc: Exception, what: str) -> FunnelError:
    """Wrap a confluent-kafka exception into one line the operator can act on."""
    err = exc.args[0] if exc.args else exc
    text = getattr(err, "str", lambda: str(err))()
    return FunnelError(f"{what}: {text}", hint="check --bootstrap / -X settings and that the broker runs")


def retry_transient(call: Callable[[], T], what: str, budget_s: float = TRANSIENT_RETRY_S) -> T:
    """``call()``, retried while Kafka says the error is retriable (a partition without a
    leader yet, just after a topic was created or a broker restarted), for at most
    ``budget_s``; then, or for any other error, a FunnelError saying ``what`` failed.
    """
    from confluent_kafka import KafkaError, KafkaException

    # librdkafka does not flag all of these as retriable, though they pass by themselves.
    transient = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                 KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
                 KafkaError.REQUEST_TIMED_OUT}
    deadline = time.monotonic() + budget_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, KafkaError) and (error.retriable() or error.code() in transient)
            if not retriable or time.monotonic() >= deadline:
                raise kafka_error(exc, what) from exc
            time.sleep(0.2)

"""Kafka client settings: the bootstrap address and ``-X key=value`` overrides.

Every librdkafka setting (TLS, SASL, timeouts) passes through ``-X`` unchanged, as in
kcat; timeouts and retries are the only things this module decides by itself.  It is
also the one place that turns Kafka's errors into ours (``kafka_error``) and that
answers "does the broker answer at all?" (``check_reachable``).
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from confluent_kafka import KafkaError, KafkaException

from funnel.errors import BrokerUnreachableError, ConfigError, FunnelError, TimeFunnelError

T = TypeVar("T")
TRANSIENT_RETRY_S = 15.0
# How long a command waits for the first answer of the broker before it says it cannot
# reach it: long enough for a broker that is just restarting, short enough for a person.
DEFAULT_CONNECT_TIMEOUT_S = 10.0
# librdkafka's own log (connection attempts, retries) goes to this Python logger, not
# straight to stderr: the CLI shows it only with -v or an explicit -X log_level.
LIBRDKAFKA_LOG = logging.getLogger("funnel.librdkafka")


def parse_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["security.protocol=SSL", ...]`` → dict. Raises ConfigError on a pair without '='."""
    settings: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"malformed -X setting {pair!r}: use -X key=value",
                              hint="e.g. -X security.protocol=SSL (one -X per setting)")
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
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S

    def client(self, **defaults: object) -> dict[str, object]:
        """A librdkafka config: our defaults, then the operator's -X settings on top."""
        # librdkafka logs informational chatter by default; keep errors only unless the
        # operator asks for more with -X log_level=7.
        return {"bootstrap.servers": self.bootstrap, "log_level": 3, "logger": LIBRDKAFKA_LOG,
                **defaults, **self.overrides}


def data_topic(funnel: str) -> str:
    return funnel


def control_topic(funnel: str) -> str:
    return f"{funnel}.control"


UNREACHABLE_HINT = ("check --bootstrap (or FUNNEL_BOOTSTRAP) and that the broker runs; "
                    "`funnel broker start` starts a local one")
SETTINGS_HINT = "check the setting's name and value (-X key=value) against librdkafka's CONFIGURATION.md"
SECURITY_HINT = "check the -X security settings (security.protocol, ssl.*, sasl.*) and the broker's ACLs"
# The broker answered and said no: its reason is in the message, and pointing at
# --bootstrap would send the operator the wrong way.
_REFUSAL_HINTS = {
    KafkaError.INVALID_REPLICATION_FACTOR: "use a --replication-factor of at most the number of brokers",
    KafkaError.TOPIC_EXCEPTION: "use a name of at most 241 letters, digits, '.', '_' and '-'",
    KafkaError.TOPIC_ALREADY_EXISTS: "pick another name, or delete the old topic first",
    KafkaError.POLICY_VIOLATION: "the cluster's topic policy refused it: ask its operators for the allowed values",
    KafkaError.INVALID_CONFIG: "correct the value the broker names in its reason",
}
_UNREACHABLE = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
                KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT}
_SECURITY = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL,
             KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
             KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}


def kafka_error(exc: Exception, what: str) -> TimeFunnelError:
    """Wrap a confluent-kafka exception into one line the operator can act on.

    A bad client setting becomes a ConfigError, everything else a FunnelError whose
    hint fits the cause: the address, the security settings, or the broker's refusal.
    """
    error = exc.args[0] if exc.args else None
    code = error.code() if isinstance(error, KafkaError) else None
    text = error.str() if isinstance(error, KafkaError) else str(exc)
    message = f"{what}: {text}"
    if code == KafkaError._INVALID_ARG:
        return ConfigError(message, hint=SETTINGS_HINT)
    if code in _UNREACHABLE:
        return FunnelError(message, hint=UNREACHABLE_HINT)
    if code in _SECURITY:
        return FunnelError(message, hint=SECURITY_HINT)
    return FunnelError(message, hint=_REFUSAL_HINTS.get(code, "the broker refused: its reason is in the error; "
                                                              "the broker's log may say more"))


def check_reachable(kafka: KafkaSettings) -> None:
    """Return once the broker answers a metadata request; wait at most ``kafka.connect_timeout_s``.

    The CLI calls this before any command does its work, so that a wrong address, a
    stopped broker or a TLS/SASL mismatch gives the same one-line error in the same
    bounded time, whatever the command.
    Raises ConfigError for a bad -X setting, BrokerUnreachableError otherwise.
    """
    from confluent_kafka.admin import AdminClient

    reasons: list[KafkaError] = []
    try:
        admin = AdminClient(kafka.client(error_cb=reasons.append))
    except KafkaException as exc:
        raise kafka_error(exc, "invalid Kafka client setting") from exc
    try:
        admin.list_topics(timeout=kafka.connect_timeout_s)
    except KafkaException as exc:
        admin.poll(0)  # delivers the queued connection errors to error_cb: they say why
        reason = next((r for r in reasons if r.code() != KafkaError._ALL_BROKERS_DOWN), exc.args[0])
        text = _CONNECT_NOISE.sub("", reason.str())
        # A TLS or SASL mismatch comes as a transport error; its text says which it is.
        security = reason.code() in _SECURITY or re.search(r"\b(SSL|SASL)\b", text)
        raise BrokerUnreachableError(
            f"cannot reach the Kafka broker at {kafka.client()['bootstrap.servers']} "  # -X may override it
            f"within {kafka.connect_timeout_s:g}s: {text}",
            hint=f"{SECURITY_HINT}, and that --bootstrap names the matching listener" if security
            else UNREACHABLE_HINT) from exc


# librdkafka frames a connection error with "host:port/bootstrap: " in front and
# "(after 0ms in state CONNECT)" behind; the reason in between is what the operator needs.
_CONNECT_NOISE = re.compile(r"^\S+/bootstrap: |\s*\(after \d+ms in state \w+\)$")


def retry_transient(call: Callable[[], T], what: str, budget_s: float = TRANSIENT_RETRY_S) -> T:
    """``call()``, retried while Kafka says the error is retriable (a partition without a
    leader yet, just after a topic was created or a broker restarted), for at most
    ``budget_s``; then, or for any other error, a FunnelError saying ``what`` failed.
    """
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

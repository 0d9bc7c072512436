"""Funnel administration: the data topic (the funnel) and its compacted control topic.

The data topic has one partition (total order), the delete policy and the retention
the operator chose: the retention *is* the time funnel's capacity, so it must be
longer than every mirror's delay, with headroom for outages.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from funnel.errors import ConfigError, FunnelError
from funnel.kafka import KafkaSettings, control_topic, data_topic, kafka_error
from funnel.records import delay_fits_retention

ADMIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class FunnelSpec:
    """What `funnel create` makes. ``validate`` rejects contradictions before any I/O."""

    name: str
    retention_s: float
    replication_factor: int = 1
    min_insync_replicas: int | None = None
    compression: str = "zstd"

    def validate(self, longest_delay_s: float = 0.0) -> None:
        check_funnel_name(self.name)
        if self.retention_s <= 0:
            raise ConfigError("retention must be positive")
        if not delay_fits_retention(longest_delay_s, self.retention_s):
            raise ConfigError(
                f"retention {self.retention_s:g}s is not longer than the longest mirror delay "
                f"{longest_delay_s:g}s: events would expire before they are applied",
                hint="choose a retention of at least the longest delay plus time for outages")

    def data_config(self) -> dict[str, str]:
        config = {"cleanup.policy": "delete", "retention.ms": str(int(self.retention_s * 1000)),
                  "retention.bytes": "-1", "compression.type": self.compression,
                  # The message timestamp is the source commit time, set by the producer.
                  "message.timestamp.type": "CreateTime"}
        if self.min_insync_replicas:
            config["min.insync.replicas"] = str(self.min_insync_replicas)
        return config

    def control_config(self) -> dict[str, str]:
        return {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "3600000"}


_TOPIC_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
# Kafka's own limit for a topic name; the control topic adds ".control" to the funnel's.
MAX_TOPIC_NAME = 249
MAX_FUNNEL_NAME = MAX_TOPIC_NAME - len(control_topic(""))
_NAME_HINT = f"use 1 to {MAX_FUNNEL_NAME} letters, digits, '.', '_' and '-', e.g. shop"


def check_funnel_name(name: str) -> None:
    """Raises ConfigError unless Kafka accepts both ``name`` and ``name.control`` as topics,
    so that `funnel create` never gets half-way."""
    if not name or any(c not in _TOPIC_CHARS for c in name):
        raise ConfigError(f"invalid funnel name {name!r}: use letters, digits, '.', '_' and '-'", hint=_NAME_HINT)
    if name in (".", ".."):
        raise ConfigError(f"invalid funnel name {name!r}: Kafka does not allow it as a topic name", hint=_NAME_HINT)
    if len(name) > MAX_FUNNEL_NAME:
        raise ConfigError(f"funnel name is too long ({len(name)} characters): with '.control' added, its "
                          f"control topic would pass Kafka's limit of {MAX_TOPIC_NAME}", hint=_NAME_HINT)
    if name.endswith(".control"):
        raise ConfigError(f"invalid funnel name {name!r}: '.control' is reserved for the control topic",
                          hint=_NAME_HINT)


def colliding_topic(wanted: str, existing: set[str]) -> str | None:
    """The existing topic Kafka would confuse with ``wanted``: it treats '.' and '_' alike
    in topic names (their metric names would clash), and refuses the newcomer."""
    key = wanted.replace(".", "_")
    return next((t for t in sorted(existing) if t != wanted and t.replace(".", "_") == key), None)


def _refuse_collisions(names: list[str], existing: set[str]) -> None:
    for name in names:
        other = colliding_topic(name, existing)
        if other:
            raise ConfigError(f"topic {name!r} would collide with the existing topic {other!r}: Kafka treats "
                              f"'.' and '_' in topic names alike", hint="pick a funnel name that differs in letters")


@dataclass(frozen=True)
class FunnelInfo:
    """What the broker says about an existing funnel."""

    name: str
    retention_s: float
    partitions: int


class FunnelAdmin:
    """Create and describe funnels on a broker."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.admin = AdminClient(kafka.client())

    def create(self, spec: FunnelSpec, longest_delay_s: float = 0.0) -> list[str]:
        """Create the data and control topics; returns the names created.

        Raises ConfigError for a bad spec, FunnelError when the funnel exists or the
        broker refuses.
        """
        spec.validate(longest_delay_s)
        existing = self.topics()
        if data_topic(spec.name) in existing:
            raise FunnelError(f"funnel {spec.name!r} already exists",
                              hint="change its retention with kafka-configs, or pick another name")
        wanted = [NewTopic(data_topic(spec.name), 1, spec.replication_factor, config=spec.data_config())]
        if control_topic(spec.name) not in existing:
            wanted.append(NewTopic(control_topic(spec.name), 1, spec.replication_factor,
                                   config=spec.control_config()))
        names = [topic.topic for topic in wanted]
        _refuse_collisions(names, existing)
        self._create_all_or_none(wanted)
        self._wait_for_leaders(names)
        return names

    def _create_all_or_none(self, wanted: list[NewTopic]) -> None:
        """Create every topic in ``wanted``, or, when the broker refuses one, delete those it
        made, so that no half funnel is left behind. Raises FunnelError with the refusal."""
        created: list[str] = []
        refused: tuple[str, KafkaException] | None = None
        for name, future in self.admin.create_topics(wanted, request_timeout=ADMIN_TIMEOUT_S).items():
            try:
                future.result(timeout=ADMIN_TIMEOUT_S)
                created.append(name)
            except KafkaException as exc:
                refused = refused or (name, exc)
        if refused is None:
            return
        self._delete(created)
        name, exc = refused
        raise kafka_error(exc, f"cannot create topic {name!r}") from exc

    def _delete(self, names: list[str]) -> None:
        """Delete topics this command has just created; raises FunnelError naming any left over."""
        if not names:
            return
        for name, future in self.admin.delete_topics(names, request_timeout=ADMIN_TIMEOUT_S).items():
            try:
                future.result(timeout=ADMIN_TIMEOUT_S)
            except KafkaException as exc:
                raise FunnelError(f"the broker refused part of the funnel, and deleting the part it made failed: "
                                  f"{kafka_error(exc, name)}", hint=f"delete topic {name!r} by hand") from exc

    def _wait_for_leaders(self, names: list[str]) -> None:
        """Return once every new partition has a leader: until then producers and readers get
        'not leader' errors. Raises FunnelError after ADMIN_TIMEOUT_S."""
        deadline = time.monotonic() + ADMIN_TIMEOUT_S
        while time.monotonic() < deadline:
            topics = self.admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
            if all(name in topics and topics[name].error is None and topics[name].partitions
                   and all(p.leader >= 0 for p in topics[name].partitions.values()) for name in names):
                return
            time.sleep(0.1)
        raise FunnelError(f"the new topics {', '.join(names)} have no leader after {ADMIN_TIMEOUT_S:g}s")

    def topics(self) -> set[str]:
        try:
            return set(self.admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics)
        except KafkaException as exc:
            raise kafka_error(exc, f"cannot reach the broker at {self.kafka.bootstrap}") from exc

    def describe(self, name: str) -> FunnelInfo:
        """Raises FunnelError when the funnel (data or control topic) does not exist."""
        metadata = self.admin.list_topics(timeout=ADMIN_TIMEOUT_S)
        for topic in (data_topic(name), control_topic(name)):
            if topic not in metadata.topics or metadata.topics[topic].error is not None:
                raise FunnelError(f"unknown funnel {name!r} (topic {topic!r} does not exist)",
                                  hint=f"create it with `funnel create {name} --retention 7d`")
        resource = ConfigResource(ConfigResource.Type.TOPIC, data_topic(name))
        try:
            config = self.admin.describe_configs([resource])[resource].result(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            raise kafka_error(exc, f"cannot describe funnel {name!r}") from exc
        retention_ms = int(config["retention.ms"].value)
        return FunnelInfo(name=name, retention_s=retention_ms / 1000 if retention_ms >= 0 else float("inf"),
                          partitions=len(metadata.topics[data_topic(name)].partitions))

    def set_retention(self, name: str, retention_s: float) -> None:
        """Change the funnel's retention (used by tests and `funnel create` reruns)."""
        from confluent_kafka.admin import AlterConfigOpType, ConfigEntry

        resource = ConfigResource(ConfigResource.Type.TOPIC, data_topic(name), incremental_configs=[
            ConfigEntry("retention.ms", str(int(retention_s * 1000)),
                        incremental_operation=AlterConfigOpType.SET)])
        try:
            self.admin.incremental_alter_configs([resource])[resource].result(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            raise kafka_error(exc, f"cannot change the retention of {name!r}") from exc

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
        if not self.name or any(c not in _TOPIC_CHARS for c in self.name):
            raise ConfigError(f"invalid funnel name {self.name!r}: use letters, digits, '.', '_' and '-'")
        if self.name.endswith(".control"):
            raise ConfigError(f"invalid funnel name {self.name!r}: '.control' is reserved for the control topic")
        if self.retention_s <= 0:
            raise ConfigError("retention must be positive")
        if self.retention_s <= longest_delay_s:
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
        for name, future in self.admin.create_topics(wanted, request_timeout=ADMIN_TIMEOUT_S).items():
            try:
                future.result(timeout=ADMIN_TIMEOUT_S)
            except KafkaException as exc:
                raise kafka_error(exc, f"cannot create topic {name!r}") from exc
        names = [topic.topic for topic in wanted]
        self._wait_for_leaders(names)
        return names

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

"""The control channel: ``<funnel>.control``, a compacted topic of small JSON records.

Keys say what a record is about; the latest value per key is the truth:

- ``delay/<mirror>``    {"delay_s": float, "set_at": µs}       set by the operator
                        (``records.DelayRecord``)
- ``status/<mirror>``   what a running applier reports about itself (``records.MirrorStatus``)
- ``producer/<source>`` what a running capture reports about itself (``records.CaptureStatus``)
- ``command/<mirror>``  seek, resume or promote for a running applier (latest wins;
                        an applier reads only commands written after it started;
                        ``records.CommandRecord``)
- ``switchback/<mirror>`` the switchback's state machine (``applier.switchback.state``)
- ``table/<table>``     production's definition of a captured table, published by the
                        capture at start: {"table", "columns": [{"name", "type",
                        "not_null"}], "key": [...]}; PostgreSQL mirrors create missing
                        tables from it (``funnel apply --create-tables``)
- ``source/<source>``   the database a source continues in after a switchback
                        rebuilt production: {"source", "identity" (funnel.identity),
                        "url", "mirror", "cycle", "position", "published_at"}, written
                        by ``switchback complete``; a capture of that database, however
                        spelled or named, continues this source (producer.lineage)

JSON rather than Avro because these records are few, small and read by people with
kcat as often as by programs.  Keys are built only here; what the values mean is
``funnel.records``.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from funnel.errors import ConfigError, FunnelError
from funnel.kafka import KafkaSettings, control_topic, kafka_error, retry_transient
from funnel.records import (STATUS_STALE_AFTER_S, CaptureStatus, CommandRecord, DelayRecord, MirrorStatus,
                            SwitchbackState)

READ_TIMEOUT_S = 15.0
__all__ = ["STATUS_STALE_AFTER_S"]  # re-exported: where it was defined first


# A mirror id is part of control keys ("delay/<id>"), of the applier's consumer group
# and of the mirror's state table: the one rule for all of them.
_MIRROR_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")


def check_mirror_id(mirror: str) -> str:
    """``mirror`` when it is a valid mirror id; raises ConfigError otherwise."""
    if not _MIRROR_ID.fullmatch(mirror or ""):
        raise ConfigError(f"invalid mirror id {mirror!r}: use 1 to 200 letters, digits, '.', '_' and '-'",
                          hint="pick an id such as m1 or reporting-eu")
    return mirror


def delay_key(mirror: str) -> str:
    return f"delay/{mirror}"


def status_key(mirror: str) -> str:
    return f"status/{mirror}"


def producer_key(source: str) -> str:
    return f"producer/{source}"


def command_key(mirror: str) -> str:
    """seek / resume / promote for a running applier: {"id", "kind", "to", "excluded"}."""
    return f"command/{mirror}"


def table_key(table: str) -> str:
    return f"table/{table}"


SOURCE_PREFIX = "source/"


def source_key(source: str) -> str:
    return f"{SOURCE_PREFIX}{source}"


def switchback_key(mirror: str) -> str:
    return f"switchback/{mirror}"


def _names(records: dict[str, Any], prefix: str) -> list[str]:
    return sorted(key[len(prefix):] for key in records if key.startswith(prefix))


@dataclass(frozen=True)
class ControlState:
    """One read of the whole control topic, with typed accessors."""

    records: dict[str, dict[str, Any]]

    def delay(self, mirror: str) -> DelayRecord | None:
        found = self.records.get(delay_key(mirror))
        return None if found is None else DelayRecord.from_json(found)

    def status(self, mirror: str) -> MirrorStatus | None:
        found = self.records.get(status_key(mirror))
        return None if not found else MirrorStatus.from_json(found)

    def switchback(self, mirror: str) -> SwitchbackState | None:
        """The mirror's switchback record.  Raises SwitchbackError for one this version cannot read."""
        found = self.records.get(switchback_key(mirror))
        return None if not found else SwitchbackState.from_json(found)

    def mirrors(self) -> list[str]:
        """Every mirror with a delay or a status, sorted."""
        return sorted(set(_names(self.records, delay_key(""))) | set(_names(self.records, status_key(""))))

    def captures(self) -> dict[str, CaptureStatus]:
        """Every capture's last status, by source name, sorted."""
        return {source: CaptureStatus.from_json(self.records[producer_key(source)])
                for source in _names(self.records, producer_key(""))}


def decode_record(key: bytes | None, value: bytes | None) -> tuple[str, dict[str, Any] | None]:
    """(key, value) of a control message; a tombstone has value None.

    Raises FunnelError for a record that is not JSON (somebody wrote garbage by hand).
    """
    name = key.decode() if key else ""
    if value is None:
        return name, None
    try:
        return name, json.loads(value)
    except ValueError as exc:
        raise FunnelError(f"malformed control record {name!r}: {exc}") from exc


class ControlChannel:
    """Write and read the control topic of one funnel."""

    def __init__(self, kafka: KafkaSettings, funnel: str) -> None:
        self.kafka = kafka
        self.funnel = funnel
        self.topic = control_topic(funnel)
        self._producer: Producer | None = None

    def write(self, key: str, value: dict[str, Any] | None, flush: bool = True) -> None:
        """Publish one record (None deletes the key). Raises FunnelError when not delivered."""
        if self._producer is None:
            self._producer = Producer(self.kafka.client(**{"linger.ms": 0, "enable.idempotence": True}))
        errors: list = []
        payload = None if value is None else json.dumps(value, separators=(",", ":")).encode()
        self._producer.produce(self.topic, key=key.encode(), value=payload,
                               on_delivery=lambda err, _msg: err and errors.append(err))
        if flush:
            self.flush()
        if errors:
            raise FunnelError(f"cannot write control record {key!r} to {self.topic!r}: {errors[0].str()}",
                              hint=f"check that funnel {self.funnel!r} exists")

    def flush(self) -> None:
        if self._producer is not None and self._producer.flush(READ_TIMEOUT_S) > 0:
            raise FunnelError(f"control record to {self.topic!r} not delivered within {READ_TIMEOUT_S:g}s",
                              hint="check that the broker is up (funnel status), then run the command again: "
                                   "the record may or may not have been written, and writing it twice is harmless")

    def read_all(self) -> dict[str, dict[str, Any]]:
        """The latest value of every live key, read from the start to the high watermark."""
        consumer = Consumer(self.kafka.client(**{
            "group.id": f"timefunnel-reader-{uuid.uuid4().hex}", "enable.auto.commit": False,
            "isolation.level": "read_committed"}))
        records: dict[str, dict[str, Any]] = {}
        try:
            partition = TopicPartition(self.topic, 0)
            low, high = retry_transient(
                lambda: consumer.get_watermark_offsets(partition, timeout=READ_TIMEOUT_S, cached=False),
                f"cannot read control topic {self.topic!r}")
            if high <= low:
                return records
            consumer.assign([TopicPartition(self.topic, 0, low)])
            deadline = time.monotonic() + READ_TIMEOUT_S
            while time.monotonic() < deadline:
                for msg in consumer.consume(1000, timeout=0.2):
                    if msg.error():
                        continue
                    key, value = decode_record(msg.key(), msg.value())
                    if value is None:
                        records.pop(key, None)
                    else:
                        records[key] = value
                    if msg.offset() >= high - 1:
                        return records
                if consumer.position([partition])[0].offset >= high:
                    return records
            raise FunnelError(f"reading control topic {self.topic!r} timed out")
        except KafkaException as exc:
            raise kafka_error(exc, f"cannot read control topic {self.topic!r}") from exc
        finally:
            consumer.close()

    def state(self) -> ControlState:
        """The whole topic, typed. Raises FunnelError."""
        return ControlState(self.read_all())

    def write_delay(self, mirror: str, record: DelayRecord) -> None:
        self.write(delay_key(mirror), record.to_json())

    def write_status(self, status: MirrorStatus, flush: bool = True) -> None:
        self.write(status_key(status.mirror), status.to_json(), flush=flush)

    def write_command(self, mirror: str, command: CommandRecord) -> None:
        self.write(command_key(mirror), command.to_json())

    def delays(self) -> dict[str, float]:
        """Every mirror's delay in seconds as the control topic knows it."""
        records = self.read_all()
        return {mirror: DelayRecord.from_json(records[delay_key(mirror)]).delay_s
                for mirror in _names(records, delay_key(""))}

    def table_definitions(self) -> dict[str, dict[str, Any]]:
        """Production's table definitions as the capture published them, by table name."""
        records = self.read_all()
        return {table: records[table_key(table)] for table in _names(records, table_key(""))}

    def close(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        if self._producer is not None:
            self._producer.flush(timeout_s)
            self._producer = None

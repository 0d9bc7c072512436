"""The switchback record on the forward funnel's control topic, and a watcher for changes to it."""
from __future__ import annotations

import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from applier.switchback.state import SwitchbackState, record_key
from funnel.control import ControlChannel, ControlState, decode_record
from funnel.errors import SwitchbackError
from funnel.kafka import KafkaSettings, control_topic, kafka_error


class StateStore:
    """Reads and writes ``switchback/<mirror>``; a save checks that nobody else moved the record."""

    def __init__(self, control: ControlChannel, mirror: str) -> None:
        self.control = control
        self.mirror = mirror
        self.key = record_key(mirror)

    def load(self, records: dict[str, dict[str, Any]] | None = None) -> SwitchbackState | None:
        records = self.control.read_all() if records is None else records
        return ControlState(records).switchback(self.mirror)

    def save(self, state: SwitchbackState, expected: SwitchbackState | None) -> SwitchbackState:
        """Publish ``state`` if the record is still ``expected`` (by cycle and update time).

        Raises SwitchbackError when another command changed it meanwhile (a concurrent
        abort or complete): carrying on would undo what that command did.
        """
        current = self.load()
        if _version(current) != _version(expected):
            raise SwitchbackError(
                f"the switchback record of mirror {state.mirror!r} was changed by another command "
                f"(now {current.phase.value if current else 'gone'})",
                hint="see `funnel switchback status`; run one switchback command at a time")
        self.control.write(self.key, state.as_record())
        return state

    def close(self) -> None:
        self.control.close()


def _version(state: SwitchbackState | None) -> tuple | None:
    return None if state is None else (state.cycle, state.phase, state.updated_at)


class RecordWatcher:
    """Sees control records written after it started, without blocking (for `prepare`'s loop)."""

    def __init__(self, kafka: KafkaSettings, funnel: str) -> None:
        self.topic = control_topic(funnel)
        self.consumer = Consumer(kafka.client(**{
            "group.id": f"timefunnel-switchback-{uuid.uuid4().hex}", "enable.auto.commit": False,
            "isolation.level": "read_committed"}))
        try:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=15, cached=False)
            self.consumer.assign([TopicPartition(self.topic, 0, high)])
        except KafkaException as exc:
            self.consumer.close()
            raise kafka_error(exc, f"cannot read control topic {self.topic!r}") from exc

    def poll(self, key: str) -> dict[str, Any] | None:
        """The newest value of ``key`` written since the last poll, or None."""
        latest = None
        for msg in self.consumer.consume(100, timeout=0):
            if msg.error():
                continue
            name, value = decode_record(msg.key(), msg.value())
            if name == key and value is not None:
                latest = value
        return latest

    def close(self) -> None:
        self.consumer.close()

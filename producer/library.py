"""The library API for services that publish their own changes (event-sourced services).

    from producer.library import Publisher

    with Publisher("orders-funnel", bootstrap="kafka:9092", source="orders-svc") as pub:
        with pub.transaction() as tx:
            tx.insert("orders", {"id": 7}, {"id": 7, "total": 12.5})
            tx.delete("carts", {"id": 3})

Everything written inside one ``transaction()`` block becomes one source transaction
and one Kafka transaction: the mirror shows all of it or none of it.  An exception in
the block publishes nothing.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

from confluent_kafka import KafkaException

from funnel.clock import now_us
from funnel.errors import ConfigError
from funnel.events import Op, Row, TableChanges, Value
from funnel.kafka import KafkaSettings, kafka_error, resolve_bootstrap
from producer.publisher import EventPublisher
from producer.sources.base import SourceTransaction


class TransactionWriter:
    """Collects row changes of one source transaction, in call order."""

    def __init__(self) -> None:
        self.changes: list[TableChanges] = []

    def insert(self, table: str, key: Mapping[str, Value], row: Mapping[str, Value]) -> None:
        columns, key_names = _layout(table, key, row)
        self._add(table, Op.INSERT, columns, key_names, Row(None, [row.get(c, key.get(c)) for c in columns]))

    def update(self, table: str, key: Mapping[str, Value], row: Mapping[str, Value],
               before: Mapping[str, Value] | None = None) -> None:
        """``before`` is the old row image, if the service knows it (needed for backward seek)."""
        columns, key_names = _layout(table, key, row)
        old = [before.get(c) for c in columns] if before is not None else None
        self._add(table, Op.UPDATE, columns, key_names, Row(old, [row.get(c, key.get(c)) for c in columns]))

    def delete(self, table: str, key: Mapping[str, Value], row: Mapping[str, Value] | None = None) -> None:
        """``row`` is the deleted row's image, if known; the key alone is enough to apply."""
        columns, key_names = _layout(table, key, row or key)
        image = row or key
        self._add(table, Op.DELETE, columns, key_names, Row([image.get(c, key.get(c)) for c in columns], None))

    def _add(self, table: str, op: Op, columns: list[str], key: list[str], row: Row) -> None:
        last = self.changes[-1] if self.changes else None
        if last and last.table == table and last.op is op and last.columns == columns:
            last.rows.append(row)
        else:
            self.changes.append(TableChanges(table, op, columns, key, [row]))


def _layout(table: str, key: Mapping[str, Value], row: Mapping[str, Value]) -> tuple[list[str], list[str]]:
    if not table:
        raise ConfigError("a table name is required")
    if not key:
        raise ConfigError(f"table {table!r}: a key (primary-key columns and values) is required")
    for name, value in key.items():
        if name in row and row[name] != value:
            raise ConfigError(f"table {table!r}: key column {name!r} is {value!r} but the row says {row[name]!r}")
    columns = list(row) + [name for name in key if name not in row]
    return columns, list(key)


class Publisher:
    """Publishes a service's own changes into a funnel, one source transaction at a time."""

    def __init__(self, funnel: str, bootstrap: str | None = None, source: str = "app",
                 kafka_settings: Mapping[str, str] | None = None, clock=now_us) -> None:
        """Connect and fence older publishers of ``source``.

        Raises ConfigError for an unknown or malformed librdkafka setting in
        ``kafka_settings``, FunnelError when the funnel is missing or the broker unreachable.
        """
        kafka = KafkaSettings(resolve_bootstrap(bootstrap), dict(kafka_settings or {}))
        self.clock = clock
        try:
            self._publisher = EventPublisher(kafka, funnel, source, clock=clock)
        except KafkaException as exc:  # librdkafka refuses an unknown or malformed setting here
            raise kafka_error(exc, "invalid Kafka client setting") from exc
        last = self._publisher.start()
        self._position = last if last is not None else 0

    @contextmanager
    def transaction(self) -> Iterator[TransactionWriter]:
        writer = TransactionWriter()
        yield writer
        if not writer.changes:
            return
        self._position += 1
        tx = SourceTransaction(txid=f"{self._publisher.source}-{self._position}", commit_ts=self.clock(),
                               position=self._position, changes=writer.changes)
        self._publisher.publish([tx])

    def close(self) -> None:
        self._publisher.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

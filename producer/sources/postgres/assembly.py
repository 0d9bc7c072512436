"""Decoded pgoutput messages -> whole funnel transactions.  Pure: no I/O.

``Assembler.feed`` takes the messages of ``pgoutput.decode_message`` one by one and
returns a ``SourceTransaction`` at each Commit; values are converted as ``values`` says.

Before images and unchanged TOAST values
----------------------------------------
With REPLICA IDENTITY FULL (``replica_identity_full=True`` sets it, which needs table
ownership and briefly takes an ACCESS EXCLUSIVE lock) updates and deletes carry the whole
old row, and ``table_definitions()`` says ``"before_images": "full"``.  Otherwise the
server sends only the key of the old row; we still give updates and deletes a ``before``
image, with the old key values and None in every other column, so that a mirror can
delete and re-key rows, and say ``"before_images": "key"``: such a table cannot be sought
backwards (a warning says so once per table at start).

An update that leaves a large (TOASTed) value unchanged does not resend it ('u').  Under
REPLICA IDENTITY FULL the old row has it and we copy it into the new image.  Otherwise we
leave that column out of the row: such rows form their own group whose ``columns`` lack
it, and a mirror's upsert of the other columns keeps the value it has, which is exactly
the unchanged value.  Fetching the value from the table instead would read a later
version of the row, not the one of this transaction.
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from funnel.errors import SourceError
from funnel.events import Op, Row, TableChanges, Value
from producer.sources.postgres import ddl as postgres_ddl
from producer.sources.base import SourceTransaction
from producer.sources.postgres.catalog import TableInfo
from producer.sources.postgres.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    PgOutputError,
    Relation,
    Truncate,
    Update,
    change_relid,
    decode_begin,
    decode_change,
    decode_commit,
    decode_message,
)
from producer.sources.postgres.values import VALUE_ERRORS, converter

log = logging.getLogger("timefunnel.capture.postgres")

# Enum attribute access is slow in Python 3.11; these run once per row.
_INSERT, _UPDATE, _DELETE, _TRUNCATE = Op.INSERT, Op.UPDATE, Op.DELETE, Op.TRUNCATE
_OP_NAMES = {0x49: "insert", 0x55: "update", 0x44: "delete"}
_new_row = tuple.__new__  # Row(before, after) without NamedTuple's Python-level __new__: once per row


@dataclass(slots=True)
class Plan:
    """How to read the rows of one relation as the last Relation message described it."""

    table: str
    columns: list[str]
    key: list[str]
    converters: list[Callable[[bytes], Value]]
    key_mask: list[bool]
    subsets: dict[tuple[int, ...], list[str]] = field(default_factory=dict)
    key_indexes: list[int] = field(init=False)
    nulls: list[None] = field(init=False)

    def __post_init__(self) -> None:
        self.key_indexes = [i for i, k in enumerate(self.key_mask) if k]
        self.nulls = [None] * len(self.key_mask)

    def convert(self, raw: list) -> list[Value]:
        """Raises ValueError, KeyError or UnicodeDecodeError for a malformed value."""
        if len(raw) != len(self.converters):
            raise ValueError(f"{len(raw)} values for {len(self.converters)} columns")
        return [f(v) if v.__class__ is bytes else v for f, v in zip(self.converters, raw)]

    def key_image(self, row: list[Value]) -> list[Value]:
        """``row`` with every column but the key set to None."""
        image = self.nulls.copy()  # a key is a few columns of many: set those, not test each
        for i in self.key_indexes:
            image[i] = row[i]
        return image

    def subset(self, keep: tuple[int, ...]) -> list[str]:
        columns = self.subsets.get(keep)
        if columns is None:
            columns = self.subsets[keep] = [self.columns[i] for i in keep]
        return columns


class Assembler:
    """Builds SourceTransactions from decoded pgoutput messages (no I/O)."""

    def __init__(self, captured: dict[int, TableInfo]) -> None:
        self._captured = self.captured = captured
        self.ddl: postgres_ddl.DdlFollower | None = None  # set when schema changes are captured
        self._plans: dict[int, Plan | None] = {}
        self._tx: SourceTransaction | None = None
        self._group: TableChanges | None = None
        self._handlers: dict[type, Callable[[Any], SourceTransaction | None]] = {
            Begin: self._begin, Commit: self._commit, Relation: self._relation, Insert: self._insert,
            Update: self._update, Delete: self._delete, Truncate: self._truncate}
        # feed_raw's own readers, by message type byte; every other type goes through decode_message
        self._raw: dict[int, Callable[[bytes, int], SourceTransaction | None]] = {
            0x42: self._raw_begin, 0x43: self._raw_commit, 0x49: self._raw_change, 0x55: self._raw_change,
            0x44: self._raw_change}

    @property
    def in_transaction(self) -> bool:
        return self._tx is not None

    def feed(self, message: Any) -> SourceTransaction | None:
        """Takes one message; returns the transaction that a Commit completes.
        Raises SourceError for a message out of place or a value that cannot be read."""
        handler = self._handlers.get(type(message))
        return handler(message) if handler is not None else None  # Origin, Type, Message: nothing to do

    def feed_raw(self, data: bytes, start: int) -> SourceTransaction | None:
        """``feed(pgoutput.decode_message(data, start))``, faster: Begin, Commit and row
        changes are read straight from the bytes, values converted as they are read.
        Raises like ``decode_message`` and ``feed``."""
        reader = self._raw.get(data[start])
        if reader is None:
            return self.feed(decode_message(data, start))
        try:
            return reader(data, start)
        except (struct.error, IndexError) as exc:
            raise PgOutputError(f"malformed pgoutput {chr(data[start])!r} message: {exc}") from exc

    def _raw_begin(self, data: bytes, start: int) -> None:
        final_lsn, commit_ts, xid = decode_begin(data, start)
        self._start(xid, commit_ts, final_lsn)

    def _raw_commit(self, data: bytes, start: int) -> SourceTransaction:
        return self._finish(*decode_commit(data, start))

    def _raw_change(self, data: bytes, start: int) -> None:
        relid = change_relid(data, start)
        plan = self._plans.get(relid, self)  # self: no Relation message yet
        if plan is self or (self.ddl is not None and relid in self.ddl.relids):
            self.feed(decode_message(data, start))  # the rare cases, and their errors, in one place
            return
        if plan is None:
            return  # published, but not captured here
        try:
            old_kind, old, new = decode_change(data, start, plan.converters)
        except VALUE_ERRORS as exc:
            raise self._value_error(plan, _OP_NAMES[data[start]], exc) from exc
        kind = data[start]
        if kind == 0x49:  # 'I'
            self._add(plan, _INSERT, plan.columns, _new_row(Row, (None, new)))
        elif kind == 0x55:  # 'U'
            self._update_row(plan, old, old_kind, new)
        else:
            self._delete_row(plan, old)

    def _begin(self, message: Begin) -> None:
        self._start(message.xid, message.commit_ts, message.final_lsn)

    def _start(self, xid: int, commit_ts: int, final_lsn: int) -> None:
        if self._tx is not None:
            raise SourceError(f"replication stream: Begin of xid {xid} inside xid {self._tx.txid}")
        self._tx = SourceTransaction(str(xid), commit_ts, final_lsn)
        self._group = None

    def _commit(self, message: Commit) -> SourceTransaction:
        return self._finish(message.end_lsn, message.commit_ts)

    def _finish(self, end_lsn: int, commit_ts: int) -> SourceTransaction:
        tx = self._open("Commit")
        tx.position, tx.commit_ts = end_lsn, commit_ts
        self._tx = self._group = None
        return tx

    def _relation(self, message: Relation) -> None:
        self._group = None
        table = self._captured.get(message.relid)
        if table is None and self.ddl is not None:
            table = self.ddl.adopt(message)  # a table created (and maybe dropped) while capture was away
        if table is None:
            self._plans[message.relid] = None  # published, but not captured here
            return
        name = f"{message.namespace or 'pg_catalog'}.{message.name}"
        if name != table.qualified:
            log.warning("table %s is now called %s: its changes carry the new name", table.qualified, name)
        columns = [c.name for c in message.columns]
        missing = [k for k in table.key if k not in columns]
        if missing:
            raise SourceError(f"table {name} lost its key column {missing[0]!r}: its rows cannot be identified",
                              hint="restore the column, or capture into a new funnel")
        known = {c.name: c for c in table.columns}

        def base(column: Any) -> int:  # a column added later may be of a domain we never looked up
            info = known.get(column.name)
            return info.base_oid if info is not None and info.type_oid == column.type_oid else column.type_oid

        converters = [converter(base(c)) for c in message.columns]
        self._plans[message.relid] = Plan(name, columns, list(table.key), converters,
                                           [c in table.key for c in columns])

    def _insert(self, message: Insert) -> None:
        if self.ddl is not None and message.relid in self.ddl.relids:  # the DDL log or the rows log
            self.ddl.insert(message.relid, message.new, self._open("ddl").changes)
            self._group = None
            return
        plan = self._plan(message.relid)
        if plan is not None:
            self._add(plan, _INSERT, plan.columns, Row(None, self._convert(plan, message.new, "insert")))

    def _update(self, message: Update) -> None:
        plan = self._plan(message.relid)
        if plan is None:
            return
        new = self._convert(plan, message.new, "update")
        before = None if message.old is None else self._convert(plan, message.old, "update")
        self._update_row(plan, before, message.old_kind, new)

    def _update_row(self, plan: Plan, before: list[Value] | None, old_kind: str | None, new: list[Value]) -> None:
        """An update of converted values; ``before`` is None unless the server sent the old row or key."""
        if before is not None:
            if old_kind == "O" and UNCHANGED in new:
                new = [b if v is UNCHANGED else v for v, b in zip(new, before)]
        else:  # the key did not change: it is the new row's
            before = plan.key_image(new)
        if UNCHANGED in new:  # unchanged TOAST value without the old row: leave the column out
            keep = tuple(i for i, v in enumerate(new) if v is not UNCHANGED)
            row = Row([before[i] for i in keep], [new[i] for i in keep])
            self._add(plan, _UPDATE, plan.subset(keep), row)
        else:
            self._add(plan, _UPDATE, plan.columns, _new_row(Row, (before, new)))

    def _delete(self, message: Delete) -> None:
        plan = self._plan(message.relid)
        if plan is not None:
            self._delete_row(plan, self._convert(plan, message.old, "delete"))

    def _delete_row(self, plan: Plan, old: list[Value]) -> None:
        self._add(plan, _DELETE, plan.columns, _new_row(Row, (old, None)))

    def _truncate(self, message: Truncate) -> None:
        tx = self._open("Truncate")
        for relid in message.relids:
            plan = self._plan(relid)
            if plan is not None:
                tx.changes.append(TableChanges(plan.table, _TRUNCATE, plan.columns, plan.key, []))
        self._group = None

    def _plan(self, relid: int) -> Plan | None:
        if relid not in self._plans:
            raise SourceError(f"replication stream: change of relation {relid} before its Relation message")
        return self._plans[relid]

    def _open(self, what: str) -> SourceTransaction:
        if self._tx is None:
            raise SourceError(f"replication stream: {what} outside a transaction")
        return self._tx

    def _convert(self, plan: Plan, raw: list, op: str) -> list[Value]:
        try:
            return plan.convert(raw)
        except VALUE_ERRORS as exc:
            raise self._value_error(plan, op, exc) from exc

    def _value_error(self, plan: Plan, op: str, exc: Exception) -> SourceError:
        txid = self._tx.txid if self._tx else "?"
        return SourceError(f"cannot read an {op} row of {plan.table} (xid {txid}): {exc}")

    def _add(self, plan: Plan, op: Op, columns: list[str], row: Row) -> None:
        group = self._group
        if group is None or group.op is not op or group.columns is not columns:
            tx = self._tx
            if tx is None:  # op.value only now: an enum's value is slow to read, once per group
                self._open(op.value)
            group = self._group = TableChanges(plan.table, op, columns, plan.key, [row])
            tx.changes.append(group)
        else:
            group.rows.append(row)

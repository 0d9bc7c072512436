"""The event model: what travels through the funnel.

One Kafka message carries one *batch*: a chunk of one source transaction, with the
transaction fields once and the row changes grouped by table and operation, column
names once per group and each row image as a list in column order.  The first
design notes had one message per row change; we chose chunks because Avro decoding is the
apply bottleneck (docs/ARCHITECTURE.md, Performance notes) and a chunk decodes several times
faster per row than a row-per-message map of unions.  Every per-row field of the
design is still there: ``seq`` is the index of the chunk's first row in its
transaction and ``tx_rows`` the transaction's total, so a reader knows when it holds
a whole transaction (``seq + rows == tx_rows``).

Column values are None, bool, int (64-bit), float, str or bytes.  Types without an
exact Avro counterpart travel as their canonical text.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple, Union

from funnel.ddl import Ddl

Value = Union[None, bool, int, float, str, bytes]


class Op(str, enum.Enum):
    """What happened to the rows of a table group."""

    SNAPSHOT = "snapshot"  # a row of the initial copy: upsert, applied at once
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    TRUNCATE = "truncate"  # no rows: empty the table
    DDL = "ddl"  # no rows: a schema change of the table, in ``TableChanges.ddl`` (funnel.ddl)


class Kind(str, enum.Enum):
    """What a batch is.  Heartbeats and snapshot markers carry no row changes."""

    CHANGES = "changes"
    SNAPSHOT = "snapshot"  # rows of the initial copy, not delayed
    SNAPSHOT_END = "snapshot_end"  # the initial copy is complete; changes follow
    HEARTBEAT = "heartbeat"  # the source is idle but alive at commit_ts


class Row(NamedTuple):
    """One row change. ``before`` is None for inserts and snapshot rows; ``after`` for deletes."""

    before: list[Value] | None
    after: list[Value] | None


@dataclass(slots=True)
class TableChanges:
    """Consecutive changes of one operation on one table, in source order."""

    table: str  # schema-qualified where the source has schemas ("public.orders")
    op: Op
    columns: list[str]  # names of the values in each row image, in order
    # Primary-key columns (a subset of ``columns``).  Empty for a table without a key:
    # its rows are a multiset, and an update or delete changes one row equal to ``before``.
    key: list[str]
    rows: list[Row] = field(default_factory=list)
    ddl: Ddl | None = None  # the schema change of an Op.DDL group; None for every other op


@dataclass(slots=True)
class ChangeBatch:
    """One message of the funnel: a chunk of a source transaction.

    ``commit_ts`` is the source commit time in microseconds since the epoch (UTC);
    it is also the Kafka message timestamp (in milliseconds), so ``offsets_for_times``
    seeks by commit time.  ``position`` is the source's resume position (changelog
    sequence, LSN) after this transaction; the producer resumes after the highest
    position it finds in the funnel.
    """

    source: str
    txid: str
    commit_ts: int
    position: int
    seq: int
    tx_rows: int
    kind: Kind = Kind.CHANGES
    changes: list[TableChanges] = field(default_factory=list)

    @property
    def row_count(self) -> int:
        return sum(len(group.rows) for group in self.changes)

    @property
    def ends_transaction(self) -> bool:
        """True when this chunk is the last one of its transaction."""
        return self.seq + self.row_count >= self.tx_rows

"""The slot with its exported snapshot, and the initial copy read in that snapshot.

``CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')`` (``EXPORT_SNAPSHOT`` before 15)
returns the slot's consistent point C and the name of a snapshot that sees exactly the
transactions committed before C.  A second, ordinary connection imports it
(``SET TRANSACTION SNAPSHOT`` in a REPEATABLE READ READ ONLY transaction), after which the
replication connection is closed; the copy reads each table with ``COPY ... TO STDOUT``
(streamed: a table is never held whole) and yields ``Op.SNAPSHOT`` chunks.  The slot
decodes exactly the transactions that commit at or after C, so nothing is lost or
doubled at the seam while production keeps writing.  Creating the slot waits for the
transactions open at that moment to end.  An existing slot of the same name is dropped
first: ``snapshot()`` is only called for an empty funnel, so that slot's position is
worth nothing.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
from psycopg import sql

from funnel.errors import SourceError
from funnel.events import Op, Row, TableChanges
from producer.sources.postgres.catalog import TableInfo, inspect_tables
from producer.sources.postgres.connection import connect
from producer.sources.postgres.pgoutput import lsn_to_text
from producer.sources.postgres.stream import ReplicationStream
from producer.sources.postgres.values import copy_type

log = logging.getLogger("timefunnel.capture.postgres")


def create_slot_with_snapshot(url: str, slot: str, server_version: int, oids: list[int],
                              replica_identity_full: bool, chunk_rows: int) -> PostgresSnapshot:
    """Creates permanent slot ``slot`` and opens the copy of tables ``oids`` in the
    snapshot it exports.  Waits for the transactions open at this moment to end.
    Raises SourceError if the slot cannot be created or the snapshot imported."""
    replication = ReplicationStream.connect(url)
    try:
        position, snapshot_name = replication.create_slot(slot, server_version)
        log.info("created replication slot %s at %s", slot, lsn_to_text(position))
        copy_conn = connect(url, autocommit=False)
        try:
            tables = _import_snapshot(copy_conn, snapshot_name, slot, oids, replica_identity_full)
        except BaseException:
            copy_conn.close()
            raise
    finally:
        replication.close()  # the exported snapshot lives only until then: it is imported
    return PostgresSnapshot(copy_conn, position, tables, chunk_rows)


def _import_snapshot(conn: psycopg.Connection, snapshot_name: str, slot: str, oids: list[int],
                     replica_identity_full: bool) -> list[TableInfo]:
    """Enters the exported snapshot on ``conn`` and reads the tables' columns in it.
    Raises SourceError if the snapshot cannot be imported or a table changed."""
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
        return inspect_tables(conn, oids, replica_identity_full)
    except psycopg.Error as exc:
        raise SourceError(f"cannot read in the snapshot of slot {slot}: {exc}") from exc


class PostgresSnapshot:
    """A consistent initial copy: ``position`` (the slot's consistent point, an LSN) and
    the rows as TableChanges chunks.  Iterate once; the copy's transaction ends when
    iteration finishes or on ``close()``."""

    def __init__(self, conn: psycopg.Connection, position: int, tables: list[TableInfo], chunk_rows: int) -> None:
        self.position = position
        self.tables = [table.qualified for table in tables]
        self._conn: psycopg.Connection | None = conn
        self._infos = tables
        self._chunk_rows = chunk_rows

    def __iter__(self) -> Iterator[TableChanges]:
        """Yields chunks of at most chunk_rows rows, table by table; one chunk in memory
        at a time.  Empty tables yield nothing.  Raises SourceError if a table cannot be
        read, or the snapshot was already read."""
        if self._conn is None:
            raise SourceError("the snapshot was already read or closed")
        try:
            for table in self._infos:
                yield from self._chunks(table)
        finally:
            self.close()

    def _chunks(self, table: TableInfo) -> Iterator[TableChanges]:
        assert self._conn is not None
        columns, key = table.column_names, list(table.key)
        statement = sql.SQL("COPY {} ({}) TO STDOUT").format(
            table.ident, sql.SQL(", ").join(sql.Identifier(c) for c in columns))
        try:
            with self._conn.cursor().copy(statement) as copy:
                copy.set_types([copy_type(c.base_oid) for c in table.columns])
                rows: list[Row] = []
                for values in copy.rows():
                    rows.append(Row(None, list(values)))
                    if len(rows) >= self._chunk_rows:
                        yield TableChanges(table.qualified, Op.SNAPSHOT, columns, key, rows)
                        rows = []
                if rows:
                    yield TableChanges(table.qualified, Op.SNAPSHOT, columns, key, rows)
        except psycopg.Error as exc:
            raise SourceError(f"cannot copy table {table.qualified} for the snapshot: {exc}") from exc

    def close(self) -> None:
        """Ends the copy's transaction (the server may then clean up behind it)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> PostgresSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


"""The SQLite mirror: ``MirrorSink`` (the one sink algorithm) over ``SqliteWriter``.

What is SQLite's own: the pragmas, untyped tables created from the events, and one
``executemany`` per batch (``applier.sinks.collapse``; there are no round trips to save).

Table names are mapped as ``applier.sinks.sqlite_sql`` describes (``main.orders`` and
``public.orders`` become ``orders``, ``sales.orders`` becomes ``sales_orders``).  Missing
tables are created from the first event's columns (untyped, so values keep their exact
type) with the source key as PRIMARY KEY; existing tables are used as they are, as long
as they have every column the events carry (a column the mirror lacks is looked up again
before failing, so a column added to the mirror while the applier runs is found).

A keyless source table (``applier.sinks.base.is_keyless``) is created without PRIMARY
KEY and kept as a multiset: plain inserts, and updates and deletes of one row (by
rowid) whose columns are all ``IS`` the before image; from ``KEYLESS_COPY_MIN_ROWS``
deletes at once, the distinct images and their copies go to an indexed staging table
and one statement deletes them all (``sqlite_sql.delete_copies_sql``).

Not thread-safe: one applier thread owns a sink.
"""
from __future__ import annotations

import os
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Callable

from applier.sinks import collapse
from applier.sinks import ddl as ddl_sql
from applier.sinks.base import is_keyless
from applier.sinks.collapse import Batch
from applier.sinks.mirror import MirrorSink
from applier.sinks.sqlite_sql import (
    CREATE_STATE_TABLE,
    create_stage_sql,
    create_table_sql,
    delete_copies_sql,
    delete_one_sql,
    delete_sql,
    insert_sql,
    insert_stage_sql,
    key_indexes,
    mirror_table_name,
    position_select_sql,
    truncate_sql,
    update_one_sql,
    upsert_sql,
)
from applier.sinks.state import EPOCH_COLUMN, STATE_TABLE, add_epoch_column_sql, position_from_row
from applier.transaction import MirrorPosition
from funnel import ddl as ddl_model
from funnel.databases import sqlite as databases_sqlite
from funnel.databases.names import quote_ident
from funnel.errors import SinkError
from funnel.events import TableChanges, Value

# WAL lets readers query the mirror while the applier writes.  synchronous=NORMAL does
# not fsync on every commit, so a power loss can lose the last commits -- but never
# half of one, and the position is written in the same database transaction as the
# rows: rows and position roll back together, and the applier simply re-applies from
# the older position it then finds.  Durability of the last commits is what Kafka
# already gives us; FULL would add an fsync to every commit for nothing.
#
# A checkpoint every 10,000 pages (about 40 MB of WAL at 4 KiB pages) instead of
# SQLite's 1,000: each checkpoint fsyncs and rewrites the hot pages of the tables, and
# checkpointing a tenth as often made 1,000-row commits 20-30% faster in
# bench/sink_sqlite.py.  Readers see no difference beyond a larger -wal file.
MIRROR_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA wal_autocheckpoint=10000",
)

# A reader checkpointing the WAL, or an operator's write, holds the lock briefly:
# wait for it rather than failing the apply at once.
BUSY_TIMEOUT_MS = 10_000

# SQLite reports bad values (an int above 64 bits) with OverflowError.
_DB_ERRORS = (sqlite3.Error, OverflowError)

_POSITION_SELECT = position_select_sql()

# From this many keyless deletes one batch stages them and deletes with one statement
# (one scan of the mirror table) instead of one statement, and one scan, per row.
KEYLESS_COPY_MIN_ROWS = 16

KeyOf = Callable[[Sequence[Value]], Any]


@dataclass(frozen=True, slots=True)
class _Plan:
    """Prepared SQL for one source table and column layout."""

    table: str  # the mirror table name
    upsert: str  # keyless: a plain INSERT
    delete: str  # keyless: deletes one row equal to the whole before image
    key_of: KeyOf  # the key of a row image: a value (one key column) or a tuple
    single_key: bool
    update: str | None = None  # keyless only: updates one row equal to the before image
    keyless: bool = False  # a field, not a property: read for every group of a call
    stage: tuple[list[str], str, str, str] | None = None  # keyless: see SqliteWriter._delete_copies


class SqliteWriter:
    """What is SQLite's own in applying to a mirror file: pragmas, untyped tables, executemany.

    Raises SinkError when the file cannot be opened or is not a SQLite database.
    """

    placeholder = "?"
    errors = _DB_ERRORS
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = self.where = os.fspath(path)
        self._plans: dict[tuple[str, tuple[str, ...], tuple[str, ...]], _Plan] = {}
        self._columns: dict[str, frozenset[str]] = {}  # mirror table -> lower-cased columns
        # Staging tables by (mirror table, columns); never forgotten, so a name keeps its columns.
        self._stages: dict[tuple[str, tuple[str, ...]], str] = {}
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            # Autocommit: we issue BEGIN/COMMIT ourselves, so one apply call is exactly
            # one database transaction, DDL included.
            conn = databases_sqlite.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, cached_statements=512)
            for pragma in MIRROR_PRAGMAS:
                conn.execute(pragma)
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                # No WAL here (":memory:", a file system without shared memory): in a
                # rollback journal NORMAL can corrupt the file on power loss, FULL cannot.
                conn.execute("PRAGMA synchronous=FULL")
            conn.execute(CREATE_STATE_TABLE)
            _add_epoch_column(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise SinkError(
                f"cannot open mirror database {self.path}: {exc}",
                hint="Check that the directory exists and is writable and the file is a SQLite database.",
            ) from exc
        return conn

    @staticmethod
    def message(error: BaseException) -> str:
        return str(error)

    def ensure_open(self) -> None:
        """Nothing to reconnect: a closed file fails the next statement with a SinkError."""

    def close(self) -> None:
        self._conn.close()

    def begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        # Tables created in the failed transaction are gone again: forget what we knew.
        self._plans.clear()
        self._columns.clear()
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            # SQLite may already have rolled back on its own (disk full, I/O error);
            # the original error is the one the operator needs.
            pass

    def execute(self, sql: str, params: Sequence[Value] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, params)

    def read_position(self, funnel: str, mirror: str) -> MirrorPosition | None:
        row = self._conn.execute(_POSITION_SELECT, (funnel, mirror)).fetchone()
        return None if row is None else position_from_row(row)

    @staticmethod
    def display(plan: _Plan) -> str:
        return plan.table

    # -- rows ------------------------------------------------------------------------------
    def write(self, batch: Batch, exact: bool) -> int:
        """One executemany per batch, in order (SQLite has no round trips to save)."""
        plan, kind, items = batch.plan, batch.kind, batch.items
        if kind == collapse.DELETE:
            if plan.single_key:
                items = [(key,) for key in items]
            self._conn.executemany(plan.delete, items)
        elif kind in (collapse.UPSERT, collapse.INSERT):
            self._conn.executemany(plan.upsert, items)
        elif kind == collapse.DELETE_ONE and not exact and len(items) >= KEYLESS_COPY_MIN_ROWS:
            return self._delete_copies(plan, items)
        else:
            if kind == collapse.UPDATE_ONE:
                changed = self._conn.executemany(plan.update, [(*after, *before) for before, after in items])
            else:
                changed = self._conn.executemany(plan.delete, [before for before, _ in items])
            # Each keyless statement changes at most one row (LIMIT 1): the sum tells if all matched.
            return len(items) - changed.rowcount
        return 0

    def _delete_copies(self, plan: _Plan, rows: list[Any]) -> int:
        """Keyless deletes by one statement through a staging table (``delete_copies_sql``).

        Counted in Python first: Python's equality is never looser than ``IS`` (1 == 1.0
        in both), and where it is stricter (NaN) two entries take the same mirror row,
        which is deleted once: the count then falls short and the sink replays in order.
        Returns how many before images matched no row.
        """
        create, insert, delete, empty = plan.stage
        for statement in create:  # IF NOT EXISTS: a rollback may have dropped it
            self._conn.execute(statement)
        self._conn.executemany(insert, [(*image, copies) for image, copies in Counter(
            tuple(before) for before, _ in rows).items()])
        deleted = self._conn.execute(delete).rowcount
        self._conn.execute(empty)
        return len(rows) - deleted

    def truncate(self, source_table: str, txid: str) -> None:
        table = mirror_table_name(source_table)
        # A table the mirror never saw has no rows to remove.
        try:
            if self._table_columns(table) is not None:
                self._conn.execute(truncate_sql(table))
        except _DB_ERRORS as exc:
            raise SinkError(f"cannot truncate mirror table {table!r} (source table {source_table!r}, "
                            f"txid {txid}): {exc}") from exc

    def schema_change(self, group: TableChanges, txid: str) -> None:
        """Apply a schema change in this database transaction, after the rows before it.

        A table the mirror does not have yet is created with the change's resulting
        definition.  Raises SinkError for a change SQLite cannot express (nothing runs).
        """
        statements = ddl_sql.sqlite_statements(group.ddl, group.table, txid)
        try:
            old = mirror_table_name(group.ddl.object)
            dropping = any(a.kind == ddl_model.DROP_TABLE for a in group.ddl.actions)
            if self._table_columns(old) is None and not dropping and group.ddl.definition is not None:
                definition = group.ddl.definition
                statements = [create_table_sql(mirror_table_name(group.table), definition.names, definition.key)]
            for statement in statements:
                self._conn.execute(statement)
        except _DB_ERRORS as exc:
            raise SinkError(f"cannot apply to table {group.table!r} (txid {txid}): {exc}") from exc
        # Every cached plan and column set may name what just changed.
        self._plans.clear()
        self._columns.clear()

    # -- tables and plans ----------------------------------------------------------------------
    def plan(self, group: TableChanges) -> _Plan:
        cache_key = (group.table, tuple(group.columns), tuple(group.key))
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = self._plans[cache_key] = self._build_plan(group)
        return plan

    def _build_plan(self, group: TableChanges) -> _Plan:
        """Prepare SQL for a table layout, creating the mirror table if it is missing.

        Raises SinkError when the mirror table lacks a column of the event, or has a
        primary key while the source table has none.
        """
        table = mirror_table_name(group.table)
        key_index = key_indexes(table, group.columns, group.key)
        existing = self._table_columns(table)
        if existing is None:
            self._conn.execute(create_table_sql(table, group.columns, group.key))
            self._columns[table] = frozenset(column.lower() for column in group.columns)
            primary_key = [column.lower() for column in group.key]
        else:
            self._check_columns(table, group)
            primary_key = self._primary_key(table)
        if is_keyless(group.key) or _legacy_keyless(group, primary_key):
            if primary_key:
                raise _keyless_with_primary_key(table, group.table, primary_key)
            return _Plan(table=table, upsert=insert_sql(table, group.columns),
                         delete=delete_one_sql(table, group.columns), key_of=tuple, single_key=False,
                         update=update_one_sql(table, group.columns), keyless=True,
                         stage=self._stage(table, group.columns))
        return _Plan(
            table=table,
            upsert=upsert_sql(table, group.columns, group.key),
            delete=delete_sql(table, group.key),
            key_of=itemgetter(*key_index),
            single_key=len(key_index) == 1,
        )

    def _stage(self, table: str, columns: Sequence[str]) -> tuple[list[str], str, str, str]:
        """The staging table statements of a keyless layout: (create, insert, delete, empty)."""
        stage = self._stages.setdefault((table, tuple(columns)), f"_timefunnel_stage_{len(self._stages) + 1}")
        return (create_stage_sql(stage, columns), insert_stage_sql(stage, columns),
                delete_copies_sql(table, stage, columns), f"DELETE FROM temp.{quote_ident(stage)}")

    def _check_columns(self, table: str, group: TableChanges) -> None:
        """Raises SinkError when the mirror table lacks an event column, even after reading it again."""
        for fresh in (False, True):
            if fresh:  # the operator may have added it since we looked (the README's procedure)
                self._columns.pop(table, None)
            existing = self._table_columns(table) or frozenset()
            # SQLite compares column names case-insensitively.
            missing = [column for column in group.columns if column.lower() not in existing]
            if not missing:
                return
        raise SinkError(
            f"mirror table {table!r} has no column {missing[0]!r} (source table {group.table!r})",
            hint=f"Add it to the mirror (ALTER TABLE {quote_ident(table)} ADD COLUMN {quote_ident(missing[0])}),"
            " then restart the applier.",
        )

    def _primary_key(self, table: str) -> list[str]:
        """Lower-cased primary-key columns of an existing mirror table, in key order."""
        return [name.lower() for name, in self._conn.execute(
            "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk", (table,))]

    def _table_columns(self, table: str) -> frozenset[str] | None:
        """Lower-cased column names of a mirror table, or None if it does not exist."""
        columns = self._columns.get(table)
        if columns is None:
            rows = self._conn.execute("SELECT name FROM pragma_table_info(?)", (table,)).fetchall()
            if not rows:
                return None
            columns = self._columns[table] = frozenset(name.lower() for (name,) in rows)
        return columns


class SqliteSink(MirrorSink):
    """A SQLite mirror database file (``MirrorSink`` over ``SqliteWriter``).

    Raises SinkError when the file cannot be opened or is not a SQLite database;
    the hint says what to check.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        writer = SqliteWriter(path)
        self.path = writer.path
        super().__init__(writer)

    def __enter__(self) -> SqliteSink:
        return self


def _legacy_keyless(group: TableChanges, primary_key: list[str]) -> bool:
    """Events of a keyless table published by versions that sent every column as the key.

    Applied as keyless once the mirror table has no primary key (made by this version,
    or fixed by the operator), so that a delayed mirror gets past the older events.
    """
    return not primary_key and {c.lower() for c in group.key} == {c.lower() for c in group.columns}


def _keyless_with_primary_key(table: str, source: str, key: list[str]) -> SinkError:
    # Versions before keyless support created such tables with every column as primary key;
    # it would refuse the duplicate rows production may hold.
    return SinkError(
        f"mirror table {table!r} has primary key ({', '.join(key)}) but source table {source!r} "
        f"has none: its rows are applied as a multiset, and duplicates would be refused",
        hint=f"Recreate the mirror table without primary key (CREATE TABLE new AS SELECT * FROM "
             f"{quote_ident(table)}; DROP TABLE {quote_ident(table)}; ALTER TABLE new RENAME TO "
             f"{quote_ident(table)}), then restart the applier.",
    )


def _add_epoch_column(conn: sqlite3.Connection) -> None:
    """Migrates a state table made before fencing, in place (a no-op on a new one)."""
    def has_epoch() -> bool:
        columns = {name for (name,) in conn.execute(f"SELECT name FROM pragma_table_info('{STATE_TABLE}')")}
        return EPOCH_COLUMN in columns

    if has_epoch():
        return
    try:
        conn.execute(add_epoch_column_sql("INTEGER"))
    except sqlite3.OperationalError:
        if not has_epoch():  # else another applier starting at the same moment migrated it
            raise

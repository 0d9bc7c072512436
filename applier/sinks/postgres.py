"""The PostgreSQL mirror: ``MirrorSink`` (the one sink algorithm) over ``PostgresWriter``.

Tables keep their schema (``public.orders`` -> ``"public"."orders"``) and must exist on
the mirror with production's primary key (none for a keyless table); with
``create_tables`` a missing one is created from production's definition
(``ControlChannel.table_definitions``).  User
types (enums, domains, composites) are not in those definitions: the operator creates
them on the mirror first (``pg_dump --schema-only`` of production gives them).

Values arrive as None, bool, int, float, str or bytes; every type without an exact Avro
counterpart (numeric, date/time types, interval, uuid, json, arrays, enums...) arrives as
PostgreSQL's canonical text, and the mirror parses it with the column's own input
function: text COPY into a staging table typed like the mirror table, or strings bound
with an unknown type in executemany.  Floats and big ints travel exactly (binary float8,
digits); bytea stays bytes.

How rows are written: ``applier.sinks.mirror.MirrorSink`` folds the row changes of an
apply call into their net effect per table and key (``applier.sinks.collapse``) and hands
this writer one batch per table and kind:

* upserts of ``copy_min_rows`` rows or more, and every batch with snapshot rows, are
  COPYed (text format) into a temp staging table and upserted with one
  ``INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE`` -- or COPYed straight into
  the mirror table when that is empty (an initial copy); smaller ones go through
  ``executemany`` (pipelined by psycopg);
* deletes are one ``DELETE ... USING unnest(<one array per key column>)``;
* keyless inserts are COPYed straight into the mirror table from ``copy_min_rows`` rows;
  keyless deletes from ``KEYLESS_COPY_MIN_ROWS`` rows are COPYed into a staging table
  and deleted by one statement, k copies of an image deleting k equal rows
  (``postgres_sql.delete_copies_sql``); fewer, and keyless updates, change one row
  each (``postgres_sql``, Keyless tables);
* in an exact replay (``MirrorSink``, after a mirror-only constraint refused the net
  effect, or a keyless delete found fewer rows than asked) every upsert and delete is
  one pipelined statement, in order.

A mirror table is described once; when an event has a column it lacks, the catalog is
read again before failing, so a column the operator added while the applier runs is used.

Rows of one table that carry fewer columns (the capture leaves out an unchanged TOASTed
value) form their own layout and batch, and upsert only the columns they carry, so the
mirror keeps the value it has.

Not thread-safe: one applier thread owns a sink.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import psycopg
import psycopg.errors

from applier.sinks import collapse
from applier.sinks import ddl as ddl_sql
from applier.sinks.collapse import Batch
from applier.sinks.mirror import MirrorSink
from applier.sinks.postgres_sql import (
    SESSION_SETTINGS,
    STATE_TABLE,
    Layout,
    MirrorTable,
    copy_sql,
    create_stage_sql,
    create_state_table_sql,
    delete_copies_sql,
    delete_keys_sql,
    delete_one_sql,
    delete_sql,
    has_rows_sql,
    insert_values_sql,
    layout,
    missing_columns,
    one_line,
    position_select_sql,
    truncate_sql,
    update_one_sql,
    upsert_select_sql,
    upsert_values_sql,
)
from applier.sinks.postgres_tables import Catalog, Definitions
from applier.sinks.state import EPOCH_COLUMN, add_epoch_column_sql, position_from_row
from applier.transaction import MirrorPosition
from funnel.databases import postgres as databases_postgres
from funnel.databases.names import quote_ident
from funnel.errors import SinkError
from funnel.events import TableChanges, Value
from funnel.urls import masked_password

# Below this many rows a batch is cheaper as one pipelined executemany than as COPY +
# INSERT ... SELECT (two more round trips).  Measured with bench/apply_postgres.py's
# rows: executemany wins at 40 rows per commit (23k vs 20k rows/s), COPY at 60 (26k vs 20k).
COPY_MIN_ROWS = 50

# From this many keyless deletes one batch stages them and deletes with one statement
# (one scan of the mirror table) instead of one statement, and one scan, per row.
KEYLESS_COPY_MIN_ROWS = 16

_POSITION_SELECT = position_select_sql()

Image = Sequence[Value]
# The key of a row image: the value itself for a one-column key, else a tuple.  An
# itemgetter either way, so picking keys costs no Python call per row.
KeyOf = Callable[[Image], Any]


@dataclass(frozen=True, slots=True)
class _Plan:
    """Prepared SQL for one source table and column layout."""

    source: str  # the source table name, for messages
    table: MirrorTable
    layout: Layout
    upsert: str  # one-row upsert for executemany; keyless: a plain INSERT
    delete: str  # one-row delete for executemany; keyless: of one row equal to the before image
    key_of: KeyOf  # the key of a row image (see KeyOf)
    project: Callable[[Image], Image] | None  # the written values of a row image; None: all of it
    delete_keys: str | None = None  # keyed: one DELETE of many keys (``delete_keys_sql``)
    update: str | None = None  # keyless: UPDATE of one row equal to the before image
    update_values: Callable[[Image], tuple[Value, ...]] | None = None  # keyless: what ``update`` sets
    keyless: bool = False  # a field, not a property: read for every group of a call

    def written(self, images: list[Image]) -> list[Image]:
        return images if self.project is None else list(map(self.project, images))

    def key_params(self, keys: list[Any]) -> list[Sequence[Value]]:
        """Parameters of the one-row delete statement for keys as ``key_of`` gives them."""
        return keys if len(self.layout.key) > 1 else [(key,) for key in keys]

    def key_arrays(self, keys: list[Any]) -> list[list[Value]]:
        """Parameters of ``delete_keys``: one list per key column."""
        return [keys] if len(self.layout.key) == 1 else [list(column) for column in zip(*keys)]

    @property
    def target(self) -> str:
        return self.table.qualified


def _getter(index: tuple[int, ...]) -> Callable[[Image], tuple[Value, ...]]:
    """A function picking ``index`` out of a row image, always as a tuple."""
    if len(index) == 1:
        only = index[0]
        return lambda row: (row[only],)
    return itemgetter(*index)


class PostgresWriter:
    """What is PostgreSQL's own in applying to a mirror (see the module docstring).

    Raises SinkError when the server cannot be reached, refuses the login, or the state
    table cannot be created; the hint says what to check.
    """

    placeholder = "%s"
    errors = (psycopg.Error,)
    # CardinalityViolation: two keys Python tells apart but the mirror's type does not
    # ('a' and 'a ' in a char(n) key, NaN) met in one INSERT ... ON CONFLICT; row by row
    # in order, as the replay sends them, they are an update of one row.
    integrity_errors = (psycopg.IntegrityError, psycopg.errors.CardinalityViolation)

    def __init__(self, url: str, create_tables: bool, table_definitions: Definitions | None,
                 copy_min_rows: int) -> None:
        self.url = url
        self.where = masked_password(url)
        self.copy_min_rows = max(1, copy_min_rows)
        self._plans: dict[tuple[str, tuple[str, ...], tuple[str, ...]], _Plan] = {}
        self._stages: dict[tuple[str, Layout], tuple[str, str]] = {}  # -> (staging table, upsert SQL)
        self._stage_count = 0  # never reset: a name is never reused within a session
        self._staged: set[str] = set()  # stages that received rows in the current transaction
        self._nonempty: set[str] = set()  # mirror tables known to hold rows
        self._closed = False
        self._transaction: psycopg.Transaction | None = None
        self._conn = self._connect()
        self._catalog = Catalog(lambda: self._conn, create_tables, table_definitions)

    # -- connection and transactions --------------------------------------------------
    def _connect(self) -> psycopg.Connection:
        # autocommit: we open every transaction ourselves, so one apply call is exactly
        # one database transaction and read_position holds no snapshot open.
        conn = databases_postgres.connect(self.url, "applier", error=SinkError, what="mirror database")
        try:
            for setting in SESSION_SETTINGS:
                conn.execute(setting)
            if conn.execute("SELECT to_regclass(%s) IS NULL", (STATE_TABLE,)).fetchone()[0]:
                conn.execute(create_state_table_sql())
            _add_epoch_column(conn)
        except psycopg.Error as exc:
            conn.close()
            raise SinkError(
                f"cannot prepare mirror database {self.where}: {one_line(exc)}",
                hint=f"The mirror user needs to create and write table {STATE_TABLE} in its first schema.",
            ) from exc
        return conn

    @staticmethod
    def message(error: BaseException) -> str:
        return one_line(error)

    def ensure_open(self) -> None:
        """Reconnect after a lost connection (a server restart).  Raises SinkError."""
        if self._closed:
            raise SinkError(f"the mirror sink for {self.where} is closed")
        if self._conn.closed or self._conn.broken:
            self._forget()
            self._conn.close()
            self._conn = self._connect()

    def close(self) -> None:
        self._closed = True
        self._conn.close()

    def begin(self) -> None:
        self.ensure_open()
        self._staged.clear()  # ON COMMIT DELETE ROWS emptied them
        self._transaction = self._conn.transaction()
        self._transaction.__enter__()

    def commit(self) -> None:
        transaction, self._transaction = self._transaction, None
        transaction.__exit__(None, None, None)

    def rollback(self) -> None:
        transaction, self._transaction = self._transaction, None
        # Tables, columns and staging tables may have been created or changed in the
        # failed transaction: forget all of it and check again next time.
        self._forget()
        if transaction is None or self._conn.closed or self._conn.broken:
            return
        try:
            transaction.__exit__(psycopg.Rollback, psycopg.Rollback(), None)
            self._conn.execute("DISCARD TEMP")  # staging tables of earlier commits
        except psycopg.Error:
            pass  # the original error is the one the operator needs; reconnect repairs

    def _forget(self) -> None:
        self._catalog.forget()
        self._plans.clear()
        self._stages.clear()
        self._staged.clear()
        self._nonempty.clear()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        return self._conn.execute(sql, params)

    def read_position(self, funnel: str, mirror: str) -> MirrorPosition | None:
        self.ensure_open()
        row = self._conn.execute(_POSITION_SELECT, (funnel, mirror)).fetchone()
        return None if row is None else position_from_row(row)

    @staticmethod
    def display(plan: _Plan) -> str:
        return plan.table.display

    def after_promote(self) -> list[str]:
        """Move every sequence behind a serial or identity column past the column's largest value.

        The mirror received those values from production without drawing them from its
        own sequences; after a takeover the applications insert here, and the next
        value must not collide. Returns the sequences moved. Raises SinkError.
        """
        self.ensure_open()
        try:
            with self._conn.transaction():
                owned = self._conn.execute(_OWNED_SEQUENCES).fetchall()
                for sequence, table, column in owned:
                    self._conn.execute(
                        f"SELECT setval(%s::regclass, coalesce(max({quote_ident(column)}), 1), max({quote_ident(column)}) "
                        f"IS NOT NULL) FROM {table}", (sequence,))
        except psycopg.Error as exc:
            raise SinkError(f"cannot advance the mirror's sequences after the promotion: {exc}") from exc
        return [sequence for sequence, _, _ in owned]

    # -- rows -------------------------------------------------------------------------
    def write(self, batch: Batch, exact: bool) -> int:
        """Send one batch; see the module docstring for which way each kind goes."""
        plan, kind, items = batch.plan, batch.kind, batch.items
        cursor = self._conn.cursor()
        if kind == collapse.UPSERT:
            rows = plan.written(items)
            if not exact and (batch.snapshot or len(rows) >= self.copy_min_rows):
                self._copy_upsert(plan, rows, cursor)
            else:  # exact: keys may repeat, which one INSERT ... SELECT ... ON CONFLICT refuses
                cursor.executemany(plan.upsert, rows)
            self._nonempty.add(plan.target)
        elif kind == collapse.DELETE:
            if exact or plan.delete_keys is None or len(items) == 1:
                cursor.executemany(plan.delete, plan.key_params(items))
            else:
                cursor.execute(plan.delete_keys, plan.key_arrays(items))
        elif kind == collapse.INSERT:
            # Keyless inserts: nothing can conflict, so large batches COPY straight into the table.
            rows = plan.written(items)
            if batch.snapshot or len(rows) >= self.copy_min_rows:
                self._copy(cursor, copy_sql(plan.target, plan.layout.write_columns), rows)
            else:
                cursor.executemany(plan.upsert, rows)
            self._nonempty.add(plan.target)
        elif kind == collapse.DELETE_ONE and not exact and len(items) >= KEYLESS_COPY_MIN_ROWS:
            return self._delete_copies(plan, items, cursor)
        else:
            return self._change_one_rows(plan, kind, items, cursor)
        return 0

    def _delete_copies(self, plan: _Plan, rows: list[Any], cursor: psycopg.Cursor) -> int:
        """Keyless deletes by one statement through a staging table (``delete_copies_sql``).

        Returns how many before images matched no row.
        """
        project = plan.project or tuple
        return len(rows) - self._through_stage(plan, [project(before) for before, _ in rows], cursor)

    @staticmethod
    def _change_one_rows(plan: _Plan, kind: str, rows: list[Any], cursor: psycopg.Cursor) -> int:
        """Keyless updates or deletes, each of exactly one row equal to its before image.

        Returns how many before images matched no row (the mirror differs from production).
        """
        project = plan.project or tuple
        if kind == collapse.DELETE_ONE:
            cursor.executemany(plan.delete, [project(before) for before, _ in rows])
        elif plan.update is None:  # nothing PostgreSQL lets us update
            return 0
        else:
            values = plan.update_values
            cursor.executemany(plan.update, [(*values(after), *project(before)) for before, after in rows])
        # Each statement changes at most one row (LIMIT 1): the sum tells if all matched.
        return len(rows) - cursor.rowcount

    def _copy_upsert(self, plan: _Plan, rows: list[Image], cursor: psycopg.Cursor) -> None:
        if not self._has_rows(plan.target, cursor):
            # An empty table and distinct keys: nothing can conflict, COPY straight in.
            self._copy(cursor, copy_sql(plan.target, plan.layout.write_columns), rows)
            return
        self._through_stage(plan, rows, cursor)

    def _through_stage(self, plan: _Plan, rows: list[Image], cursor: psycopg.Cursor) -> int:
        """COPY ``rows`` into the plan's staging table and run its statement (``_stage``: the
        upsert, or a keyless table's delete of copies); returns the rows it changed."""
        stage, statement = self._stage(plan, cursor)
        if stage in self._staged:
            cursor.execute(f"DELETE FROM {stage}")  # second batch of this table in one commit
        self._staged.add(stage)
        self._copy(cursor, copy_sql(stage, plan.layout.write_columns), rows)
        cursor.execute(statement)
        return cursor.rowcount

    @staticmethod
    def _copy(cursor: psycopg.Cursor, sql: str, rows: list[Image]) -> None:
        with cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)

    def _has_rows(self, target: str, cursor: psycopg.Cursor) -> bool:
        if target in self._nonempty:
            return True
        if cursor.execute(has_rows_sql(target)).fetchone()[0]:
            self._nonempty.add(target)
            return True
        return False

    def _stage(self, plan: _Plan, cursor: psycopg.Cursor) -> tuple[str, str]:
        """The staging table of a plan and its statement, created on first use: the upsert
        of its rows, for a keyless table the delete of their copies."""
        stage_key = (plan.target, plan.layout)
        known = self._stages.get(stage_key)
        if known is None:
            self._stage_count += 1
            # pg_temp: never one of the mirror's own tables, whatever the search_path.
            stage = f"pg_temp._timefunnel_stage_{self._stage_count}"
            cursor.execute(create_stage_sql(stage, plan.target, plan.layout))
            statement = (delete_copies_sql if plan.keyless else upsert_select_sql)(plan.target, stage, plan.layout)
            known = self._stages[stage_key] = (stage, statement)
        return known

    # -- barriers -----------------------------------------------------------------------
    def truncate(self, source_table: str, txid: str) -> None:
        try:
            table = self._catalog.table(source_table)
            self._conn.execute(truncate_sql(table.qualified))
        except SinkError as exc:
            raise SinkError(f"{exc} (txid {txid})", hint=exc.hint) from exc
        except psycopg.Error as exc:
            raise SinkError(f"cannot truncate mirror table for {source_table!r} (txid {txid}): "
                            f"{one_line(exc)}") from exc
        self._nonempty.discard(table.qualified)

    def schema_change(self, group: TableChanges, txid: str) -> None:
        """Apply a schema change in this database transaction, after the rows before it.

        Raises SinkError when the change cannot be applied (nothing of the call is then).
        """
        statements = ddl_sql.postgres_statements(group.ddl, group.table, txid)
        try:
            for statement in statements:
                self._conn.execute(statement)
        except psycopg.Error as exc:
            raise SinkError(f"cannot apply the schema change of table {group.table!r} (txid {txid}, "
                            f"{group.ddl.tag}): {one_line(exc)}",
                            hint="Compare the mirror table with production's definition before this change.") from exc
        # Staging tables and plans were made for the old definition.
        self._forget()

    # -- tables and plans -------------------------------------------------------------
    def plan(self, group: TableChanges) -> _Plan:
        cache_key = (group.table, tuple(group.columns), tuple(group.key))
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = self._plans[cache_key] = self._build_plan(group)
        return plan

    def _build_plan(self, group: TableChanges) -> _Plan:
        """Prepare SQL for a table layout.  Raises SinkError for a mismatch with the mirror table."""
        table = self._catalog.table(group.table)
        if missing_columns(table, group.columns):
            table = self._catalog.table(group.table, fresh=True)  # the operator may have just added it
        shape = layout(group.table, table, group.columns, group.key)
        project = None if len(shape.write_index) == len(group.columns) else _getter(shape.write_index)
        target = table.qualified
        if shape.keyless:
            columns = list(group.columns)
            updatable = bool(shape.update_columns)
            return _Plan(source=group.table, table=table, layout=shape,
                         upsert=insert_values_sql(target, shape),
                         delete=delete_one_sql(target, shape), key_of=tuple, project=project,
                         update=update_one_sql(target, shape) if updatable else None,
                         update_values=_getter(tuple(columns.index(c) for c in shape.update_columns))
                         if updatable else None, keyless=True)
        types = dict(zip(shape.write_columns, shape.write_types))
        delete_keys = None
        if all(column in types for column in shape.key):
            delete_keys = delete_keys_sql(target, shape.key, [types[column] for column in shape.key])
        return _Plan(source=group.table, table=table, layout=shape, upsert=upsert_values_sql(target, shape),
                     delete=delete_sql(target, shape.key), key_of=itemgetter(*shape.key_index),
                     project=project, delete_keys=delete_keys)


class PostgresSink(MirrorSink):
    """A PostgreSQL mirror database, reached by a ``postgresql://`` URL (psycopg 3):
    ``MirrorSink`` over ``PostgresWriter``.

    ``create_tables``: create missing mirror tables from ``table_definitions()``
    (production's definitions by source table name); otherwise a missing table is an
    error.  ``copy_min_rows``: the batch size from which upserts go through COPY.

    Raises SinkError when the server cannot be reached, refuses the login, or the state
    table cannot be created; the hint says what to check.
    """

    def __init__(self, url: str, create_tables: bool = False, table_definitions: Definitions | None = None,
                 *, copy_min_rows: int = COPY_MIN_ROWS) -> None:
        self._pg = PostgresWriter(url, create_tables, table_definitions, copy_min_rows)
        self.url = url
        super().__init__(self._pg)

    def __enter__(self) -> PostgresSink:
        return self

    @property
    def copy_min_rows(self) -> int:
        return self._pg.copy_min_rows

    def after_promote(self) -> list[str]:
        """See ``PostgresWriter.after_promote``.  Raises SinkError."""
        return self._pg.after_promote()


# Sequences owned by a column (serial: deptype 'a') or backing an identity column ('i').
_OWNED_SEQUENCES = """
SELECT s.oid::regclass::text, t.oid::regclass::text, a.attname
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""


def _add_epoch_column(conn: psycopg.Connection) -> None:
    """Migrates a state table made before fencing, in place (a no-op on a new one).

    Checked first: ADD COLUMN IF NOT EXISTS would still take an exclusive lock on every start.
    """
    found = conn.execute("SELECT 1 FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s "
                         "AND NOT attisdropped", (STATE_TABLE, EPOCH_COLUMN)).fetchone()
    if found is None:
        conn.execute(add_epoch_column_sql("bigint", if_not_exists=True))

"""The PostgreSQL mirror: applies whole source transactions and the position in one commit.

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

How rows are written (see docs/ARCHITECTURE.md, Performance notes):

* consecutive upserts (snapshot, insert, update) of one table are merged across the
  source transactions of an apply call and collapsed to the last image per key;
  consecutive deletes likewise.  A delete first flushes the pending upserts, and an
  update that changes the key deletes the old key first, so order is kept per key;
* a batch of ``copy_min_rows`` rows or more, and every batch with snapshot rows, is
  COPYed (text format) into a temp staging table and upserted with one
  ``INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE`` -- or COPYed straight into
  the mirror table when that is empty (an initial copy);
* smaller batches and all deletes go through ``executemany`` (pipelined by psycopg).

Keyless tables (events with an empty key) are multisets: their rows are never
collapsed, inserts are plain (COPYed straight into the mirror table from
``copy_min_rows`` rows), and each update or delete changes one row equal to its before
image (``postgres_sql``, Keyless tables).

A mirror table is described once; when an event has a column it lacks, the catalog is
read again before failing, so a column the operator added while the applier runs is used.

Rows of one table that carry fewer columns (the capture leaves out an unchanged TOASTed
value) form their own layout and batch, and upsert only the columns they carry, so the
mirror keeps the value it has.

The collapse makes one statement touch each key once, which ON CONFLICT DO UPDATE
requires, and leaves every key as the source left it.  Intermediate states inside a
batch are skipped, so mirror-only constraints between rows (other unique indexes,
foreign keys) may fail where production's order would have passed: give mirror tables
production's primary key and nothing that production does not check the same way.

Not thread-safe: one applier thread owns a sink.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from applier.sinks.postgres_sql import (
    COLUMNS_QUERY,
    SCHEMA_EXISTS_QUERY,
    SESSION_SETTINGS,
    STATE_TABLE,
    TABLE_OID_QUERY,
    UNIQUE_KEYS_QUERY,
    Layout,
    MirrorColumn,
    MirrorTable,
    copy_sql,
    create_schema_sql,
    create_stage_sql,
    quote_ident,
    create_state_table_sql,
    create_table_sql,
    delete_one_sql,
    delete_sql,
    has_rows_sql,
    insert_values_sql,
    layout,
    mirror_table_name,
    missing_columns,
    one_line,
    position_select_sql,
    truncate_sql,
    update_one_sql,
    upsert_select_sql,
    upsert_values_sql,
)
from applier.sinks import ddl as ddl_sql
from applier.sinks.base import no_matching_row
from applier.sinks.state import EPOCH_COLUMN, StateWriter, add_epoch_column_sql, position_from_row
from applier.transaction import MirrorPosition, Transaction
from funnel.errors import SinkError
from funnel.events import Op, Row, TableChanges, Value
from funnel.urls import masked_password

# Below this many rows a batch is cheaper as one pipelined executemany than as COPY +
# INSERT ... SELECT (two more round trips).  Measured with bench/apply_postgres.py's
# rows: executemany wins at 40 rows per commit (23k vs 20k rows/s), COPY at 60 (26k vs 20k).
COPY_MIN_ROWS = 50

CONNECT_TIMEOUT_S = 10

_AFTER = itemgetter(1)
_BEFORE = itemgetter(0)

# What a malformed row image raises while we pick values out of it (a None image, a short row).
_ROW_ERRORS = (TypeError, IndexError)

_POSITION_SELECT = position_select_sql()

Image = Sequence[Value]
# The key of a row image: the value itself for a one-column key, else a tuple.  An
# itemgetter either way, so picking keys costs no Python call per row.
KeyOf = Callable[[Image], Any]
Definitions = Callable[[], dict[str, dict[str, Any]]]


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
    update: str | None = None  # keyless: UPDATE of one row equal to the before image
    update_values: Callable[[Image], tuple[Value, ...]] | None = None  # keyless: what ``update`` sets

    @property
    def keyless(self) -> bool:
        return self.layout.keyless

    def written(self, image: Image) -> Image:
        return image if self.project is None else self.project(image)

    def key_params(self, keys: list[Any]) -> list[Sequence[Value]]:
        """Parameters of the delete statement for keys as ``key_of`` gives them."""
        return keys if len(self.layout.key) > 1 else [(key,) for key in keys]

    @property
    def target(self) -> str:
        return self.table.qualified


def _getter(index: tuple[int, ...]) -> Callable[[Image], tuple[Value, ...]]:
    """A function picking ``index`` out of a row image, always as a tuple."""
    if len(index) == 1:
        only = index[0]
        return lambda row: (row[only],)
    return itemgetter(*index)


def _changed_key_rows(rows: Sequence[Row], key_of: KeyOf) -> list[int]:
    """Indexes of update rows whose key differs between before and after.

    Raises TypeError or IndexError for a malformed after image.
    """
    try:
        old = list(map(key_of, map(_BEFORE, rows)))
    except TypeError:  # an update without before image (an upsert): look row by row
        return [i for i, (before, after) in enumerate(rows) if before is not None and key_of(before) != key_of(after)]
    new = list(map(key_of, map(_AFTER, rows)))
    if old == new:  # the common case, decided without a Python step per row
        return []
    return [i for i, (before, after) in enumerate(zip(old, new)) if before != after]


class _Run:
    """Consecutive statements of one kind on one table layout: one batch.

    Keyed upserts and deletes are collapsed to the last one per key (a dict), which
    keeps the result of every key as the source left it because a different statement
    -- a delete after upserts, another table -- first flushes what is pending.  Rows of
    keyless tables are kept in a list: two equal rows are two rows.
    """

    __slots__ = ("_sink", "_plan", "_mode", "_rows", "_list", "_copy", "_first_txid", "_last_txid")

    def __init__(self, sink: PostgresSink) -> None:
        self._sink = sink
        self._plan: _Plan | None = None
        self._mode = ""  # "upsert", "delete"; keyless: "insert", "delete_one", "update_one"
        self._rows: dict[Any, Image | None] = {}  # key -> image (upserts) or None (deletes)
        self._list: list[Sequence[Value]] = []  # keyless: row images or statement parameters
        self._copy = False  # the batch holds snapshot rows: COPY whatever its size
        self._first_txid = ""
        self._last_txid = ""

    def upsert(self, plan: _Plan, images: Sequence[Image], txid: str, copy: bool = False) -> None:
        """Queue row images to upsert.  Raises SinkError if flushing other work fails."""
        if not images:
            return
        self._switch(plan, "upsert", txid)
        self._copy = self._copy or copy
        key_of, project = plan.key_of, plan.project
        if project is None:
            self._rows.update(zip(map(key_of, images), images))
        else:
            self._rows.update(zip(map(key_of, images), map(project, images)))

    def delete(self, plan: _Plan, keys: Iterable[Any], txid: str) -> None:
        """Queue keys (as ``plan.key_of`` gives them) to delete.  Raises SinkError if flushing other work fails."""
        self._switch(plan, "delete", txid)
        self._rows.update(dict.fromkeys(keys))

    def append(self, plan: _Plan, mode: str, params: Iterable[Sequence[Value]], txid: str,
               copy: bool = False) -> None:
        """Queue statements of a keyless table, never collapsed.  Raises SinkError if flushing other work fails."""
        self._switch(plan, mode, txid)
        self._copy = self._copy or copy
        self._list.extend(params)

    def _switch(self, plan: _Plan, mode: str, txid: str) -> None:
        if plan is not self._plan or mode != self._mode:
            self.flush()
            self._plan, self._mode, self._first_txid = plan, mode, txid
        self._last_txid = txid

    def flush(self) -> None:
        """Write what is queued.  Raises SinkError naming the table and transactions."""
        if not self._rows and not self._list:
            return
        plan, mode = self._plan, self._mode
        pending, self._rows = self._rows, {}
        listed, self._list = self._list, []
        copy, self._copy = self._copy, False
        self._plan = None  # what comes next starts a new batch, with its own first txid
        try:
            if mode == "upsert":
                self._sink._upsert_rows(plan, list(pending.values()), copy)
            elif mode == "delete":
                self._sink._delete_rows(plan, list(pending))
            elif mode == "insert":
                self._sink._insert_rows(plan, listed, copy)
            else:
                unmatched = self._sink._change_one_rows(plan, mode, listed)
                if unmatched:
                    raise no_matching_row(plan.table.display, mode, unmatched, self._txids())
        except psycopg.Error as exc:
            raise SinkError(f"cannot apply to mirror table {plan.table.display!r} (txid {self._txids()}): "
                            f"{one_line(exc)}") from exc

    def _txids(self) -> str:
        if self._last_txid != self._first_txid:
            return f"{self._first_txid}..{self._last_txid}"  # merged batches span transactions
        return self._first_txid


class PostgresSink:
    """A PostgreSQL mirror database, reached by a ``postgresql://`` URL (psycopg 3).

    ``create_tables``: create missing mirror tables from ``table_definitions()``
    (production's definitions by source table name); otherwise a missing table is an
    error.  ``copy_min_rows``: the batch size from which upserts go through COPY.

    Raises SinkError when the server cannot be reached, refuses the login, or the state
    table cannot be created; the hint says what to check.
    """

    def __init__(self, url: str, create_tables: bool = False, table_definitions: Definitions | None = None,
                 *, copy_min_rows: int = COPY_MIN_ROWS) -> None:
        self.url = url
        self.create_tables = create_tables
        self.copy_min_rows = max(1, copy_min_rows)
        self._table_definitions = table_definitions
        self._definitions: dict[str, dict[str, Any]] | None = None
        self._tables: dict[tuple[str, str], MirrorTable] = {}
        self._plans: dict[tuple[str, tuple[str, ...], tuple[str, ...]], _Plan] = {}
        self._stages: dict[tuple[str, Layout], tuple[str, str]] = {}  # -> (staging table, upsert SQL)
        self._stage_count = 0  # never reset: a name is never reused within a session
        self._staged: set[str] = set()  # stages that received rows in the current transaction
        self._nonempty: set[str] = set()  # mirror tables known to hold rows
        self._closed = False
        self._state = StateWriter("%s", masked_password(url))
        self._conn = self._connect()

    # -- connection ---------------------------------------------------------------
    def _connect(self) -> psycopg.Connection:
        where = masked_password(self.url)
        try:
            options = conninfo_to_dict(self.url)
            extra = {} if "connect_timeout" in options else {"connect_timeout": CONNECT_TIMEOUT_S}
            # autocommit: we open every transaction ourselves, so one apply call is
            # exactly one database transaction and read_position holds no snapshot open.
            conn = psycopg.connect(self.url, autocommit=True, **extra)
        except psycopg.Error as exc:
            raise SinkError(
                f"cannot connect to mirror database {where}: {one_line(exc)}",
                hint="Check the URL, that the server runs and accepts connections from here, "
                     "and the user's password (PGPASSWORD or ~/.pgpass).",
            ) from exc
        try:
            for setting in SESSION_SETTINGS:
                conn.execute(setting)
            if conn.execute("SELECT to_regclass(%s) IS NULL", (STATE_TABLE,)).fetchone()[0]:
                conn.execute(create_state_table_sql())
            _add_epoch_column(conn)
        except psycopg.Error as exc:
            conn.close()
            raise SinkError(
                f"cannot prepare mirror database {where}: {one_line(exc)}",
                hint=f"The mirror user needs to create and write table {STATE_TABLE} in its first schema.",
            ) from exc
        return conn

    def _ensure_connected(self) -> None:
        """Reconnect after a lost connection (a server restart).  Raises SinkError."""
        if self._closed:
            raise SinkError(f"the mirror sink for {masked_password(self.url)} is closed")
        if self._conn.closed or self._conn.broken:
            self._forget()
            self._conn.close()
            self._conn = self._connect()

    def __enter__(self) -> PostgresSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection.  Idempotent; an open transaction is rolled back."""
        self._closed = True
        self._conn.close()

    # -- position -------------------------------------------------------------------
    def after_promote(self) -> list[str]:
        """Move every sequence behind a serial or identity column past the column's largest value.

        The mirror received those values from production without drawing them from its
        own sequences; after a takeover the applications insert here, and the next
        value must not collide. Returns the sequences moved. Raises SinkError.
        """
        self._ensure_connected()
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

    def read_position(self, funnel: str, mirror: str) -> MirrorPosition | None:
        """The stored position for (funnel, mirror), or None.  Raises SinkError."""
        self._ensure_connected()
        try:
            row = self._conn.execute(_POSITION_SELECT, (funnel, mirror)).fetchone()
        except psycopg.Error as exc:
            raise SinkError(f"cannot read the position of mirror {mirror!r} in {masked_password(self.url)}: "
                            f"{one_line(exc)}") from exc
        return None if row is None else position_from_row(row)

    def claim(self, funnel: str, mirror: str) -> MirrorPosition | None:
        """Take the mirror's state row for this sink (fencing every earlier claimer) and return its position.

        Raises SinkError.
        """
        self._ensure_connected()
        try:
            with self._conn.transaction():
                position = self._state.claim(self._conn.execute, funnel, mirror)
        except BaseException as exc:
            self._state.rolled_back()
            if isinstance(exc, psycopg.Error):
                raise SinkError(f"cannot claim mirror {mirror!r} in {masked_password(self.url)}: "
                                f"{one_line(exc)}") from exc
            raise
        self._state.committed()
        return position

    def epoch(self, funnel: str, mirror: str) -> int | None:
        """The epoch this sink claimed for the mirror (None: never claimed), shown in status."""
        return self._state.epoch(funnel, mirror)

    def check_fence(self, funnel: str, mirror: str) -> None:
        """Raises FencedError when a newer applier claimed the mirror since this sink did."""
        self._ensure_connected()
        try:
            self._state.check(self._conn.execute, funnel, mirror)
        except psycopg.Error as exc:
            raise SinkError(f"cannot read the state of mirror {mirror!r} in {masked_password(self.url)}: "
                            f"{one_line(exc)}") from exc

    # -- apply ----------------------------------------------------------------------
    def apply(self, transactions: Sequence[Transaction], position: MirrorPosition) -> int:
        """Apply ``transactions`` in order and store ``position``, as one database transaction.

        Returns the number of row changes applied.  Raises SinkError (and applies
        nothing of the call) on any database error, a malformed row, a missing mirror
        table, or an event column the mirror table lacks.
        """
        self._ensure_connected()
        try:
            with self._conn.transaction():
                self._staged.clear()  # ON COMMIT DELETE ROWS emptied them
                run = _Run(self)
                applied = 0
                for transaction in transactions:
                    applied += self._apply_transaction(transaction, run)
                run.flush()
                self._write_position(position)
        except BaseException as exc:
            self._state.rolled_back()
            self._after_rollback()
            if isinstance(exc, psycopg.Error):
                raise SinkError(f"cannot apply to mirror database {masked_password(self.url)}: "
                                f"{one_line(exc)}") from exc
            raise
        self._state.committed()
        return applied

    def _after_rollback(self) -> None:
        # Tables, columns and staging tables may have been created or changed in the
        # failed transaction: forget all of it and check again next time.
        self._forget()
        if self._conn.closed or self._conn.broken:
            return
        try:
            self._conn.execute("DISCARD TEMP")  # staging tables of earlier commits
        except psycopg.Error:
            pass  # the original error is the one the operator needs; reconnect repairs

    def _forget(self) -> None:
        self._tables.clear()
        self._plans.clear()
        self._stages.clear()
        self._staged.clear()
        self._nonempty.clear()

    def _apply_transaction(self, transaction: Transaction, run: _Run) -> int:
        txid = transaction.txid
        applied = 0
        for groups, ddl in _segments(transaction.changes):
            # Check every table of a segment before any of its rows is sent; a schema
            # change ends a segment, as the tables after it are checked against it.
            plans = [self._checked(group, txid) for group in groups]
            for group, plan in zip(groups, plans):
                try:
                    self._apply_group(group, plan, txid, run)
                except _ROW_ERRORS as exc:
                    raise SinkError(f"malformed {_op_name(group.op)} row image for table {group.table!r} "
                                    f"(txid {txid}): {exc}") from exc
                applied += len(group.rows)
            if ddl is not None:
                self._apply_ddl(ddl, txid, run)
        return applied

    def _apply_ddl(self, group: TableChanges, txid: str, run: _Run) -> None:
        """Apply a schema change in this database transaction, after the rows before it.

        Raises SinkError when the change cannot be applied (nothing of the call is then).
        """
        if group.ddl is None:
            raise SinkError(f"schema change of table {group.table!r} (txid {txid}) carries no definition")
        run.flush()
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

    def _checked(self, group: TableChanges, txid: str) -> _Plan | MirrorTable:
        """The plan of a group (its mirror table for a truncate).  Raises SinkError naming the txid."""
        try:
            if group.op == Op.TRUNCATE:
                return self._mirror_table(group.table)
            return self._plan(group)
        except SinkError as exc:
            raise SinkError(f"{exc} (txid {txid})", hint=exc.hint) from exc
        except psycopg.Error as exc:
            raise SinkError(f"cannot prepare mirror table for {group.table!r} (txid {txid}): "
                            f"{one_line(exc)}") from exc

    def _apply_group(self, group: TableChanges, plan: _Plan | MirrorTable, txid: str, run: _Run) -> None:
        op, rows = group.op, group.rows
        if isinstance(plan, MirrorTable):
            self._truncate(plan, group.table, txid, run)
        elif plan.keyless:
            self._apply_keyless(group, plan, txid, run)
        elif op == Op.DELETE:
            run.delete(plan, map(plan.key_of, map(_BEFORE, rows)), txid)
        elif op == Op.UPDATE:
            self._update(plan, rows, txid, run)
        elif op in (Op.INSERT, Op.SNAPSHOT):
            run.upsert(plan, list(map(_AFTER, rows)), txid, copy=op == Op.SNAPSHOT)
        else:
            raise SinkError(f"unknown operation {op!r} for table {group.table!r} (txid {txid})")

    @staticmethod
    def _apply_keyless(group: TableChanges, plan: _Plan, txid: str, run: _Run) -> None:
        op, rows, written = group.op, group.rows, plan.written
        if op == Op.DELETE:
            run.append(plan, "delete_one", [written(before) for before, _ in rows], txid)
        elif op == Op.UPDATE:
            if plan.update is not None:  # else nothing PostgreSQL lets us update
                values = plan.update_values
                run.append(plan, "update_one", [(*values(a), *written(b)) for b, a in rows], txid)
        elif op in (Op.INSERT, Op.SNAPSHOT):
            run.append(plan, "insert", [written(after) for _, after in rows], txid, copy=op == Op.SNAPSHOT)
        else:
            raise SinkError(f"unknown operation {op!r} for table {group.table!r} (txid {txid})")

    def _update(self, plan: _Plan, rows: list[Row], txid: str, run: _Run) -> None:
        """Upsert the new images; a row whose key changed first loses its old key."""
        start = 0
        for i in _changed_key_rows(rows, plan.key_of):
            run.upsert(plan, list(map(_AFTER, rows[start:i])), txid)
            run.delete(plan, (plan.key_of(rows[i].before),), txid)
            start = i
        run.upsert(plan, list(map(_AFTER, rows[start:])), txid)

    def _truncate(self, table: MirrorTable, source: str, txid: str, run: _Run) -> None:
        run.flush()
        try:
            self._conn.execute(truncate_sql(table.qualified))
        except psycopg.Error as exc:
            raise SinkError(f"cannot truncate mirror table {table.display!r} (source table {source!r}, "
                            f"txid {txid}): {one_line(exc)}") from exc
        self._nonempty.discard(table.qualified)

    # -- writing batches (called by _Run.flush; psycopg errors are wrapped there) ------
    def _upsert_rows(self, plan: _Plan, rows: list[Image], copy: bool) -> None:
        if copy or len(rows) >= self.copy_min_rows:
            self._copy_upsert(plan, rows)
        else:
            self._conn.cursor().executemany(plan.upsert, rows)
        self._nonempty.add(plan.target)

    def _delete_rows(self, plan: _Plan, keys: list[Any]) -> None:
        self._conn.cursor().executemany(plan.delete, plan.key_params(keys))

    def _insert_rows(self, plan: _Plan, rows: list[Image], copy: bool) -> None:
        """Keyless inserts: nothing can conflict, so large batches COPY straight into the table."""
        if copy or len(rows) >= self.copy_min_rows:
            self._copy(self._conn.cursor(), copy_sql(plan.target, plan.layout.write_columns), rows)
        else:
            self._conn.cursor().executemany(plan.upsert, rows)
        self._nonempty.add(plan.target)

    def _change_one_rows(self, plan: _Plan, mode: str, params: list[Sequence[Value]]) -> int:
        """Keyless updates or deletes, each of exactly one row equal to its before image.

        Returns how many before images matched no row (the mirror differs from production).
        """
        cursor = self._conn.cursor()
        cursor.executemany(plan.update if mode == "update_one" else plan.delete, params)
        # Each statement changes at most one row (LIMIT 1): the sum tells if all matched.
        return len(params) - cursor.rowcount

    def _copy_upsert(self, plan: _Plan, rows: list[Image]) -> None:
        cursor = self._conn.cursor()
        columns = plan.layout.write_columns
        if not self._has_rows(plan.target, cursor):
            # An empty table and distinct keys: nothing can conflict, COPY straight in.
            self._copy(cursor, copy_sql(plan.target, columns), rows)
            return
        stage, upsert = self._stage(plan, cursor)
        if stage in self._staged:
            cursor.execute(f"DELETE FROM {stage}")  # second batch of this table in one commit
        self._staged.add(stage)
        self._copy(cursor, copy_sql(stage, columns), rows)
        cursor.execute(upsert)

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
        """The staging table of a plan and its upsert statement, created on first use."""
        stage_key = (plan.target, plan.layout)
        known = self._stages.get(stage_key)
        if known is None:
            self._stage_count += 1
            # pg_temp: never one of the mirror's own tables, whatever the search_path.
            stage = f"pg_temp._timefunnel_stage_{self._stage_count}"
            cursor.execute(create_stage_sql(stage, plan.target, plan.layout))
            known = self._stages[stage_key] = (stage, upsert_select_sql(plan.target, stage, plan.layout))
        return known

    # -- tables and plans -------------------------------------------------------------
    def _plan(self, group: TableChanges) -> _Plan:
        cache_key = (group.table, tuple(group.columns), tuple(group.key))
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = self._plans[cache_key] = self._build_plan(group)
        return plan

    def _build_plan(self, group: TableChanges) -> _Plan:
        """Prepare SQL for a table layout.  Raises SinkError for a mismatch with the mirror table."""
        table = self._mirror_table(group.table)
        if missing_columns(table, group.columns):
            table = self._mirror_table(group.table, fresh=True)  # the operator may have just added it
        shape = layout(group.table, table, group.columns, group.key)
        project = None if len(shape.write_index) == len(group.columns) else _getter(shape.write_index)
        if shape.keyless:
            columns = list(group.columns)
            updatable = bool(shape.update_columns)
            return _Plan(source=group.table, table=table, layout=shape,
                         upsert=insert_values_sql(table.qualified, shape),
                         delete=delete_one_sql(table.qualified, shape), key_of=tuple, project=project,
                         update=update_one_sql(table.qualified, shape) if updatable else None,
                         update_values=_getter(tuple(columns.index(c) for c in shape.update_columns))
                         if updatable else None)
        return _Plan(
            source=group.table,
            table=table,
            layout=shape,
            upsert=upsert_values_sql(table.qualified, shape),
            delete=delete_sql(table.qualified, shape.key),
            key_of=itemgetter(*shape.key_index),
            project=project,
        )

    def _mirror_table(self, source: str, fresh: bool = False) -> MirrorTable:
        """The mirror table of a source table, created if missing and allowed.

        ``fresh``: read the catalog again rather than trust what we read before.
        Raises SinkError.
        """
        schema, name = mirror_table_name(source)
        if fresh:
            self._tables.pop((schema, name), None)
        table = self._tables.get((schema, name))
        if table is None:
            table = self._read_table(schema, name) or self._create_table(source, schema, name)
            self._tables[(schema, name)] = table
        return table

    def _read_table(self, schema: str, name: str) -> MirrorTable | None:
        """The catalog's description of a table, or None if there is no such table."""
        found = self._conn.execute(TABLE_OID_QUERY, (schema, name)).fetchone()
        if found is None:
            return None
        oid = found[0]
        columns = tuple(MirrorColumn(*row) for row in self._conn.execute(COLUMNS_QUERY, (oid,)))
        keys = self._conn.execute(UNIQUE_KEYS_QUERY, (oid,)).fetchall()
        return MirrorTable(schema, name, columns, tuple(tuple(key) for _, key in keys),
                           has_primary_key=bool(keys) and keys[0][0])

    def _create_table(self, source: str, schema: str, name: str) -> MirrorTable:
        """Create a missing mirror table from production's definition.

        Raises SinkError when creating is not allowed, no definition is known, or the
        definition cannot be created (typically a user type missing on the mirror).
        """
        if not self.create_tables:
            raise SinkError(
                f"mirror table {schema}.{name} does not exist (source table {source!r})",
                hint="Create it on the mirror with production's definition and primary key, "
                     "or start the applier with --create-tables.",
            )
        definition = self._definition(source)
        try:
            if not self._conn.execute(SCHEMA_EXISTS_QUERY, (schema,)).fetchone()[0]:
                self._conn.execute(create_schema_sql(schema))
            self._conn.execute(create_table_sql(schema, name, definition))
        except psycopg.Error as exc:
            raise SinkError(
                f"cannot create mirror table {schema}.{name} (source table {source!r}): {one_line(exc)}",
                hint="User types (enums, domains) are not created by the applier: create them on the "
                     "mirror as on production, then restart the applier.",
            ) from exc
        return self._read_table(schema, name)

    def _definition(self, source: str) -> dict[str, Any]:
        """Production's definition of ``source``; asks again once if it is not known yet."""
        if self._table_definitions is None:
            raise SinkError(f"cannot create mirror table for {source!r}: no table definitions available")
        for refresh in (self._definitions is None, True):
            if refresh:
                self._definitions = self._table_definitions()
            found = _find_definition(self._definitions, source)
            if found is not None:
                return found
        raise SinkError(
            f"no definition of table {source!r} was published by the capture; cannot create it on the mirror",
            hint="Create the table on the mirror by hand, or restart the capture so it publishes definitions.",
        )

    def _write_position(self, position: MirrorPosition) -> None:
        self._state.write(self._conn.execute, position)


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


def _segments(groups: list[TableChanges]) -> list[tuple[list[TableChanges], TableChanges | None]]:
    """The groups cut at each schema change: (groups before it, the DDL group or None)."""
    segments: list[tuple[list[TableChanges], TableChanges | None]] = []
    current: list[TableChanges] = []
    for group in groups:
        if group.op == Op.DDL:
            segments.append((current, group))
            current = []
        else:
            current.append(group)
    if current or not segments:
        segments.append((current, None))
    return segments


def _find_definition(definitions: dict[str, dict[str, Any]], source: str) -> dict[str, Any] | None:
    found = definitions.get(source)
    if found is not None:
        return found
    return next((d for d in definitions.values() if isinstance(d, dict) and d.get("table") == source), None)


def _op_name(op: object) -> str:
    return str(getattr(op, "value", op))

"""The SQLite mirror: applies whole source transactions and the position in one commit.

Table names are mapped as ``applier.sinks.sqlite_sql`` describes (``main.orders`` and
``public.orders`` become ``orders``, ``sales.orders`` becomes ``sales_orders``).  Missing
tables are created from the first event's columns (untyped, so values keep their exact
type) with the source key as PRIMARY KEY; existing tables are used as they are, as long
as they have every column the events carry (a column the mirror lacks is looked up again
before failing, so a column added to the mirror while the applier runs is found).

A keyless source table (``applier.sinks.base.is_keyless``) is created without PRIMARY
KEY and kept as a multiset: plain inserts, and updates and deletes of one row (by
rowid) whose columns are all ``IS`` the before image.

Not thread-safe: one applier thread owns a sink.
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter

from applier.sinks.sqlite_sql import (
    CREATE_STATE_TABLE,
    create_table_sql,
    delete_one_sql,
    delete_sql,
    insert_sql,
    key_indexes,
    mirror_table_name,
    position_select_sql,
    quote_ident,
    truncate_sql,
    update_one_sql,
    upsert_sql,
)
from applier.sinks import ddl as ddl_sql
from applier.sinks.base import is_keyless, no_matching_row
from applier.sinks.state import EPOCH_COLUMN, STATE_TABLE, StateWriter, add_epoch_column_sql, position_from_row
from applier.transaction import MirrorPosition, Transaction
from funnel import ddl as ddl_model
from funnel.errors import SinkError
from funnel.events import Op, Row, TableChanges, Value

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

_AFTER = itemgetter(1)
_BEFORE = itemgetter(0)
_UPSERT_OPS = (Op.SNAPSHOT, Op.INSERT, Op.UPDATE)

# What a malformed row image raises while we pick values out of it (a None image, a
# short row).  SQLite reports bad values (an int above 64 bits) with OverflowError.
_ROW_ERRORS = (TypeError, IndexError)
_DB_ERRORS = (sqlite3.Error, OverflowError)

_POSITION_SELECT = position_select_sql()

KeyOf = Callable[[Sequence[Value]], Sequence[Value]]


@dataclass(frozen=True, slots=True)
class _Plan:
    """Prepared SQL for one source table and column layout."""

    table: str  # the mirror table name
    upsert: str  # keyless: a plain INSERT
    delete: str  # keyless: deletes one row equal to the whole before image
    key_index: tuple[int, ...]
    key_of: KeyOf  # key values (in key order) from a row image; keyless: the whole image
    update: str | None = None  # keyless only: updates one row equal to the before image

    @property
    def keyless(self) -> bool:
        return self.update is not None


def _key_getter(key_index: tuple[int, ...]) -> KeyOf:
    if len(key_index) == 1:
        index = key_index[0]
        return lambda row: (row[index],)
    return itemgetter(*key_index)


def _changed_key_rows(rows: Sequence[Row], key_index: tuple[int, ...]) -> list[int]:
    """Indexes of update rows whose key differs between before and after."""
    if len(key_index) == 1:
        k = key_index[0]
        return [i for i, (before, after) in enumerate(rows) if before is not None and before[k] != after[k]]
    key = itemgetter(*key_index)
    return [i for i, (before, after) in enumerate(rows) if before is not None and key(before) != key(after)]


class _Run:
    """Consecutive executions of one statement, sent to SQLite as one executemany.

    Merging is what makes small source transactions cheap: inserts and updates of
    one table share one upsert statement, so a commit of many 10-row transactions
    becomes a few long executemany calls instead of hundreds of short ones.
    Order is kept: a different statement (a delete, another table) first flushes
    what is pending, so a delete is never overtaken by an earlier upsert.
    """

    __slots__ = ("_conn", "_sql", "_params", "_table", "_first_txid", "_last_txid", "_exact")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._sql = ""
        self._params: list[Sequence[Value]] = []
        self._table = ""
        self._first_txid = ""
        self._last_txid = ""
        self._exact = False

    def add(self, sql: str, params: Iterable[Sequence[Value]], table: str, txid: str, exact: bool = False) -> None:
        """Queue ``params`` for ``sql``.  Raises SinkError if a flush of other work fails.

        ``exact``: each execution must change one row (keyless updates and deletes).
        """
        if sql != self._sql:
            self.flush()
            self._sql, self._table, self._first_txid, self._exact = sql, table, txid, exact
        self._last_txid = txid
        self._params.extend(params)

    def flush(self) -> None:
        """Execute what is queued.  Raises SinkError naming the table and transactions."""
        if not self._params:
            return
        params, self._params = self._params, []
        try:
            changed = self._conn.executemany(self._sql, params).rowcount
        except _DB_ERRORS as exc:
            raise SinkError(f"cannot apply to mirror table {self._table!r} (txid {self._txids()}): {exc}") from exc
        # Each keyless statement changes at most one row (LIMIT 1): the sum tells if all matched.
        if self._exact and changed != len(params):
            raise no_matching_row(self._table, "update" if self._sql.startswith("UPDATE") else "delete",
                                  len(params) - changed, self._txids())

    def _txids(self) -> str:
        if self._last_txid != self._first_txid:
            return f"{self._first_txid}..{self._last_txid}"  # merged runs span transactions
        return self._first_txid


class SqliteSink:
    """A SQLite mirror database file.

    Raises SinkError when the file cannot be opened or is not a SQLite database;
    the hint says what to check.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._plans: dict[tuple[str, tuple[str, ...], tuple[str, ...]], _Plan] = {}
        self._columns: dict[str, frozenset[str]] = {}  # mirror table -> lower-cased columns
        self._state = StateWriter("?", self.path)
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so one apply call is
            # exactly one database transaction, DDL included.
            conn = sqlite3.connect(self.path, isolation_level=None, cached_statements=512)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
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

    def __enter__(self) -> SqliteSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database.  Idempotent; an open transaction is rolled back."""
        self._conn.close()

    def read_position(self, funnel: str, mirror: str) -> MirrorPosition | None:
        """The stored position for (funnel, mirror), or None.  Raises SinkError."""
        try:
            row = self._conn.execute(_POSITION_SELECT, (funnel, mirror)).fetchone()
        except sqlite3.Error as exc:
            raise SinkError(f"cannot read the position of mirror {mirror!r} in {self.path}: {exc}") from exc
        if row is None:
            return None
        return position_from_row(row)

    def claim(self, funnel: str, mirror: str) -> MirrorPosition | None:
        """Take the mirror's state row for this sink (fencing every earlier claimer) and return its position.

        Raises SinkError.
        """
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            position = self._state.claim(self._conn.execute, funnel, mirror)
            self._conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            self._state.rolled_back()
            if isinstance(exc, sqlite3.Error):
                raise SinkError(f"cannot claim mirror {mirror!r} in {self.path}: {exc}") from exc
            raise
        self._state.committed()
        return position

    def epoch(self, funnel: str, mirror: str) -> int | None:
        """The epoch this sink claimed for the mirror (None: never claimed), shown in status."""
        return self._state.epoch(funnel, mirror)

    def check_fence(self, funnel: str, mirror: str) -> None:
        """Raises FencedError when a newer applier claimed the mirror since this sink did."""
        try:
            self._state.check(self._conn.execute, funnel, mirror)
        except sqlite3.Error as exc:
            raise SinkError(f"cannot read the state of mirror {mirror!r} in {self.path}: {exc}") from exc

    def apply(self, transactions: Sequence[Transaction], position: MirrorPosition) -> int:
        """Apply ``transactions`` in order and store ``position``, as one database transaction.

        Returns the number of row changes applied.  Raises SinkError (and applies
        nothing of the call) on any database error, a malformed row, or an event column
        the mirror table lacks.
        """
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            run = _Run(self._conn)
            applied = 0
            for transaction in transactions:
                applied += self._apply_transaction(transaction, run)
            run.flush()
            self._write_position(position)
            self._conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            self._state.rolled_back()
            if isinstance(exc, sqlite3.Error):
                raise SinkError(f"cannot apply to mirror database {self.path}: {exc}") from exc
            raise
        self._state.committed()
        return applied

    def _rollback(self) -> None:
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

    def _apply_transaction(self, transaction: Transaction, run: _Run) -> int:
        applied = 0
        txid = transaction.txid
        for batch in transaction.batches:
            for group in batch.changes:
                try:
                    self._apply_group(group, txid, run)
                except _ROW_ERRORS as exc:
                    where = f"table {group.table!r} (txid {txid})"
                    raise SinkError(f"malformed {_op_name(group.op)} row image for {where}: {exc}") from exc
                except _DB_ERRORS as exc:
                    raise SinkError(f"cannot apply to table {group.table!r} (txid {txid}): {exc}") from exc
                applied += len(group.rows)
        return applied

    def _apply_group(self, group: TableChanges, txid: str, run: _Run) -> None:
        op = group.op
        if op == Op.DDL:
            self._apply_ddl(group, txid, run)
            return
        if op == Op.TRUNCATE:
            self._truncate(group.table, run)
            return
        plan = self._plan(group, txid)
        rows = group.rows
        if op == Op.DELETE:
            run.add(plan.delete, map(plan.key_of, map(_BEFORE, rows)), plan.table, txid, exact=plan.keyless)
        elif op == Op.UPDATE:
            self._update(plan, rows, txid, run)
        elif op in _UPSERT_OPS:
            run.add(plan.upsert, map(_AFTER, rows), plan.table, txid)
        else:
            raise SinkError(f"unknown operation {op!r} for table {group.table!r} (txid {txid})")

    def _apply_ddl(self, group: TableChanges, txid: str, run: _Run) -> None:
        """Apply a schema change in this database transaction, after the rows before it.

        A table the mirror does not have yet is created with the change's resulting
        definition.  Raises SinkError for a change SQLite cannot express (nothing runs).
        """
        if group.ddl is None:
            raise SinkError(f"schema change of table {group.table!r} (txid {txid}) carries no definition")
        run.flush()
        statements = ddl_sql.sqlite_statements(group.ddl, group.table, txid)
        old = mirror_table_name(group.ddl.object)
        dropping = any(a.kind == ddl_model.DROP_TABLE for a in group.ddl.actions)
        if self._table_columns(old) is None and not dropping and group.ddl.definition is not None:
            definition = group.ddl.definition
            statements = [create_table_sql(mirror_table_name(group.table), definition.names, definition.key)]
        for statement in statements:
            self._conn.execute(statement)
        # Every cached plan and column set may name what just changed.
        self._plans.clear()
        self._columns.clear()

    def _update(self, plan: _Plan, rows: list[Row], txid: str, run: _Run) -> None:
        """Upsert the new images; a row whose key changed first loses its old key.

        Keyless: each row changes one mirror row equal to its before image.
        """
        if plan.keyless:
            run.add(plan.update, [(*after, *before) for before, after in rows], plan.table, txid, exact=True)
            return
        start = 0
        for i in _changed_key_rows(rows, plan.key_index):
            run.add(plan.upsert, map(_AFTER, rows[start:i]), plan.table, txid)
            run.add(plan.delete, (plan.key_of(rows[i].before),), plan.table, txid)
            start = i
        run.add(plan.upsert, map(_AFTER, rows[start:]), plan.table, txid)

    def _truncate(self, source_table: str, run: _Run) -> None:
        table = mirror_table_name(source_table)
        run.flush()
        # A table the mirror never saw has no rows to remove.
        if self._table_columns(table) is not None:
            self._conn.execute(truncate_sql(table))

    def _plan(self, group: TableChanges, txid: str) -> _Plan:
        cache_key = (group.table, tuple(group.columns), tuple(group.key))
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = self._plans[cache_key] = self._build_plan(group, txid)
        return plan

    def _build_plan(self, group: TableChanges, txid: str) -> _Plan:
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
            self._check_columns(table, group, txid)
            primary_key = self._primary_key(table)
        if is_keyless(group.key) or _legacy_keyless(group, primary_key):
            if primary_key:
                raise _keyless_with_primary_key(table, group.table, primary_key, txid)
            return _Plan(table=table, upsert=insert_sql(table, group.columns),
                         delete=delete_one_sql(table, group.columns), key_index=(), key_of=tuple,
                         update=update_one_sql(table, group.columns))
        return _Plan(
            table=table,
            upsert=upsert_sql(table, group.columns, group.key),
            delete=delete_sql(table, group.key),
            key_index=key_index,
            key_of=_key_getter(key_index),
        )

    def _check_columns(self, table: str, group: TableChanges, txid: str) -> None:
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
            f"mirror table {table!r} has no column {missing[0]!r} "
            f"(source table {group.table!r}, txid {txid})",
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

    def _write_position(self, position: MirrorPosition) -> None:
        self._state.write(self._conn.execute, position)


def _legacy_keyless(group: TableChanges, primary_key: list[str]) -> bool:
    """Events of a keyless table published by versions that sent every column as the key.

    Applied as keyless once the mirror table has no primary key (made by this version,
    or fixed by the operator), so that a delayed mirror gets past the older events.
    """
    return not primary_key and {c.lower() for c in group.key} == {c.lower() for c in group.columns}


def _keyless_with_primary_key(table: str, source: str, key: list[str], txid: str) -> SinkError:
    # Versions before keyless support created such tables with every column as primary key;
    # it would refuse the duplicate rows production may hold.
    return SinkError(
        f"mirror table {table!r} has primary key ({', '.join(key)}) but source table {source!r} "
        f"has none (txid {txid}): its rows are applied as a multiset, and duplicates would be refused",
        hint=f"Recreate the mirror table without primary key (CREATE TABLE new AS SELECT * FROM "
             f"{quote_ident(table)}; DROP TABLE {quote_ident(table)}; ALTER TABLE new RENAME TO "
             f"{quote_ident(table)}), then restart the applier.",
    )


def _op_name(op: object) -> str:
    return str(getattr(op, "value", op))


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

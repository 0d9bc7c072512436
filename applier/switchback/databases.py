"""What the switchback does to the two databases directly, one class per database kind.

The rows travel through the funnels (the reverse capture and applier); these classes do
only what a funnel cannot: list tables, reset production before the initial copy,
freeze and unfreeze the mirror, watch for writes, compute checksums, and read or write
a state row without applying anything.

SQLite freeze: BEFORE INSERT/UPDATE/DELETE triggers on every user table that raise
``timefunnel: ... frozen ...``, created in one write transaction.  Taking the write lock
waits for a writer's open transaction to end; once the triggers are committed no write
to a user table can commit, while the capture's bookkeeping tables (``_timefunnel_*``)
stay writable.  The triggers are named ``timefunnel_freeze_*`` (not ``_timefunnel_``,
whose triggers the capture owns and replaces on install).

PostgreSQL freeze: ``ALTER DATABASE ... SET default_transaction_read_only = on`` and the
termination of every other client session of the database except timefunnel's own
(``application_name`` starting with ``timefunnel``); new sessions start read-only.
A session that explicitly asks for a read-write transaction is not stopped by that:
the freeze hook must stop the application.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Hashable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from applier.sinks.sqlite_sql import STATE_TABLE
from applier.sinks.state import position_from_row, position_to_row
from applier.switchback.compare import ResetPlan, TableChecksum, TableShape, WriteActivity, checksum_rows
from applier.switchback.state import SwitchbackError
from applier.transaction import MirrorPosition
from funnel.errors import ConfigError
from funnel.identity import postgres_identity, sqlite_identity
from funnel.urls import masked_password, sqlite_path

INTERNAL_PREFIX = "_timefunnel_"
FREEZE_PREFIX = "timefunnel_freeze_"
CHANGELOG = "_timefunnel_changelog"  # the SQLite capture's changelog (producer.sources.sqlite)
FETCH_ROWS = 5000


class Database(Protocol):
    """One side of the switchback (the promoted mirror or the original production)."""

    url: str
    kind: str
    fold_case: bool
    quiet_s: float  # how long without a write before the mirror counts as quiet

    def check(self, must_exist: bool) -> None: ...
    def identity(self) -> str | None: ...
    def tables(self) -> dict[str, TableShape]: ...
    def read_position(self, funnel: str, mirror: str) -> MirrorPosition | None: ...
    def write_position(self, position: MirrorPosition) -> None: ...
    def forget_position(self, funnel: str, mirror: str) -> None: ...
    def reset(self, plan: ResetPlan, source: "Database") -> None: ...
    def write_marker(self) -> Hashable: ...
    def activity_since(self, marker: Hashable) -> WriteActivity: ...
    def freeze(self, tables: Sequence[str], timeout_s: float, reason: str) -> int: ...
    def frozen(self) -> bool: ...
    def unfreeze(self) -> int: ...
    def captured_through(self, marker: int, capture: Any) -> bool: ...
    def ddl(self, table: str) -> list[str]: ...
    def column_types(self, shapes: Sequence[TableShape]) -> dict[str, list[str]]: ...
    def checksums(self, shapes: Sequence[TableShape],
                  as_types: dict[str, list[str]] | None = None) -> dict[str, TableChecksum]: ...


def open_database(url: str) -> Database:
    """The side at ``url``; nothing is opened yet.  Raises ConfigError for a bad or unsupported URL."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return SqliteDatabase(url)
    if scheme in ("postgresql", "postgres"):
        return PostgresDatabase(url)
    raise ConfigError(f"unsupported database URL {url!r}",
                      hint="use sqlite:///path/to.db or postgresql://user@host:port/database")


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _database_errors(method: Callable) -> Callable:
    """Turns the driver's errors into one SwitchbackError naming the database and the step."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except SwitchbackError:
            raise
        except Exception as exc:
            if not _is_driver_error(exc):
                raise
            what = method.__name__.strip("_").replace("_", " ")
            raise SwitchbackError(f"{what} on {masked_password(self.url)} failed: {' '.join(str(exc).split())}") from exc
    return wrapped


def _is_driver_error(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.Error):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.Error)


# -- SQLite -------------------------------------------------------------------------------


class SqliteDatabase:
    kind = "sqlite"
    fold_case = True
    quiet_s = 1.0

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)

    @_database_errors
    def check(self, must_exist: bool) -> None:
        """Raises SwitchbackError for a missing file (``must_exist``) or directory."""
        if os.path.isfile(self.path):
            try:
                with closing(self._connect(readonly=True)) as conn:
                    conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
            except sqlite3.Error as exc:
                raise SwitchbackError(f"{self.path} is not a readable SQLite database: {exc}") from exc
            return
        if must_exist:
            raise SwitchbackError(f"SQLite database {self.path} does not exist", hint="check the URL")
        if not Path(self.path).resolve().parent.is_dir():
            raise SwitchbackError(f"directory of {self.path} does not exist", hint="check the URL")

    def identity(self) -> str | None:
        """The file's device and inode (funnel.identity); None while it does not exist."""
        return sqlite_identity(self.path)

    def _connect(self, readonly: bool = False, timeout: float = 30.0) -> sqlite3.Connection:
        if readonly:
            uri = Path(self.path).resolve().as_uri() + "?mode=ro"
            return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
        return sqlite3.connect(self.path, timeout=timeout, isolation_level=None)

    def _wrap(self, exc: sqlite3.Error, what: str) -> SwitchbackError:
        return SwitchbackError(f"{what} on {self.path}: {exc}")

    # -- tables and state ---------------------------------------------------------------
    @_database_errors
    def tables(self) -> dict[str, TableShape]:
        """The user tables (not SQLite's, not timefunnel's), with columns and primary key."""
        if not os.path.isfile(self.path):
            return {}
        try:
            with closing(self._connect(readonly=True)) as conn:
                return _sqlite_tables(conn)
        except sqlite3.Error as exc:
            raise self._wrap(exc, "cannot list tables") from exc

    @_database_errors
    def ddl(self, table: str) -> list[str]:
        """CREATE statements of ``table`` and its indexes, as this database has them."""
        with closing(self._connect(readonly=True)) as conn:
            rows = conn.execute("SELECT sql FROM sqlite_schema WHERE tbl_name = ? COLLATE NOCASE AND sql IS NOT NULL "
                                "AND type IN ('table', 'index') ORDER BY type = 'index', name", (table,)).fetchall()
        return [row[0] for row in rows]

    @_database_errors
    def read_position(self, funnel: str, mirror: str) -> MirrorPosition | None:
        if not os.path.isfile(self.path):
            return None
        from applier.sinks.sqlite_sql import position_select_sql

        try:
            with closing(self._connect(readonly=True)) as conn:
                if not _has_table(conn, STATE_TABLE):
                    return None
                row = conn.execute(position_select_sql(), (funnel, mirror)).fetchone()
        except sqlite3.Error as exc:
            raise self._wrap(exc, f"cannot read the state of mirror {mirror!r}") from exc
        return None if row is None else position_from_row(row)

    @_database_errors
    def write_position(self, position: MirrorPosition) -> None:
        from applier.sinks.sqlite import SqliteSink

        with SqliteSink(self.path) as sink:
            sink.apply([], position)

    @_database_errors
    def forget_position(self, funnel: str, mirror: str) -> None:
        """Deletes the state row; drops the state table once it is empty (a production needs none)."""
        if not os.path.isfile(self.path):
            return
        try:
            with closing(self._connect()) as conn:
                if not _has_table(conn, STATE_TABLE):
                    return
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(f"DELETE FROM {STATE_TABLE} WHERE funnel = ? AND mirror = ?", (funnel, mirror))
                if conn.execute(f"SELECT count(*) FROM {STATE_TABLE}").fetchone()[0] == 0:
                    conn.execute(f"DROP TABLE {STATE_TABLE}")
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._wrap(exc, "cannot remove the reverse applier's state") from exc

    @_database_errors
    def reset(self, plan: ResetPlan, source: Database) -> None:
        """Carries out ``plan`` in one transaction; tables are created from ``source``'s definitions."""
        definitions = {name: source.ddl(name) for name in [m for _, m in plan.recreate] + list(plan.create)}
        try:
            with closing(self._connect()) as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for name in [p for p, _ in plan.recreate] + list(plan.drop):
                        conn.execute(f"DROP TABLE {quote(name)}")
                    for name in [m for _, m in plan.recreate] + list(plan.create):
                        for statement in definitions.get(name, ()):
                            conn.execute(statement)
                    for name in plan.empty:
                        conn.execute(f"DELETE FROM {quote(name)}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise self._wrap(exc, "cannot reset production") from exc

    # -- writes and freeze ----------------------------------------------------------------
    @_database_errors
    def write_marker(self) -> int:
        """The capture changelog's sequence: it moves with every committed row change."""
        with closing(self._connect(readonly=True)) as conn:
            return _changelog_sequence(conn)

    @_database_errors
    def activity_since(self, marker: Hashable) -> WriteActivity:
        changes: dict[str, int] = {}
        with closing(self._connect(readonly=True)) as conn:
            if _has_table(conn, CHANGELOG):
                changes = dict(conn.execute(f"SELECT tbl, count(*) FROM {CHANGELOG} WHERE seq > ? GROUP BY tbl",
                                            (int(marker),)).fetchall())
        return WriteActivity(changes, _processes_holding(self.path))

    @_database_errors
    def freeze(self, tables: Sequence[str], timeout_s: float, reason: str) -> int:
        """Refuse every write to ``tables`` from now on; returns the changelog sequence at the freeze.

        Raises SwitchbackError when a write transaction keeps the lock longer than ``timeout_s``.
        """
        message = reason.replace("'", "''")
        try:
            with closing(self._connect(timeout=max(timeout_s, 0.05))) as conn:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    raise SwitchbackError(f"a write transaction kept {self.path} locked for more than "
                                          f"{timeout_s:.1f}s: {exc}", hint="stop the application's writers, then "
                                                                           "rerun `funnel switchback complete`")
                for table in tables:
                    for op in ("INSERT", "UPDATE", "DELETE"):
                        conn.execute(f"CREATE TRIGGER IF NOT EXISTS {quote(_freeze_trigger(table, op))} BEFORE {op} "
                                     f"ON {quote(table)} BEGIN SELECT RAISE(ABORT, '{message}'); END")
                marker = _changelog_sequence(conn)
                conn.execute("COMMIT")
                return marker
        except sqlite3.Error as exc:
            raise self._wrap(exc, "cannot freeze") from exc

    @_database_errors
    def frozen(self) -> bool:
        if not os.path.isfile(self.path):
            return False
        with closing(self._connect(readonly=True)) as conn:
            return bool(_freeze_triggers(conn))

    @_database_errors
    def unfreeze(self) -> int:
        """Drops the freeze triggers; returns how many there were."""
        if not os.path.isfile(self.path):
            return 0
        try:
            with closing(self._connect()) as conn:
                conn.execute("BEGIN IMMEDIATE")
                names = _freeze_triggers(conn)
                for name in names:
                    conn.execute(f"DROP TRIGGER {quote(name)}")
                conn.execute("COMMIT")
                return len(names)
        except sqlite3.Error as exc:
            raise self._wrap(exc, "cannot unfreeze") from exc

    @_database_errors
    def captured_through(self, marker: int, capture: Any) -> bool:
        """The capture published every change up to changelog sequence ``marker``."""
        position = capture.stats.position
        return position is not None and position >= marker

    @_database_errors
    def column_types(self, shapes: Sequence[TableShape]) -> dict[str, list[str]]:
        """Declared type of each column of ``shapes`` (names as in ``shapes``), '' when undeclared."""
        with closing(self._connect(readonly=True)) as conn:
            result = {}
            for shape in shapes:
                declared = {row[1].lower(): row[2] for row in conn.execute(f"PRAGMA table_xinfo({quote(shape.name)})")}
                result[shape.name] = [declared.get(column.lower(), "") for column in shape.columns]
            return result

    @_database_errors
    def checksums(self, shapes: Sequence[TableShape],
                  as_types: dict[str, list[str]] | None = None) -> dict[str, TableChecksum]:
        """Row count and checksum per table, columns in ``shapes``' order, read in one transaction.

        ``as_types`` (declared column types by table): hash the values as a table with those
        declared types stores them (SQLite's type affinity: 5 in a REAL column is 5.0), so that
        the mirror's untyped values compare with production's typed ones.
        """
        result: dict[str, TableChecksum] = {}
        try:
            with closing(self._connect(readonly=True)) as conn:
                conn.execute("BEGIN")
                for shape in shapes:
                    columns = ", ".join(quote(c) for c in shape.columns)
                    rows = _fetch_all(conn.execute(f"SELECT {columns} FROM {quote(shape.name)}"))
                    if as_types and shape.name in as_types:
                        rows = _with_affinity(rows, as_types[shape.name])
                    result[shape.name] = checksum_rows(rows)
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._wrap(exc, "cannot compute checksums") from exc
        return result


def _with_affinity(rows: Any, declared: list[str]):
    """``rows`` as a table with ``declared`` column types would store them (SQLite does the conversion)."""
    with closing(sqlite3.connect(":memory:")) as mem:
        columns = ", ".join(f"c{i} {decl}" for i, decl in enumerate(declared))
        mem.execute(f"CREATE TABLE t ({columns})")
        insert = f"INSERT INTO t VALUES ({', '.join('?' * len(declared))})"
        chunk: list = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= FETCH_ROWS:
                yield from _converted(mem, insert, chunk)
                chunk = []
        if chunk:
            yield from _converted(mem, insert, chunk)


def _converted(mem: sqlite3.Connection, insert: str, chunk: list) -> list:
    mem.executemany(insert, chunk)
    converted = mem.execute("SELECT * FROM t ORDER BY rowid").fetchall()
    mem.execute("DELETE FROM t")
    return converted


def _sqlite_tables(conn: sqlite3.Connection) -> dict[str, TableShape]:
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name")]
    shapes = {}
    for name in names:
        if name.lower().startswith(("sqlite_", INTERNAL_PREFIX)):
            continue
        info = conn.execute(f"PRAGMA table_xinfo({quote(name)})").fetchall()
        columns = tuple(row[1] for row in info if row[6] == 0)
        key = tuple(row[1] for row in sorted((r for r in info if r[5] > 0), key=lambda r: r[5]))
        shapes[name] = TableShape(name, columns, key)
    return shapes


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _changelog_sequence(conn: sqlite3.Connection) -> int:
    if not _has_table(conn, "sqlite_sequence"):
        return 0
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (CHANGELOG,)).fetchone()
    return int(row[0]) if row else 0


def _freeze_trigger(table: str, op: str) -> str:
    return f"{FREEZE_PREFIX}{hashlib.sha256(table.lower().encode()).hexdigest()[:12]}_{op.lower()}"


def _freeze_triggers(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger'")
            if row[0].startswith(FREEZE_PREFIX)]


def _fetch_all(cursor: Any):
    while rows := cursor.fetchmany(FETCH_ROWS):
        yield from rows


def _processes_holding(path: str, limit: int = 5) -> list[str]:
    """Other processes with the database (or its WAL) open, from /proc (Linux; empty elsewhere)."""
    wanted = {str(Path(path).resolve()) + suffix for suffix in ("", "-wal", "-journal")}
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) in wanted for fd in (entry / "fd").iterdir()):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found.append(f"pid {entry.name} ({cmdline[:100]})")
        except OSError:
            continue  # gone, or not ours to look at
        if len(found) >= limit:
            break
    return found


# -- PostgreSQL ---------------------------------------------------------------------------

_PG_TABLES = """
SELECT n.nspname, c.relname, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
  AND c.relname NOT LIKE '\\_timefunnel\\_%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
ORDER BY 1, 2"""
_PG_COLUMNS = """
SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
ORDER BY attnum"""
_PG_KEY = """
SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord"""
_PG_OTHER_SESSIONS = """
SELECT pid, usename, application_name, state, backend_xid IS NOT NULL, left(query, 80)
FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend' AND coalesce(application_name, '') NOT LIKE 'timefunnel%%'"""


class PostgresDatabase:
    kind = "postgresql"
    fold_case = False
    quiet_s = 2.5  # table statistics reach other sessions up to a second late

    def __init__(self, url: str) -> None:
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(url)
        except Exception as exc:  # psycopg raises ProgrammingError for a malformed URL
            raise ConfigError(f"bad PostgreSQL URL: {exc}") from exc
        self.url = url

    def _connect(self):
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                                   application_name="timefunnel-switchback")
        except psycopg.Error as exc:
            raise SwitchbackError(f"cannot connect to {masked_password(self.url)}: {exc}",
                                  hint="check the URL, the server, and PGPASSWORD or ~/.pgpass") from exc
        # The switchback's own sessions write while the database is frozen (state row, unfreeze).
        conn.execute("SET default_transaction_read_only = off")
        return conn

    @_database_errors
    def check(self, must_exist: bool) -> None:
        self._connect().close()

    @_database_errors
    def identity(self) -> str:
        """The server's system identifier and the database's oid (funnel.identity)."""
        with self._connect() as conn:
            return postgres_identity(conn)

    @_database_errors
    def tables(self) -> dict[str, TableShape]:
        with self._connect() as conn:
            shapes = {}
            for schema, name, oid in conn.execute(_PG_TABLES).fetchall():
                columns = tuple(row[0] for row in conn.execute(_PG_COLUMNS, (oid,)))
                key = tuple(row[0] for row in conn.execute(_PG_KEY, (oid,)))
                shapes[f"{schema}.{name}"] = TableShape(f"{schema}.{name}", columns, key)
            return shapes

    @_database_errors
    def ddl(self, table: str) -> list[str]:
        return []  # PostgreSQL mirrors create tables from the capture's definitions (create_tables)

    @_database_errors
    def read_position(self, funnel: str, mirror: str) -> MirrorPosition | None:
        from applier.sinks.postgres_sql import position_select_sql

        with self._connect() as conn:
            if conn.execute("SELECT to_regclass(%s) IS NULL", (STATE_TABLE,)).fetchone()[0]:
                return None
            row = conn.execute(position_select_sql(), (funnel, mirror)).fetchone()
        return None if row is None else position_from_row(row)

    @_database_errors
    def write_position(self, position: MirrorPosition) -> None:
        """Writes the state row even while the database is frozen (this session opts out)."""
        from applier.sinks.postgres_sql import create_state_table_sql, position_upsert_sql

        with self._connect() as conn:
            with conn.transaction():
                conn.execute(create_state_table_sql())
                conn.execute(position_upsert_sql(), position_to_row(position))

    @_database_errors
    def forget_position(self, funnel: str, mirror: str) -> None:
        with self._connect() as conn:
            if conn.execute("SELECT to_regclass(%s) IS NULL", (STATE_TABLE,)).fetchone()[0]:
                return
            with conn.transaction():
                conn.execute(f"DELETE FROM {STATE_TABLE} WHERE funnel = %s AND mirror = %s", (funnel, mirror))
                if conn.execute(f"SELECT count(*) FROM {STATE_TABLE}").fetchone()[0] == 0:
                    conn.execute(f"DROP TABLE {STATE_TABLE}")

    @_database_errors
    def reset(self, plan: ResetPlan, source: Database) -> None:
        """Drops and empties in one transaction; the reverse applier creates missing tables from the
        definitions the reverse capture publishes (``create_tables``)."""
        with self._connect() as conn, conn.transaction():
            for name in [p for p, _ in plan.recreate] + list(plan.drop):
                conn.execute(f"DROP TABLE {_pg_name(name)}")
            if plan.empty:
                conn.execute("TRUNCATE " + ", ".join(_pg_name(name) for name in plan.empty))

    def _counters(self, conn) -> dict[str, int]:
        rows = conn.execute("SELECT schemaname || '.' || relname, n_tup_ins + n_tup_upd + n_tup_del "
                            "FROM pg_stat_user_tables").fetchall()
        return {name: int(count) for name, count in rows if not name.split(".", 1)[1].startswith(INTERNAL_PREFIX)}

    def _writers(self, conn) -> list[str]:
        return [f"pid {pid} user {user} app {app!r} {state}: {query}"
                for pid, user, app, state, writing, query in conn.execute(_PG_OTHER_SESSIONS).fetchall() if writing]

    @_database_errors
    def write_marker(self) -> Hashable:
        with self._connect() as conn:
            return tuple(sorted(self._counters(conn).items())) + tuple(self._writers(conn))

    @_database_errors
    def activity_since(self, marker: Hashable) -> WriteActivity:
        before = {item[0]: item[1] for item in marker if isinstance(item, tuple)}  # type: ignore[union-attr]
        with self._connect() as conn:
            now = self._counters(conn)
            changes = {name: count - before.get(name, 0) for name, count in now.items()
                       if count != before.get(name, 0)}
            return WriteActivity(changes, self._writers(conn))

    @_database_errors
    def freeze(self, tables: Sequence[str], timeout_s: float, reason: str) -> int:
        """Read-only default for new sessions, other sessions ended; returns the WAL position then."""
        deadline = time.monotonic() + timeout_s
        with self._connect() as conn:
            database = conn.execute("SELECT current_database()").fetchone()[0]
            conn.execute(f"ALTER DATABASE {quote(database)} SET default_transaction_read_only = on")
            while True:
                pids = [row[0] for row in conn.execute(_PG_OTHER_SESSIONS).fetchall()]
                if not pids:
                    break
                conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
                if time.monotonic() > deadline:
                    raise SwitchbackError(f"sessions {pids} of database {database} did not end within "
                                          f"{timeout_s:.1f}s", hint="rerun `funnel switchback complete`")
                time.sleep(0.1)
            return _lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])

    @_database_errors
    def frozen(self) -> bool:
        with self._connect() as conn:
            return bool(conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                "WHERE d.datname = current_database() AND s.setrole = 0 "
                "AND 'default_transaction_read_only=on' = ANY(s.setconfig))").fetchone()[0])

    @_database_errors
    def unfreeze(self) -> int:
        was = self.frozen()
        with self._connect() as conn:
            database = conn.execute("SELECT current_database()").fetchone()[0]
            conn.execute(f"ALTER DATABASE {quote(database)} RESET default_transaction_read_only")
        return int(was)

    @_database_errors
    def captured_through(self, marker: int, capture: Any) -> bool:
        """The capture's slot confirmed everything before WAL position ``marker``: every
        transaction committed before the freeze is in the reverse funnel."""
        with self._connect() as conn:
            row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                               (capture.source.slot,)).fetchone()
        return row is not None and row[0] is not None and _lsn(row[0]) >= marker

    @_database_errors
    def column_types(self, shapes: Sequence[TableShape]) -> dict[str, list[str]]:
        with self._connect() as conn:
            result = {}
            for shape in shapes:
                rows = conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                                    "attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                                    (_pg_name(shape.name),)).fetchall()
                declared = dict(rows)
                result[shape.name] = [declared.get(column, "") for column in shape.columns]
            return result

    @_database_errors
    def checksums(self, shapes: Sequence[TableShape],
                  as_types: dict[str, list[str]] | None = None) -> dict[str, TableChecksum]:
        """Like SQLite's; ``as_types`` casts each column to production's type on the way out."""
        result = {}
        with self._connect() as conn:
            conn.autocommit = False
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            for shape in shapes:
                types = (as_types or {}).get(shape.name) or [""] * len(shape.columns)
                columns = ", ".join(quote(c) + (f"::{t}" if t else "") for c, t in zip(shape.columns, types))
                with conn.cursor(name="timefunnel_checksum") as cursor:
                    cursor.execute(f"SELECT {columns} FROM {_pg_name(shape.name)}")
                    result[shape.name] = checksum_rows(_fetch_all(cursor))
            conn.rollback()
        return result


def _pg_name(name: str) -> str:
    schema, _, table = name.partition(".")
    return f"{quote(schema)}.{quote(table)}"


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)

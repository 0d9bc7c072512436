"""The switchback's direct work on a SQLite database (see ``databases``).

SQLite freeze: BEFORE INSERT/UPDATE/DELETE triggers on every user table that raise
``timefunnel: ... frozen ...``, created in one write transaction.  Taking the write lock
waits for a writer's open transaction to end; once the triggers are committed no write
to a user table can commit, while the capture's bookkeeping tables (``_timefunnel_*``)
stay writable.  The triggers are named ``timefunnel_freeze_*`` (not ``_timefunnel_``,
whose triggers the capture owns and replaces on install).
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Hashable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from applier.sinks.sqlite_sql import STATE_TABLE
from applier.sinks.state import position_from_row
from applier.switchback.compare import ResetPlan, TableChecksum, TableShape, WriteActivity, checksum_rows
from applier.switchback.databases import FETCH_ROWS, Database, database_errors, fetch_all
from funnel.errors import SwitchbackError
from applier.transaction import MirrorPosition
from funnel.databases import sqlite as sqlite_files
from funnel.databases.names import INTERNAL_PREFIX
from funnel.databases.names import SQLITE_CHANGELOG as CHANGELOG
from funnel.databases.names import quote_ident as quote
from funnel.identity import sqlite_identity
from funnel.urls import sqlite_path

FREEZE_PREFIX = "timefunnel_freeze_"


class SqliteDatabase:
    kind = "sqlite"
    fold_case = True
    quiet_s = 1.0

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)

    @database_errors
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

    def _connect(self, readonly: bool = False, timeout: float = sqlite_files.BUSY_TIMEOUT_S) -> sqlite3.Connection:
        return sqlite_files.connect(self.path, timeout=timeout, read_only=readonly)

    def _wrap(self, exc: sqlite3.Error, what: str) -> SwitchbackError:
        return SwitchbackError(f"{what} on {self.path}: {exc}")

    # -- tables and state ---------------------------------------------------------------
    @database_errors
    def tables(self) -> dict[str, TableShape]:
        """The user tables (not SQLite's, not timefunnel's), with columns and primary key."""
        if not os.path.isfile(self.path):
            return {}
        try:
            with closing(self._connect(readonly=True)) as conn:
                return _sqlite_tables(conn)
        except sqlite3.Error as exc:
            raise self._wrap(exc, "cannot list tables") from exc

    @database_errors
    def ddl(self, table: str) -> list[str]:
        """CREATE statements of ``table`` and its indexes, as this database has them."""
        with closing(self._connect(readonly=True)) as conn:
            rows = conn.execute("SELECT sql FROM sqlite_schema WHERE tbl_name = ? COLLATE NOCASE AND sql IS NOT NULL "
                                "AND type IN ('table', 'index') ORDER BY type = 'index', name", (table,)).fetchall()
        return [row[0] for row in rows]

    @database_errors
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

    @database_errors
    def write_position(self, position: MirrorPosition) -> None:
        from applier.sinks.sqlite import SqliteSink

        with SqliteSink(self.path) as sink:
            sink.apply([], position)

    @database_errors
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

    @database_errors
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
    @database_errors
    def write_marker(self) -> int:
        """The capture changelog's sequence: it moves with every committed row change."""
        with closing(self._connect(readonly=True)) as conn:
            return _changelog_sequence(conn)

    @database_errors
    def activity_since(self, marker: Hashable) -> WriteActivity:
        changes: dict[str, int] = {}
        with closing(self._connect(readonly=True)) as conn:
            if _has_table(conn, CHANGELOG):
                changes = dict(conn.execute(f"SELECT tbl, count(*) FROM {CHANGELOG} WHERE seq > ? GROUP BY tbl",
                                            (int(marker),)).fetchall())
        return WriteActivity(changes, _processes_holding(self.path))

    @database_errors
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

    @database_errors
    def frozen(self) -> bool:
        if not os.path.isfile(self.path):
            return False
        with closing(self._connect(readonly=True)) as conn:
            return bool(_freeze_triggers(conn))

    @database_errors
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

    @database_errors
    def captured_through(self, marker: int, capture: Any) -> bool:
        """The capture published every change up to changelog sequence ``marker``."""
        position = capture.stats.position
        return position is not None and position >= marker

    @database_errors
    def column_types(self, shapes: Sequence[TableShape]) -> dict[str, list[str]]:
        """Declared type of each column of ``shapes`` (names as in ``shapes``), '' when undeclared."""
        with closing(self._connect(readonly=True)) as conn:
            result = {}
            for shape in shapes:
                declared = {row[1].lower(): row[2] for row in conn.execute(f"PRAGMA table_xinfo({quote(shape.name)})")}
                result[shape.name] = [declared.get(column.lower(), "") for column in shape.columns]
            return result

    @database_errors
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
                    rows = fetch_all(conn.execute(f"SELECT {columns} FROM {quote(shape.name)}"))
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

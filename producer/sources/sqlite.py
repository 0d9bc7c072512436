"""Change capture from a production SQLite file that an application keeps writing.

How it works
------------
``install()`` puts AFTER INSERT/UPDATE/DELETE triggers on every captured table.
Each trigger appends one row to ``_timefunnel_changelog`` inside the application's
own write transaction, so a change is in the changelog exactly when it is committed.
``seal()`` cuts the changelog into groups (our source transactions), ``transactions_after``
reads them back, ``acknowledge`` deletes what is safely in Kafka, and ``snapshot``
makes the consistent initial copy that the changes continue from.

Row images are stored as native values, not as text
--------------------------------------------------
The changelog keeps each image in untyped columns ``v0, v1, ...`` (an UPDATE stores the
before image, then the after image).  Untyped columns have no affinity, so SQLite keeps
every value exactly as the trigger saw it: integers, text (also with NUL), blobs, and
reals bit for bit, -0.0 included.  We first tried type-tagged text in a ``json_array``
and measured that it cannot be exact: SQLite's own float-to-text conversion does not
round-trip doubles (``printf('%!.17g')`` failed for 523 of 302k random doubles on SQLite
3.40 and for 13% of them on 3.51; ``%!.20e`` and ``quote()`` fail on 3.51 too), and no
core SQL function can see the sign of -0.0.  Native columns also need no JSON1 in the
application's SQLite and nothing to decode here: reading is a plain row fetch.

A *layout* (table, columns in declared order, key) is stored once per version in
``_timefunnel_layouts`` and every changelog row names its layout, so rows written before
a schema change still decode with the columns they were written with.

Known limits (the application's SQLite decides these, not us)
-------------------------------------------------------------
- ``INSERT OR REPLACE`` deletes a conflicting row without firing DELETE triggers unless
  the application's connection sets ``PRAGMA recursive_triggers=ON``: the mirror then
  sees only the insert (fine for a conflict on the primary key, which the sink upserts;
  a row removed for a conflict on another UNIQUE index is missed).
- Generated columns are not captured: the mirror computes them itself.
- Schema changes are followed at the next seal (``_follow``; ``producer.sources.sqlite_ddl``
  tells renames from drops and adds by reading our own triggers, which SQLite rewrites):
  the rows recorded so far are sealed with the old columns, then one more group holds
  the DDL events and the current images of the rows the DDL may have changed, and the
  triggers are rebuilt, all in one write transaction.  A changed primary key or a new
  table without one cannot be followed: ``seal()`` raises SchemaChangedError, sealing
  nothing.  SQLite refuses ``DROP COLUMN`` on a column a trigger names: ``migrate()``
  runs such a migration.
- A table whose name holds a dot is ``main.<name>`` in events (``funnel.tablenames``).
- Every captured row write also writes a changelog row: bulk inserts in WAL mode ran
  at about half their speed (424k -> 230k rows/s at 100 rows per commit).
- The changelog has ``2 * columns`` value columns of the widest captured table, so a
  table may have at most about 990 columns (SQLite's default limit is 2000).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from funnel.clock import now_us
from funnel.ddl import Ddl
from funnel.errors import ConfigError, SchemaChangedError, SourceError
from funnel.events import Op, Row, TableChanges
from funnel.tablenames import check_distinct, sqlite_event_name
from producer.sources import sqlite_ddl
from producer.sources.base import SourceTransaction

CHANGELOG = "_timefunnel_changelog"
GROUPS = "_timefunnel_groups"
LAYOUTS = "_timefunnel_layouts"
CAPTURED = "_timefunnel_captured"  # the captured tables and their layouts, as installed
PREFIX = "_timefunnel_"
_BASE_COLUMNS = 4  # seq, tbl, op, layout: the value columns v0.. follow
_OPS = {"I": Op.INSERT, "U": Op.UPDATE, "D": Op.DELETE}
_DDL_MARK, _TRUNCATE_MARK = "S", "T"  # changelog rows that _follow writes, never a trigger
_MARKS = (_DDL_MARK, _TRUNCATE_MARK)


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier, safe for any characters."""
    return '"' + name.replace('"', '""') + '"'


def quote_text(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Layout:
    """One version of a captured table's shape: what its changelog rows hold."""

    table: str
    columns: tuple[str, ...]  # declared order; ``rowid`` first for rowid-keyed tables
    key: tuple[str, ...]
    rowid: bool = False  # keyed by the implicit rowid (opt-in, see ``SqliteSource``)

    @property
    def event_table(self) -> str:
        """The table's name in events (``funnel.tablenames``): ``main.a.b`` for ``"a.b"``."""
        return sqlite_event_name(self.table)

    @property
    def id(self) -> str:
        """Stable name of this layout: a change of columns, key or event name gives a new id."""
        fields: list = ["v1", self.table, self.columns, self.key, self.rowid]
        if self.event_table != self.table:
            # Events named dotted tables without ``main.`` before: a new id makes a capture
            # installed then refuse to resume instead of splitting the table on the mirror.
            fields.append(self.event_table)
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]

    @property
    def width(self) -> int:
        return len(self.columns)

    def trigger_names(self) -> dict[str, str]:
        """Trigger name per changelog op code."""
        return {op: f"{PREFIX}{op.lower()}_{self.id}" for op in _OPS}


_TOUCHED = "touched"  # the rows the last group touched are published again, as they are now
_WHOLE = "whole"  # a new table: every row
_WHOLE_AGAIN = "whole again"  # a re-created table: truncated, then every row
_DROPPED = "dropped"
_SCHEMA_ONLY = "schema only"  # an index: no rows follow


@dataclass(frozen=True, slots=True)
class _Change:
    """A schema change to publish: the layouts before and after it, and which rows follow it."""

    old: Layout | None
    new: Layout | None
    mode: str
    ddl: Ddl


@dataclass(slots=True)
class _Group:
    gid: int
    upto_seq: int
    sealed_at_us: int


class SqliteSource:
    """Captures the changes of ``tables`` in the SQLite file at ``path``.

    ``tables=None`` captures every ordinary table except SQLite's and our own. A table
    needs a declared PRIMARY KEY unless ``rowid_key=True``; then tables without one are
    keyed by their rowid, carried as a first column named ``rowid``.  That is opt-in
    because VACUUM may renumber the rowids of tables without an INTEGER PRIMARY KEY,
    after which the mirror's keys no longer name the same rows as production's.

    ``clock`` returns microseconds since the epoch; it stamps sealed groups.
    Not thread-safe: use one instance from one thread.
    """

    def __init__(
        self,
        path: str,
        tables: list[str] | None = None,
        rowid_key: bool = False,
        busy_timeout_s: float = 30,
        clock: Callable[[], int] = now_us,
    ) -> None:
        """Opens the file and checks the tables; creates nothing.

        Raises SourceError if the file does not exist or is not a database, or a table
        is unknown, a view or virtual table, or has no PRIMARY KEY (without rowid_key).
        """
        self.path = path
        self._requested = tables
        self._rowid_key = rowid_key
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._layout_cache: dict[str, Layout] = {}
        # The captured tables' indexes by layout id, as last published; None: not known
        # (before install), so index changes are not followed until it is.
        self._indexes: dict[str, dict[str, sqlite_ddl.Index]] | None = None
        self._schema_version: int | None = None  # PRAGMA schema_version when last checked
        self._conn = self._connect()
        try:
            self._captured = self._inspect(self._conn)
        except BaseException:
            self._conn.close()
            raise

    # -- public API ------------------------------------------------------------------

    @property
    def tables(self) -> list[str]:
        """The captured tables, as the database spells them."""
        return [layout.table for layout in self._captured]

    def install(self, resuming: bool = False) -> None:
        """Creates the changelog, groups, layouts and captured tables and the triggers; idempotent.

        Without ``resuming`` (a new funnel: the initial copy follows), triggers whose
        table changed shape, or that belong to tables no longer captured, are replaced
        or dropped.  With ``resuming`` (the funnel already holds this source's events),
        the capture must go on exactly as it was installed: changelog rows written since
        a schema change carry the old columns, and tables that are new to the capture
        have rows the mirror never got.  Everything happens in one write transaction, so
        the application never sees a half-installed capture.
        When resuming, what changed since (see ``seal``) is followed first.  Raises
        SchemaChangedError when resuming after a change that cannot be followed (a
        changed key, a new table without one); SourceError if a table no longer
        qualifies, or the file stays locked longer than busy_timeout_s.  Nothing is
        changed then.
        """
        with self._write_tx() as conn:
            if resuming:
                # Follow what changed while capture was stopped, from what was installed.
                self._captured = self._installed(conn)
                self._schema_version = None
                changes = self._schema_changes(conn)
                if changes:
                    self._follow(conn, changes)
                    return
            self._captured = self._inspect(conn)
            self._create_bookkeeping(conn)
            self._widen_changelog(conn, 2 * max(layout.width for layout in self._captured))
            self._sync_triggers(conn)
            self._schema_version = _schema_version(conn)
            self._indexes = self._read_indexes(conn)

    def uninstall(self) -> list[str]:
        """Drops what install() created (``uninstall``); returns what it dropped."""
        return uninstall(self.path, self._busy_timeout_s)

    def seal(self) -> int | None:
        """Closes the changes committed so far into a new group; returns its gid, or None.

        None means no change arrived since the last group.  SQLite's locks are not fair:
        against an application that writes back to back without a gap, this waits for
        a gap, up to busy_timeout_s.
        When the schema changed since the last seal, the change is followed (``_follow``):
        two groups are sealed, and the gid of the second is returned.
        Raises SchemaChangedError for a change that cannot be followed (a changed key, a
        new table without one): nothing is sealed then, so no change written after it is
        ever read.  Raises SourceError if capture is not installed or the file stays
        locked longer than busy_timeout_s.
        """
        # Why a group never splits an application transaction: SQLite has one writer at
        # a time, and BEGIN IMMEDIATE makes this bookkeeping a writer.  While we hold the
        # write lock no application transaction can be half-way through its changelog
        # rows: each one has either committed all its rows (they get seq numbers below
        # max(seq), contiguous, in commit order) or not written any yet.
        remembered = (self._captured, self._schema_version, self._indexes)
        try:
            with self._write_tx() as conn:
                # Checked under the write lock, so no DDL can slip in between the check and
                # the seal: every group is sealed with the columns its rows were written with,
                # and a schema change is published right after the rows before it.
                changes = self._schema_changes(conn)
                if changes:
                    return self._follow(conn, changes)
                return self._seal_group(conn)
        except BaseException:
            # Rolled back: what we knew of the schema is what the database still says.
            self._captured, self._schema_version, self._indexes = remembered
            raise

    def _seal_group(self, conn: sqlite3.Connection, strictly_later: bool = False) -> int | None:
        """Inside the write transaction: seals the changelog rows after the last group.

        ``strictly_later``: stamp it at least 1 µs after the last group, so that a target
        time can fall between the rows before a schema change and the change itself.
        """
        last = conn.execute(
            f"SELECT upto_seq, sealed_at_us FROM {GROUPS} ORDER BY gid DESC LIMIT 1"
        ).fetchone()
        top = conn.execute(f"SELECT max(seq) FROM {CHANGELOG}").fetchone()[0]
        if top is None or (last is not None and top <= last[0]):
            return None
        # commit_ts must not go backwards, or a target time would fall inside the
        # order of transactions; a clock step back reuses the previous stamp.
        sealed_at = max(self._clock(), last[1] + strictly_later if last is not None else 0)
        cursor = conn.execute(
            f"INSERT INTO {GROUPS}(upto_seq, sealed_at_us) VALUES (?, ?)", (top, sealed_at)
        )
        return int(cursor.lastrowid)

    def migrate(self, script: str) -> int:
        """Runs an application's migration ``script`` in one write transaction and follows it.

        For what SQLite refuses while our triggers exist: ``ALTER TABLE ... DROP COLUMN``
        fails for a column a trigger names.  A statement failing so gets the triggers of
        that table rewritten with NULL for the column, then runs again.  The running
        capture then follows the migration as any other at its next seal: it reads the
        NULL as a dropped column, and the rows written in between carry NULL for it,
        which the mirror drops right after.  Returns the number of statements run.
        Raises SourceError for a statement that fails otherwise (nothing of the script
        is then applied) or a database where capture is not installed.
        """
        statements = _split_script(script)
        with self._write_tx() as conn:
            installed = self._installed(conn)
            for number, statement in enumerate(statements, 1):
                self._run_migration_statement(conn, installed, statement, number)
        return len(statements)

    def _run_migration_statement(self, conn: sqlite3.Connection, installed: list[Layout], statement: str,
                                 number: int) -> None:
        for _ in range(4 * max((layout.width for layout in installed), default=1) + 1):
            try:
                conn.execute(statement)
                return
            except sqlite3.OperationalError as exc:
                blocked = _BLOCKED_DROP.match(str(exc))
                layout = _layout_of_trigger(installed, blocked.group(1)) if blocked else None
                if layout is None:
                    raise SourceError(f"migration statement {number} failed on {self.path}: {exc} "
                                      "(nothing of the migration was applied)",
                                      hint="fix the statement and run the migration again") from exc
                self._release_column(conn, layout, blocked.group(2))
        raise SourceError(f"migration statement {number} kept failing on {self.path}")

    def _release_column(self, conn: sqlite3.Connection, layout: Layout, column: str) -> None:
        """Rewrites ``layout``'s triggers with NULL where they name ``column`` (see migrate)."""
        view = sqlite_ddl.trigger_view(conn, layout.trigger_names()["I"], layout.id, layout.width)
        names = list(view.names if view is not None else layout.columns)
        names = [None if name is not None and name.lower() == column.lower() else name for name in names]
        for op, name in layout.trigger_names().items():
            conn.execute(f"DROP TRIGGER IF EXISTS {quote_ident(name)}")
            conn.execute(_trigger_sql(layout, op, name, names,
                                      table=view.table if view is not None else layout.table))

    def transactions_after(self, position: int, limit_groups: int) -> list[SourceTransaction]:
        """The sealed groups with ``upto_seq > position``, oldest first, at most ``limit_groups``.

        A group holds the changelog rows after the previous group's ``upto_seq``.  If
        ``position`` falls inside a group (the snapshot was taken while a write slipped
        in after the last seal), only that group's rows after ``position`` are returned:
        ``position`` is a commit boundary too, so the rest are still whole application
        transactions, and the ones before it are in the snapshot.  Each returned group is
        held in memory whole, however large the application transaction was.
        Raises SourceError if capture is not installed or a row names an unknown layout.
        """
        with self._read_tx() as conn:
            groups = [
                _Group(*row)
                for row in conn.execute(
                    f"SELECT gid, upto_seq, sealed_at_us FROM {GROUPS} "
                    "WHERE upto_seq > ? ORDER BY upto_seq LIMIT ?",
                    (position, limit_groups),
                )
            ]
            if not groups:
                return []
            rows = conn.execute(
                f"SELECT * FROM {CHANGELOG} WHERE seq > ? AND seq <= ? ORDER BY seq",
                (position, groups[-1].upto_seq),
            )
            return self._assemble(conn, groups, rows)

    def acknowledge(self, position: int) -> None:
        """Forgets the changes up to ``position``: they are safely in the funnel.

        ``position`` is the position of a published transaction (or of the snapshot).
        Raises SourceError if the file stays locked longer than busy_timeout_s.
        """
        with self._write_tx() as conn:
            conn.execute(f"DELETE FROM {CHANGELOG} WHERE seq <= ?", (position,))
            conn.execute(f"DELETE FROM {GROUPS} WHERE upto_seq <= ?", (position,))

    def snapshot(self, chunk_rows: int = 2000) -> Snapshot:
        """Starts a consistent initial copy of the captured tables.

        The copy is read in one read transaction on its own connection, pinned by its
        first SELECT, which also reads the snapshot position S (the highest changelog
        sequence committed).  Changes up to S are in the copy, changes after S come from
        ``transactions_after(S, ...)``.  We seal first so that S usually falls on a group
        boundary; when a write slips in between, ``transactions_after`` splits that group
        at S, so nothing is lost or doubled either way.

        In WAL mode the application keeps writing during the copy (but the WAL cannot be
        checkpointed past our snapshot, so it grows until the copy ends).  In rollback
        journal mode the application's commits wait for the whole copy and fail once
        their busy timeout runs out: snapshot a rollback-journal database in a quiet
        period, or switch it to WAL.  Do not call ``seal`` while a copy is open there.
        Raises ConfigError for chunk_rows < 1, SchemaChangedError if a table changed
        shape since ``install()`` and SourceError if capture is not installed.
        """
        if chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be at least 1, not {chunk_rows}")
        self.seal()
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            position = self._snapshot_position(conn)  # first read: pins the snapshot
            self._check_unchanged(conn, self._captured, "since install()",
                                  hint="run the capture again: nothing of this copy was published")
        except BaseException:
            conn.close()
            raise
        return Snapshot(conn, position, list(self._captured), chunk_rows, self.path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SqliteSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections and transactions -------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """A connection in autocommit mode (we say BEGIN ourselves) to an existing file.

        Raises SourceError if the file does not exist (we never create one).
        """
        if sqlite3.sqlite_version_info < (3, 37, 0):  # PRAGMA table_list
            raise SourceError(
                f"SQLite {sqlite3.sqlite_version} is too old for capture: 3.37 or later needed",
                hint="run the producer with a Python whose sqlite3 links SQLite 3.37+",
            )
        if not os.path.isfile(self.path):
            raise SourceError(
                f"SQLite database {self.path} does not exist",
                hint="check the path; capture never creates a database",
            )
        uri = pathlib.Path(self.path).resolve().as_uri() + "?mode=rw"
        try:
            return sqlite3.connect(
                uri, uri=True, timeout=self._busy_timeout_s, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise SourceError(f"cannot open SQLite database {self.path}: {exc}") from exc

    @contextmanager
    def _write_tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; sqlite3 errors wrapped."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            yield conn

    @contextmanager
    def _read_tx(self) -> Iterator[sqlite3.Connection]:
        """A read transaction, so that groups and changelog rows are read consistently."""
        with self._transaction("BEGIN") as conn:
            yield conn

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:
            raise _wrap(exc, self.path, self._busy_timeout_s) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.rollback()
            raise _wrap(exc, self.path, self._busy_timeout_s) from exc
        except BaseException:
            conn.rollback()
            raise

    # -- inspection -------------------------------------------------------------------

    def _inspect(self, conn: sqlite3.Connection, names: list[str] | None = None) -> list[Layout]:
        """The layouts of ``names`` (default: the requested tables), as the schema is now.

        Raises SourceError naming the first table that cannot be captured.
        """
        try:
            kinds = _table_kinds(conn)
            names = names if names is not None else self._requested
            if names is None:
                _refuse_reserved_names(kinds, self.path)
                names = sorted(n for n, k in kinds.items() if k == "table" and not _internal(n))
            # dict.fromkeys: "Orders" and "orders" name one table, captured once
            layouts = list(dict.fromkeys(self._layout(conn, kinds, name) for name in names))
        except sqlite3.Error as exc:
            raise _wrap(exc, self.path, self._busy_timeout_s) from exc
        if not layouts:
            raise SourceError(
                f"no tables to capture in {self.path}",
                hint="create the application's tables first, or name the tables to capture",
            )
        check_distinct([layout.event_table for layout in layouts], self.path)
        return layouts

    def _layout(self, conn: sqlite3.Connection, kinds: dict[str, str], name: str) -> Layout:
        """Raises SourceError if ``name`` is not an ordinary table with a usable key."""
        table = {n.lower(): n for n in kinds}.get(name.lower())
        if table is None:
            raise SourceError(f'table "{name}" does not exist in {self.path}')
        kind = kinds[table]
        where = f'"{table}" in {self.path}'
        if kind == "view":
            raise SourceError(f"{where} is a view: capture its base tables instead")
        if kind != "table":
            raise SourceError(f"{where} is a {kind} table: triggers cannot capture it")
        if _internal(table):
            raise SourceError(f"{where} is an internal table of SQLite or timefunnel")
        info = conn.execute(f"PRAGMA table_xinfo({quote_ident(table)})").fetchall()
        columns = tuple(row[1] for row in info if row[6] == 0)  # hidden != 0: generated
        key = tuple(row[1] for row in sorted((r for r in info if r[5] > 0), key=lambda r: r[5]))
        if key:
            return Layout(table, columns, key)
        return self._rowid_layout(table, columns)

    def _rowid_layout(self, table: str, columns: tuple[str, ...]) -> Layout:
        if not self._rowid_key:
            raise SourceError(
                f'table "{table}" in {self.path} has no PRIMARY KEY',
                hint="declare one, or key it by rowid with `funnel capture --rowid-key` (library: rowid_key=True) "
                "(only if nothing VACUUMs the database: VACUUM may renumber rowids)",
            )
        if any(c.lower() in ("rowid", "oid", "_rowid_") for c in columns):
            raise SourceError(
                f'table "{table}" in {self.path} has no PRIMARY KEY and a column named like '
                "its rowid, so the rowid cannot be read",
                hint="declare a PRIMARY KEY",
            )
        return Layout(table, ("rowid", *columns), ("rowid",), rowid=True)

    # -- install ----------------------------------------------------------------------

    def _create_bookkeeping(self, conn: sqlite3.Connection) -> None:
        # AUTOINCREMENT: sequence numbers and gids are never reused after acknowledge()
        # deleted the rows, so positions only grow and txids stay unique.
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {CHANGELOG}(seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "tbl TEXT NOT NULL, op TEXT NOT NULL, layout TEXT NOT NULL)"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {GROUPS}(gid INTEGER PRIMARY KEY AUTOINCREMENT, "
            "upto_seq INTEGER NOT NULL, sealed_at_us INTEGER NOT NULL)"
        )
        conn.execute(f"CREATE INDEX IF NOT EXISTS {GROUPS}_upto ON {GROUPS}(upto_seq)")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {LAYOUTS}(layout TEXT PRIMARY KEY, tbl TEXT NOT NULL, "
            "columns TEXT NOT NULL, key TEXT NOT NULL, rowid INTEGER NOT NULL)"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {CAPTURED}(tbl TEXT PRIMARY KEY, layout TEXT NOT NULL)"
        )

    def _widen_changelog(self, conn: sqlite3.Connection, needed: int) -> None:
        """Adds untyped value columns until the changelog has ``needed`` of them."""
        have = len(conn.execute(f"PRAGMA table_info({CHANGELOG})").fetchall()) - _BASE_COLUMNS
        for index in range(have, needed):
            # no declared type = no affinity: values are stored exactly as given
            conn.execute(f"ALTER TABLE {CHANGELOG} ADD COLUMN v{index}")

    def _sync_triggers(self, conn: sqlite3.Connection) -> None:
        """Makes our triggers exactly those of the captured layouts."""
        wanted: dict[str, str] = {}
        for layout in self._captured:
            conn.execute(
                f"INSERT OR IGNORE INTO {LAYOUTS} VALUES (?, ?, ?, ?, ?)",
                (layout.id, layout.table, json.dumps(layout.columns), json.dumps(layout.key),
                 int(layout.rowid)),
            )
            for op, name in layout.trigger_names().items():
                wanted[name] = _trigger_sql(layout, op, name)
        existing = {
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger'")
            if row[0].startswith(PREFIX)
        }
        for name in existing - wanted.keys():
            conn.execute(f"DROP TRIGGER {quote_ident(name)}")
        for name in wanted.keys() - existing:
            conn.execute(wanted[name])
        # What a resumed capture compares the schema with: unlike the triggers, this
        # record still names a table after it was dropped.
        conn.execute(f"DELETE FROM {CAPTURED}")
        conn.executemany(
            f"INSERT INTO {CAPTURED}(tbl, layout) VALUES (?, ?)",
            [(layout.table, layout.id) for layout in self._captured],
        )

    # -- reading ----------------------------------------------------------------------

    def _assemble(
        self, conn: sqlite3.Connection, groups: list[_Group], rows: Iterator[tuple]
    ) -> list[SourceTransaction]:
        """Cuts changelog rows (in seq order) into one SourceTransaction per group."""
        # The hot loop of capture (over 100k rows/s is the target): no calls per row
        # beyond the slicing, the rest only when the table or op changes.
        transactions = [SourceTransaction(str(g.gid), g.sealed_at_us, g.upto_seq) for g in groups]
        index, upto = 0, groups[0].upto_seq
        changes = transactions[0].changes
        last_key: tuple[str, str] | None = None
        append = None
        start = _BASE_COLUMNS
        for row in rows:
            if row[0] > upto:
                while row[0] > groups[index].upto_seq:
                    index += 1
                upto, changes, last_key = groups[index].upto_seq, transactions[index].changes, None
            op = row[2]
            if (row[3], op) != last_key:
                last_key = (row[3], op)
                layout = self._layout_cache.get(row[3]) or self._load_layout(conn, row[3])
                if op in _MARKS:  # a schema change or a truncate written by _follow: no rows
                    changes.append(self._mark(layout, op, row[start]))
                    last_key = None
                    continue
                batch = TableChanges(layout.event_table, _OPS[op], list(layout.columns), list(layout.key))
                changes.append(batch)
                append = batch.rows.append
                end, after_end = start + layout.width, start + 2 * layout.width
            if op == "I":
                append(Row(None, list(row[start:end])))
            elif op == "U":
                append(Row(list(row[start:end]), list(row[end:after_end])))
            else:
                append(Row(list(row[start:end]), None))
        return transactions

    @staticmethod
    def _mark(layout: Layout, op: str, value: object) -> TableChanges:
        if op == _DDL_MARK:
            return TableChanges(layout.event_table, Op.DDL, list(layout.columns), list(layout.key), [],
                                Ddl.from_json(str(value)))
        return TableChanges(layout.event_table, Op.TRUNCATE, [], [], [])

    def _load_layout(self, conn: sqlite3.Connection, layout_id: str) -> Layout:
        """Raises SourceError if the changelog names a layout we never recorded."""
        found = conn.execute(
            f"SELECT tbl, columns, key, rowid FROM {LAYOUTS} WHERE layout = ?", (layout_id,)
        ).fetchone()
        if found is None:
            raise SourceError(
                f"changelog of {self.path} names unknown layout {layout_id}",
                hint=f"the {LAYOUTS} table was altered by hand; re-create the mirror",
            )
        table, columns, key, rowid = found
        layout = Layout(table, tuple(json.loads(columns)), tuple(json.loads(key)), bool(rowid))
        self._layout_cache[layout_id] = layout
        return layout

    def _snapshot_position(self, conn: sqlite3.Connection) -> int:
        """The highest changelog sequence committed (kept in sqlite_sequence even after
        acknowledge() deleted the rows).  Raises SourceError if capture is not installed."""
        try:
            row = conn.execute(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = ?), 0), "
                f"coalesce((SELECT max(seq) FROM {CHANGELOG}), 0))",
                (CHANGELOG,),
            ).fetchone()
        except sqlite3.Error as exc:
            raise _wrap(exc, self.path, self._busy_timeout_s) from exc
        return int(row[0])

    # -- schema changes -------------------------------------------------------------------

    def _schema_changes(self, conn: sqlite3.Connection) -> list[_Change]:
        """Inside the write transaction: how the captured tables changed since their
        triggers were made ([] when they did not).  Costs one PRAGMA while no DDL ran.

        Raises SchemaChangedError for a change that cannot be followed: a changed primary
        key, or a table that can no longer be captured (no key, a clash of names).
        """
        version = _schema_version(conn)
        if version == self._schema_version:
            return []
        changes = self._find_changes(conn)
        if not changes:
            self._schema_version = version  # an index, another's trigger: nothing we capture
        return changes

    def _find_changes(self, conn: sqlite3.Connection) -> list[_Change]:
        kinds = _table_kinds(conn)
        by_lower = {name.lower(): name for name, kind in kinds.items() if kind == "table"}
        claimed: set[str] = set()
        changes: list[_Change] = []
        for layout in self._captured:
            change = self._table_change(conn, kinds, by_lower, claimed, layout)
            if change is not None:
                changes.append(change)
        for name in self._new_tables(by_lower, claimed):
            new = self._followed_layout(conn, kinds, name)
            definition = sqlite_ddl.table_definition(conn, new.table, new.columns, new.key)
            statement = sqlite_ddl.create_statement(conn, new.table)
            changes.append(_Change(None, new, _WHOLE, sqlite_ddl.create_ddl(new.event_table, definition, statement)))
        return changes + self._index_changes(conn, changes)

    def _index_changes(self, conn: sqlite3.Connection, changes: list[_Change]) -> list[_Change]:
        """CREATE and DROP INDEX on the captured tables, after their other changes."""
        if self._indexes is None:
            return []
        changed = {change.old.id: change for change in changes if change.old is not None}
        result = []
        for layout in [c.new for c in changes if c.old is None and c.new is not None] + self._captured:
            change = changed.get(layout.id)
            if change is not None and change.new is None:
                continue  # dropped: its indexes went with it
            now = change.new if change is not None else layout
            assert now is not None
            recreated = change is not None and change.mode == _WHOLE_AGAIN
            before = {} if recreated or layout.id not in self._indexes else self._indexes[layout.id]
            current = sqlite_ddl.indexes(conn, now.table)
            definition = sqlite_ddl.table_definition(conn, now.table, now.columns, now.key)
            for ddl in sqlite_ddl.index_ddls(now.event_table, before, current, definition):
                result.append(_Change(now, now, _SCHEMA_ONLY, ddl))
        return result

    def _read_indexes(self, conn: sqlite3.Connection) -> dict[str, dict[str, sqlite_ddl.Index]]:
        return {layout.id: sqlite_ddl.indexes(conn, layout.table) for layout in self._captured}

    def _table_change(self, conn: sqlite3.Connection, kinds: dict[str, str], by_lower: dict[str, str],
                      claimed: set[str], layout: Layout) -> _Change | None:
        """How one captured table changed, or None; adds the table it is now to ``claimed``."""
        names = layout.trigger_names()
        view = sqlite_ddl.trigger_view(conn, names["I"], layout.id, layout.width)
        present = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name IN (?, ?, ?)", tuple(names.values()))}
        if view is not None and len(present) == 3:
            # The triggers went with the table through renames: follow them.
            claimed.add(view.table.lower())
            new = self._followed_layout(conn, kinds, view.table)
            if new == layout:
                return None
            renames = sqlite_ddl.renames(layout.columns, view)
            if tuple(renames.get(k, k) for k in layout.key) != new.key:
                raise self._unfollowable(f'table "{layout.table}" changed its primary key from '
                                         f'({", ".join(layout.key)}) to ({", ".join(new.key)})')
            definition = sqlite_ddl.table_definition(conn, new.table, new.columns, new.key)
            ddl = sqlite_ddl.alter_ddl(layout.event_table, new.event_table, layout.columns, definition, renames,
                                       sqlite_ddl.create_statement(conn, new.table))
            return _Change(layout, new, _TOUCHED, ddl)
        table = by_lower.get(layout.table.lower())
        if table is None or table.lower() in claimed:
            return _Change(layout, None, _DROPPED, sqlite_ddl.drop_ddl(layout.event_table, layout.table))
        # Re-created without our triggers (SQLite's 12-step ALTER, DROP and CREATE): what
        # happened to it since the last seal is unknown, so it is published whole.
        claimed.add(table.lower())
        new = self._followed_layout(conn, kinds, table)
        if new.key != layout.key:
            raise self._unfollowable(f'table "{layout.table}" was re-created with primary key '
                                     f'({", ".join(new.key)}) instead of ({", ".join(layout.key)})')
        definition = sqlite_ddl.table_definition(conn, new.table, new.columns, new.key)
        ddl = sqlite_ddl.alter_ddl(layout.event_table, new.event_table, layout.columns, definition, {},
                                   sqlite_ddl.create_statement(conn, new.table))
        return _Change(layout, new, _WHOLE_AGAIN, ddl)

    def _new_tables(self, by_lower: dict[str, str], claimed: set[str]) -> list[str]:
        """Tables to capture that no captured layout accounts for: created since."""
        if self._requested is None:
            wanted = [name for name in by_lower.values() if not _internal(name)]
        else:
            wanted = [by_lower[name.lower()] for name in self._requested if name.lower() in by_lower]
        return sorted(name for name in wanted if name.lower() not in claimed)

    def _followed_layout(self, conn: sqlite3.Connection, kinds: dict[str, str], table: str) -> Layout:
        try:
            return self._layout(conn, kinds, table)
        except SourceError as exc:
            raise self._unfollowable(str(exc)) from exc

    def _unfollowable(self, what: str) -> SchemaChangedError:
        return SchemaChangedError(
            f"the schema of {self.path} changed in a way capture cannot follow: {what}; "
            "capture stopped before publishing any change made after that", hint=_REINITIALISE)

    def _follow(self, conn: sqlite3.Connection, changes: list[_Change]) -> int | None:
        """Inside the write transaction: publishes ``changes`` in order and rebuilds the triggers.

        The rows sealed so far were written with the old columns: they are sealed first
        as they are.  Then, as one more group, each schema change followed by the rows
        that make the mirror exact at this instant (we hold the write lock, so the
        tables are as the application committed them): the current image of every row
        the last group touched (its rows written after the DDL had the old columns), or
        the whole table where the triggers were gone.  Returns the last gid.
        """
        last = conn.execute(f"SELECT upto_seq FROM {GROUPS} ORDER BY gid DESC LIMIT 1").fetchone()
        since = last[0] if last is not None else 0  # rows after it may have been written after the DDL
        self._seal_group(conn)
        top = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {CHANGELOG}").fetchone()[0]
        captured = {layout.id: layout for layout in self._captured}
        for change in changes:
            if change.old is not None:
                captured.pop(change.old.id, None)
            if change.new is not None:
                captured[change.new.id] = change.new
        self._captured = list(captured.values())
        check_distinct([layout.event_table for layout in self._captured], self.path)
        self._create_bookkeeping(conn)
        self._widen_changelog(conn, 2 * max((layout.width for layout in self._captured), default=1))
        self._sync_triggers(conn)  # records the new layouts before the marks name them
        for change in changes:
            self._write_change(conn, change, since, top)
        gid = self._seal_group(conn, strictly_later=True)
        self._schema_version = _schema_version(conn)
        self._indexes = self._read_indexes(conn)
        return gid

    def _write_change(self, conn: sqlite3.Connection, change: _Change, since: int, top: int) -> None:
        layout = change.new or change.old
        assert layout is not None
        conn.execute(f"INSERT INTO {CHANGELOG}(tbl, op, layout, v0) VALUES (?, ?, ?, ?)",
                     (layout.table, _DDL_MARK, layout.id, change.ddl.to_json()))
        if change.new is None or change.mode == _SCHEMA_ONLY:
            return
        new = change.new
        targets = ", ".join(f"v{i}" for i in range(new.width))
        insert = f"INSERT INTO {CHANGELOG}(tbl, op, layout, {targets}) "
        columns = ", ".join(quote_ident(c) for c in new.columns)
        if change.mode == _TOUCHED:
            assert change.old is not None
            where = " AND ".join(f"{quote_ident(k)} IS ?" for k in new.key)
            select = f"SELECT {columns} FROM {quote_ident(new.table)} WHERE {where}"
            for key in self._touched_keys(conn, change.old, since, top):
                found = conn.execute(select, key).fetchone()
                if found is not None:
                    conn.execute(insert + f"VALUES (?, 'I', ?, {', '.join('?' * new.width)})",
                                 (new.table, new.id, *found))
                else:  # deleted since: a delete by key (the other columns are not known)
                    image = [None] * new.width
                    for value, name in zip(key, new.key):
                        image[new.columns.index(name)] = value
                    conn.execute(insert + f"VALUES (?, 'D', ?, {', '.join('?' * new.width)})",
                                 (new.table, new.id, *image))
            return
        if change.mode == _WHOLE_AGAIN:
            conn.execute(f"INSERT INTO {CHANGELOG}(tbl, op, layout) VALUES (?, ?, ?)",
                         (new.table, _TRUNCATE_MARK, new.id))
        conn.execute(insert + f"SELECT ?, 'I', ?, {columns} FROM {quote_ident(new.table)}", (new.table, new.id))

    def _touched_keys(self, conn: sqlite3.Connection, old: Layout, since: int, top: int) -> list[tuple]:
        """The keys (old positions) of the rows of ``old`` in the changelog rows (since, top]."""
        positions = [old.columns.index(k) for k in old.key]
        width = old.width
        before = ", ".join(f"v{p}" for p in positions)
        after = ", ".join(f"v{width + p}" for p in positions)
        keys: dict[tuple, None] = {}
        for row in conn.execute(f"SELECT op, {before}, {after} FROM {CHANGELOG} "
                                "WHERE layout = ? AND seq > ? AND seq <= ? AND op IN ('I', 'U', 'D') ORDER BY seq", (old.id, since, top)):
            n = len(positions)
            keys[tuple(row[1:1 + n])] = None
            if row[0] == "U":
                keys[tuple(row[1 + n:])] = None
        return list(keys)

    def _check_unchanged(
        self, conn: sqlite3.Connection, installed: list[Layout], when: str, hint: str | None = None
    ) -> None:
        """Raises SchemaChangedError listing every difference from ``installed``."""
        problems = self._drift(conn, installed)
        if problems:
            raise SchemaChangedError(
                f"the schema of {self.path} changed {when}: {'; '.join(problems)}; "
                "capture stopped before publishing any change made after that",
                hint=hint or _REINITIALISE,
            )

    def _drift(self, conn: sqlite3.Connection, installed: list[Layout]) -> list[str]:
        """What no longer matches ``installed`` (the layouts our triggers were made for),
        one phrase per table: changed, dropped, without triggers, or new to the capture."""
        kinds = _table_kinds(conn)
        triggers = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger'")
        }
        problems = [
            problem
            for layout in installed
            if (problem := self._table_drift(conn, kinds, triggers, layout)) is not None
        ]
        known = {layout.table.lower() for layout in installed}
        wanted = self._requested
        if wanted is None:
            wanted = [name for name, kind in kinds.items() if kind == "table" and not _internal(name)]
        problems += [
            f'table "{name}" is new to the capture' for name in sorted(wanted) if name.lower() not in known
        ]
        return problems

    def _table_drift(
        self, conn: sqlite3.Connection, kinds: dict[str, str], triggers: set[str], layout: Layout
    ) -> str | None:
        table = {name.lower(): name for name in kinds}.get(layout.table.lower())
        if table is None or kinds[table] != "table":
            return f'table "{layout.table}" was dropped or renamed'
        try:
            now = self._layout(conn, kinds, table)
        except SourceError as exc:  # lost its key in a rebuild, say
            return str(exc)
        if now != layout:
            return _describe_change(layout, now)
        if not set(layout.trigger_names().values()) <= triggers:
            return (f'the capture triggers of table "{layout.table}" are missing or were made for '
                    "another layout (was the table re-created, or installed by an older timefunnel?)")
        return None

    def _installed(self, conn: sqlite3.Connection) -> list[Layout]:
        """The layouts the capture was installed with, as the database records them.

        A database installed before the ``captured`` record existed names them only in its
        triggers' names (``_timefunnel_<op>_<layout id>``); a table dropped since is then
        not noticed.  Raises SourceError for a layout id that ``layouts`` does not know.
        """
        if _has_table(conn, CAPTURED):
            ids = [row[0] for row in conn.execute(f"SELECT layout FROM {CAPTURED} ORDER BY tbl")]
        else:
            ids = sorted({
                row[0].rsplit("_", 1)[1]
                for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger'")
                if row[0].startswith(PREFIX)
            })
        return [self._layout_cache.get(i) or self._load_layout(conn, i) for i in ids]


class Snapshot:
    """A consistent initial copy: ``position`` and the rows as TableChanges chunks.

    Iterate once; the read transaction ends when iteration finishes or on ``close()``.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        position: int,
        layouts: list[Layout],
        chunk_rows: int,
        path: str,
    ) -> None:
        self.position = position
        self.tables = [layout.table for layout in layouts]
        self._conn: sqlite3.Connection | None = conn
        self._layouts = layouts
        self._chunk_rows = chunk_rows
        self._path = path

    def __iter__(self) -> Iterator[TableChanges]:
        """Yields chunks of at most chunk_rows rows, table by table, in memory one at a time.

        Raises SourceError if a row cannot be read (for example text that is not UTF-8).
        """
        if self._conn is None:
            raise SourceError(f"snapshot of {self._path} was already read or closed")
        try:
            for layout in self._layouts:
                yield from self._chunks(layout)
        finally:
            self.close()

    def _chunks(self, layout: Layout) -> Iterator[TableChanges]:
        assert self._conn is not None
        select = ", ".join(quote_ident(c) for c in layout.columns)
        try:
            cursor = self._conn.execute(f"SELECT {select} FROM {quote_ident(layout.table)}")
            empty = True
            while rows := cursor.fetchmany(self._chunk_rows):
                empty = False
                yield TableChanges(
                    layout.event_table, Op.SNAPSHOT, list(layout.columns), list(layout.key),
                    [Row(None, list(values)) for values in rows],
                )
            if empty:
                # An empty table is announced all the same, so that mirrors create it:
                # after a takeover, applications expect every table to exist.
                yield TableChanges(layout.event_table, Op.SNAPSHOT, list(layout.columns), list(layout.key), [])
        except sqlite3.Error as exc:
            raise SourceError(
                f'cannot read table "{layout.table}" of {self._path} for the snapshot: {exc}'
            ) from exc

    def close(self) -> None:
        """Ends the read transaction (lets WAL checkpoints and writers proceed)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()  # closing rolls the read transaction back

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- helpers ------------------------------------------------------------------------


def _trigger_sql(layout: Layout, op: str, name: str, names: list[str | None] | None = None,
                 table: str | None = None) -> str:
    """CREATE TRIGGER appending one changelog row per row change of ``layout.table``.

    ``names``: the columns' current names, None for a column released by ``migrate``
    (recorded as NULL); ``table``: the table's current name.
    """
    event = {"I": "INSERT", "U": "UPDATE", "D": "DELETE"}[op]
    images = {"I": ["NEW"], "U": ["OLD", "NEW"], "D": ["OLD"]}[op]
    columns = names if names is not None else list(layout.columns)
    values = [f"{image}.{quote_ident(c)}" if c is not None else "NULL" for image in images for c in columns]
    targets = ", ".join(f"v{i}" for i in range(len(values)))
    return (
        f"CREATE TRIGGER {quote_ident(name)} AFTER {event} ON {quote_ident(table or layout.table)} "
        f"BEGIN INSERT INTO {CHANGELOG}(tbl, op, layout, {targets}) VALUES ("
        f"{quote_text(layout.table)}, '{op}', '{layout.id}', {', '.join(values)}); END"
    )


_REINITIALISE = (
    "a mirror cannot follow this schema change in place, so re-initialise: capture into a new "
    "funnel (`funnel create NEW`, then `funnel capture ... --funnel NEW`) and apply it to a new, "
    "empty mirror; the old mirror stays valid up to the change"
)


# SQLite's refusal of DROP COLUMN on a column one of our triggers names.
_BLOCKED_DROP = re.compile(r"error in trigger (_timefunnel_[a-z]_[0-9a-f]+) after drop column: "
                           r"no such column: (?:NEW|OLD)\.(.+)$")


def _layout_of_trigger(layouts: list[Layout], trigger: str) -> Layout | None:
    layout_id = trigger.rsplit("_", 1)[-1]
    return next((layout for layout in layouts if layout.id == layout_id), None)


def _split_script(script: str) -> list[str]:
    """The complete SQL statements of ``script``, in order (semicolons inside literals kept)."""
    statements, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \t\r\n;"):
        statements.append(current.strip().rstrip(";"))
    return statements


def _describe_change(old: Layout, new: Layout) -> str:
    """One phrase saying how a captured table's layout changed."""
    if old.table != new.table:
        return f'table "{old.table}" was renamed to "{new.table}"'
    if old.columns != new.columns:
        return (f'table "{old.table}" changed its columns from ({", ".join(old.columns)}) '
                f'to ({", ".join(new.columns)})')
    return f'table "{old.table}" changed its key from ({", ".join(old.key)}) to ({", ".join(new.key)})'


def _schema_version(conn: sqlite3.Connection) -> int:
    """SQLite's schema cookie: it changes with every committed DDL statement."""
    return int(conn.execute("PRAGMA schema_version").fetchone()[0])


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (name,)
    ).fetchone() is not None


def _table_kinds(conn: sqlite3.Connection) -> dict[str, str]:
    """Name -> 'table', 'view', 'virtual' or 'shadow', for the main schema."""
    return {
        name: kind
        for schema, name, kind, *_ in conn.execute("PRAGMA table_list")
        if schema == "main"
    }


def _internal(name: str) -> bool:
    lowered = name.lower()
    return lowered.startswith("sqlite_") or lowered.startswith(PREFIX)


# What timefunnel itself keeps in a SQLite file: the capture's bookkeeping, and the state
# table of a mirror (a promoted mirror is the production a switchback captures).
_OWN_TABLES = frozenset({CHANGELOG, GROUPS, LAYOUTS, CAPTURED, "_timefunnel_state"})


def _refuse_reserved_names(kinds: dict[str, str], path: str) -> None:
    """Raises SourceError for an application table named like timefunnel's own tables.

    "Every table" leaves out timefunnel's tables by their prefix; an application's
    ``_timefunnel_audit`` would be left out silently, so it is refused instead, by name.
    """
    for name, kind in sorted(kinds.items()):
        if kind == "table" and name.lower().startswith(PREFIX) and name.lower() not in _OWN_TABLES:
            raise SourceError(
                f'table "{name}" in {path} is named with timefunnel\'s reserved prefix "{PREFIX}": '
                f"capturing every table would leave it out of the mirror",
                hint="rename it (ALTER TABLE ... RENAME TO), or name the tables to capture with --table",
            )


def uninstall(path: str, busy_timeout_s: float = 30) -> list[str]:
    """Drops the capture's triggers and bookkeeping tables from the file at ``path`` in one
    write transaction, whatever its tables are now; returns what it dropped ([] for no file).
    The capture cannot resume after this: the funnel needs a new initial copy.  Raises SourceError."""
    if not os.path.isfile(path):
        return []
    removed = []
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        objects = conn.execute("SELECT type, name FROM sqlite_schema WHERE type IN ('trigger', 'table')").fetchall()
        triggers = [name for kind, name in objects if kind == "trigger" and name.startswith(PREFIX)]
        for name in triggers:
            conn.execute(f"DROP TRIGGER {quote_ident(name)}")
        removed += [f"{len(triggers)} capture triggers"] if triggers else []
        for table in (CHANGELOG, GROUPS, LAYOUTS, CAPTURED):
            if ("table", table) in objects:
                conn.execute(f"DROP TABLE {quote_ident(table)}")
                removed.append(table)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise SourceError(f"cannot remove the capture from {path}: {exc}") from exc
    finally:
        conn.close()  # an open transaction is rolled back
    return removed


def _wrap(exc: sqlite3.Error, path: str, busy_timeout_s: float) -> SourceError:
    """A SourceError for a sqlite3 error, saying what to do when we know it."""
    if f"no such table: {PREFIX}" in str(exc):
        return SourceError(f"capture is not installed in {path}", hint="call install() first")
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return SourceError(
            f"SQLite database {path} stayed locked for more than {busy_timeout_s}s",
            hint="another connection holds a long transaction; retry, or raise busy_timeout_s",
        )
    return SourceError(f"SQLite error on {path}: {exc}")

"""The SQLite capture: ``SqliteSource`` puts the pieces of this package together.

``install()`` puts the triggers (``triggers``), ``seal()`` cuts the changelog into groups
and follows schema changes (``changelog``, ``follow``), ``transactions_after`` reads the
groups back, ``acknowledge`` deletes what is safely in Kafka, and ``snapshot`` makes the
consistent initial copy (``snapshot``) that the changes continue from.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from funnel.clock import now_us
from funnel.databases import sqlite as sqlite_files
from funnel.databases.names import INTERNAL_PREFIX
from funnel.errors import ConfigError, SourceError
from producer.sources.base import SourceStopped, SourceTransaction
from producer.sources.sqlite import changelog, follow, triggers
from producer.sources.sqlite.catalog import Catalog, Layout
from producer.sources.sqlite.snapshot import Snapshot


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
        self._catalog = Catalog(path, tables, rowid_key)
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._stop: threading.Event | None = None  # see stop_waits_on
        self._conn = self._connect()
        try:
            self._schema = follow.CapturedSchema(self._inspect(self._conn))
        except BaseException:
            self._conn.close()
            raise

    # -- public API ------------------------------------------------------------------

    @property
    def tables(self) -> list[str]:
        """The captured tables, as the database spells them."""
        return [layout.table for layout in self._schema.layouts]

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
                self._schema = follow.CapturedSchema(self._catalog.installed(conn), None, self._schema.indexes)
                changes = follow.changes(conn, self._catalog, self._schema)
                if changes:
                    follow.follow(conn, self._catalog, self._schema, changes, self._clock)
                    return
            self._schema.layouts = self._inspect(conn)
            triggers.create_bookkeeping(conn)
            triggers.widen_changelog(conn, 2 * max(layout.width for layout in self._schema.layouts))
            triggers.sync_triggers(conn, self._schema.layouts)
            self._schema.refresh(conn)

    def uninstall(self) -> list[str]:
        """Drops what install() created (``uninstall``); returns what it dropped."""
        return triggers.uninstall(self.path, self._busy_timeout_s)

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
        locked longer than busy_timeout_s, and SourceStopped when the event given to
        ``stop_waits_on`` is set while it waits for the lock (nothing is sealed then).
        """
        # Why a group never splits an application transaction: SQLite has one writer at
        # a time, and BEGIN IMMEDIATE makes this bookkeeping a writer.  While we hold the
        # write lock no application transaction can be half-way through its changelog
        # rows: each one has either committed all its rows (they get seq numbers below
        # max(seq), contiguous, in commit order) or not written any yet.
        remembered = replace(self._schema)
        try:
            with self._write_tx() as conn:
                # Checked under the write lock, so no DDL can slip in between the check and
                # the seal: every group is sealed with the columns its rows were written with,
                # and a schema change is published right after the rows before it.
                changes = follow.changes(conn, self._catalog, self._schema)
                if changes:
                    return follow.follow(conn, self._catalog, self._schema, changes, self._clock)
                return changelog.seal_group(conn, self._clock)
        except BaseException:
            # Rolled back: what we knew of the schema is what the database still says.
            self._schema = remembered
            raise

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
        statements = triggers.split_script(script)
        with self._write_tx() as conn:
            installed = self._catalog.installed(conn)
            for number, statement in enumerate(statements, 1):
                triggers.run_migration_statement(conn, installed, statement, number, self.path)
        return len(statements)

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
            return changelog.read(conn, position, limit_groups, self._catalog.load)

    def acknowledge(self, position: int) -> None:
        """Forgets the changes up to ``position``: they are safely in the funnel.

        ``position`` is the position of a published transaction (or of the snapshot).
        Raises SourceError if the file stays locked longer than busy_timeout_s.
        """
        with self._write_tx() as conn:
            changelog.acknowledge(conn, position)

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
            self._catalog.check_unchanged(conn, self._schema.layouts, "since install()",
                                  hint="run the capture again: nothing of this copy was published")
        except BaseException:
            conn.close()
            raise
        return Snapshot(conn, position, list(self._schema.layouts), chunk_rows, self.path)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SqliteSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections and transactions -------------------------------------------------

    def stop_waits_on(self, stop: threading.Event) -> None:
        """Once ``stop`` is set, a wait for the write lock ends with SourceStopped.

        The capture calls it with the event its SIGTERM sets: an application holding a
        long write transaction must not keep a stopped capture alive for busy_timeout_s.
        """
        self._stop = stop

    def _begin(self, conn: sqlite3.Connection, begin: str) -> None:
        """Raises SourceStopped, or sqlite3.Error (a lock held longer than busy_timeout_s)."""
        if begin != "BEGIN IMMEDIATE":
            conn.execute(begin)  # a read transaction takes no lock until its first read
            return
        stop = self._stop
        if not sqlite_files.begin_immediate(conn, self._busy_timeout_s, lambda: stop is not None and stop.is_set()):
            raise SourceStopped(f"stopped while waiting for the write lock of {self.path}",
                                hint="another connection held a write transaction; nothing was sealed")

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
        try:
            return sqlite_files.connect(self.path, timeout=self._busy_timeout_s, must_exist=True)
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
            self._begin(conn, begin)
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

    def _inspect(self, conn: sqlite3.Connection) -> list[Layout]:
        """The requested tables' layouts as the schema is now (``Catalog.inspect``).

        Raises SourceError naming the first table that cannot be captured.
        """
        try:
            return self._catalog.inspect(conn)
        except sqlite3.Error as exc:
            raise _wrap(exc, self.path, self._busy_timeout_s) from exc

    def _snapshot_position(self, conn: sqlite3.Connection) -> int:
        """Raises SourceError if capture is not installed (``changelog.snapshot_position``)."""
        try:
            return changelog.snapshot_position(conn)
        except sqlite3.Error as exc:
            raise _wrap(exc, self.path, self._busy_timeout_s) from exc


def _wrap(exc: sqlite3.Error, path: str, busy_timeout_s: float) -> SourceError:
    """A SourceError for a sqlite3 error, saying what to do when we know it."""
    if f"no such table: {INTERNAL_PREFIX}" in str(exc):
        return SourceError(f"capture is not installed in {path}", hint="call install() first")
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return SourceError(
            f"SQLite database {path} stayed locked for more than {busy_timeout_s}s",
            hint="another connection holds a long transaction; retry, or raise busy_timeout_s",
        )
    return SourceError(f"SQLite error on {path}: {exc}")

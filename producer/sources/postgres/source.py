"""``PostgresSource``: capture from a PostgreSQL database (see the package's docstring)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from funnel.clock import now_us
from funnel.errors import ConfigError, SourceError
from funnel.tablenames import check_distinct, check_schemas
from producer.sources.postgres import ddl as postgres_ddl
from producer.sources.base import SourceDisconnected, SourceTransaction
from producer.sources.postgres import checks
from producer.sources.postgres.assembly import Assembler
from producer.sources.postgres.catalog import IDENTITY_NAMES, database, inspect_tables, server_errors, table_oids
from producer.sources.postgres.connection import connect
from producer.sources.postgres.names import SLOT_NAME, default_publication_name
from producer.sources.postgres.pgoutput import lsn_from_text, lsn_to_text
from producer.sources.postgres.reader import StreamReader
from producer.sources.postgres.snapshot import PostgresSnapshot, create_slot_with_snapshot
from producer.sources.postgres.stream import ReplicationStream

log = logging.getLogger("timefunnel.capture.postgres")

SLOT_BUSY_WAIT_S = 15.0  # a predecessor's walsender may take a moment to release the slot


class PostgresSource:
    """Captures ``tables`` of the PostgreSQL database at ``url`` through slot ``slot``.

    ``tables=None`` captures every ordinary table of ``schemas`` (default: all user
    schemas).  ``publication=None`` makes capture create and maintain its own,
    ``default_publication_name(slot)``; a named one must exist and cover the tables.
    """

    def __init__(self, url: str, tables: list[str] | None = None, *, slot: str,
                 publication: str | None = None, replica_identity_full: bool = False,
                 schemas: list[str] | None = None, clock: Callable[[], int] = now_us,
                 capture_ddl: bool = False) -> None:
        """Connects and checks that capture can work; creates nothing.

        Raises ConfigError for a malformed slot name, SourceError for an unreachable
        server, a server older than 13, wal_level other than logical, a role without
        REPLICATION, a table that cannot be captured (no key, unlogged, unknown), missing
        privileges, or a slot or publication of the same name that is not usable.
        """
        if not SLOT_NAME.fullmatch(slot):
            raise ConfigError(f"bad replication slot name {slot!r}",
                              hint="use lower-case letters, digits and underscores, at most 63")
        self.url = url
        self.slot = slot
        self.own_publication = publication is None
        self.publication = publication or default_publication_name(slot)
        self._replica_identity_full = replica_identity_full
        self._clock = clock
        self._capture_ddl = capture_ddl  # ddl: event triggers log schema changes into the stream
        self._capture_new = tables is None
        self._stream: ReplicationStream | None = None
        self._reader: StreamReader | None = None
        self._conn = connect(url)
        try:
            with server_errors(f"cannot inspect database {database(self._conn)}"):
                checks.check_server(self._conn)
                oids = table_oids(self._conn, tables, schemas)
                if capture_ddl and tables is None:  # tables the event trigger saw created and left out
                    oids = postgres_ddl.left_out(self._conn, slot, oids)
                self._tables = inspect_tables(self._conn, oids, replica_identity_full)
                check_schemas([table.schema for table in self._tables], f"database {database(self._conn)}")
                check_distinct(self.tables, f"database {database(self._conn)}")
                if capture_ddl:  # first: no other grant makes up for it
                    postgres_ddl.check_may_install(self._conn)
                checks.check_privileges(self._conn, self._tables, self.publication, self.own_publication,
                                        replica_identity_full)
                checks.check_slot(self._conn, slot)
                checks.check_publication(self._conn, self._tables, self.publication, self.own_publication)
        except BaseException:
            self._conn.close()
            raise
        for table in self._tables:
            if table.identity != "f":
                log.warning("table %s has REPLICA IDENTITY %s: updates and deletes carry only the key as "
                            "before image, so backward seek cannot restore its rows (use --replica-identity-full)",
                            table.qualified, IDENTITY_NAMES[table.identity])

    # -- public API ------------------------------------------------------------------

    @property
    def capture_ddl(self) -> bool:
        """Schema changes are captured (the capture status records it for switchback)."""
        return self._capture_ddl

    @property
    def tables(self) -> list[str]:
        """The captured tables, schema-qualified."""
        return [table.qualified for table in self._tables]

    def install(self, resuming: bool = False) -> None:
        """Sets REPLICA IDENTITY FULL if asked and creates or widens our publication, in one
        transaction; idempotent.  Raises SourceError if the server refuses.

        ``resuming`` is not checked here: pgoutput describes every relation's columns in
        the stream itself (see "Limits" in the package docstring for tables added to an existing funnel)."""
        try:
            with self._conn.transaction():
                if self._replica_identity_full:
                    self._set_identity_full()
                if self._capture_ddl:
                    postgres_ddl.install(self._conn, self.slot, sorted({t.schema for t in self._tables}),
                                         self.publication, add_new=self.own_publication and self._capture_new,
                                         full=self._replica_identity_full)
                if self.own_publication:
                    self._sync_publication()
                elif self._capture_ddl:  # an operator's publication must carry the log too (we are superuser)
                    postgres_ddl.publish_log(self._conn, self.slot, self.publication)
                if self._capture_ddl:
                    postgres_ddl.mark_published(self._conn, self.slot)
        except psycopg.Error as exc:
            raise SourceError(f"cannot install capture in database {database(self._conn)}: {exc}") from exc

    def table_definitions(self) -> list[dict[str, Any]]:
        """Production's definition of each captured table, for mirrors that create tables:
        {"table", "columns": [{"name", "type", "not_null"}], "key", "before_images"}."""
        return [table.definition() for table in self._tables]

    def seal(self) -> None:
        """Nothing to do: PostgreSQL's commits are the transaction boundaries."""
        return None

    def snapshot(self, chunk_rows: int = 2000) -> PostgresSnapshot:
        """Creates the slot and starts the consistent initial copy at its consistent point.

        Drops an older slot of the same name first (the funnel is empty when this is
        called).  Waits for the transactions open at this moment to end.
        Raises ConfigError for chunk_rows < 1, SourceError if the slot is in use or
        cannot be created, or the snapshot cannot be imported.
        """
        if chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be at least 1, not {chunk_rows}")
        self._close_stream()
        self._drop_slot_if_exists()
        return create_slot_with_snapshot(self.url, self.slot, self._conn.info.server_version,
                                         [t.oid for t in self._tables], self._replica_identity_full, chunk_rows)

    def transactions_after(self, position: int, limit_groups: int) -> list[SourceTransaction]:
        """Committed transactions with a commit end LSN above ``position``, oldest first,
        at most ``limit_groups``; those at or below ``position`` are skipped.

        Reads what the server has sent without waiting, except for the rest of a
        transaction already half received (up to reader.PARTIAL_TX_WAIT_S).
        Raises SourceError if the slot is missing or busy, or the stream fails.
        """
        if limit_groups < 1:
            raise ConfigError(f"limit_groups must be at least 1, not {limit_groups}")
        reader = self._reader or self._start_stream()
        return reader.transactions_after(position, limit_groups)

    def acknowledge(self, position: int) -> None:
        """Confirms to the server that transactions up to ``position`` are in the funnel:
        the slot may forget them.  ``position`` must be one that ``transactions_after``
        returned.  Raises SourceError for a position beyond what was read, or if the
        stream fails."""
        if self._reader is None:
            raise SourceError(f"cannot acknowledge position {lsn_to_text(position)} on slot {self.slot}: "
                              "nothing was read from it yet")
        self._reader.acknowledge(position)

    def rewind(self) -> None:
        """Forgets what was read but not acknowledged and streams again from the slot's
        confirmed position, reconnecting first if the connection broke; the server resends
        the rest and ``transactions_after`` skips what the funnel already has.

        Raises SourceDisconnected while the server cannot be reached, SourceError if the
        slot is gone or held by another process.
        """
        self._close_stream()
        if self._conn.closed or self._conn.broken:
            self._conn.close()
            try:
                self._conn = connect(self.url)
            except SourceError as exc:  # it worked before: the server is restarting or out of reach
                raise SourceDisconnected(str(exc), hint=exc.hint) from exc
        self._start_stream(reconnecting=True)

    def drop(self) -> None:
        """Drops the slot, and the publication if capture created it.  The capture cannot
        resume after this: the funnel needs a new initial copy.  Raises SourceError if the
        slot is in use by another process."""
        self._close_stream()
        self._drop_slot_if_exists()
        if self.own_publication:
            with server_errors(f"cannot drop publication {self.publication}"):
                self._conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(self.publication)))

    def uninstall(self) -> list[str]:
        """drop(), reporting what was there (``uninstall``)."""
        self._close_stream()
        return uninstall(self.url, self.slot, self.publication if self.own_publication else None)

    def close(self) -> None:
        """Sends the last acknowledgement, ends the stream and disconnects; the slot stays."""
        try:
            self._close_stream()
        finally:
            self._conn.close()

    def __enter__(self) -> PostgresSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- install ---------------------------------------------------------------------

    def _set_identity_full(self) -> None:
        for table in self._tables:
            current = self._conn.execute("SELECT relreplident FROM pg_class WHERE oid = %s",
                                         (table.oid,)).fetchone()[0]
            if current != "f":
                self._conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(table.ident))
                log.info("set REPLICA IDENTITY FULL on %s", table.qualified)

    def _sync_publication(self) -> None:
        """Creates our publication, or makes it publish exactly the captured tables."""
        name = sql.Identifier(self.publication)
        idents = [t.ident for t in self._tables]
        if self._capture_ddl:
            idents += postgres_ddl.log_tables(self.slot)
        tables = sql.SQL(", ").join(idents)
        exists = self._conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s",
                                    (self.publication,)).fetchone()
        if exists is None:
            self._conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(name, tables))
            log.info("created publication %s for %s", self.publication, ", ".join(self.tables))
            return
        missing = checks.unpublished_tables(self._conn, self._tables, self.publication)
        if self._capture_ddl:
            postgres_ddl.publish_log(self._conn, self.slot, self.publication)
        if missing:
            self._conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(name, tables))
            log.warning("added %s to publication %s: their existing rows are copied only into a new funnel",
                        ", ".join(missing), self.publication)

    # -- the slot and the stream -----------------------------------------------------

    def _start_stream(self, reconnecting: bool = False) -> StreamReader:
        """Starts streaming from the slot's confirmed position.

        Raises SourceError if the slot does not exist (changes since the funnel's last
        position may be lost) or stays busy longer than SLOT_BUSY_WAIT_S; when
        ``reconnecting``, SourceDisconnected if the server cannot be reached.
        """
        try:
            row = self._conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                     "WHERE slot_name = %s", (self.slot,)).fetchone()
        except psycopg.OperationalError as exc:
            raise SourceDisconnected(f"cannot read replication slot {self.slot}: {exc}") from exc
        except psycopg.Error as exc:
            raise SourceError(f"cannot read replication slot {self.slot}: {exc}") from exc
        if row is None:
            raise SourceError(
                f"replication slot {self.slot} does not exist, but the funnel already has events of this "
                "source: changes made since the slot was lost cannot be captured",
                hint="start a new funnel (or delete this one's topic) so that capture makes a new initial copy")
        confirmed = lsn_from_text(row[0])
        try:
            stream = ReplicationStream.connect(self.url)
        except SourceError as exc:
            if reconnecting:  # it worked before: the server is restarting or out of reach
                raise SourceDisconnected(str(exc), hint=exc.hint) from exc
            raise
        try:
            stream.start(self.slot, self.publication, confirmed, SLOT_BUSY_WAIT_S)
        except BaseException:
            stream.close()
            raise
        self._stream = stream
        assembler = Assembler({t.oid: t for t in self._tables})
        if self._capture_ddl:
            assembler.ddl = postgres_ddl.follower(self._conn, self.slot, assembler.captured,
                                                  capture_new=self._capture_new, own_publication=self.own_publication,
                                                  publication=self.publication, full=self._replica_identity_full)
        self._reader = StreamReader(stream, assembler, confirmed, self._clock)
        log.info("streaming slot %s from %s", self.slot, lsn_to_text(confirmed))
        return self._reader

    def _close_stream(self) -> None:
        reader, stream = self._reader, self._stream
        self._reader = self._stream = None
        if stream is None:
            return
        try:
            if reader is not None:
                reader.send_feedback()
        except SourceError as exc:
            # Only the latest acknowledgement is lost: a restart skips those transactions by LSN.
            log.warning("last acknowledgement to slot %s not sent: %s", self.slot, exc)
        finally:
            stream.close()

    def _drop_slot_if_exists(self) -> None:
        """Drops the slot once no walsender holds it (ours may take a moment to exit).
        Raises SourceError if it stays in use longer than SLOT_BUSY_WAIT_S."""
        deadline = time.monotonic() + SLOT_BUSY_WAIT_S
        while True:
            try:
                self._conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                   "WHERE slot_name = %s", (self.slot,))
                return
            except psycopg.errors.ObjectInUse as exc:
                if time.monotonic() >= deadline:
                    raise SourceError(f"cannot drop replication slot {self.slot}: {exc}",
                                      hint="is another capture running on this slot? stop it first") from exc
                time.sleep(0.1)
            except psycopg.Error as exc:
                raise SourceError(f"cannot drop replication slot {self.slot}: {exc}") from exc


def uninstall(url: str, slot: str, publication: str | None) -> list[str]:
    """Drops replication slot ``slot`` of this database (it would keep WAL forever) and
    ``publication`` (the one capture created), without the checks capturing needs: the
    database may be frozen read-only or hold no table.  Returns what it dropped.
    Raises SourceError, e.g. while a capture still streams from the slot."""
    removed = []
    with connect(url) as conn, server_errors(f"cannot remove the capture of slot {slot}"):
        conn.execute("SET default_transaction_read_only = off")
        try:
            if conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                            "WHERE slot_name = %s AND database = current_database()", (slot,)).fetchall():
                removed.append(f"replication slot {slot}")
        except psycopg.errors.ObjectInUse as exc:
            raise SourceError(f"cannot drop replication slot {slot}: {exc}",
                              hint="is a capture still running on that slot? stop it first") from exc
        if publication and conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone():
            conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication)))
            removed.append(f"publication {publication}")
        if conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
            removed += postgres_ddl.uninstall(conn, slot)
    return removed

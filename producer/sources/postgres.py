"""Change capture from a production PostgreSQL database (13 or later) by logical decoding.

How it works
------------
``PostgresSource(url, ...)`` checks everything first and creates nothing: server version,
``wal_level = logical``, the role's REPLICATION attribute, every table's key and the
privileges that the next steps need.  ``install()`` creates (or widens) the publication
and, if asked, sets REPLICA IDENTITY FULL.  ``snapshot()`` creates the permanent logical
replication slot with the built-in ``pgoutput`` plugin and copies the tables inside the
snapshot that the slot exports.  ``transactions_after()`` streams the slot's changes,
``acknowledge()`` tells the server what is safely in Kafka.

Why a replication connection, not the SQL functions
---------------------------------------------------
psycopg 3 has no replication API, so we drive libpq ourselves: a ``replication=database``
connection, the simple-query ``CREATE_REPLICATION_SLOT`` / ``START_REPLICATION`` commands,
and ``PQgetCopyData``/``PQputCopyData`` on the COPY-both stream (``_ReplicationStream``).
The alternative, polling ``pg_logical_slot_peek_binary_changes`` and moving the slot with
``pg_replication_slot_advance`` (which would need only SQL), we rejected:

- every peek decodes again from the slot's restart_lsn, which only moves at the next
  running-xacts record (every 15 s, or later while a long transaction is open): under
  load each poll re-reads seconds to minutes of the whole cluster's WAL;
- a peek returns its whole result at once, so a backlog or a large transaction is
  materialised twice (tuplestore on the server, list in Python);
- the SQL functions cannot export a snapshot, so the initial copy would have no exact
  seam.  The slot must be created on a replication connection anyway.

The stream decodes the WAL once, pushes it as it is written, and its standby status
updates move the slot's ``confirmed_flush_lsn``: nothing else does (see "Positions").
bench/capture_postgres.py measures the server's own decoding (a peek over the same WAL)
next to ours: about 650k rows/s against about 90k on a 2-core machine, so the server is
never what limits capture.

Initial copy
------------
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

Positions
---------
A transaction's ``position`` is its commit's end LSN, ``txid`` its xid, ``commit_ts`` its
commit time.  The slot's confirmed position advances only in ``acknowledge(position)``
(called by the capture after the Kafka commit), so a crash loses nothing; after a restart
the server resends from the confirmed position and ``transactions_after(position)`` skips
what the funnel already has, by LSN.  A dropped stream (walsender terminated, server
restarted) raises ``SourceDisconnected``; ``rewind()`` reconnects and does the same
in-process, which is how capture rides through it.

An idle database still lets its slot advance, so that other databases' WAL does not pile
up behind it: the walsender reports in keepalives how far it has decoded the WAL (its
``sentPtr``), and every transaction that committed before that point has already been
sent to us.  When nothing is pending here (no transaction buffered, half-received or
returned but unacknowledged), everything before that point is either in the funnel or
had no captured change, so confirming it is safe.  The server's current flush LSN read
with SQL would not be: a transaction may commit between that read and the confirmation.
Transactions that touch no captured table (PostgreSQL 13/14 send them as empty
Begin/Commit pairs) are never published and advance the slot the same way.

Values
------
pgoutput sends every value in text form, written by the walsender with the session
settings that ``SESSION_OPTIONS`` fixes (DateStyle ISO, IntervalStyle postgres, TimeZone
UTC, extra_float_digits 3, bytea_output hex, client_encoding UTF8).  The COPY connection
uses the same settings, so a row reads the same from the snapshot and from the stream.
int2/int4/int8 become int, float4/float8 float (NaN, ±Infinity and -0 included), bool
bool, bytea bytes, text/varchar/char str; every other type (numeric, dates and times,
interval, uuid, json, arrays, enums, ...) stays PostgreSQL's canonical text, which it
accepts back losslessly.  Domains are converted as their base type.  Generated columns
are not sent by pgoutput, so they are left out of the snapshot and the definitions too.

Before images and unchanged TOAST values
----------------------------------------
With REPLICA IDENTITY FULL (``replica_identity_full=True`` sets it, which needs table
ownership and briefly takes an ACCESS EXCLUSIVE lock) updates and deletes carry the whole
old row, and ``table_definitions()`` says ``"before_images": "full"``.  Otherwise the
server sends only the key of the old row; we still give updates and deletes a ``before``
image, with the old key values and None in every other column, so that a mirror can
delete and re-key rows, and say ``"before_images": "key"``: such a table cannot be sought
backwards (a warning says so once per table at start).

An update that leaves a large (TOASTed) value unchanged does not resend it ('u').  Under
REPLICA IDENTITY FULL the old row has it and we copy it into the new image.  Otherwise we
leave that column out of the row: such rows form their own group whose ``columns`` lack
it, and a mirror's upsert of the other columns keeps the value it has, which is exactly
the unchanged value.  Fetching the value from the table instead would read a later
version of the row, not the one of this transaction.

Names and keys
--------------
The slot is ``timefunnel_<funnel>`` (``default_slot_name``: made a valid slot name, with a
hash suffix when that changed it) unless given; the publication capture creates has the
slot's name (``timefunnel_`` prefixed when the slot lacks it).  An operator's publication
must publish every operation of every captured table, unfiltered (no row filter, no
column list, not via the partition root), or the mirror would silently miss changes.
A row is identified by its replica identity: the primary key (REPLICA IDENTITY DEFAULT),
the identity index (USING INDEX), or under FULL the primary key, else the identity
index.  A FULL table with neither is *keyless*: its key is published empty and mirrors
keep its rows as a multiset (an update or delete changes one row equal to the before
image), as PostgreSQL's own logical replication does.  A table without any identity
(DEFAULT and no primary key, or NOTHING) is refused: publishing it would make
production's own UPDATEs and DELETEs fail.

Privileges
----------
The capture's role needs LOGIN and REPLICATION, CONNECT on the database, USAGE on the
schemas and SELECT on the captured tables.  Creating the publication (and setting
REPLICA IDENTITY FULL) needs ownership of the tables and CREATE on the database; a role
without them uses a publication the owner made:
``CREATE PUBLICATION timefunnel_x FOR TABLE public.a, public.b;`` and ``--publication``.

Limits
------
- Tables are captured with the columns they have; a column added later is captured from
  its first change (pgoutput resends the relation), but tables created later are not,
  unless ``capture_ddl`` (postgres_ddl: schema changes become DDL events, in order).
- Changing the set of captured tables of an existing funnel adds them to the publication
  without copying their existing rows: start a new funnel for that.
- A large source transaction is held in memory whole, as in the SQLite source.
- Unlogged and temporary tables are not in the WAL and cannot be captured; partitioned
  tables are captured partition by partition.

Not thread-safe: use one instance from one thread.
"""
from __future__ import annotations

import binascii
import contextlib
import hashlib
import logging
import re
import select
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from funnel.clock import now_us
from funnel.errors import ConfigError, SourceError
from funnel.events import Op, Row, TableChanges, Value
from funnel.tablenames import check_distinct, check_schemas
from funnel.urls import masked_password
from producer.sources import postgres_ddl
from producer.sources.base import SourceDisconnected, SourceTransaction
from producer.sources.pgoutput import (
    UNCHANGED,
    XLOGDATA_HEADER,
    Begin,
    Commit,
    Delete,
    Insert,
    Keepalive,
    Relation,
    Truncate,
    Update,
    decode_copy_message,
    decode_message,
    lsn_from_text,
    lsn_to_text,
    standby_status_update,
)

log = logging.getLogger("timefunnel.capture.postgres")

MIN_SERVER_VERSION = 130000
SLOT_PREFIX = "timefunnel_"
# What the walsender and the COPY connection write values with: one canonical text form.
SESSION_OPTIONS = ("-c datestyle=ISO -c intervalstyle=postgres -c timezone=UTC "
                   "-c extra_float_digits=3 -c bytea_output=hex")
FEEDBACK_INTERVAL_S = 10.0  # well inside the server's wal_sender_timeout (60 s default)
PARTIAL_TX_WAIT_S = 1.0  # how long one call waits for the rest of a half-received transaction
SLOT_BUSY_WAIT_S = 15.0  # a predecessor's walsender may take a moment to release the slot
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast", "timefunnel")  # timefunnel: capture's own

# Text form -> event value, by base type OID; every other type stays text.
_BOOLS = {b"t": True, b"f": False, "t": True, "f": False}
_INT_TYPES = {20: "int8", 21: "int2", 23: "int4"}
_FLOAT_TYPES = {700: "float4", 701: "float8"}
_BOOL_OID, _BYTEA_OID = 16, 17
_IDENTITY_NAMES = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "USING INDEX"}
# Enum attribute access is slow in Python 3.11; these run once per row.
_INSERT, _UPDATE, _DELETE, _TRUNCATE = Op.INSERT, Op.UPDATE, Op.DELETE, Op.TRUNCATE


def default_slot_name(funnel: str) -> str:
    """``timefunnel_<funnel>`` made a valid slot name ([a-z0-9_], at most 63 characters).

    Long or changed names get a hash suffix, so two funnels never share a slot.
    """
    cleaned = re.sub(r"[^a-z0-9_]", "_", funnel.lower())
    name = SLOT_PREFIX + cleaned
    if cleaned == funnel and len(name) <= 63:
        return name
    digest = hashlib.sha256(funnel.encode()).hexdigest()[:8]
    return f"{name[:54]}_{digest}"


def default_publication_name(slot: str) -> str:
    """The publication capture creates: the slot's name, prefixed ``timefunnel_`` unless it is."""
    return slot if slot.startswith(SLOT_PREFIX) else (SLOT_PREFIX + slot)[:63]


# -- converters ------------------------------------------------------------------------


def _bytea(text: bytes | str) -> bytes:
    """'\\x0aff' -> b'\\n\\xff'.  Raises ValueError for another bytea_output format."""
    if text[:2] not in (b"\\x", "\\x"):
        raise ValueError(f"bytea value not in hex format: {text[:20]!r}")
    return binascii.unhexlify(text[2:])


def _converter(base_oid: int) -> Callable[[bytes], Value]:
    """The function from pgoutput's text bytes to the event value for a base type."""
    if base_oid in _INT_TYPES:
        return int
    if base_oid in _FLOAT_TYPES:
        return float  # float() reads 'NaN', 'Infinity', '-Infinity' and '-0' as PostgreSQL writes them
    if base_oid == _BOOL_OID:
        return _BOOLS.__getitem__
    if base_oid == _BYTEA_OID:
        return _bytea
    return bytes.decode  # UTF-8: the stream's client_encoding


def _copy_type(base_oid: int) -> str:
    """The psycopg loader for a COPY column: the same values as ``_converter`` gives."""
    return _INT_TYPES.get(base_oid) or _FLOAT_TYPES.get(base_oid) or {
        _BOOL_OID: "bool", _BYTEA_OID: "bytea"}.get(base_oid, "text")


# -- catalog ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type_oid: int
    base_oid: int  # the type under any domains
    type_sql: str  # format_type(atttypid, atttypmod)
    not_null: bool


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A captured table as the catalog describes it."""

    oid: int
    schema: str
    name: str
    columns: tuple[ColumnInfo, ...]  # attnum order, without dropped and generated columns
    key: tuple[str, ...]
    identity: str  # relreplident: 'd', 'n', 'f', 'i'
    owned: bool  # the role may ALTER it and put it into a publication
    selectable: bool

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    def definition(self) -> dict[str, Any]:
        return {"table": self.qualified,
                "columns": [{"name": c.name, "type": c.type_sql, "not_null": c.not_null} for c in self.columns],
                "key": list(self.key), "before_images": "full" if self.identity == "f" else "key"}


_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpersistence, c.relreplident,
       pg_has_role(c.relowner, 'USAGE'), has_table_privilege(c.oid, 'SELECT'),
       has_schema_privilege(n.oid, 'USAGE')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY(%s)"""

_ALL_TABLES_SQL = """
SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence = 'p'
  AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
  AND (%s::text[] IS NULL OR n.nspname = ANY(%s::text[]))
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname"""

_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM pg_attribute a
WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attrelid, a.attnum"""

_INDEX_KEYS_SQL = """
SELECT i.indrelid, i.indisprimary, i.indisreplident,
       ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord)
FROM pg_index i WHERE i.indrelid = ANY(%s) AND (i.indisprimary OR i.indisreplident)"""


def _domain_bases(conn: psycopg.Connection) -> dict[int, int]:
    """Domain type OID -> its base type OID (through domains of domains)."""
    parents = dict(conn.execute("SELECT oid::int, typbasetype::int FROM pg_type WHERE typtype = 'd'").fetchall())
    bases = {}
    for oid in parents:
        base = oid
        while base in parents:
            base = parents[base]
        bases[oid] = base
    return bases


def _table_oids(conn: psycopg.Connection, names: list[str] | None, schemas: list[str] | None) -> list[int]:
    """The OIDs of the named tables (``public.orders`` or ``orders`` via search_path), or of
    every ordinary table of ``schemas`` (default: all but the system schemas).

    Raises SourceError for a name that is not a table, or when there is no table at all.
    """
    if names is None:
        oids = [row[0] for row in conn.execute(_ALL_TABLES_SQL, (list(_SYSTEM_SCHEMAS), schemas, schemas))]
        if not oids:
            where = f"schemas {', '.join(schemas)}" if schemas else "any user schema"
            raise SourceError(f"no tables to capture in {where} of database {_database(conn)}",
                              hint="create the application's tables first, or name them with --table")
        return oids
    oids = []
    for name in dict.fromkeys(names):
        try:
            oid = conn.execute("SELECT to_regclass(%s)::oid", (name,)).fetchone()[0]
        except psycopg.Error as exc:
            raise SourceError(f"bad table name {name!r}: {exc}") from exc
        if oid is None:
            raise SourceError(f"table {name!r} does not exist in database {_database(conn)}",
                              hint="name it as schema.table, or check the search_path")
        oids.append(oid)
    return oids


def inspect_tables(conn: psycopg.Connection, oids: list[int], replica_identity_full: bool) -> list[TableInfo]:
    """The captured tables, in the order of ``oids``.

    Raises SourceError naming the first table that cannot be captured: not an ordinary
    logged table, or without a key that identifies its rows in the WAL.
    """
    bases = _domain_bases(conn)
    columns: dict[int, list[ColumnInfo]] = {oid: [] for oid in oids}
    for relid, name, type_oid, type_sql, not_null in conn.execute(_COLUMNS_SQL, (oids,)):
        columns[relid].append(ColumnInfo(name, type_oid, bases.get(type_oid, type_oid), type_sql, not_null))
    keys: dict[tuple[int, str], tuple[str, ...]] = {}
    for relid, primary, identity_index, names in conn.execute(_INDEX_KEYS_SQL, (oids,)):
        if primary:
            keys[(relid, "pk")] = tuple(names)
        if identity_index:
            keys[(relid, "ri")] = tuple(names)
    rows = {row[0]: row for row in conn.execute(_TABLES_SQL, (oids,))}
    return [_table_info(rows[oid], columns[oid], keys, replica_identity_full) for oid in oids]


def _table_info(row: tuple, columns: list[ColumnInfo], keys: dict[tuple[int, str], tuple[str, ...]],
                replica_identity_full: bool) -> TableInfo:
    oid, schema, name, kind, persistence, identity, owned, selectable, schema_usage = row
    where = f"table {schema}.{name}"
    if kind == "p":
        raise SourceError(f"{where} is partitioned: its rows live in its partitions",
                          hint="capture the partitions: name each with --table")
    if kind != "r":
        raise SourceError(f"{where} is not an ordinary table (relkind {kind!r}): it cannot be captured")
    if persistence != "p":
        raise SourceError(f"{where} is {'unlogged' if persistence == 'u' else 'temporary'}: "
                          "its changes are not in the WAL", hint="ALTER TABLE ... SET LOGGED, or do not capture it")
    table = TableInfo(oid, schema, name, tuple(columns), (), identity, owned, selectable and schema_usage)
    identity_index = keys.get((oid, "ri"))
    if replica_identity_full:
        # install() sets FULL, which drops the USING INDEX identity: choose the key the
        # table has after it, so the published definition, the initial copy, the stream
        # and a restarted capture all agree.
        table = replace(table, identity="f")
        identity_index = None
    key = _choose_key(table, keys.get((oid, "pk")), identity_index)
    missing = [column for column in key if column not in table.column_names]
    if missing:
        raise SourceError(f"{where}: key column {missing[0]!r} is a generated column, which logical "
                          "decoding does not send")
    return replace(table, key=key)


def _choose_key(table: TableInfo, primary: tuple[str, ...] | None, identity_index: tuple[str, ...] | None
                ) -> tuple[str, ...]:
    """The columns that identify a row in the WAL; empty for a keyless REPLICA IDENTITY FULL table.

    Raises SourceError when the WAL cannot identify rows at all.
    """
    if table.identity == "i" and identity_index:
        return identity_index
    if table.identity == "f":
        # No key at all: an empty key tells mirrors to keep the rows as a multiset.
        # All columns as key would make them NOT NULL and refuse duplicate rows.
        return primary or identity_index or ()
    if table.identity == "d" and primary:
        return primary
    reason = ("REPLICA IDENTITY NOTHING" if table.identity == "n"
              else "no primary key and REPLICA IDENTITY DEFAULT")
    raise SourceError(
        f"table {table.qualified} has {reason}: its updates and deletes cannot be captured "
        "(and would fail on production once the table is published)",
        hint="add a PRIMARY KEY, or ALTER TABLE ... REPLICA IDENTITY USING INDEX <unique index> / FULL, "
             "or pass --replica-identity-full")


def _database(conn: psycopg.Connection) -> str:
    return conn.info.dbname


@contextlib.contextmanager
def _server_errors(what: str) -> Iterator[None]:
    """Turns a psycopg error (a lost connection, a refused statement) into SourceError."""
    try:
        yield
    except psycopg.Error as exc:
        raise SourceError(f"{what}: {exc}") from exc


# -- the source ------------------------------------------------------------------------


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
        if not _SLOT_NAME.fullmatch(slot):
            raise ConfigError(f"bad replication slot name {slot!r}",
                              hint="use lower-case letters, digits and underscores, at most 63")
        self.url = url
        self.slot = slot
        self.own_publication = publication is None
        self.publication = publication or default_publication_name(slot)
        self._replica_identity_full = replica_identity_full
        self._clock = clock
        self._capture_ddl = capture_ddl  # postgres_ddl: event triggers log schema changes into the stream
        self._capture_new = tables is None
        self._stream: _ReplicationStream | None = None
        self._reader: _StreamReader | None = None
        self._conn = connect(url)
        try:
            with _server_errors(f"cannot inspect database {_database(self._conn)}"):
                _check_server(self._conn)
                oids = _table_oids(self._conn, tables, schemas)
                if capture_ddl and tables is None:  # tables the event trigger saw created and left out
                    oids = postgres_ddl.left_out(self._conn, slot, oids)
                self._tables = inspect_tables(self._conn, oids, replica_identity_full)
                check_schemas([table.schema for table in self._tables], f"database {_database(self._conn)}")
                check_distinct(self.tables, f"database {_database(self._conn)}")
                if capture_ddl:  # first: no other grant makes up for it
                    postgres_ddl.check_may_install(self._conn)
                self._check_privileges()
                self._check_slot()
                self._check_publication()
        except BaseException:
            self._conn.close()
            raise
        for table in self._tables:
            if table.identity != "f":
                log.warning("table %s has REPLICA IDENTITY %s: updates and deletes carry only the key as "
                            "before image, so backward seek cannot restore its rows (use --replica-identity-full)",
                            table.qualified, _IDENTITY_NAMES[table.identity])

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
        the stream itself (see "Limits" for tables added to an existing funnel)."""
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
            raise SourceError(f"cannot install capture in database {_database(self._conn)}: {exc}") from exc

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
        replication = _ReplicationStream.connect(self.url)
        try:
            position, snapshot_name = replication.create_slot(self.slot, self._conn.info.server_version)
            log.info("created replication slot %s at %s", self.slot, lsn_to_text(position))
            copy_conn = connect(self.url, autocommit=False)
            try:
                tables = self._import_snapshot(copy_conn, snapshot_name)
            except BaseException:
                copy_conn.close()
                raise
        finally:
            replication.close()
        return PostgresSnapshot(copy_conn, position, tables, chunk_rows)

    def transactions_after(self, position: int, limit_groups: int) -> list[SourceTransaction]:
        """Committed transactions with a commit end LSN above ``position``, oldest first,
        at most ``limit_groups``; those at or below ``position`` are skipped.

        Reads what the server has sent without waiting, except for the rest of a
        transaction already half received (up to PARTIAL_TX_WAIT_S).
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
            with _server_errors(f"cannot drop publication {self.publication}"):
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

    # -- checks ----------------------------------------------------------------------

    def _check_privileges(self) -> None:
        """Raises SourceError for the first privilege that install() or the copy would miss."""
        role, superuser, create = self._conn.execute(
            "SELECT current_user, rolsuper, has_database_privilege(current_database(), 'CREATE') "
            "FROM pg_roles WHERE rolname = current_user").fetchone()
        for table in self._tables:
            if not table.selectable:
                raise SourceError(f"role {role} cannot read table {table.qualified}",
                                  hint=f"GRANT USAGE ON SCHEMA {table.schema} TO {role}; "
                                       f"GRANT SELECT ON {table.qualified} TO {role};")
        not_owned = [t.qualified for t in self._tables if not t.owned and not superuser]
        if self._replica_identity_full and not_owned:
            raise SourceError(f"role {role} does not own table {not_owned[0]}, so it cannot set its "
                              "REPLICA IDENTITY FULL",
                              hint=f"have its owner run ALTER TABLE {not_owned[0]} REPLICA IDENTITY FULL, "
                                   "then capture without --replica-identity-full")
        if self.own_publication and (not_owned or not (create or superuser)):
            missing = f"does not own table {not_owned[0]}" if not_owned else "has no CREATE privilege on the database"
            raise SourceError(
                f"role {role} {missing}, so it cannot create publication {self.publication}",
                hint=f"have the tables' owner run: CREATE PUBLICATION {self.publication} FOR TABLE "
                     f"{', '.join(self.tables)}; then pass --publication {self.publication}")

    def _check_slot(self) -> None:
        """Raises SourceError if a slot of our name exists for another purpose, or no slot is free."""
        row = self._conn.execute(
            "SELECT slot_type, plugin, database FROM pg_replication_slots WHERE slot_name = %s",
            (self.slot,)).fetchone()
        if row is None:
            used, limit = self._conn.execute(
                "SELECT count(*), current_setting('max_replication_slots')::int FROM pg_replication_slots").fetchone()
            if used >= limit:
                raise SourceError(f"all {limit} replication slots of the server are in use",
                                  hint="raise max_replication_slots (restart needed) or drop an unused slot")
            return
        slot_type, plugin, database = row
        if slot_type != "logical" or plugin != "pgoutput" or database != _database(self._conn):
            raise SourceError(
                f"replication slot {self.slot} exists but is a {slot_type} slot"
                + (f" of plugin {plugin} on database {database}" if slot_type == "logical" else ""),
                hint="pass another --slot, or drop that slot if nothing uses it")

    def _check_publication(self) -> None:
        """Raises SourceError if a named publication is missing, does not publish every
        operation, or lacks a captured table."""
        row = self._conn.execute(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate, pg_has_role(pubowner, 'USAGE') "
            "FROM pg_publication WHERE pubname = %s", (self.publication,)).fetchone()
        create_hint = f"CREATE PUBLICATION {self.publication} FOR TABLE {', '.join(self.tables)};"
        if row is None:
            if self.own_publication:
                return
            raise SourceError(f"publication {self.publication} does not exist in database {_database(self._conn)}",
                              hint=f"have the tables' owner run: {create_hint}")
        all_operations, owned = row
        self._check_publication_filters()
        if not all_operations:
            raise SourceError(f"publication {self.publication} does not publish every operation",
                              hint=f"ALTER PUBLICATION {self.publication} SET "
                                   "(publish = 'insert, update, delete, truncate');")
        missing = self._unpublished_tables()
        if missing and not self.own_publication:
            raise SourceError(f"publication {self.publication} does not include table {missing[0]}",
                              hint=f"ALTER PUBLICATION {self.publication} ADD TABLE {', '.join(missing)};")
        if missing and not owned:
            raise SourceError(f"publication {self.publication} lacks table {missing[0]} and belongs to "
                              "another role", hint=f"have its owner run: ALTER PUBLICATION {self.publication} "
                                                   f"ADD TABLE {', '.join(missing)};")

    def _check_publication_filters(self) -> None:
        """Raises SourceError if the publication sends a captured table through its
        partition root, or (PostgreSQL 15+) filters its rows or columns: the mirror would
        silently miss changes."""
        oids = [t.oid for t in self._tables]
        via_root = self._conn.execute(
            "SELECT p.pubviaroot AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = ANY(%s) AND c.relispartition) "
            "FROM pg_publication p WHERE p.pubname = %s", (oids, self.publication)).fetchone()[0]
        if via_root:
            raise SourceError(f"publication {self.publication} publishes partitions as their root table, "
                              "which capture does not read",
                              hint=f"ALTER PUBLICATION {self.publication} SET (publish_via_partition_root = false);")
        if self._conn.info.server_version < 150000:
            return
        filtered = self._conn.execute(
            "SELECT pr.prrelid::regclass::text FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid "
            "WHERE p.pubname = %s AND pr.prrelid = ANY(%s) AND (pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL)",
            (self.publication, oids)).fetchone()
        if filtered is not None:
            raise SourceError(f"publication {self.publication} filters the rows or columns of table {filtered[0]}: "
                              "the mirror would miss changes",
                              hint="publish the whole table (no WHERE clause, no column list)")

    def _unpublished_tables(self) -> list[str]:
        published = {(s, t) for s, t in self._conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (self.publication,))}
        return [t.qualified for t in self._tables if (t.schema, t.name) not in published]

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
        missing = self._unpublished_tables()
        if self._capture_ddl:
            postgres_ddl.publish_log(self._conn, self.slot, self.publication)
        if missing:
            self._conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(name, tables))
            log.warning("added %s to publication %s: their existing rows are copied only into a new funnel",
                        ", ".join(missing), self.publication)

    # -- the slot and the stream -----------------------------------------------------

    def _import_snapshot(self, conn: psycopg.Connection, snapshot_name: str) -> list[TableInfo]:
        """Enters the exported snapshot on ``conn`` and reads the tables' columns in it.
        Raises SourceError if the snapshot cannot be imported or a table changed."""
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
            return inspect_tables(conn, [t.oid for t in self._tables], self._replica_identity_full)
        except psycopg.Error as exc:
            raise SourceError(f"cannot read in the snapshot of slot {self.slot}: {exc}") from exc

    def _start_stream(self, reconnecting: bool = False) -> _StreamReader:
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
            stream = _ReplicationStream.connect(self.url)
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
        assembler = _Assembler({t.oid: t for t in self._tables})
        if self._capture_ddl:
            assembler.ddl = postgres_ddl.follower(self._conn, self.slot, assembler.captured,
                                                  capture_new=self._capture_new, own_publication=self.own_publication,
                                                  publication=self.publication, full=self._replica_identity_full)
        self._reader = _StreamReader(stream, assembler, confirmed, self._clock)
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
    with connect(url) as conn, _server_errors(f"cannot remove the capture of slot {slot}"):
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

# -- initial copy ----------------------------------------------------------------------


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
                copy.set_types([_copy_type(c.base_oid) for c in table.columns])
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


# -- connections -----------------------------------------------------------------------


def conninfo(url: str, **extra: str) -> str:
    """libpq connection string for ``url`` with our session settings added to its options.
    Raises ConfigError for a malformed URL."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"bad PostgreSQL URL {masked_password(url)}: {exc}") from exc
    params["options"] = f"{params.get('options', '')} {SESSION_OPTIONS}".strip()
    params["client_encoding"] = "UTF8"
    params.setdefault("application_name", "timefunnel-capture")
    return make_conninfo("", **params, **extra)


def connect(url: str, autocommit: bool = True) -> psycopg.Connection:
    """An ordinary connection with canonical session settings.  Raises SourceError."""
    try:
        return psycopg.connect(conninfo(url), autocommit=autocommit)
    except psycopg.Error as exc:
        # libpq's message spans lines (its advice on the second, one line per host tried);
        # the operator gets it on the one Error line.
        raise SourceError(f"cannot connect to PostgreSQL at {masked_password(url)}: {' '.join(str(exc).split())}",
                          hint="check the URL (host, port, user, password, database) and that PostgreSQL "
                               "runs and accepts connections from this host") from exc


def _check_server(conn: psycopg.Connection) -> None:
    """Raises SourceError for a server or role that cannot do logical decoding."""
    version, wal_level, role, replication = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), current_user, "
        "rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if version < MIN_SERVER_VERSION:
        raise SourceError(f"PostgreSQL {conn.info.parameter_status('server_version')} is too old for capture: "
                          "13 or later needed")
    if wal_level != "logical":
        raise SourceError(f"wal_level is {wal_level!r}: capture needs 'logical'",
                          hint="ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL")
    if not replication:
        raise SourceError(f"role {role} has no REPLICATION attribute: it cannot use a replication slot",
                          hint=f"ALTER ROLE {role} REPLICATION;")


class _ReplicationStream:
    """A ``replication=database`` libpq connection: slot creation and the COPY-both stream.

    Only the simple query protocol works on it, so we use libpq through ``psycopg.pq``.
    """

    def __init__(self, pgconn: pq.PGconn, url: str) -> None:
        self._pg = pgconn
        self._url = url
        self._streaming = False

    @classmethod
    def connect(cls, url: str) -> _ReplicationStream:
        """Raises SourceError if the server refuses the replication connection."""
        pgconn = pq.PGconn.connect(conninfo(url, replication="database").encode())
        if pgconn.status != pq.ConnStatus.OK:
            message = _pg_error(pgconn)
            pgconn.finish()
            raise SourceError(f"cannot open a replication connection to {masked_password(url)}: {message}",
                              hint="the role needs REPLICATION and pg_hba.conf must let it connect to the database")
        return cls(pgconn, url)

    def create_slot(self, slot: str, server_version: int) -> tuple[int, str]:
        """Creates the permanent pgoutput slot; returns (consistent point, exported snapshot).
        The snapshot stays valid until this connection runs another command or closes.
        Raises SourceError."""
        option = "(SNAPSHOT 'export')" if server_version >= 150000 else "EXPORT_SNAPSHOT"
        result = self._pg.exec_(f'CREATE_REPLICATION_SLOT "{slot}" LOGICAL pgoutput {option}'.encode())
        if result.status != pq.ExecStatus.TUPLES_OK:
            raise SourceError(f"cannot create replication slot {slot}: {_result_error(result, self._pg)}")
        names = [result.fname(i) for i in range(result.nfields)]
        point = result.get_value(0, names.index(b"consistent_point")).decode()
        snapshot = result.get_value(0, names.index(b"snapshot_name")).decode()
        return lsn_from_text(point), snapshot

    def start(self, slot: str, publication: str, start_lsn: int, busy_wait_s: float) -> None:
        """START_REPLICATION from ``start_lsn``; retries while the slot is still held by a
        predecessor's walsender, up to ``busy_wait_s``.  Raises SourceError."""
        quoted = '"' + publication.replace('"', '""') + '"'
        command = (f'START_REPLICATION SLOT "{slot}" LOGICAL {lsn_to_text(start_lsn)} '
                   f"(proto_version '1', publication_names '{quoted.replace(chr(39), chr(39) * 2)}')").encode()
        deadline = time.monotonic() + busy_wait_s
        while True:
            result = self._pg.exec_(command)
            if result.status == pq.ExecStatus.COPY_BOTH:
                self._streaming = True
                return
            message = _result_error(result, self._pg)
            if "is active for PID" not in message or time.monotonic() >= deadline:
                raise SourceError(f"cannot stream replication slot {slot}: {message}",
                                  hint="is another capture running on this slot? stop it first")
            time.sleep(0.2)

    def read(self, timeout_s: float) -> bytes | None:
        """The next CopyData message, waiting up to ``timeout_s``; None if none arrived.
        Raises SourceError if the stream ended or the connection failed."""
        try:
            size, data = self._pg.get_copy_data(1)
            if size == 0:
                ready, _, _ = select.select([self._pg.socket], [], [], timeout_s)
                if not ready:
                    return None
                self._pg.consume_input()
                size, data = self._pg.get_copy_data(1)
        except psycopg.Error as exc:
            raise SourceDisconnected(f"replication stream from {masked_password(self._url)} failed: {exc}") from exc
        if size > 0:
            return bytes(data)
        if size == 0:
            return None
        result = self._pg.get_result()
        raise SourceDisconnected(f"replication stream from {masked_password(self._url)} ended: "
                                 f"{_result_error(result, self._pg) if result else 'no reason given'}")

    def send(self, message: bytes) -> None:
        """Raises SourceError if the connection failed."""
        try:
            self._pg.put_copy_data(message)
            self._pg.flush()
        except psycopg.Error as exc:
            raise SourceDisconnected(f"replication stream to {masked_password(self._url)} failed: {exc}") from exc

    def close(self) -> None:
        if self._streaming and self._pg.status == pq.ConnStatus.OK:
            try:
                self._pg.put_copy_end()
                self._pg.flush()
            except psycopg.Error:
                pass  # the server is gone already; closing is all that is left to do
        self._pg.finish()


def _pg_error(pgconn: pq.PGconn) -> str:
    return pgconn.error_message.decode(errors="replace").strip()


def _result_error(result: pq.PGresult, pgconn: pq.PGconn) -> str:
    return (result.error_message.decode(errors="replace") or _pg_error(pgconn)).strip()


# -- reading the stream ----------------------------------------------------------------


class _StreamReader:
    """Turns the stream into whole SourceTransactions and keeps the slot's position.

    ``_acked`` is what capture confirmed (the slot's confirmed position to start with),
    ``_covered`` how far the walsender has read the WAL with everything before it
    received, ``_returned`` the last position handed out.
    """

    def __init__(self, stream: _ReplicationStream, assembler: _Assembler, confirmed: int,
                 clock: Callable[[], int]) -> None:
        self._stream = stream
        self._assembler = assembler
        self._clock = clock
        self._ready: deque[SourceTransaction] = deque()
        self._acked = self._covered = self._received = confirmed
        self._returned = 0
        self._sent: tuple[int, int] = (0, 0)  # (write, flush) of the last status update
        self._sent_at = 0.0

    def transactions_after(self, position: int, limit: int) -> list[SourceTransaction]:
        found: list[SourceTransaction] = []
        while len(found) < limit:
            if not self._ready and not self._pump(limit - len(found)):
                break
            tx = self._ready.popleft()
            if tx.position > position:  # the rest is already in the funnel
                found.append(tx)
        if found:
            self._returned = max(self._returned, found[-1].position)
        self._feedback_if_due()
        return found

    def acknowledge(self, position: int) -> None:
        if position > max(self._returned, self._acked):
            raise SourceError(f"cannot acknowledge {lsn_to_text(position)}: only up to "
                              f"{lsn_to_text(max(self._returned, self._acked))} was read")
        self._acked = max(self._acked, position)
        self.send_feedback()

    def _pump(self, wanted: int) -> bool:
        """Reads until ``wanted`` transactions are ready or nothing more is waiting (or,
        inside a transaction, nothing more came for PARTIAL_TX_WAIT_S); True if any is ready."""
        # The hot loop of capture: one iteration per pgoutput message, so names are local.
        ready, read, feed, take = self._ready, self._stream.read, self._assembler.feed, self._take
        deadline = None
        count = 0
        while len(ready) < wanted:
            count += 1
            if count % 4096 == 0:  # a long backlog or transaction: keep the walsender's timeout at bay
                self._feedback_if_due()
            data = read(0.0)
            if data is None:
                if not self._assembler.in_transaction:
                    break
                deadline = deadline or time.monotonic() + PARTIAL_TX_WAIT_S
                data = read(max(0.0, deadline - time.monotonic()))
                if data is None:
                    break
            if data[0] == 0x77:  # XLogData: one pgoutput message
                tx = feed(decode_message(data, XLOGDATA_HEADER))
                if tx is not None:
                    take(tx)
            else:
                self._keepalive(decode_copy_message(data))
        return bool(ready)

    def _take(self, tx: SourceTransaction) -> None:
        self._received = max(self._received, tx.position)
        if tx.changes:
            self._ready.append(tx)
        else:  # nothing captured in it: it only moves the slot
            self._covered = max(self._covered, tx.position)

    def _keepalive(self, message: Keepalive | Any) -> None:
        if not isinstance(message, Keepalive):
            raise SourceError(f"unexpected replication stream message {message!r}")
        self._received = max(self._received, message.wal_end)
        if not self._assembler.in_transaction:
            self._covered = max(self._covered, message.wal_end)
        if message.reply_requested:
            self.send_feedback()

    def _flush_position(self) -> int:
        """What the slot may forget: what capture acknowledged, or more when nothing is
        pending (see the module docstring, "Positions")."""
        idle = not self._ready and not self._assembler.in_transaction and self._returned <= self._acked
        return max(self._acked, self._covered) if idle else self._acked

    def _feedback_if_due(self) -> None:
        if ((self._received, self._flush_position()) != self._sent
                or time.monotonic() - self._sent_at >= FEEDBACK_INTERVAL_S):
            self.send_feedback()

    def send_feedback(self) -> None:
        """Raises SourceError if the stream failed."""
        # Never report less than before: PostgreSQL would move the slot back (and a slot
        # whose confirmed position falls behind its restart point can decode half a transaction).
        flush = self._acked = self._flush_position()
        write = max(self._received, flush)
        self._stream.send(standby_status_update(write, flush, flush, self._clock()))
        self._sent, self._sent_at = (write, flush), time.monotonic()


@dataclass(slots=True)
class _Plan:
    """How to read the rows of one relation as the last Relation message described it."""

    table: str
    columns: list[str]
    key: list[str]
    converters: list[Callable[[bytes], Value]]
    key_mask: list[bool]
    subsets: dict[tuple[int, ...], list[str]] = field(default_factory=dict)

    def convert(self, raw: list) -> list[Value]:
        """Raises ValueError, KeyError or UnicodeDecodeError for a malformed value."""
        if len(raw) != len(self.converters):
            raise ValueError(f"{len(raw)} values for {len(self.converters)} columns")
        return [f(v) if v.__class__ is bytes else v for f, v in zip(self.converters, raw)]

    def key_image(self, row: list[Value]) -> list[Value]:
        """``row`` with every column but the key set to None."""
        return [v if k else None for v, k in zip(row, self.key_mask)]

    def subset(self, keep: tuple[int, ...]) -> list[str]:
        columns = self.subsets.get(keep)
        if columns is None:
            columns = self.subsets[keep] = [self.columns[i] for i in keep]
        return columns


class _Assembler:
    """Builds SourceTransactions from decoded pgoutput messages (no I/O)."""

    def __init__(self, captured: dict[int, TableInfo]) -> None:
        self._captured = self.captured = captured
        self.ddl: postgres_ddl.DdlFollower | None = None  # set when schema changes are captured
        self._plans: dict[int, _Plan | None] = {}
        self._tx: SourceTransaction | None = None
        self._group: TableChanges | None = None
        self._handlers: dict[type, Callable[[Any], SourceTransaction | None]] = {
            Begin: self._begin, Commit: self._commit, Relation: self._relation, Insert: self._insert,
            Update: self._update, Delete: self._delete, Truncate: self._truncate}

    @property
    def in_transaction(self) -> bool:
        return self._tx is not None

    def feed(self, message: Any) -> SourceTransaction | None:
        """Takes one message; returns the transaction that a Commit completes.
        Raises SourceError for a message out of place or a value that cannot be read."""
        handler = self._handlers.get(type(message))
        return handler(message) if handler is not None else None  # Origin, Type, Message: nothing to do

    def _begin(self, message: Begin) -> None:
        if self._tx is not None:
            raise SourceError(f"replication stream: Begin of xid {message.xid} inside xid {self._tx.txid}")
        self._tx = SourceTransaction(str(message.xid), message.commit_ts, message.final_lsn)
        self._group = None

    def _commit(self, message: Commit) -> SourceTransaction:
        tx = self._open("Commit")
        tx.position, tx.commit_ts = message.end_lsn, message.commit_ts
        self._tx = self._group = None
        return tx

    def _relation(self, message: Relation) -> None:
        self._group = None
        table = self._captured.get(message.relid)
        if table is None and self.ddl is not None:
            table = self.ddl.adopt(message)  # a table created (and maybe dropped) while capture was away
        if table is None:
            self._plans[message.relid] = None  # published, but not captured here
            return
        name = f"{message.namespace or 'pg_catalog'}.{message.name}"
        if name != table.qualified:
            log.warning("table %s is now called %s: its changes carry the new name", table.qualified, name)
        columns = [c.name for c in message.columns]
        missing = [k for k in table.key if k not in columns]
        if missing:
            raise SourceError(f"table {name} lost its key column {missing[0]!r}: its rows cannot be identified",
                              hint="restore the column, or capture into a new funnel")
        known = {c.name: c for c in table.columns}

        def base(column: Any) -> int:  # a column added later may be of a domain we never looked up
            info = known.get(column.name)
            return info.base_oid if info is not None and info.type_oid == column.type_oid else column.type_oid

        converters = [_converter(base(c)) for c in message.columns]
        self._plans[message.relid] = _Plan(name, columns, list(table.key), converters,
                                           [c in table.key for c in columns])

    def _insert(self, message: Insert) -> None:
        if self.ddl is not None and message.relid in self.ddl.relids:  # the DDL log or the rows log
            self.ddl.insert(message.relid, message.new, self._open("ddl").changes)
            self._group = None
            return
        plan = self._plan(message.relid)
        if plan is not None:
            self._add(plan, _INSERT, plan.columns, Row(None, self._convert(plan, message.new, "insert")))

    def _update(self, message: Update) -> None:
        plan = self._plan(message.relid)
        if plan is None:
            return
        new = self._convert(plan, message.new, "update")
        if message.old is not None:
            before = self._convert(plan, message.old, "update")
            if message.old_kind == "O" and UNCHANGED in new:
                new = [b if v is UNCHANGED else v for v, b in zip(new, before)]
        else:  # the key did not change: it is the new row's
            before = plan.key_image(new)
        if UNCHANGED in new:  # unchanged TOAST value without the old row: leave the column out
            keep = tuple(i for i, v in enumerate(new) if v is not UNCHANGED)
            row = Row([before[i] for i in keep], [new[i] for i in keep])
            self._add(plan, _UPDATE, plan.subset(keep), row)
        else:
            self._add(plan, _UPDATE, plan.columns, Row(before, new))

    def _delete(self, message: Delete) -> None:
        plan = self._plan(message.relid)
        if plan is not None:
            self._add(plan, _DELETE, plan.columns, Row(self._convert(plan, message.old, "delete"), None))

    def _truncate(self, message: Truncate) -> None:
        tx = self._open("Truncate")
        for relid in message.relids:
            plan = self._plan(relid)
            if plan is not None:
                tx.changes.append(TableChanges(plan.table, _TRUNCATE, plan.columns, plan.key, []))
        self._group = None

    def _plan(self, relid: int) -> _Plan | None:
        if relid not in self._plans:
            raise SourceError(f"replication stream: change of relation {relid} before its Relation message")
        return self._plans[relid]

    def _open(self, what: str) -> SourceTransaction:
        if self._tx is None:
            raise SourceError(f"replication stream: {what} outside a transaction")
        return self._tx

    def _convert(self, plan: _Plan, raw: list, op: str) -> list[Value]:
        try:
            return plan.convert(raw)
        except (ValueError, KeyError, UnicodeDecodeError, binascii.Error) as exc:
            txid = self._tx.txid if self._tx else "?"
            raise SourceError(f"cannot read an {op} row of {plan.table} (xid {txid}): {exc}") from exc

    def _add(self, plan: _Plan, op: Op, columns: list[str], row: Row) -> None:
        group = self._group
        if group is None or group.op is not op or group.columns is not columns:
            tx = self._open(op.value)
            group = self._group = TableChanges(plan.table, op, columns, plan.key)
            tx.changes.append(group)
        group.rows.append(row)

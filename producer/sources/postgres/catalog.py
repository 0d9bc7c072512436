"""What capture reads from PostgreSQL's catalog: the captured tables, their columns,
types and keys.

A row is identified by its replica identity: the primary key (REPLICA IDENTITY DEFAULT),
the identity index (USING INDEX), or under FULL the primary key, else the identity
index.  A FULL table with neither is *keyless*: its key is published empty and mirrors
keep its rows as a multiset (an update or delete changes one row equal to the before
image), as PostgreSQL's own logical replication does.  A table without any identity
(DEFAULT and no primary key, or NOTHING) is refused: publishing it would make
production's own UPDATEs and DELETEs fail.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from funnel.databases import postgres_catalog
from funnel.databases.names import POSTGRES_CAPTURE_SCHEMA
from funnel.errors import SourceError

# Never captured: the system schemas and the capture's own (ddl's log and definitions).
EXCLUDED_SCHEMAS = (*postgres_catalog.SYSTEM_SCHEMAS, POSTGRES_CAPTURE_SCHEMA)
IDENTITY_NAMES = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "USING INDEX"}


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


def table_oids(conn: psycopg.Connection, names: list[str] | None, schemas: list[str] | None) -> list[int]:
    """The OIDs of the named tables (``public.orders`` or ``orders`` via search_path), or of
    every ordinary table of ``schemas`` (default: all but the system schemas).

    Raises SourceError for a name that is not a table, or when there is no table at all.
    """
    if names is None:
        oids = [oid for oid, _, _ in postgres_catalog.tables(conn, schemas, excluded=EXCLUDED_SCHEMAS)]
        if not oids:
            where = f"schemas {', '.join(schemas)}" if schemas else "any user schema"
            raise SourceError(f"no tables to capture in {where} of database {database(conn)}",
                              hint="create the application's tables first, or name them with --table")
        return oids
    oids = []
    for name in dict.fromkeys(names):
        try:
            oid = conn.execute("SELECT to_regclass(%s)::oid", (name,)).fetchone()[0]
        except psycopg.Error as exc:
            raise SourceError(f"bad table name {name!r}: {exc}") from exc
        if oid is None:
            raise SourceError(f"table {name!r} does not exist in database {database(conn)}",
                              hint="name it as schema.table, or check the search_path")
        oids.append(oid)
    return oids


def inspect_tables(conn: psycopg.Connection, oids: list[int], replica_identity_full: bool) -> list[TableInfo]:
    """The captured tables, in the order of ``oids``.

    Raises SourceError naming the first table that cannot be captured: not an ordinary
    logged table, or without a key that identifies its rows in the WAL.
    """
    bases = _domain_bases(conn)
    columns = {oid: [ColumnInfo(c.name, c.type_oid, bases.get(c.type_oid, c.type_oid), c.type_sql, c.not_null)
                     for c in found] for oid, found in postgres_catalog.columns(conn, oids).items()}
    keys = postgres_catalog.keys(conn, oids)
    rows = {row[0]: row for row in conn.execute(_TABLES_SQL, (oids,))}
    return [_table_info(rows[oid], columns[oid], keys[oid], replica_identity_full) for oid in oids]


def _table_info(row: tuple, columns: list[ColumnInfo], keys: postgres_catalog.Keys,
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
    identity_index = keys.identity_index
    if replica_identity_full:
        # install() sets FULL, which drops the USING INDEX identity: choose the key the
        # table has after it, so the published definition, the initial copy, the stream
        # and a restarted capture all agree.
        table = replace(table, identity="f")
        identity_index = None
    key = _choose_key(table, keys.primary, identity_index)
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


def database(conn: psycopg.Connection) -> str:
    return conn.info.dbname


@contextlib.contextmanager
def server_errors(what: str) -> Iterator[None]:
    """Turns a psycopg error (a lost connection, a refused statement) into SourceError."""
    try:
        yield
    except psycopg.Error as exc:
        raise SourceError(f"{what}: {exc}") from exc


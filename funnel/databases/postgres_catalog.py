"""What every side reads from PostgreSQL's catalog: the tables of a database, their
columns and their keys.  One query each, for many tables at once.

The capture (``producer.sources.postgres.catalog``) and the switchback's database side
(``applier.switchback.postgres_database``) both read here; each decides what a table it
finds means to it (captured, compared).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")  # and every pg_* schema (toast, temp): PostgreSQL reserves pg_

# Persistent tables of the wanted kinds, outside the system schemas and not part of an
# extension (whose tables the extension's own scripts fill).
_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = ANY(%(kinds)s::"char"[]) AND c.relpersistence = 'p'
  AND n.nspname <> ALL(%(excluded)s::text[]) AND n.nspname NOT LIKE 'pg\\_%%'
  AND (%(schemas)s::text[] IS NULL OR n.nspname = ANY(%(schemas)s::text[]))
  AND NOT (%(roots_only)s AND c.relispartition)
  AND NOT (%(skip_internal)s AND c.relname LIKE '\\_timefunnel\\_%%')
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


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_sql: str  # format_type(atttypid, atttypmod)
    not_null: bool


@dataclass(frozen=True, slots=True)
class Keys:
    primary: tuple[str, ...] | None  # None: no primary key
    identity_index: tuple[str, ...] | None  # the REPLICA IDENTITY USING INDEX index's columns


def tables(conn: Any, schemas: Sequence[str] | None = None, *, kinds: str = "r",
           excluded: Sequence[str] = SYSTEM_SCHEMAS, roots_only: bool = False,
           skip_internal: bool = False) -> list[tuple[int, str, str]]:
    """(oid, schema, name) of the database's tables, by schema and name.

    ``kinds``: the relkinds wanted ("r" ordinary tables, which include partitions; "rp"
    adds partitioned tables).  ``schemas``: only these (default: every user schema but
    ``excluded``).  ``roots_only`` leaves partitions out, ``skip_internal`` timefunnel's
    own tables (``funnel.databases.names.INTERNAL_PREFIX``).
    """
    params = {"kinds": list(kinds), "excluded": list(excluded), "schemas": None if schemas is None else list(schemas),
              "roots_only": roots_only, "skip_internal": skip_internal}
    return [(int(oid), schema, name) for oid, schema, name in conn.execute(_TABLES_SQL, params)]


def columns(conn: Any, oids: Sequence[int]) -> dict[int, list[Column]]:
    """The columns of each table in ``oids``, in attnum order, without dropped and generated
    columns (logical decoding does not send those)."""
    found: dict[int, list[Column]] = {oid: [] for oid in oids}
    for relid, name, type_oid, type_sql, not_null in conn.execute(_COLUMNS_SQL, (list(oids),)):
        found[relid].append(Column(name, type_oid, type_sql, not_null))
    return found


def keys(conn: Any, oids: Sequence[int]) -> dict[int, Keys]:
    """The primary key and the replica identity index of each table in ``oids``."""
    primary: dict[int, tuple[str, ...]] = {}
    identity: dict[int, tuple[str, ...]] = {}
    for relid, is_primary, is_identity, names in conn.execute(_INDEX_KEYS_SQL, (list(oids),)):
        if is_primary:
            primary[relid] = tuple(names)
        if is_identity:
            identity[relid] = tuple(names)
    return {oid: Keys(primary.get(oid), identity.get(oid)) for oid in oids}

"""SQL text for the PostgreSQL mirror: pure functions of names, catalog facts and events.

Mapping source tables to mirror tables
--------------------------------------
A PostgreSQL mirror has schemas, so a source table keeps its schema: ``public.orders``
is mirrored as ``"public"."orders"`` and ``sales.orders`` as ``"sales"."orders"``
(a SQLite source names a table ``main.<name>`` only when its name holds a dot, so it
lands in schema ``main``).  A name without a schema goes to ``public``.  Only the first
dot separates the schema (``funnel.tablenames``).  Identifiers are
always double-quoted, so case, keywords and spaces survive.

Mapping event columns to mirror columns
---------------------------------------
Every event column must exist on the mirror table (same name, exact case); mirror-only
columns are left to their defaults.  ``GENERATED ALWAYS AS (...) STORED`` columns on the
mirror are never written (the server computes them).  Identity columns ``GENERATED
ALWAYS`` are written with ``OVERRIDING SYSTEM VALUE`` so the mirror keeps production's
numbers; PostgreSQL forbids updating them, so a non-key one keeps its inserted value.
The event key must be the mirror's primary key (or another plain, immediate unique
index on exactly those columns), because it is the ``ON CONFLICT`` arbiter.

Keyless tables
--------------
Events with an empty key come from a table without key (``applier.sinks.base.is_keyless``).
Its rows are a multiset: plain INSERTs (or COPY), and an update or delete changes the one
row, picked by ``ctid``, whose written columns are all ``IS NOT DISTINCT FROM`` the before
image, each parameter cast to the column's type (so a ``real`` compares as ``real``).
Types without an equality operator (json, xml, geometric types) compare as text.
Many deletes at once are staged and deleted by one statement (``delete_copies_sql``).  Such a
mirror table must have no primary key: tables made by older versions, with every column
as primary key (and so NOT NULL), are refused with the statements that fix them.  Those
versions published every column as the key of a keyless table; such events are applied
as keyless when the mirror table has no key on them.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from applier.sinks.base import check_key, is_keyless
from applier.sinks.state import EPOCH_COLUMN, STATE_COLUMNS, STATE_TABLE, state_select_sql, state_upsert_sql
from funnel.databases.names import column_list, qualified_name, quote_ident  # noqa: F401 (re-used by ddl)
from funnel.errors import SinkError
from funnel.tablenames import postgres_mirror_name

# The state table has the SQLite sink's columns (``STATE_COLUMNS``, values from
# ``applier.sinks.state``), with PostgreSQL types.  The whole state (position, hold,
# promotion) is written by every apply, in the same transaction as the rows.
STATE_TYPES = {
    "funnel": "text NOT NULL",
    "mirror": "text NOT NULL",
    "topic": "text NOT NULL",
    "partition": "integer NOT NULL",
    "next_offset": "bigint NOT NULL",
    "last_txid": "text",
    "last_commit_ts": "bigint",
    "valid_as_of": "bigint",
    "snapshot_done": "integer NOT NULL DEFAULT 0",  # 0/1 as in SQLite, so both read alike
    "hold_until": "bigint",
    "promoted_at": "bigint",
    "promote_target": "bigint",
    "excluded_txids": "text",  # a JSON array of txids
}
EPOCH_TYPE = "bigint NOT NULL DEFAULT 0"  # fences appliers, see applier.sinks.state


def create_state_table_sql() -> str:
    """CREATE TABLE of the state table.  Raises KeyError for a state column without a type here."""
    columns = ", ".join(f"{column} {STATE_TYPES[column]}" for column in STATE_COLUMNS)
    columns += f", {EPOCH_COLUMN} {EPOCH_TYPE}"
    return f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} ({columns}, PRIMARY KEY (funnel, mirror))"

# The session settings the sink relies on.  "Canonical text" means the output of
# PostgreSQL's default styles (DateStyle ISO, IntervalStyle postgres), which the capture
# emits.  That text reads back the same under any style (the tests run with a database
# default of 'SQL, DMY' and 'sql_standard'); the input styles are pinned to the output
# styles anyway, so no database default can ever change how a value is read.
# synchronous_commit=off: a server crash may lose the last few commits, but never half
# of one, and the position is in the same transaction as the rows, so the applier
# re-applies from the older position it then finds; Kafka holds the events meanwhile.
# Waiting for the WAL flush on every commit would buy nothing and cost a disk sync.
SESSION_SETTINGS = (
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET synchronous_commit = off",
)

TABLE_OID_QUERY = """SELECT c.oid FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')"""

COLUMNS_QUERY = """SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.attgenerated <> '', a.attidentity = 'a'
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"""

# Unique indexes that ON CONFLICT can use as arbiter: valid, immediate, no predicate,
# no expressions; key columns only (not INCLUDE ones).  Primary key first.
UNIQUE_KEYS_QUERY = """SELECT i.indisprimary,
       ARRAY(SELECT a.attname
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)
FROM pg_catalog.pg_index i
WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid AND i.indimmediate
  AND i.indpred IS NULL AND i.indexprs IS NULL
ORDER BY i.indisprimary DESC, i.indexrelid"""

SCHEMA_EXISTS_QUERY = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s)"


@dataclass(frozen=True, slots=True)
class MirrorColumn:
    """A column of a mirror table as the catalog describes it."""

    name: str
    type: str  # format_type text, e.g. "numeric(10,2)"
    generated: bool = False  # GENERATED ALWAYS AS (...) STORED: never written
    identity_always: bool = False  # GENERATED ALWAYS AS IDENTITY: needs OVERRIDING SYSTEM VALUE


@dataclass(frozen=True, slots=True)
class MirrorTable:
    """A mirror table: its columns in order and the unique keys ON CONFLICT can use."""

    schema: str
    name: str
    columns: tuple[MirrorColumn, ...]
    unique_keys: tuple[tuple[str, ...], ...] = ()  # primary key first when there is one
    has_primary_key: bool = False

    @property
    def qualified(self) -> str:
        return qualified_name(self.schema, self.name)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class Layout:
    """How one event column layout is written to one mirror table."""

    write_index: tuple[int, ...]  # positions in the row image of the columns written
    write_columns: tuple[str, ...]
    key_index: tuple[int, ...]  # positions in the row image of the key columns, key order
    key: tuple[str, ...]
    update_columns: tuple[str, ...]  # set by ON CONFLICT DO UPDATE (keyless: by UPDATE)
    overriding: bool  # an identity column GENERATED ALWAYS is written
    write_types: tuple[str, ...] = ()  # the mirror's types of ``write_columns``

    @property
    def keyless(self) -> bool:
        return is_keyless(self.key)


def mirror_table_name(source_table: str) -> tuple[str, str]:
    """(schema, table) on the mirror for a source table name (see the module docstring).

    Raises SinkError for an empty name part or the state table's name.
    """
    schema, table = postgres_mirror_name(source_table)
    if not schema or not table or table == STATE_TABLE:
        raise SinkError(f"source table {source_table!r} cannot be mirrored as {schema}.{table}")
    return schema, table


# format_type output: names (maybe quoted, maybe schema-qualified), type modifiers,
# array brackets and the words of multi-word types.  No operators, no comments, no
# semicolons outside quotes: the text comes from the funnel and is pasted into DDL.
_TYPE_TOKEN = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"\x00]|"")+"|[0-9]+|[\s.,()\[\]])'
_TYPE_TEXT = re.compile(rf"{_TYPE_TOKEN}+")


def check_type_text(table: str, column: str, type_text: str) -> str:
    """``type_text`` if it looks like PostgreSQL's format_type output.

    Raises SinkError otherwise: a definition is pasted into CREATE TABLE, so anything
    that could be more than a type name is refused.
    """
    if not isinstance(type_text, str) or not _TYPE_TEXT.fullmatch(type_text) or not type_text.strip():
        raise SinkError(f"table definition of {table!r}: column {column!r} has an invalid type {type_text!r}")
    return type_text


def create_table_sql(schema: str, table: str, definition: Mapping[str, Any]) -> str:
    """CREATE TABLE from production's definition (``table/<table>`` control record).

    A keyless definition (empty key) gets no PRIMARY KEY and keeps production's
    nullability.  Raises SinkError for a definition without columns, a key column that
    is not a column, or a type that is not a plain type name.
    """
    display = f"{schema}.{table}"
    columns = definition.get("columns") or []
    key = list(definition.get("key") or [])
    if not columns:
        raise SinkError(f"table definition of {display!r} has no columns")
    names = [column.get("name") for column in columns]
    check_key(display, names, key)
    parts = []
    for column in columns:
        name = column["name"]
        not_null = " NOT NULL" if column.get("not_null") else ""
        parts.append(f"{quote_ident(name)} {check_type_text(display, name, column.get('type'))}{not_null}")
    if key:
        parts.append(f"PRIMARY KEY ({column_list(key)})")
    return f"CREATE TABLE {qualified_name(schema, table)} ({', '.join(parts)})"


def create_schema_sql(schema: str) -> str:
    return f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"


def layout(source_table: str, mirror: MirrorTable, columns: Sequence[str], key: Sequence[str]) -> Layout:
    """How rows with ``columns`` and ``key`` are written to ``mirror``.

    Raises SinkError naming the table and column when the mirror lacks an event column,
    when the event key is not a unique key of the mirror table, or when the events are
    keyless but the mirror table has a primary key.
    """
    check_key(source_table, columns, key)
    by_name = {column.name: column for column in mirror.columns}
    missing = [column for column in columns if column not in by_name]
    if missing:
        raise SinkError(
            f"mirror table {mirror.display!r} has no column {missing[0]!r} (source table {source_table!r})",
            hint=f"Add it to the mirror (ALTER TABLE {mirror.qualified} ADD COLUMN {quote_ident(missing[0])} ...),"
                 " then restart the applier.",
        )
    if _legacy_keyless(mirror, columns, key):
        key = ()
    if is_keyless(key):
        _check_keyless_mirror(source_table, mirror)
    else:
        _check_mirror_key(source_table, mirror, key)
    write_index = tuple(i for i, column in enumerate(columns) if not by_name[column].generated)
    write_columns = tuple(columns[i] for i in write_index)
    keys = set(key)
    return Layout(
        write_index=write_index,
        write_columns=write_columns,
        key_index=tuple(columns.index(column) for column in key),
        key=tuple(key),
        # PostgreSQL refuses to UPDATE an identity column GENERATED ALWAYS.
        update_columns=tuple(c for c in write_columns if c not in keys and not by_name[c].identity_always),
        overriding=any(by_name[column].identity_always for column in write_columns),
        write_types=tuple(by_name[column].type for column in write_columns),
    )


def missing_columns(mirror: MirrorTable, columns: Sequence[str]) -> list[str]:
    """Event columns the mirror table lacks, in event order."""
    names = {column.name for column in mirror.columns}
    return [column for column in columns if column not in names]


def _legacy_keyless(mirror: MirrorTable, columns: Sequence[str], key: Sequence[str]) -> bool:
    """Events of a keyless table published by versions that sent every column as the key.

    Applied as keyless once the mirror table has neither primary key nor a unique key on
    them (made by this version, or fixed by the operator), so that a delayed mirror gets
    past the older events.
    """
    return (bool(key) and set(key) == set(columns) and not mirror.has_primary_key
            and not any(set(unique) == set(key) for unique in mirror.unique_keys))


def _check_keyless_mirror(source_table: str, mirror: MirrorTable) -> None:
    if not mirror.has_primary_key:
        return
    key = mirror.unique_keys[0]
    # Versions before keyless support created these tables with every column as primary key.
    fix = [f"ALTER TABLE {mirror.qualified} DROP CONSTRAINT <its primary key>"]
    fix += [f"ALTER TABLE {mirror.qualified} ALTER COLUMN {quote_ident(c)} DROP NOT NULL" for c in key]
    raise SinkError(
        f"mirror table {mirror.display!r} has primary key ({', '.join(key)}) but source table "
        f"{source_table!r} has none: its rows are applied as a multiset, and duplicate rows or NULLs "
        f"would be refused",
        hint="; ".join(fix) + " (as on production), then restart the applier.",
    )


def _check_mirror_key(source_table: str, mirror: MirrorTable, key: Sequence[str]) -> None:
    wanted = set(key)
    if any(set(unique) == wanted for unique in mirror.unique_keys):
        return
    if not mirror.unique_keys:
        raise SinkError(
            f"mirror table {mirror.display!r} has no primary key (source table {source_table!r} "
            f"has key {', '.join(key)})",
            hint=f"ALTER TABLE {mirror.qualified} ADD PRIMARY KEY ({column_list(key)})",
        )
    mirror_key = mirror.unique_keys[0]
    extra = [column for column in key if column not in mirror_key]
    column = extra[0] if extra else next(c for c in mirror_key if c not in wanted)
    what = "primary key" if mirror.has_primary_key else "unique key"
    raise SinkError(
        f"mirror table {mirror.display!r}: key column {column!r} does not match the mirror's {what} "
        f"({', '.join(mirror_key)}); the events' key is ({', '.join(key)}) (source table {source_table!r})",
        hint="Give the mirror table the same primary key as production.",
    )


def _insert_head(table: str, layout: Layout) -> str:
    overriding = " OVERRIDING SYSTEM VALUE" if layout.overriding else ""
    return f"INSERT INTO {table} ({column_list(layout.write_columns)}){overriding}"


def _on_conflict(layout: Layout) -> str:
    if not layout.update_columns:
        return f"ON CONFLICT ({column_list(layout.key)}) DO NOTHING"
    updates = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in layout.update_columns)
    return f"ON CONFLICT ({column_list(layout.key)}) DO UPDATE SET {updates}"


def insert_values_sql(table: str, layout: Layout) -> str:
    """Plain one-row INSERT with ``%s`` parameters, for a keyless table."""
    placeholders = ", ".join(["%s"] * len(layout.write_columns))
    return f"{_insert_head(table, layout)} VALUES ({placeholders})"


# Types whose values cannot be compared with "=" (no equality operator, or one that
# means something else, as box's equal area): compared as their text instead.
_TEXT_COMPARED = frozenset({"json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle"})


def _matches(column: str, type_text: str) -> str:
    if type_text.removesuffix("[]") in _TEXT_COMPARED:
        return f"{quote_ident(column)}::text IS NOT DISTINCT FROM %s::text"
    return f"{quote_ident(column)} IS NOT DISTINCT FROM %s::{type_text}"


def _one_matching_row(table: str, layout: Layout) -> str:
    """The condition picking ONE row equal to a before image (``write_columns`` order)."""
    condition = " AND ".join(_matches(c, t) for c, t in zip(layout.write_columns, layout.write_types))
    # ctid alone is not unique across the partitions of a partitioned mirror table.
    return (f"(tableoid, ctid) = (SELECT tableoid, ctid FROM {table} WHERE {condition} LIMIT 1)")


def delete_one_sql(table: str, layout: Layout) -> str:
    """DELETE one row of a keyless table equal to the parameters (``write_columns`` of a before image)."""
    return f"DELETE FROM {table} WHERE {_one_matching_row(table, layout)}"


def update_one_sql(table: str, layout: Layout) -> str:
    """UPDATE one row of a keyless table: parameters are the after image's ``update_columns``,
    then the before image's ``write_columns`` it must equal."""
    if not layout.update_columns:
        raise SinkError(f"table {table}: no column can be updated (identity columns GENERATED ALWAYS only)")
    assignments = ", ".join(f"{quote_ident(c)} = %s" for c in layout.update_columns)
    return f"UPDATE {table} SET {assignments} WHERE {_one_matching_row(table, layout)}"


def delete_copies_sql(table: str, stage: str, layout: Layout) -> str:
    """DELETE of one mirror row per staging row equal to it: k equal staging rows delete k
    equal mirror rows (fewer if the mirror has fewer; compare the row count).

    Rows compare by their text form, ``ROW(...)::text``: the staging table has the
    mirror columns' types (``create_stage_sql``), so equal values print alike, NULL
    prints as nothing and the comparison can hash.  That is never looser than the
    one-row statements' ``IS NOT DISTINCT FROM`` (and what they do for types without
    equality); it is stricter for values that are equal but print apart (0 and -0,
    1.0 and 1.00, strings under a nondeterministic collation), which the sink then
    replays row by row.  Equal mirror rows are numbered (``row_number``) so that each
    image takes as many of them as it has staging copies.
    """
    names = ", ".join(quote_ident(c) for c in layout.write_columns)
    mirror_names = ", ".join(f"m.{quote_ident(c)}" for c in layout.write_columns)
    staged = f"SELECT ROW({names})::text AS image, count(*) AS copies FROM {stage} GROUP BY 1"
    matched = (f"SELECT m.tableoid, m.ctid, s.copies, row_number() OVER (PARTITION BY s.image) AS n "
               f"FROM {table} AS m JOIN ({staged}) AS s ON ROW({mirror_names})::text = s.image")
    # (tableoid, ctid): ctid alone is not unique across the partitions of a partitioned table.
    return (f"DELETE FROM {table} WHERE (tableoid, ctid) IN "
            f"(SELECT tableoid, ctid FROM ({matched}) AS matched WHERE n <= copies)")


def upsert_values_sql(table: str, layout: Layout) -> str:
    """One-row upsert with ``%s`` parameters, for executemany.

    Strings are sent with an unknown type, so the server reads the canonical text of
    numeric, timestamps, uuid, json, arrays and enums with the column's input function.
    """
    placeholders = ", ".join(["%s"] * len(layout.write_columns))
    return f"{_insert_head(table, layout)} VALUES ({placeholders}) {_on_conflict(layout)}"


def upsert_select_sql(table: str, stage: str, layout: Layout) -> str:
    """Upsert of every row of the staging table (its rows must have distinct keys)."""
    names = column_list(layout.write_columns)
    return f"{_insert_head(table, layout)} SELECT {names} FROM {stage} {_on_conflict(layout)}"


def create_stage_sql(stage: str, table: str, layout: Layout) -> str:
    """A session-private staging table with the mirror columns' own types, no constraints.

    ON COMMIT DELETE ROWS empties it at every commit (a cheap in-place truncate), so
    rows never linger and dead rows never pile up (autovacuum skips temp tables).
    """
    names = column_list(layout.write_columns)
    return f"CREATE TEMP TABLE {stage} ON COMMIT DELETE ROWS AS SELECT {names} FROM {table} WITH NO DATA"


def copy_sql(table: str, columns: Sequence[str]) -> str:
    """COPY in text format: the server parses each value with the column's input function."""
    return f"COPY {table} ({column_list(columns)}) FROM STDIN"


def delete_sql(table: str, key: Sequence[str]) -> str:
    """DELETE one row by key; parameters are the key values in ``key`` order."""
    if not key:
        raise SinkError(f"table {table} has no key columns; the mirror cannot delete single rows")
    condition = " AND ".join(f"{quote_ident(column)} = %s" for column in key)
    return f"DELETE FROM {table} WHERE {condition}"


def delete_keys_sql(table: str, key: Sequence[str], types: Sequence[str]) -> str | None:
    """DELETE of every row whose key is in the parameters: one array per key column
    (values in key order), each cast to the column's type.  One statement whatever the
    number of keys.  None when a key column is an array (unnest would flatten it)."""
    if not key or any(t.endswith("]") for t in types):
        return None
    arrays = ", ".join(f"%s::{t}[]" for t in types)
    names = ", ".join(f"k{i}" for i in range(len(key)))
    condition = " AND ".join(f"m.{quote_ident(c)} = d.k{i}" for i, c in enumerate(key))
    return f"DELETE FROM {table} AS m USING unnest({arrays}) AS d({names}) WHERE {condition}"


def truncate_sql(table: str) -> str:
    """TRUNCATE without CASCADE: a source truncate of several tables arrives for each of them."""
    return f"TRUNCATE {table}"


def has_rows_sql(table: str) -> str:
    return f"SELECT EXISTS (SELECT 1 FROM {table})"


def position_upsert_sql() -> str:
    """Upsert of the whole state row; parameters from ``applier.sinks.state.position_to_row``."""
    return state_upsert_sql("%s")


def position_select_sql() -> str:
    """SELECT of the state row for one (funnel, mirror), for ``position_from_row``."""
    return state_select_sql("%s")


def one_line(message: object) -> str:
    """A server or libpq message on one line (they often carry a DETAIL or hint line)."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())

"""The PostgreSQL mirror's tables as its catalog describes them, created where allowed.

A mirror table is described once per transaction of the sink (``forget`` after a
rollback or a schema change); ``table(source, fresh=True)`` reads it again, so a column
the operator added while the applier runs is found.  With ``create_tables`` a missing
table is created from production's definition (``ControlChannel.table_definitions``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from applier.sinks.postgres_sql import (
    COLUMNS_QUERY,
    SCHEMA_EXISTS_QUERY,
    TABLE_OID_QUERY,
    UNIQUE_KEYS_QUERY,
    MirrorColumn,
    MirrorTable,
    create_schema_sql,
    create_table_sql,
    mirror_table_name,
    one_line,
)
from funnel.errors import SinkError

Definitions = Callable[[], dict[str, dict[str, Any]]]


class Catalog:
    """Mirror tables by source table name, read through ``connection()`` (the sink's current one)."""

    def __init__(self, connection: Callable[[], psycopg.Connection], create_tables: bool,
                 table_definitions: Definitions | None) -> None:
        self._conn = connection
        self.create_tables = create_tables
        self._table_definitions = table_definitions
        self._definitions: dict[str, dict[str, Any]] | None = None
        self._tables: dict[tuple[str, str], MirrorTable] = {}

    def forget(self) -> None:
        self._tables.clear()

    def table(self, source: str, fresh: bool = False) -> MirrorTable:
        """The mirror table of a source table, created if missing and allowed.

        ``fresh``: read the catalog again rather than trust what we read before.
        Raises SinkError.
        """
        schema, name = mirror_table_name(source)
        if fresh:
            self._tables.pop((schema, name), None)
        table = self._tables.get((schema, name))
        if table is None:
            table = self._read_table(schema, name) or self._create_table(source, schema, name)
            self._tables[(schema, name)] = table
        return table

    def _read_table(self, schema: str, name: str) -> MirrorTable | None:
        """The catalog's description of a table, or None if there is no such table."""
        found = self._conn().execute(TABLE_OID_QUERY, (schema, name)).fetchone()
        if found is None:
            return None
        oid = found[0]
        columns = tuple(MirrorColumn(*row) for row in self._conn().execute(COLUMNS_QUERY, (oid,)))
        keys = self._conn().execute(UNIQUE_KEYS_QUERY, (oid,)).fetchall()
        return MirrorTable(schema, name, columns, tuple(tuple(key) for _, key in keys),
                           has_primary_key=bool(keys) and keys[0][0])

    def _create_table(self, source: str, schema: str, name: str) -> MirrorTable:
        """Create a missing mirror table from production's definition.

        Raises SinkError when creating is not allowed, no definition is known, or the
        definition cannot be created (typically a user type missing on the mirror).
        """
        if not self.create_tables:
            raise SinkError(
                f"mirror table {schema}.{name} does not exist (source table {source!r})",
                hint="Create it on the mirror with production's definition and primary key, "
                     "or start the applier with --create-tables.",
            )
        definition = self._definition(source)
        try:
            if not self._conn().execute(SCHEMA_EXISTS_QUERY, (schema,)).fetchone()[0]:
                self._conn().execute(create_schema_sql(schema))
            self._conn().execute(create_table_sql(schema, name, definition))
        except psycopg.Error as exc:
            raise SinkError(
                f"cannot create mirror table {schema}.{name} (source table {source!r}): {one_line(exc)}",
                hint="User types (enums, domains) are not created by the applier: create them on the "
                     "mirror as on production, then restart the applier.",
            ) from exc
        return self._read_table(schema, name)

    def _definition(self, source: str) -> dict[str, Any]:
        """Production's definition of ``source``; asks again once if it is not known yet."""
        if self._table_definitions is None:
            raise SinkError(f"cannot create mirror table for {source!r}: no table definitions available")
        for refresh in (self._definitions is None, True):
            if refresh:
                self._definitions = self._table_definitions()
            found = _find_definition(self._definitions, source)
            if found is not None:
                return found
        raise SinkError(
            f"no definition of table {source!r} was published by the capture; cannot create it on the mirror",
            hint="Create the table on the mirror by hand, or restart the capture so it publishes definitions.",
        )


def _find_definition(definitions: dict[str, dict[str, Any]], source: str) -> dict[str, Any] | None:
    found = definitions.get(source)
    if found is not None:
        return found
    return next((d for d in definitions.values() if isinstance(d, dict) and d.get("table") == source), None)

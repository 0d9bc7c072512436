"""How a captured table is named in events, and which mirror table each name becomes.

One place for the rule, because capture (which names tables) and every mirror (which
reads the names) must agree on it, and because capture must refuse tables that two
mirrors would merge before it publishes anything.

Names in events
---------------
An event names its table with one string; only its first dot separates a schema.
PostgreSQL sources write ``schema.table``.  SQLite sources write the table's own name,
or ``main.<name>`` when the name itself holds a dot: the SQLite table ``"a.b"`` is then
``main.a.b``, never table ``b`` of schema ``a``, and ``"main.t"`` is ``main.main.t``,
never ``t``.

Mirror tables
-------------
- SQLite mirror (one namespace per file): ``main.orders`` and ``public.orders`` become
  ``orders`` (the name the application queries); another schema becomes a prefix joined
  by an underscore (``sales.orders`` -> ``sales_orders``).  SQLite compares table names
  without regard to case.
- PostgreSQL mirror: the schema is kept (``sales.orders`` -> ``"sales"."orders"``, a
  SQLite source's ``main.a.b`` -> ``"main"."a.b"``); a name without one goes to ``public``.

So a SQLite source always gets one mirror table per production table.  A PostgreSQL
source may not (``public.sales_orders`` and ``sales.orders``, or ``public.T`` and
``public.t``, are one SQLite mirror table), and a PostgreSQL mirror keeps only the first
63 bytes of a name (two long SQLite names may share them): ``check_distinct`` refuses such pairs.  A
PostgreSQL schema whose name holds a dot cannot be named at all (``"a.b".c`` would be read
back as table ``b.c`` of schema ``a``, the name of table ``a."b.c"``): ``check_schemas``
refuses it.
"""
from __future__ import annotations

from collections.abc import Sequence

from funnel.errors import SourceError

# Schemas that are the default namespace of their database: left out on a SQLite mirror.
DEFAULT_SCHEMAS = frozenset({"main", "public"})
POSTGRES_DEFAULT_SCHEMA = "public"


def sqlite_event_name(table: str) -> str:
    """The event name of the SQLite table ``table`` (as the database spells it)."""
    return f"main.{table}" if "." in table else table


def sqlite_mirror_name(event_table: str) -> str:
    """The SQLite mirror table for an event's table name."""
    schema, dot, table = event_table.partition(".")
    if not dot:
        return event_table
    if schema in DEFAULT_SCHEMAS:
        return table
    return f"{schema}_{table}"


def postgres_mirror_name(event_table: str) -> tuple[str, str]:
    """(schema, table) on a PostgreSQL mirror for an event's table name."""
    schema, dot, table = event_table.partition(".")
    if not dot:
        return POSTGRES_DEFAULT_SCHEMA, event_table
    return schema, table


def check_schemas(schemas: Sequence[str], where: str) -> None:
    """Raises SourceError for the first schema whose name an event could not keep apart."""
    for schema in schemas:
        if "." in schema:
            raise SourceError(
                f'schema "{schema}" of {where} has a dot in its name: events name a table '
                f'"schema.table", so its tables would be mirrored into schema "{schema.partition(".")[0]}"',
                hint="rename the schema (ALTER SCHEMA ... RENAME TO), or leave its tables out of the capture "
                     "(name the tables with --table)",
            )


def check_distinct(event_tables: Sequence[str], where: str) -> None:
    """Raises SourceError naming the first two tables that a SQLite mirror would merge.

    ``event_tables`` are the captured tables as events name them; ``where`` names the
    production database in the message.  A PostgreSQL mirror keeps every distinct event
    name apart, so the SQLite mirror's rule is the stricter one.
    """
    seen: dict[str, str] = {}
    seen_pg: dict[tuple[str, str], str] = {}
    for name in event_tables:
        mirror = sqlite_mirror_name(name)
        other = seen.setdefault(mirror.lower(), name)  # SQLite ignores case in table names
        if other != name:
            raise SourceError(
                f'tables "{other}" and "{name}" of {where} would both be mirrored as SQLite '
                f'table "{mirror}": their rows would merge',
                hint=_DISTINCT_HINT,
            )
        schema, table = postgres_mirror_name(name)
        other = seen_pg.setdefault((schema, postgres_identifier(table)), name)
        if other != name:
            raise SourceError(
                f'tables "{other}" and "{name}" of {where} would both be mirrored as PostgreSQL table '
                f'"{schema}"."{postgres_identifier(table)}" (PostgreSQL keeps the first {PG_NAME_BYTES} '
                f"bytes of a name): their rows would merge",
                hint=_DISTINCT_HINT,
            )


_DISTINCT_HINT = "rename one of them, or leave one out of the capture (name the tables with --table)"
PG_NAME_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer identifiers silently


def postgres_identifier(name: str) -> str:
    """``name`` as PostgreSQL keeps it: its first 63 bytes, cut at a character boundary."""
    return name.encode()[:PG_NAME_BYTES].decode(errors="ignore")

"""timefunnel's own object names in the databases it touches, and identifier quoting.

Every table timefunnel creates in a user's database starts with ``INTERNAL_PREFIX``, so
listing "the application's tables" is one rule on every side (capture refuses
application tables with that prefix, see ``producer.sources.marks``).
"""
from __future__ import annotations

from collections.abc import Sequence

from funnel.errors import ConfigError

INTERNAL_PREFIX = "_timefunnel_"
STATE_TABLE = "_timefunnel_state"  # a mirror's position, epoch, hold and promotion (applier.sinks.state)
# The SQLite capture's tables in the production file (producer.sources.sqlite).
SQLITE_CHANGELOG = "_timefunnel_changelog"
SQLITE_GROUPS = "_timefunnel_groups"
SQLITE_LAYOUTS = "_timefunnel_layouts"
SQLITE_CAPTURED = "_timefunnel_captured"
# The PostgreSQL capture's schema for its own objects (event trigger functions, DDL log).
POSTGRES_CAPTURE_SCHEMA = "timefunnel"


def is_internal(table: str) -> bool:
    """True for a table timefunnel made (never an application table)."""
    return table.startswith(INTERNAL_PREFIX)


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted SQL identifier (PostgreSQL and SQLite quote alike).

    Raises ConfigError for NUL, which neither database can store in a name.
    """
    if "\x00" in name:
        raise ConfigError(f"identifier {name!r} contains a NUL character")
    return '"' + name.replace('"', '""') + '"'


def qualified_name(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def column_list(columns: Sequence[str]) -> str:
    return ", ".join(quote_ident(column) for column in columns)

"""Mirror database adapters, one module per database, chosen by URL."""
from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

from applier.sinks.base import Sink
from funnel.errors import ConfigError
from funnel.urls import sqlite_path

__all__ = ["Sink", "open_sink", "sqlite_path"]


def open_sink(url: str, create_tables: bool = False,
              table_definitions: Callable[[], dict[str, dict]] | None = None) -> Sink:
    """Open the mirror database at ``url`` (``sqlite:///path``, ``postgresql://user@host:port/db``).

    ``create_tables`` and ``table_definitions`` (production's tables as the capture
    published them, see ``ControlChannel.table_definitions``) matter to sinks that
    need typed tables (PostgreSQL); SQLite creates untyped tables from the events.

    Raises ConfigError for an unknown or unsupported scheme or a malformed URL, and
    SinkError if the database cannot be opened.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        # Imported here so that a process using another sink never loads this one.
        from applier.sinks.sqlite import SqliteSink

        return SqliteSink(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from applier.sinks.postgres import PostgresSink

        return PostgresSink(url, create_tables=create_tables, table_definitions=table_definitions)
    raise ConfigError(
        f"unsupported mirror URL scheme {scheme or '(none)'!r} in {url!r}",
        hint="Use sqlite:///path/to/mirror.db or postgresql://user@host:port/database",
    )

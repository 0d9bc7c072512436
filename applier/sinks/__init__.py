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


def has_mirror_state(url: str) -> bool:
    """Whether the database at ``url`` already holds timefunnel's state table, found out
    without creating or changing anything.

    Opening a sink prepares its database for applying (creates the file and the state
    table, switches SQLite to WAL): commands that only act on an existing mirror (seek,
    promote, resume, inspect with --sink) ask this first, so that a wrong --sink leaves no
    file and no table behind.  True when it cannot be told: opening the sink then says why.
    """
    from applier.sinks.state import STATE_TABLE

    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        import pathlib
        import sqlite3

        path = pathlib.Path(sqlite_path(url))
        if not path.is_file():
            return False
        try:
            conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
            try:
                return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                    (STATE_TABLE,)).fetchone() is not None
            finally:
                conn.close()
        except sqlite3.Error:
            return True
    if scheme in ("postgresql", "postgres"):
        import psycopg

        from funnel.databases import postgres
        from funnel.errors import TimeFunnelError

        try:
            with postgres.connect(url, "applier", what="mirror database") as conn:
                return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (STATE_TABLE,)).fetchone()[0]
        except (psycopg.Error, TimeFunnelError):
            return True
    return True

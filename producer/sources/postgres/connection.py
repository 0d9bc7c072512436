"""The capture's sessions: through the one PostgreSQL factory (``funnel.databases.postgres``),
as role ``capture``, every one with the canonical value settings (``values``)."""
from __future__ import annotations

import psycopg

from funnel.databases import postgres as pg
from funnel.errors import SourceError
from producer.sources.postgres.values import SESSION_OPTIONS

ROLE = "capture"


def conninfo(url: str, **extra: str) -> str:
    """libpq connection string for ``url`` as the capture, with our session settings added
    to its options (the replication connection passes ``replication="database"``).
    Raises ConfigError for a malformed URL."""
    return pg.conninfo(url, ROLE, SESSION_OPTIONS, **extra)


def connect(url: str, autocommit: bool = True) -> psycopg.Connection:
    """An ordinary connection with canonical session settings.  Raises ConfigError for a
    malformed URL, SourceError when the server cannot be reached."""
    return pg.connect(url, ROLE, autocommit=autocommit, options=SESSION_OPTIONS, error=SourceError)

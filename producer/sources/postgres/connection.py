"""The capture's sessions: every one with the canonical value settings (``values``)."""
from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from funnel.errors import ConfigError, SourceError
from funnel.urls import masked_password
from producer.sources.postgres.values import SESSION_OPTIONS


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


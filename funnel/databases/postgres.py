"""The one PostgreSQL connection factory of timefunnel.

Every session timefunnel opens carries ``application_name = timefunnel-<role>``, forced
over whatever the operator's URL says: the switchback freeze terminates every other
session of the database and spares exactly these names (``OUR_APPLICATION_NAMES``), so
an URL that set its own ``application_name`` must not make timefunnel kill itself, nor
an application calling itself "timefunnel…" be spared by a prefix match.

Session settings that only one side needs (the capture's datestyle options, the
applier's ``synchronous_commit``) stay with that side and are passed as ``options``.
"""
from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from funnel.errors import ConfigError, TimeFunnelError
from funnel.urls import masked_password

ROLES = ("capture", "applier", "switchback", "check", "takeover", "status")
DEFAULT_CONNECT_TIMEOUT_S = 10
OUR_APPLICATION_NAMES = tuple(f"timefunnel-{role}" for role in ROLES)


def application_name(role: str) -> str:
    """The ``application_name`` of ``role``'s sessions.  Raises ValueError for an unknown role."""
    if role not in ROLES:
        raise ValueError(f"unknown timefunnel role {role!r}")
    return f"timefunnel-{role}"


def one_line(error: object) -> str:
    """libpq's messages span lines (advice on the second, one line per host tried); the
    operator reads them on one Error line."""
    return " ".join(str(error).split())


def conninfo(url: str, role: str, options: str = "", **extra: object) -> str:
    """libpq connection string for ``url`` as ``role``: its application_name forced, UTF8,
    a connect timeout unless the URL sets one, ``options`` appended to the URL's.

    Raises ConfigError for a malformed URL.
    """
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"bad PostgreSQL URL {masked_password(url)}: {one_line(exc)}",
                          hint="use postgresql://user@host:port/database") from exc
    if options:
        params["options"] = f"{params.get('options', '')} {options}".strip()
    params["client_encoding"] = "UTF8"
    params["application_name"] = application_name(role)
    params.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT_S)
    params.update(extra)
    return make_conninfo("", **params)


def connect(url: str, role: str, *, autocommit: bool = True, options: str = "",
            error: type[TimeFunnelError] = TimeFunnelError, what: str = "PostgreSQL",
            **extra: object) -> psycopg.Connection:
    """A connection to ``url`` as ``role`` (see ``conninfo``).

    Raises ConfigError for a malformed URL and ``error`` (the caller's typed error: the
    source, sink or switchback kind) when the server cannot be reached; ``what`` names
    the database in that message ("mirror database", "production").
    """
    info = conninfo(url, role, options, **extra)
    try:
        return psycopg.connect(info, autocommit=autocommit)
    except psycopg.Error as exc:
        raise error(f"cannot connect to {what} at {masked_password(url)}: {one_line(exc)}",
                    hint="check the URL (host, port, user, password, database), that PostgreSQL runs and "
                         "accepts connections from this host, and the password (PGPASSWORD or ~/.pgpass)") from exc

"""Which database a URL names: its identity, not its spelling.

A hard link, a symlink or a relative path names the same SQLite file; ``localhost`` and
``127.0.0.1``, another user or a password name the same PostgreSQL database.  A check
that compares URLs or real paths misses these, and a switchback that takes the mirror
for production empties it.  So every "same database?" question (switchback's sides, the
capture that continues a switchback's source) compares identities:

- SQLite: the file's device and inode; a file that does not exist yet has none;
- PostgreSQL: the server's system identifier and the database's oid.

Identities are plain strings, so they can be recorded on the control topic and compared
later.  One limit: a SQLite file copied or moved to another file system gets a new identity.
"""
from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from funnel.errors import ConfigError, TimeFunnelError
from funnel.urls import masked_password, sqlite_path

_PG_SCHEMES = ("postgresql", "postgres")


class IdentityError(TimeFunnelError):
    """The database could not be reached to learn its identity."""


def sqlite_identity(path: str) -> str | None:
    """``sqlite:<device>:<inode>`` of the file at ``path`` (links followed), None when it does not exist."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return f"sqlite:{info.st_dev}:{info.st_ino}"


def postgres_identity(conn: Any) -> str:
    """``postgresql:<system identifier>:<database oid>`` of the database ``conn`` (psycopg) is connected to.

    Both are readable by any role that may connect.
    """
    system = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]
    oid = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
    return f"postgresql:{system}:{oid}"


def database_identity(url: str) -> str | None:
    """The identity of the database at ``url`` (None: a SQLite file that does not exist yet).

    Raises ConfigError for an unsupported URL, IdentityError when PostgreSQL cannot be reached.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return sqlite_identity(sqlite_path(url))
    if scheme in _PG_SCHEMES:
        import psycopg

        from funnel.databases import postgres

        with postgres.connect(url, "check", error=IdentityError) as conn:
            try:
                return postgres_identity(conn)
            except psycopg.Error as exc:
                raise IdentityError(f"cannot read the identity of {masked_password(url)}: {postgres.one_line(exc)}",
                                    hint="check that the role may connect to the database") from exc
    raise ConfigError(f"unsupported database URL {masked_password(url)!r}",
                      hint="use sqlite:///path/to.db or postgresql://user@host:port/database")


def same_identity(a: str | None, b: str | None) -> bool:
    """Two identities name one database; a database without one (not created yet) is no other."""
    return a is not None and a == b

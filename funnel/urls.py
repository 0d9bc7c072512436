"""Database URLs: SQLite file paths, and URLs without their passwords.

Shared by capture, apply, the point-in-time commands and switchback, so that every
command reads ``sqlite:`` URLs the same way and never prints a password.
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from funnel.errors import ConfigError


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:`` URL, read like a ``file:`` URL.

    ``sqlite:///var/db/mirror.db`` is the absolute path ``/var/db/mirror.db``;
    ``sqlite:mirror.db`` is relative to the working directory.
    Raises ConfigError for a host part or an empty path.
    """
    parts = urlsplit(url)
    if parts.netloc or not parts.path or parts.query or parts.fragment:
        raise ConfigError(f"bad SQLite URL {url!r}", hint="Use sqlite:///absolute/path.db or sqlite:relative/path.db")
    return parts.path


def without_password(url: str) -> str:
    """``url`` with its password left out: what status records and hook environments carry
    (a hook connects with its own credentials, e.g. .pgpass)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def masked_password(url: str) -> str:
    """``url`` with its password shown as ``***``, for error messages (shows that one was given)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user_info, host = parts.netloc.rsplit("@", 1)
        user = user_info.split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "(unparsable URL)"

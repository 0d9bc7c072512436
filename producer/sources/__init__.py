"""Source adapters, one module per database, chosen by URL."""
from __future__ import annotations

from pathlib import PurePath
from urllib.parse import urlsplit

from funnel.errors import ConfigError


def sqlite_source_path(url: str) -> str:
    """``sqlite:///abs/path.db`` → ``/abs/path.db``; ``sqlite:rel.db`` → ``rel.db``."""
    parts = urlsplit(url)
    if parts.netloc or not parts.path or parts.query or parts.fragment:
        raise ConfigError(f"bad SQLite URL {url!r}", hint="use sqlite:///absolute/path.db or sqlite:relative/path.db")
    return parts.path


def open_source(url: str, tables: list[str] | None = None, rowid_key: bool = False):
    """Open the production database at ``url`` for capture.

    Raises ConfigError for an unsupported URL, SourceError for a database that cannot
    be captured as asked (unknown table, no primary key, missing file).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from producer.sources.sqlite import SqliteSource

        return SqliteSource(sqlite_source_path(url), tables, rowid_key=rowid_key)
    raise ConfigError(f"unsupported source URL scheme {scheme or '(none)'!r} in {url!r}",
                      hint="use sqlite:///path/to/production.db")


def source_name_for(url: str) -> str:
    """A stable default source name: the database file's stem (``prod`` for prod.db)."""
    parts = urlsplit(url)
    return PurePath(parts.path).stem or parts.scheme

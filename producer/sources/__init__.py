"""Source adapters, one module per database, chosen by URL."""
from __future__ import annotations

from pathlib import PurePath
from urllib.parse import urlsplit

from funnel.errors import ConfigError
from funnel.urls import sqlite_path


def open_source(url: str, tables: list[str] | None = None, rowid_key: bool = False, *,
                funnel: str | None = None, slot: str | None = None, publication: str | None = None,
                replica_identity_full: bool = False, capture_ddl: bool = False):
    """Open the production database at ``url`` for capture.

    PostgreSQL (``postgresql://`` or ``postgres://``) captures through replication slot
    ``slot`` (default: named after ``funnel``) and publication ``publication`` (default:
    one capture creates); ``replica_identity_full`` gives updates and deletes full
    before images.  Raises ConfigError for an unsupported URL or an option the source
    does not have, SourceError for a database that cannot be captured as asked (unknown
    table, no primary key, missing file, no replication privilege).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        _reject_postgres_options(slot=slot, publication=publication, replica_identity_full=replica_identity_full,
                                 capture_ddl=capture_ddl)
        from producer.sources.sqlite import SqliteSource

        return SqliteSource(sqlite_path(url), tables, rowid_key=rowid_key)
    if scheme in ("postgresql", "postgres"):
        if rowid_key:
            raise ConfigError("--rowid-key is for SQLite sources only",
                              hint="give PostgreSQL tables a primary key, or use --replica-identity-full")
        from producer.sources.postgres import PostgresSource, default_slot_name

        if slot is None and funnel is None:
            raise ConfigError("a PostgreSQL source needs a replication slot name or the funnel's name")
        return PostgresSource(url, tables, slot=slot or default_slot_name(funnel), publication=publication,
                              replica_identity_full=replica_identity_full, capture_ddl=capture_ddl)
    raise ConfigError(f"unsupported source URL scheme {scheme or '(none)'!r} in {url!r}",
                      hint="use sqlite:///path/to/production.db or postgresql://user@host:port/database")



def uninstall_capture(url: str, funnel: str) -> list[str]:
    """Remove what a capture of ``url`` into ``funnel`` installed (``Source.uninstall``: SQLite
    triggers and bookkeeping tables; PostgreSQL's slot and the publication capture created),
    even where capturing would be refused (a frozen or empty database).  Returns what was
    removed, one item each; [] for a URL no capture can have used.  Raises SourceError."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from producer.sources.sqlite import uninstall

        return uninstall(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from producer.sources.postgres import default_publication_name, default_slot_name, uninstall

        slot = default_slot_name(funnel)
        return uninstall(url, slot, default_publication_name(slot))
    return []

def _reject_postgres_options(**options: object) -> None:
    """Raises ConfigError naming the first PostgreSQL-only option that is set."""
    for name, value in options.items():
        if value:
            raise ConfigError(f"--{name.replace('_', '-')} is for PostgreSQL sources only")


def source_name_for(url: str) -> str:
    """A stable default source name: the database file's stem (``prod`` for prod.db)."""
    parts = urlsplit(url)
    return PurePath(parts.path).stem or parts.scheme

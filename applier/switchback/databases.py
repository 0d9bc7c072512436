"""What the switchback does to the two databases directly: the ``Database`` interface.

The rows travel through the funnels (the reverse capture and applier); these classes do
only what a funnel cannot: list tables, reset production before the initial copy,
freeze and unfreeze the mirror, watch for writes, compute checksums, and read or write
a state row without applying anything.

One class per database kind implements it: ``sqlite_database``, ``postgres_database``.
"""
from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from applier.switchback.compare import ResetPlan, TableChecksum, TableShape, WriteActivity
from funnel.errors import SwitchbackError
from applier.transaction import MirrorPosition
from funnel.errors import ConfigError
from funnel.urls import masked_password

FETCH_ROWS = 5000


class Database(Protocol):
    """One side of the switchback (the promoted mirror or the original production)."""

    url: str
    kind: str
    fold_case: bool
    quiet_s: float  # how long without a write before the mirror counts as quiet

    def check(self, must_exist: bool) -> None: ...
    def identity(self) -> str | None: ...
    def tables(self) -> dict[str, TableShape]: ...
    def read_position(self, funnel: str, mirror: str) -> MirrorPosition | None: ...
    def write_position(self, position: MirrorPosition) -> None: ...
    def forget_position(self, funnel: str, mirror: str) -> None: ...
    def reset(self, plan: ResetPlan, source: "Database") -> None: ...
    def write_marker(self) -> Hashable: ...
    def activity_since(self, marker: Hashable) -> WriteActivity: ...
    def freeze(self, tables: Sequence[str], timeout_s: float, reason: str) -> int: ...
    def frozen(self) -> bool: ...
    def unfreeze(self) -> int: ...
    def captured_through(self, marker: int, capture: Any) -> bool: ...
    def ddl(self, table: str) -> list[str]: ...
    def column_types(self, shapes: Sequence[TableShape]) -> dict[str, list[str]]: ...
    def checksums(self, shapes: Sequence[TableShape],
                  as_types: dict[str, list[str]] | None = None) -> dict[str, TableChecksum]: ...


def open_database(url: str) -> Database:
    """The side at ``url``; nothing is opened yet.  Raises ConfigError for a bad or unsupported URL."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from applier.switchback.sqlite_database import SqliteDatabase

        return SqliteDatabase(url)
    if scheme in ("postgresql", "postgres"):
        from applier.switchback.postgres_database import PostgresDatabase

        return PostgresDatabase(url)
    raise ConfigError(f"unsupported database URL {url!r}",
                      hint="use sqlite:///path/to.db or postgresql://user@host:port/database")


def database_errors(method: Callable) -> Callable:
    """Turns the driver's errors into one SwitchbackError naming the database and the step."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except SwitchbackError:
            raise
        except Exception as exc:
            if not is_driver_error(exc):
                raise
            what = method.__name__.strip("_").replace("_", " ")
            raise SwitchbackError(f"{what} on {masked_password(self.url)} failed: {' '.join(str(exc).split())}") from exc
    return wrapped


def is_driver_error(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.Error):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.Error)


def fetch_all(cursor: Any) -> Iterator[Any]:
    """The cursor's rows, FETCH_ROWS at a time: a checksum of a big table never holds it all."""
    while rows := cursor.fetchmany(FETCH_ROWS):
        yield from rows

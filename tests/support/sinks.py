"""One harness for the sink contract suites: a sink under test and an independent reader.

The same test runs against a SQLite file and a PostgreSQL database (every batch through
executemany, and every batch through COPY), as ``mirror_for`` builds them.
"""
from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from applier.sinks.postgres import PostgresSink
from applier.sinks.sqlite import SqliteSink
from applier.transaction import MirrorPosition, Transaction
from funnel.events import ChangeBatch, Kind, Row, TableChanges, Value

KINDS = ["sqlite", "postgres-executemany", "postgres-copy"]
COMMIT = 1_700_000_000_000_000


class Mirror:
    """A sink under test, its tables (source names ``public.<name>``) and a reader."""

    def __init__(self, kind: str, sink: Any, path: Path | None = None, url: str | None = None) -> None:
        self.kind, self.sink, self._path, self._url = kind, sink, path, url
        self.offset = 0
        self.id = f"m_{uuid.uuid4().hex[:8]}"  # the mirror id: PostgreSQL databases are shared by a module

    @property
    def postgres(self) -> bool:
        return self._url is not None

    def name(self) -> str:
        """A fresh table name; its source name is ``public.<name>``."""
        return f"t_{uuid.uuid4().hex[:10]}"

    def mirror_table(self, name: str) -> str:
        return f'public."{name}"' if self.postgres else f'"{name}"'

    def execute(self, statement: str) -> list[tuple[Any, ...]]:
        """One statement on an independent connection, committed."""
        if self._url is not None:
            with psycopg.connect(self._url, autocommit=True) as conn:
                cursor = conn.execute(statement)
                return [tuple(row) for row in cursor.fetchall()] if cursor.description else []
        conn = sqlite3.connect(self._path)
        try:
            result = conn.execute(statement).fetchall()
            conn.commit()
            return result
        finally:
            conn.close()

    def create(self, name: str, columns: str) -> str:
        """CREATE TABLE ``name`` (``columns``, SQL both databases read); returns the source name."""
        self.execute(f"CREATE TABLE {self.mirror_table(name)} ({columns})")
        return f"public.{name}"

    def rows(self, name: str) -> list[tuple[Any, ...]]:
        return sorted(self.execute(f"SELECT * FROM {self.mirror_table(name)}"), key=repr)

    def position(self, next_offset: int | None = None, last_txid: str | None = None,
                 mirror: str | None = None, **extra: Any) -> MirrorPosition:
        if next_offset is None:
            self.offset += 1
            next_offset = self.offset
        return MirrorPosition("shop", mirror or self.id, "shop", 0, next_offset, last_txid, COMMIT + next_offset,
                              COMMIT + next_offset, snapshot_done=True, **extra)

    def apply(self, *transactions: Transaction) -> int:
        return self.sink.apply(list(transactions), self.position())


def tx(txid: str, *groups: TableChanges, offset: int = 0, kind: Kind = Kind.CHANGES) -> Transaction:
    count = sum(len(group.rows) for group in groups)
    batch = ChangeBatch("src", txid, COMMIT + offset, offset, 0, count, kind, list(groups))
    return Transaction(txid, COMMIT + offset, kind, offset, offset, [batch])


def ins(*values: Value) -> Row:
    return Row(None, list(values))


def upd(before: list[Value], after: list[Value]) -> Row:
    return Row(before, after)


def dele(*values: Value) -> Row:
    return Row(list(values), None)


@contextmanager
def postgres_database(server_url: str, prefix: str) -> Iterator[str]:
    """A fresh database on the session server, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@contextmanager
def mirror_for(kind: str, tmp_path: Path, pg_url: str | None, **postgres: Any) -> Iterator[Mirror]:
    """The mirror of ``kind`` (one of ``KINDS``); ``postgres``: more PostgresSink arguments."""
    if kind == "sqlite":
        path = tmp_path / "mirror.db"
        with SqliteSink(path) as sink:
            yield Mirror(kind, sink, path=path)
        return
    assert pg_url is not None
    copy_min_rows = 1 if kind == "postgres-copy" else 10**9
    with PostgresSink(pg_url, copy_min_rows=copy_min_rows, **postgres) as sink:
        yield Mirror(kind, sink, url=pg_url)

"""The SQLite file rules every side shares: how timefunnel opens a file.

Every side opens in autocommit mode (``isolation_level=None``) and begins its
transactions itself (``BEGIN IMMEDIATE`` where it must hold the write lock), so one
apply or one capture seal is exactly one database transaction.  A read-only open
(``mode=ro``) is for checks that must never create the file or take a write lock.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

BUSY_TIMEOUT_S = 30.0


def connect(path: str, *, timeout: float = BUSY_TIMEOUT_S, read_only: bool = False,
            **kwargs: object) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path`` (autocommit; see the module doc)."""
    kwargs.setdefault("isolation_level", None)
    if read_only:
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=timeout, **kwargs)
    return sqlite3.connect(path, timeout=timeout, **kwargs)

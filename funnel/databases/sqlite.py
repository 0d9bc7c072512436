"""The SQLite file rules every side shares: how timefunnel opens a file.

Every side opens in autocommit mode (``isolation_level=None``) and begins its
transactions itself (``BEGIN IMMEDIATE`` where it must hold the write lock), so one
apply or one capture seal is exactly one database transaction.  A read-only open
(``mode=ro``) is for checks that must never create the file or take a write lock; a
``must_exist`` open (``mode=rw``) is for the capture, which never creates a production.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

BUSY_TIMEOUT_S = 30.0


def connect(path: str, *, timeout: float = BUSY_TIMEOUT_S, read_only: bool = False, must_exist: bool = False,
            **kwargs: object) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path`` (autocommit; see the module doc).

    ``read_only`` and ``must_exist`` never create the file: ``sqlite3.OperationalError``
    when it is missing.
    """
    kwargs.setdefault("isolation_level", None)
    mode = "ro" if read_only else "rw" if must_exist else None
    if mode is not None:
        uri = Path(path).resolve().as_uri() + f"?mode={mode}"
        return sqlite3.connect(uri, uri=True, timeout=timeout, **kwargs)
    return sqlite3.connect(path, timeout=timeout, **kwargs)

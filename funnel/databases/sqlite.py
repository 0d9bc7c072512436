"""The SQLite file rules every side shares: how timefunnel opens a file.

Every side opens in autocommit mode (``isolation_level=None``) and begins its
transactions itself (``BEGIN IMMEDIATE`` where it must hold the write lock), so one
apply or one capture seal is exactly one database transaction.  A read-only open
(``mode=ro``) is for checks that must never create the file or take a write lock; a
``must_exist`` open (``mode=rw``) is for the capture, which never creates a production.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
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


# How often a wait for the write lock looks up from SQLite to see whether to give up.
LOCK_WAIT_SLICE_S = 0.25


def begin_immediate(conn: sqlite3.Connection, busy_timeout_s: float, stopping: Callable[[], bool]) -> bool:
    """``BEGIN IMMEDIATE`` on ``conn``, waiting up to ``busy_timeout_s`` for the write lock, in
    slices of ``LOCK_WAIT_SLICE_S`` between which ``stopping()`` is asked.

    SQLite's own busy wait runs in C: a SIGTERM's Python handler cannot run (nor a stop
    event be seen) until it returns, so one 30 s wait kept a stopped capture alive 30 s.
    Returns True with the transaction begun, False (nothing begun) once ``stopping()``
    says so.  Raises sqlite3.OperationalError ("database is locked") when the lock stayed
    taken for ``busy_timeout_s``, as a plain BEGIN IMMEDIATE would, or for any other error.
    The connection's busy timeout is ``busy_timeout_s`` again afterwards.
    """
    deadline = time.monotonic() + busy_timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            conn.execute(f"PRAGMA busy_timeout = {max(0, int(min(LOCK_WAIT_SLICE_S, left) * 1000))}")
            try:
                conn.execute("BEGIN IMMEDIATE")
                return True
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            if stopping():
                return False
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """The lock is taken by another connection: SQLITE_BUSY or one of its extended codes
    (the codes are there from Python 3.11, the message before)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF == sqlite3.SQLITE_BUSY if code is not None else "locked" in str(exc)

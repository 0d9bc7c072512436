"""The libpq replication connection and its COPY-both stream.

psycopg 3 has no replication API, so we drive libpq ourselves: a ``replication=database``
connection, the simple-query ``CREATE_REPLICATION_SLOT`` / ``START_REPLICATION`` commands,
and ``PQgetCopyData``/``PQputCopyData`` on the COPY-both stream (``ReplicationStream``).
The alternative, polling ``pg_logical_slot_peek_binary_changes`` and moving the slot with
``pg_replication_slot_advance`` (which would need only SQL), we rejected:

- every peek decodes again from the slot's restart_lsn, which only moves at the next
  running-xacts record (every 15 s, or later while a long transaction is open): under
  load each poll re-reads seconds to minutes of the whole cluster's WAL;
- a peek returns its whole result at once, so a backlog or a large transaction is
  materialised twice (tuplestore on the server, list in Python);
- the SQL functions cannot export a snapshot, so the initial copy would have no exact
  seam.  The slot must be created on a replication connection anyway.

The stream decodes the WAL once, pushes it as it is written, and its standby status
updates move the slot's ``confirmed_flush_lsn``: nothing else does (see ``reader``).
bench/capture_postgres.py measures the server's own decoding (a peek over the same WAL)
next to ours: about 650k rows/s against about 90k on a 2-core machine, so the server is
never what limits capture.
"""
from __future__ import annotations

import select
import time

import psycopg
from psycopg import pq

from funnel.errors import SourceError
from funnel.urls import masked_password
from producer.sources.base import SourceDisconnected
from producer.sources.postgres.connection import conninfo
from producer.sources.postgres.pgoutput import lsn_from_text, lsn_to_text


class ReplicationStream:
    """A ``replication=database`` libpq connection: slot creation and the COPY-both stream.

    Only the simple query protocol works on it, so we use libpq through ``psycopg.pq``.
    """

    def __init__(self, pgconn: pq.PGconn, url: str) -> None:
        self._pg = pgconn
        self._url = url
        self._streaming = False

    @classmethod
    def connect(cls, url: str) -> ReplicationStream:
        """Raises SourceError if the server refuses the replication connection."""
        pgconn = pq.PGconn.connect(conninfo(url, replication="database").encode())
        if pgconn.status != pq.ConnStatus.OK:
            message = _pg_error(pgconn)
            pgconn.finish()
            raise SourceError(f"cannot open a replication connection to {masked_password(url)}: {message}",
                              hint="the role needs REPLICATION and pg_hba.conf must let it connect to the database")
        return cls(pgconn, url)

    def create_slot(self, slot: str, server_version: int) -> tuple[int, str]:
        """Creates the permanent pgoutput slot; returns (consistent point, exported snapshot).
        The snapshot stays valid until this connection runs another command or closes.
        Raises SourceError."""
        option = "(SNAPSHOT 'export')" if server_version >= 150000 else "EXPORT_SNAPSHOT"
        result = self._pg.exec_(f'CREATE_REPLICATION_SLOT "{slot}" LOGICAL pgoutput {option}'.encode())
        if result.status != pq.ExecStatus.TUPLES_OK:
            raise SourceError(f"cannot create replication slot {slot}: {_result_error(result, self._pg)}")
        names = [result.fname(i) for i in range(result.nfields)]
        point = result.get_value(0, names.index(b"consistent_point")).decode()
        snapshot = result.get_value(0, names.index(b"snapshot_name")).decode()
        return lsn_from_text(point), snapshot

    def start(self, slot: str, publication: str, start_lsn: int, busy_wait_s: float) -> None:
        """START_REPLICATION from ``start_lsn``; retries while the slot is still held by a
        predecessor's walsender, up to ``busy_wait_s``.  Raises SourceError."""
        quoted = '"' + publication.replace('"', '""') + '"'
        command = (f'START_REPLICATION SLOT "{slot}" LOGICAL {lsn_to_text(start_lsn)} '
                   f"(proto_version '1', publication_names '{quoted.replace(chr(39), chr(39) * 2)}')").encode()
        deadline = time.monotonic() + busy_wait_s
        while True:
            result = self._pg.exec_(command)
            if result.status == pq.ExecStatus.COPY_BOTH:
                self._streaming = True
                return
            message = _result_error(result, self._pg)
            if "is active for PID" not in message or time.monotonic() >= deadline:
                raise SourceError(f"cannot stream replication slot {slot}: {message}",
                                  hint="is another capture running on this slot? stop it first")
            time.sleep(0.2)

    def read(self, timeout_s: float) -> bytes | None:
        """The next CopyData message, waiting up to ``timeout_s``; None if none arrived.
        Raises SourceError if the stream ended or the connection failed."""
        try:
            size, data = self._pg.get_copy_data(1)
            if size == 0:
                ready, _, _ = select.select([self._pg.socket], [], [], timeout_s)
                if not ready:
                    return None
                self._pg.consume_input()
                size, data = self._pg.get_copy_data(1)
        except psycopg.Error as exc:
            raise SourceDisconnected(f"replication stream from {masked_password(self._url)} failed: {exc}") from exc
        if size > 0:
            return bytes(data)
        if size == 0:
            return None
        result = self._pg.get_result()
        raise SourceDisconnected(f"replication stream from {masked_password(self._url)} ended: "
                                 f"{_result_error(result, self._pg) if result else 'no reason given'}")

    def send(self, message: bytes) -> None:
        """Raises SourceError if the connection failed."""
        try:
            self._pg.put_copy_data(message)
            self._pg.flush()
        except psycopg.Error as exc:
            raise SourceDisconnected(f"replication stream to {masked_password(self._url)} failed: {exc}") from exc

    def close(self) -> None:
        if self._streaming and self._pg.status == pq.ConnStatus.OK:
            try:
                self._pg.put_copy_end()
                self._pg.flush()
            except psycopg.Error:
                pass  # the server is gone already; closing is all that is left to do
        self._pg.finish()


def _pg_error(pgconn: pq.PGconn) -> str:
    return pgconn.error_message.decode(errors="replace").strip()


def _result_error(result: pq.PGresult, pgconn: pq.PGconn) -> str:
    return (result.error_message.decode(errors="replace") or _pg_error(pgconn)).strip()


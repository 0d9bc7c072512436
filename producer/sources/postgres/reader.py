"""The stream read as whole transactions, and the slot's position.

A transaction's ``position`` is its commit's end LSN, ``txid`` its xid, ``commit_ts`` its
commit time.  The slot's confirmed position advances only in ``acknowledge(position)``
(called by the capture after the Kafka commit), so a crash loses nothing; after a restart
the server resends from the confirmed position and ``transactions_after(position)`` skips
what the funnel already has, by LSN.  A dropped stream (walsender terminated, server
restarted) raises ``SourceDisconnected``; ``rewind()`` reconnects and does the same
in-process, which is how capture rides through it.

An idle database still lets its slot advance, so that other databases' WAL does not pile
up behind it: the walsender reports in keepalives how far it has decoded the WAL (its
``sentPtr``), and every transaction that committed before that point has already been
sent to us.  When nothing is pending here (no transaction buffered, half-received or
returned but unacknowledged), everything before that point is either in the funnel or
had no captured change, so confirming it is safe.  The server's current flush LSN read
with SQL would not be: a transaction may commit between that read and the confirmation.
Transactions that touch no captured table (PostgreSQL 13/14 send them as empty
Begin/Commit pairs) are never published and advance the slot the same way.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from funnel.errors import SourceError
from producer.gc_pause import gc_paused
from producer.sources.base import SourceTransaction
from producer.sources.postgres.assembly import Assembler
from producer.sources.postgres.pgoutput import (
    XLOGDATA_HEADER,
    Keepalive,
    decode_copy_message,
    lsn_to_text,
    standby_status_update,
)
from producer.sources.postgres.stream import ReplicationStream

FEEDBACK_INTERVAL_S = 10.0  # well inside the server's wal_sender_timeout (60 s default)
PARTIAL_TX_WAIT_S = 1.0  # how long one call waits for the rest of a half-received transaction


class StreamReader:
    """Turns the stream into whole SourceTransactions and keeps the slot's position.

    ``_acked`` is what capture confirmed (the slot's confirmed position to start with),
    ``_covered`` how far the walsender has read the WAL with everything before it
    received, ``_returned`` the last position handed out.
    """

    def __init__(self, stream: ReplicationStream, assembler: Assembler, confirmed: int,
                 clock: Callable[[], int]) -> None:
        self._stream = stream
        self._assembler = assembler
        self._clock = clock
        self._ready: deque[SourceTransaction] = deque()
        self._acked = self._covered = self._received = confirmed
        self._returned = 0
        self._sent: tuple[int, int] = (0, 0)  # (write, flush) of the last status update
        self._sent_at = 0.0

    def transactions_after(self, position: int, limit: int) -> list[SourceTransaction]:
        found: list[SourceTransaction] = []
        with gc_paused():  # see producer.gc_pause: a few containers per row, none in a cycle
            while len(found) < limit:
                if not self._ready and not self._pump(limit - len(found)):
                    break
                tx = self._ready.popleft()
                if tx.position > position:  # the rest is already in the funnel
                    found.append(tx)
        if found:
            self._returned = max(self._returned, found[-1].position)
        self._feedback_if_due()
        return found

    def acknowledge(self, position: int) -> None:
        if position > max(self._returned, self._acked):
            raise SourceError(f"cannot acknowledge {lsn_to_text(position)}: only up to "
                              f"{lsn_to_text(max(self._returned, self._acked))} was read")
        self._acked = max(self._acked, position)
        self.send_feedback()

    def _pump(self, wanted: int) -> bool:
        """Reads until ``wanted`` transactions are ready or nothing more is waiting (or,
        inside a transaction, nothing more came for PARTIAL_TX_WAIT_S); True if any is ready."""
        # The hot loop of capture: one iteration per pgoutput message, so names are local.
        ready, read, feed, take = self._ready, self._stream.read, self._assembler.feed_raw, self._take
        deadline = None
        count = 0
        while len(ready) < wanted:
            count += 1
            if count % 4096 == 0:  # a long backlog or transaction: keep the walsender's timeout at bay
                self._feedback_if_due()
            data = read(0.0)
            if data is None:
                if not self._assembler.in_transaction:
                    break
                deadline = deadline or time.monotonic() + PARTIAL_TX_WAIT_S
                data = read(max(0.0, deadline - time.monotonic()))
                if data is None:
                    break
            if data[0] == 0x77:  # XLogData: one pgoutput message
                tx = feed(data, XLOGDATA_HEADER)
                if tx is not None:
                    take(tx)
            else:
                self._keepalive(decode_copy_message(data))
        return bool(ready)

    def _take(self, tx: SourceTransaction) -> None:
        self._received = max(self._received, tx.position)
        if tx.changes:
            self._ready.append(tx)
        else:  # nothing captured in it: it only moves the slot
            self._covered = max(self._covered, tx.position)

    def _keepalive(self, message: Keepalive | Any) -> None:
        if not isinstance(message, Keepalive):
            raise SourceError(f"unexpected replication stream message {message!r}")
        self._received = max(self._received, message.wal_end)
        if not self._assembler.in_transaction:
            self._covered = max(self._covered, message.wal_end)
        if message.reply_requested:
            self.send_feedback()

    def _flush_position(self) -> int:
        """What the slot may forget: what capture acknowledged, or more when nothing is
        pending (see the module docstring)."""
        idle = not self._ready and not self._assembler.in_transaction and self._returned <= self._acked
        return max(self._acked, self._covered) if idle else self._acked

    def _feedback_if_due(self) -> None:
        if ((self._received, self._flush_position()) != self._sent
                or time.monotonic() - self._sent_at >= FEEDBACK_INTERVAL_S):
            self.send_feedback()

    def send_feedback(self) -> None:
        """Raises SourceError if the stream failed."""
        # Never report less than before: PostgreSQL would move the slot back (and a slot
        # whose confirmed position falls behind its restart point can decode half a transaction).
        flush = self._acked = self._flush_position()
        write = max(self._received, flush)
        self._stream.send(standby_status_update(write, flush, flush, self._clock()))
        self._sent, self._sent_at = (write, flush), time.monotonic()


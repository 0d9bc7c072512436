"""The mirror's state table, shared by every sink: its columns, its SQL, and rows.

Column order is ``STATE_COLUMNS``: funnel, mirror, topic, partition, next_offset,
last_txid, last_commit_ts, valid_as_of, snapshot_done, hold_until, promoted_at,
promote_target, excluded_txids (a JSON array of txids).

One more column, ``epoch``, fences appliers: each applier (and each seek or promote
run with ``--sink``) bumps it when it starts (``StateWriter.claim``), and every later
write of the row is ``UPDATE ... WHERE epoch = <mine>`` in the same database transaction
as the rows.  An older applier that wakes up (SIGSTOP, a stalled container, two pods
during a rollout) finds zero rows to update, rolls back, and stops with FencedError:
its buffered transactions and older position never overwrite the newer state.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Protocol, Sequence

from applier.transaction import MirrorPosition
from funnel.databases.names import STATE_TABLE
from funnel.errors import FencedError

STATE_COLUMNS = ("funnel", "mirror", "topic", "partition", "next_offset", "last_txid", "last_commit_ts",
                 "valid_as_of", "snapshot_done", "hold_until", "promoted_at", "promote_target", "excluded_txids")
EPOCH_COLUMN = "epoch"  # not in STATE_COLUMNS: it belongs to the writer, not to the position


def state_upsert_sql(placeholder: str) -> str:
    """Upsert of the whole state row of one (funnel, mirror); ``placeholder`` is ``?`` or ``%s``.

    Unfenced: for writers that never claimed the row (switchback's own position writes,
    library use). It leaves ``epoch`` as it is.
    """
    names = ", ".join(STATE_COLUMNS)
    placeholders = ", ".join([placeholder] * len(STATE_COLUMNS))
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in STATE_COLUMNS[2:])
    return (f"INSERT INTO {STATE_TABLE} ({names}) VALUES ({placeholders}) "
            f"ON CONFLICT (funnel, mirror) DO UPDATE SET {updates}")


def state_select_sql(placeholder: str) -> str:
    """SELECT of the state row of one (funnel, mirror), for ``position_from_row``."""
    return (f"SELECT {', '.join(STATE_COLUMNS)} FROM {STATE_TABLE} "
            f"WHERE funnel = {placeholder} AND mirror = {placeholder}")


def add_epoch_column_sql(integer_type: str, if_not_exists: bool = False) -> str:
    """In-place migration of a state table made before fencing (its rows get epoch 0).

    ``if_not_exists`` (PostgreSQL) lets two appliers starting at once both migrate.
    """
    guard = "IF NOT EXISTS " if if_not_exists else ""
    return f"ALTER TABLE {STATE_TABLE} ADD COLUMN {guard}{EPOCH_COLUMN} {integer_type} NOT NULL DEFAULT 0"


def position_to_row(position: MirrorPosition) -> tuple[Any, ...]:
    return (position.funnel, position.mirror, position.topic, position.partition, position.next_offset,
            position.last_txid, position.last_commit_ts, position.valid_as_of, int(position.snapshot_done),
            position.hold_until, position.promoted_at, position.promote_target,
            json.dumps(list(position.excluded_txids)) if position.excluded_txids else None)


def position_from_row(row: Sequence[Any]) -> MirrorPosition:
    (funnel, mirror, topic, partition, next_offset, last_txid, last_commit_ts, valid_as_of, snapshot_done,
     hold_until, promoted_at, promote_target, excluded) = row
    return MirrorPosition(funnel, mirror, topic, partition, next_offset, last_txid, last_commit_ts, valid_as_of,
                          bool(snapshot_done), hold_until, promoted_at, promote_target,
                          tuple(json.loads(excluded)) if excluded else ())


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Sequence[Any] | None: ...


Execute = Callable[[str, Sequence[Any]], Cursor]


class StateWriter:
    """Writes state rows for one sink connection, fenced for every (funnel, mirror) it claimed.

    The sink calls ``claim`` and ``write`` inside database transactions it opens itself,
    and ``committed``/``rolled_back`` after them: the epoch a first insert takes counts
    only once that transaction committed.
    """

    def __init__(self, placeholder: str, where: str) -> None:
        p = placeholder
        self.where = where
        self._upsert = state_upsert_sql(p)
        self._claim = (f"UPDATE {STATE_TABLE} SET {EPOCH_COLUMN} = {EPOCH_COLUMN} + 1 "
                       f"WHERE funnel = {p} AND mirror = {p}")
        self._select = (f"SELECT {', '.join(STATE_COLUMNS)}, {EPOCH_COLUMN} FROM {STATE_TABLE} "
                        f"WHERE funnel = {p} AND mirror = {p}")
        names = ", ".join(STATE_COLUMNS + (EPOCH_COLUMN,))
        self._insert = (f"INSERT INTO {STATE_TABLE} ({names}) VALUES ({', '.join([p] * (len(STATE_COLUMNS) + 1))}) "
                        f"ON CONFLICT (funnel, mirror) DO NOTHING")
        updates = ", ".join(f"{column} = {p}" for column in STATE_COLUMNS[2:])
        self._update = (f"UPDATE {STATE_TABLE} SET {updates} "
                        f"WHERE funnel = {p} AND mirror = {p} AND {EPOCH_COLUMN} = {p}")
        self._epochs: dict[tuple[str, str], int] = {}  # 0: the row did not exist when claimed
        self._pending: dict[tuple[str, str], int] = {}

    def claim(self, execute: Execute, funnel: str, mirror: str) -> MirrorPosition | None:
        """Take the row for this writer (inside one database transaction) and return its position.

        Every writer that claimed it before is fenced from now on.
        """
        execute(self._claim, (funnel, mirror))
        row = execute(self._select, (funnel, mirror)).fetchone()
        self._pending[(funnel, mirror)] = 0 if row is None else int(row[-1])
        return None if row is None else position_from_row(row[:-1])

    def epoch(self, funnel: str, mirror: str) -> int | None:
        """The epoch this writer holds (None: it never claimed; 0: it will create the row)."""
        return self._epochs.get((funnel, mirror))

    def check(self, execute: Execute, funnel: str, mirror: str) -> None:
        """Raises FencedError when a newer writer claimed the row since this one did."""
        mine = self._epochs.get((funnel, mirror))
        if mine is None:
            return
        row = execute(self._select, (funnel, mirror)).fetchone()
        current = None if row is None else int(row[-1])
        if (mine == 0 and current is not None) or (mine > 0 and current != mine):
            raise self._fenced(funnel, mirror, mine, current)

    def write(self, execute: Execute, position: MirrorPosition) -> None:
        """Store ``position`` in the caller's open transaction.

        Raises FencedError (the caller rolls back) when a newer writer claimed the row.
        """
        key = (position.funnel, position.mirror)
        row = position_to_row(position)
        mine = self._epochs.get(key)
        if mine is None:
            execute(self._upsert, row)
            return
        if mine == 0:  # the row did not exist at claim: whoever creates it first wins
            cursor, new = execute(self._insert, row + (1,)), 1
        else:
            cursor, new = execute(self._update, row[2:] + (position.funnel, position.mirror, mine)), mine
        if cursor.rowcount != 1:
            raise self._fenced(position.funnel, position.mirror, mine, None)
        self._pending[key] = new

    def committed(self) -> None:
        self._epochs.update(self._pending)
        self._pending.clear()

    def rolled_back(self) -> None:
        self._pending.clear()

    def _fenced(self, funnel: str, mirror: str, mine: int, current: int | None) -> FencedError:
        now = "" if current is None else f", now {current}"
        return FencedError(
            f"fenced by a newer applier of mirror {mirror!r} (funnel {funnel!r}) in {self.where}: this one "
            f"claimed epoch {mine}{now}; it stops without writing, its buffered transactions are left to the "
            f"newer one",
            hint="run one applier per mirror (Kubernetes: strategy Recreate, or a lease); "
                 "a seek or promote with --sink also takes the mirror over")

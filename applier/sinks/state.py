"""The mirror's state table, shared by every sink: its columns, its SQL, and rows.

Column order is ``STATE_COLUMNS``: funnel, mirror, topic, partition, next_offset,
last_txid, last_commit_ts, valid_as_of, snapshot_done, hold_until, promoted_at,
promote_target, excluded_txids (a JSON array of txids).
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from applier.transaction import MirrorPosition

STATE_TABLE = "_timefunnel_state"
STATE_COLUMNS = ("funnel", "mirror", "topic", "partition", "next_offset", "last_txid", "last_commit_ts",
                 "valid_as_of", "snapshot_done", "hold_until", "promoted_at", "promote_target", "excluded_txids")


def state_upsert_sql(placeholder: str) -> str:
    """Upsert of the whole state row of one (funnel, mirror); ``placeholder`` is ``?`` or ``%s``."""
    names = ", ".join(STATE_COLUMNS)
    placeholders = ", ".join([placeholder] * len(STATE_COLUMNS))
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in STATE_COLUMNS[2:])
    return (f"INSERT INTO {STATE_TABLE} ({names}) VALUES ({placeholders}) "
            f"ON CONFLICT (funnel, mirror) DO UPDATE SET {updates}")


def state_select_sql(placeholder: str) -> str:
    """SELECT of the state row of one (funnel, mirror), for ``position_from_row``."""
    return (f"SELECT {', '.join(STATE_COLUMNS)} FROM {STATE_TABLE} "
            f"WHERE funnel = {placeholder} AND mirror = {placeholder}")


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

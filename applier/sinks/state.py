"""The mirror's state row as plain column values, shared by every sink.

Column order is ``sqlite_sql.STATE_COLUMNS``: funnel, mirror, topic, partition,
next_offset, last_txid, last_commit_ts, valid_as_of, snapshot_done, hold_until,
promoted_at, promote_target, excluded_txids (a JSON array of txids).
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from applier.transaction import MirrorPosition


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

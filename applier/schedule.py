"""When a transaction is due: the scheduling rule, as plain functions of their inputs.

All times are integers in microseconds since the epoch (UTC) and durations integers in
microseconds, the unit of ``commit_ts`` in the events, so no float rounding can move a
transaction across its due time.  ``now`` is always a parameter: the applier passes its
clock, tests pass a number.
"""
from __future__ import annotations

MICROS_PER_SECOND = 1_000_000


def due_at(commit_ts_us: int, delay_us: int) -> int:
    """The time at which a transaction committed at ``commit_ts_us`` may be applied."""
    return commit_ts_us + delay_us


def is_due(commit_ts_us: int, delay_us: int, now_us: int) -> bool:
    """True when ``commit_ts + delay <= now``: the due instant itself counts as due."""
    return due_at(commit_ts_us, delay_us) <= now_us


def seconds_behind(oldest_due_commit_ts_us: int | None, delay_us: int, now_us: int) -> float:
    """How late the applier is, in seconds, against the schedule ``commit_ts + delay``.

    ``oldest_due_commit_ts_us`` is the commit time of the oldest transaction not yet
    applied (None when nothing is pending).  Nothing pending, or nothing overdue yet,
    is 0.0: a transaction that is waiting for its delay is on schedule, not behind.
    """
    if oldest_due_commit_ts_us is None:
        return 0.0
    late_us = now_us - due_at(oldest_due_commit_ts_us, delay_us)
    return max(late_us, 0) / MICROS_PER_SECOND

"""The wall clock, in the unit every event time uses: int microseconds since the Unix epoch (UTC).

The one impure time source; everything that decides by time takes ``now`` (or a
``clock``) as a parameter and defaults to this.
"""
from __future__ import annotations

import time


def now_us() -> int:
    """Wall-clock time in microseconds since the epoch (UTC): the default ``clock``."""
    return time.time_ns() // 1000

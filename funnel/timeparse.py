"""Durations and times as operators type them, and as the funnel stores them.

Durations: ``90s``, ``15m``, ``4h``, ``7d``, ``500ms``, ``1h30m``, plain seconds ``30``.
Times: ISO-8601 with a zone (``2026-11-29T12:00:00Z``, ``...+01:00``), ``now``, or
relative to now (``-15m``, ``-1h30m``).  Event times are int microseconds since the
Unix epoch, UTC (``ChangeBatch.commit_ts``).  Pure: ``now`` is always a parameter.
"""
from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

from funnel.errors import ConfigError

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MICROSECOND = timedelta(microseconds=1)

# Largest unit first; each unit at most once, in this order ("1h30m", not "30m1h").
_UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001))
_NUMBER = r"\d+(?:\.\d+)?"
_DURATION = re.compile(
    "".join(rf"(?:(?P<{unit}>{_NUMBER}){unit})?" for unit, _ in _UNITS)
)
_PLAIN_SECONDS = re.compile(_NUMBER)
_RELATIVE = re.compile(r"(?P<sign>[-+])(?P<duration>.*)")
# Longer than any delay or retention anyone means, and short enough that "now" minus it
# is still a date (and retention.ms still a Java long): hundreds of digits stop here.
MAX_DURATION_S = 100 * 365 * 86400.0


_RANGE_HINT = "go back at most as far as the funnel's retention, e.g. -7d"


class DurationTooLongError(ConfigError):
    """A well-formed duration beyond MAX_DURATION_S."""


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``90s``, ``15m``, ``4h``, ``7d``, ``500ms``, ``1h30m``, ``30``).

    Raises ConfigError for negative, empty or malformed durations, and
    DurationTooLongError for one longer than 100 years.
    """
    stripped = text.strip()
    if _PLAIN_SECONDS.fullmatch(stripped):
        return _at_most_max(text, float(stripped))
    match = _DURATION.fullmatch(stripped)
    if not stripped or match is None:
        raise ConfigError(f"malformed duration {text!r}: use e.g. 90s, 15m, 4h, 7d",
                          hint="write a number with a unit (ms, s, m, h, d), largest unit first: 15m, 1h30m, 7d")
    return _at_most_max(text, sum(float(match[unit]) * scale for unit, scale in _UNITS if match[unit]))


def _at_most_max(text: str, seconds: float) -> float:
    if not seconds <= MAX_DURATION_S:  # also catches inf and nan from hundreds of digits
        shown = text.strip() if len(text.strip()) <= 20 else text.strip()[:17] + "..."
        raise DurationTooLongError(f"duration {shown!r} is too long: at most 36500d (100 years)",
                                   hint="use a duration such as 7d or 4h")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` the way parse_duration reads it, to the millisecond: ``1h30m``, ``500ms``.

    Negative durations get a leading ``-``.  Raises ValueError for inf and nan.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"cannot format duration {seconds!r}")
    millis = round(abs(seconds) * 1000)
    if millis == 0:
        return "0s"
    parts = []
    for unit, scale in _UNITS:
        count, millis = divmod(millis, round(scale * 1000))
        if count:
            parts.append(f"{count}{unit}")
    return ("-" if seconds < 0 else "") + "".join(parts)


def parse_time(text: str, now: datetime) -> datetime:
    """The UTC instant ``text`` names: ISO-8601 with a zone, ``now``, or ``-15m``-style.

    Relative times count from ``now`` (which must be aware).  Raises ConfigError for
    a time without a zone (add ``Z`` or an offset) and for anything unreadable.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    stripped = text.strip()
    if stripped.lower() == "now":
        return now.astimezone(timezone.utc)
    relative = _RELATIVE.fullmatch(stripped)
    if relative:
        return _relative_time(text, relative, now)
    try:
        parsed = datetime.fromisoformat(stripped)
    except ValueError:
        raise ConfigError(
            f"malformed time {text!r}: use ISO-8601 with a zone "
            "(2026-11-29T12:00:00Z) or a time relative to now (-15m, now)",
            hint="e.g. --to 2026-11-29T12:00:00Z, --to -15m or --to now",
        ) from None  # fromisoformat's own message adds nothing for the operator
    if parsed.tzinfo is None:
        raise ConfigError(
            f"time {text!r} has no zone: add Z for UTC or an offset such as +01:00",
            hint=f"e.g. {stripped}Z for UTC",
        )
    return parsed.astimezone(timezone.utc)


def _relative_time(text: str, match: re.Match[str], now: datetime) -> datetime:
    """``now`` shifted by a signed duration. Raises ConfigError if the duration is bad."""
    try:
        delta = timedelta(seconds=parse_duration(match["duration"]))
        moved = now - delta if match["sign"] == "-" else now + delta
    except DurationTooLongError:
        raise ConfigError(f"relative time {text!r} is out of range", hint=_RANGE_HINT) from None
    except ConfigError:
        raise ConfigError(
            f"malformed relative time {text!r}: use e.g. -15m, -1h30m, -7d",
            hint="a sign, then a number with a unit, largest unit first: -15m, -1h30m, -7d",
        ) from None
    except OverflowError:
        raise ConfigError(f"relative time {text!r} is out of range", hint=_RANGE_HINT) from None
    return moved.astimezone(timezone.utc)


def to_micros(dt: datetime) -> int:
    """Microseconds since the Unix epoch of aware ``dt`` (exact, no float rounding).

    Raises ValueError for a naive datetime.
    """
    if dt.tzinfo is None:
        raise ValueError(f"{dt.isoformat()} has no timezone; cannot place it in UTC")
    return (dt - EPOCH) // _ONE_MICROSECOND


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime ``micros`` microseconds after the Unix epoch."""
    return EPOCH + timedelta(microseconds=micros)


def format_time(micros: int) -> str:
    """ISO-8601 UTC with ``Z``; fractional seconds only when not zero."""
    dt = from_micros(micros)
    spec = "microseconds" if dt.microsecond else "seconds"
    return dt.replace(tzinfo=None).isoformat(timespec=spec) + "Z"

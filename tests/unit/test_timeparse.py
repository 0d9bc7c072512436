"""Durations and times as operators type them (funnel.timeparse)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from funnel.errors import ConfigError
from funnel.timeparse import (
    format_duration,
    format_time,
    from_micros,
    parse_duration,
    parse_time,
    to_micros,
)

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)
UTC = timezone.utc


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("15m", 900.0),
        ("4h", 14400.0),
        ("7d", 604800.0),
        ("500ms", 0.5),
        ("0", 0.0),
        ("0s", 0.0),
        ("30", 30.0),
        ("2.5", 2.5),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("1d2h3m4s5ms", 86400 + 7200 + 180 + 4 + 0.005),
        ("  90s\n", 90.0),
    ],
)
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(
    "text",
    ["-5m", "-0", "", "  ", "abc", "5x", "5 m", "m", "1.h", ".5h", "1h1h", "30m1h", "1e3", "inf", "nan", "4H"],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(text)
    assert str(caught.value) == f"malformed duration {text!r}: use e.g. 90s, 15m, 4h, 7d"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (14400, "4h"),
        (5400, "1h30m"),
        (90, "1m30s"),
        (0, "0s"),
        (0.0004, "0s"),
        (0.5, "500ms"),
        (1.5, "1s500ms"),
        (604800, "7d"),
        (90061, "1d1h1m1s"),
        (-90, "-1m30s"),
        (3600.0, "1h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0, 0.001, 0.5, 59, 61, 3599.999, 5400, 86401, 12345678.9])
def test_format_duration_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("seconds", [float("inf"), float("-inf"), float("nan")])
def test_format_duration_rejects_non_finite(seconds: float) -> None:
    with pytest.raises(ValueError):
        format_duration(seconds)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29T12:00:00Z", datetime(2026, 11, 29, 12, 0, tzinfo=UTC)),
        ("2026-11-29T12:00:00+01:00", datetime(2026, 11, 29, 11, 0, tzinfo=UTC)),
        ("2026-11-29T12:00:00-05:30", datetime(2026, 11, 29, 17, 30, tzinfo=UTC)),
        ("2026-11-29T12:00:00.25Z", datetime(2026, 11, 29, 12, 0, 0, 250000, tzinfo=UTC)),
        ("2026-11-29T12:00:00.123456+00:00", datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)),
        ("now", NOW),
        (" NOW ", NOW),
        ("-15m", NOW - timedelta(minutes=15)),
        ("-1h30m", NOW - timedelta(hours=1, minutes=30)),
        ("-7d", NOW - timedelta(days=7)),
        ("+10m", NOW + timedelta(minutes=10)),
        ("-500ms", NOW - timedelta(milliseconds=500)),
    ],
)
def test_parse_time_accepts(text: str, expected: datetime) -> None:
    parsed = parse_time(text, NOW)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)  # always normalised to UTC


def test_parse_time_relative_to_a_non_utc_now() -> None:
    now = datetime(2026, 11, 29, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert parse_time("-1h", now) == datetime(2026, 11, 29, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2026-11-29T12:00:00", "2026-11-29", "2026-11-29 12:00:00.5"])
def test_parse_time_rejects_naive_times(text: str) -> None:
    with pytest.raises(ConfigError, match="has no zone: add Z for UTC or an offset"):
        parse_time(text, NOW)


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2026-13-01T00:00:00Z", "12:00Z", "2026-11-29T25:00:00Z", "T"]
)
def test_parse_time_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigError, match="malformed time"):
        parse_time(text, NOW)


@pytest.mark.parametrize("text", ["-", "-15x", "--5m", "-1h 30m", "+-1h"])
def test_parse_time_rejects_bad_relative_times(text: str) -> None:
    with pytest.raises(ConfigError, match="malformed relative time"):
        parse_time(text, NOW)


def test_parse_time_rejects_out_of_range_relative_time() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        parse_time("-99999999d", NOW)


def test_parse_time_needs_an_aware_now() -> None:
    with pytest.raises(ValueError):
        parse_time("-15m", datetime(2026, 11, 29, 12, 0))


@pytest.mark.parametrize(
    ("dt", "micros"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), 0),
        (datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC), 1),
        (datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), -1),
        (datetime(2026, 11, 29, 12, 0, 0, 123457, tzinfo=UTC), 1_795_953_600_123_457),
        (datetime(2026, 11, 29, 13, 0, 0, 123457, tzinfo=timezone(timedelta(hours=1))), 1_795_953_600_123_457),
    ],
)
def test_micros_conversions_are_exact(dt: datetime, micros: int) -> None:
    assert to_micros(dt) == micros
    back = from_micros(micros)
    assert back == dt
    assert back.tzinfo is not None and back.utcoffset() == timedelta(0)


def test_micros_round_trip_keeps_every_microsecond_far_from_epoch() -> None:
    # A float timestamp would lose the last digit here; integer arithmetic must not.
    for micros in (9_999_999_999_999_999, 253_402_300_799_999_999, -62_135_596_800_000_000):
        assert to_micros(from_micros(micros)) == micros


def test_to_micros_rejects_naive_datetime() -> None:
    with pytest.raises(ValueError, match="no timezone"):
        to_micros(datetime(2026, 11, 29, 12, 0))


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_795_953_600_000_000, "2026-11-29T12:00:00Z"),
        (1_795_953_600_000_001, "2026-11-29T12:00:00.000001Z"),
        (1_795_953_600_123_456, "2026-11-29T12:00:00.123456Z"),
        (1_795_953_600_500_000, "2026-11-29T12:00:00.500000Z"),
        (-1, "1969-12-31T23:59:59.999999Z"),
    ],
)
def test_format_time(micros: int, text: str) -> None:
    assert format_time(micros) == text
    assert to_micros(parse_time(text, NOW)) == micros


@pytest.mark.parametrize("text", ["9" * 400, "9" * 400 + "d", "36501d", "1" * 30 + "s", "99999999999h"])
def test_parse_duration_refuses_durations_beyond_100_years(text: str) -> None:
    with pytest.raises(ConfigError, match="too long"):
        parse_duration(text)
    assert parse_duration("36500d") == 36500 * 86400.0


def test_parse_time_refuses_relative_times_of_hundreds_of_digits() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        parse_time("-" + "9" * 400 + "d", NOW)

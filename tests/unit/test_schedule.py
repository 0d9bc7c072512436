"""The scheduling rule: due when commit_ts + delay <= now, with an injected clock."""
from __future__ import annotations

import pytest

from applier.schedule import due_at, is_due, seconds_behind

HOUR_US = 3_600 * 1_000_000
COMMIT = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z in µs


def test_due_at_adds_delay_to_commit_time() -> None:
    assert due_at(COMMIT, 4 * HOUR_US) == COMMIT + 14_400_000_000


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (COMMIT + HOUR_US - 1, False),  # one microsecond early
        (COMMIT + HOUR_US, True),  # exactly due: the boundary counts as due
        (COMMIT + HOUR_US + 1, True),
        (COMMIT, False),  # just committed
    ],
)
def test_is_due_boundary(now: int, expected: bool) -> None:
    assert is_due(COMMIT, HOUR_US, now) is expected


def test_zero_delay_is_due_at_commit_time() -> None:
    assert is_due(COMMIT, 0, COMMIT)
    assert not is_due(COMMIT, 0, COMMIT - 1)


def test_shorter_delay_releases_at_once() -> None:
    now = COMMIT + 2 * HOUR_US
    assert not is_due(COMMIT, 4 * HOUR_US, now)
    assert is_due(COMMIT, 2 * HOUR_US, now)


def test_microsecond_precision_is_kept_for_large_times() -> None:
    # Float seconds would lose this 1 µs at epoch magnitudes; integers must not.
    far = 4_102_444_800_000_000  # 2100-01-01
    assert not is_due(far, 1, far)
    assert is_due(far, 1, far + 1)


def test_seconds_behind_is_zero_when_nothing_pending() -> None:
    assert seconds_behind(None, HOUR_US, COMMIT) == 0.0


def test_seconds_behind_is_zero_while_waiting_for_the_delay() -> None:
    assert seconds_behind(COMMIT, HOUR_US, COMMIT + HOUR_US - 1) == 0.0
    assert seconds_behind(COMMIT, HOUR_US, COMMIT + HOUR_US) == 0.0


def test_seconds_behind_counts_from_due_time_not_commit_time() -> None:
    assert seconds_behind(COMMIT, HOUR_US, COMMIT + HOUR_US + 2_500_000) == 2.5
    assert seconds_behind(COMMIT, 0, COMMIT + 1) == 0.000001

"""What `funnel status` says about a mirror whose applier is not running (applier.status_report.mirror_position)."""
from __future__ import annotations

from applier.status_report import mirror_position
from funnel.records import SwitchbackState
from funnel.events import Kind
from funnel.reader import TransactionSummary
from funnel.records import MirrorStatus

NOW = 1_800_000_000_000_000
STALE = NOW - 60_000_000  # a minute ago: the process is gone


class Reader:
    """The funnel from offset 40 on (headers only): by default a change, an initial copy, changes."""

    topic = "shop"

    def __init__(self, *kinds: Kind) -> None:
        self.kinds = kinds or (Kind.CHANGES, Kind.SNAPSHOT, Kind.SNAPSHOT, Kind.SNAPSHOT_END, Kind.CHANGES)

    def watermarks(self) -> tuple[int, int]:
        return 40, 60

    def transactions(self, start, end, keep_payloads=False):
        for i, kind in enumerate(self.kinds):
            offset = 40 + 2 * i
            if start <= offset < end:
                yield TransactionSummary("snap" if kind is not Kind.CHANGES else f"t{i}", NOW, kind, offset, offset)


def status(state: str, next_offset: int, updated_at: int = STALE, **extra) -> MirrorStatus:
    return MirrorStatus.from_json({"mirror": "m1", "funnel": "shop", "state": state, "next_offset": next_offset,
                                   "updated_at": updated_at, **extra})


def test_a_promoted_mirror_shows_as_promoted_and_never_as_expired() -> None:
    assert mirror_position("m1", status("promoted", 7, mode="promoted"), None, Reader(), 40, NOW) == \
        ("promoted", 7, False)


def test_a_stopped_mirror_behind_the_oldest_event_is_expired() -> None:
    assert mirror_position("m1", status("stopped", 7), None, Reader(), 40, NOW) == ("not running", 7, True)
    assert mirror_position("m1", status("running", 50, NOW), None, Reader(), 40, NOW) == ("running", 50, False)


def test_after_switchback_complete_the_mirror_continues_at_the_fresh_copy() -> None:
    switchback = SwitchbackState.from_json({
        "funnel": "shop", "mirror": "m1", "cycle": "c1", "phase": "done", "from_url": "sqlite:///m.db",
        "to_url": "sqlite:///p.db", "reverse_funnel": "shop.switchback-c1", "source_name": "src",
        "started_at": STALE, "updated_at": STALE + 1, "forward": {"next_offset": 40, "low_offset": 40}})
    assert mirror_position("m1", status("promoted", 7, mode="promoted"), switchback, Reader(), 40, NOW) == \
        ("not running (switched back)", 40, False)
    # once the mirror's applier runs again, its own status is the truth
    assert mirror_position("m1", status("running", 48, NOW), switchback, Reader(), 40, NOW) == \
        ("running", 48, False)


def test_a_mirror_that_never_ran_starts_where_the_applier_would() -> None:
    assert mirror_position("m9", None, None, Reader(), 40, NOW) == ("never ran", 42, False)
    assert mirror_position("m9", None, None, Reader(Kind.CHANGES, Kind.SNAPSHOT), 40, NOW) == ("never ran", 40, True)

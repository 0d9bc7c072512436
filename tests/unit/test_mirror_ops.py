"""seek and promote as the CLI shows them: progress lines that count undone transactions, and an applier
that stalled told from one that is busy."""
from __future__ import annotations

import pytest

from applier.applier import Command
from applier.pointintime import Plan
from dataclasses import replace

from applier.mirror_ops import raise_if_gone, refuse_without_sink
from applier.pointintime import PointInTimeError
from funnel.cli.mirror_ops import Progress
from funnel.errors import TimeFunnelError
from funnel.records import MirrorStatus


def progress() -> Progress:
    plan = Plan("m1", to=1, next_offset=0, undo_from_offset=0, undo_transactions=9400, apply_transactions=33)
    return Progress(Command("c1", "promote"), plan)


def test_an_undo_in_progress_counts_what_is_undone_and_what_remains() -> None:
    line = progress()._line({"phase": "undoing", "undone_transactions": 5000, "undone_rows": 5000,
                             "applied_transactions": 0, "applied_rows": 0})
    assert "promote m1: undoing, undone 5000/9400 tx, applied 0/33 tx" in line
    assert line.endswith("remaining ~4433 tx"), line


def test_the_done_line_says_done_and_claims_no_remaining_work() -> None:
    line = progress()._line({"phase": "applying", "undone_transactions": 9400, "undone_rows": 9400,
                             "applied_transactions": 33, "applied_rows": 40}, done=True)
    assert "undone 9400/9400 tx, applied 33/33 tx" in line and "done in" in line and "remaining" not in line


def test_the_cli_tells_a_stalled_applier_from_a_busy_one() -> None:
    now = 1_800_000_000_000_000
    command = Command("c1", "promote")
    busy = MirrorStatus("m1", "shop", "running", 0, updated_at=now - 500_000,
                        command={"id": "c1", "state": "running", "phase": "undoing"})
    raise_if_gone("m1", command, busy, now)  # reported half a second ago: busy, keep waiting
    with pytest.raises(TimeFunnelError, match="has not reported for 60s while undoing: it is stalled or gone"):
        raise_if_gone("m1", command, replace(busy, updated_at=now - 60_000_000), now)
    with pytest.raises(TimeFunnelError, match="stopped before the promote finished"):
        raise_if_gone("m1", command, replace(busy, state="stopped"), now)
    with pytest.raises(TimeFunnelError, match="has not reported for infs"):
        raise_if_gone("m1", command, None, now)


def test_a_promoted_mirror_without_sink_is_refused_as_promoted_not_as_not_running() -> None:
    promoted = MirrorStatus("m1", "shop", "promoted", 42, mode="promoted", promoted_at=1_800_000_000_000_000,
                            promote_target=1_799_999_000_000_000, updated_at=1_800_000_000_000_000)
    with pytest.raises(PointInTimeError, match="mirror 'm1' was promoted at 2027-01-15T08:00:00") as refused:
        refuse_without_sink("m1", "shop", promoted)
    assert "switchback" in refused.value.hint and "--sink" not in refused.value.hint
    with pytest.raises(TimeFunnelError, match="mirror 'm1' is not running"):
        refuse_without_sink("m1", "shop", replace(promoted, state="stopped", mode="running", promoted_at=None))
    with pytest.raises(TimeFunnelError, match="unknown mirror 'm1'"):
        refuse_without_sink("m1", "shop", None)

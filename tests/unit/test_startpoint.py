"""Where a mirror without a position starts (applier.startpoint.copy_start): a pure rule over headers."""
from __future__ import annotations

from funnel.events import Kind

from applier.startpoint import copy_start

C, S, E, H = Kind.CHANGES, Kind.SNAPSHOT, Kind.SNAPSHOT_END, Kind.HEARTBEAT


def marks(*kinds: Kind, first: int = 10) -> list[tuple[int, Kind]]:
    # offsets step by 2: Kafka's transaction markers take offsets of their own
    return [(first + 2 * i, kind) for i, kind in enumerate(kinds)]


def test_nothing_expired_starts_at_zero_whatever_the_funnel_holds() -> None:
    assert copy_start(0, marks(C, C, first=0), first_starts_copy=False) == 0
    assert copy_start(0, [], first_starts_copy=False) == 0


def test_after_expiry_it_starts_at_the_first_whole_copy() -> None:
    assert copy_start(5, marks(C, H, S, S, E, C), first_starts_copy=False) == 14


def test_a_copy_cut_by_expiry_is_passed_over() -> None:
    assert copy_start(5, marks(S, S, E, C, S, E, C), first_starts_copy=False) == 18


def test_a_copy_that_begins_at_the_first_retained_message_counts_when_its_body_says_seq_0() -> None:
    # `switchback complete` deletes the old timeline right up to the fresh copy
    assert copy_start(5, marks(S, S, E, C), first_starts_copy=True) == 10
    assert copy_start(5, marks(E, C), first_starts_copy=True) == 10  # an empty copy: its end marker only


def test_a_copy_without_its_end_marker_is_not_whole() -> None:
    assert copy_start(5, marks(C, S, S), first_starts_copy=False) is None
    assert copy_start(5, marks(C, S, C, H), first_starts_copy=False) is None


def test_no_copy_at_all_means_the_mirror_cannot_start() -> None:
    assert copy_start(5, marks(C, H, C), first_starts_copy=False) is None
    assert copy_start(5, [], first_starts_copy=False) is None


def test_of_several_whole_copies_the_newest_wins() -> None:
    # an empty mirror plus the newest copy is production at that copy; passing through an
    # older copy and then a newer one would keep rows deleted between the two
    assert copy_start(5, marks(C, S, E, C, S, S, E), first_starts_copy=False) == 18
    assert copy_start(5, marks(S, E, S, E, C), first_starts_copy=True) == 14


def test_a_newer_copy_still_being_written_leaves_the_older_whole_one() -> None:
    assert copy_start(5, marks(C, S, E, C, S, S), first_starts_copy=False) == 12

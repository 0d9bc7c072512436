"""Where a mirror without a position starts: the rule shared by the applier and `funnel status`.

A mirror that never applied anything must begin with an initial copy (``snapshot``
messages ended by ``snapshot_end``): changes alone do not make a database.  While the
funnel still holds offset 0 nothing expired and the mirror starts there, as it always
did (no scan of a deep funnel at start).  Once the oldest events are gone (retention,
or `switchback complete`, which deletes the old timeline), it starts at the newest
initial copy the funnel still holds whole: the copy's end marker is there and so is its
first message.  The newest, because an empty mirror plus the newest copy is production
at that copy, whatever happened before it; starting at an older copy and passing
through a later one would leave rows that were deleted between the two (a copy is
upserts, not deletes).  Copy rows are applied at once, without the delay, so a new
mirror shows production as of that copy straight away and holds later changes back.
"""
from __future__ import annotations

from typing import Iterable

from funnel.codec import EventCodec
from funnel.errors import EventsExpiredError
from funnel.events import Kind
from funnel.reader import FunnelReader

_COPY = (Kind.SNAPSHOT, Kind.SNAPSHOT_END)


def copy_start(low: int, marks: Iterable[tuple[int, Kind]], first_starts_copy: bool) -> int | None:
    """The offset a mirror without a position starts from (the newest whole copy), or None.

    ``marks`` are (first offset, kind) of the funnel's transactions from ``low`` on, in
    order (copy chunks are transactions of their own). ``first_starts_copy`` says whether
    the first of them, when it is part of a copy, is that copy's first message: a copy
    cut by retention cannot be told from a whole one by its headers.
    """
    if low == 0:
        return 0
    newest: int | None = None
    start: int | None = None
    partial = False  # inside a copy whose beginning expired
    for index, (offset, kind) in enumerate(marks):
        if kind not in _COPY:
            start, partial = None, False
            continue
        if start is None and not partial:
            if index == 0 and not first_starts_copy:
                partial = True
            else:
                start = offset
        if kind is Kind.SNAPSHOT_END:
            if start is not None:
                newest = start
            start, partial = None, False
    return newest


def start_offset(reader: FunnelReader, mirror: str, codec: EventCodec | None = None) -> int:
    """Where ``mirror`` (without a position) starts in the funnel ``reader`` reads.

    Raises EventsExpiredError when the oldest events expired and the funnel holds no
    whole initial copy.
    """
    low, high = reader.watermarks()
    if low == 0:
        return 0
    first = next(iter(reader.transactions(low, high)), None)
    first_starts_copy = first is not None and first.kind in _COPY and _is_copy_start(reader, first, codec)
    found = copy_start(low, ((s.first_offset, s.kind) for s in reader.transactions(low, high)), first_starts_copy)
    if found is None:
        raise EventsExpiredError(
            f"mirror {mirror!r} has no position and cannot start: events {reader.topic}[0] before offset {low} "
            f"expired and the funnel holds no whole initial copy after them",
            hint="capture production into a new funnel (its first events are an initial copy) and start the "
                 "mirror on that one, or start from a copy of an existing mirror with its position renamed "
                 "(README, Failure semantics); keep a funnel's retention longer than its longest delay")
    return found


def _is_copy_start(reader: FunnelReader, first, codec: EventCodec | None) -> bool:
    """True when the copy chunk ``first`` is its copy's first message (seq 0), read from its body."""
    whole = next(iter(reader.transactions(first.first_offset, first.last_offset + 1, keep_payloads=True)), None)
    if whole is None or not whole.payloads:
        return False
    return (codec or EventCodec()).decode(whole.payloads[0]).seq == 0

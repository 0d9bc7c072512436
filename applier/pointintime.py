"""Point-in-time recovery: plan and carry out seek and promote.

A target ``T`` is exclusive: the mirror at ``T`` has every transaction with
``commit_ts < T`` applied and none after.  Getting there may need both directions:

- backward: undo applied transactions newest first from their before images (as far
  back as the funnel still holds them), each batch of undos atomic with the position;
- forward: apply what is still in the funnel with ``commit_ts < T``, ignoring the
  delay, leaving out excluded transactions.

The plan is computed from the funnel itself (headers only) and the mirror's stored
position, so ``--dry-run`` shows exactly what the real run will do.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator

from applier.sinks.base import Sink
from applier.transaction import MirrorPosition, Transaction
from applier.undo import invert
from applier.window import gc_paused, net_effect
from funnel.codec import EventCodec
from funnel.errors import CodecError, TimeFunnelError
from funnel.events import Kind
from funnel.reader import FunnelReader, TransactionSummary
from funnel.timeparse import format_time

UNDO_BATCH_ROWS = 50_000  # rows undone per database transaction, written as their net effect
# The newest batches' net effect is kept from the check (every transaction is inverted before
# anything is undone) while their events total at most this many bytes, so that most undos
# decode each event once; beyond it, memory stays bounded and the older batches are decoded
# again when written.  Bytes, not rows: decoded rows take a few times their Avro size, whatever
# their width (seek_back's 100k transactions, 300k rows: 13 MB of events, kept whole; peak RSS
# 274 MB against 252 MB keeping a third of them, CPU 8.0 s against 9.9 s).
UNDO_KEEP_BYTES = 16 * 1024 * 1024


class PointInTimeError(TimeFunnelError):
    """The target cannot be reached (outside the funnel, unknown txid, promoted mirror)."""


@dataclass(frozen=True)
class Target:
    """Where to take the mirror. ``to=None`` means everything the funnel holds."""

    to: int | None = None  # µs since the epoch, exclusive
    excluded: tuple[str, ...] = ()


@dataclass
class Plan:
    """What seek or promote will do; ``to`` is the resolved target time."""

    mirror: str
    to: int
    next_offset: int
    undo_from_offset: int | None = None
    undo_transactions: int = 0
    undo_rows: int = 0
    apply_transactions: int = 0
    apply_rows: int = 0
    leave_out: list[dict] = field(default_factory=list)
    valid_as_of: int | None = None  # what the mirror will be valid as of afterwards

    def as_dict(self) -> dict:
        return {"mirror": self.mirror, "target": format_time(self.to), "target_us": self.to,
                "next_offset": self.next_offset, "undo_from_offset": self.undo_from_offset,
                "undo": {"transactions": self.undo_transactions, "rows": self.undo_rows},
                "apply": {"transactions": self.apply_transactions, "rows": self.apply_rows},
                "leave_out": self.leave_out,
                "valid_as_of": format_time(self.valid_as_of) if self.valid_as_of else None}


def refuse_if_promoted(position: MirrorPosition | None) -> None:
    if position is not None and position.promoted_at is not None:
        raise PointInTimeError(
            f"mirror {position.mirror!r} was promoted at {format_time(position.promoted_at)} "
            f"(target {format_time(position.promote_target) if position.promote_target else '-'}); "
            f"it no longer applies or seeks", hint="a promoted mirror is production now: see `funnel switchback`")


def make_plan(reader: FunnelReader, position: MirrorPosition, target: Target,
              progress: Callable[[], None] = lambda: None) -> Plan:
    """Classify every transaction the funnel holds against the mirror's position and the target.

    Streaming passes over the headers (memory stays flat however deep the funnel): the
    funnel's time range comes from its first and last transactions (a full pass only
    when excluded txids must be found); one full pass counts what will be undone,
    applied and left out.
    ``progress`` is called for every transaction scanned (a running applier publishes
    its status from it, at its own pace).
    Raises PointInTimeError for a target after the newest event in the funnel, a target
    that needs undo of transactions the funnel no longer holds, an unknown excluded
    txid, or a promoted mirror.
    """
    refuse_if_promoted(position)
    low, high = reader.watermarks()
    if position.next_offset < low:
        raise PointInTimeError(f"events before offset {low} expired before mirror {position.mirror!r} applied them",
                               hint="re-initialise the mirror")
    excluded = set(target.excluded)
    oldest, newest = _time_range(reader, low, high)
    found = ({s.txid for s in _ticking(reader.transactions(low, high), progress) if s.txid in excluded}
             if excluded else set())
    to = newest + 1 if target.to is None else target.to
    _check_target(position, target, to, oldest, newest, found, low)
    plan = Plan(position.mirror, to, position.next_offset, valid_as_of=position.valid_as_of)
    undo_from = None
    for summary in _ticking(reader.transactions(low, high), progress):
        applied = summary.last_offset < position.next_offset
        if applied and summary.kind is not Kind.HEARTBEAT and (summary.commit_ts >= to or summary.txid in excluded):
            undo_from = summary.first_offset if undo_from is None else undo_from
        if undo_from is not None and applied and summary.kind is not Kind.HEARTBEAT:
            plan.undo_transactions += 1
            plan.undo_rows += summary.rows
        if summary.commit_ts < to and summary.kind is not Kind.SNAPSHOT:
            plan.valid_as_of = summary.commit_ts
        if summary.commit_ts >= to or (applied and undo_from is None):
            continue
        if summary.txid in excluded:
            plan.leave_out.append({"txid": summary.txid, "commit_ts": format_time(summary.commit_ts),
                                   "rows": summary.rows, "offset": summary.first_offset})
        elif summary.kind is not Kind.HEARTBEAT:
            plan.apply_transactions += 1
            plan.apply_rows += summary.rows
    plan.undo_from_offset = undo_from
    return plan


def _ticking(summaries: Iterable[TransactionSummary], tick: Callable[[], None]) -> Iterator[TransactionSummary]:
    for summary in summaries:
        tick()
        yield summary


def _time_range(reader: FunnelReader, low: int, high: int) -> tuple[int, int]:
    """Commit times of the funnel's first and last transactions, read from its two ends."""
    first = next(iter(reader.transactions(low, high)), None)
    if first is None:
        raise PointInTimeError("the funnel holds no events")
    window = 64
    while True:  # a window may start inside a transaction: its commit time is still right
        start = max(low, high - window)
        last = None
        for last in reader.transactions(start, high):
            pass
        if last is not None or start == low:
            return first.commit_ts, (last or first).commit_ts
        window *= 8


def _check_target(position: MirrorPosition, target: Target, to: int, oldest: int, newest: int, found: set[str],
                  low: int) -> None:
    if to > newest + 1:
        raise PointInTimeError(f"target {format_time(to)} is after the newest event the funnel holds "
                               f"({format_time(newest)})", hint="choose an earlier time, or omit the target")
    unknown = [txid for txid in target.excluded if txid not in found]
    if unknown:
        raise PointInTimeError(f"unknown txid {unknown[0]!r}: not in the funnel",
                               hint="find it with `funnel inspect --op delete`")
    if to < oldest and (position.last_commit_ts or 0) >= to and position.next_offset > low:
        raise PointInTimeError(f"target {format_time(to)} is older than the funnel's oldest event "
                               f"({format_time(oldest)}): the transactions to undo are no longer in the funnel",
                               hint="choose a target after the oldest event")


def undo_back(sink: Sink, reader: FunnelReader, position: MirrorPosition, from_offset: int,
              codec: EventCodec, progress: Callable[[int, int], None] = lambda tx, rows: None,
              tick: Callable[[], None] = lambda: None) -> MirrorPosition:
    """Undo every applied transaction from ``from_offset`` on, newest first; returns the new position.

    ``progress(transactions, rows)`` is called after each committed batch of undos, ``tick()``
    for every transaction read and inverted: reading thousands of transactions back takes
    long enough that a running applier must go on publishing its status meanwhile.

    Each batch of undos is one database transaction with the position, written as the
    batch's net effect (``applier.window``), so a crash resumes exactly: the next run
    undoes from where the stored position says.
    Raises UndoError for a transaction that cannot be undone (checked for all of them
    before anything is undone), CodecError for a bad event.
    """
    held = list(_ticking(reader.transactions(from_offset, position.next_offset, keep_payloads=True), tick))
    batches = _undo_batches(held)
    # Every transaction must be invertible before the first undo is applied, so that a
    # refusal (a schema change, a truncate, no before image) leaves the mirror unchanged.
    # The check goes newest first, as the undo does, and keeps the first batches' net
    # effect (up to UNDO_KEEP_BYTES of events): those are not decoded a second time.
    kept: list[list[Transaction]] = []
    kept_bytes = 0
    keeping = True  # what is kept is the newest batches: the first ones written
    for batch in batches:
        with gc_paused():  # see applier.window: the batch's objects have no cycles
            inverted = _inverted(batch, codec, reader.topic, tick)
            kept_bytes += sum(len(payload) for summary in batch for payload in summary.payloads)
            keeping = keeping and kept_bytes <= UNDO_KEEP_BYTES
            if keeping:
                kept.append(net_effect(inverted))
            del inverted
    undone_tx = undone_rows = 0
    for index, batch in enumerate(batches):
        oldest = batch[-1]
        position = replace(position, next_offset=oldest.first_offset, last_txid=None, last_commit_ts=None,
                           valid_as_of=oldest.commit_ts)
        with gc_paused():
            net = kept[index] if index < len(kept) else net_effect(_inverted(batch, codec, reader.topic, tick))
            sink.apply(net, position)
        if index < len(kept):
            kept[index] = []  # written: its memory goes
        undone_tx += sum(1 for summary in batch if summary.kind is not Kind.HEARTBEAT)
        undone_rows += sum(summary.rows for summary in batch if summary.kind is not Kind.HEARTBEAT)
        progress(undone_tx, undone_rows)
    return position


def _undo_batches(held: list[TransactionSummary]) -> list[list[TransactionSummary]]:
    """``held`` newest first, cut into batches of about UNDO_BATCH_ROWS rows (each one database transaction)."""
    batches: list[list[TransactionSummary]] = []
    batch: list[TransactionSummary] = []
    rows = 0
    for summary in reversed(held):
        batch.append(summary)
        if summary.kind is not Kind.HEARTBEAT:
            rows += summary.rows
        if rows >= UNDO_BATCH_ROWS:
            batches.append(batch)
            batch, rows = [], 0
    if batch:
        batches.append(batch)
    return batches


def _inverted(batch: list[TransactionSummary], codec: EventCodec, topic: str,
              tick: Callable[[], None]) -> list[Transaction]:
    """The batch's transactions inverted, newest first.  Raises UndoError, CodecError."""
    inverted = []
    for summary in batch:
        tick()
        if summary.kind is not Kind.HEARTBEAT:
            inverted.append(invert(_decode(summary, codec, topic)))
    return inverted


def _decode(summary: TransactionSummary, codec: EventCodec, topic: str) -> Transaction:
    try:
        batches = [codec.decode(payload) for payload in summary.payloads]
    except CodecError as exc:
        raise CodecError(f"{topic}[0] transaction {summary.txid!r} at offset {summary.first_offset}: {exc}") from exc
    return Transaction(summary.txid, summary.commit_ts, summary.kind, summary.first_offset, summary.last_offset,
                       batches)

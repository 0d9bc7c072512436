"""``switchback complete``, the forward funnel restarts: the old timeline's events go, an
initial copy of production is published, and the mirror (equal to it, verified)
continues right after it."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from applier.switchback.context import SwitchbackContext
from applier.switchback.databases import Database
from applier.switchback.reverse import forward_captures_ddl
from applier.switchback.state import Phase, SwitchbackState, advance, note
from funnel.errors import SwitchbackError
from applier.transaction import MirrorPosition
from funnel.control import source_key
from funnel.events import Kind
from funnel.kafka import data_topic, kafka_error
from funnel.reader import FunnelReader
from funnel.topic import ADMIN_TIMEOUT_S


def restart_forward(ctx: SwitchbackContext, state: SwitchbackState, mirror_db: Database, production_db: Database,
                    to_url: str) -> SwitchbackState:
    """From VERIFIED to FORWARD_READY; a rerun after a crash keeps what was done (the deletion is
    recorded, the copy found again).  Raises SwitchbackError, FunnelError."""
    forward = dict(state.forward or {})
    if "low_offset" not in forward:
        low, high = _delete_old_events(ctx)
        forward["low_offset"] = high
        state = ctx.save(note(replace(state, forward=forward), f"forward funnel: deleted the old timeline "
                              f"(offsets {low}..{high - 1})", ctx.clock()), state)
        ctx.echo(f"forward: deleted funnel {ctx.funnel!r}'s events before offset {high} (the timeline before "
                 f"the switchback)")
    # Installed with the event triggers before its slot, so the capture the operator starts next
    # with --capture-ddl misses no schema change made in between.
    capture = ctx.port.open(to_url, ctx.funnel, state.source_name, sorted(production_db.tables()),
                            publish_status=False, capture_ddl=forward_captures_ddl(ctx, state.source_name))
    try:
        position = capture.start()  # the initial copy, or the one a killed rerun already published
    finally:
        capture.close()
    _record_source(ctx, state, production_db, position)
    first, end = _fresh_copy(ctx, forward["low_offset"])
    # The mirror equals production (verified), but re-applies the copy all the same: then it
    # holds production's exact values (a REAL column's 5.0, not the 5 the application wrote
    # on the mirror), as if it had been made from production in the first place.
    mirror_db.write_position(MirrorPosition(ctx.funnel, ctx.mirror, data_topic(ctx.funnel), 0, first,
                                            valid_as_of=state.freeze["at"]))
    forward.update(next_offset=first, snapshot_end_offset=end.last_offset, snapshot_txid=end.txid,
                   copy_at=end.commit_ts, source_position=position)
    ctx.echo(f"forward: initial copy of production published as source {state.source_name!r} at offset "
             f"{first}; mirror {ctx.mirror!r} continues from there (its promotion cleared)")
    return ctx.save(advance(state, Phase.FORWARD_READY, ctx.clock(),
                            f"forward funnel restarts at offset {first} with an initial copy of production",
                            forward=forward), state)


def _record_source(ctx: SwitchbackContext, state: SwitchbackState, production_db: Database, position: int) -> None:
    """Say which database the source continues in: the capture started after the switchback
    finds it there by identity, however production's file or URL is named (producer.lineage)."""
    ctx.control.write(source_key(state.source_name), {
        "source": state.source_name, "identity": production_db.identity(), "url": state.to_url,
        "mirror": ctx.mirror, "cycle": state.cycle, "position": position, "published_at": ctx.clock()})


def _delete_old_events(ctx: SwitchbackContext) -> tuple[int, int]:
    partition = TopicPartition(data_topic(ctx.funnel), 0)
    with FunnelReader(ctx.kafka, ctx.funnel) as reader:
        low, high = reader.watermarks()
    if high > low:
        try:
            futures = ctx.admin.admin.delete_records([TopicPartition(partition.topic, 0, high)],
                                                     request_timeout=ADMIN_TIMEOUT_S)
            for future in futures.values():
                future.result(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            raise kafka_error(exc, f"cannot delete the old events of funnel {ctx.funnel!r}") from exc
    return low, high


def _fresh_copy(ctx: SwitchbackContext, from_offset: int) -> tuple[int, Any]:
    """First offset and end marker of the initial copy published after ``from_offset``."""
    with FunnelReader(ctx.kafka, ctx.funnel) as reader:
        low, high = reader.watermarks()
        copy = []
        for summary in reader.transactions(max(low, from_offset), high):
            if summary.kind in (Kind.SNAPSHOT, Kind.SNAPSHOT_END):
                copy.append(summary)
            if summary.kind is Kind.SNAPSHOT_END:
                return copy[0].first_offset, summary
    raise SwitchbackError(f"no initial copy of production in funnel {ctx.funnel!r} after offset "
                          f"{from_offset}", hint="is a forward capture running? stop it and rerun complete")

"""The reverse direction as the phases use it: open it, report on it, wait for the prepare
that runs it to hand over, and delete its funnel at the end."""
from __future__ import annotations

import time

from confluent_kafka import KafkaException

from applier.applier import Applier, ApplierOptions
from applier.sinks import open_sink
from applier.switchback.context import SwitchbackContext
from applier.switchback.pipeline import ReversePipeline
from applier.switchback.state import SwitchbackState
from funnel.records import REVERSE_MIRROR
from funnel.errors import SwitchbackError
from funnel.control import ControlChannel
from funnel.kafka import control_topic, data_topic, kafka_error
from funnel.timeparse import format_time
from funnel.topic import ADMIN_TIMEOUT_S
from funnel.urls import without_password

HANDOVER_TIMEOUT_S = 30.0  # how long complete/abort wait for a running prepare to stop


def forward_captures_ddl(ctx: SwitchbackContext, source_name: str) -> bool:
    """Whether the forward capture (source ``source_name``) captured schema changes, as its last
    status says: the switchback's own captures then do so too, so that a migration run on the
    promoted mirror reaches production, and one run on production after complete reaches the mirror."""
    status = ctx.control.state().captures().get(source_name)
    return bool(status and status.capture_ddl)


def open_pipeline(ctx: SwitchbackContext, state: SwitchbackState, mirror_url: str, to_url: str) -> ReversePipeline:
    """Capture of the mirror into the reverse funnel, applied to production with delay 0 (not started).
    The capture captures schema changes when the forward capture did (``forward_captures_ddl``)."""
    capture = ctx.port.open(mirror_url, state.reverse_funnel, f"switchback-{ctx.mirror}", list(state.tables),
                            publish_status=True, capture_ddl=forward_captures_ddl(ctx, state.source_name))
    reverse = state.reverse_funnel
    try:
        sink = open_sink(to_url, create_tables=True,
                         table_definitions=lambda: ControlChannel(ctx.kafka, reverse).table_definitions())
    except BaseException:
        capture.close()
        raise
    applier = Applier(ctx.kafka, sink, ApplierOptions(reverse, REVERSE_MIRROR, 0.0))
    applier.sink_url = without_password(to_url)
    return ReversePipeline(capture, applier, ctx.poll_interval_s)


def progress_line(pipeline: ReversePipeline) -> str:
    position = pipeline.applier.position
    valid = format_time(position.valid_as_of) if position and position.valid_as_of else "-"
    stats = pipeline.applier.stats
    return (f"progress: production valid as of {valid}, applied {stats.applied_transactions} tx / "
            f"{stats.applied_rows} rows, captured up to position {pipeline.position}")


def wait_prepare_stopped(ctx: SwitchbackContext, state: SwitchbackState) -> None:
    """Wait until no prepare runs the reverse pipeline (its applier's status is stopped or stale).

    Raises SwitchbackError when it still runs after HANDOVER_TIMEOUT_S."""
    if control_topic(state.reverse_funnel) not in ctx.admin.topics():
        return
    deadline = time.monotonic() + HANDOVER_TIMEOUT_S
    announced = False
    while True:
        status = ControlChannel(ctx.kafka, state.reverse_funnel).state().status(REVERSE_MIRROR)
        if status is None or not status.running(ctx.clock()):
            return
        if time.monotonic() > deadline:
            raise SwitchbackError(f"prepare still runs the reverse direction after {HANDOVER_TIMEOUT_S:.0f}s",
                                  hint="stop the `funnel switchback prepare` process, then rerun this command")
        if not announced:
            ctx.echo("waiting for the running prepare to hand over")
            announced = True
        time.sleep(0.5)


def delete_reverse_funnel(ctx: SwitchbackContext, state: SwitchbackState) -> bool:
    """Best effort: the reverse funnel has done its job; a failure only leaves a topic behind."""
    topics = [t for t in (data_topic(state.reverse_funnel), control_topic(state.reverse_funnel))
              if t in ctx.admin.topics()]
    if not topics:
        return True
    try:
        for future in ctx.admin.admin.delete_topics(topics, operation_timeout=ADMIN_TIMEOUT_S).values():
            future.result(timeout=ADMIN_TIMEOUT_S)
        return True
    except KafkaException as exc:
        ctx.echo(f"warning: could not delete the reverse funnel: {kafka_error(exc, 'delete topics')}")
        return False

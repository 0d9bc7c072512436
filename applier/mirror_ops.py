"""Seek, resume and promote of one mirror, running or stopped: find it, run the command, report progress.

A running applier (``MirrorStatus.running``) gets the command through the control
topic and the caller waits for it; a stopped one is driven in-process against its
sink URL. Never both: two writers would race for the position.  Rendering the progress
is the caller's (the CLI's ``Progress``); this module reports the applier's command
record (``Command.as_dict``) to a callback.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from applier.applier import Applier, ApplierOptions, Command
from applier.pointintime import PointInTimeError, Plan, Target, make_plan, refuse_if_promoted
from applier.sinks import has_mirror_state, open_sink
from applier.transaction import MirrorPosition
from funnel.clock import now_us
from funnel.control import ControlChannel, ControlState
from funnel.errors import ConfigError, TimeFunnelError
from funnel.kafka import KafkaSettings
from funnel.reader import FunnelReader
from funnel.records import CommandRecord, MirrorStatus
from funnel.topic import FunnelAdmin
from funnel.urls import without_password

WAIT_TIMEOUT_S = 3600.0


class ApplierGone(TimeFunnelError):
    """The applier that the status called running stopped or stalled before it ran the command."""

Report = Callable[[dict[str, Any]], None]  # called with the command's progress record


@dataclass
class MirrorHandle:
    """Where a mirror is: a running applier (status record) or a sink we open ourselves."""

    kafka: KafkaSettings
    funnel: str
    mirror: str
    control: ControlState
    sink_url: str | None

    @property
    def status(self) -> MirrorStatus | None:
        return self.control.status(self.mirror)

    @property
    def running(self) -> bool:
        status = self.status
        return status is not None and status.running(now_us())

    def position(self) -> MirrorPosition:
        """The mirror's position: from the sink when given, else from the running applier's status.

        Raises TimeFunnelError for a mirror the sink or the control topic does not know.
        """
        if self.sink_url and not self.running:
            stored = None
            if has_mirror_state(self.sink_url):  # else opening it would make a mirror database of it
                sink = open_sink(self.sink_url)
                try:
                    stored = sink.read_position(self.funnel, self.mirror)
                finally:
                    sink.close()
            if stored is None:
                raise TimeFunnelError(f"mirror {self.mirror!r} does not exist in {without_password(self.sink_url)} "
                                      f"for funnel {self.funnel!r}", hint="check --mirror and --sink")
            return stored
        status = self.status
        if not status:
            raise TimeFunnelError(f"unknown mirror {self.mirror!r} on funnel {self.funnel!r}",
                                  hint="check the mirror id (funnel status), or pass --sink URL")
        return MirrorPosition(self.funnel, self.mirror, self.funnel, 0, status.next_offset, status.last_txid,
                              status.last_commit_ts, status.valid_as_of, status.snapshot_done,
                              status.hold_until, status.promoted_at, status.promote_target,
                              tuple(status.excluded_txids))


def find_mirror(kafka: KafkaSettings, funnel: str, mirror: str, sink_url: str | None,
                check_sink: Callable[[str, str], None] = lambda url, funnel: None) -> MirrorHandle:
    """The mirror, running or reachable through ``sink_url``.

    ``check_sink(url, funnel)`` runs before a stopped mirror's sink is opened for writing
    (the CLI refuses a capture's source database there). Raises TimeFunnelError for an
    unknown mirror, or a stopped one without ``sink_url``; FunnelError for an unknown funnel.
    """
    FunnelAdmin(kafka).describe(funnel)
    handle = MirrorHandle(kafka, funnel, mirror, ControlChannel(kafka, funnel).state(), sink_url)
    if sink_url and not handle.running:
        check_sink(sink_url, funnel)  # the caller is about to open the sink and write to it
    if not handle.running and not sink_url:
        refuse_without_sink(mirror, funnel, handle.status)
    return handle


def refuse_without_sink(mirror: str, funnel: str, status: MirrorStatus | None) -> None:
    """Raises the reason a mirror whose applier does not run cannot be reached without --sink.

    A promoted mirror is refused as promoted first: a --sink would only lead to that refusal.
    """
    if status is None:
        raise TimeFunnelError(f"unknown mirror {mirror!r} on funnel {funnel!r}",
                              hint="check the mirror id (funnel status), or pass --sink URL of a stopped mirror")
    if status.promoted:
        refuse_if_promoted(MirrorPosition(funnel, mirror, funnel, 0, status.next_offset,
                                          promoted_at=status.promoted_at or status.updated_at,
                                          promote_target=status.promote_target))
    raise TimeFunnelError(f"mirror {mirror!r} is not running",
                          hint="pass --sink URL so that this command applies to the mirror itself")


def plan_for(handle: MirrorHandle, target: Target) -> Plan:
    with FunnelReader(handle.kafka, handle.funnel) as reader:
        return make_plan(reader, handle.position(), target)


def new_command(kind: str, to: int | None = None, excluded: tuple[str, ...] = ()) -> Command:
    return Command(uuid.uuid4().hex[:12], kind, to, excluded)


def run_command(handle: MirrorHandle, command: Command, plan: Plan, report: Report = lambda _: None) -> dict[str, Any]:
    """Carry out ``command`` and return the applier's final status (as JSON).

    ``report`` gets the command's progress record each time it is read. A running
    applier that stops or stalls before it finished hands the command over to this
    process when the handle has a sink URL. Raises PointInTimeError when the command
    failed, ApplierGone (a TimeFunnelError) when the applier is gone and there is no sink URL.
    """
    if handle.running:
        try:
            return _through_control(handle, command, report)
        except ApplierGone:
            if not handle.sink_url:
                raise
            # The status was a dead applier's last word (killed -9 within the status's
            # freshness, say): with --sink the command runs here, taking the mirror over
            # (the claim fences that applier should it come back).
    return _in_process(handle, command, plan, report)


def _through_control(handle: MirrorHandle, command: Command, report: Report) -> dict[str, Any]:
    channel = ControlChannel(handle.kafka, handle.funnel)
    channel.write_command(handle.mirror, CommandRecord(command.id, command.kind, command.to, command.excluded))
    channel.close()
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while time.monotonic() < deadline:
        status = ControlChannel(handle.kafka, handle.funnel).state().status(handle.mirror)
        reported = (status.command if status else None) or {}
        if reported.get("id") == command.id:
            report(reported)
            if reported["state"] == "failed":
                raise PointInTimeError(reported.get("error") or f"{command.kind} failed")
            if reported["state"] == "done":
                return status.to_json()
        raise_if_gone(handle.mirror, command, status, now_us())
        time.sleep(0.5)
    raise TimeFunnelError(f"{command.kind} of mirror {handle.mirror!r} did not finish in {WAIT_TIMEOUT_S:.0f}s")


def raise_if_gone(mirror: str, command: Command, status: MirrorStatus | None, now: int) -> None:
    """Tell a stopped or stalled applier from a busy one: a busy one goes on publishing its status
    (every second, also from inside long undos and drains), a stalled one does not."""
    if status is not None and status.state == "stopped":
        raise ApplierGone(f"the applier of mirror {mirror!r} stopped before the {command.kind} finished",
                              hint="rerun the command with --sink URL")
    if status is not None and status.fresh(now):
        return
    reported = (status.command if status else None) or {}
    doing = f" while {reported['phase']}" if reported.get("id") == command.id and reported.get("phase") else ""
    age = status.age_s(now) if status else float("inf")
    raise ApplierGone(f"the applier of mirror {mirror!r} has not reported for {age:.0f}s{doing}: it is "
                          f"stalled or gone, not busy (a busy applier reports every second)",
                          hint="check its process; once it is stopped, rerun the command with --sink URL "
                               "(that takes the mirror over and fences the old applier)")


def drain_window_rows() -> int:
    """Rows per drain window: ``$FUNNEL_DRAIN_WINDOW_ROWS`` or ApplierOptions' default.

    A tuning knob (smaller windows: less memory, more commits); the tests use it to make
    a small funnel take many windows. Raises ConfigError for a value that is not a positive int.
    """
    text = os.environ.get("FUNNEL_DRAIN_WINDOW_ROWS")
    if text is None:
        return ApplierOptions.drain_window_rows
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"FUNNEL_DRAIN_WINDOW_ROWS={text!r} is not a positive number of rows",
                          hint="unset it, or give e.g. 10000")
    return int(text)


def _in_process(handle: MirrorHandle, command: Command, plan: Plan, report: Report) -> dict[str, Any]:
    delay = handle.control.delay(handle.mirror)
    options = ApplierOptions(handle.funnel, handle.mirror, delay.delay_s if delay else 0.0, announce_delay=False,
                             drain_window_rows=drain_window_rows(), decode_worker=True)
    applier = Applier(handle.kafka, open_sink(handle.sink_url), options)
    applier.sink_url = without_password(handle.sink_url)
    applier.start()
    try:
        applier.execute(command, plan)
    except BaseException:
        applier.close()
        raise
    applier.run(until=lambda a: report(a.command.as_dict(a.stats)) or a.command_done())
    if command.state == "failed":
        raise PointInTimeError(command.error or f"{command.kind} failed")
    return applier.status()

"""What seek, resume and promote share: find the mirror, run the command, show progress.

A running applier (its status on the control topic is fresh) gets the command
through the control topic and the CLI waits for it; a stopped one is driven by the
CLI itself against ``--sink URL``. Never both: two writers would race for the position.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import click

from applier.applier import Applier, ApplierOptions, Command
from applier.pointintime import PointInTimeError, Plan, Target, make_plan
from applier.sinks import open_sink
from applier.transaction import MirrorPosition
from funnel.control import ControlChannel, command_key, delay_key, status_is_fresh, status_key
from funnel.errors import TimeFunnelError
from funnel.kafka import KafkaSettings
from funnel.reader import FunnelReader
from funnel.topic import FunnelAdmin
from funnel.urls import without_password
from producer.sources.marks import refuse_capture_source

WAIT_TIMEOUT_S = 3600.0


@dataclass
class MirrorHandle:
    """Where a mirror is: a running applier (status record) or a sink we open ourselves."""

    kafka: KafkaSettings
    funnel: str
    mirror: str
    records: dict[str, dict]
    sink_url: str | None

    @property
    def status(self) -> dict | None:
        return self.records.get(status_key(self.mirror))

    @property
    def running(self) -> bool:
        status = self.status
        return bool(status) and status.get("state") == "running" and status_is_fresh(status, time.time_ns() // 1000)

    def position(self) -> MirrorPosition:
        """The mirror's position: from the sink when given, else from the running applier's status."""
        if self.sink_url and not self.running:
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
        return MirrorPosition(self.funnel, self.mirror, self.funnel, 0, status["next_offset"], status["last_txid"],
                              status["last_commit_ts"], status["valid_as_of"], status["snapshot_done"],
                              status.get("hold_until"), status.get("promoted_at"), status.get("promote_target"),
                              tuple(status.get("excluded_txids") or ()))


def find_mirror(kafka: KafkaSettings, funnel: str, mirror: str, sink_url: str | None) -> MirrorHandle:
    FunnelAdmin(kafka).describe(funnel)
    handle = MirrorHandle(kafka, funnel, mirror, ControlChannel(kafka, funnel).read_all(), sink_url)
    if sink_url and not handle.running:
        refuse_capture_source(sink_url, funnel)  # the CLI is about to open the sink and write to it
    if not handle.running and not sink_url:
        if handle.status is None:
            raise TimeFunnelError(f"unknown mirror {mirror!r} on funnel {funnel!r}",
                                  hint="check the mirror id (funnel status), or pass --sink URL of a stopped mirror")
        raise TimeFunnelError(f"mirror {mirror!r} is not running",
                              hint="pass --sink URL so that this command applies to the mirror itself")
    return handle


def plan_for(handle: MirrorHandle, target: Target) -> Plan:
    with FunnelReader(handle.kafka, handle.funnel) as reader:
        return make_plan(reader, handle.position(), target)


def run_command(handle: MirrorHandle, command: Command, plan: Plan) -> dict[str, Any]:
    """Carry out ``command`` and return the applier's final status. Raises on failure."""
    if handle.running:
        return _through_control(handle, command, plan)
    return _in_process(handle, command, plan)


def _through_control(handle: MirrorHandle, command: Command, plan: Plan) -> dict[str, Any]:
    channel = ControlChannel(handle.kafka, handle.funnel)
    channel.write(command_key(handle.mirror), {"id": command.id, "kind": command.kind, "to": command.to,
                                               "excluded": list(command.excluded)})
    channel.close()
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    progress = Progress(command, plan)
    while time.monotonic() < deadline:
        status = ControlChannel(handle.kafka, handle.funnel).read_all().get(status_key(handle.mirror)) or {}
        reported = status.get("command") or {}
        if reported.get("id") == command.id:
            progress.show(reported)
            if reported["state"] == "failed":
                raise PointInTimeError(reported.get("error") or f"{command.kind} failed")
            if reported["state"] == "done":
                progress.finish()
                return status
        raise_if_gone(handle.mirror, command, status, time.time_ns() // 1000)
        time.sleep(0.5)
    raise TimeFunnelError(f"{command.kind} of mirror {handle.mirror!r} did not finish in {WAIT_TIMEOUT_S:.0f}s")


def raise_if_gone(mirror: str, command: Command, status: dict, now_us: int) -> None:
    """Tell a stopped or stalled applier from a busy one: a busy one goes on publishing its status
    (every second, also from inside long undos and drains), a stalled one does not."""
    if status.get("state") == "stopped":
        raise TimeFunnelError(f"the applier of mirror {mirror!r} stopped before the {command.kind} finished",
                              hint="rerun the command with --sink URL")
    if status_is_fresh(status, now_us):
        return
    reported = status.get("command") or {}
    doing = f" while {reported['phase']}" if reported.get("id") == command.id and reported.get("phase") else ""
    age = (now_us - status.get("updated_at", 0)) / 1e6 if status else float("inf")
    raise TimeFunnelError(f"the applier of mirror {mirror!r} has not reported for {age:.0f}s{doing}: it is "
                          f"stalled or gone, not busy (a busy applier reports every second)",
                          hint="check its process; once it is stopped, rerun the command with --sink URL "
                               "(that takes the mirror over and fences the old applier)")


def _in_process(handle: MirrorHandle, command: Command, plan: Plan) -> dict[str, Any]:
    delay = (handle.records.get(delay_key(handle.mirror)) or {}).get("delay_s", 0.0)
    applier = Applier(handle.kafka, open_sink(handle.sink_url),
                      ApplierOptions(handle.funnel, handle.mirror, float(delay), announce_delay=False))
    applier.sink_url = without_password(handle.sink_url)
    progress = Progress(command, plan)
    applier.start()
    try:
        applier.execute(command, plan)
    except BaseException:
        applier.close()
        raise
    applier.run(until=lambda a: progress.show(a.command.as_dict(a.stats)) or a.command_done())
    if command.state == "failed":
        raise PointInTimeError(command.error or f"{command.kind} failed")
    progress.finish()
    return applier.status()


class Progress:
    """One line on stderr per second for long drains: done, rate, remaining."""

    def __init__(self, command: Command, plan: Plan) -> None:
        self.command = command
        self.plan = plan
        self.started = time.monotonic()
        self.last = 0.0
        self.latest: dict = {}

    def show(self, reported: dict) -> None:
        self.latest = reported
        now = time.monotonic()
        if now - self.last < 1.0:
            return
        self.last = now
        click.echo(self._line(reported), err=True)

    def _line(self, reported: dict, done: bool = False) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        undone_tx, undone_rows = reported.get("undone_transactions", 0), reported.get("undone_rows", 0)
        applied_tx, applied_rows = reported.get("applied_transactions", 0), reported.get("applied_rows", 0)
        plan = self.plan
        head = f"{self.command.kind} {plan.mirror}: " + ("" if done else f"{reported.get('phase') or 'starting'}, ")
        line = (f"{head}undone {undone_tx}/{plan.undo_transactions} tx, "
                f"applied {applied_tx}/{plan.apply_transactions} tx, "
                f"{(undone_rows + applied_rows) / elapsed:,.0f} rows/s")
        if done:
            return line + f", done in {elapsed:.1f}s"
        remaining = max(plan.undo_transactions - undone_tx, 0) + max(plan.apply_transactions - applied_tx, 0)
        return line + f", remaining ~{remaining} tx"

    def finish(self) -> None:
        if time.monotonic() - self.started >= 1.0:
            click.echo(self._line(self.latest, done=True), err=True)


def new_command(kind: str, to: int | None = None, excluded: tuple[str, ...] = ()) -> Command:
    return Command(uuid.uuid4().hex[:12], kind, to, excluded)

"""What seek, resume and promote share on the command line: the library's mirror operations
(``applier.mirror_ops``) with a capture's source refused as a sink, and progress on stderr."""
from __future__ import annotations

import time
from typing import Any

import click

from applier import mirror_ops
from applier.applier import Command
from applier.mirror_ops import MirrorHandle
from applier.pointintime import Plan
from funnel.kafka import KafkaSettings
from producer.sources.marks import refuse_funnel_source


def find_mirror(kafka: KafkaSettings, funnel: str, mirror: str, sink_url: str | None) -> MirrorHandle:
    """``applier.mirror_ops.find_mirror``, refusing a capture's source database as the sink."""
    return mirror_ops.find_mirror(kafka, funnel, mirror, sink_url,
                                  check_sink=lambda url, name: refuse_funnel_source(kafka, url, name))


def run_command(handle: MirrorHandle, command: Command, plan: Plan) -> dict[str, Any]:
    """Carry out ``command``, one progress line a second on stderr; returns the applier's final status."""
    progress = Progress(command, plan)
    status = mirror_ops.run_command(handle, command, plan, progress.show)
    progress.finish()
    return status


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

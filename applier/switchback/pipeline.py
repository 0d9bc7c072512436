"""The reverse direction: capture of the promoted mirror, applied to production with delay 0.

Both halves are the library's own pieces (``producer.capture.Capture`` and
``applier.applier.Applier``), stepped in turn in one thread: the loop decides when the
capture may publish (the freeze watches the changelog while the capture pauses) and
when the applier must have caught up (the drain).  The capture side is built by the CLI
layer (``CapturePort``), so that this package does not import the producer; ``reverse``
opens the pipeline for the phases.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

from applier.applier import Applier


class CaptureLike(Protocol):
    """What the pipeline needs of ``producer.capture.Capture``."""

    stats: Any
    source: Any

    def start(self) -> int: ...
    def step(self, position: int, seal: bool = True) -> tuple[bool, int]: ...
    def close(self) -> None: ...


class CapturePort(Protocol):
    """Capture, built outside this package (see ``funnel.cli.switchback``)."""

    def open(self, url: str, funnel: str, source_name: str, tables: list[str] | None,
             publish_status: bool, capture_ddl: bool = False) -> CaptureLike:
        """A capture of the database at ``url`` into ``funnel``, not started yet; with
        ``capture_ddl`` it captures schema changes too (PostgreSQL)."""
        ...

    def remove(self, url: str, funnel: str) -> list[str]:
        """Remove what a capture of ``url`` into ``funnel`` installed (``Source.uninstall``: triggers
        and changelog, or replication slot and publication); returns what was removed, one item each."""
        ...

    def default_source_name(self, url: str) -> str: ...

    def check(self, url: str, funnel: str, tables: list[str], capture_ddl: bool = False) -> None:
        """Raise if the database at ``url`` cannot be captured into ``funnel`` (a table
        without a key, missing privileges); creates nothing."""
        ...


class ReversePipeline:
    """One capture and one applier, stepped in turn."""

    def __init__(self, capture: CaptureLike, applier: Applier, poll_interval_s: float = 0.2) -> None:
        self.capture = capture
        self.applier = applier
        self.poll_interval_s = poll_interval_s
        self.position: int | None = None
        self._backlog = False
        self._next_capture = 0.0

    def start(self) -> None:
        """Install the capture (idempotent), copy the mirror if the reverse funnel has no copy yet,
        and start the applier from production's stored position."""
        self.position = self.capture.start()
        self.applier.start()

    def step_capture(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_capture:
            return
        self._backlog, self.position = self.capture.step(self.position, seal=not self._backlog)
        self._next_capture = now if self._backlog else now + self.poll_interval_s

    def step_applier(self) -> int:
        return self.applier.step(poll_timeout_s=0.05)

    def step(self) -> None:
        self.step_capture()
        self.step_applier()

    def copy_applied(self) -> bool:
        return self.applier.position is not None and self.applier.position.snapshot_done

    def caught_up(self) -> bool:
        """Production applied everything the reverse funnel holds."""
        return self.applier.caught_up()

    def close(self) -> None:
        """Capture first: once the applier reports 'stopped', nothing of this pipeline runs."""
        try:
            self.capture.close()
        finally:
            self.applier.close()  # also closes production's connection when never started

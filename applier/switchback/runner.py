"""The switchback's entry points: one ``Switchback`` per promoted mirror, one method per command.

Each command is a phase module over one ``SwitchbackContext`` (``context``), around the
pure state machine (``state``): ``prepare`` (set up the reverse direction and follow),
``complete`` (``freeze`` and drain, verify, ``forward`` restart, take over, clean up),
``abort`` and ``report`` (status).  Every step is recorded and idempotent, so a rerun of
a command after kill -9 goes on from the last recorded step.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from applier.switchback import abort, complete, prepare, report
from applier.switchback.complete import CompleteOptions
from applier.switchback.context import HookRunner, SwitchbackContext
from applier.switchback.pipeline import CapturePort
from applier.switchback.state import SwitchbackState
from funnel.clock import now_us
from funnel.hooks import run_hook
from funnel.kafka import KafkaSettings

__all__ = ["CompleteOptions", "Switchback"]


class Switchback:
    """Switchback of one promoted mirror of one funnel.  Raises ConfigError for an invalid mirror id."""

    def __init__(self, kafka: KafkaSettings, funnel: str, mirror: str, port: CapturePort,
                 run_hook: HookRunner = run_hook, echo: Callable[[str], None] = print,
                 clock: Callable[[], int] = now_us, poll_interval_s: float = 0.2) -> None:
        self.context = SwitchbackContext(kafka, funnel, mirror, port, run_hook, echo, clock, poll_interval_s)

    def prepare(self, to_url: str, from_url: str | None = None, source_name: str | None = None,
                stop: threading.Event | None = None) -> SwitchbackState:
        """See ``prepare.prepare``."""
        return prepare.prepare(self.context, to_url, from_url, source_name, stop)

    def complete(self, options: CompleteOptions) -> SwitchbackState:
        """See ``complete.complete``."""
        return complete.complete(self.context, options)

    def abort(self, from_url: str | None = None, to_url: str | None = None) -> SwitchbackState:
        """See ``abort.abort``."""
        return abort.abort(self.context, from_url, to_url)

    def status(self) -> dict[str, Any]:
        """See ``report.status``."""
        return report.status(self.context)

    def close(self) -> None:
        self.context.close()

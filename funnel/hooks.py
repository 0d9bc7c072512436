"""Operator hooks: shell commands run at a takeover or a freeze (``promote --on-promote``,
``switchback complete --freeze-hook/--takeover-hook``).

A hook moves a service address or stops an application; timefunnel only runs it, with
what happened in its environment (``FUNNEL_*``), and reports how it went.  A hook never
sees a password: every URL in its environment goes without one (it connects with its
own credentials, e.g. .pgpass).
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict, dataclass

from funnel.urls import without_password

DEFAULT_TIMEOUT_S = 600.0
TIMED_OUT = 124  # the exit code timeout(1) uses


@dataclass(frozen=True)
class HookResult:
    command: str
    exit_code: int
    output: str  # stdout then stderr
    seconds: float
    environment: dict[str, str]  # the FUNNEL_* variables it was given (passwords removed)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self, step: str) -> str:
        """``<step>: hook exited N after S s`` and its output on the lines below."""
        output = self.output.rstrip()
        return f"{step}: hook exited {self.exit_code} after {self.seconds}s" + (f":\n{output}" if output else "")


def run_hook(command: str, env: dict[str, str], timeout_s: float = DEFAULT_TIMEOUT_S) -> HookResult:
    """Run ``command`` in a shell with ``env`` added to this process's environment; never raises.

    A hook that runs longer than ``timeout_s`` is killed and reported with exit code 124.
    """
    env = {name: _no_password(value) for name, value in env.items()}
    started = time.monotonic()
    try:
        done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, **env})
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        code, output = TIMED_OUT, f"hook timed out after {timeout_s:.0f}s: {partial}"
    return HookResult(command, code, output, round(time.monotonic() - started, 3), env)


def _no_password(value: str) -> str:
    try:
        return without_password(value)
    except ValueError:  # not a URL at all (e.g. an unbalanced "[")
        return value

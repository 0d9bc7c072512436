"""``funnel broker start|stop|status`` through the real console entry point."""
from __future__ import annotations

import json
import socket
import subprocess
import sys


def funnel(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "funnel.cli", *args], capture_output=True,
                          text=True, timeout=180, env=env)


def test_start_twice_runs_one_broker_and_stop_is_idempotent(tmp_path):
    state = str(tmp_path / "state")
    first = funnel("broker", "start", "--state-dir", state)
    assert first.returncode == 0, first.stderr
    try:
        second = funnel("broker", "start", "--state-dir", state)
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip() == first.stdout.strip()  # same bootstrap address
        assert "already running" in second.stderr
        status = json.loads(funnel("broker", "status", "--state-dir", state, "--json").stdout)
        assert status["running"] is True and status["bootstrap"] == first.stdout.strip()
        assert status["version"].startswith("4.")
    finally:
        stopped = funnel("broker", "stop", "--state-dir", state)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    again = funnel("broker", "stop", "--state-dir", state)
    assert again.returncode == 0 and "no broker running" in again.stdout
    status = json.loads(funnel("broker", "status", "--state-dir", state, "--json").stdout)
    assert status["running"] is False


def test_port_taken_reports_the_brokers_log(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = funnel("broker", "start", "--state-dir", str(tmp_path / "s"), "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.startswith("Error: the broker exited")
    assert "ERROR" in result.stderr  # the broker's own log lines are quoted
    assert "Try: choose another --port" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_java_is_one_clear_error(tmp_path):
    result = funnel("broker", "start", "--state-dir", str(tmp_path / "s"),
                    env_extra={"FUNNEL_JAVA": str(tmp_path / "no-such-java")})
    assert result.returncode == 1
    assert "cannot run Java" in result.stderr and "Traceback" not in result.stderr

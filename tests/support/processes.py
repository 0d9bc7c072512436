"""Running the real `funnel` CLI as processes, and comparing SQLite files."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]


def funnel_env(bootstrap: str) -> dict[str, str]:
    return {**os.environ, "FUNNEL_BOOTSTRAP": bootstrap, "PYTHONPATH": str(ROOT)}


def run_funnel(bootstrap: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "funnel.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=funnel_env(bootstrap), cwd=ROOT)


class Background:
    """A long-running `funnel` command (capture, apply) whose output goes to a log file."""

    def __init__(self, bootstrap: str, log: Path, *args: str) -> None:
        self.args = args
        self.log = log
        self.handle = open(log, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "funnel.cli", *args], stdout=self.handle,
                                        stderr=subprocess.STDOUT, env=funnel_env(bootstrap), cwd=ROOT)

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                # A capture finishing a Kafka commit or waiting for SQLite's write lock
                # may take its own 30 s timeouts before it can exit; give it that and more.
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self.handle.close()
        return self.process.returncode

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_funnel(bootstrap: str, procs: list, tmp_path: Path, *args: str) -> Background:
    """Start `funnel ARGS` in the background, logging to tmp_path, stopped at the test's end (procs)."""
    name = "-".join(args[:2]) if args[0] == "switchback" else args[0]
    proc = Background(bootstrap, tmp_path / f"{name}-{len(procs)}.log", *args)
    procs.append(proc)
    return proc


def start_writer(db: Path, seconds: float, tx_rows: int = 5, pause: float = 0.002, seed: int = 1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.support.writer", str(db), "--seconds", str(seconds),
                             "--tx-rows", str(tx_rows), "--pause", str(pause), "--seed", str(seed)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def write_transaction(db: Path, *statements: str) -> None:
    """One application transaction on a connection of its own (a writer may hold another)."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=60)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in statements:
            conn.execute(statement)
        conn.execute("COMMIT")
    finally:
        conn.close()


def table_rows(db: Path, table: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()
    finally:
        conn.close()


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except sqlite3.OperationalError:
            pass  # the mirror's table may not exist yet
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def mirror_equals(prod: Path, mirror: Path, tables: list[str]) -> bool:
    return all(table_rows(prod, t) == table_rows(mirror, t) for t in tables)

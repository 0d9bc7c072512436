"""Trust under real conditions: capture and applier killed with kill -9 again and again,
the broker killed and restarted, while a bank moves money in production and a reader
checks the mirror's invariants on every read.

These tests kill and restart a broker, so they run their own (``LocalBroker`` in a
temporary state directory), never the session broker the other tests share.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from funnel.broker import LocalBroker, pid_alive
from funnel.codec import EventCodec
from funnel.kafka import KafkaSettings
from funnel.reader import FunnelReader
from tests.support import bank
from tests.support.processes import ROOT, run_funnel, start_funnel, table_rows, wait_for

POLL = "20ms"  # small capture groups: many transactions, many places to be killed in


@pytest.fixture(scope="module")
def own_broker():
    """A broker of this module alone, which its tests may kill and restart."""
    with tempfile.TemporaryDirectory(prefix="timefunnel-outage-broker-") as state:
        with LocalBroker(state) as broker:
            yield broker
        LocalBroker(state).stop()  # the one `funnel broker start` brought back, if any


def kill_broker(broker: LocalBroker) -> None:
    """kill -9 the broker's JVM, as a crash would."""
    info = broker.running()
    assert info is not None, "the broker should run"
    os.kill(info.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(info.pid), 30, what="the broker to die")
    LocalBroker._reap(info.pid)


def restart_broker(broker: LocalBroker) -> str:
    """`funnel broker start` on the crashed broker's state directory; returns the address it printed."""
    result = subprocess.run([sys.executable, "-m", "funnel.cli", "broker", "start", "--state-dir",
                             str(broker.state_dir)], capture_output=True, text=True, timeout=240, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def funnel_ledger_numbers(bootstrap: str, funnel: str) -> list[int]:
    """Every ledger number the funnel holds, read back and decoded, doubles included."""
    codec = EventCodec()
    numbers: list[int] = []
    with FunnelReader(KafkaSettings(bootstrap), funnel) as reader:
        low, high = reader.watermarks()
        for tx in reader.transactions(low, high, keep_payloads=True):
            for payload in tx.payloads:
                for group in codec.decode(payload).changes:
                    if group.table.rsplit(".", 1)[-1] == "ledger":
                        index = group.columns.index("n")
                        numbers += [row.after[index] for row in group.rows if row.after is not None]
    return numbers


def test_bank_survives_kill9_and_broker_restart(own_broker, tmp_path):
    boot = own_broker.bootstrap
    funnel = "bank"
    assert run_funnel(boot, "create", funnel, "--retention", "1d").returncode == 0
    prod, mirror = tmp_path / "prod.db", tmp_path / "mirror.db"
    bank.create_bank(str(prod))
    procs: list = []
    capture_args = ("capture", f"sqlite:///{prod}", "--funnel", funnel, "--poll-interval", POLL)
    apply_args = ("apply", f"sqlite:///{mirror}", "--funnel", funnel, "--mirror", "m", "--delay", "0")
    try:
        capture = start_funnel(boot, procs, tmp_path, *capture_args)
        applier = start_funnel(boot, procs, tmp_path, *apply_args)
        wait_for(lambda: len(table_rows(mirror, "accounts")) == bank.ACCOUNTS, 60, what="the initial copy")
        writer = subprocess.Popen([sys.executable, "-m", "tests.support.bank", str(prod), "--seconds", "120"],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        with bank.MirrorChecker(mirror) as checker:
            for _ in range(3):
                time.sleep(1.0)
                capture.kill9()
                capture = start_funnel(boot, procs, tmp_path, *capture_args)
                time.sleep(1.0)
                applier.kill9()
                applier = start_funnel(boot, procs, tmp_path, *apply_args)
            # The broker goes down under a capture and an applier that run, not ones still starting.
            written = len(table_rows(prod, "ledger"))
            wait_for(lambda: len(table_rows(mirror, "ledger")) > written, 90, what="the restarted pair to apply")
            kill_broker(own_broker)
            time.sleep(3)  # production keeps writing while the broker is down (and while it restarts)
            assert restart_broker(own_broker) == boot, "the broker must come back where its clients look"
            writer.send_signal(signal.SIGTERM)
            last = int(writer.communicate(timeout=60)[0])
            wait_for(lambda: table_rows(mirror, "ledger")[-1:] == table_rows(prod, "ledger")[-1:], 120,
                     what="the mirror to catch up after the broker restart")
        assert capture.alive() and applier.alive(), "capture and applier ride through a broker restart"
        assert checker.error is None and checker.reads > 50, (checker.error, checker.reads)
        assert checker.violations == [], checker.violations[:5]
        assert table_rows(mirror, "accounts") == table_rows(prod, "accounts")
        assert table_rows(mirror, "ledger") == table_rows(prod, "ledger")
        assert len(table_rows(mirror, "ledger")) == last > 100
        missing, doubled = bank.ledger_counts(funnel_ledger_numbers(boot, funnel))
        assert (missing, doubled) == ([], [])
    finally:
        for proc in procs:
            proc.stop()


def test_fenced_capture_says_so(bootstrap, funnel_name, tmp_path):
    """A second capture of the same source fences the first, which stops and says why."""
    prod = tmp_path / "prod.db"
    bank.create_bank(str(prod))
    procs: list = []
    args = ("capture", f"sqlite:///{prod}", "--funnel", funnel_name, "--heartbeat", "200ms")
    try:
        first = start_funnel(bootstrap, procs, tmp_path, *args)
        wait_for(lambda: funnel_has_events(bootstrap, funnel_name), 60, what="the initial copy")
        second = start_funnel(bootstrap, procs, tmp_path, *args, "-v")
        wait_for(lambda: not first.alive(), 90, what="the fenced capture to stop")
        assert first.process.returncode == 1
        output = first.output()
        assert "Error: " in output and "fenced by a newer capture of this source" in output, output[-2000:]
        assert "check --bootstrap" not in output and "Traceback" not in output, output[-2000:]
        # librdkafka's own CRITICAL lines about the fencing stay hidden without -v.
        assert "funnel.librdkafka" not in output, output[-2000:]
        assert "retrying" not in output, "a fenced capture must not retry: it would fence the newer one"
        assert second.alive(), second.output()[-2000:]
    finally:
        for proc in procs:
            proc.stop()


def funnel_has_events(bootstrap: str, funnel: str) -> bool:
    with FunnelReader(KafkaSettings(bootstrap), funnel) as reader:
        low, high = reader.watermarks()
        return high > low


def test_capture_gives_up_after_the_given_time(own_broker, tmp_path):
    """With the broker gone for good, capture exits 1 with one clear Error line after --give-up-after."""
    boot = own_broker.bootstrap
    funnel = "giveup"
    assert run_funnel(boot, "create", funnel, "--retention", "1d").returncode == 0
    prod = tmp_path / "prod.db"
    bank.create_bank(str(prod))
    procs: list = []
    try:
        capture = start_funnel(boot, procs, tmp_path, "capture", f"sqlite:///{prod}", "--funnel", funnel,
                               "--give-up-after", "5s")
        wait_for(lambda: funnel_has_events(boot, funnel), 60, what="the initial copy")
        kill_broker(own_broker)
        stopped = time.monotonic()
        wait_for(lambda: not capture.alive(), 120, what="capture to give up")
        took = time.monotonic() - stopped
        output = capture.output()
        assert capture.process.returncode == 1, output[-2000:]
        assert "Error: capture gave up after 5s" in output and "Try: " in output, output[-2000:]
        assert "Traceback" not in output, output[-3000:]
        assert took >= 5, f"gave up after {took:.1f}s, before --give-up-after"
    finally:
        for proc in procs:
            proc.stop()


def test_capture_reconnects_a_dropped_replication_stream(bootstrap, funnel_name, pg_databases, tmp_path):
    """The walsender is terminated twice while production writes: capture reconnects from the
    slot's confirmed position and the funnel holds every transaction exactly once."""
    import psycopg

    prod, _ = pg_databases
    with psycopg.connect(prod, autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (n integer PRIMARY KEY, src integer NOT NULL, dst integer NOT NULL, "
                     "amount integer NOT NULL)")
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        with psycopg.connect(prod, autocommit=True) as conn:
            while not stop.is_set():
                n = len(written) + 1
                conn.execute("INSERT INTO ledger VALUES (%s, 0, 1, 5)", (n,))
                written.append(n)
                time.sleep(0.005)

    procs: list = []
    writer = threading.Thread(target=write, daemon=True)
    try:
        capture = start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name,
                               "--poll-interval", POLL)
        wait_for(lambda: funnel_has_events(bootstrap, funnel_name), 60, what="the initial copy")
        writer.start()
        for _ in range(2):
            wait_for(lambda: len(written) > 50 and walsender_of(prod)[1] is not None, 60,
                     what="capture to stream while production writes")
            terminated = walsender_of(prod)[1]
            with psycopg.connect(prod, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (terminated,))
            wait_for(lambda: walsender_of(prod)[1] not in (None, terminated), 60, what="capture to reconnect")
            time.sleep(1)
        stop.set()
        writer.join(30)
        wait_for(lambda: max(funnel_ledger_numbers(bootstrap, funnel_name), default=0) == len(written), 90,
                 what="every transaction in the funnel")
        assert capture.alive(), capture.output()[-2000:]
        assert capture.output().count("capture resumed") >= 2, capture.output()[-2000:]
        numbers = funnel_ledger_numbers(bootstrap, funnel_name)
        assert bank.ledger_counts(numbers) == ([], []) and len(numbers) == len(written)
    finally:
        stop.set()
        for proc in procs:
            proc.stop()


def walsender_of(url: str) -> tuple[str, int | None]:
    """(slot name, pid of the walsender streaming it) of the one slot of the database at ``url``."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT slot_name, active_pid FROM pg_replication_slots "
                            "WHERE database = current_database()").fetchone()

"""Every expected error of the real CLI: exit 1, one ``Error:`` line, a ``Try:`` line, no
traceback, nothing left behind (issue 10, part 6).

The commands run as processes against the session broker; independent ones run in
parallel threads so that the whole file stays cheap on a loaded machine.
"""
from __future__ import annotations

import socket
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka.admin import AdminClient

from funnel.control import ControlChannel
from funnel.kafka import KafkaSettings
from producer.library import Publisher
from tests.support.processes import run_funnel

HUGE = "9" * 300  # a duration of hundreds of digits


def expect_one_error(result: subprocess.CompletedProcess) -> str:
    """The Error line of a refused command, after checking the whole contract."""
    shown = f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.returncode == 1, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    lines = result.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Error", "Try"], shown  # and no librdkafka log lines
    return lines[0]


def run_parallel(bootstrap: str, *commands: tuple[str, ...]) -> list[tuple[subprocess.CompletedProcess, float]]:
    """Run each command as its own `funnel` process, all at once; (result, seconds) in order."""
    def timed(args: tuple[str, ...]) -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        result = run_funnel(bootstrap, *args)
        return result, time.monotonic() - started

    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(timed, commands))


def closed_port() -> int:
    """A loopback port nobody listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def topics_named(bootstrap: str, prefix: str) -> list[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return sorted(t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix))


def test_an_unreachable_broker_is_one_error_line_in_bounded_time(tmp_path):
    bootstrap = f"127.0.0.1:{closed_port()}"
    fast = ("--connect-timeout", "2s")
    commands = [
        ("create", "shop", "--retention", "1d", *fast),
        ("apply", f"sqlite://{tmp_path / 'mirror.db'}", "--funnel", "shop", "--mirror", "m1", "--delay", "1m", *fast),
        ("capture", f"sqlite://{tmp_path / 'prod.db'}", "--funnel", "shop", *fast),
        ("delay", "m1", "5m", "--funnel", "shop", *fast),
        ("inspect", "--funnel", "shop", *fast),
        ("seek", "m1", "--to", "-1m", "--funnel", "shop", *fast),
        ("resume", "m1", "--funnel", "shop", *fast),
        ("promote", "m1", "--funnel", "shop", *fast),
        ("status", "--funnel", "shop"),  # the default timeout must be sane as well
    ]
    for args, (result, seconds) in zip(commands, run_parallel(bootstrap, *commands)):
        line = expect_one_error(result)
        assert line.startswith(f"Error: cannot reach the Kafka broker at {bootstrap}") and "refused" in line, args
        assert "--bootstrap" in result.stderr.splitlines()[1]
        # Bounded by the timeout plus the start of nine Python processes at once on a
        # loaded 2-core machine (measured up to 15 s); before, 30 s and a traceback.
        assert seconds < (25 if args[-1] == "2s" else 45), (args, seconds)
    assert not (tmp_path / "mirror.db").exists() and not (tmp_path / "prod.db").exists()


def test_bad_kafka_settings_are_one_error_line(bootstrap):
    unknown, malformed = run_parallel(bootstrap, ("status", "--funnel", "shop", "-X", "no.such.setting=1"),
                                      ("status", "--funnel", "shop", "-X", "socket.timeout.ms=soon"))
    assert 'No such configuration property: "no.such.setting"' in expect_one_error(unknown[0])
    assert 'Invalid value for configuration property "socket.timeout.ms"' in expect_one_error(malformed[0])


def test_refused_creates_leave_no_topic_behind(bootstrap, funnel_name, topic_name):
    """funnel_name (= topic_name) exists; every other name here must not, afterwards."""
    prefix = f"{topic_name}x"
    cases = {
        "long": ("create", prefix + "a" * (245 - len(prefix)), "--retention", "1d"),
        "dotdot": ("create", "..", "--retention", "1d"),
        # Kafka treats '.' and '_' alike: this data topic collides with funnel_name.control.
        "collision": ("create", f"{funnel_name}_control", "--retention", "1d"),
        # The broker refuses both topics: more replicas than brokers.
        "replicas": ("create", prefix + "-rf", "--retention", "1d", "--replication-factor", "3"),
        # The broker refuses only the data topic (its min.insync.replicas): the control
        # topic it made is deleted again.
        "half": ("create", prefix + "-half", "--retention", "1d", "--min-insync-replicas", "-1"),
        "overflow": ("create", prefix + "-big", "--retention", f"{HUGE}d"),
    }
    results = dict(zip(cases, run_parallel(bootstrap, *cases.values())))
    lines = {name: expect_one_error(result) for name, (result, _) in results.items()}
    assert "too long" in lines["long"] and "'..'" in lines["dotdot"]
    assert f"collide with the existing topic '{funnel_name}.control'" in lines["collision"]
    assert "replication factor" in lines["replicas"] and "min.insync.replicas" in lines["half"]
    assert "too long" in lines["overflow"]
    # A broker's refusal says what to change, not to check the address.
    assert "--replication-factor" in results["replicas"][0].stderr.splitlines()[1]
    assert "--bootstrap" not in results["half"][0].stderr
    assert topics_named(bootstrap, topic_name) == [funnel_name, f"{funnel_name}.control"]
    assert topics_named(bootstrap, ".") == []


def test_mirror_ids_are_checked_alike_by_every_command(bootstrap, funnel_name, tmp_path):
    mirror = tmp_path / "mirror.db"
    results = run_parallel(
        bootstrap, ("delay", "a/b", "5m", "--funnel", funnel_name),
        ("apply", f"sqlite://{mirror}", "--funnel", funnel_name, "--mirror", "a/b", "--delay", "1m"),
        ("seek", "a/b", "--to", "-1m", "--funnel", funnel_name),
        ("inspect", "--funnel", funnel_name, "--mirror", "a/b"))
    lines = {expect_one_error(result) for result, _ in results}
    assert lines == {"Error: invalid mirror id 'a/b': use 1 to 200 letters, digits, '.', '_' and '-'"}
    assert not mirror.exists()


def test_refused_apply_and_overflowing_delays_leave_nothing_behind(bootstrap, funnel_name, tmp_path):
    mirror = tmp_path / "mirror.db"
    no_delay, huge_apply, huge_delay, no_metrics = run_parallel(
        bootstrap, ("apply", f"sqlite://{mirror}", "--funnel", funnel_name, "--mirror", "m1"),
        ("apply", f"sqlite://{tmp_path / 'other.db'}", "--funnel", funnel_name, "--mirror", "m2", "--delay", HUGE),
        ("delay", "m1", f"{HUGE}s", "--funnel", funnel_name),
        # an address this machine does not have (TEST-NET-1): the metrics cannot be served
        ("apply", f"sqlite://{tmp_path / 'third.db'}", "--funnel", funnel_name, "--mirror", "m3", "--delay", "1m",
         "--metrics-port", "0", "--metrics-addr", "192.0.2.1"))
    assert "no delay known for mirror 'm1'" in expect_one_error(no_delay[0])
    assert "cannot serve metrics on 192.0.2.1" in expect_one_error(no_metrics[0])
    assert "too long" in expect_one_error(huge_apply[0]) and "too long" in expect_one_error(huge_delay[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # nor the delay: the refused starts' --delay 1m is not what other commands now see
    state = ControlChannel(KafkaSettings(bootstrap), funnel_name).state()
    assert state.delay("m2") is None and state.delay("m3") is None


def test_the_postgresql_connection_error_is_one_line(bootstrap, funnel_name):
    url = f"postgresql://app:secret@127.0.0.1:{closed_port()}/shop"
    line = expect_one_error(run_funnel(bootstrap, "capture", url, "--funnel", funnel_name))
    assert "cannot connect to PostgreSQL" in line and "Connection refused" in line and "secret" not in line


def test_inspect_prints_the_readmes_example(bootstrap, funnel_name):
    with Publisher(funnel_name, bootstrap=bootstrap, source="shop") as pub:
        with pub.transaction() as tx:
            for key in range(120):
                tx.insert("orders", {"id": key}, {"id": key, "total": 1.5})
        with pub.transaction() as tx:
            for key in range(120):
                tx.delete("orders", {"id": key}, {"id": key, "total": 1.5})
    found = run_funnel(bootstrap, "inspect", "--funnel", funnel_name, "--since", "-1h", "--op", "delete",
                       "--min-rows", "100")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert len(lines) == 1 and "txid shop-2 " in lines[0] and lines[0].endswith("120 rows: orders delete 120")


def test_a_wrong_sink_is_refused_and_left_as_it_was(bootstrap, funnel_name, tmp_path):
    # a careless --sink: a file that does not exist, or production instead of the mirror
    missing, production = tmp_path / "missing.db", tmp_path / "prod.db"
    conn = sqlite3.connect(production)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    commands = []
    for sink in (missing, production):
        for command in (("seek", "m1", "--to", "-1m"), ("promote", "m1"), ("resume", "m1"),
                        ("inspect", "--mirror", "m1", "--since", "-1h")):
            commands.append((*command, "--funnel", funnel_name, "--sink", f"sqlite://{sink}"))
    for result, _ in run_parallel(bootstrap, *commands):
        assert "Error: mirror 'm1' does not exist in sqlite://" in expect_one_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prod.db"], "no mirror file made, no -wal left"
    conn = sqlite3.connect(production)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("orders",)], "no state table added"
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",), "not switched to WAL"
    conn.close()


def test_switchback_of_a_mirror_with_a_keyless_table_is_refused_before_anything_changes(
        bootstrap, funnel_name, tmp_path):
    mirror, production = tmp_path / "mirror.db", tmp_path / "prod.db"
    with Publisher(funnel_name, bootstrap=bootstrap, source="shop") as pub:
        with pub.transaction() as tx:
            tx.insert("orders", {"id": 1}, {"id": 1, "total": 1.5})
    applied = run_funnel(bootstrap, "apply", f"sqlite://{mirror}", "--funnel", funnel_name, "--mirror", "m1",
                         "--delay", "0s", "--until-caught-up")
    assert applied.returncode == 0, applied.stderr
    promoted = run_funnel(bootstrap, "promote", "m1", "--funnel", funnel_name, "--sink", f"sqlite://{mirror}")
    assert promoted.returncode == 0, promoted.stderr
    conn = sqlite3.connect(mirror)  # the application, now on the mirror, made a table without a key
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    line = expect_one_error(run_funnel(bootstrap, "switchback", "prepare", "--funnel", funnel_name,
                                       "--mirror", "m1", "--to", f"sqlite://{production}"))
    assert "cannot be captured for the switchback" in line and '"notes"' in line, line
    assert not production.exists(), "production was not reset"
    assert topics_named(bootstrap, f"{funnel_name}.switchback") == [], "no reverse funnel"
    records = ControlChannel(KafkaSettings(bootstrap), funnel_name).read_all()
    assert "switchback/m1" not in records, "no switchback recorded"


def test_directories_that_cannot_be_made_are_one_error_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    demo, start, stop = (result for result, _ in run_parallel(
        "127.0.0.1:1", ("demo", "--workdir", str(blocker / "demo")),
        ("broker", "start", "--state-dir", str(blocker / "broker")),
        ("broker", "stop", "--state-dir", str(blocker / "broker"))))
    line = expect_one_error(demo)
    assert "cannot make the demo's directory" in line and "Not a directory" in line, line
    for result in (start, stop):
        line = expect_one_error(result)
        assert "cannot use the broker's state directory" in line and "Not a directory" in line, line

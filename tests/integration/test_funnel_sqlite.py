"""The time funnel end to end on SQLite files, through the real broker and the real CLI.

Production and mirror are real SQLite files; capture and apply run as `funnel`
processes (so kill -9 is real); the application is a separate writer process.
"""
from __future__ import annotations

import json
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from funnel.clock import now_us
from funnel.codec import EventCodec
from funnel.control import ControlChannel
from funnel.events import Kind
from funnel.kafka import KafkaSettings
from funnel.reader import FunnelReader
from tests.support.processes import (Background, mirror_equals, run_funnel, start_writer, table_rows,
                                     wait_for)
from tests.support.writer import create_schema

TABLES = ["events", "counters"]


def capture(bootstrap, procs, tmp_path, prod: Path, funnel: str, *extra: str) -> Background:
    proc = Background(bootstrap, tmp_path / f"capture-{len(procs)}.log", "capture", f"sqlite://{prod}",
                      "--funnel", funnel, *extra)
    procs.append(proc)
    return proc


def apply(bootstrap, procs, tmp_path, mirror: Path, funnel: str, mirror_id: str, delay: str | None) -> Background:
    args = ["apply", f"sqlite://{mirror}", "--funnel", funnel, "--mirror", mirror_id]
    if delay is not None:
        args += ["--delay", delay]
    proc = Background(bootstrap, tmp_path / f"apply-{mirror_id}-{len(procs)}.log", *args)
    procs.append(proc)
    return proc


def funnel_transactions(bootstrap: str, funnel: str) -> list:
    """Every transaction in the funnel, decoded: [(summary, [ChangeBatch...])]."""
    codec = EventCodec()
    with FunnelReader(KafkaSettings(bootstrap), funnel) as reader:
        low, high = reader.watermarks()
        return [(tx, [codec.decode(p) for p in tx.payloads])
                for tx in reader.transactions(low, high, keep_payloads=True)]


def commit_ts_of_event(transactions: list, event_id: int) -> int:
    for summary, batches in transactions:
        for batch in batches:
            for group in batch.changes:
                if group.table == "events" and any(r.after and r.after[0] == event_id for r in group.rows):
                    return summary.commit_ts
    raise AssertionError(f"event {event_id} not found in the funnel")


def insert_event(prod: Path, event_id: int, tx: int = -1) -> float:
    conn = sqlite3.connect(prod, timeout=30)
    with conn:
        conn.execute("INSERT INTO events (id, tx, v) VALUES (?, ?, 'marker')", (event_id, tx))
    conn.close()
    return time.time()


def has_event(mirror: Path, event_id: int) -> bool:
    if not mirror.exists():
        return False
    conn = sqlite3.connect(f"file:{mirror}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone() is not None
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def wait_snapshot_applied(mirror: Path, timeout: float = 60) -> None:
    wait_for(lambda: mirror.exists() and len(table_rows(mirror, "counters")) == 10, timeout,
             what="the initial copy on the mirror")


def test_initial_copy_of_100k_rows_while_the_application_writes(bootstrap, funnel_name, procs, tmp_path):
    prod, mirror = tmp_path / "prod.db", tmp_path / "mirror.db"
    create_schema(str(prod))
    conn = sqlite3.connect(prod)
    conn.executemany("INSERT INTO events (tx, v, amount, payload) VALUES (0, ?, ?, ?)",
                     ((f"row{i}", i * 0.25, i.to_bytes(4, "big")) for i in range(100_000)))
    conn.commit()
    conn.close()
    writer = start_writer(prod, seconds=8, tx_rows=5)
    time.sleep(0.5)  # the application is busy before capture starts
    capture(bootstrap, procs, tmp_path, prod, funnel_name)
    apply(bootstrap, procs, tmp_path, mirror, funnel_name, "m1", "0s")
    assert writer.wait(60) == 0
    wait_for(lambda: mirror_equals(prod, mirror, TABLES), 90, 0.5, "the mirror to equal production")
    rows = table_rows(mirror, "events")
    assert len(rows) > 100_000 and rows == table_rows(prod, "events")
    assert sum(n for _, n in table_rows(mirror, "counters")) > 0


def test_no_change_is_visible_before_commit_plus_delay(bootstrap, funnel_name, procs, tmp_path):
    prod, mirror = tmp_path / "prod.db", tmp_path / "mirror.db"
    create_schema(str(prod))
    capture(bootstrap, procs, tmp_path, prod, funnel_name)
    apply(bootstrap, procs, tmp_path, mirror, funnel_name, "m1", "3s")
    wait_snapshot_applied(mirror)
    markers = list(range(1_000_001, 1_000_006))
    first_seen: dict[int, float] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for marker in markers:
                if marker not in first_seen and has_event(mirror, marker):
                    first_seen[marker] = time.time()
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for marker in markers:
            insert_event(prod, marker)
            time.sleep(0.7)
        wait_for(lambda: len(first_seen) == len(markers), 30, what="every marker on the mirror")
    finally:
        done.set()
        watcher.join()
    transactions = funnel_transactions(bootstrap, funnel_name)
    for marker in markers:
        due = commit_ts_of_event(transactions, marker) / 1e6 + 3.0
        assert first_seen[marker] >= due, f"marker {marker} visible {due - first_seen[marker]:.3f}s early"
        assert first_seen[marker] <= due + 1.0, f"marker {marker} visible {first_seen[marker] - due:.3f}s late"


def test_delay_change_releases_held_transactions_and_leaves_other_mirrors_alone(
        bootstrap, funnel_name, procs, tmp_path):
    prod, fast, five, slow = (tmp_path / f"{name}.db" for name in ("prod", "fast", "five", "slow"))
    create_schema(str(prod))
    capture(bootstrap, procs, tmp_path, prod, funnel_name)
    apply(bootstrap, procs, tmp_path, fast, funnel_name, "fast", "0s")
    apply(bootstrap, procs, tmp_path, five, funnel_name, "five", "5s")
    apply(bootstrap, procs, tmp_path, slow, funnel_name, "slow", "30s")
    for mirror in (fast, five, slow):
        wait_snapshot_applied(mirror)

    inserted = insert_event(prod, 42)
    wait_for(lambda: has_event(fast, 42), 5, what="the change on the 0 s mirror")
    assert not has_event(five, 42), "the 5 s mirror applied a change early"
    wait_for(lambda: has_event(five, 42), 10, 0.05, "the change on the 5 s mirror")
    # (the exact bounds against commit time are checked by test_no_change_is_visible_before_commit_plus_delay)
    assert time.time() - inserted >= 4.9, "the 5 s mirror applied the change before its delay"
    assert not has_event(slow, 42), "the 30 s mirror applied a change early"

    changed = run_funnel(bootstrap, "delay", "slow", "1s", "--funnel", funnel_name)
    assert changed.returncode == 0, changed.stderr
    released_by = time.time() + 2.0
    wait_for(lambda: has_event(slow, 42), 2.0, 0.02, "the held change after the delay change")
    assert time.time() <= released_by

    # Each mirror keeps its own delay and position: slowing "fast" down does not touch "slow".
    assert run_funnel(bootstrap, "delay", "fast", "20s", "--funnel", funnel_name).returncode == 0
    time.sleep(1.5)
    insert_event(prod, 43)
    wait_for(lambda: has_event(slow, 43), 6, what="the next change on the 1 s mirror")
    assert not has_event(fast, 43), "the delay change of 'fast' was not applied"
    # Appliers report their position every second: wait for the report after the apply.
    mirrors: dict = {}

    def reported() -> bool:
        status = run_funnel(bootstrap, "status", "--funnel", funnel_name, "--json")
        assert status.returncode == 0, status.stderr
        mirrors.update({m["mirror"]: m for m in json.loads(status.stdout)["mirrors"]})
        return mirrors["slow"]["pending_transactions"] == 0

    wait_for(reported, 10, 0.5, "the 1 s mirror to report nothing pending")
    assert mirrors["fast"]["delay_s"] == 20.0 and mirrors["slow"]["delay_s"] == 1.0
    assert mirrors["fast"]["pending_transactions"] >= 1
    assert mirrors["fast"]["next_offset"] < mirrors["slow"]["next_offset"]


def test_a_500_row_transaction_across_two_tables_appears_at_once(bootstrap, funnel_name, procs, tmp_path):
    prod, mirror = tmp_path / "prod.db", tmp_path / "mirror.db"
    create_schema(str(prod))
    conn = sqlite3.connect(prod)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, order_id INTEGER, sku TEXT)")
    conn.commit()
    # 100 rows per message: the transaction spans five messages of the funnel.
    capture(bootstrap, procs, tmp_path, prod, funnel_name, "--chunk-rows", "100")
    apply(bootstrap, procs, tmp_path, mirror, funnel_name, "m1", "2s")
    wait_snapshot_applied(mirror)
    observed: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        reader = sqlite3.connect(f"file:{mirror}?mode=ro", uri=True, timeout=5, isolation_level=None)
        while not done.is_set():
            try:
                reader.execute("BEGIN")
                total = (reader.execute("SELECT count(*) FROM events WHERE tx = 777").fetchone()[0]
                         + reader.execute("SELECT count(*) FROM items").fetchone()[0])
                observed.add(total)
            except sqlite3.OperationalError:
                pass  # items does not exist on the mirror until the transaction is applied
            finally:
                if reader.in_transaction:
                    reader.execute("COMMIT")
        reader.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with conn:
            conn.executemany("INSERT INTO events (tx, v) VALUES (777, ?)", [(f"e{i}",) for i in range(250)])
            conn.executemany("INSERT INTO items (order_id, sku) VALUES (?, ?)", [(i, f"sku{i}") for i in range(250)])
        conn.close()
        wait_for(lambda: 500 in observed, 20, 0.05, "the transaction on the mirror")
        time.sleep(0.3)
    finally:
        done.set()
        watcher.join()
    assert observed <= {0, 500} and 500 in observed, f"partial states seen: {sorted(observed)}"
    big = [summary for summary, _ in funnel_transactions(bootstrap, funnel_name) if summary.rows == 500]
    assert len(big) == 1 and big[0].events == 5, "100 rows per message: the transaction spans five messages"


# The mirror notices a row change applied twice.  The sink writes the net effect of each
# group commit (so the mirror sees fewer changes than the funnel holds, never more), and
# an upsert of a row that is already there is an UPDATE: applying a committed change
# again makes an UPDATE that changes nothing (events) or that moves a counter back or
# not at all (counters only ever count up).  ``applied`` counts every change the mirror got.
AUDIT_TRIGGERS = """
CREATE TABLE events (id INTEGER PRIMARY KEY, tx, v, amount, payload);
CREATE TABLE counters (id INTEGER PRIMARY KEY, n);
CREATE TABLE audit (applied INTEGER NOT NULL, doubled INTEGER NOT NULL);
INSERT INTO audit VALUES (0, 0);
CREATE TRIGGER events_i AFTER INSERT ON events BEGIN UPDATE audit SET applied = applied + 1; END;
CREATE TRIGGER events_u AFTER UPDATE ON events BEGIN UPDATE audit SET applied = applied + 1; END;
CREATE TRIGGER events_d AFTER DELETE ON events BEGIN UPDATE audit SET applied = applied + 1; END;
CREATE TRIGGER counters_i AFTER INSERT ON counters BEGIN UPDATE audit SET applied = applied + 1; END;
CREATE TRIGGER counters_u AFTER UPDATE ON counters BEGIN UPDATE audit SET applied = applied + 1; END;
CREATE TRIGGER events_again AFTER UPDATE ON events
  WHEN NEW.tx IS OLD.tx AND NEW.v IS OLD.v AND NEW.amount IS OLD.amount AND NEW.payload IS OLD.payload
  BEGIN UPDATE audit SET doubled = doubled + 1; END;
CREATE TRIGGER counters_again AFTER UPDATE ON counters WHEN NEW.n <= OLD.n
  BEGIN UPDATE audit SET doubled = doubled + 1; END;
"""


def test_kill_9_of_applier_and_capture_loses_nothing_and_doubles_nothing(bootstrap, funnel_name, procs, tmp_path):
    prod, mirror = tmp_path / "prod.db", tmp_path / "mirror.db"
    create_schema(str(prod))
    audit = sqlite3.connect(mirror)
    audit.executescript(AUDIT_TRIGGERS)
    audit.close()
    writer = start_writer(prod, seconds=25, tx_rows=3, pause=0.005, seed=11)
    cap = capture(bootstrap, procs, tmp_path, prod, funnel_name)
    app = apply(bootstrap, procs, tmp_path, mirror, funnel_name, "m1", "0s")
    rng = random.Random(2026)
    for _ in range(5):
        time.sleep(rng.uniform(0.8, 2.0))
        app.kill9()
        app = apply(bootstrap, procs, tmp_path, mirror, funnel_name, "m1", "0s")
        time.sleep(rng.uniform(0.8, 2.0))
        cap.kill9()
        cap = capture(bootstrap, procs, tmp_path, prod, funnel_name)
    assert writer.wait(90) == 0
    wait_for(lambda: mirror_equals(prod, mirror, TABLES), 120, 0.5, "the mirror to equal production")

    transactions = funnel_transactions(bootstrap, funnel_name)
    positions = [batches[0].position for summary, batches in transactions if summary.kind is Kind.CHANGES]
    assert positions == sorted(set(positions)), "a source transaction was published twice"
    in_funnel = sum(summary.rows for summary, _ in transactions if summary.kind in (Kind.CHANGES, Kind.SNAPSHOT))
    conn = sqlite3.connect(mirror)
    applied, doubled = conn.execute("SELECT applied, doubled FROM audit").fetchone()
    conn.close()
    assert doubled == 0, f"{doubled} row changes were applied again"
    assert 0 < applied <= in_funnel, f"{applied} row changes applied for {in_funnel} in the funnel"
    # Guards against a vacuous drill; on a loaded machine the ten restarts leave fewer
    # polls (25 seen), so the bound is what any real run clears, not a throughput target.
    assert len(positions) > 10, "the drill should span many published source transactions"


def _one_error_line(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("Error: ") and len(lines) <= 2, result.stderr
    return lines[0]


def _timefunnel_objects(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE '_timefunnel%' OR type = 'trigger'")]
    finally:
        conn.close()


def test_bad_input_gives_one_clear_line_and_writes_nothing(bootstrap, funnel_name, tmp_path):
    prod, mirror = tmp_path / "prod.db", tmp_path / "mirror.db"
    create_schema(str(prod))
    conn = sqlite3.connect(prod)
    conn.execute("CREATE TABLE nopk (a TEXT, b INTEGER)")
    conn.commit()
    conn.close()

    line = _one_error_line(run_funnel(bootstrap, "apply", f"sqlite://{mirror}", "--funnel", "no-such-funnel",
                                      "--mirror", "m1", "--delay", "1s"))
    assert "unknown funnel 'no-such-funnel'" in line and not mirror.exists()
    line = _one_error_line(run_funnel(bootstrap, "capture", f"sqlite://{prod}", "--funnel", "no-such-funnel"))
    assert "unknown funnel" in line and _timefunnel_objects(prod) == []

    line = _one_error_line(run_funnel(bootstrap, "capture", f"sqlite://{prod}", "--funnel", funnel_name))
    assert "nopk" in line and "primary key" in line.lower()
    line = _one_error_line(run_funnel(bootstrap, "capture", f"sqlite://{prod}", "--funnel", funnel_name,
                                      "--table", "ghost"))
    assert "ghost" in line
    assert _timefunnel_objects(prod) == [], "a refused capture left objects in production"

    line = _one_error_line(run_funnel(bootstrap, "apply", "sqlite:///proc/timefunnel/mirror.db", "--funnel",
                                      funnel_name, "--mirror", "m1", "--delay", "1s"))
    assert "/proc/timefunnel/mirror.db" in line
    line = _one_error_line(run_funnel(bootstrap, "apply", f"sqlite://{mirror}", "--funnel", funnel_name,
                                      "--mirror", "m1", "--delay", "5x"))
    assert "malformed duration '5x'" in line and not mirror.exists()
    line = _one_error_line(run_funnel(bootstrap, "delay", "m1", "2 hours", "--funnel", funnel_name))
    assert "malformed duration" in line
    line = _one_error_line(run_funnel(bootstrap, "create", "x" + funnel_name, "--retention", "1h", "-X", "acks"))
    assert "-X key=value" in line
    line = _one_error_line(run_funnel(bootstrap, "apply", f"mysql://{mirror}", "--funnel", funnel_name,
                                      "--mirror", "m1", "--delay", "1s"))
    assert "mysql" in line


def test_create_refuses_retention_shorter_than_a_known_delay(bootstrap, funnel_name):
    assert run_funnel(bootstrap, "delay", "m1", "2h", "--funnel", funnel_name).returncode == 0
    line = _one_error_line(run_funnel(bootstrap, "delay", "m1", "2d", "--funnel", funnel_name))
    assert "retention" in line
    line = _one_error_line(run_funnel(bootstrap, "create", funnel_name, "--retention", "3d"))
    assert "already exists" in line
    # Re-creating a deleted data topic checks the delays its control topic still holds.
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([funnel_name])[funnel_name].result(30)
    wait_for(lambda: funnel_name not in admin.list_topics(timeout=10).topics, 30, what="topic deletion")
    line = _one_error_line(run_funnel(bootstrap, "create", funnel_name, "--retention", "1h"))
    assert "longest mirror delay" in line


def _shrink_retention(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    entries = [ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
               for name, value in (("retention.ms", "1000"), ("segment.ms", "300"))]
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=entries)
    admin.incremental_alter_configs([resource])[resource].result(30)


def test_expired_events_stop_the_applier_with_a_clear_error(bootstrap, funnel_name, procs, tmp_path):
    prod, mirror = tmp_path / "prod.db", tmp_path / "mirror.db"
    create_schema(str(prod))
    capture(bootstrap, procs, tmp_path, prod, funnel_name, "--heartbeat", "200ms")
    app = apply(bootstrap, procs, tmp_path, mirror, funnel_name, "m1", "0s")
    insert_event(prod, 1)
    wait_for(lambda: has_event(mirror, 1), 30, what="the first change on the mirror")
    assert app.stop() == 0
    insert_event(prod, 2)  # committed while the applier is stopped
    _shrink_retention(bootstrap, funnel_name)
    reader = FunnelReader(KafkaSettings(bootstrap), funnel_name)
    try:
        wait_for(lambda: reader.watermarks()[0] > 0 and not _offset_still_held(reader, 2), 90, 0.5,
                 "the broker to delete the unapplied change")
    finally:
        reader.close()
    result = run_funnel(bootstrap, "apply", f"sqlite://{mirror}", "--funnel", funnel_name, "--mirror", "m1",
                        "--delay", "0s", timeout=60)
    line = _one_error_line(result)
    assert "expired" in line and "m1" in line
    assert "re-initialise" in result.stderr
    assert has_event(mirror, 1) and not has_event(mirror, 2)


def _offset_still_held(reader: FunnelReader, event_id: int) -> bool:
    codec = EventCodec()
    low, high = reader.watermarks()
    for tx in reader.transactions(low, high, keep_payloads=True):
        for payload in tx.payloads:
            for group in codec.decode(payload).changes:
                if any(r.after and r.after[0] == event_id for r in group.rows):
                    return True
    return False


def test_publisher_library_publishes_whole_transactions(bootstrap, funnel_name, procs, tmp_path):
    from producer.library import Publisher

    mirror = tmp_path / "mirror.db"
    with Publisher(funnel_name, bootstrap, source="orders-svc") as pub:
        with pub.transaction() as tx:
            tx.insert("orders", {"id": 1}, {"id": 1, "total": 9.5, "note": "first ✓"})
            tx.insert("orders", {"id": 2}, {"id": 2, "total": 3.0, "note": None})
            tx.insert("lines", {"order_id": 1, "n": 1}, {"order_id": 1, "n": 1, "sku": b"\x00\xff"})
        with pytest.raises(RuntimeError):
            with pub.transaction() as tx:
                tx.insert("orders", {"id": 3}, {"id": 3, "total": 1.0, "note": "never"})
                raise RuntimeError("the service failed mid-transaction")
    with Publisher(funnel_name, bootstrap, source="orders-svc") as pub:  # a restarted service
        with pub.transaction() as tx:
            tx.update("orders", {"id": 1}, {"id": 1, "total": 10.0, "note": "first ✓"})
            tx.delete("orders", {"id": 2})
    apply(bootstrap, procs, tmp_path, mirror, funnel_name, "m1", "0s")
    wait_for(lambda: mirror.exists() and table_rows(mirror, "orders") == [(1, 10.0, "first ✓")], 30,
             what="the published transactions on the mirror")
    assert table_rows(mirror, "lines") == [(1, 1, b"\x00\xff")]
    positions = [batches[0].position for _, batches in funnel_transactions(bootstrap, funnel_name)]
    assert positions == [1, 2], "a restarted publisher continues after the last published position"


def test_sigterm_ends_a_capture_that_waits_for_the_applications_write_lock(bootstrap, funnel_name, procs, tmp_path):
    """An application holding a write transaction keeps the capture's seal waiting for the lock;
    SIGTERM must end the capture within seconds all the same, cleanly (once, it took the
    30 s busy timeout and then failed)."""
    prod = tmp_path / "prod.db"
    create_schema(str(prod))
    proc = capture(bootstrap, procs, tmp_path, prod, funnel_name)
    control = ControlChannel(KafkaSettings(bootstrap), funnel_name)
    wait_for(lambda: any(c.running(now_us()) for c in control.state().captures().values()), 60, 0.5,
             "the capture to report itself running")
    application = sqlite3.connect(prod, isolation_level=None)
    try:
        application.execute("BEGIN IMMEDIATE")
        application.execute("INSERT INTO events (id, tx, v) VALUES (1, 1, 'held')")
        time.sleep(1.0)  # several seal attempts (every 0.2 s) now wait for the lock
        assert proc.alive()
        started = time.monotonic()
        proc.process.send_signal(signal.SIGTERM)
        returncode = proc.process.wait(40)
        took = time.monotonic() - started
    finally:
        application.execute("ROLLBACK")
        application.close()
    assert took < 10, f"capture took {took:.1f}s to stop:\n{proc.output()}"
    assert returncode == 0, proc.output()
    assert control.state().captures()[prod.stem].state == "stopped"

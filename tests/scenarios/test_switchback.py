"""The switchback drills on SQLite: after a takeover the application writes to the promoted
mirror; the original production is rebuilt from it while it serves, and one command
returns to production with the delayed mirror behind it again.

Production and mirror are real SQLite files written by an application thread; capture,
apply, promote and switchback are the real `funnel` CLI against the real broker.
"""
from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


from funnel.codec import EventCodec
from funnel.control import ControlChannel
from funnel.events import Kind
from funnel.kafka import KafkaSettings
from funnel.reader import FunnelReader
from funnel.topic import FunnelAdmin
from tests.support.processes import Background, run_funnel, start_funnel, table_rows, wait_for
from tests.support.shop import POLL, copy_of, create_shop, ok, place_order, rows, snapshot_applied

class App:
    """The application: writes orders in small transactions to the database named in ``<dir>/target``.

    The operator's hooks steer it the way a real deployment would be steered: the freeze
    hook creates ``<dir>/frozen`` (the app stops writing after its current transaction),
    the takeover hook rewrites ``target``.  Every commit is logged with its database and time.
    """

    def __init__(self, control_dir: Path, target: Path, seed: int) -> None:
        self.dir = control_dir
        self.dir.mkdir(exist_ok=True)
        self.target_file = self.dir / "target"
        self.frozen_file = self.dir / "frozen"
        self.point_at(target)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.next_id = 1
        self.committed: list[tuple[str, int, int]] = []  # (database, order id, commit time µs)
        self.refused: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def point_at(self, target: Path) -> None:
        self.target_file.write_text(str(target))

    def start(self) -> "App":
        self.thread.start()
        return self

    def _run(self) -> None:
        conn, current = None, None
        while not self.stop_event.is_set():
            if self.frozen_file.exists():
                time.sleep(0.01)
                continue
            target = self.target_file.read_text().strip()
            if target != current:
                if conn is not None:
                    conn.close()
                conn, current = sqlite3.connect(target, timeout=30, isolation_level=None), target
            with self.lock:
                try:
                    self._one_transaction(conn, current)
                except sqlite3.Error as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    self.refused.append(str(exc))
                    time.sleep(0.05)
            time.sleep(0.004)
        if conn is not None:
            conn.close()

    def _one_transaction(self, conn: sqlite3.Connection, target: str) -> None:
        n = self.next_id
        place_order(conn, n, self.rng)
        self.next_id += 1
        self.committed.append((target, n, time.time_ns() // 1000))

    def act(self, sql: str | None, settle: float = 0.3) -> tuple[Path, int]:
        """Between two app transactions: copy the database, run ``sql``; returns (copy, time before sql)."""
        with self.lock:
            time.sleep(settle)
            path = Path(self.target_file.read_text().strip())
            copy = copy_of(path)
            moment = time.time_ns() // 1000
            time.sleep(0.002)
            if sql:
                conn = sqlite3.connect(path, timeout=30)
                with conn:
                    conn.execute(sql)
                conn.close()
            time.sleep(settle)
        return copy, moment

    def resume(self) -> None:
        self.frozen_file.unlink(missing_ok=True)

    def finish(self) -> None:
        self.stop_event.set()
        self.thread.join(30)


def schema_objects(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_schema")}
    finally:
        conn.close()


def refused(bootstrap: str, *args: str) -> str:
    """The command fails with one clear line: exit 1, `Error: ...`, no traceback."""
    result = run_funnel(bootstrap, *args)
    assert result.returncode == 1, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    return result.stderr.splitlines()[0]


def record(bootstrap: str, funnel: str, mirror: str = "m1") -> dict | None:
    return ControlChannel(KafkaSettings(bootstrap), funnel).read_all().get(f"switchback/{mirror}")


def status_json(bootstrap: str, funnel: str, mirror: str = "m1") -> dict:
    return json.loads(ok(run_funnel(bootstrap, "switchback", "status", "--funnel", funnel, "--mirror", mirror,
                                    "--json")))


def frozen_write_error(db: Path) -> str | None:
    """Try one write on ``db``; the error text if it is refused, None if it was accepted (and undone)."""
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO orders VALUES (-1, 0, 0.0, 'after the freeze')")
        conn.execute("ROLLBACK")
        return None
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()


def wait_log(proc: Background, text: str, timeout: float) -> None:
    wait_for(lambda: text in proc.output(), timeout, interval=0.05, what=f"{text!r} in {proc.log.name}")


class Site:
    """Production, its delayed mirror m1 and the application, with the forward funnel running."""

    def __init__(self, bootstrap, procs, tmp_path, funnel: str, delay: str, seed: int) -> None:
        self.bootstrap, self.procs, self.tmp_path, self.funnel, self.delay = bootstrap, procs, tmp_path, funnel, delay
        self.prod, self.mirror = tmp_path / "prod.db", tmp_path / "mirror.db"
        create_shop(self.prod)
        self.app = App(tmp_path / "app", self.prod, seed).start()
        self.forward()
        wait_for(lambda: self.mirror.exists() and snapshot_applied(self.mirror), 30, what="the copy on the mirror")

    def forward(self) -> None:
        """The deployment's two processes, with the same command lines before and after the switchback."""
        self.capture = start_funnel(self.bootstrap, self.procs, self.tmp_path, "capture", f"sqlite://{self.prod}",
                             "--funnel", self.funnel, "--poll-interval", POLL)
        self.applier = start_funnel(self.bootstrap, self.procs, self.tmp_path, "apply", f"sqlite://{self.mirror}",
                             "--funnel", self.funnel, "--mirror", "m1", "--delay", self.delay)

    def promote(self, *args: str) -> None:
        """The takeover: the capture of the broken production stops, the mirror is promoted, the app moves."""
        ok(run_funnel(self.bootstrap, "promote", "m1", "--funnel", self.funnel, *args))
        assert self.capture.stop() == 0
        self.applier.stop()  # exits by itself after a promote
        self.app.point_at(self.mirror)

    def prepare(self) -> Background:
        return start_funnel(self.bootstrap, self.procs, self.tmp_path, "switchback", "prepare", "--funnel", self.funnel,
                     "--mirror", "m1", "--to", f"sqlite://{self.prod}")

    def complete_args(self, takeover: str | None = None, *extra: str) -> tuple[str, ...]:
        app = self.app.dir
        takeover = takeover or f"echo {self.prod} > {app / 'target'}"
        return ("switchback", "complete", "--funnel", self.funnel, "--mirror", "m1",
                "--freeze-hook", f"touch {app / 'frozen'}", "--takeover-hook", takeover, *extra)


def promoted_site(bootstrap, procs, tmp_path, funnel: str, seed: int) -> Site:
    """A site after a takeover: the mirror is promoted and the application writes to it."""
    site = Site(bootstrap, procs, tmp_path, funnel, "0s", seed)
    time.sleep(1.5)
    wait_for(lambda: len(table_rows(site.mirror, "orders")) > 20, 20, what="orders on the mirror")
    site.promote()
    return site


def test_full_switchback_cycle_then_a_second_disaster_drill(bootstrap, funnel_name, procs, tmp_path):
    site = Site(bootstrap, procs, tmp_path, funnel_name, "3s", seed=11)
    app = site.app
    time.sleep(2.0)
    before_error, _ = app.act("DELETE FROM orders")
    time.sleep(1.0)
    bad = find_the_delete(bootstrap, funnel_name)
    site.promote("--at", bad["commit_ts"])
    assert rows(site.mirror) == rows(before_error), "the mirror must equal production just before the delete"

    # The original production is damaged further while it is out of service: stale rows, a stale table.
    conn = sqlite3.connect(site.prod)
    with conn:
        conn.execute("INSERT INTO orders VALUES (999999, 1, 1.0, 'stale')")
        conn.execute("CREATE TABLE junk (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO junk VALUES (1, 'stale')")
    conn.close()
    on_mirror_before = sum(1 for db, *_ in app.committed if db == str(site.mirror))
    time.sleep(1.0)
    assert sum(1 for db, *_ in app.committed if db == str(site.mirror)) > on_mirror_before, "app writes to mirror"

    prepare = site.prepare()
    wait_log(prepare, "syncing:", 60)
    time.sleep(1.5)  # the application keeps writing to the mirror, production follows

    # The takeover hook runs while the mirror is frozen: a write tried then must be refused.
    probe, probe_script = tmp_path / "probe.txt", tmp_path / "probe.py"
    probe_script.write_text("import sqlite3, sys\nconn = sqlite3.connect(sys.argv[1])\ntry:\n"
                            "    conn.execute(\"INSERT INTO orders VALUES (-1, 0, 0.0, 'probe')\")\n"
                            "    conn.commit()\n    print('accepted')\nexcept sqlite3.Error as exc:\n    print(exc)\n")
    takeover = f"{sys.executable} {probe_script} {site.mirror} > {probe}; echo {site.prod} > {app.dir / 'target'}"
    done = ok(run_funnel(bootstrap, *site.complete_args(takeover, "--delay", "4s"), timeout=180))
    steps = ["freeze: running the freeze hook", "freeze: mirror frozen", "drain: production applied",
             "verify: orders", "forward: initial copy", "takeover: hook exited 0", "cleanup: mirror unfrozen", "done:"]
    positions = [done.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), done
    assert prepare.process.wait(30) == 0 and "prepare stops" in prepare.output(), "prepare hands over and exits"

    # Production equals the frozen mirror, holds every write made on the mirror, nothing stale survived.
    assert rows(site.prod) == rows(site.mirror)
    mirror_ids = {n for db, n, _ in app.committed if db == str(site.mirror)}
    prod_orders = {row[0] for row in table_rows(site.prod, "orders")}
    assert mirror_ids and mirror_ids <= prod_orders
    assert 999999 not in prod_orders and "junk" not in schema_objects(site.prod)
    assert "frozen for switchback" in probe.read_text(), probe.read_text()
    state = record(bootstrap, funnel_name)
    assert state["phase"] == "done" and state["checksums"]["orders"]["rows"] == len(prod_orders)
    assert max(at for db, _, at in app.committed if db == str(site.mirror)) < state["freeze"]["at"], \
        "no write was accepted on the mirror after the freeze"
    assert not any(name.startswith(("_timefunnel_changelog", "timefunnel_freeze_")) for name in
                   schema_objects(site.mirror)), "the mirror keeps no reverse capture and no freeze"

    # Right after complete: status shows m1 at the fresh copy, not EXPIRED, and a new mirror can join
    # (the old timeline's events are deleted: it starts at the fresh initial copy).
    report = json.loads(ok(run_funnel(bootstrap, "status", "--funnel", funnel_name, "--json")))
    m1 = next(m for m in report["mirrors"] if m["mirror"] == "m1")
    assert not m1["expired"] and m1["next_offset"] == state["forward"]["next_offset"], m1
    ok(run_funnel(bootstrap, "apply", f"sqlite://{tmp_path / 'm2.db'}", "--funnel", funnel_name, "--mirror", "m2",
                  "--delay", "0s", "--until-caught-up"))
    assert rows(tmp_path / "m2.db") == rows(site.prod), "a mirror joining after the switchback copies production"

    # The forward funnel runs again with the configured delay: the same two commands as before.
    app.resume()
    site.forward()
    time.sleep(1.0)
    marker, _ = app.act("INSERT INTO orders VALUES (888888, 1, 8.5, 'marker')")
    time.sleep(1.0)
    assert 888888 not in {r[0] for r in table_rows(site.mirror, "orders")}, "the delay must hold the change back"
    wait_for(lambda: 888888 in {r[0] for r in table_rows(site.mirror, "orders")}, 20, what="the marker on the mirror")

    # A second disaster drill on the new setup: delete, find it, promote to just before it.
    time.sleep(1.0)
    second_before, _ = app.act("DELETE FROM orders")
    time.sleep(1.0)
    app.finish()
    second = find_the_delete(bootstrap, funnel_name)
    ok(run_funnel(bootstrap, "promote", "m1", "--funnel", funnel_name, "--at", second["commit_ts"]))
    assert rows(site.mirror) == rows(second_before), "the mirror must equal production just before the second delete"


def find_the_delete(bootstrap: str, funnel: str) -> dict:
    found = json.loads(ok(run_funnel(bootstrap, "inspect", "--funnel", funnel, "--op", "delete", "--table",
                                     "orders", "--min-rows", "10", "--json")))["transactions"]
    assert len(found) == 1, found
    return found[0]


def test_kill_9_during_prepare_and_complete_then_status_and_rerun(bootstrap, funnel_name, procs, tmp_path):
    site = promoted_site(bootstrap, procs, tmp_path, funnel_name, seed=12)
    killed = site.prepare()
    wait_log(killed, "switchback of mirror 'm1': from", 60)  # recorded; next: reverse funnel, reset, copy
    time.sleep(random.uniform(0.0, 1.0))
    assert killed.alive()
    killed.kill9()
    during = status_json(bootstrap, funnel_name)["switchback"]
    assert during["phase"] in ("preparing", "syncing"), during
    prepare = site.prepare()
    wait_log(prepare, "syncing:", 60)
    assert "resuming the switchback" in prepare.output()
    assert status_json(bootstrap, funnel_name)["switchback"]["phase"] == "syncing"
    time.sleep(1.0)

    # kill -9 right after the freeze, then again during the takeover hook.
    first = start_funnel(bootstrap, procs, tmp_path, *site.complete_args())
    wait_log(first, "freeze: mirror frozen", 90)
    first.kill9()
    report = status_json(bootstrap, funnel_name)
    assert report["switchback"]["phase"] in ("frozen", "drained", "verified", "forward_ready"), report
    assert report["mirror_frozen"] is True
    assert "frozen for switchback" in (frozen_write_error(site.mirror) or ""), "a write on the mirror must be refused"
    assert prepare.process.wait(30) == 0

    second = start_funnel(bootstrap, procs, tmp_path, *site.complete_args(takeover="sleep 20"))
    wait_log(second, "takeover: running the takeover hook", 90)
    second.kill9()
    text = ok(run_funnel(bootstrap, "switchback", "status", "--funnel", funnel_name, "--mirror", "m1"))
    assert "forward_ready" in text and "complete" in text.splitlines()[-1], text
    assert "point of no return" in refused(bootstrap, "switchback", "abort", "--funnel", funnel_name, "--mirror", "m1")
    assert "frozen for switchback" in (frozen_write_error(site.mirror) or "")

    rerun = ok(run_funnel(bootstrap, *site.complete_args(), timeout=180))
    assert "freeze:" not in rerun and "takeover: hook exited 0" in rerun and "done:" in rerun, rerun
    again = ok(run_funnel(bootstrap, *site.complete_args()))
    assert "already done" in again

    # The same end state as an uninterrupted run.
    assert record(bootstrap, funnel_name)["phase"] == "done"
    assert rows(site.prod) == rows(site.mirror)
    mirror_ids = {n for db, n, _ in site.app.committed if db == str(site.mirror)}
    assert mirror_ids and mirror_ids <= {r[0] for r in table_rows(site.prod, "orders")}
    assert frozen_write_error(site.mirror) is None, "the mirror is unfrozen at the end"
    assert "_timefunnel_changelog" not in schema_objects(site.mirror)
    assert "_timefunnel_changelog" in schema_objects(site.prod), "production is captured again"
    site.app.resume()
    site.forward()
    time.sleep(1.5)
    site.app.finish()
    wait_for(lambda: rows(site.mirror) == rows(site.prod), 30, what="the mirror to follow production again")


def test_freeze_waits_no_longer_than_its_timeout_names_the_writers_and_abort_rolls_back(
        bootstrap, funnel_name, procs, tmp_path):
    site = promoted_site(bootstrap, procs, tmp_path, funnel_name, seed=13)
    prepare = site.prepare()
    wait_log(prepare, "syncing:", 60)
    state = record(bootstrap, funnel_name)

    # The freeze hook does not reach this application: it keeps writing.
    complete = start_funnel(bootstrap, procs, tmp_path, "switchback", "complete", "--funnel", funnel_name, "--mirror",
                     "m1", "--freeze-hook", "true", "--freeze-timeout", "2s")
    wait_log(complete, "freeze: waiting up to 2s", 60)
    waiting_since = time.monotonic()
    assert complete.process.wait(30) == 1
    assert time.monotonic() - waiting_since < 2.0 + 5.0  # the wait, then closing the Kafka clients
    output = complete.output()
    assert "Error: writes still reach the mirror after 2s" in output and "orders +" in output, output
    waited = float(re.search(r"row changes in the last ([0-9.]+)s", output).group(1))
    assert 2.0 <= waited <= 2.5, f"the freeze waited {waited}s"
    assert "still connected: pid" in output and "Traceback" not in output, output

    # Nothing was frozen: the application's writes still land; the record says what happened.
    count = len(site.app.committed)
    time.sleep(0.5)
    assert len(site.app.committed) > count and not site.app.refused
    report = status_json(bootstrap, funnel_name)
    assert report["switchback"]["phase"] == "syncing" and "freeze failed" in report["switchback"]["error"]
    assert report["mirror_frozen"] is False
    assert prepare.process.wait(30) == 0, "complete took over from prepare"
    assert report["next"].startswith("prepare is not running") and "switchback prepare" in report["next"], report

    # This time the application stops and the mirror is frozen; then the operator changes their mind.
    frozen = start_funnel(bootstrap, procs, tmp_path, *site.complete_args())
    wait_log(frozen, "freeze: mirror frozen", 60)
    frozen.kill9()
    assert frozen_write_error(site.mirror)
    aborted = ok(run_funnel(bootstrap, "switchback", "abort", "--funnel", funnel_name, "--mirror", "m1"))
    for said in ("mirror unfrozen", "reverse capture removed", f"reverse funnel {state['reverse_funnel']} deleted",
                 "not undone: production", "stays promoted"):
        assert said in aborted, aborted
    assert frozen_write_error(site.mirror) is None
    assert not any(name.startswith("_timefunnel_changelog") for name in schema_objects(site.mirror))
    assert not {t for t in FunnelAdmin(KafkaSettings(bootstrap)).topics() if t.startswith(state["reverse_funnel"])}
    assert record(bootstrap, funnel_name)["phase"] == "aborted"
    promoted = sqlite3.connect(site.mirror).execute("SELECT promoted_at FROM _timefunnel_state").fetchone()[0]
    assert promoted is not None, "the mirror stays the promoted production"
    assert "was aborted" in refused(bootstrap, "switchback", "complete", "--funnel", funnel_name, "--mirror", "m1")
    site.app.resume()
    time.sleep(0.3)
    site.app.finish()
    assert site.app.committed[-1][0] == str(site.mirror), "the application writes to the mirror again"


def test_bad_input_is_one_clear_line_and_changes_nothing(bootstrap, funnel_name, procs, tmp_path):
    site = Site(bootstrap, procs, tmp_path, funnel_name, "0s", seed=14)
    time.sleep(1.0)
    site.app.finish()
    wait_for(lambda: rows(site.mirror) == rows(site.prod), 30, what="the mirror to catch up")
    site.capture.stop()
    prod_before, mirror_before = rows(site.prod), rows(site.mirror)
    prod_schema, mirror_schema = schema_objects(site.prod), schema_objects(site.mirror)
    admin = FunnelAdmin(KafkaSettings(bootstrap))
    topics_before = admin.topics()
    to = ("--to", f"sqlite://{site.prod}")

    def prepare(*args: str) -> str:
        return refused(bootstrap, "switchback", "prepare", "--funnel", funnel_name, *args)

    assert "mirror 'm1' is not promoted" in prepare("--mirror", "m1", *to)
    assert "unknown mirror 'ghost'" in prepare("--mirror", "ghost", *to)
    assert "unsupported database URL 'ftp://host/prod'" in prepare("--mirror", "m1", "--to", "ftp://host/prod")
    assert "bad SQLite URL" in prepare("--mirror", "m1", "--to", "sqlite://host/prod.db")
    assert "is the mirror itself" in prepare("--mirror", "m1", "--to", f"sqlite://{site.mirror}")
    assert "does not exist" in prepare("--mirror", "m1", "--from", f"sqlite://{tmp_path}/nope.db", *to)
    assert "unknown funnel" in refused(bootstrap, "switchback", "prepare", "--funnel", "no-such-funnel",
                                       "--mirror", "m1", *to)
    assert "no switchback of mirror 'm1' was prepared" in refused(
        bootstrap, "switchback", "complete", "--funnel", funnel_name, "--mirror", "m1")
    assert "no switchback of mirror 'm1' to abort" in refused(
        bootstrap, "switchback", "abort", "--funnel", funnel_name, "--mirror", "m1")
    assert "malformed duration" in refused(bootstrap, "switchback", "complete", "--funnel", funnel_name,
                                           "--mirror", "m1", "--freeze-timeout", "soon")

    assert record(bootstrap, funnel_name) is None
    assert admin.topics() == topics_before, "no reverse funnel was created"
    assert (rows(site.prod), rows(site.mirror)) == (prod_before, mirror_before)
    assert (schema_objects(site.prod), schema_objects(site.mirror)) == (prod_schema, mirror_schema)
    assert not (tmp_path / "nope.db").exists()
    never_promoted = ok(run_funnel(bootstrap, "switchback", "status", "--funnel", funnel_name, "--mirror", "m1"))
    assert "no switchback" in never_promoted and "mirror 'm1' is not promoted" in never_promoted, never_promoted
    assert "prepare" not in never_promoted, "status must not suggest what prepare then refuses"
    unknown = ok(run_funnel(bootstrap, "switchback", "status", "--funnel", funnel_name, "--mirror", "ghost"))
    assert "unknown mirror 'ghost'" in unknown and "prepare" not in unknown, unknown


def funnel_batches(bootstrap: str, funnel: str) -> list:
    """Every batch the funnel holds now, decoded, in order."""
    codec = EventCodec()
    with FunnelReader(KafkaSettings(bootstrap), funnel) as reader:
        low, high = reader.watermarks()
        return [codec.decode(p) for tx in reader.transactions(low, high, keep_payloads=True) for p in tx.payloads]


def test_links_to_the_mirror_are_refused_and_a_rebuild_into_a_new_file_continues_the_source(
        bootstrap, funnel_name, procs, tmp_path):
    site = promoted_site(bootstrap, procs, tmp_path, funnel_name, seed=16)

    # A hard link or a symlink to the promoted mirror is the mirror: refused, nothing changed.
    hard, soft = tmp_path / "hard.db", tmp_path / "soft.db"
    os.link(site.mirror, hard)
    os.symlink(site.mirror, soft)
    topics_before = FunnelAdmin(KafkaSettings(bootstrap)).topics()
    with site.app.lock:  # the application pauses between two transactions
        before, schema_before = rows(site.mirror), schema_objects(site.mirror)
        for link in (hard, soft):
            assert "is the mirror itself" in refused(bootstrap, "switchback", "prepare", "--funnel", funnel_name,
                                                     "--mirror", "m1", "--to", f"sqlite://{link}")
        assert (rows(site.mirror), schema_objects(site.mirror)) == (before, schema_before)
    assert record(bootstrap, funnel_name) is None
    assert FunnelAdmin(KafkaSettings(bootstrap)).topics() == topics_before, "no reverse funnel was created"

    # Production is rebuilt into a new file, named differently from the old one (source 'prod').
    rebuilt = tmp_path / "rebuilt.db"
    prepare = start_funnel(bootstrap, procs, tmp_path, "switchback", "prepare", "--funnel", funnel_name,
                           "--mirror", "m1", "--to", f"sqlite://{rebuilt}")
    wait_log(prepare, "syncing:", 60)
    done = ok(run_funnel(bootstrap, *site.complete_args(f"echo {rebuilt} > {site.app.dir / 'target'}"),
                         timeout=180))
    assert "continues source 'prod'" in done, done
    assert prepare.process.wait(30) == 0

    # The old production file still exists with its capture triggers, and gets a write: the
    # command line of before the disaster must not publish that timeline into the funnel.
    conn = sqlite3.connect(site.prod)
    conn.execute("DELETE FROM orders WHERE id <= 5")
    conn.commit()
    conn.close()
    old = refused(bootstrap, "capture", f"sqlite://{site.prod}", "--funnel", funnel_name, "--poll-interval", POLL)
    assert "source 'prod' continues in" in old and str(rebuilt) in old, old

    # Between the takeover and the capture's start the application deletes rows on production.
    site.app.resume()
    time.sleep(0.5)
    site.app.act("DELETE FROM orders WHERE id <= 10")
    site.app.finish()
    assert all(db == str(rebuilt) for db, *_ in site.app.committed[-3:]), "the application writes to the new file"

    capture = start_funnel(bootstrap, procs, tmp_path, "capture", f"sqlite://{rebuilt}", "--funnel", funnel_name,
                           "--poll-interval", POLL)
    start_funnel(bootstrap, procs, tmp_path, "apply", f"sqlite://{site.mirror}", "--funnel", funnel_name,
                 "--mirror", "m1")
    wait_for(lambda: rows(site.mirror) == rows(rebuilt), 30, what="the mirror to equal the rebuilt production")
    assert not {r[0] for r in table_rows(site.mirror, "orders")} & set(range(1, 11)), "the deleted rows are gone"
    assert "as source 'prod'" in capture.output(), capture.output()
    batches = funnel_batches(bootstrap, funnel_name)
    assert {b.source for b in batches} == {"prod"}, "one source before and after the switchback"
    assert sum(b.kind is Kind.SNAPSHOT_END for b in batches) == 1, "one initial copy only"


# -- PostgreSQL to PostgreSQL ---------------------------------------------------------------


class PgApp(App):
    """The same application on PostgreSQL: one order per (autocommitted) transaction."""

    def _run(self) -> None:
        import psycopg

        conn, current = None, None
        while not self.stop_event.is_set():
            if self.frozen_file.exists():
                time.sleep(0.01)
                continue
            target = self.target_file.read_text().strip()
            try:
                if conn is None or target != current:
                    conn, current = psycopg.connect(target, autocommit=True), target
                n = self.next_id
                conn.execute("INSERT INTO orders VALUES (%s, %s, %s)", (n, n * 1.5, f"o{n}"))
                self.next_id += 1
                self.committed.append((target, n, time.time_ns() // 1000))
            except psycopg.Error as exc:  # a freeze ends the session: connect again
                self.refused.append(str(exc))
                conn = None
                time.sleep(0.05)
            time.sleep(0.005)


def pg_rows(url: str, table: str) -> list[tuple] | None:
    import psycopg

    with psycopg.connect(url) as conn:
        try:
            return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        except psycopg.errors.UndefinedTable:
            return None


def pg_query(url: str, *statements: str) -> list[tuple]:
    """Runs the statements in order; the rows of the last one (none for a command)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


def respelled(url: str, user: str | None = None) -> str:
    """The same database spelled differently: localhost for 127.0.0.1 (and back), or another user."""
    parts = urlsplit(url)
    host = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}.get(parts.hostname, parts.hostname)
    netloc = f"{user or parts.username}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def test_postgresql_switchback_cycle(bootstrap, funnel_name, procs, tmp_path, pg_databases):
    prod, mirror = pg_databases
    pg_query(prod, "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric(12,2), note text)",
             "CREATE TABLE items (id int PRIMARY KEY, sku text)",
             "INSERT INTO items SELECT g, 's' || g FROM generate_series(1, 30) g")
    app = PgApp(tmp_path / "app", prod, seed=15).start()
    capture = start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name, "--poll-interval", POLL)
    start_funnel(bootstrap, procs, tmp_path, "apply", mirror, "--funnel", funnel_name, "--mirror", "m1", "--delay", "0s",
          "--create-tables")
    wait_for(lambda: len(pg_rows(mirror, "orders") or []) > 50, 60, what="orders on the mirror")
    ok(run_funnel(bootstrap, "promote", "m1", "--funnel", funnel_name))
    assert capture.stop() == 0
    app.point_at(mirror)
    pg_query(prod, "INSERT INTO orders VALUES (999999, 1, 'stale')", "CREATE TABLE junk (id int PRIMARY KEY)")

    # The promoted mirror under another host name or another user is still the mirror: refused, nothing changed.
    pg_query(mirror, "DO $$BEGIN CREATE ROLE timefunnel_test_other LOGIN; "
                     "EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    items = pg_rows(mirror, "items")
    for spelling in (respelled(mirror), respelled(mirror, user="timefunnel_test_other")):
        assert "is the mirror itself" in refused(bootstrap, "switchback", "prepare", "--funnel", funnel_name,
                                                 "--mirror", "m1", "--to", spelling)
    assert pg_rows(mirror, "items") == items and len(pg_rows(mirror, "orders")) > 50
    assert record(bootstrap, funnel_name) is None

    prepare = start_funnel(bootstrap, procs, tmp_path, "switchback", "prepare", "--funnel", funnel_name, "--mirror", "m1",
                    "--to", prod)
    wait_log(prepare, "syncing:", 60)
    time.sleep(1.0)
    probe, probe_script = tmp_path / "probe.txt", tmp_path / "probe.py"
    probe_script.write_text("import psycopg, sys\nconn = psycopg.connect(sys.argv[1], autocommit=True)\ntry:\n"
                            "    conn.execute(\"INSERT INTO orders VALUES (-1, 0, 'probe')\")\n    print('accepted')\n"
                            "except psycopg.Error as exc:\n    print(exc)\n")
    takeover = f"{sys.executable} {probe_script} {mirror} > {probe}; echo {prod} > {app.dir / 'target'}"
    done = ok(run_funnel(bootstrap, "switchback", "complete", "--funnel", funnel_name, "--mirror", "m1",
                         "--freeze-hook", f"touch {app.dir / 'frozen'}", "--takeover-hook", takeover,
                         "--delay", "1s", "--to", respelled(prod), timeout=180))
    assert "verify: public.orders" in done and "done:" in done, done
    assert prepare.process.wait(30) == 0

    assert pg_rows(prod, "orders") == pg_rows(mirror, "orders") and pg_rows(prod, "items") == pg_rows(mirror, "items")
    prod_ids = {row[0] for row in pg_rows(prod, "orders")}
    mirror_ids = {n for db, n, _ in app.committed if db == mirror}
    assert mirror_ids and mirror_ids <= prod_ids and 999999 not in prod_ids
    assert pg_rows(prod, "junk") is None and pg_rows(prod, "_timefunnel_state") is None
    assert "read-only transaction" in probe.read_text(), probe.read_text()
    state = record(bootstrap, funnel_name)
    assert max(at for db, _, at in app.committed if db == mirror) < state["freeze"]["at"]
    assert pg_query(mirror, "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()") == [(0,)]
    assert pg_query(mirror, "SHOW default_transaction_read_only") == [("off",)], "the mirror is unfrozen"

    app.resume()
    start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name, "--poll-interval", POLL)
    start_funnel(bootstrap, procs, tmp_path, "apply", mirror, "--funnel", funnel_name, "--mirror", "m1")
    time.sleep(2.0)
    app.finish()
    assert any(db == prod for db, *_ in app.committed[-5:]), "the application writes to production again"
    wait_for(lambda: pg_rows(mirror, "orders") == pg_rows(prod, "orders"), 30, what="the mirror to follow production")

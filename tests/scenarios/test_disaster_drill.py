"""The mission's drills on SQLite: a logical error in production, found in the funnel,
undone by turning the mirror's clock back, and a takeover.

Production is a real SQLite file written by an application thread; capture, apply,
inspect, seek and promote are the real `funnel` CLI against the real broker.
"""
from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from pathlib import Path


from funnel.codec import EventCodec
from funnel.events import Kind
from funnel.kafka import KafkaSettings
from funnel.reader import FunnelReader
from funnel.timeparse import format_time
from producer.publisher import last_published_position
from tests.support.processes import Background, run_funnel, start_funnel, wait_for
from tests.support.shop import POLL, copy_of, create_shop, ok, place_order, rows, snapshot_applied

class Shop:
    """The application: a thread writing customers, orders and items in small transactions."""

    def __init__(self, path: Path, seed: int, funnel: "FunnelView") -> None:
        self.path = path
        self.funnel = funnel
        create_shop(path)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()  # held by the "operator" to act between two app transactions
        self.stop = threading.Event()
        self.next_id = 1
        self.transactions = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Shop":
        self.thread.start()
        return self

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        while not self.stop.is_set():
            with self.lock:
                self._one_transaction(conn)
            time.sleep(0.004)
        conn.close()

    def _one_transaction(self, conn: sqlite3.Connection) -> None:
        n = self.next_id
        self.next_id += 1
        place_order(conn, n, self.rng)
        self.transactions += 1

    def act(self, sql: str | None) -> tuple[Path | None, int]:
        """Between two app transactions: copy production, run ``sql``; returns (copy, time T of the copy).

        SQLite capture groups what committed between two polls into one source
        transaction, timed when it was sealed. With the application paused, the act
        waits until the capture has published everything before the copy (and, after
        ``sql``, the act itself), so the copy falls on a group boundary and T (just after
        that group's commit time) is exact however slow the machine is.
        """
        with self.lock:
            boundary = self._published_up_to_now()
            copy = copy_of(self.path)
            moment = self.funnel.commit_ts_of(boundary) + 1
            if sql:
                conn = sqlite3.connect(self.path, timeout=30)
                with conn:
                    conn.execute(sql)
                conn.close()
                self._published_up_to_now()
        return copy, moment

    def _published_up_to_now(self) -> int:
        """The changelog's high-water sequence, once the capture has published it."""
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = '_timefunnel_changelog'").fetchone()
        finally:
            conn.close()
        boundary = row[0] if row else 0
        wait_for(lambda: (self.funnel.published() or 0) >= boundary, 60, 0.05, "the capture to publish the changes")
        return boundary

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)


class FunnelView:
    """What the drills read from the funnel: the capture's published position, commit times."""

    def __init__(self, bootstrap: str, funnel: str, source: str = "prod") -> None:
        self.kafka, self.name, self.source = KafkaSettings(bootstrap), funnel, source

    def published(self) -> int | None:
        return last_published_position(self.kafka, self.name, self.source)

    def commit_ts_of(self, position: int) -> int:
        """Commit time of the source transaction that ends at ``position`` (its group)."""
        codec = EventCodec()
        with FunnelReader(self.kafka, self.name) as reader:
            low, high = reader.watermarks()
            for summary in reader.transactions(low, high, keep_payloads=True):
                if summary.kind is Kind.CHANGES and codec.decode(summary.payloads[0]).position == position:
                    return summary.commit_ts
        raise AssertionError(f"no source transaction ends at position {position}")


def find_the_delete(bootstrap: str, funnel: str) -> dict:
    found = json.loads(ok(run_funnel(bootstrap, "inspect", "--funnel", funnel, "--op", "delete", "--table",
                                     "orders", "--min-rows", "10", "--json")))["transactions"]
    assert len(found) == 1, found
    return found[0]


def drill_setup(bootstrap, procs, tmp_path, funnel: str, delay: str, seed: int):
    prod, mirror = tmp_path / "prod.db", tmp_path / "mirror.db"
    shop = Shop(prod, seed, FunnelView(bootstrap, funnel)).start()
    start_funnel(bootstrap, procs, tmp_path, "capture", f"sqlite://{prod}", "--funnel", funnel, "--poll-interval", POLL)
    applier = start_funnel(bootstrap, procs, tmp_path, "apply", f"sqlite://{mirror}", "--funnel", funnel,
                    "--mirror", "m1", "--delay", delay)
    wait_for(lambda: mirror.exists() and snapshot_applied(mirror), 30, what="the initial copy on the mirror")
    return shop, prod, mirror, applier


def test_disaster_drill_promote_at_the_delete(bootstrap, funnel_name, procs, tmp_path):
    shop, prod, mirror, _ = drill_setup(bootstrap, procs, tmp_path, funnel_name, "10s", seed=1)
    time.sleep(random.uniform(2, 4))
    before_error, _ = shop.act("DELETE FROM orders")
    time.sleep(1.5)
    shop.finish()
    assert rows(prod)["orders"] == [] or len(rows(prod)["orders"]) < len(rows(before_error)["orders"])

    bad = find_the_delete(bootstrap, funnel_name)
    hook_out = tmp_path / "hook.env"
    result = json.loads(ok(run_funnel(
        bootstrap, "promote", "m1", "--funnel", funnel_name, "--at", bad["commit_ts"],
        "--on-promote", f"env | grep ^FUNNEL_ | sort > {hook_out}; echo moved", "--json")))
    assert result["hook"]["exit_code"] == 0 and "moved" in result["hook"]["output"]
    assert rows(mirror) == rows(before_error), "the mirror must equal production just before the delete"
    env = dict(line.split("=", 1) for line in hook_out.read_text().splitlines())
    assert env["FUNNEL_NAME"] == funnel_name and env["FUNNEL_MIRROR"] == "m1"
    assert env["FUNNEL_TARGET_TIME"] == bad["commit_ts"]
    assert env["FUNNEL_SINK_URL"] == f"sqlite://{mirror}" and env["FUNNEL_PROMOTED_AT"].endswith("Z")

    # A promoted mirror refuses to apply or seek again, with one clear line.
    again = run_funnel(bootstrap, "apply", f"sqlite://{mirror}", "--funnel", funnel_name, "--mirror", "m1",
                       "--delay", "0s")
    assert again.returncode == 1 and "was promoted" in again.stderr and "Traceback" not in again.stderr
    seek = run_funnel(bootstrap, "seek", "m1", "--to", "-1m", "--funnel", funnel_name, "--sink", f"sqlite://{mirror}")
    assert seek.returncode == 1 and "was promoted" in seek.stderr


def test_disaster_drill_exclude_the_bad_transaction_with_the_applier_stopped(bootstrap, funnel_name, procs,
                                                                              tmp_path):
    shop, prod, mirror, applier = drill_setup(bootstrap, procs, tmp_path, funnel_name, "10s", seed=2)
    time.sleep(random.uniform(2, 4))
    before_error, _ = shop.act("DELETE FROM orders")
    time.sleep(1.5)
    shop.finish()
    time.sleep(0.5)  # the last application transactions reach the funnel
    assert applier.stop() == 0
    bad = find_the_delete(bootstrap, funnel_name)

    dry = json.loads(ok(run_funnel(bootstrap, "promote", "m1", "--funnel", funnel_name, "--exclude-txid",
                                   bad["txid"], "--sink", f"sqlite://{mirror}", "--dry-run", "--json")))
    assert [left["txid"] for left in dry["leave_out"]] == [bad["txid"]]
    assert dry["apply"]["transactions"] > 0
    ok(run_funnel(bootstrap, "promote", "m1", "--funnel", funnel_name, "--exclude-txid", bad["txid"],
                  "--sink", f"sqlite://{mirror}"))
    expected = rows(prod)
    # Everything except the delete: the orders production lost are still there.
    expected["orders"] = sorted({**{r[0]: r for r in rows(before_error)["orders"]},
                                 **{r[0]: r for r in rows(prod)["orders"]}}.values())
    assert rows(mirror) == expected
    state = sqlite3.connect(mirror).execute(
        "SELECT promoted_at IS NOT NULL, excluded_txids FROM _timefunnel_state").fetchone()
    assert state == (1, json.dumps([bad["txid"]]))


def test_seek_forward_backward_forward_running_and_stopped(bootstrap, funnel_name, procs, tmp_path):
    shop, prod, mirror, applier = drill_setup(bootstrap, procs, tmp_path, funnel_name, "1h", seed=3)
    copies = []
    # Production copies at three known times, 350+ application transactions apart (by count,
    # not by time, so that a slow machine still spans 1,000 transactions).
    for goal in (350, 700, 1050):
        wait_for(lambda: shop.transactions >= goal, 120, 0.05, f"{goal} application transactions")
        copies.append(shop.act(None))
    time.sleep(1.0)
    shop.finish()
    # Application transactions; the capture groups them into fewer source transactions.
    assert shop.transactions >= 1000
    wait_for(lambda: snapshot_applied(mirror), 10, what="the initial copy on the mirror")

    def seek_to(index: int, *extra: str) -> dict:
        copy, moment = copies[index]
        out = json.loads(ok(run_funnel(bootstrap, "seek", "m1", "--to", format_time(moment), "--funnel",
                                       funnel_name, "--json", *extra)))
        assert rows(mirror) == rows(copy), f"mirror differs from production at copy {index}"
        return out

    forward = seek_to(1)  # the applier is running: through the control topic
    assert forward["plan"]["apply"]["transactions"] > 20 and forward["mode"] == "holding"
    backward = seek_to(0)
    assert backward["plan"]["undo"]["transactions"] > 20
    seek_to(2)
    time.sleep(1.5)
    assert rows(mirror) == rows(copies[2][0]), "a holding mirror must not move on"

    assert applier.stop() == 0  # now the same with the applier stopped: the CLI does the work
    sink = ("--sink", f"sqlite://{mirror}")
    dry = json.loads(ok(run_funnel(bootstrap, "seek", "m1", "--to", format_time(copies[0][1]), "--funnel",
                                   funnel_name, "--dry-run", "--json", *sink)))
    assert dry["undo"]["transactions"] > 20 and rows(mirror) == rows(copies[2][0]), "dry run changed the mirror"
    seek_to(0, *sink)
    seek_to(1, *sink)

    resumed = ok(run_funnel(bootstrap, "resume", "m1", "--funnel", funnel_name, *sink))
    assert "follows" in resumed


def test_kill_9_during_backward_seek_and_promote_drain_then_rerun(bootstrap, funnel_name, procs, tmp_path):
    shop, prod, mirror, applier = drill_setup(bootstrap, procs, tmp_path, funnel_name, "0s", seed=4)
    time.sleep(1.0)
    early, early_moment = shop.act(None)
    time.sleep(4.0)
    shop.finish()
    wait_for(lambda: rows(mirror) == rows(prod), 30, what="the mirror to catch up")
    assert applier.stop() == 0
    sink = f"sqlite://{mirror}"
    seek = Background(bootstrap, tmp_path / "seek-killed.log", "seek", "m1", "--to", format_time(early_moment),
                      "--funnel", funnel_name, "--sink", sink)
    time.sleep(random.uniform(0.8, 1.5))
    seek.kill9()
    ok(run_funnel(bootstrap, "seek", "m1", "--to", format_time(early_moment), "--funnel", funnel_name,
                  "--sink", sink))
    assert rows(mirror) == rows(early)

    drain = Background(bootstrap, tmp_path / "promote-killed.log", "promote", "m1", "--funnel", funnel_name,
                       "--sink", sink)
    time.sleep(random.uniform(0.8, 1.5))
    drain.kill9()
    ok(run_funnel(bootstrap, "promote", "m1", "--funnel", funnel_name, "--sink", sink))
    assert rows(mirror) == rows(prod)
    # The same promote once more (say the CLI died before its hook): it runs the hook, changes nothing.
    again = ok(run_funnel(bootstrap, "promote", "m1", "--funnel", funnel_name, "--sink", sink,
                          "--on-promote", "echo takeover-again"))
    assert "takeover-again" in again and rows(mirror) == rows(prod)
    other = run_funnel(bootstrap, "promote", "m1", "--funnel", funnel_name, "--sink", sink, "--at", "-1h")
    assert other.returncode == 1 and "was promoted" in other.stderr


def test_bad_targets_are_one_clear_line_and_change_nothing(bootstrap, funnel_name, procs, tmp_path):
    shop, prod, mirror, applier = drill_setup(bootstrap, procs, tmp_path, funnel_name, "0s", seed=5)
    time.sleep(1.5)
    shop.finish()
    wait_for(lambda: rows(mirror) == rows(prod), 30, what="the mirror to catch up")
    before = rows(mirror)

    def refused(*args: str) -> str:
        result = run_funnel(bootstrap, *args)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("Error: ")
        return result.stderr.splitlines()[0]

    assert "malformed" in refused("seek", "m1", "--to", "yesterday-ish", "--funnel", funnel_name)
    assert "zone" in refused("seek", "m1", "--to", "2026-01-01T10:00:00", "--funnel", funnel_name)
    assert "after the newest event" in refused("seek", "m1", "--to", "+1h", "--funnel", funnel_name)
    assert "unknown txid 'nope'" in refused("promote", "m1", "--exclude-txid", "nope", "--funnel", funnel_name)
    assert "unknown mirror 'ghost'" in refused("seek", "ghost", "--to", "-1s", "--funnel", funnel_name)
    assert "unknown funnel" in refused("seek", "m1", "--to", "-1s", "--funnel", "no-such-funnel")
    assert rows(mirror) == before
    assert sqlite3.connect(mirror).execute("SELECT hold_until, promoted_at FROM _timefunnel_state").fetchone() == (
        None, None)

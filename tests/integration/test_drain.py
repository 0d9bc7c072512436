"""Drains written as net-effect windows stay exact through kill -9; steady apply never shows half a transaction.

A funnel of random inserts, updates (some moving a key) and deletes, some transactions
spread over several messages, is published straight to the real broker. `funnel promote
--at T` (the real CLI, small drain windows so that the drain takes many) is killed -9 at
random points and rerun until it finishes: the mirror must then equal the reference
built in Python from the transactions before T, less the excluded ones.
"""
from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from funnel.events import Op, Row, TableChanges
from funnel.kafka import KafkaSettings
from funnel.timeparse import format_time
from producer.publisher import EventPublisher
from producer.sources.base import SourceTransaction
from tests.support import bank
from tests.support.processes import ROOT, funnel_env, run_funnel, start_funnel, table_rows, wait_for
from tests.support.shop import POLL, ok, snapshot_applied

COLUMNS = ["id", "name", "qty"]
KEYS = 300
TRANSACTIONS = 1200
WINDOW_ROWS = "250"  # FUNNEL_DRAIN_WINDOW_ROWS: about 15 windows before the target


def history(seed: int, start_us: int) -> list[SourceTransaction]:
    """Random keyed changes, one transaction per millisecond; every 50th one is 40 rows (several messages)."""
    rng = random.Random(seed)
    live: dict[int, list] = {}
    out = []
    for n in range(TRANSACTIONS):
        groups = []
        for _ in range(40 if n % 50 == 49 else rng.randint(1, 4)):
            key = rng.randint(1, KEYS)
            if key not in live:
                live[key] = [key, f"n{n}", rng.randint(0, 99)]
                groups.append(TableChanges("main.items", Op.INSERT, COLUMNS, ["id"], [Row(None, list(live[key]))]))
            elif rng.random() < 0.3:
                groups.append(TableChanges("main.items", Op.DELETE, COLUMNS, ["id"], [Row(live.pop(key), None)]))
            else:
                before = live.pop(key)
                moved = rng.randint(KEYS + 1, 3 * KEYS) if rng.random() < 0.1 else key
                if moved in live:
                    moved = key
                live[moved] = [moved, f"n{n}", rng.randint(0, 99)]
                groups.append(TableChanges("main.items", Op.UPDATE, COLUMNS, ["id"], [Row(before, list(live[moved]))]))
        out.append(SourceTransaction(f"tx{n}", start_us + n * 1000, n + 1, groups))
    return out


def reference(transactions: list[SourceTransaction], to: int, excluded: set[str]) -> list[tuple]:
    """The mirror at ``to``: upserts of after images and deletes by key, as the sinks apply them."""
    rows: dict[int, list] = {}
    for tx in transactions:
        if tx.commit_ts >= to or tx.txid in excluded:
            continue
        for group in tx.changes:
            for before, after in group.rows:
                if before is not None:
                    rows.pop(before[0], None)
                if after is not None:
                    rows[after[0]] = after
    return sorted(tuple(image) for image in rows.values())


def publish(bootstrap: str, funnel: str, transactions: list[SourceTransaction]) -> None:
    first = transactions[0].commit_ts
    publisher = EventPublisher(KafkaSettings(bootstrap), funnel, "test", chunk_rows=16, clock=lambda: first - 1)
    publisher.start()
    publisher.publish_snapshot(0, iter(()))
    for start in range(0, len(transactions), 300):
        publisher.publish(transactions[start:start + 300])
    publisher.close()


def mirror_with_initial_copy(bootstrap: str, funnel: str, mirror: Path, procs: list, tmp_path: Path) -> None:
    """A stopped mirror that holds the initial copy and nothing else (its delay is longer than the funnel)."""
    applier = start_funnel(bootstrap, procs, tmp_path, "apply", f"sqlite://{mirror}", "--funnel", funnel,
                           "--mirror", "m", "--delay", "3h")
    wait_for(lambda: mirror.exists() and snapshot_applied(mirror), 60, what="the initial copy on the mirror")
    assert applier.stop() == 0


def next_offset(mirror: Path) -> int:
    conn = sqlite3.connect(mirror, timeout=30)
    try:
        return conn.execute("SELECT next_offset FROM _timefunnel_state").fetchone()[0]
    finally:
        conn.close()


def promote_killed(bootstrap: str, args: list[str], mirror: Path, kill_at_offset: int) -> bool:
    """Run the promote until the mirror's position passes ``kill_at_offset``, then kill -9 it.

    Returns False when it finished first (then it must have succeeded).
    """
    env = {**funnel_env(bootstrap), "FUNNEL_DRAIN_WINDOW_ROWS": WINDOW_ROWS}
    process = subprocess.Popen([sys.executable, "-m", "funnel.cli", *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if next_offset(mirror) >= kill_at_offset:
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            return True
        time.sleep(0.005)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    return False


@pytest.mark.parametrize("exclude", [False, True], ids=["all", "excluded"])
def test_a_promote_killed_at_random_points_ends_exactly_at_the_target(bootstrap, funnel_name, procs, tmp_path,
                                                                      exclude):
    rng = random.Random(13 + exclude)
    transactions = history(seed=7 + exclude, start_us=time.time_ns() // 1000 - 3_600_000_000)
    publish(bootstrap, funnel_name, transactions)
    mirror = tmp_path / "mirror.db"
    mirror_with_initial_copy(bootstrap, funnel_name, mirror, procs, tmp_path)
    to = transactions[int(TRANSACTIONS * 0.8)].commit_ts
    excluded = set()
    if exclude:  # transactions whose leaving out shows in the final state (later ones overwrite most)
        full = reference(transactions, to, set())
        visible = [tx.txid for tx in transactions[:int(TRANSACTIONS * 0.8)]
                   if reference(transactions, to, {tx.txid}) != full]
        excluded = set(rng.sample(visible, 3))
    args = ["promote", "m", "--funnel", funnel_name, "--sink", f"sqlite://{mirror}", "--at", format_time(to)]
    args += [arg for txid in sorted(excluded) for arg in ("--exclude-txid", txid)]

    start = next_offset(mirror)
    kills = 0
    for point in sorted(rng.sample(range(start + 1, start + TRANSACTIONS // 2), 2)):
        kills += promote_killed(bootstrap, args, mirror, point)
    assert kills >= 2, "the drain finished before it could be killed: make it longer"
    done = run_funnel(bootstrap, *args, timeout=120)
    ok(done)

    assert table_rows(mirror, "items") == reference(transactions, to, excluded)
    conn = sqlite3.connect(mirror)
    promoted_at, target, stored = conn.execute(
        "SELECT promoted_at, promote_target, excluded_txids FROM _timefunnel_state").fetchone()
    conn.close()
    assert promoted_at is not None and target == to
    assert all(txid in stored for txid in excluded)


def test_a_reader_never_sees_half_a_transaction_during_steady_apply(bootstrap, funnel_name, procs, tmp_path):
    prod, mirror = tmp_path / "prod.db", tmp_path / "mirror.db"
    bank.create_bank(str(prod))
    start_funnel(bootstrap, procs, tmp_path, "capture", f"sqlite:///{prod}", "--funnel", funnel_name,
                 "--poll-interval", POLL)
    start_funnel(bootstrap, procs, tmp_path, "apply", f"sqlite:///{mirror}", "--funnel", funnel_name,
                 "--mirror", "m", "--delay", "0")
    wait_for(lambda: len(table_rows(mirror, "accounts")) == bank.ACCOUNTS, 60, what="the initial copy")
    writer = subprocess.Popen([sys.executable, "-m", "tests.support.bank", str(prod), "--seconds", "6",
                               "--pause", "0.002"], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**funnel_env(bootstrap)})
    with bank.MirrorChecker(mirror) as checker:
        last = int(writer.communicate(timeout=60)[0])
        wait_for(lambda: table_rows(mirror, "ledger")[-1:] == table_rows(prod, "ledger")[-1:], 90,
                 what="the mirror to catch up")
    assert checker.error is None and checker.reads > 20 and len(checker.tops) > 5, (checker.error, checker.reads)
    assert checker.violations == [], checker.violations[:5]
    assert table_rows(mirror, "accounts") == table_rows(prod, "accounts") and len(table_rows(mirror, "ledger")) == last

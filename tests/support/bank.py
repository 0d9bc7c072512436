"""A bank-transfer workload and its invariants, for the fault drills.

Production holds ``accounts`` and a ``ledger`` numbered 1, 2, 3, ... without gaps. Each
transfer is one SQLite transaction that debits one account, credits another and inserts
ledger row n+1. So any state a transaction boundary can show satisfies:

- the balances add up to ``ACCOUNTS * INITIAL`` (money is neither made nor lost);
- the ledger numbers are exactly 1..count (no gap, no double);
- each balance is ``INITIAL`` plus its credits minus its debits in the ledger.

A mirror that ever shows a state violating one of them applied half a transaction, lost
one or applied one twice.

    python -m tests.support.bank DB --seconds 30 [--pause 0.005]
"""
from __future__ import annotations

import argparse
import random
import sqlite3
import threading
import time
from pathlib import Path
from collections import Counter
from typing import Iterable

from tests.support.writer import until_stopped

ACCOUNTS = 10
INITIAL = 1000

SCHEMA = """
CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE ledger (n INTEGER PRIMARY KEY, src INTEGER NOT NULL, dst INTEGER NOT NULL, amount INTEGER NOT NULL);
"""


def create_bank(path: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO accounts VALUES (?, ?)", [(i, INITIAL) for i in range(ACCOUNTS)])
    conn.commit()
    conn.close()


def transfer(conn: sqlite3.Connection, rng: random.Random) -> int:
    """One transfer in one transaction; returns its ledger number."""
    src, dst = rng.sample(range(ACCOUNTS), 2)
    amount = rng.randrange(1, 50)
    conn.execute("BEGIN IMMEDIATE")
    n = conn.execute("SELECT coalesce(max(n), 0) + 1 FROM ledger").fetchone()[0]
    conn.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, src))
    conn.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, dst))
    conn.execute("INSERT INTO ledger VALUES (?, ?, ?, ?)", (n, src, dst, amount))
    conn.execute("COMMIT")
    return n


def run(path: str, seconds: float, pause: float, seed: int) -> int:
    rng = random.Random(seed)
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    last = 0
    for _ in until_stopped(seconds):
        last = transfer(conn, rng)
        time.sleep(pause)
    conn.close()
    return last


def violations(conn: sqlite3.Connection) -> list[str]:
    """The invariants that the database behind ``conn`` breaks, read in one read transaction."""
    conn.execute("BEGIN")
    try:
        total, accounts = conn.execute("SELECT coalesce(sum(balance), 0), count(*) FROM accounts").fetchone()
        count, top = conn.execute("SELECT count(*), coalesce(max(n), 0) FROM ledger").fetchone()
        unbalanced = conn.execute(
            "SELECT count(*) FROM accounts a WHERE balance != ? "
            "+ coalesce((SELECT sum(amount) FROM ledger WHERE dst = a.id), 0) "
            "- coalesce((SELECT sum(amount) FROM ledger WHERE src = a.id), 0)", (INITIAL,)).fetchone()[0]
    finally:
        conn.execute("COMMIT")
    found = []
    if accounts != ACCOUNTS or total != ACCOUNTS * INITIAL:
        found.append(f"{accounts} accounts hold {total}, not {ACCOUNTS * INITIAL}")
    if count != top:
        found.append(f"ledger has {count} rows numbered up to {top}: a gap")
    if unbalanced:
        found.append(f"{unbalanced} accounts disagree with the ledger (ledger up to {top})")
    return found


class MirrorChecker:
    """Reads the mirror over and over, checking the bank's invariants on every read."""

    def __init__(self, mirror: Path) -> None:
        self.mirror = mirror
        self.reads = 0
        self.tops: set[int] = set()  # the ledger numbers read up to: how many states the reader saw
        self.violations: list[str] = []
        self.error: BaseException | None = None  # a reader that died checks nothing: the test must fail
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._guarded, daemon=True)

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        conn = sqlite3.connect(f"file:{self.mirror}?mode=ro", uri=True, timeout=30, isolation_level=None)
        while not self.stop.is_set():
            try:
                found = violations(conn)
                self.tops.add(conn.execute("SELECT coalesce(max(n), 0) FROM ledger").fetchone()[0])
            except sqlite3.OperationalError as exc:  # a lock held past the timeout is not a violation
                if "locked" not in str(exc):
                    raise
                continue
            self.reads += 1
            self.violations += found
            time.sleep(0.01)
        conn.close()

    def __enter__(self) -> "MirrorChecker":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def ledger_counts(numbers: Iterable[int]) -> tuple[list[int], list[int]]:
    """(missing, doubled) ledger numbers among ``numbers``, which should be 1..max once each."""
    counts = Counter(numbers)
    top = max(counts, default=0)
    return ([n for n in range(1, top + 1) if n not in counts], sorted(n for n, c in counts.items() if c > 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--pause", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(run(args.db, args.seconds, args.pause, args.seed), flush=True)


if __name__ == "__main__":
    main()

"""An application writing to a production SQLite file, run as its own process by tests.

Each transaction inserts ``--tx-rows`` rows into ``events`` (all tagged with the
transaction's number), bumps one counter, and now and then updates or deletes an
older event: inserts, updates and deletes, in multi-row transactions.

    python -m tests.support.writer DB --seconds 5 [--tx-rows 5] [--pause 0.002]
"""
from __future__ import annotations

import argparse
import random
import signal
import sqlite3
import time
from collections.abc import Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, tx INTEGER NOT NULL, v TEXT, amount REAL, payload BLOB);
CREATE TABLE IF NOT EXISTS counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
"""


def create_schema(path: str, counters: int = 10) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    conn.executemany("INSERT OR IGNORE INTO counters VALUES (?, 0)", [(i,) for i in range(counters)])
    conn.commit()
    conn.close()


def until_stopped(seconds: float) -> Iterator[None]:
    """The loop of a test writer process: yields until SIGTERM arrives or ``seconds`` passed,
    so that a stopped writer ends between two of its transactions."""
    stopped = False

    def on_term(*_: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, on_term)
    deadline = time.monotonic() + seconds
    while not stopped and time.monotonic() < deadline:
        yield


def write(path: str, seconds: float, tx_rows: int, pause: float, seed: int) -> int:
    rng = random.Random(seed)
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    tx_count = conn.execute("SELECT coalesce(max(tx), 0) FROM events").fetchone()[0]
    for _ in until_stopped(seconds):
        tx_count += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events (tx, v, amount, payload) VALUES (?, ?, ?, ?)",
                         [(tx_count, f"tx{tx_count}-r{i}-é✓", rng.random() * 1000, rng.randbytes(8))
                          for i in range(tx_rows)])
        conn.execute("UPDATE counters SET n = n + 1 WHERE id = ?", (rng.randrange(10),))
        if rng.random() < 0.3:
            conn.execute("UPDATE events SET v = v || '+', amount = amount + 1 WHERE id = "
                         "(SELECT id FROM events ORDER BY random() LIMIT 1)")
        if rng.random() < 0.2:
            conn.execute("DELETE FROM events WHERE id = (SELECT min(id) FROM events)")
        conn.execute("COMMIT")
        if pause:
            time.sleep(pause)
    conn.close()
    return tx_count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--tx-rows", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(write(args.db, args.seconds, args.tx_rows, args.pause, args.seed), flush=True)


if __name__ == "__main__":
    main()

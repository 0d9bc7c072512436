"""Capture rate from a production SQLite file into the funnel, with baselines from the same run.

An application inserts and updates ``--rows`` rows (8 mixed-type columns, 100-row
transactions) into a production file on which capture is installed; then the capture
loop (seal, read the changelog, encode, publish in Kafka transactions, acknowledge)
drains all of it into the real broker. Baselines: the application's own write rate
with the capture triggers in place, and the raw changelog read rate.

    .venv/bin/python bench/capture_sqlite.py [--rows 500000]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from common import broker, new_funnel  # noqa: I001

from funnel.control import ControlChannel
from producer.capture import Capture, CaptureOptions
from producer.publisher import EventPublisher
from producer.sources.sqlite import SqliteSource

SCHEMA = ("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, qty INTEGER, price REAL, note TEXT, "
          "paid INTEGER, payload BLOB, updated_at TEXT)")


def write_application(path: Path, rows: int, source: SqliteSource) -> float:
    """Insert ``rows`` rows (every fifth an update of an older one) in 100-row transactions; returns rows/s.

    Seals every 100 transactions, as a capture polling every 0.2 s would at ~50k rows/s.
    """
    rng = random.Random(5)
    conn = sqlite3.connect(path, isolation_level=None)
    started = time.perf_counter()
    next_id = 0
    for first in range(0, rows, 100):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [(i, f"customer-{i % 977}", i % 13, i * 0.5, "größe ✓", i % 2, rng.randbytes(16),
                           "2026-11-29T12:00:00Z") for i in range(next_id, next_id + 80)])
        next_id += 80
        conn.executemany("UPDATE orders SET qty = qty + 1 WHERE id = ?",  # every update hits a row
                         [(rng.randrange(0, next_id),) for _ in range(20)])
        conn.execute("COMMIT")
        if first % 10_000 == 0:
            source.seal()
    seconds = time.perf_counter() - started
    conn.close()
    return rows / seconds


def changelog_read_rate(path: Path) -> float:
    conn = sqlite3.connect(path)
    started = time.perf_counter()
    count = sum(1 for _ in conn.execute("SELECT * FROM _timefunnel_changelog"))
    seconds = time.perf_counter() - started
    conn.close()
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500_000)
    args = parser.parse_args()
    with broker() as kafka, tempfile.TemporaryDirectory() as tmp:
        prod = Path(tmp, "prod.db")
        conn = sqlite3.connect(prod)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(SCHEMA)
        conn.close()
        funnel = new_funnel(kafka)
        source = SqliteSource(str(prod))
        capture = Capture(source, EventPublisher(kafka, funnel, "prod"), ControlChannel(kafka, funnel),
                          CaptureOptions(groups_per_publish=50))
        position = capture.start()  # installs the triggers, publishes the (empty) initial copy
        app_rate = write_application(prod, args.rows, source)
        raw_read = changelog_read_rate(prod)
        source.seal()  # everything the application wrote is now one or more sealed groups
        started = time.perf_counter()
        backlog = True
        while backlog:
            backlog, position = capture.step(position, seal=False)
        seconds = time.perf_counter() - started
        published = capture.publisher.published_rows
        capture.close()
    print(json.dumps({
        "bench": "capture_sqlite", "rows": published, "seconds": round(seconds, 2),
        "rows_per_s": round(published / seconds), "application_write_rows_per_s": round(app_rate),
        "ratio_to_application_writes": round(published / seconds / app_rate, 3),
        "raw_changelog_read_rows_per_s": round(raw_read), "target_rows_per_s": 50_000,
        "load_average": [round(x, 2) for x in os.getloadavg()[:2]]}))


if __name__ == "__main__":
    main()

"""Rows/s of SqliteSink.apply against a raw executemany upsert baseline, as one JSON object.

Workload (docs/ARCHITECTURE.md, Performance notes): source transactions of 10 rows, 8 mixed-type
columns, half inserts of new keys and half updates of random existing keys; 100
transactions per apply call, i.e. 1,000 rows per commit.  The baselines upsert the
same rows with one ``executemany`` per 1,000-row commit:

* ``baseline``: the sink's own pragmas (``MIRROR_PRAGMAS``: WAL, synchronous=NORMAL,
  a checkpoint every 10,000 pages), so ``ratio`` is the cost of the sink's code alone;
* ``baseline_wal_normal``: only WAL and synchronous=NORMAL (SQLite's default
  checkpointing), the baseline configuration of
  docs/ARCHITECTURE.md.

All write to fresh files in one temporary directory and are timed call by call,
interleaved, so all see the same machine noise; building the events is not timed.

    .venv/bin/python bench/sink_sqlite.py [--rows 1000000] [--dir /tmp]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from applier.sinks.sqlite import MIRROR_PRAGMAS, SqliteSink  # noqa: E402
from applier.sinks.sqlite_sql import create_table_sql, upsert_sql  # noqa: E402
from applier.transaction import MirrorPosition, Transaction  # noqa: E402
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges, Value  # noqa: E402

TABLE = "main.orders"
MIRROR_TABLE = "orders"
COLUMNS = ["id", "customer", "qty", "price", "note", "paid", "payload", "updated_at"]
KEY = ["id"]
TX_ROWS = 10
TX_PER_CALL = 100


class Workload:
    """Deterministic transactions: inserts of new keys, updates of random existing ones."""

    table = TABLE  # subclasses change the table and the row images (bench/apply_postgres.py)

    def __init__(self, seed: int = 7) -> None:
        self._random = random.Random(seed)
        self._rows: dict[int, list[Value]] = {}
        self._next_id = 1
        self._txid = 0
        self._commit_ts = 1_700_000_000_000_000

    def _image(self, key: int) -> list[Value]:
        r = self._random
        return [
            key,
            f"customer-{r.randrange(100_000)}",
            r.randrange(1, 1_000),
            round(r.uniform(0, 10_000), 2),
            "größe ✓ " * r.randrange(1, 4),
            r.random() < 0.5,
            r.randbytes(16),
            "2024-05-01T12:00:00.000000+00:00" if r.random() < 0.9 else None,
        ]

    def transaction(self, offset: int) -> Transaction:
        half = TX_ROWS // 2
        inserts = TableChanges(self.table, Op.INSERT, COLUMNS, KEY)
        for _ in range(half):
            key = self._next_id
            self._next_id += 1
            self._rows[key] = after = self._image(key)
            inserts.rows.append(Row(None, after))
        updates = TableChanges(self.table, Op.UPDATE, COLUMNS, KEY)
        for _ in range(half):
            key = self._random.randrange(1, self._next_id)
            before, self._rows[key] = self._rows[key], self._image(key)
            updates.rows.append(Row(before, self._rows[key]))
        self._txid += 1
        self._commit_ts += 1_000
        batch = ChangeBatch("bench", str(self._txid), self._commit_ts, self._txid, 0, TX_ROWS,
                            Kind.CHANGES, [inserts, updates])
        return Transaction(str(self._txid), self._commit_ts, Kind.CHANGES, offset, offset, [batch])


WAL_NORMAL = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")


class Baseline:
    """Raw executemany upserts, one commit per apply call's worth of rows."""

    def __init__(self, path: Path, pragmas: tuple[str, ...]) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        for pragma in pragmas:
            self.conn.execute(pragma)
        self.conn.execute(create_table_sql(MIRROR_TABLE, COLUMNS, KEY))
        self.upsert = upsert_sql(MIRROR_TABLE, COLUMNS, KEY)
        self.seconds = 0.0

    def commit(self, images: list[list[Value]]) -> None:
        started = time.perf_counter()
        self.conn.execute("BEGIN")
        self.conn.executemany(self.upsert, images)
        self.conn.execute("COMMIT")
        self.seconds += time.perf_counter() - started


def run(rows: int, directory: str | None) -> dict[str, object]:
    calls = rows // (TX_ROWS * TX_PER_CALL)
    workload = Workload()
    sink_seconds = 0.0
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        base = Baseline(Path(tmp, "baseline.db"), MIRROR_PRAGMAS)
        plain = Baseline(Path(tmp, "baseline_wal_normal.db"), WAL_NORMAL)
        sink = SqliteSink(Path(tmp, "sink.db"))
        for call in range(calls):
            first = call * TX_PER_CALL
            txs = [workload.transaction(first + i) for i in range(TX_PER_CALL)]
            images = [row.after for tx in txs for group in tx.changes for row in group.rows]
            position = MirrorPosition("bench", "m1", "bench", 0, first + TX_PER_CALL, txs[-1].txid,
                                      txs[-1].commit_ts, txs[-1].commit_ts)
            base.commit(images)
            plain.commit(images)
            started = time.perf_counter()
            sink.apply(txs, position)
            sink_seconds += time.perf_counter() - started
        check_same(base.conn, sink)
        base.conn.close()
        plain.conn.close()
        sink.close()
    applied = calls * TX_PER_CALL * TX_ROWS
    return {
        "bench": "sink_sqlite",
        "rows": applied,
        "tx_rows": TX_ROWS,
        "rows_per_commit": TX_ROWS * TX_PER_CALL,
        "sink_rows_per_s": round(applied / sink_seconds),
        "baseline_rows_per_s": round(applied / base.seconds),
        "ratio": round(base.seconds / sink_seconds, 3),
        "target_ratio": 0.6,
        "baseline_wal_normal_rows_per_s": round(applied / plain.seconds),
        "ratio_vs_wal_normal": round(plain.seconds / sink_seconds, 3),
        "sink_pragmas": list(MIRROR_PRAGMAS),
        "sqlite": sqlite3.sqlite_version,
        "python": platform.python_version(),
    }


def check_same(base: sqlite3.Connection, sink: SqliteSink) -> None:
    """Both databases must hold the same rows, or the comparison means nothing."""
    query = f"SELECT * FROM {MIRROR_TABLE} ORDER BY id"
    sink_conn = sqlite3.connect(sink.path)
    try:
        if base.execute(query).fetchall() != sink_conn.execute(query).fetchall():
            raise SystemExit("sink and baseline databases differ")
    finally:
        sink_conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", default=None, help="directory for the database files")
    args = parser.parse_args()
    result = run(args.rows, args.dir)
    result["load_average"] = [round(x, 2) for x in os.getloadavg()[:2]]
    print(json.dumps(result))


if __name__ == "__main__":
    main()

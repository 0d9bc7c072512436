"""End-to-end apply rate into a PostgreSQL mirror through the real broker, with its baseline.

bench/apply_postgres.py's workload (1,000,000 row events in 10-row transactions, 8
mixed-type columns, half inserts half updates) is published into a funnel and drained
by the real `funnel apply` process into a PostgreSQL mirror with delay 0. The baseline,
measured in the same run on the same server, applies the same rows without Kafka: binary
COPY into a temp table and one INSERT ... SELECT ... ON CONFLICT per 1,000 rows.

    .venv/bin/python bench/apply_postgres_e2e.py [--rows 1000000]
"""
from __future__ import annotations

import argparse
import json
import os
import time

from apply_postgres import DDL, Baseline, Workload, fresh_database, server  # noqa: I001
from apply_sqlite import drain
from common import broker, new_funnel, publish_all

import psycopg

from producer.sources.base import SourceTransaction


def transactions(rows: int):
    workload, old = Workload(), time.time_ns() // 1000 - 3_600_000_000
    for offset in range(rows // 10):
        tx = workload.transaction(offset)
        yield SourceTransaction(tx.txid, old + offset, offset + 1, tx.changes)


def baseline_rows_per_s(url: str, rows: int) -> float:
    base, workload, seconds = Baseline(url), Workload(), 0.0
    for call in range(rows // 1000):
        images = [row.after for i in range(100) for group in workload.transaction(call * 100 + i).changes
                  for row in group.rows]
        started = time.perf_counter()
        base.commit(images)
        seconds += time.perf_counter() - started
    base.conn.close()
    return rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with broker() as kafka, server() as (admin_url, _), fresh_database(admin_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE orders {DDL}")
        funnel = new_funnel(kafka)
        published = publish_all(kafka, funnel, transactions(args.rows))
        seconds, rss = drain(kafka, funnel, url)
        with psycopg.connect(url) as conn:
            mirror_rows = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
        base = baseline_rows_per_s(url, args.rows)
    print(json.dumps({"bench": "apply_postgres_e2e", "rows": published, "mirror_rows": mirror_rows,
                      "seconds": round(seconds, 2), "rows_per_s": round(published / seconds),
                      "baseline_copy_upsert_rows_per_s": round(base), "ratio": round(published / seconds / base, 3),
                      "peak_rss_mb": round(rss, 1), "load_average": [round(x, 2) for x in os.getloadavg()[:2]],
                      "targets": {"rows_per_s": 50_000, "ratio": 0.5}}))


if __name__ == "__main__":
    main()

"""Rows/s from committed PostgreSQL transactions into the funnel, as one JSON object.

Two workloads are committed while capture is stopped, so that capture then drains a
backlog at its own speed (a live run would only measure the workload's rate):

* ``small``: pgbench, 4 clients, tpcb-like transactions of 4 row changes (three
  updates and an insert, 8-column history rows);
* ``bulk``: ``INSERT ... SELECT`` transactions of 10,000 rows of 8 columns.

For each, measured in the same run on the same WAL:

* ``capture_rows_per_s``: ``Capture.step`` (PostgresSource + EventPublisher into a
  real Kafka broker, each batch committed in a Kafka transaction, then acknowledged);
* ``decode_rows_per_s``: PostgresSource alone (stream, decode, assemble; no Kafka);
* ``baseline_peek_rows_per_s``: the server's own decoding rate, ``count(*)`` over
  ``pg_logical_slot_get_binary_changes`` with the same plugin and publication;
* ``insert_rows_per_s``: the rate at which the workload committed the rows;
* ``decode_cpu_us_per_row``, ``capture_cpu_us_per_row``: the CPU time this process
  spent per row in each (librdkafka's threads included), steadier than the rates on a
  machine shared with other work.

``snapshot_rows_per_s`` is the initial copy of the 100,000-row accounts table.
PostgreSQL is ``FUNNEL_BENCH_POSTGRES`` (a superuser URL) or a private server made from
the installed binaries; Kafka is ``FUNNEL_BOOTSTRAP`` or a local broker.

    .venv/bin/python bench/capture_postgres.py [--small-tx 20000] [--bulk-rows 200000]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

import psycopg  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

from funnel.kafka import KafkaSettings  # noqa: E402
from funnel.topic import FunnelAdmin, FunnelSpec  # noqa: E402
from producer.capture import Capture, CaptureOptions  # noqa: E402
from producer.publisher import EventPublisher  # noqa: E402
from producer.sources.postgres import PostgresSource  # noqa: E402
from producer.sources.postgres.pgoutput import lsn_from_text  # noqa: E402
from tests.support.pgserver import PrivatePostgres, find_pg_bin  # noqa: E402

ACCOUNTS = 100_000
CLIENTS = 4
SCHEMA = f"""
CREATE TABLE accounts (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL, filler char(84));
CREATE TABLE tellers (tid int PRIMARY KEY, bid int NOT NULL, tbalance int NOT NULL, filler char(84));
CREATE TABLE branches (bid int PRIMARY KEY, bbalance int NOT NULL, filler char(88));
CREATE TABLE history (id bigserial PRIMARY KEY, tid int, bid int, aid int, delta int, mtime timestamptz,
                      note text, ok bool);
CREATE TABLE bulk (id bigint PRIMARY KEY, customer text, qty int, price float8, note text, paid bool,
                   payload bytea, updated_at timestamptz);
CREATE TABLE marker (id int PRIMARY KEY);
INSERT INTO accounts SELECT g, 1, 0, '' FROM generate_series(1, {ACCOUNTS}) g;
INSERT INTO tellers SELECT g, g, 0, '' FROM generate_series(1, {CLIENTS}) g;
INSERT INTO branches SELECT g, 0, '' FROM generate_series(1, {CLIENTS}) g;
"""
# tpcb-like, but each client keeps to its own teller and branch: no deadlocks
PGBENCH_SCRIPT = f"""
\\set aid random(1, {ACCOUNTS})
\\set delta random(-5000, 5000)
BEGIN;
UPDATE accounts SET abalance = abalance + :delta WHERE aid = :aid;
UPDATE tellers SET tbalance = tbalance + :delta WHERE tid = :client_id + 1;
UPDATE branches SET bbalance = bbalance + :delta WHERE bid = :client_id + 1;
INSERT INTO history (tid, bid, aid, delta, mtime, note, ok)
  VALUES (:client_id + 1, :client_id + 1, :aid, :delta, CURRENT_TIMESTAMP, 'pgbench', true);
END;
"""
BULK_TX_ROWS = 10_000


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, str]]:
    """(superuser URL, description)."""
    explicit = os.environ.get("FUNNEL_BENCH_POSTGRES")
    if explicit:
        yield explicit, f"external server {explicit}"
        return
    server = PrivatePostgres().start()
    try:
        yield server.url, f"private {server.version}"
    finally:
        server.stop()


@contextlib.contextmanager
def kafka() -> Iterator[tuple[str, str]]:
    explicit = os.environ.get("FUNNEL_BOOTSTRAP")
    if explicit:
        yield explicit, f"external broker {explicit}"
        return
    from funnel.broker import LocalBroker

    with tempfile.TemporaryDirectory(prefix="timefunnel-bench-broker-") as state, LocalBroker(state) as broker:
        yield broker.bootstrap, f"Apache Kafka {broker.info.version} (local)"


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


class Bench:
    def __init__(self, url: str, bootstrap: str, groups_per_publish: int) -> None:
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        tag = uuid.uuid4().hex[:8]
        settings = KafkaSettings(bootstrap)
        FunnelAdmin(settings).create(FunnelSpec(f"bench-pg-{tag}", 86_400))
        self.conn.execute(SCHEMA)
        self.capture_source = PostgresSource(url, slot=f"bench_capture_{tag}")
        self.capture = Capture(self.capture_source, EventPublisher(settings, f"bench-pg-{tag}", "bench"),
                               options=CaptureOptions(groups_per_publish=groups_per_publish))
        started = time.perf_counter()
        self.position = self.capture.start()  # installs, publishes the initial copy
        self.snapshot_s = time.perf_counter() - started
        self.snapshot_rows = self.capture.stats.snapshot_rows
        self.decode_source = PostgresSource(url, slot=f"bench_decode_{tag}",
                                            publication=self.capture_source.publication)
        snapshot = self.decode_source.snapshot()
        snapshot.close()
        self.decode_position = snapshot.position
        self.peek_slot = f"bench_peek_{tag}"
        self.conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.peek_slot,))

    def marker(self, value: int) -> int:
        """Commits a marker row; returns an LSN that the marker's commit ends after."""
        with psycopg.connect(self.url) as conn:
            conn.execute("INSERT INTO marker VALUES (%s)", (value,))
            before = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
        return lsn_from_text(before)

    def small(self, transactions: int, script: Path) -> tuple[int, float]:
        params = conninfo_to_dict(self.url)
        started = time.perf_counter()
        subprocess.run([str(find_pg_bin() / "pgbench"), "-n", "-c", str(CLIENTS), "-j", "2",
                        "-t", str(transactions // CLIENTS), "-f", str(script), "-h", params["host"],
                        "-p", str(params["port"]), "-U", params["user"], params["dbname"]],
                       check=True, capture_output=True)
        return transactions // CLIENTS * CLIENTS * 4, time.perf_counter() - started

    def bulk(self, rows: int, start_id: int) -> tuple[int, float]:
        started = time.perf_counter()
        for first in range(start_id, start_id + rows, BULK_TX_ROWS):
            self.conn.execute(
                "INSERT INTO bulk SELECT g, 'customer-' || (g %% 1000), g %% 97, g * 0.25, md5(g::text), g %% 2 = 0, "
                "int8send(g), now() FROM generate_series(%s::bigint, %s::bigint) g", (first, first + BULK_TX_ROWS - 1))
        return rows, time.perf_counter() - started

    def measure(self, end: int) -> dict[str, float]:
        figures = {"baseline_peek_rows_per_s": self.peek()}
        figures["decode_rows_per_s"], figures["decode_cpu_us_per_row"] = self.decode(end)
        figures["capture_rows_per_s"], figures["capture_cpu_us_per_row"] = self.run_capture(end)
        return figures

    def peek(self) -> float:
        started = time.perf_counter()
        rows = self.conn.execute(
            "SELECT count(*) FILTER (WHERE get_byte(data, 0) IN (73, 85, 68)) "  # I, U, D
            "FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, 'proto_version', '1', "
            "'publication_names', %s)", (self.peek_slot, self.capture_source.publication)).fetchone()[0]
        return rows / (time.perf_counter() - started)

    def decode(self, end: int) -> tuple[float, float]:
        """(rows/s, CPU µs per row of this process)."""
        rows, started, cpu = 0, time.perf_counter(), time.process_time()
        while self.decode_position <= end:
            batch = self.decode_source.transactions_after(self.decode_position, 200)
            if batch:
                rows += sum(tx.row_count for tx in batch)
                self.decode_position = batch[-1].position
                self.decode_source.acknowledge(self.decode_position)
        rows -= 1  # the marker
        return rows / (time.perf_counter() - started), (time.process_time() - cpu) / rows * 1e6

    def run_capture(self, end: int) -> tuple[float, float]:
        """(rows/s, CPU µs per row of this process, librdkafka's threads included)."""
        rows_before, started = self.capture.publisher.published_rows, time.perf_counter()
        cpu = time.process_time()
        while self.position <= end:
            _, self.position = self.capture.step(self.position, seal=False)
        self.capture.settle()  # the last commit may still be in flight
        rows = self.capture.publisher.published_rows - rows_before - 1  # minus the marker
        return rows / (time.perf_counter() - started), (time.process_time() - cpu) / rows * 1e6

    def close(self) -> None:
        self.capture.close()
        self.decode_source.drop()
        self.decode_source.close()
        for slot in (self.capture_source.slot, self.peek_slot):
            deadline = time.monotonic() + 30
            while True:  # our walsender may take a moment to let go of the slot
                try:
                    self.conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    break
                except psycopg.errors.ObjectInUse:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        self.conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-tx", type=int, default=20_000, help="pgbench transactions (4 rows each)")
    parser.add_argument("--bulk-rows", type=int, default=200_000, help="rows in 10,000-row transactions")
    parser.add_argument("--groups-per-publish", type=int, default=CaptureOptions().groups_per_publish,
                        help="source transactions per Kafka transaction [default: the capture's]")
    args = parser.parse_args()
    # the tables are keyed but not REPLICA IDENTITY FULL: one warning per table, twice, is noise here
    logging.getLogger("timefunnel.capture.postgres").setLevel(logging.ERROR)
    with postgres() as (admin_url, pg_description), kafka() as (bootstrap, kafka_description), \
            tempfile.TemporaryDirectory() as scratch:
        database = f"tf_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        script = Path(scratch) / "small.sql"
        script.write_text(PGBENCH_SCRIPT)
        bench = Bench(with_database(admin_url, database), bootstrap, args.groups_per_publish)
        try:
            results = {}
            rows, seconds = bench.small(args.small_tx, script)
            results["small"] = {"rows": rows, "rows_per_tx": 4, "insert_rows_per_s": rows / seconds,
                                **bench.measure(bench.marker(1))}
            rows, seconds = bench.bulk(args.bulk_rows, 1)
            results["bulk"] = {"rows": rows, "rows_per_tx": BULK_TX_ROWS, "insert_rows_per_s": rows / seconds,
                               **bench.measure(bench.marker(2))}
        finally:
            bench.close()
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    for figures in results.values():
        # the same-run baseline: the server's own decoding of the same changes
        ratio = figures["capture_rows_per_s"] / figures["baseline_peek_rows_per_s"]
        for name, value in figures.items():
            figures[name] = round(value, 2) if name.endswith("_us_per_row") else round(value)
        figures["ratio_to_peek"] = round(ratio, 4)
    print(json.dumps({
        "bench": "capture_postgres", "target_rows_per_s": 30_000, "groups_per_publish": args.groups_per_publish,
        "snapshot_rows_per_s": round(bench.snapshot_rows / bench.snapshot_s), **results,
        "meets_target": all(f["capture_rows_per_s"] >= 30_000 for f in results.values()),
        "postgresql": pg_description, "kafka": kafka_description,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "issue13_target_small_tx_rows_per_s": 80_000,
        "load_average": [round(x, 2) for x in os.getloadavg()[:2]],
    }))


if __name__ == "__main__":
    main()

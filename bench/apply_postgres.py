"""Rows/s of PostgresSink.apply against a hand-written COPY upsert baseline, as one JSON object.

Workload (docs/ARCHITECTURE.md, Performance notes): source transactions of 10 rows, 8 mixed-type
columns (bigint key, text, integer, numeric(12,2) and timestamptz as canonical text,
text with non-ASCII, boolean, bytea), half inserts of new keys and half updates of
random existing keys; 100 transactions per apply call, i.e. 1,000 rows per commit.

The baseline applies the same rows without the sink, the fastest path measured
(docs/ARCHITECTURE.md): collapse each 1,000-row commit to the last image per key, binary COPY it
into a temp table (numeric and timestamptz as text), then one
``INSERT ... SELECT ... ON CONFLICT (id) DO UPDATE`` with casts, and commit.  Both use
their own connection with synchronous_commit=off (the sink's setting) on one fresh
database and are timed call by call, interleaved, so both see the same machine noise;
building the events is not timed.  ``ratio`` is baseline time / sink time.

Our machines are shared, so wall-clock rows/s move with whatever else runs.  The JSON
therefore also gives CPU seconds, of this process and of each side's server backend
(read from /proc when the server runs on this machine), and rows per CPU second
(client + server), which load distorts far less; and the load average at start and end.

Server: ``$FUNNEL_TEST_POSTGRES`` (a URL) if set, else a private server started from
the installed binaries (tests/support/pgserver.py).

    .venv/bin/python bench/apply_postgres.py [--rows 1000000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from applier.sinks.postgres import COPY_MIN_ROWS, PostgresSink  # noqa: E402
from applier.transaction import MirrorPosition  # noqa: E402
from funnel.events import Value  # noqa: E402
from sink_sqlite import Workload as SqliteWorkload  # noqa: E402

TABLE = "public.orders"
BASELINE_TABLE = "orders_baseline"
COLUMNS = ["id", "customer", "qty", "price", "note", "paid", "payload", "updated_at"]
KEY = ["id"]
DDL = ("(id bigint PRIMARY KEY, customer text, qty integer, price numeric(12,2), note text, "
       "paid boolean, payload bytea, updated_at timestamptz)")
TX_ROWS = 10
TX_PER_CALL = 100


class Workload(SqliteWorkload):
    """bench/sink_sqlite.py's transactions, with PostgreSQL-typed images (numeric and timestamptz as text)."""

    table = TABLE

    def _image(self, key: int) -> list[Value]:
        r = self._random
        return [
            key,
            f"customer-{r.randrange(100_000)}",
            r.randrange(1, 1_000),
            f"{r.randrange(1_000_000)}.{r.randrange(100):02d}",  # numeric: canonical text
            "größe ✓ " * r.randrange(1, 4),
            r.random() < 0.5,
            r.randbytes(16),
            f"2024-05-01 12:{r.randrange(60):02d}:00.{r.randrange(10**6):06d}+00" if r.random() < 0.9 else None,
        ]


class Meter:
    """Wall, client CPU and server backend CPU seconds spent in timed calls of one side."""

    def __init__(self, backend_pid: int | None) -> None:
        self.backend_pid = backend_pid
        self.wall = self.client = self.server = 0.0
        self._started: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __enter__(self) -> Meter:
        self._started = (time.perf_counter(), time.process_time(), backend_cpu(self.backend_pid))
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall, client, server = self._started
        self.wall += time.perf_counter() - wall
        self.client += time.process_time() - client
        self.server += backend_cpu(self.backend_pid) - server


def backend_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of a local server backend; 0 when it cannot be read."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def local_backend(conn: psycopg.Connection, application_name: str) -> int | None:
    """The pid of the backend serving ``application_name`` in this database, if it runs here."""
    row = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                       "AND application_name = %s", (application_name,)).fetchone()
    if row is None:
        return None
    try:
        with open(f"/proc/{row[0]}/cmdline", "rb") as cmdline:
            return row[0] if b"postgres" in cmdline.read() else None
    except OSError:
        return None  # a server on another machine


class Baseline:
    """Binary COPY into a temp table + one INSERT ... SELECT ... ON CONFLICT per commit."""

    STAGE_TYPES = ["int8", "text", "int4", "text", "text", "bool", "bytea", "text"]

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True, application_name="timefunnel-bench-baseline")
        self.conn.execute("SET synchronous_commit = off")
        self.conn.execute(f"CREATE TABLE {BASELINE_TABLE} {DDL}")
        self.conn.execute("CREATE TEMP TABLE stage (id int8, customer text, qty int4, price text, note text, "
                          "paid bool, payload bytea, updated_at text) ON COMMIT DELETE ROWS")
        names = ", ".join(COLUMNS)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])
        self.upsert = (f"INSERT INTO {BASELINE_TABLE} ({names}) SELECT id, customer, qty, price::numeric(12,2), "
                       f"note, paid, payload, updated_at::timestamptz FROM stage "
                       f"ON CONFLICT (id) DO UPDATE SET {updates}")
        self.copy = f"COPY stage ({names}) FROM STDIN (FORMAT BINARY)"

    def commit(self, images: list[list[Value]]) -> None:
        latest = {image[0]: image for image in images}  # last write per key: ON CONFLICT needs distinct keys
        with self.conn.transaction():
            cursor = self.conn.cursor()
            with cursor.copy(self.copy) as copy:
                copy.set_types(self.STAGE_TYPES)
                for image in latest.values():
                    copy.write_row(image)
            cursor.execute(self.upsert)


@contextmanager
def server() -> Iterator[tuple[str, str]]:
    """(URL of the maintenance database, description) of the server to measure on."""
    explicit = os.environ.get("FUNNEL_TEST_POSTGRES")
    if explicit:
        yield explicit, "FUNNEL_TEST_POSTGRES"
        return
    from tests.support.pgserver import PrivatePostgres

    private = PrivatePostgres().start()
    try:
        yield private.url, "private server (fsync=off)"
    finally:
        private.stop()


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new database on the server of ``url``, dropped afterwards; yields its URL."""
    name = f"timefunnel_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(rows: int, url: str) -> dict[str, object]:
    calls = rows // (TX_ROWS * TX_PER_CALL)
    workload = Workload()
    base = Baseline(url)
    base.conn.execute(f"CREATE TABLE orders {DDL}")
    sink = PostgresSink(url)
    base_meter = Meter(local_backend(base.conn, "timefunnel-bench-baseline"))
    sink_meter = Meter(local_backend(base.conn, "timefunnel-applier"))
    load_start = os.getloadavg()
    try:
        for call in range(calls):
            first = call * TX_PER_CALL
            txs = [workload.transaction(first + i) for i in range(TX_PER_CALL)]
            images = [row.after for tx in txs for group in tx.changes for row in group.rows]
            position = MirrorPosition("bench", "m1", "bench", 0, first + TX_PER_CALL, txs[-1].txid,
                                      txs[-1].commit_ts, txs[-1].commit_ts)
            with base_meter:
                base.commit(images)
            with sink_meter:
                sink.apply(txs, position)
        check_same(base.conn)
        version = base.conn.execute("SHOW server_version").fetchone()[0]
    finally:
        sink.close()
        base.conn.close()
    applied = calls * TX_PER_CALL * TX_ROWS
    return {
        "bench": "apply_postgres",
        "rows": applied,
        "tx_rows": TX_ROWS,
        "rows_per_commit": TX_ROWS * TX_PER_CALL,
        "sink_rows_per_s": round(applied / sink_meter.wall),
        "baseline_rows_per_s": round(applied / base_meter.wall),
        "ratio": round(base_meter.wall / sink_meter.wall, 3),
        "target_ratio": 0.5,
        "target_rows_per_s": 50_000,
        **cpu_figures("sink", sink_meter, applied),
        **cpu_figures("baseline", base_meter, applied),
        "load_average": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "copy_min_rows": COPY_MIN_ROWS,
        "postgresql": version,
        "psycopg": psycopg.__version__,
        "python": platform.python_version(),
    }


def cpu_figures(side: str, meter: Meter, rows: int) -> dict[str, object]:
    """CPU seconds of one side and its rows per CPU second (client + server backend)."""
    if meter.backend_pid is None:
        return {f"{side}_client_cpu_s": round(meter.client, 2)}
    return {
        f"{side}_client_cpu_s": round(meter.client, 2),
        f"{side}_server_cpu_s": round(meter.server, 2),
        f"{side}_rows_per_cpu_s": round(rows / (meter.client + meter.server)),
    }


def check_same(conn: psycopg.Connection) -> None:
    """Both tables must hold the same rows, or the comparison means nothing."""
    differ = conn.execute(f"SELECT count(*) FROM ((TABLE orders EXCEPT TABLE {BASELINE_TABLE}) "
                          f"UNION ALL (TABLE {BASELINE_TABLE} EXCEPT TABLE orders)) AS d").fetchone()[0]
    if differ:
        raise SystemExit(f"sink and baseline tables differ in {differ} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with server() as (url, description), fresh_database(url) as database:
        result = run(args.rows, database)
    result["server"] = description
    print(json.dumps(result))


if __name__ == "__main__":
    main()

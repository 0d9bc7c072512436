"""PostgreSQL to PostgreSQL through the real CLI and broker: every type round-trips exactly,
and the disaster drill (a DELETE without WHERE, found and undone by promote --at)."""
from __future__ import annotations

import json
import random
import threading
import time

import psycopg

from tests.support.processes import run_funnel, start_funnel, wait_for

TYPES_TABLE = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE everything (
    id integer PRIMARY KEY,
    i2 smallint, i8 bigint, num numeric, num_scaled numeric(12, 4), r real, d double precision,
    t text, vc varchar(20), flag boolean, raw bytea, day date, clock time, stamp timestamp,
    stamp_tz timestamptz, span interval, uid uuid, doc json, docb jsonb, ints integer[], words text[],
    feeling mood, doubled bigint GENERATED ALWAYS AS (i2::bigint * 2) STORED,
    serial_id bigint GENERATED ALWAYS AS IDENTITY
);
ALTER TABLE everything REPLICA IDENTITY FULL;
"""

ORDINARY = ("1, 1, 10, 1.5, 1.25, 0.5, 0.25, 'plain', 'short', true, '\\x00ff', '2026-11-29', '12:34:56', "
            "'2026-11-29 12:34:56', '2026-11-29 12:34:56+00', '1 day 02:03:04', "
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2]}', '{\"b\": {\"c\": null}}', '{1,2,3}', "
            "'{x,\"y z\"}', 'ok'")

EDGES = {
    "i2": "-32768", "i8": "9223372036854775807", "num": "12345678901234567890.123456789",
    "num_scaled": "-99999999.9999", "r": "'-Infinity'", "d": "'NaN'", "t": "'ünïcødé ✓ 𝄞 \"quoted\" \\ back'",
    "vc": "''", "flag": "false", "raw": "'\\x'", "day": "'infinity'", "clock": "'24:00:00'",
    "stamp": "'1999-12-31 23:59:59.999999'", "stamp_tz": "'2026-03-29 01:30:00.123456+05:45'",
    "span": "'-178000000 years'", "uid": "'00000000-0000-0000-0000-000000000000'", "doc": "'[]'",
    "docb": "'{\"z\": 1, \"a\": [true, false, null, 1.5e300]}'", "ints": "'{}'", "words": "'{NULL,\"\"}'",
    "feeling": "'happy'",
}


def as_text(url: str, table: str, key: str = "id") -> list[tuple]:
    """Every column through its type's output function, in key order."""
    with psycopg.connect(url) as conn:
        columns = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum", (table,))]
        select = ", ".join(f"CASE WHEN {c} IS NULL THEN NULL ELSE format('%s', {c}) END" for c in columns)
        return conn.execute(f"SELECT {select} FROM {table} ORDER BY {key}").fetchall()


def safe_text(url: str, table: str, key: str = "id") -> list[tuple] | None:
    try:
        return as_text(url, table, key)
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedObject):
        return None


def test_every_type_round_trips_from_postgresql_to_postgresql(bootstrap, funnel_name, pg_databases, procs, tmp_path):
    prod, mirror = pg_databases
    with psycopg.connect(prod, autocommit=True) as conn:
        conn.execute(TYPES_TABLE)
        conn.execute(f"INSERT INTO everything (id, i2, i8, num, num_scaled, r, d, t, vc, flag, raw, day, clock, stamp,"
                     f" stamp_tz, span, uid, doc, docb, ints, words, feeling) VALUES ({ORDINARY})")
    with psycopg.connect(mirror, autocommit=True) as conn:
        # The operator creates the mirror's schema from production's (pg_dump --schema-only): the
        # generated column is then computed by the mirror itself (README, PostgreSQL).
        conn.execute(TYPES_TABLE)
    start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name)
    start_funnel(bootstrap, procs, tmp_path, "apply", mirror, "--funnel", funnel_name, "--mirror", "pg", "--delay", "0s")
    wait_for(lambda: safe_text(mirror, "everything") == as_text(prod, "everything"), 60, 0.5, "the initial copy")

    with psycopg.connect(prod, autocommit=True) as conn:
        conn.execute("INSERT INTO everything (id) VALUES (2)")  # all NULLs (and the generated/identity columns)
        conn.execute(f"INSERT INTO everything (id, i2, i8, num, num_scaled, r, d, t, vc, flag, raw, day, clock, stamp,"
                     f" stamp_tz, span, uid, doc, docb, ints, words, feeling) VALUES ({ORDINARY.replace('1, 1', '3, 1', 1)})")
        conn.execute("UPDATE everything SET " + ", ".join(f"{c} = {v}" for c, v in EDGES.items()) + " WHERE id = 1")
        conn.execute("UPDATE everything SET r = '-0', d = '1e-320', i8 = -9223372036854775808 WHERE id = 3")
    expected = as_text(prod, "everything")
    wait_for(lambda: safe_text(mirror, "everything") == expected, 30, 0.5, "inserts and edge-value updates")
    assert expected[0][2] == "9223372036854775807" and expected[0][3] == "12345678901234567890.123456789"

    with psycopg.connect(prod, autocommit=True) as conn:
        conn.execute("DELETE FROM everything WHERE id IN (1, 2)")
    wait_for(lambda: safe_text(mirror, "everything") == as_text(prod, "everything"), 30, 0.5, "the deletes")
    assert [row[0] for row in as_text(mirror, "everything")] == ["3"]


SHOP = """
CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer, total numeric(10, 2), placed timestamptz);
CREATE TABLE items (id integer PRIMARY KEY, order_id integer, sku text, qty integer);
CREATE TABLE tickets (id bigserial PRIMARY KEY, note text);
"""


class Shop:
    """An application writing to PostgreSQL production in small transactions, pausable by the operator."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(9)
        with psycopg.connect(self.url, autocommit=True) as conn:
            n = 0
            while not self.stop.is_set():
                n += 1
                with self.lock, conn.transaction():
                    if n % 3 == 1:
                        conn.execute("INSERT INTO customers VALUES (%s, %s)", (n, f"customer {n}"))
                    conn.execute("INSERT INTO orders VALUES (%s, %s, %s, now())", (n, n - (n - 1) % 3, n % 97 + 0.5))
                    conn.execute("INSERT INTO items VALUES (%s, %s, 'sku', %s)", (n, n, rng.randrange(1, 9)))
                    if n > 5:
                        conn.execute("UPDATE orders SET total = total + 1 WHERE id = %s", (rng.randrange(1, n),))
                    if n % 4 == 0:
                        conn.execute("INSERT INTO tickets (note) VALUES (%s)", (f"ticket {n}",))
                time.sleep(0.005)

    def contents(self) -> dict[str, list[tuple]]:
        return {table: as_text(self.url, table) for table in ("customers", "orders", "items", "tickets")}


def slot_consistent(url: str) -> bool:
    """Whether a logical slot on this database has found its consistent point (changes after it stream)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_replication_slots WHERE database = current_database() "
                            "AND confirmed_flush_lsn IS NOT NULL").fetchone()[0] > 0


def test_disaster_drill_on_postgresql(bootstrap, funnel_name, pg_databases, procs, tmp_path):
    prod, mirror = pg_databases
    for url in (prod, mirror):  # the operator creates the mirror's schema from production's (pg_dump -s)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SHOP)
    shop = Shop(prod)
    shop.thread.start()
    start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name)
    start_funnel(bootstrap, procs, tmp_path, "apply", mirror, "--funnel", funnel_name, "--mirror", "pg", "--delay", "10s")
    # A DELETE before the capture's slot is consistent would only shrink its initial copy: on a
    # loaded machine the capture's start can take longer than the sleep below.
    wait_for(lambda: slot_consistent(prod), 60, 0.2, "the capture's replication slot")
    time.sleep(random.uniform(3, 5))
    with shop.lock:  # between two application transactions: what production held just before the error
        before_error = shop.contents()
        with psycopg.connect(prod, autocommit=True) as conn:
            deleted = conn.execute("DELETE FROM orders").rowcount
    time.sleep(2)
    shop.stop.set()
    shop.thread.join(10)
    assert deleted > 10
    before_error_tickets = before_error["tickets"]
    assert before_error_tickets

    bad: list = []

    def delete_published() -> bool:
        found = run_funnel(bootstrap, "inspect", "--funnel", funnel_name, "--op", "delete", "--table", "orders",
                           "--json")
        assert found.returncode == 0, found.stderr
        bad[:] = json.loads(found.stdout)["transactions"]
        return bool(bad)

    # On a loaded machine the capture may publish the DELETE later than the 2 s above.
    wait_for(delete_published, 60, 0.5, "the capture to publish the DELETE")
    assert len(bad) == 1 and bad[0]["rows"] == deleted, "PostgreSQL gives the DELETE a transaction of its own"
    hook_env = tmp_path / "hook.env"
    promoted = run_funnel(bootstrap, "promote", "pg", "--funnel", funnel_name, "--at", bad[0]["commit_ts"],
                          "--on-promote", f"env | grep ^FUNNEL_ > {hook_env}")
    assert promoted.returncode == 0, promoted.stderr
    mirrored = {table: as_text(mirror, table) for table in before_error}
    assert mirrored == before_error
    # The applications move to the promoted mirror: its serial keys continue after the applied ones.
    with psycopg.connect(mirror, autocommit=True) as conn:
        conn.execute("INSERT INTO tickets (note) VALUES ('written after the takeover')")
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM tickets").fetchone() == (
            len(before_error_tickets) + 1, len(before_error_tickets) + 1)
    env = dict(line.split("=", 1) for line in hook_env.read_text().splitlines())
    assert env["FUNNEL_MIRROR"] == "pg" and env["FUNNEL_TARGET_TIME"] == bad[0]["commit_ts"]
    assert env["FUNNEL_SINK_URL"].startswith("postgresql://")

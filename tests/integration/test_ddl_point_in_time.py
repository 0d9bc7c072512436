"""Point in time across schema changes: a bad DROP TABLE is found with inspect and left out with promote.

Real broker and CLI, SQLite production and mirrors.  Production adds a column, then drops
a table by mistake, then goes on writing.  Mirror m1 is promoted leaving the DROP TABLE
out: the table is there with its rows, and everything else arrived.  Mirror m2 is promoted
at the time of the ADD COLUMN: it stays before it, without the column.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from funnel.codec import EventCodec
from funnel.events import Op
from funnel.kafka import KafkaSettings
from funnel.reader import FunnelReader
from tests.support.processes import Background, run_funnel, table_rows, wait_for

WAIT_S = 120


def run(prod: Path, script: str) -> None:
    conn = sqlite3.connect(prod, isolation_level=None, timeout=60)
    try:
        conn.executescript(f"BEGIN IMMEDIATE; {script}; COMMIT")
    finally:
        conn.close()


def columns(db: Path, table: str) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
    finally:
        conn.close()


def test_a_drop_table_left_out_by_promote_and_promote_at_before_a_ddl(bootstrap, funnel_name, procs, tmp_path):
    prod, m1, m2 = tmp_path / "prod.db", tmp_path / "m1.db", tmp_path / "m2.db"
    run(prod, "CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT); "
              "CREATE TABLE lines (order_id INTEGER, n INTEGER, sku TEXT, PRIMARY KEY (order_id, n)); "
              "INSERT INTO orders VALUES (1, 'tea'); INSERT INTO lines VALUES (1, 1, 'x')")

    def start(name: str, *args: str) -> Background:
        proc = Background(bootstrap, tmp_path / f"{name}-{len(procs)}.log", *args)
        procs.append(proc)
        return proc

    start("capture", "capture", f"sqlite://{prod}", "--funnel", funnel_name)
    for mirror, path in (("m1", m1), ("m2", m2)):
        start(f"apply-{mirror}", "apply", f"sqlite://{path}", "--funnel", funnel_name, "--mirror", mirror,
              "--delay", "1h")
    wait_for(lambda: m1.exists() and m2.exists() and table_rows(m1, "lines") and table_rows(m2, "lines"),
             WAIT_S, 0.3, "the initial copies")
    codec = EventCodec()

    def ddl_count() -> int:
        """Schema-change transactions in the funnel, read in this process (faster than a CLI call)."""
        with FunnelReader(KafkaSettings(bootstrap), funnel_name) as reader:
            low, high = reader.watermarks()
            return sum(any(g.op is Op.DDL for p in tx.payloads for g in codec.decode(p).changes)
                       for tx in reader.transactions(low, high, keep_payloads=True))

    run(prod, "INSERT INTO lines VALUES (1, 2, 'y'); INSERT INTO orders VALUES (2, 'cake')")
    time.sleep(0.5)  # in a poll before the DDL, usually; the mirrors are compared with production anyway
    run(prod, "ALTER TABLE orders ADD COLUMN note TEXT; UPDATE orders SET note = 'n' WHERE id = 1")
    # each DDL in a capture transaction of its own, so that excluding one leaves the other
    wait_for(lambda: ddl_count() == 1, WAIT_S, 0.2, "the ADD COLUMN in the funnel")
    run(prod, "DROP TABLE lines")
    wait_for(lambda: ddl_count() == 2, WAIT_S, 0.2, "the DROP TABLE in the funnel")
    run(prod, "INSERT INTO orders VALUES (3, 'jam', 'after the drop')")
    found = run_funnel(bootstrap, "inspect", "--funnel", funnel_name, "--op", "ddl", "--json")
    assert found.returncode == 0, found.stderr
    add, drop = json.loads(found.stdout)["transactions"]
    assert [d["tag"] for d in drop["ddl"]] == ["DROP TABLE"] and drop["ddl"][0]["table"] == "lines"
    assert add["ddl"][0]["actions"] == ["add_column note"]

    def inserts_after_the_drop() -> bool:
        with FunnelReader(KafkaSettings(bootstrap), funnel_name) as reader:
            low, high = reader.watermarks()
            return any(tx.first_offset > drop["last_offset"] and tx.rows > 0 for tx in reader.transactions(low, high))

    wait_for(inserts_after_the_drop, WAIT_S, 0.2, "the insert after the drop in the funnel")
    promoted = run_funnel(bootstrap, "promote", "m1", "--funnel", funnel_name, "--exclude-txid", drop["txid"],
                          timeout=WAIT_S)
    assert promoted.returncode == 0, promoted.stderr
    assert table_rows(m1, "lines") == [(1, 1, "x"), (1, 2, "y")], "the dropped table is kept with its rows"
    assert columns(m1, "orders") == ["id", "item", "note"]
    assert table_rows(m1, "orders") == table_rows(prod, "orders") == [
        (1, "tea", "n"), (2, "cake", None), (3, "jam", "after the drop")]

    promoted = run_funnel(bootstrap, "promote", "m2", "--funnel", funnel_name, "--at", add["commit_ts"],
                          timeout=WAIT_S)
    assert promoted.returncode == 0, promoted.stderr
    assert columns(m2, "orders") == ["id", "item"], "the ADD COLUMN at the target time stays unapplied"
    assert table_rows(m2, "orders") == [(1, "tea"), (2, "cake")]
    assert table_rows(m2, "lines") == [(1, 1, "x"), (1, 2, "y")]

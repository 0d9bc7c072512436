"""An application's migrations on a captured SQLite file reach a delayed mirror by themselves.

Real broker, the real CLI as processes (so kill -9 is real), a writer process that keeps
writing while another connection migrates: ADD COLUMN with a default and DML in the same
transaction, CREATE TABLE with rows, RENAME COLUMN, DROP COLUMN (through ``funnel
migrate``: SQLite refuses it while a trigger names the column), ADD COLUMN on another
table.  Capture and applier are killed with -9 right after a DDL.  At the end the mirror
equals production: column names and rows.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from tests.support.processes import (Background, run_funnel, start_writer, table_rows, wait_for,
                                     write_transaction)
from tests.support.writer import create_schema

WAIT_S = 120


def shape(db: Path) -> dict[str, tuple[list[str], list[tuple]]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        tables = [n for (n,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
                  if not n.startswith(("_timefunnel_", "sqlite_"))]
        return {t: ([row[1] for row in conn.execute(f'PRAGMA table_info("{t}")')], table_rows(db, t)) for t in tables}
    finally:
        conn.close()


def test_migrations_follow_on_a_delayed_mirror_through_kill_9(bootstrap, funnel_name, procs, tmp_path):
    prod, mirror = tmp_path / "prod.db", tmp_path / "mirror.db"
    create_schema(str(prod))

    def start(name: str, *args: str) -> Background:
        proc = Background(bootstrap, tmp_path / f"{name}-{len(procs)}.log", *args)
        procs.append(proc)
        return proc

    def capture() -> Background:
        return start("capture", "capture", f"sqlite://{prod}", "--funnel", funnel_name)

    def apply() -> Background:
        return start("apply", "apply", f"sqlite://{mirror}", "--funnel", funnel_name, "--mirror", "m1",
                     "--delay", "1s")

    writer = start_writer(prod, seconds=14, tx_rows=3, pause=0.01, seed=12)
    cap, app = capture(), apply()
    wait_for(lambda: mirror.exists() and len(table_rows(mirror, "events")) > 0, WAIT_S, 0.3, "the initial copy")

    write_transaction(prod, "ALTER TABLE events ADD COLUMN note TEXT DEFAULT 'n'",
            "UPDATE events SET note = 'first' WHERE id = (SELECT max(id) FROM events)")
    write_transaction(prod, "CREATE TABLE coupons (code TEXT PRIMARY KEY, pct INTEGER)",
            "INSERT INTO coupons VALUES ('A', 5), ('B', 10)")
    time.sleep(1)
    write_transaction(prod, "ALTER TABLE events RENAME COLUMN note TO remark",
            "UPDATE events SET remark = 'renamed' WHERE id = (SELECT min(id) FROM events)")
    cap.kill9()  # right after a DDL: the restarted capture follows it, or finds it published
    app.kill9()
    cap, app = capture(), apply()
    wait_for(lambda: "remark" in shape(mirror)["events"][0], WAIT_S, 0.3, "the rename on the mirror after kill -9")
    result = run_funnel(bootstrap, "migrate", f"sqlite://{prod}", "--sql", "ALTER TABLE events DROP COLUMN remark")
    assert result.returncode == 0, result.stderr
    failed = run_funnel(bootstrap, "migrate", f"sqlite://{prod}", "--sql",
                        "ALTER TABLE coupons ADD COLUMN x; ALTER TABLE nope ADD COLUMN y")
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert lines[0].startswith("Error: migration statement 2 failed") and "nothing of the migration" in lines[0]
    app.kill9()
    app = apply()
    write_transaction(prod, "ALTER TABLE counters ADD COLUMN label TEXT", "UPDATE counters SET label = 'c' || id",
            "INSERT INTO coupons VALUES ('C', 15)")
    assert writer.wait(90) == 0

    wait_for(lambda: shape(mirror) == shape(prod), WAIT_S, 0.5, "the mirror to equal production, schema and rows")
    final = shape(prod)
    assert final["events"][0] == ["id", "tx", "v", "amount", "payload"]
    assert final["counters"][0] == ["id", "n", "label"] and final["coupons"][1][-1] == ("C", 15)
    assert cap.alive() and app.alive(), "capture and applier follow without stopping"

    # inspect finds the schema changes, by op and by table, with what they did
    found = json.loads(run_funnel(bootstrap, "inspect", "--funnel", funnel_name, "--op", "ddl", "--json").stdout)
    actions = [a for tx in found["transactions"] for ddl in tx["ddl"] for a in ddl["actions"]]
    assert actions == ["add_column note", "create_table coupons", "rename_column note -> remark",
                       "drop_column remark", "add_column label"]
    by_table = json.loads(run_funnel(bootstrap, "inspect", "--funnel", funnel_name, "--op", "ddl", "--table",
                                     "coupons", "--json").stdout)
    # whole transactions are shown: one capture group may hold the schema changes of several tables
    assert [d["tag"] for tx in by_table["transactions"] for d in tx["ddl"] if d["table"] == "coupons"] == ["CREATE TABLE"]
    assert all(any(c["table"] == "coupons" and c["op"] == "ddl" for c in tx["changes"])
               for tx in by_table["transactions"])
    text = run_funnel(bootstrap, "inspect", "--funnel", funnel_name, "--op", "ddl").stdout
    assert "ddl ALTER TABLE events: drop_column remark" in text and "CREATE TABLE coupons" in text

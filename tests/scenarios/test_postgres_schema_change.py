"""The README's schema-change procedure with the applier running: mirror first, then production."""
from __future__ import annotations

import psycopg

from tests.support.processes import start_funnel, wait_for


def run(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        try:
            return conn.execute("SELECT * FROM items ORDER BY id").fetchall()
        except psycopg.errors.UndefinedTable:
            return []


def test_a_column_added_on_the_mirror_then_on_production_is_followed_without_restart(
        bootstrap, funnel_name, pg_databases, procs, tmp_path):
    prod, mirror = pg_databases
    run(prod, "CREATE TABLE items (id integer PRIMARY KEY, name text)", "INSERT INTO items VALUES (1, 'a')")
    start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name)
    applier = start_funnel(bootstrap, procs, tmp_path, "apply", mirror, "--funnel", funnel_name, "--mirror", "m",
                           "--delay", "0s", "--create-tables")
    run(prod, "INSERT INTO items VALUES (2, 'b')")
    wait_for(lambda: rows(mirror) == [(1, "a"), (2, "b")], 120, 0.5, "the mirror to apply the first rows")
    run(mirror, "ALTER TABLE items ADD COLUMN colour text")  # (1) the mirror first
    run(prod, "ALTER TABLE items ADD COLUMN colour text",  # (2) then production, and use it
        "INSERT INTO items VALUES (3, 'c', 'red')", "UPDATE items SET colour = 'blue' WHERE id = 1")
    wait_for(lambda: rows(mirror) == [(1, "a", "blue"), (2, "b", None), (3, "c", "red")] or not applier.alive(),
             120, 0.5, "the mirror to follow the new column")
    assert applier.alive(), applier.output()
    assert rows(mirror) == [(1, "a", "blue"), (2, "b", None), (3, "c", "red")]

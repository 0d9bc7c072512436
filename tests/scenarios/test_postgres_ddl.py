"""PostgreSQL migrations travel through the funnel (`capture --capture-ddl`): a delayed
PostgreSQL mirror follows them while a writer writes, with no operator action."""
from __future__ import annotations

import threading

import psycopg

from producer.sources import uninstall_capture
from producer.sources.postgres import default_slot_name
from tests.support.processes import run_funnel, start_funnel, wait_for

MIGRATIONS = [
    ["ALTER TABLE items ADD COLUMN colour text NOT NULL DEFAULT 'red'"],
    ["ALTER TABLE items RENAME COLUMN qty TO quantity"],
    ["ALTER TABLE items ALTER COLUMN quantity TYPE bigint", "UPDATE items SET quantity = 5000000000 WHERE id = 1"],
    ["CREATE TABLE orders (id integer PRIMARY KEY, item integer NOT NULL, amount numeric(10,2))",
     "INSERT INTO orders VALUES (1, 1, 9.99), (2, 2, 1.50)"],
    ["CREATE INDEX items_colour ON items (colour)"],
    ["ALTER TABLE items ADD COLUMN tmp text", "UPDATE items SET tmp = 'x' WHERE id <= 3"],
    ["ALTER TABLE items DROP COLUMN note"],
    ["ALTER TABLE items DROP COLUMN tmp, ADD COLUMN tmp integer"],  # not a type change: the values go
    # DDL and DML in one transaction, rows on both sides of the change
    ["INSERT INTO orders VALUES (3, 3, 2.00)", "ALTER TABLE orders ADD COLUMN shipped boolean",
     "UPDATE orders SET shipped = true WHERE id = 1", "INSERT INTO orders VALUES (4, 4, 3.25, false)",
     "ALTER TABLE orders ALTER COLUMN amount TYPE numeric(12,3)"],
    ["CREATE TABLE scratch (id integer PRIMARY KEY, v text)", "CREATE UNIQUE INDEX scratch_v ON scratch (v)",
     "INSERT INTO scratch VALUES (1, 'a')"],
    ["ALTER TABLE scratch RENAME TO scratch2", "INSERT INTO scratch2 VALUES (2, 'b')"],
    ["CREATE INDEX orders_item ON orders (item)"],
    ["DROP INDEX items_colour"],
    ["ALTER TABLE orders ALTER COLUMN item DROP NOT NULL", "ALTER TABLE orders ALTER COLUMN amount SET DEFAULT 1"],
    ["CREATE TABLE gone (id integer PRIMARY KEY)", "INSERT INTO gone VALUES (1)"],
    ["DROP TABLE gone"],
]
# Run while capture is down after a kill -9: a table it followed is changed and dropped,
# another is created; the restarted capture replays them from the slot.
WHILE_AWAY = [
    ["INSERT INTO scratch2 VALUES (3, 'c')", "ALTER TABLE scratch2 ADD COLUMN w integer"],
    ["DROP TABLE scratch2"],
    ["CREATE TABLE later (id integer PRIMARY KEY)", "INSERT INTO later VALUES (1)"],
    ["ALTER TABLE later ADD COLUMN b text DEFAULT 'x'", "INSERT INTO later VALUES (2, 'y')"],
]

# Defaults are compared for the columns that DDL events made: --create-tables makes none (README).
COLUMNS_SQL = ("SELECT table_name, column_name, data_type, numeric_precision, numeric_scale, is_nullable, "
               "CASE WHEN table_name = 'orders' OR column_name IN ('colour', 'tmp') THEN column_default END "
               "FROM information_schema.columns WHERE table_schema = 'public' "
               "AND table_name NOT LIKE '\\_timefunnel%' "
               "ORDER BY table_name, ordinal_position")


def run(url: str, *statements: str) -> None:
    with psycopg.connect(url) as conn:  # one transaction
        for statement in statements:
            conn.execute(statement)


def state(url: str) -> tuple[list, list, dict]:
    with psycopg.connect(url) as conn:
        columns = conn.execute(COLUMNS_SQL).fetchall()
        tables = sorted({c[0] for c in columns})
        indexes = conn.execute("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
                               "AND indexname NOT LIKE '%pkey' ORDER BY indexname").fetchall()
        return columns, indexes, {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in tables}


def live_state(url: str) -> tuple[list, list, dict]:
    """``state`` of a database that an applier is changing: a table dropped between listing
    and reading it (each statement reads the catalog anew) shows as "not there yet"."""
    try:
        return state(url)
    except psycopg.errors.UndefinedTable:
        return [], [], {}


def writer(url: str, stop: threading.Event, written: list[int]) -> None:
    """Inserts rows into items the whole time, one transaction each."""
    with psycopg.connect(url, autocommit=True) as conn:
        next_id = 100
        while not stop.is_set():
            conn.execute("INSERT INTO items (id) VALUES (%s)", (next_id,))
            written.append(next_id)
            next_id += 1
            stop.wait(0.02)


def test_a_delayed_postgres_mirror_follows_migrations_while_a_writer_writes(
        bootstrap, funnel_name, pg_databases, procs, tmp_path):
    prod, mirror = pg_databases
    run(prod, "CREATE TABLE items (id integer PRIMARY KEY, qty integer DEFAULT 0, note text)",
        "INSERT INTO items (id, qty, note) SELECT g, g * 10, 'n' || g FROM generate_series(1, 5) g")
    capture = start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name, "--capture-ddl")
    applier = start_funnel(bootstrap, procs, tmp_path, "apply", mirror, "--funnel", funnel_name, "--mirror", "m",
                           "--delay", "2s", "--create-tables")
    wait_for(lambda: len(live_state(mirror)[2].get("items", [])) == 5 or not applier.alive(), 60, 0.3,
             "the initial copy on the mirror")
    stop, written = threading.Event(), []
    thread = threading.Thread(target=writer, args=(prod, stop, written), daemon=True)
    thread.start()
    try:
        for statements in MIGRATIONS:
            run(prod, *statements)
            stop.wait(0.1)
    finally:
        stop.set()
        thread.join(10)
    assert sorted(state(prod)[2]) == ["items", "orders", "scratch2"] and len(state(prod)[2]["scratch2"]) == 2
    wait_for(lambda: "scratch2" in live_state(mirror)[2] or not applier.alive(), 60, 0.5, "scratch2 on the mirror")
    capture.kill9()
    for statements in WHILE_AWAY:
        run(prod, *statements)
    capture = start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name, "--capture-ddl")
    expected = state(prod)
    assert len(written) > 10 and len(expected[2]["orders"]) == 4  # the writer wrote across the migrations
    assert sorted(expected[2]) == ["items", "later", "orders"]
    try:
        wait_for(lambda: live_state(mirror) == expected or not applier.alive() or not capture.alive(), 60, 0.5,
                 "the mirror to follow every migration")
    except AssertionError:
        pass  # the asserts below say what differs
    assert applier.alive() and capture.alive(), applier.output() + capture.output()
    assert state(mirror) == expected
    shown = run_funnel(bootstrap, "inspect", "--funnel", funnel_name, "--op", "ddl")
    assert "rename_column qty -> quantity" in shown.stdout, shown.stdout + shown.stderr
    assert "create_index items_colour" in shown.stdout
    assert "drop_index items_colour" in shown.stdout and "drop_table public.gone" in shown.stdout
    assert "rename_table public.scratch -> public.scratch2" in shown.stdout
    assert "drop_table public.scratch2" in shown.stdout
    capture.stop()
    removed = uninstall_capture(prod, funnel_name)
    slot = default_slot_name(funnel_name)
    assert f"event trigger {slot}_end" in removed and f"event trigger {slot}_drop" in removed, removed
    with psycopg.connect(prod) as conn:
        assert conn.execute("SELECT count(*) FROM pg_event_trigger").fetchone()[0] == 0


def test_capture_ddl_with_a_role_that_is_no_superuser_is_refused(bootstrap, funnel_name, pg_databases):
    prod, _ = pg_databases
    role = f"tf_plain_{funnel_name[-6:]}".lower().replace("-", "_")
    run(prod, "CREATE TABLE items (id integer PRIMARY KEY)", f"CREATE ROLE {role} LOGIN REPLICATION",
        f"GRANT SELECT ON items TO {role}")
    url = prod.replace("postgres@", f"{role}@", 1)
    done = run_funnel(bootstrap, "capture", url, "--funnel", funnel_name, "--capture-ddl")
    assert done.returncode == 1, done.stderr
    assert f"Error: --capture-ddl needs a superuser capture role, and role {role} is not one" in done.stderr
    assert "Try: capture with a superuser role, or leave out --capture-ddl" in done.stderr
    assert "Traceback" not in done.stderr
    with psycopg.connect(prod) as conn:  # refused before anything was created
        assert conn.execute("SELECT count(*) FROM pg_event_trigger").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0


def sqlite_state(path) -> dict:
    import sqlite3

    if not path.exists():
        return {}
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("BEGIN")  # one read snapshot: the applier may drop a table meanwhile
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' "
                                             "AND name NOT LIKE '\\_timefunnel%' ESCAPE '\\' ORDER BY name")]
        return {t: ([r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')],
                    conn.execute(f'SELECT * FROM "{t}" ORDER BY id').fetchall()) for t in tables}


def test_a_sqlite_mirror_follows_the_postgres_migrations_it_can_express(bootstrap, funnel_name, pg_databases,
                                                                         procs, tmp_path):
    prod, _ = pg_databases
    mirror = tmp_path / "mirror.db"
    run(prod, "CREATE TABLE items (id integer PRIMARY KEY, qty integer, note text)",
        "INSERT INTO items VALUES (1, 10, 'a'), (2, 20, 'b')")
    start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name, "--capture-ddl")
    applier = start_funnel(bootstrap, procs, tmp_path, "apply", f"sqlite://{mirror}", "--funnel", funnel_name,
                           "--mirror", "m", "--delay", "0s")
    wait_for(lambda: len(sqlite_state(mirror).get("items", ((), ()))[1]) == 2, 60, 0.3, "the initial copy")
    for statements in [["ALTER TABLE items ADD COLUMN colour text DEFAULT 'red'"],
                       ["ALTER TABLE items RENAME COLUMN qty TO quantity", "INSERT INTO items VALUES (3, 30, 'c')"],
                       ["CREATE TABLE orders (id integer PRIMARY KEY, item integer)",
                        "INSERT INTO orders VALUES (1, 3)"],
                       ["CREATE INDEX orders_item ON orders (item)"],
                       ["ALTER TABLE items DROP COLUMN note", "UPDATE items SET colour = 'blue' WHERE id = 2"]]:
        run(prod, *statements)
    expected = {"items": (["id", "quantity", "colour"], [(1, 10, "red"), (2, 20, "blue"), (3, 30, "red")]),
                "orders": (["id", "item"], [(1, 3)])}
    wait_for(lambda: sqlite_state(mirror) == expected or not applier.alive(), 60, 0.3, "the SQLite mirror to follow")
    assert sqlite_state(mirror) == expected, applier.output()
    import sqlite3

    with sqlite3.connect(mirror) as conn:
        assert conn.execute("SELECT 1 FROM sqlite_schema WHERE type = 'index' AND name = 'orders_item'").fetchone()


def test_capture_ddl_adds_its_log_to_an_operators_publication(bootstrap, funnel_name, pg_databases, procs,
                                                              tmp_path):
    prod, mirror = pg_databases
    run(prod, "CREATE TABLE items (id integer PRIMARY KEY)", "INSERT INTO items VALUES (1)",
        "CREATE PUBLICATION ops FOR TABLE items")
    start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name, "--capture-ddl",
                 "--publication", "ops")
    applier = start_funnel(bootstrap, procs, tmp_path, "apply", mirror, "--funnel", funnel_name, "--mirror", "m",
                           "--delay", "0s", "--create-tables")
    wait_for(lambda: live_state(mirror)[2].get("items") == [(1,)] or not applier.alive(), 60, 0.3, "the initial copy")
    run(prod, "ALTER TABLE items ADD COLUMN v text DEFAULT 'x'", "INSERT INTO items VALUES (2, 'y')")
    wait_for(lambda: live_state(mirror) == state(prod) or not applier.alive(), 60, 0.3, "the mirror to follow")
    assert state(mirror) == state(prod), applier.output()

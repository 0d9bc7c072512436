"""New PostgreSQL tables under `capture --capture-ddl`: the rows of CREATE TABLE … AS and
SELECT … INTO reach the mirror exactly and in order, keyless tables are captured as
multisets under --replica-identity-full, and with an operator's publication a table
follows (with the rows it already has) when the operator adds it.  kill -9 of capture
and applier right after such a transaction leaves the mirror exact."""
from __future__ import annotations

import psycopg

from tests.support.processes import start_funnel, wait_for

# Every kind of value the copy writes as text: NULLs, numerics, timestamps in another
# session time zone and DateStyle, bytea under bytea_output escape, booleans, floats.
CTAS = ("CREATE TABLE copied AS SELECT g AS id, g::numeric / 7 AS share, "
        "CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END AS note, "
        "timestamptz '2026-01-02 03:04:05.678901+00' + g * interval '1 day 1 second' AS at, "
        "timestamp '2026-03-04 05:06:07' AS local_at, date '2026-12-31' - g AS day, "
        "decode(lpad(to_hex(g), 4, '0') || '00ff', 'hex') AS raw, g % 2 = 0 AS even, 0.1::float8 * g AS f, "
        "interval '1 hour' * g AS span, ARRAY[g, NULL] AS arr, jsonb_build_object('g', g) AS doc "
        "FROM generate_series(1, 40) g")
ODD_SESSION = ("SET datestyle = 'SQL, DMY'", "SET timezone = 'America/New_York'", "SET bytea_output = 'escape'",
               "SET extra_float_digits = 0", "SET intervalstyle = 'sql_standard'")


def run(url: str, *statements: str) -> None:
    with psycopg.connect(url) as conn:  # one transaction
        for statement in statements:
            conn.execute(statement)


def tables(url: str) -> dict[str, tuple[list, list]]:
    """Every application table: its columns with types, and its rows as text, sorted (keyless
    tables have no order)."""
    with psycopg.connect(url) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "AND table_name NOT LIKE '\\_timefunnel%' ORDER BY 1")]
        return {t: (conn.execute("SELECT column_name, data_type FROM information_schema.columns WHERE "
                                 "table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                                 (t,)).fetchall(),
                    sorted(r[0] for r in conn.execute(f'SELECT x::text FROM "{t}" x')))
                for t in names}


def follows(applier, prod: str, mirror: str, what: str) -> None:
    wait_for(lambda: tables(mirror) == tables(prod) or not applier.alive(), 90, 0.5, what)
    assert applier.alive(), applier.output()
    assert tables(mirror) == tables(prod)


def test_create_table_as_and_keyless_tables_reach_the_mirror_exactly_across_kill_9(
        bootstrap, funnel_name, pg_databases, procs, tmp_path):
    prod, mirror = pg_databases
    run(prod, "CREATE TABLE items (id integer PRIMARY KEY, v text)", "INSERT INTO items VALUES (1, 'a')")
    capture_args = ("capture", prod, "--funnel", funnel_name, "--capture-ddl", "--replica-identity-full")
    apply_args = ("apply", mirror, "--funnel", funnel_name, "--mirror", "m", "--delay", "0s", "--create-tables")
    capture = start_funnel(bootstrap, procs, tmp_path, *capture_args)
    applier = start_funnel(bootstrap, procs, tmp_path, *apply_args)
    follows(applier, prod, mirror, "the initial copy")
    # CTAS inside a bigger transaction, with DML on both sides of it and on the new table after it
    run(prod, *ODD_SESSION, "INSERT INTO items VALUES (2, 'before')", CTAS,
        "INSERT INTO copied (id, note) VALUES (100, 'after the create')", "UPDATE copied SET note = 'u' WHERE id = 1",
        "DELETE FROM copied WHERE id = 2", "UPDATE items SET v = 'after' WHERE id = 1")
    run(prod, "SELECT id, v INTO selected FROM items")  # keyless too
    capture.kill9()
    applier.kill9()
    run(prod, "INSERT INTO selected VALUES (1, 'a'), (1, 'a')",  # a multiset: equal rows stay two
        "CREATE TABLE loose (a integer, b text)", "INSERT INTO loose VALUES (1, 'x'), (1, 'x'), (2, 'y')")
    capture = start_funnel(bootstrap, procs, tmp_path, *capture_args)
    applier = start_funnel(bootstrap, procs, tmp_path, *apply_args)
    run(prod, "UPDATE loose SET b = 'z' WHERE a = 2", "DELETE FROM selected WHERE ctid = (SELECT min(ctid) FROM "
              "selected WHERE id = 1)", "CREATE TABLE keyed AS SELECT id FROM items",
        "ALTER TABLE keyed ADD PRIMARY KEY (id)", "INSERT INTO keyed VALUES (3)")
    follows(applier, prod, mirror, "the mirror to hold every new table and row")
    assert sorted(tables(prod)) == ["copied", "items", "keyed", "loose", "selected"]
    assert len(tables(prod)["copied"][1]) == 40 and len(tables(prod)["selected"][1]) == 3
    assert capture.alive(), capture.output()


def test_with_an_operators_publication_a_new_table_follows_once_the_operator_adds_it(
        bootstrap, funnel_name, pg_databases, procs, tmp_path):
    prod, mirror = pg_databases
    run(prod, "CREATE TABLE items (id integer PRIMARY KEY)", "INSERT INTO items VALUES (1)",
        "CREATE PUBLICATION ops FOR TABLE items")
    capture = start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name, "--capture-ddl",
                           "--publication", "ops")
    applier = start_funnel(bootstrap, procs, tmp_path, "apply", mirror, "--funnel", funnel_name, "--mirror", "m",
                           "--delay", "0s", "--create-tables")
    follows(applier, prod, mirror, "the initial copy")
    run(prod, "CREATE TABLE later (id integer PRIMARY KEY, v text)", "INSERT INTO later VALUES (1, 'a')")
    run(prod, "INSERT INTO later VALUES (2, 'b')", "INSERT INTO items VALUES (2)")
    wait_for(lambda: len(tables(mirror)["items"][1]) == 2 or not applier.alive(), 60, 0.3, "the insert into items")
    assert "later" not in tables(mirror), "not in the operator's publication: not captured"
    wait_for(lambda: "not in publication ops, so not captured" in capture.output(), 30, 0.3, "the warning")
    run(prod, "INSERT INTO later VALUES (3, 'c')", "ALTER PUBLICATION ops ADD TABLE later")
    run(prod, "INSERT INTO later VALUES (4, 'after')", "UPDATE later SET v = 'A' WHERE id = 1")
    follows(applier, prod, mirror, "the added table with all its rows")
    assert tables(mirror)["later"][1] == ["(1,A)", "(2,b)", "(3,c)", "(4,after)"]


def test_a_drop_table_left_out_by_promote_into_a_postgres_mirror(bootstrap, funnel_name, pg_databases, procs,
                                                                   tmp_path):
    """Found with inspect --op ddl, left out with promote --exclude-txid: the table stays with its
    rows and later transactions are applied.  A later transaction that creates a table of the
    same name conflicts with the kept one: promote stops before it, and excluding it too works."""
    import json

    from tests.support.processes import run_funnel

    prod, mirror = pg_databases
    run(prod, "CREATE TABLE orders (id integer PRIMARY KEY, item text)",
        "CREATE TABLE lines (id integer PRIMARY KEY, sku text)", "INSERT INTO orders VALUES (1, 'tea')",
        "INSERT INTO lines VALUES (1, 'x')")
    start_funnel(bootstrap, procs, tmp_path, "capture", prod, "--funnel", funnel_name, "--capture-ddl")
    applier = start_funnel(bootstrap, procs, tmp_path, "apply", mirror, "--funnel", funnel_name, "--mirror", "m",
                           "--delay", "1h", "--create-tables")
    wait_for(lambda: tables(mirror).get("lines", ((), ()))[1] == ["(1,x)"] or not applier.alive(), 60, 0.3,
             "the initial copy")
    run(prod, "INSERT INTO lines VALUES (2, 'y')")
    run(prod, "DROP TABLE lines")
    run(prod, "INSERT INTO orders VALUES (2, 'cake')")
    run(prod, "CREATE TABLE lines (id integer PRIMARY KEY, note text)", "INSERT INTO lines VALUES (7, 'new')")
    run(prod, "INSERT INTO orders VALUES (3, 'jam')")

    def ddl_transactions() -> list[dict]:
        found = run_funnel(bootstrap, "inspect", "--funnel", funnel_name, "--op", "ddl", "--table", "lines", "--json")
        assert found.returncode == 0, found.stderr
        return json.loads(found.stdout)["transactions"]

    wait_for(lambda: len(ddl_transactions()) == 2, 60, 0.5, "the DROP and the CREATE in the funnel")
    drop, create = ddl_transactions()
    assert [d["tag"] for d in drop["ddl"]] == ["DROP TABLE"] and [d["tag"] for d in create["ddl"]] == ["CREATE TABLE"]
    wait_for(lambda: run_funnel(bootstrap, "inspect", "--funnel", funnel_name, "--table", "orders", "--op", "insert",
                                "--json").stdout.count('"txid"') >= 2, 60, 0.5, "the inserts after the create")
    applier.stop()  # promote --sink does the work itself
    sink = ("--funnel", funnel_name, "--sink", mirror)
    refused = run_funnel(bootstrap, "promote", "m", *sink, "--exclude-txid", drop["txid"], timeout=120)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"(txid {create['txid']}, CREATE TABLE): relation \"lines\" already exists" in refused.stderr
    assert "Error: cannot apply the schema change" in refused.stderr and "Traceback" not in refused.stderr
    # It stopped at a transaction boundary before the conflicting CREATE (its last batch rolled back whole).
    assert tables(mirror)["lines"][1] in (["(1,x)"], ["(1,x)", "(2,y)"]), refused.stderr
    promoted = run_funnel(bootstrap, "promote", "m", *sink, "--exclude-txid", drop["txid"],
                          "--exclude-txid", create["txid"], timeout=120)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    after = tables(mirror)
    assert after["lines"][1] == ["(1,x)", "(2,y)"], "the dropped table is kept with its rows"
    assert after["orders"][1] == ["(1,tea)", "(2,cake)", "(3,jam)"], "later transactions are applied"

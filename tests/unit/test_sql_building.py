"""SQL text for the SQLite mirror, built from names alone (no database file)."""
from __future__ import annotations

import sqlite3

import pytest

from applier.sinks.sqlite_sql import (
    CREATE_STATE_TABLE,
    STATE_TABLE,
    create_table_sql,
    delete_one_sql,
    delete_sql,
    insert_sql,
    key_indexes,
    mirror_table_name,
    position_select_sql,
    position_upsert_sql,
    quote_ident,
    truncate_sql,
    update_one_sql,
    upsert_sql,
)
from funnel.errors import SinkError, TimeFunnelError


@pytest.mark.parametrize(
    ("source", "mirror"),
    [
        ("main.orders", "orders"),
        ("public.orders", "orders"),
        ("sales.orders", "sales_orders"),
        ("orders", "orders"),
        ("sales.order.lines", "sales_order.lines"),  # only the first dot is the schema
        ("Public.orders", "Public_orders"),  # schema names are matched exactly
    ],
)
def test_mirror_table_name(source: str, mirror: str) -> None:
    assert mirror_table_name(source) == mirror


@pytest.mark.parametrize("source", ["", "main.", f"main.{STATE_TABLE}", STATE_TABLE.upper()])
def test_mirror_table_name_rejects_empty_and_state_table(source: str) -> None:
    with pytest.raises(SinkError, match="cannot be mirrored"):
        mirror_table_name(source)


def test_quote_ident_doubles_embedded_quotes() -> None:
    assert quote_ident("orders") == '"orders"'
    assert quote_ident('my "odd" name') == '"my ""odd"" name"'


def test_quote_ident_rejects_nul() -> None:
    with pytest.raises(TimeFunnelError, match="NUL"):
        quote_ident("a\x00b")


def test_create_table_is_untyped_with_primary_key() -> None:
    sql = create_table_sql("orders", ["id", "region", "total"], ["region", "id"])
    assert sql == 'CREATE TABLE "orders" ("id", "region", "total", PRIMARY KEY ("region", "id"))'


def test_upsert_updates_every_non_key_column() -> None:
    sql = upsert_sql("orders", ["id", "name", "total"], ["id"])
    assert sql == (
        'INSERT INTO "orders" ("id", "name", "total") VALUES (?, ?, ?) '
        'ON CONFLICT ("id") DO UPDATE SET "name" = excluded."name", "total" = excluded."total"'
    )


def test_upsert_of_key_only_table_does_nothing_on_conflict() -> None:
    sql = upsert_sql("tags", ["post", "tag"], ["post", "tag"])
    assert sql.endswith('ON CONFLICT ("post", "tag") DO NOTHING')


def test_delete_matches_every_key_column() -> None:
    assert delete_sql("lines", ["order_id", "n"]) == 'DELETE FROM "lines" WHERE "order_id" = ? AND "n" = ?'


def test_truncate_deletes_without_condition() -> None:
    assert truncate_sql("orders") == 'DELETE FROM "orders"'


@pytest.mark.parametrize("build", [create_table_sql, upsert_sql, key_indexes])
def test_a_key_column_missing_from_the_columns_is_rejected(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SinkError, match="key column 'id' is not among"):
        build("orders", ["name"], ["id"])


def test_keyless_table_has_no_primary_key_and_is_never_upserted() -> None:
    assert create_table_sql("h", ["a", "b"], []) == 'CREATE TABLE "h" ("a", "b")'
    assert key_indexes("h", ["a", "b"], []) == ()
    with pytest.raises(SinkError, match="no key columns"):
        upsert_sql("h", ["a", "b"], [])


def test_keyless_statements_change_one_row_matching_null_safely() -> None:
    match = 'rowid = (SELECT rowid FROM "h" WHERE "a" IS ? AND "b" IS ? LIMIT 1)'
    assert insert_sql("h", ["a", "b"]) == 'INSERT INTO "h" ("a", "b") VALUES (?, ?)'
    assert delete_one_sql("h", ["a", "b"]) == f'DELETE FROM "h" WHERE {match}'
    assert update_one_sql("h", ["a", "b"]) == f'UPDATE "h" SET "a" = ?, "b" = ? WHERE {match}'


def test_delete_without_key_is_rejected_not_widened_to_all_rows() -> None:
    with pytest.raises(SinkError, match="no key columns"):
        delete_sql("orders", [])


def test_key_indexes_follow_key_order() -> None:
    assert key_indexes("t", ["a", "b", "c"], ["c", "a"]) == (2, 0)


def test_generated_statements_run_on_sqlite_with_awkward_names() -> None:
    table, columns, key = 'my "odd" table', ["select", "a b", "Ünï"], ["select"]
    db = sqlite3.connect(":memory:")
    db.execute(create_table_sql(table, columns, key))
    db.execute(upsert_sql(table, columns, key), ("k", 1, "x"))
    db.execute(upsert_sql(table, columns, key), ("k", 2, "y"))
    assert db.execute(f"SELECT * FROM {quote_ident(table)}").fetchall() == [("k", 2, "y")]
    db.execute(delete_sql(table, key), ("k",))
    assert db.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone() == (0,)


def test_position_upsert_replaces_the_whole_state_row() -> None:
    db = sqlite3.connect(":memory:")
    db.execute(CREATE_STATE_TABLE)
    db.execute(position_upsert_sql(), ("f", "m", "f", 0, 10, "t1", 100, 100, 0, 90, None, None, None))
    db.execute(position_upsert_sql(), ("f", "m", "f", 0, 20, "t2", 200, 200, 1, None, 5, 150, '["t9"]'))
    kept = db.execute(f"SELECT next_offset, last_txid, snapshot_done, hold_until, promoted_at, excluded_txids "
                      f"FROM {STATE_TABLE}")
    assert kept.fetchall() == [(20, "t2", 1, None, 5, '["t9"]')]
    selected = db.execute(position_select_sql(), ("f", "m")).fetchone()
    assert selected == ("f", "m", "f", 0, 20, "t2", 200, 200, 1, None, 5, 150, '["t9"]')


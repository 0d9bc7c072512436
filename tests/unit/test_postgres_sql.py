"""SQL text for the PostgreSQL mirror, built from names and catalog facts alone (no server)."""
from __future__ import annotations

import pytest

from applier.sinks.postgres_sql import (
    STATE_COLUMNS,
    STATE_TABLE,
    STATE_TYPES,
    MirrorColumn,
    MirrorTable,
    check_type_text,
    copy_sql,
    create_stage_sql,
    create_state_table_sql,
    create_table_sql,
    delete_one_sql,
    delete_sql,
    insert_values_sql,
    layout,
    mirror_table_name,
    one_line,
    position_select_sql,
    position_upsert_sql,
    quote_ident,
    truncate_sql,
    update_one_sql,
    upsert_select_sql,
    upsert_values_sql,
)
from applier.sinks.state import position_to_row
from applier.transaction import MirrorPosition
from funnel.urls import masked_password
from funnel.errors import SinkError, TimeFunnelError


def table(*columns: MirrorColumn, keys: tuple[tuple[str, ...], ...] = (("id",),), pk: bool = True) -> MirrorTable:
    return MirrorTable("public", "orders", columns, keys, has_primary_key=pk)


ID = MirrorColumn("id", "bigint")
NAME = MirrorColumn("name", "text")
TOTAL = MirrorColumn("total", "numeric(10,2)")


# --- names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "mirror"),
    [
        ("public.orders", ("public", "orders")),
        ("sales.orders", ("sales", "orders")),
        ("main.orders", ("main", "orders")),  # the schema is kept as it is
        ("orders", ("public", "orders")),
        ("Sales.Order Lines", ("Sales", "Order Lines")),
        ("sales.order.lines", ("sales", "order.lines")),  # only the first dot is the schema
    ],
)
def test_mirror_table_name_keeps_the_schema(source: str, mirror: tuple[str, str]) -> None:
    assert mirror_table_name(source) == mirror


@pytest.mark.parametrize("source", ["", ".orders", "public.", STATE_TABLE, f"sales.{STATE_TABLE}"])
def test_mirror_table_name_rejects_empty_parts_and_the_state_table(source: str) -> None:
    with pytest.raises(SinkError):
        mirror_table_name(source)


def test_quote_ident_doubles_quotes_and_rejects_nul() -> None:
    assert quote_ident('we"ird name') == '"we""ird name"'
    with pytest.raises(TimeFunnelError, match="NUL"):
        quote_ident("a\x00b")


# --- types and CREATE TABLE ----------------------------------------------------------


@pytest.mark.parametrize(
    "type_text",
    ["integer", "numeric(10,2)", "timestamp(3) with time zone", "character varying(20)", "integer[]",
     "double precision", '"Mood"', "sales.mood", 'public."My Type"[]', "bit varying(5)", "interval second(3)"],
)
def test_check_type_text_accepts_format_type_output(type_text: str) -> None:
    assert check_type_text("public.t", "c", type_text) == type_text


@pytest.mark.parametrize(
    "type_text",
    ["integer; DROP TABLE x", "int -- comment", "int /* x */", "text DEFAULT 'a'", "", "  ", 'bad"quote', None, 5],
)
def test_check_type_text_refuses_anything_more_than_a_type(type_text: object) -> None:
    with pytest.raises(SinkError, match="invalid type"):
        check_type_text("public.t", "c", type_text)  # type: ignore[arg-type]


def test_create_table_sql_from_a_definition() -> None:
    definition = {
        "table": "sales.orders",
        "columns": [
            {"name": "id", "type": "bigint", "not_null": True},
            {"name": "Total", "type": "numeric(10,2)", "not_null": False},
            {"name": "tags", "type": "text[]"},
        ],
        "key": ["id"],
    }
    assert create_table_sql("sales", "orders", definition) == (
        'CREATE TABLE "sales"."orders" ("id" bigint NOT NULL, "Total" numeric(10,2), "tags" text[], '
        'PRIMARY KEY ("id"))'
    )


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"columns": [], "key": ["id"]}, "no columns"),
        ({"columns": [{"name": "id", "type": "int"}], "key": ["other"]}, "'other'"),
        ({"columns": [{"name": "id", "type": "int; drop"}], "key": ["id"]}, "invalid type"),
    ],
)
def test_create_table_sql_rejects_unusable_definitions(definition: dict, message: str) -> None:
    with pytest.raises(SinkError, match=message):
        create_table_sql("public", "t", definition)


# --- layout: event columns onto mirror columns ------------------------------------------


def test_layout_writes_every_column_of_a_plain_table() -> None:
    shape = layout("public.orders", table(ID, NAME, TOTAL), ["id", "name", "total"], ["id"])
    assert shape.write_index == (0, 1, 2)
    assert shape.write_columns == ("id", "name", "total")
    assert shape.key_index == (0,)
    assert shape.update_columns == ("name", "total")
    assert shape.overriding is False


def test_layout_skips_generated_columns_and_overrides_identity() -> None:
    mirror = table(MirrorColumn("id", "integer", identity_always=True), MirrorColumn("twice", "integer", generated=True),
                   MirrorColumn("serial_no", "bigint", identity_always=True), NAME)
    shape = layout("public.orders", mirror, ["id", "twice", "serial_no", "name"], ["id"])
    assert shape.write_index == (0, 2, 3)
    assert shape.write_columns == ("id", "serial_no", "name")
    assert shape.overriding is True
    # PostgreSQL refuses UPDATE of a GENERATED ALWAYS identity: never in the SET list.
    assert shape.update_columns == ("name",)


def test_layout_keys_are_positions_in_the_row_image_in_key_order() -> None:
    mirror = table(ID, NAME, TOTAL, keys=(("name", "id"),))
    shape = layout("public.orders", mirror, ["total", "id", "name"], ["name", "id"])
    assert shape.key_index == (2, 1)
    assert shape.update_columns == ("total",)


def test_layout_names_the_missing_mirror_column() -> None:
    with pytest.raises(SinkError, match=r"'public\.orders' has no column 'note'") as info:
        layout("public.orders", table(ID, NAME), ["id", "name", "note"], ["id"])
    assert "ADD COLUMN" in info.value.hint


def test_layout_names_the_event_key_column_the_mirror_key_lacks() -> None:
    with pytest.raises(SinkError, match=r"key column 'name'.*primary key \(id\)"):
        layout("public.orders", table(ID, NAME), ["id", "name"], ["id", "name"])


def test_layout_names_the_mirror_key_column_the_events_lack() -> None:
    mirror = table(ID, NAME, keys=(("id", "name"),))
    with pytest.raises(SinkError, match="key column 'name'"):
        layout("public.orders", mirror, ["id", "name"], ["id"])


def test_layout_accepts_another_unique_key_matching_the_events() -> None:
    mirror = table(ID, NAME, keys=(("id",), ("name",)))
    assert layout("public.orders", mirror, ["id", "name"], ["name"]).key == ("name",)


def test_layout_refuses_a_mirror_table_without_key() -> None:
    with pytest.raises(SinkError, match="no primary key") as info:
        layout("public.orders", table(ID, NAME, keys=(), pk=False), ["id", "name"], ["id"])
    assert 'ADD PRIMARY KEY ("id")' in info.value.hint


def test_keyless_definition_creates_a_table_without_primary_key_and_nullable_columns() -> None:
    definition = {"columns": [{"name": "tid", "type": "integer", "not_null": True},
                              {"name": "filler", "type": "character(22)", "not_null": False}], "key": []}
    assert create_table_sql("public", "pgbench_history", definition) == (
        'CREATE TABLE "public"."pgbench_history" ("tid" integer NOT NULL, "filler" character(22))')


def test_keyless_events_refuse_a_mirror_primary_key_and_accept_a_table_without() -> None:
    with pytest.raises(SinkError, match=r"has primary key \(id, name\) but source table 'public.orders' has none") \
            as info:
        layout("public.orders", table(ID, NAME, keys=(("id", "name"),)), ["id", "name"], [])
    assert "DROP NOT NULL" in info.value.hint
    shape = layout("public.orders", table(ID, NAME, keys=(), pk=False), ["id", "name"], [])
    assert shape.keyless and shape.update_columns == ("id", "name")


def test_keyless_statements_change_one_row_matching_with_null_safe_typed_equality() -> None:
    shape = layout("public.h", table(ID, NAME, keys=(), pk=False), ["id", "name"], [])
    match = ('(tableoid, ctid) = (SELECT tableoid, ctid FROM t WHERE "id" IS NOT DISTINCT FROM %s::bigint '
             'AND "name" IS NOT DISTINCT FROM %s::text LIMIT 1)')
    assert delete_one_sql("t", shape) == f"DELETE FROM t WHERE {match}"
    assert update_one_sql("t", shape) == f'UPDATE t SET "id" = %s, "name" = %s WHERE {match}'
    assert insert_values_sql("t", shape) == 'INSERT INTO t ("id", "name") VALUES (%s, %s)'


# --- statements ---------------------------------------------------------------------------


def test_upsert_statements() -> None:
    shape = layout("public.orders", table(ID, NAME, TOTAL), ["id", "name", "total"], ["id"])
    target = '"public"."orders"'
    assert upsert_values_sql(target, shape) == (
        'INSERT INTO "public"."orders" ("id", "name", "total") VALUES (%s, %s, %s) '
        'ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name", "total" = EXCLUDED."total"'
    )
    assert upsert_select_sql(target, "pg_temp.s1", shape) == (
        'INSERT INTO "public"."orders" ("id", "name", "total") SELECT "id", "name", "total" FROM pg_temp.s1 '
        'ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name", "total" = EXCLUDED."total"'
    )


def test_upsert_of_key_only_rows_does_nothing_on_conflict_and_overrides_identity() -> None:
    shape = layout("public.tags", table(MirrorColumn("id", "int", identity_always=True)), ["id"], ["id"])
    assert upsert_values_sql("t", shape) == (
        'INSERT INTO t ("id") OVERRIDING SYSTEM VALUE VALUES (%s) ON CONFLICT ("id") DO NOTHING'
    )


def test_stage_copy_delete_truncate_statements() -> None:
    shape = layout("public.orders", table(ID, NAME, MirrorColumn("g", "int", generated=True)),
                   ["id", "name", "g"], ["id"])
    assert create_stage_sql("pg_temp.s1", "t", shape) == (
        'CREATE TEMP TABLE pg_temp.s1 ON COMMIT DELETE ROWS AS SELECT "id", "name" FROM t WITH NO DATA'
    )
    assert copy_sql("t", shape.write_columns) == 'COPY t ("id", "name") FROM STDIN'
    assert delete_sql("t", ["a", "b"]) == 'DELETE FROM t WHERE "a" = %s AND "b" = %s'
    assert truncate_sql("t") == "TRUNCATE t"
    with pytest.raises(SinkError):
        delete_sql("t", [])


# --- state table -----------------------------------------------------------------------------


def test_state_table_has_every_state_column_with_a_type() -> None:
    assert set(STATE_TYPES) == set(STATE_COLUMNS)
    sql = create_state_table_sql()
    body = sql[sql.index("(") + 1:sql.index(", PRIMARY KEY")]
    # epoch fences appliers (applier.sinks.state); it is not part of the position
    assert [part.split()[0] for part in body.split(", ")] == list(STATE_COLUMNS) + ["epoch"]
    assert sql.endswith("PRIMARY KEY (funnel, mirror))")


def test_position_statements_match_the_shared_state_row() -> None:
    row = position_to_row(MirrorPosition("f", "m", "t", 0, 5, excluded_txids=("a",)))
    assert position_upsert_sql().count("%s") == len(row)
    assert "ON CONFLICT (funnel, mirror) DO UPDATE SET topic = EXCLUDED.topic" in position_upsert_sql()
    assert "funnel = EXCLUDED" not in position_upsert_sql()
    assert position_select_sql().startswith(f"SELECT {', '.join(STATE_COLUMNS)} FROM {STATE_TABLE}")


# --- messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/mirror", "postgresql://app:***@db:5432/mirror"),
        ("postgresql://app@db/mirror", "postgresql://app@db/mirror"),
        ("postgresql://a:b:c@db/x", "postgresql://a:***@db/x"),
    ],
)
def test_redact_url_hides_the_password(url: str, shown: str) -> None:
    assert masked_password(url) == shown


def test_one_line_joins_detail_lines() -> None:
    message = 'connection failed: refused\n\tIs the server running?\n'
    assert one_line(message) == "connection failed: refused; Is the server running?"

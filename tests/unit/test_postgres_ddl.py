"""The definition difference of the PostgreSQL schema-change log (producer/sources/postgres/ddl)."""
from __future__ import annotations

import json

from funnel.ddl import (ADD_COLUMN, ALTER_TYPE, CREATE_INDEX, CREATE_TABLE, DROP_COLUMN, DROP_INDEX, DROP_TABLE,
                        RENAME_COLUMN, RENAME_TABLE, SET_DEFAULT)
from funnel.events import Op
from producer.sources.postgres.ddl import DdlFollower, ddl_of


def col(attnum, name, type_="integer", nullable=True, default=None):
    return {"attnum": attnum, "name": name, "typid": 23, "type": type_, "nullable": nullable, "default": default}


def table(name, columns, key=("id",), indexes=(), schema="public"):
    return {"schema": schema, "name": name, "keyed": bool(key), "columns": list(columns), "key": list(key),
            "indexes": list(indexes)}


ITEMS = table("items", [col(1, "id", nullable=False), col(2, "qty"), col(3, "note", "text")])


def kinds(ddl):
    return [(a.kind, a.name, a.to) for a in ddl.actions]


def test_a_renamed_column_is_told_from_a_drop_and_an_add_by_its_attnum():
    new = table("items", [col(1, "id", nullable=False), col(2, "quantity", "bigint"), col(3, "note", "text")])
    ddl = ddl_of("ALTER TABLE", "...", ITEMS, new)
    assert kinds(ddl) == [(RENAME_COLUMN, "qty", "quantity"), (ALTER_TYPE, "quantity", None)]
    assert ddl.object == "public.items" and ddl.definition.names == ["id", "quantity", "note"]


def test_a_column_dropped_and_one_added_with_the_same_name_is_not_a_rename():
    new = table("items", [col(1, "id", nullable=False), col(3, "note", "text"),
                          col(4, "qty", "text", default="'a'::text")])
    assert kinds(ddl_of("ALTER TABLE", "...", ITEMS, new)) == [(DROP_COLUMN, "qty", None), (ADD_COLUMN, "qty", None)]


def test_serial_defaults_are_left_out_and_other_defaults_kept():
    new = table("items", [col(1, "id", nullable=False, default="nextval('items_id_seq'::regclass)"),
                          col(2, "qty", default="0"), col(3, "note", "text")])
    ddl = ddl_of("ALTER TABLE", "...", ITEMS, new)
    assert kinds(ddl) == [(SET_DEFAULT, "qty", None)]
    assert ddl.definition.column("id").default is None


def test_create_rename_index_and_drop():
    created = ddl_of("CREATE TABLE", "CREATE ...", None,
                     table("t", [col(1, "id")], indexes=[{"name": "t_v", "columns": ["id"], "unique": True}]))
    assert kinds(created) == [(CREATE_TABLE, "public.t", None), (CREATE_INDEX, "t_v", None)]
    assert created.actions[1].unique and created.actions[1].columns == ("id",)
    renamed = ddl_of("ALTER TABLE", "...", ITEMS, dict(ITEMS, name="goods",
                                                      indexes=[{"name": "i", "columns": ["qty"], "unique": False}]))
    assert kinds(renamed) == [(RENAME_TABLE, "public.items", "public.goods"), (CREATE_INDEX, "i", None)]
    assert kinds(ddl_of("DROP INDEX", "...", dict(ITEMS, indexes=[{"name": "i", "columns": ["qty"], "unique": False}]),
                        ITEMS)) == [(DROP_INDEX, "i", None)]
    assert kinds(ddl_of("DROP TABLE", "DROP TABLE items", ITEMS, None)) == [(DROP_TABLE, "public.items", None)]


def row(relid, old, new, tag="ALTER TABLE"):
    return [b"1", tag.encode(), b"x", b"stmt", str(relid).encode(),
            json.dumps(old).encode() if old else None, json.dumps(new).encode() if new else None]


def test_the_follower_captures_new_keyed_tables_only_and_forgets_dropped_ones():
    captured = {}
    follower = DdlFollower(99, captured, capture_new=True)
    change = follower.change(row(7, None, table("t", [col(1, "id", nullable=False)]), "CREATE TABLE"))
    assert change.op is Op.DDL and change.table == "public.t" and change.key == ["id"]
    assert captured[7].qualified == "public.t" and captured[7].key == ("id",)
    assert follower.change(row(8, None, table("k", [col(1, "v")], key=()), "CREATE TABLE")) is None
    assert 8 not in captured
    dropped = follower.change(row(7, table("t", [col(1, "id", nullable=False)]), None, "DROP TABLE"))
    assert kinds(dropped.ddl) == [(DROP_TABLE, "public.t", None)] and dropped.columns == ["id"]
    assert 7 not in captured


def test_a_table_unknown_now_is_followed_only_when_adopting():
    old = table("gone", [col(1, "id", nullable=False)])
    assert DdlFollower(99, {}, capture_new=True).change(row(5, old, None, "DROP TABLE")) is None
    assert DdlFollower(99, {}, capture_new=True, adopt=True).change(row(5, old, None, "DROP TABLE")) is not None


def test_postgres_defaults_become_what_a_sqlite_mirror_accepts():
    from applier.sinks.ddl import _sqlite_default

    assert _sqlite_default("'red'::text") == "'red'"
    assert _sqlite_default("'a''b'::character varying") == "'a''b'"
    assert _sqlite_default("'1.5'::numeric") == "'1.5'" and _sqlite_default("-3") == "-3"
    assert _sqlite_default("true") == "1" and _sqlite_default(None) is None
    assert _sqlite_default("nextval('s'::regclass)") is False  # refused: not a literal
    assert _sqlite_default("'x'") == "'x'" and _sqlite_default("(1 + 2)") == "(1 + 2)"  # SQLite sources' own


def published_row(relid, old, new, published, tag="CREATE TABLE"):
    return row(relid, old, new, tag) + [b"t" if published else b"f"]


def test_a_new_table_is_followed_only_when_the_publication_carries_it_and_capture_is_by_schema():
    keyless = table("k", [col(1, "v")], key=())
    captured = {}
    follower = DdlFollower(99, captured, capture_new=True, rows_relid=98, publication="ops", own_publication=False)
    assert follower.change(published_row(8, None, table("t", [col(1, "id", nullable=False)]), False)) is None
    assert 8 not in captured, "not in the operator's publication (yet)"
    entered = follower.change(published_row(8, None, table("t", [col(1, "id", nullable=False)]), True,
                                            "ALTER PUBLICATION"))
    assert entered.op is Op.DDL and kinds(entered.ddl) == [(CREATE_TABLE, "public.t", None)] and 8 in captured
    full = DdlFollower(99, {}, capture_new=True, full=True)
    multiset = full.change(published_row(9, None, keyless, True))
    assert multiset.key == [] and kinds(multiset.ddl) == [(CREATE_TABLE, "public.k", None)]
    by_name = DdlFollower(99, {}, capture_new=False)  # --table: only the named tables
    assert by_name.change(published_row(9, None, keyless, True)) is None


def test_rows_log_rows_become_inserts_after_the_create_in_one_group():
    captured = {}
    follower = DdlFollower(99, captured, capture_new=True, rows_relid=98, full=True)
    columns = [col(1, "id", nullable=False), {**col(2, "raw", "bytea"), "typid": 17},
               {**col(3, "ok", "boolean"), "typid": 16}, {**col(4, "at", "timestamp with time zone"), "typid": 1184}]
    changes = []
    follower.insert(99, published_row(8, None, table("c", columns, key=()), True, "CREATE TABLE AS"), changes)
    for vals in (["1", "\\x00ff", "t", "2026-01-02 03:04:05+00"], ["2", None, None, None]):
        follower.insert(98, [b"1", b"8", json.dumps(vals).encode()], changes)
    follower.insert(98, [b"2", b"77", b'["x"]'], changes)  # a table not captured: nothing
    assert [c.op for c in changes] == [Op.DDL, Op.INSERT]
    assert changes[1].table == "public.c" and changes[1].key == [] and changes[1].columns == ["id", "raw", "ok", "at"]
    assert [r.after for r in changes[1].rows] == [[1, b"\x00\xff", True, "2026-01-02 03:04:05+00"],
                                                  [2, None, None, None]]

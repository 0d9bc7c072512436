"""A PostgreSQL mirror applies DDL events in order, in the rows' transaction (real PostgreSQL, no Kafka)."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from applier.sinks.postgres import PostgresSink
from applier.transaction import MirrorPosition, Transaction
from funnel import ddl as d
from funnel.ddl import Action, ColumnDef, Ddl, TableDef
from funnel.errors import SinkError
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges


@pytest.fixture
def db_url(postgres_url: str) -> Iterator[str]:
    name = f"tf_ddl_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield urlunsplit(urlsplit(postgres_url)._replace(path=f"/{name}"))
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def tx(txid: str, offset: int, *groups: TableChanges) -> Transaction:
    rows = sum(len(g.rows) for g in groups)
    return Transaction(txid, 1, Kind.CHANGES, offset, offset,
                       [ChangeBatch("shop", txid, 1, offset, 0, rows, Kind.CHANGES, list(groups))])


def at(offset: int) -> MirrorPosition:
    return MirrorPosition("shop", "m1", "shop", 0, offset + 1, snapshot_done=True)


def columns(url: str, table: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
                            "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                            (table,)).fetchall()


def test_ddl_between_rows_of_one_transaction_and_a_failing_one_rolls_back_whole(db_url: str) -> None:
    created = TableDef((ColumnDef("id", "integer", False), ColumnDef("qty", "integer")), ("id",))
    create = Ddl("CREATE TABLE", "CREATE TABLE orders (...)", "public.orders",
                 (Action(d.CREATE_TABLE, "public.orders"),), created)
    changed = TableDef((ColumnDef("id", "integer", False), ColumnDef("amount", "numeric(12,2)", False),
                        ColumnDef("note", "text", True, "'n'::text")), ("id",))
    alter = Ddl("ALTER TABLE", "ALTER TABLE orders ...", "public.orders", (
        Action(d.RENAME_COLUMN, "qty", to="amount"),
        Action(d.ALTER_TYPE, "amount", column=ColumnDef("amount", "numeric(12,2)", False)),
        Action(d.SET_NOT_NULL, "amount", column=ColumnDef("amount", "numeric(12,2)", False)),
        Action(d.ADD_COLUMN, "note", column=ColumnDef("note", "text", True, "'n'::text")),
        Action(d.CREATE_INDEX, "orders_amount", columns=("amount",))), changed)
    sink = PostgresSink(db_url)
    try:
        sink.apply([tx("1", 0, TableChanges("public.orders", Op.DDL, ["id", "qty"], ["id"], [], create),
                       TableChanges("public.orders", Op.INSERT, ["id", "qty"], ["id"], [Row(None, [1, 2])]))], at(0))
        sink.apply([tx("2", 1, TableChanges("public.orders", Op.INSERT, ["id", "qty"], ["id"], [Row(None, [2, 3])]),
                       TableChanges("public.orders", Op.DDL, changed.names, ["id"], [], alter),
                       TableChanges("public.orders", Op.INSERT, changed.names, ["id"], [Row(None, [3, "4.50", "x"])]))],
                   at(1))
        drop = Ddl("DROP TABLE", "DROP TABLE orders", "public.orders", (Action(d.DROP_TABLE, "public.orders"),))
        bad = Ddl("ALTER TABLE", "", "public.orders", (Action(d.ADD_COLUMN, "n", column=ColumnDef("n", "integer", False)),))
        with pytest.raises(SinkError, match="cannot apply the schema change of table 'public.orders2' \\(txid 3.*contains null values"):
            # NOT NULL without default on a table with rows: PostgreSQL refuses, nothing of the call stays
            sink.apply([tx("3", 2, TableChanges("public.orders", Op.DDL, [], [], [], drop),
                           TableChanges("public.orders2", Op.DDL, [], [], [], Ddl("CREATE TABLE", "", "public.orders2", (
                               Action(d.CREATE_TABLE, "public.orders2"),), created)),
                           TableChanges("public.orders2", Op.INSERT, ["id", "qty"], ["id"], [Row(None, [1, 1])]),
                           TableChanges("public.orders2", Op.DDL, [], [], [], Ddl(
                               "ALTER TABLE", "", "public.orders2", bad.actions)))], at(2))
        assert sink.read_position("shop", "m1").next_offset == 2
    finally:
        sink.close()
    assert columns(db_url, "orders") == [("id", "integer", "NO", None), ("amount", "numeric", "NO", None),
                                         ("note", "text", "YES", "'n'::text")]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT id, amount::text, note FROM orders ORDER BY id").fetchall() == [
            (1, "2.00", "n"), (2, "3.00", "n"), (3, "4.50", "x")]
        assert conn.execute("SELECT 1 FROM pg_indexes WHERE indexname = 'orders_amount'").fetchone()
        assert conn.execute("SELECT to_regclass('public.orders2')").fetchone() == (None,)

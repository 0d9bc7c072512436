"""PostgresSink against a real PostgreSQL server: what only PostgreSQL does (types, schemas, COPY, connections).

What every sink does is in test_sink_contract.py.

One fresh database per module (dropped at the end); each test uses its own uniquely
named tables and mirror id.  Most tests run twice: once with every batch through
executemany, once with every batch through COPY (straight into an empty table, else
through the staging table).
"""
from __future__ import annotations

import math
import socket
import struct
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from applier.sinks import open_sink
from applier.sinks.postgres import PostgresSink
from applier.sinks.postgres_sql import STATE_TABLE
from applier.transaction import MirrorPosition, Transaction
from funnel.errors import SinkError
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges, Value
from tests.support.sinks import dele, ins, upd

COMMIT = 1_700_000_000_000_000
ALL_COPY = 1  # copy_min_rows: every batch through COPY
NO_COPY = 10**9  # copy_min_rows: every non-snapshot batch through executemany


# --- fixtures and helpers ---------------------------------------------------------------


def database_url(server_url: str, name: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
def db_url(postgres_url: str) -> Iterator[str]:
    """A fresh database with odd session defaults, so the sink must not depend on them."""
    name = f"tf_pgsink_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        admin.execute(f"ALTER DATABASE \"{name}\" SET timezone TO 'Pacific/Chatham'")
        admin.execute(f"ALTER DATABASE \"{name}\" SET datestyle TO 'SQL, DMY'")
        admin.execute(f"ALTER DATABASE \"{name}\" SET intervalstyle TO 'sql_standard'")
    yield database_url(postgres_url, name)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def name() -> str:
    """A unique table name (in schema public); also the test's mirror id."""
    return f"t_{uuid.uuid4().hex[:10]}"


def sql(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on its own connection, as an independent reader in UTC, ISO styles."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET timezone = 'UTC'; SET datestyle = 'ISO, YMD'; SET intervalstyle = 'postgres'")
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def rows(url: str, table: str) -> list[tuple[Any, ...]]:
    return sql(url, f'SELECT * FROM public."{table}" ORDER BY 1, 2')


@pytest.fixture(params=[NO_COPY, ALL_COPY], ids=["executemany", "copy"])
def copy_min_rows(request: pytest.FixtureRequest) -> int:
    return request.param


@pytest.fixture
def sink(db_url: str, copy_min_rows: int) -> Iterator[PostgresSink]:
    with PostgresSink(db_url, copy_min_rows=copy_min_rows) as opened:
        yield opened


@pytest.fixture
def orders(db_url: str, name: str) -> str:
    """A mirror table like production's ``public.<name>(id, name, total)``; returns the source name."""
    sql(db_url, f'CREATE TABLE public."{name}" (id integer PRIMARY KEY, name text, total numeric(10,2))')
    return f"public.{name}"


COLUMNS = ["id", "name", "total"]


def changes(op: Op, table: str, *rows_: Row, columns: list[str] | None = None,
            key: list[str] | None = None) -> TableChanges:
    return TableChanges(table, op, columns or COLUMNS, key or ["id"], list(rows_))


def tx(txid: str, *groups: TableChanges, offset: int = 0, kind: Kind = Kind.CHANGES) -> Transaction:
    count = sum(len(group.rows) for group in groups)
    batch = ChangeBatch("src", txid, COMMIT + offset, offset, 0, count, kind, list(groups))
    return Transaction(txid, COMMIT + offset, kind, offset, offset, [batch])


def position(mirror: str, next_offset: int, last_txid: str | None = None, **extra: Any) -> MirrorPosition:
    return MirrorPosition("shop", mirror, "shop", 0, next_offset, last_txid, COMMIT + next_offset,
                          COMMIT + next_offset, snapshot_done=True, **extra)


# --- operations ---------------------------------------------------------------------------


def test_insert_update_delete_in_one_call(sink: PostgresSink, db_url: str, orders: str, name: str) -> None:
    applied = sink.apply([
        tx("t1", changes(Op.INSERT, orders, ins(1, "a", "10.00"), ins(2, "b", "20.50"), ins(3, "c", None))),
        tx("t2", changes(Op.UPDATE, orders, upd([2, "b", "20.50"], [2, "B", "21.00"])),
           changes(Op.DELETE, orders, dele(3, "c", None))),
    ], position(name, 2, "t2"))
    assert applied == 5
    assert rows(db_url, name) == [(1, "a", pytest.approx(10)), (2, "B", pytest.approx(21))]
    assert sql(db_url, f'SELECT total::text FROM public."{name}" ORDER BY id') == [("10.00",), ("21.00",)]
    assert sink.read_position("shop", name) == position(name, 2, "t2")

def test_snapshot_into_a_table_that_already_has_rows_from_another_session(
        db_url: str, orders: str, name: str) -> None:
    sql(db_url, f'INSERT INTO public."{name}" VALUES (1, \'old\', 1)')
    with PostgresSink(db_url) as fresh:  # knows nothing about the table: must look before COPYing straight in
        fresh.apply([tx("s", changes(Op.SNAPSHOT, orders, ins(1, "new", "1"), ins(2, "b", "2")),
                        kind=Kind.SNAPSHOT)], position(name, 1))
    assert rows(db_url, name) == [(1, "new", 1), (2, "b", 2)]

def test_rows_without_some_columns_keep_the_mirror_value(sink: PostgresSink, db_url: str, orders: str,
                                                        name: str) -> None:
    """The capture leaves an unchanged TOASTed value out of an update: that column is kept."""
    sink.apply([tx("seed", changes(Op.INSERT, orders, ins(1, "a", "1"), ins(2, "b", "2")))], position(name, 1))
    sink.apply([
        tx("t2", changes(Op.UPDATE, orders, upd([1, None], [1, "a2"]), columns=["id", "name"])),
        tx("t3", changes(Op.UPDATE, orders, upd([2, "b", "2"], [2, "b2", "3"])),
           changes(Op.UPDATE, orders, upd([2, None], [2, "b3"]), columns=["id", "name"])),
    ], position(name, 3))
    assert rows(db_url, name) == [(1, "a2", 1), (2, "b3", 3)]

def test_composite_and_text_typed_keys(sink: PostgresSink, db_url: str, name: str) -> None:
    sql(db_url, f'CREATE TABLE public."{name}" (u uuid, n numeric, v text, PRIMARY KEY (u, n))')
    table, columns, key = f"public.{name}", ["u", "n", "v"], ["u", "n"]
    a, b = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "b1ffcd00-0000-4000-8000-000000000002"
    sink.apply([tx("t1", changes(Op.INSERT, table, ins(a, "1.5", "x"), ins(b, "2", "y"), ins(a, "3", "z"),
                                 columns=columns, key=key))], position(name, 1))
    sink.apply([tx("t2", changes(Op.DELETE, table, dele(a, "1.5", "x"), columns=columns, key=key),
                   changes(Op.UPDATE, table, upd([b, "2", "y"], [b, "4", "y2"]), columns=columns, key=key))],
               position(name, 2))
    assert sql(db_url, f'SELECT u::text, n::text, v FROM public."{name}" ORDER BY v') == [
        (b, "4", "y2"), (a, "3", "z")]


def test_tables_keep_their_schema_and_quoted_names(sink: PostgresSink, db_url: str, name: str) -> None:
    schema, table = f"Sales {name}", 'Order "Lines"'
    sql(db_url, f'CREATE SCHEMA "{schema}"')
    sql(db_url, f'CREATE TABLE "{schema}"."Order ""Lines""" ("Id" int PRIMARY KEY, "select" text)')
    sql(db_url, f'CREATE TABLE public."{name}" (id int PRIMARY KEY, v text)')
    sink.apply([tx("t1", changes(Op.INSERT, f"{schema}.{table}", ins(1, "x"), columns=["Id", "select"], key=["Id"]),
                   changes(Op.INSERT, name, ins(7, "unqualified"), columns=["id", "v"]))], position(name, 1))
    assert sql(db_url, f'SELECT * FROM "{schema}"."Order ""Lines"""') == [(1, "x")]
    assert sql(db_url, f'SELECT * FROM public."{name}"') == [(7, "unqualified")]

def test_many_batches_of_one_table_in_one_call_reuse_the_staging_table(
        db_url: str, orders: str, name: str) -> None:
    with PostgresSink(db_url, copy_min_rows=2) as staged:
        staged.apply([tx("seed", changes(Op.INSERT, orders, ins(0, "seed", "0")))], position(name, 1))
        staged.apply([
            tx("t1", changes(Op.INSERT, orders, ins(1, "a", "1"), ins(2, "b", "2"))),
            tx("t2", changes(Op.DELETE, orders, dele(0, "seed", "0"))),
            tx("t3", changes(Op.INSERT, orders, ins(3, "c", "3"), ins(4, "d", "4"))),
        ], position(name, 2))
        assert rows(db_url, name) == [(1, "a", 1), (2, "b", 2), (3, "c", 3), (4, "d", 4)]
        staged.apply([tx("t4", changes(Op.UPDATE, orders, upd([1, "a", "1"], [1, "a2", "1"]),
                                       upd([4, "d", "4"], [4, "d2", "4"])))], position(name, 3))
    assert rows(db_url, name) == [(1, "a2", 1), (2, "b", 2), (3, "c", 3), (4, "d2", 4)]

# --- atomicity and errors -------------------------------------------------------------------


def test_an_error_in_a_later_transaction_rolls_back_the_whole_call(sink: PostgresSink, db_url: str, orders: str,
                                                                  name: str) -> None:
    sink.apply([tx("seed", changes(Op.INSERT, orders, ins(1, "a", "1")))], position(name, 1, "seed"))
    with pytest.raises(SinkError, match=rf"{name}.*txid t3.*invalid input syntax") as info:
        sink.apply([
            tx("t2", changes(Op.INSERT, orders, ins(2, "b", "2")), changes(Op.TRUNCATE, orders)),
            tx("t3", changes(Op.INSERT, orders, ins(3, "c", "not a number"))),
        ], position(name, 3, "t3"))
    assert "\n" not in str(info.value)
    assert rows(db_url, name) == [(1, "a", 1)]
    assert sink.read_position("shop", name) == position(name, 1, "seed")
    # The sink is usable again, staging tables included.
    sink.apply([tx("t2", changes(Op.INSERT, orders, ins(2, "b", "2")))], position(name, 2, "t2"))
    assert rows(db_url, name) == [(1, "a", 1), (2, "b", 2)]
    assert sink.read_position("shop", name) == position(name, 2, "t2")


def test_missing_table_is_named_and_nothing_is_applied(sink: PostgresSink, db_url: str, orders: str,
                                                       name: str) -> None:
    with pytest.raises(SinkError, match=rf"mirror table public\.{name}_missing does not exist.*txid t2") as info:
        sink.apply([tx("t1", changes(Op.INSERT, orders, ins(1, "a", "1"))),
                    tx("t2", changes(Op.INSERT, orders, ins(2, "b", "2")),
                       changes(Op.INSERT, f"{orders}_missing", ins(1, "x", "1")))], position(name, 2))
    assert "--create-tables" in info.value.hint
    assert rows(db_url, name) == []
    assert sink.read_position("shop", name) is None


def test_missing_column_is_named_and_rechecked_after_the_operator_adds_it(
        sink: PostgresSink, db_url: str, orders: str, name: str) -> None:
    wide = ["id", "name", "total", "note"]
    call = [tx("t1", changes(Op.INSERT, orders, ins(1, "a", "1", None))),
            tx("t2", changes(Op.INSERT, orders, ins(2, "b", "2", "hello"), columns=wide))]
    with pytest.raises(SinkError, match=rf"'public\.{name}' has no column 'note'.*txid t2"):
        sink.apply(call, position(name, 2))
    assert rows(db_url, name) == []
    sql(db_url, f'ALTER TABLE public."{name}" ADD COLUMN note text')
    call[0] = tx("t1", changes(Op.INSERT, orders, ins(1, "a", "1")))
    sink.apply(call, position(name, 2))
    assert rows(db_url, name) == [(1, "a", 1, None), (2, "b", 2, "hello")]


def test_a_column_added_while_the_sink_runs_is_found_without_a_failure(
        sink: PostgresSink, db_url: str, orders: str, name: str) -> None:
    sink.apply([tx("t1", changes(Op.INSERT, orders, ins(1, "a", "1")))], position(name, 1))
    sql(db_url, f'ALTER TABLE public."{name}" ADD COLUMN note text')  # the README's procedure: mirror first
    sink.apply([tx("t2", changes(Op.INSERT, orders, ins(2, "b", "2", "hi"), columns=["id", "name", "total", "note"]))],
               position(name, 2))
    assert rows(db_url, name) == [(1, "a", 1, None), (2, "b", 2, "hi")]


def test_event_key_that_is_not_the_mirror_key_is_refused(sink: PostgresSink, orders: str) -> None:
    with pytest.raises(SinkError, match=r"key column 'name' does not match the mirror's primary key \(id\)"):
        sink.apply([tx("t1", changes(Op.INSERT, orders, ins(1, "a", "1"), key=["name"]))], position("x", 1))

def test_connection_lost_fails_one_apply_then_reconnects(sink: PostgresSink, db_url: str, orders: str,
                                                        name: str) -> None:
    sink.apply([tx("t1", changes(Op.INSERT, orders, ins(1, "a", "1")))], position(name, 1))
    dbname = urlsplit(db_url).path.lstrip("/")
    killed = sql(db_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND application_name = 'timefunnel-applier'", (dbname,))
    assert killed == [(True,)]
    with pytest.raises(SinkError):
        sink.apply([tx("t2", changes(Op.INSERT, orders, ins(2, "b", "2")))], position(name, 2))
    sink.apply([tx("t2", changes(Op.INSERT, orders, ins(2, "b", "2")))], position(name, 2))
    assert rows(db_url, name) == [(1, "a", 1), (2, "b", 2)]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("make_url", "expected"),
    [
        (lambda db: f"postgresql://postgres@127.0.0.1:{_closed_port()}/postgres", "refused"),
        (lambda db: "postgresql://postgres@127.0.0.1:notaport/postgres", "port"),
        (lambda db: database_url(db, "no_such_database_x"), "does not exist"),
        (lambda db: db.replace("postgres@", "no_such_role:pw@"), 'role "no_such_role" does not exist'),
    ],
    ids=["refused", "bad-url", "unknown-database", "unknown-role"],
)
def test_connection_failures_are_one_line_sink_errors(db_url: str, make_url: Callable[[str], str],
                                                      expected: str) -> None:
    url = make_url(db_url)
    with pytest.raises(SinkError, match="cannot connect to mirror database") as info:
        PostgresSink(url)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert ":pw@" not in message  # the password is never shown
    assert info.value.hint


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_sink_opens_postgres_urls(db_url: str, scheme: str) -> None:
    url = db_url.replace("postgresql://", f"{scheme}://", 1)
    sink = open_sink(url)
    try:
        assert isinstance(sink, PostgresSink)
        assert sql(db_url, f"SELECT to_regclass('{STATE_TABLE}') IS NOT NULL") == [(True,)]
    finally:
        sink.close()
        sink.close()  # idempotent


# --- create_tables ---------------------------------------------------------------------------


def definitions_of(*definitions: dict[str, Any]) -> tuple[Callable[[], dict[str, dict[str, Any]]], list[int]]:
    calls: list[int] = []

    def read() -> dict[str, dict[str, Any]]:
        calls.append(1)
        return {definition["table"]: definition for definition in definitions}

    return read, calls


def test_create_tables_from_production_definitions(db_url: str, name: str) -> None:
    schema = f"s_{name}"
    definition = {
        "table": f"{schema}.orders",
        "columns": [
            {"name": "id", "type": "bigint", "not_null": True},
            {"name": "price", "type": "numeric(10,2)", "not_null": True},
            {"name": "at", "type": "timestamp with time zone", "not_null": False},
            {"name": "tags", "type": "integer[]", "not_null": False},
        ],
        "key": ["id"],
    }
    read, calls = definitions_of(definition)
    with PostgresSink(db_url, create_tables=True, table_definitions=read) as sink:
        sink.apply([tx("t1", changes(Op.INSERT, f"{schema}.orders", ins(1, "12.30", "2024-05-01 12:00:00+00", "{1,2}"),
                                     columns=["id", "price", "at", "tags"]))], position(name, 1))
        sink.apply([tx("t2", changes(Op.INSERT, f"{schema}.orders", ins(2, "1", None, None),
                                     columns=["id", "price", "at", "tags"]))], position(name, 2))
    assert calls == [1]  # read once, when the table was missing
    described = sql(db_url, """SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
                               FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0
                               ORDER BY a.attnum""", (f'"{schema}".orders',))
    assert described == [("id", "bigint", True), ("price", "numeric(10,2)", True),
                         ("at", "timestamp with time zone", False), ("tags", "integer[]", False)]
    assert sql(db_url, f"""SELECT a.attname FROM pg_index i JOIN pg_attribute a
                           ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                           WHERE i.indrelid = '"{schema}".orders'::regclass AND i.indisprimary""") == [("id",)]
    assert sql(db_url, f'SELECT id, price::text, tags::text FROM "{schema}".orders ORDER BY id') == [
        (1, "12.30", "{1,2}"), (2, "1.00", None)]


def test_create_tables_needs_a_published_definition(db_url: str, name: str) -> None:
    read, calls = definitions_of({"table": "public.other", "columns": [{"name": "id", "type": "int"}],
                                  "key": ["id"]})
    with PostgresSink(db_url, create_tables=True, table_definitions=read) as sink:
        with pytest.raises(SinkError, match=rf"no definition of table 'public\.{name}'"):
            sink.apply([tx("t1", changes(Op.INSERT, f"public.{name}", ins(1, "a", "1")))], position(name, 1))
    assert calls == [1, 1]  # asked again once: the capture may have published it meanwhile


def test_create_tables_leaves_user_types_to_the_operator(db_url: str, name: str) -> None:
    mood = f"mood_{name}"
    definition = {"table": f"public.{name}", "key": ["id"],
                  "columns": [{"name": "id", "type": "integer", "not_null": True},
                              {"name": "m", "type": mood, "not_null": False}]}
    read, _ = definitions_of(definition)
    call = [tx("t1", changes(Op.INSERT, f"public.{name}", ins(1, "happy"), columns=["id", "m"]))]
    with PostgresSink(db_url, create_tables=True, table_definitions=read) as sink:
        with pytest.raises(SinkError, match=rf'type "{mood}" does not exist') as info:
            sink.apply(call, position(name, 1))
        assert "create them on the mirror" in info.value.hint
        sql(db_url, f"CREATE TYPE {mood} AS ENUM ('sad', 'happy')")
        sink.apply(call, position(name, 1))
    assert sql(db_url, f'SELECT id, m::text FROM public."{name}"') == [(1, "happy")]


# --- values: canonical text round trips ---------------------------------------------------------

TYPED_COLUMNS = {
    "i2": "smallint", "i4": "integer", "i8": "bigint", "num": "numeric", "num_big": "numeric",
    "num2": "numeric(10,2)", "txt": "text", "vc": "varchar(10)", "b": "boolean", "by": "bytea",
    "dt": "date", "tm": "time", "tmtz": "time with time zone", "ts": "timestamp",
    "tstz": "timestamp with time zone", "iv": "interval", "u": "uuid", "j": "json", "jb": "jsonb",
    "ia": "integer[]", "ta": "text[]", "m": "{mood}",
}
UNICODE = "héllo ✓ 𝄞 😀 \t\n\r\\ 'single' \"double\" \u2028 \x01 Ωμέγα 漢字 end"
BLOB = bytes(range(256)) + b"\\N\x00\n"

# (value sent, text the mirror must hold, read back in UTC with ISO styles)
TYPED_ROWS: list[dict[str, tuple[Value, str | None]]] = [
    {
        "i2": (-32768, "-32768"), "i4": (2147483647, "2147483647"),
        "i8": (-9223372036854775808, "-9223372036854775808"),
        "num": ("12345678901234567890.123456789", "12345678901234567890.123456789"),
        "num_big": (2**100, str(2**100)), "num2": ("-12.50", "-12.50"), "txt": (UNICODE, UNICODE),
        "vc": ("abcdéfghij", "abcdéfghij"), "b": (True, "true"), "by": (BLOB, "\\x" + BLOB.hex()),
        "dt": ("2024-02-29", "2024-02-29"), "tm": ("23:59:59.999999", "23:59:59.999999"),
        "tmtz": ("12:00:00+05:30", "12:00:00+05:30"),
        "ts": ("2024-05-01 12:34:56.789012", "2024-05-01 12:34:56.789012"),
        # zone-independent: an offset in, the same instant out whatever the session zones
        "tstz": ("2024-05-01 12:00:00.123456+02", "2024-05-01 10:00:00.123456+00"),
        "iv": ("1 year 2 mons 3 days 04:05:06.789", "1 year 2 mons 3 days 04:05:06.789"),
        "u": ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        "j": ('{"b": 1,  "a": [1, 2.50]}', '{"b": 1,  "a": [1, 2.50]}'),
        "jb": ('{"a": [1, 2.50], "b": null}', '{"a": [1, 2.50], "b": null}'),
        "ia": ("{1,2,NULL,-3}", "{1,2,NULL,-3}"),
        "ta": ('{"a b","c,d","\\"q\\"",NULL,é,"NULL"}', '{"a b","c,d","\\"q\\"",NULL,é,"NULL"}'),
        "m": ("happy", "happy"),
    },
    {
        "i2": (0, "0"), "i4": (-1, "-1"), "i8": (9223372036854775807, "9223372036854775807"),
        "num": ("NaN", "NaN"), "num_big": ("-0.000000000000000000001", "-0.000000000000000000001"),
        "num2": ("0.00", "0.00"), "txt": ("\\N", "\\N"), "vc": ("", ""), "b": (False, "false"), "by": (b"", "\\x"),
        "dt": ("0044-03-15 BC", "0044-03-15 BC"), "tm": ("00:00:00", "00:00:00"),
        "tmtz": ("23:59:59.5-11", "23:59:59.5-11"),
        "ts": ("infinity", "infinity"), "tstz": ("-infinity", "-infinity"),
        "iv": ("-1 days +02:03:04", "-1 days +02:03:04"),
        "u": ("00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000000"),
        "j": ("null", "null"), "jb": ('"x"', '"x"'), "ia": ("{}", "{}"), "ta": ('{""}', '{""}'),
        "m": ("sad", "sad"),
    },
    {column: (None, None) for column in TYPED_COLUMNS},
]


@pytest.fixture
def typed_table(db_url: str, name: str) -> str:
    mood = f"mood_{name}"
    sql(db_url, f"CREATE TYPE {mood} AS ENUM ('sad', 'ok', 'happy')")
    columns = ", ".join(f'"{column}" {kind.format(mood=mood)}' for column, kind in TYPED_COLUMNS.items())
    sql(db_url, f'CREATE TABLE public."{name}" (id integer PRIMARY KEY, {columns})')
    return f"public.{name}"


@pytest.mark.parametrize("path", ["executemany", "copy-direct", "copy-staged", "snapshot"])
def test_values_round_trip_through_their_canonical_text(db_url: str, name: str, typed_table: str, path: str) -> None:
    columns = ["id", *TYPED_COLUMNS]
    images = [[n, *(row[column][0] for column in TYPED_COLUMNS)] for n, row in enumerate(TYPED_ROWS, start=1)]
    op = Op.SNAPSHOT if path == "snapshot" else Op.INSERT
    with PostgresSink(db_url, copy_min_rows=NO_COPY if path == "executemany" else ALL_COPY) as sink:
        if path == "copy-staged":
            sink.apply([tx("seed", changes(op, typed_table, ins(99, *[None] * len(TYPED_COLUMNS)),
                                           columns=columns))], position(name, 1))
        sink.apply([tx("t1", changes(op, typed_table, *(ins(*image) for image in images), columns=columns))],
                   position(name, 2))
    selected = ", ".join(f'"{column}"::text' for column in TYPED_COLUMNS)
    stored = sql(db_url, f'SELECT {selected} FROM public."{name}" WHERE id < 99 ORDER BY id')
    expected = [tuple(row[column][1] for column in TYPED_COLUMNS) for row in TYPED_ROWS]
    for got, want in zip(stored, expected, strict=True):
        assert dict(zip(TYPED_COLUMNS, got)) == dict(zip(TYPED_COLUMNS, want))
    assert sql(db_url, f'SELECT "by" FROM public."{name}" WHERE id = 1') == [(BLOB,)]


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


FLOATS = [  # (real as the producer sends it: the float4 value widened to double, double)
    (math.inf, -math.inf),
    (math.nan, math.nan),
    (-0.0, -0.0),
    (_float32(0.1), 0.1),
    (_float32(3.4028234663852886e38), 1.7976931348623157e308),
    (_float32(1.401298464324817e-45), 5e-324),
    (_float32(-123.456), 1 / 3),
]


def _same_float(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1, a) == math.copysign(1, b)


@pytest.mark.parametrize("copy_rows", [NO_COPY, ALL_COPY], ids=["executemany", "copy"])
def test_floats_are_exact_including_inf_nan_and_negative_zero(db_url: str, name: str, copy_rows: int) -> None:
    sql(db_url, f'CREATE TABLE public."{name}" (id integer PRIMARY KEY, r real, d double precision)')
    with PostgresSink(db_url, copy_min_rows=copy_rows) as sink:
        sink.apply([tx("t1", changes(Op.INSERT, f"public.{name}", *(ins(i, r, d) for i, (r, d) in enumerate(FLOATS)),
                                     columns=["id", "r", "d"]))], position(name, 1))
    stored = sql(db_url, f'SELECT r::float8, d FROM public."{name}" ORDER BY id')
    assert len(stored) == len(FLOATS)
    for (got_r, got_d), (want_r, want_d) in zip(stored, FLOATS):
        assert _same_float(got_r, want_r), (got_r, want_r)
        assert _same_float(got_d, want_d), (got_d, want_d)


def test_text_with_nul_is_refused_loudly(sink: PostgresSink, db_url: str, orders: str, name: str) -> None:
    with pytest.raises(SinkError, match=name):
        sink.apply([tx("t1", changes(Op.INSERT, orders, ins(1, "a\x00b", "1")))], position(name, 1))
    assert rows(db_url, name) == []


@pytest.mark.parametrize("path", ["executemany", "copy-direct", "copy-staged"])
def test_generated_columns_are_skipped_and_identity_is_overridden(db_url: str, name: str, path: str) -> None:
    sql(db_url, f"""CREATE TABLE public."{name}" (
        id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        n integer,
        twice integer GENERATED ALWAYS AS (n * 2) STORED,
        label text)""")
    table, columns = f"public.{name}", ["id", "n", "twice", "label"]
    with PostgresSink(db_url, copy_min_rows=NO_COPY if path == "executemany" else ALL_COPY) as sink:
        if path == "copy-staged":
            sink.apply([tx("seed", changes(Op.INSERT, table, ins(1, 1, 2, "seed"), columns=columns))],
                       position(name, 1))
        # The events carry production's generated value; 999 proves the mirror computes its own.
        sink.apply([tx("t1", changes(Op.INSERT, table, ins(10, 3, 999, "a"), ins(20, 4, 8, "b"), columns=columns))],
                   position(name, 2))
        sink.apply([tx("t2", changes(Op.UPDATE, table, upd([10, 3, 6, "a"], [10, 5, 10, "a2"]), columns=columns))],
                   position(name, 3))
    assert sql(db_url, f'SELECT * FROM public."{name}" WHERE id >= 10 ORDER BY id') == [
        (10, 5, 10, "a2"), (20, 4, 8, "b")]


def test_keys_python_tells_apart_but_the_mirror_does_not_apply_in_order(db_url: str, name: str) -> None:
    """'a' and 'a ' are one char(2) key: their net effect would touch one row twice in one
    ON CONFLICT statement, so the call is replayed in order, where the second updates the first."""
    sql(db_url, f'CREATE TABLE public."{name}" (k char(2) PRIMARY KEY, v int)')
    table = f"public.{name}"
    with PostgresSink(db_url, copy_min_rows=ALL_COPY) as sink:
        sink.apply([tx("t1", changes(Op.INSERT, table, ins("z", 0), columns=["k", "v"], key=["k"]))],
                   position(name, 1))
        sink.apply([tx("t2", changes(Op.INSERT, table, ins("a", 1), columns=["k", "v"], key=["k"])),
                    tx("t3", changes(Op.INSERT, table, ins("a ", 2), columns=["k", "v"], key=["k"]))],
                   position(name, 3))
    assert sql(db_url, f'SELECT k, v FROM public."{name}" ORDER BY k') == [("a ", 2), ("z ", 0)]

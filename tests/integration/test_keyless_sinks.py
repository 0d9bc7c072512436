"""Keyless tables on every sink: rows are a multiset, as PostgreSQL's logical replication keeps them.

One suite, run against a SQLite file and a PostgreSQL database (batches through
executemany, and through COPY).  A keyless table is what capture publishes for a
REPLICA IDENTITY FULL table without key: events with an empty key.
"""
from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from applier.sinks.postgres import PostgresSink
from applier.transaction import Transaction
from applier.undo import invert
from funnel.errors import SinkError
from funnel.events import Kind, Op, Row, TableChanges
from tests.support.sinks import KINDS, Mirror, ins, mirror_for, postgres_database, tx

COLUMNS = ["a", "b", "r"]
# pgbench_history-like: nullable columns, a real (compared as real), a padded char(n).
DEFINITION = {"columns": [{"name": "a", "type": "integer", "not_null": False},
                          {"name": "b", "type": "character(4)", "not_null": False},
                          {"name": "r", "type": "real", "not_null": False}], "key": []}


class Keyless:
    """The shared sink harness (``tests.support.sinks``) seen through one keyless table."""

    def __init__(self, harness: Mirror, table: str) -> None:
        self.harness, self.sink, self.table = harness, harness.sink, table

    def apply(self, *transactions: Transaction) -> None:
        self.harness.apply(*transactions)

    def apply_net(self, *transactions: Transaction) -> None:
        """Apply, and fail if the sink had to replay the call in order: its net effect,
        staged deletes included, must have matched exactly."""
        writer = self.sink._writer
        write, modes = writer.write, []
        writer.write = lambda batch, exact: modes.append(exact) or write(batch, exact)
        try:
            self.apply(*transactions)
        finally:
            del writer.write
        assert modes and not any(modes)

    def rows(self) -> Counter:
        return Counter(self.harness.execute(f"SELECT * FROM {self.harness.mirror_table(self.table)}"))

    def execute(self, statement: str) -> None:
        self.harness.execute(statement)


@pytest.fixture(scope="module")
def pg_db(postgres_url: str) -> Iterator[str]:
    with postgres_database(postgres_url, "tf_keyless") as url:
        yield url


@pytest.fixture(params=KINDS)
def mirror(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Keyless]:
    table = f"h_{uuid.uuid4().hex[:8]}"
    definitions = {f"public.{table}": {"table": f"public.{table}", **DEFINITION}}
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_db")
    extra = {} if url is None else {"create_tables": True, "table_definitions": lambda: definitions}
    with mirror_for(request.param, tmp_path, url, **extra) as harness:
        yield Keyless(harness, table)


def group(mirror: Keyless, op: Op, *rows: Row, columns: list[str] | None = None) -> TableChanges:
    return TableChanges(f"public.{mirror.table}", op, columns or COLUMNS, [], list(rows))


R = 0.1  # not exact as a real: matching must compare as real, not as the float8 parameter
A, B, NULLS = (1, None, R), (2, "x   ", None), (None, None, None)


def test_duplicates_and_nulls_are_kept_and_one_of_two_equal_rows_changes(mirror: Keyless) -> None:
    mirror.apply(tx("t1", group(mirror, Op.SNAPSHOT, ins(*A), ins(*A), ins(*B)), kind=Kind.SNAPSHOT))
    mirror.apply(tx("t2", group(mirror, Op.INSERT, ins(*A), ins(*NULLS), ins(*NULLS))))
    real = mirror.rows()
    stored_a = next(row for row in real if row[0] == 1)  # r as the mirror stores it
    assert real == Counter({stored_a: 3, B: 1, NULLS: 2})
    # one of three equal rows is updated, one of two all-NULL rows deleted, B updated to NULLs
    mirror.apply(tx("t3", group(mirror, Op.UPDATE, Row(list(A), [1, "y   ", R]), Row(list(B), list(NULLS))),
                    group(mirror, Op.DELETE, Row(list(NULLS), None))))
    changed = next(row for row in mirror.rows() if row[1] == "y   ")
    assert mirror.rows() == Counter({stored_a: 2, changed: 1, NULLS: 2})
    mirror.apply(tx("t4", group(mirror, Op.DELETE, Row(list(A), None), Row(list(A), None), Row(list(NULLS), None))))
    assert mirror.rows() == Counter({changed: 1, NULLS: 1})


def test_undo_inverts_keyless_changes_exactly(mirror: Keyless) -> None:
    mirror.apply(tx("t1", group(mirror, Op.INSERT, ins(*A), ins(*B), ins(*NULLS))))
    before = mirror.rows()
    change = tx("t2", group(mirror, Op.INSERT, ins(*A), ins(*NULLS)),  # duplicates
                group(mirror, Op.UPDATE, Row(list(A), [3, "z   ", None]), Row(list(NULLS), list(B))),
                group(mirror, Op.DELETE, Row(list(B), None)))
    mirror.apply(change)
    assert sum(mirror.rows().values()) == 4 and mirror.rows() != before
    mirror.apply(invert(change))
    assert mirror.rows() == before


def test_a_before_image_matching_no_row_stops_with_nothing_applied(mirror: Keyless) -> None:
    mirror.apply(tx("t1", group(mirror, Op.INSERT, ins(*A))))
    with pytest.raises(SinkError, match=r"\(txid t2\): 1 keyless delete\(s\) found no row equal to the before"):
        mirror.apply(tx("t2", group(mirror, Op.INSERT, ins(*B)), group(mirror, Op.DELETE, Row(list(A), None),
                                                                      Row(list(A), None))))
    assert sum(mirror.rows().values()) == 1


def test_a_mirror_table_with_every_column_as_primary_key_is_refused(mirror: Keyless) -> None:
    # What versions before keyless support created with --create-tables.
    mirror.execute(f'CREATE TABLE "{mirror.table}" (a integer, b character(4), r real, PRIMARY KEY (a, b, r))')
    with pytest.raises(SinkError, match=r"has primary key \(a, b, r\) but source table .* has none") as info:
        mirror.apply(tx("t1", group(mirror, Op.INSERT, ins(*A))))
    assert "without primary key" in info.value.hint or "DROP CONSTRAINT" in info.value.hint


def test_events_of_older_versions_with_every_column_as_key_apply_as_keyless(mirror: Keyless) -> None:
    # A delayed mirror still holds them when capture is upgraded; its table has no key.
    mirror.apply(tx("t1", group(mirror, Op.INSERT, ins(*B))))
    legacy = [TableChanges(f"public.{mirror.table}", op, COLUMNS, COLUMNS, [row]) for op, row in
              [(Op.INSERT, ins(*NULLS)), (Op.INSERT, ins(*NULLS)), (Op.UPDATE, Row(list(NULLS), list(B))),
               (Op.DELETE, Row(list(B), None))]]
    mirror.apply(tx("t2", *legacy))
    assert mirror.rows() == Counter({B: 1, NULLS: 1})


def test_a_column_added_to_the_mirror_while_running_is_found(mirror: Keyless) -> None:
    mirror.apply(tx("t1", group(mirror, Op.INSERT, ins(*A))))  # the sink now knows the table
    mirror.execute(f'ALTER TABLE "{mirror.table}" ADD COLUMN note text')
    wide = [*COLUMNS, "note"]
    mirror.apply(tx("t2", group(mirror, Op.INSERT, ins(*B, "hello"), columns=wide)))
    assert (2, "x   ", None, "hello") in mirror.rows()


TYPED = {"i": ("integer", 7), "raw": ("bytea", b"\x00\xff"), "doc": ("json", '{"a": [1, 2]}'),
         "docb": ("jsonb", '{"b": 1}'), "ts": ("timestamp with time zone", "2026-11-29 12:34:56+00"),
         "num": ("numeric(12,4)", "1.2500"), "d": ("double precision", 0.25), "r": ("real", 0.1),
         "words": ("text[]", '{x,"y z"}'), "spot": ("point", "(1,2)"), "flag": ("boolean", True),
         "span": ("interval", "1 day 02:03:04"), "uid": ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")}


def test_postgres_matches_rows_of_every_type_as_capture_sends_them(pg_db: str) -> None:
    table = f"typed_{uuid.uuid4().hex[:8]}"
    definition = {"table": f"public.{table}", "key": [],
                  "columns": [{"name": c, "type": t, "not_null": False} for c, (t, _) in TYPED.items()]}
    columns, image = list(TYPED), [value for _, value in TYPED.values()]
    with PostgresSink(pg_db, create_tables=True, table_definitions=lambda: {definition["table"]: definition}) as sink:
        mirror = Keyless(Mirror("postgres", sink, url=pg_db), table)
        mirror.apply(tx("t1", group(mirror, Op.INSERT, Row(None, image), Row(None, image), columns=columns)))
        changed = [8, *image[1:]]
        mirror.apply(tx("t2", group(mirror, Op.UPDATE, Row(image, changed), columns=columns)))
        mirror.apply(tx("t3", group(mirror, Op.DELETE, Row(image, None), Row(changed, None), columns=columns)))
    with psycopg.connect(pg_db) as conn:
        assert conn.execute(f'SELECT count(*) FROM public."{table}"').fetchone()[0] == 0


# -- many keyless deletes at once: one set operation per batch, exactly a multiset ----------------

MANY = 20  # above both writers' KEYLESS_COPY_MIN_ROWS: one staged delete


def test_many_deletes_at_once_take_exactly_as_many_equal_rows(mirror: Keyless) -> None:
    mirror.apply(tx("t1", group(mirror, Op.INSERT, *[ins(*A)] * MANY, *[ins(*NULLS)] * 3, *[ins(*B)] * 3)))
    stored_a = next(row for row in mirror.rows() if row[0] == 1)
    deletes = [Row(list(A), None)] * (MANY - 1) + [Row(list(NULLS), None)] * 2 + [Row(list(B), None)] * 3
    mirror.apply_net(tx("t2", group(mirror, Op.DELETE, *deletes)))
    assert mirror.rows() == Counter({stored_a: 1, NULLS: 1})


def test_changes_of_one_call_fold_into_net_copies(mirror: Keyless) -> None:
    C = (3, "c   ", None)
    mirror.apply(tx("t1", group(mirror, Op.INSERT, *[ins(*B)] * MANY)))
    # B -> C -> B for one row, C inserted and deleted, every other B deleted and inserted again.
    mirror.apply_net(tx("t2", group(mirror, Op.UPDATE, Row(list(B), list(C)))),
                 tx("t3", group(mirror, Op.INSERT, ins(*C)), group(mirror, Op.DELETE, Row(list(C), None))),
                 tx("t4", group(mirror, Op.UPDATE, Row(list(C), list(B))),
                    group(mirror, Op.DELETE, *[Row(list(B), None)] * (MANY - 1))),
                 tx("t5", group(mirror, Op.INSERT, *[ins(*NULLS)] * 2, *[ins(*B)] * (MANY - 2))))
    assert mirror.rows() == Counter({B: MANY - 1, NULLS: 2})


def test_many_deletes_of_rows_the_mirror_lacks_name_the_transaction(mirror: Keyless) -> None:
    mirror.apply(tx("t1", group(mirror, Op.INSERT, *[ins(*B)] * MANY)))
    with pytest.raises(SinkError, match=rf"mirror table '(public\.)?{mirror.table}' \(txid t3\): 1 keyless delete"):
        mirror.apply(tx("t2", group(mirror, Op.INSERT, ins(*A))),
                     tx("t3", group(mirror, Op.DELETE, *[Row(list(B), None)] * (MANY + 1))))
    assert mirror.rows() == Counter({B: MANY})


def test_values_the_count_tells_apart_but_the_mirror_finds_equal_are_replayed_in_order(mirror: Keyless) -> None:
    # 1 and 1.0 are counted apart (the mirror may store them apart), so the net effect
    # deletes a row that is not there yet; in order, the insert comes first and the
    # mirror's comparison finds it.
    mirror.apply(tx("t1", group(mirror, Op.INSERT, ins(*B))))
    mirror.apply(tx("t2", group(mirror, Op.INSERT, ins(1, None, None))),
                 tx("t3", group(mirror, Op.DELETE, Row([1.0, None, None], None))))
    assert mirror.rows() == Counter({B: 1})


def test_keyed_and_keyless_tables_in_one_call_and_a_foreign_key_the_net_effect_trips(mirror: Keyless) -> None:
    harness = mirror.harness
    parent = harness.create(harness.name(), "id integer PRIMARY KEY, v text")
    child_name = harness.name()
    child = harness.create(child_name, f"a integer REFERENCES {harness.mirror_table(parent.split('.')[1])} (id), b text")

    def rows(op: Op, table: str, *images: list, key: tuple = ()) -> TableChanges:
        return TableChanges(table, op, ["id", "v"] if key else ["a", "b"], list(key),
                            [Row(None, i) if op == Op.INSERT else Row(i, None) for i in images])

    harness.apply(tx("t1", rows(Op.INSERT, parent, [1, "p"], key=("id",)),
                     rows(Op.INSERT, child, *[[1, "c"]] * MANY, [None, "free"])))
    # The parent changes first, so the net effect deletes it before its children: the mirror's
    # foreign key refuses that, and the call is replayed in order.
    harness.apply(tx("t2", rows(Op.INSERT, parent, [2, "q"], key=("id",)),
                     rows(Op.DELETE, child, *[[1, "c"]] * MANY), rows(Op.DELETE, parent, [1, "p"], key=("id",)),
                     rows(Op.INSERT, child, [2, "c"], [None, "free"])))
    assert harness.rows(parent.split(".")[1]) == [(2, "q")]
    assert sorted(harness.rows(child_name), key=repr) == sorted([(2, "c"), (None, "free"), (None, "free")], key=repr)


def test_postgres_deletes_many_rows_of_every_type_at_once(pg_db: str) -> None:
    table = f"typed_{uuid.uuid4().hex[:8]}"
    definition = {"table": f"public.{table}", "key": [],
                  "columns": [{"name": c, "type": t, "not_null": False} for c, (t, _) in TYPED.items()]}
    columns, image = list(TYPED), [value for _, value in TYPED.values()]
    nulls = [None] * len(columns)
    odd = [9, *image[1:5], "NaN", float("nan"), *image[7:]]  # NaN equals NaN on PostgreSQL
    with PostgresSink(pg_db, create_tables=True, table_definitions=lambda: {definition["table"]: definition}) as sink:
        mirror = Keyless(Mirror("postgres", sink, url=pg_db), table)
        mirror.apply(tx("t1", group(mirror, Op.INSERT, *[Row(None, image)] * MANY, *[Row(None, nulls)] * 2,
                                    *[Row(None, odd)] * 3, columns=columns)))
        mirror.apply_net(tx("t2", group(mirror, Op.DELETE, *[Row(image, None)] * (MANY - 1), Row(nulls, None),
                                        *[Row(odd, None)] * 3, columns=columns)))
    with psycopg.connect(pg_db) as conn:
        left = conn.execute(f'SELECT i, num IS NULL FROM public."{table}" ORDER BY i').fetchall()
    assert left == [(7, False), (None, True)]


def test_postgres_deletes_many_rows_of_a_partitioned_table_by_partition_and_ctid(pg_db: str) -> None:
    # Rows of two partitions share ctids: the staged delete must tell them apart.
    table = f"parts_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_db, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE public."{table}" (a integer, b character(4), r real) PARTITION BY LIST (a)')
        for n in (1, 2):
            conn.execute(f'CREATE TABLE public."{table}_{n}" PARTITION OF public."{table}" FOR VALUES IN ({n})')
    with PostgresSink(pg_db) as sink:
        mirror = Keyless(Mirror("postgres", sink, url=pg_db), table)
        mirror.apply(tx("t1", group(mirror, Op.INSERT, *[ins(1, "x", None)] * MANY, *[ins(2, "x", None)] * MANY)))
        mirror.apply_net(tx("t2", group(mirror, Op.DELETE, *[Row([1, "x", None], None)] * (MANY - 1),
                                        Row([2, "x", None], None))))
    assert mirror.rows() == Counter({(1, "x   ", None): 1, (2, "x   ", None): MANY - 1})

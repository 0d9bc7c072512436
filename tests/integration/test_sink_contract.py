"""The sink contract: what every mirror database does with the same transactions.

One suite, run against a SQLite file and a PostgreSQL database (every batch through
executemany, and every batch through COPY).  What only one database does (types, names,
connections, table creation) is in test_sqlite_sink.py and test_postgres_sink.py.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from applier.transaction import MirrorPosition
from funnel.errors import SinkError
from funnel.events import Kind, Op, Row, TableChanges, Value
from tests.support.sinks import KINDS, Mirror, dele, ins, mirror_for, postgres_database, tx, upd

COLUMNS = ["id", "name", "total"]
ORDERS = "id integer PRIMARY KEY, name text, total integer"


@pytest.fixture(scope="module")
def pg_url(postgres_url: str) -> Iterator[str]:
    with postgres_database(postgres_url, "tf_contract") as url:
        yield url


@pytest.fixture(params=KINDS)
def mirror(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mirror]:
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_url")
    with mirror_for(request.param, tmp_path, url) as opened:
        yield opened


@pytest.fixture
def orders(mirror: Mirror) -> tuple[str, str]:
    """(source table, mirror table name) of a fresh ``orders(id, name, total)``."""
    name = mirror.name()
    return mirror.create(name, ORDERS), name


def changes(op: Op, table: str, *rows: Row, columns: list[str] | None = None,
            key: list[str] | None = None) -> TableChanges:
    return TableChanges(table, op, columns or COLUMNS, ["id"] if key is None else key, list(rows))


# --- operations ---------------------------------------------------------------------------


def test_insert_update_delete_in_one_call_counts_rows_and_stores_the_position(
        mirror: Mirror, orders: tuple[str, str]) -> None:
    table, name = orders
    stored = mirror.position(7, "t2")
    applied = mirror.sink.apply([
        tx("t1", changes(Op.INSERT, table, ins(1, "a", 10), ins(2, "b", 20), ins(3, "c", None))),
        tx("t2", changes(Op.UPDATE, table, upd([2, "b", 20], [2, "B", 21])),
           changes(Op.DELETE, table, dele(3, "c", None))),
    ], stored)
    assert applied == 5
    assert mirror.rows(name) == [(1, "a", 10), (2, "B", 21)]
    assert mirror.sink.read_position("shop", mirror.id) == stored


def test_upserts_collapse_to_the_last_image_per_key(mirror: Mirror, orders: tuple[str, str]) -> None:
    table, name = orders
    mirror.apply(tx("t1", changes(Op.INSERT, table, ins(1, "a", 1), ins(2, "b", 2))),
                 tx("t2", changes(Op.UPDATE, table, upd([1, "a", 1], [1, "a2", 1]))),
                 tx("t3", changes(Op.UPDATE, table, upd([1, "a2", 1], [1, "a3", 3]), upd([2, "b", 2], [2, "b2", 2]))))
    assert mirror.rows(name) == [(1, "a3", 3), (2, "b2", 2)]


def test_snapshot_rows_and_redelivered_inserts_upsert(mirror: Mirror, orders: tuple[str, str]) -> None:
    table, name = orders
    mirror.apply(tx("s", changes(Op.SNAPSHOT, table, ins(1, "a", 1), ins(2, "b", 2)), kind=Kind.SNAPSHOT))
    mirror.apply(tx("s2", changes(Op.SNAPSHOT, table, ins(2, "b2", 2), ins(3, "c", 3)), kind=Kind.SNAPSHOT),
                 tx("t1", changes(Op.INSERT, table, ins(1, "a2", 1))))
    assert mirror.rows(name) == [(1, "a2", 1), (2, "b2", 2), (3, "c", 3)]


def test_update_without_before_image_is_an_upsert(mirror: Mirror, orders: tuple[str, str]) -> None:
    table, name = orders
    mirror.apply(tx("t1", changes(Op.INSERT, table, ins(1, "a", 10))))
    mirror.apply(tx("t2", changes(Op.UPDATE, table, Row(None, [1, "z", 9]))))
    assert mirror.rows(name) == [(1, "z", 9)]


def test_delete_after_upsert_in_one_call_is_not_lost(mirror: Mirror, orders: tuple[str, str]) -> None:
    table, name = orders
    mirror.apply(tx("t1", changes(Op.INSERT, table, ins(1, "a", 1), ins(2, "b", 2))),
                 tx("t2", changes(Op.DELETE, table, dele(1, "a", 1))),
                 tx("t3", changes(Op.INSERT, table, ins(3, "c", 3), ins(2, "b2", 2))),
                 tx("t4", changes(Op.DELETE, table, dele(3, "c", 3))),
                 tx("t5", changes(Op.INSERT, table, ins(1, "again", 9))))
    assert mirror.rows(name) == [(1, "again", 9), (2, "b2", 2)]


def test_delete_takes_the_key_from_the_before_image(mirror: Mirror, orders: tuple[str, str]) -> None:
    table, name = orders
    mirror.apply(tx("t1", changes(Op.INSERT, table, ins(1, "a", 10), ins(2, "b", 20), ins(3, "c", 30))))
    assert mirror.apply(tx("t2", changes(Op.DELETE, table, dele(1, "a", 10), dele(3, "stale", 0)))) == 2
    assert mirror.rows(name) == [(2, "b", 20)]


def test_key_changes_move_rows_in_order(mirror: Mirror, orders: tuple[str, str]) -> None:
    # 1 -> 2 then 2 -> 3 in one group: deleting all old keys first, or upserting all new
    # rows first, would leave a stray row 2 behind; then the freed key 1 is taken again.
    table, name = orders
    mirror.apply(tx("seed", changes(Op.INSERT, table, ins(1, "a", 10), ins(5, "e", 50))))
    mirror.apply(
        tx("t2", changes(Op.UPDATE, table, upd([1, "a", 10], [2, "a", 10]), upd([2, "a", 10], [3, "a", 11]),
                         upd([3, "a", 11], [3, "b", 12]), upd([5, "e", 50], [5, "e2", 50]))),
        tx("t3", changes(Op.UPDATE, table, upd([5, "e2", 50], [1, "e2", 50]))),
        tx("t4", changes(Op.INSERT, table, ins(5, "new", 0))))
    assert mirror.rows(name) == [(1, "e2", 50), (3, "b", 12), (5, "new", 0)]


def test_composite_key_change_and_delete(mirror: Mirror) -> None:
    name = mirror.name()
    table = mirror.create(name, "order_id integer, line integer, qty integer, PRIMARY KEY (order_id, line)")
    cols, key = ["order_id", "line", "qty"], ["order_id", "line"]
    mirror.apply(tx("t1", changes(Op.INSERT, table, ins(1, 1, 5), ins(1, 2, 6), ins(2, 1, 7), columns=cols, key=key)))
    mirror.apply(tx("t2", changes(Op.UPDATE, table, upd([1, 2, 6], [1, 3, 6]), columns=cols, key=key),
                    changes(Op.DELETE, table, dele(2, 1, 7), dele(1, 1, 5), columns=cols, key=key)))
    assert mirror.rows(name) == [(1, 3, 6)]


def test_truncate_empties_the_table_in_order(mirror: Mirror, orders: tuple[str, str]) -> None:
    table, name = orders
    mirror.apply(tx("seed", changes(Op.INSERT, table, ins(1, "a", 1))))
    applied = mirror.apply(tx("t2", changes(Op.INSERT, table, ins(2, "b", 2))),
                           tx("t3", changes(Op.TRUNCATE, table)),
                           tx("t4", changes(Op.INSERT, table, ins(3, "c", 3))))
    assert applied == 2
    assert mirror.rows(name) == [(3, "c", 3)]


def test_random_changes_in_random_group_commits_match_a_model(mirror: Mirror) -> None:
    """Random inserts, updates, key changes, deletes and truncates of two tables."""
    columns, key = ["a", "b", "v"], ["a", "b"]
    names = [mirror.name(), mirror.name()]
    tables = [mirror.create(n, "a integer, b text, v integer, PRIMARY KEY (a, b)") for n in names]
    rnd = random.Random(11)
    models: list[dict[tuple[int, str], list[Value]]] = [{}, {}]
    transactions = []
    for n in range(300):
        groups = []
        for _ in range(rnd.randrange(1, 6)):
            which = rnd.randrange(2)
            groups.append(_random_change(rnd, models[which], tables[which], columns, key))
        transactions.append(tx(f"t{n}", *groups, offset=n))
    start = 0
    while start < len(transactions):
        size = rnd.randrange(1, 60)
        mirror.apply(*transactions[start:start + size])
        start += size
    for name, model in zip(names, models):
        assert mirror.rows(name) == sorted((tuple(v) for v in model.values()), key=repr)


def _random_change(rnd: random.Random, model: dict, table: str, columns: list[str], key: list[str]) -> TableChanges:
    def new_key() -> tuple[int, str]:
        while True:
            candidate = (rnd.randrange(40), rnd.choice("xyz"))
            if candidate not in model:
                return candidate

    roll = rnd.random()
    if roll < 0.01:
        model.clear()
        return TableChanges(table, Op.TRUNCATE, columns, key, [])
    if not model or roll < 0.35:
        k = new_key()
        model[k] = [*k, rnd.randrange(1000)]
        return TableChanges(table, Op.INSERT, columns, key, [Row(None, model[k])])
    old = rnd.choice(sorted(model))
    before = model[old]
    if roll < 0.55:
        del model[old]
        return TableChanges(table, Op.DELETE, columns, key, [Row(before, None)])
    k = new_key() if roll < 0.7 else old
    del model[old]
    model[k] = [*k, rnd.randrange(1000)]
    return TableChanges(table, Op.UPDATE, columns, key, [Row(before, model[k])])


# --- mirror-only constraints: the net effect is replayed in order when it trips one ------


def test_values_of_a_unique_column_swapped_across_transactions(mirror: Mirror) -> None:
    """Production swaps two unique values through a third; the net effect alone would
    collide on the mirror's UNIQUE index, so the call is replayed in order."""
    name = mirror.name()
    table = mirror.create(name, "id integer PRIMARY KEY, name text UNIQUE, total integer")
    mirror.apply(tx("seed", changes(Op.INSERT, table, ins(1, "a", 1), ins(2, "b", 2))))
    stored = mirror.position(9, "t3")
    mirror.sink.apply([
        tx("t1", changes(Op.UPDATE, table, upd([1, "a", 1], [1, "tmp", 1]))),
        tx("t2", changes(Op.UPDATE, table, upd([2, "b", 2], [2, "a", 2]))),
        tx("t3", changes(Op.UPDATE, table, upd([1, "tmp", 1], [1, "b", 1]))),
    ], stored)
    assert mirror.rows(name) == [(1, "b", 1), (2, "a", 2)]
    assert mirror.sink.read_position("shop", mirror.id) == stored


def test_a_unique_value_freed_in_one_table_order_is_kept(mirror: Mirror) -> None:
    """A key's unique value moves to a new row inserted before the old row's delete
    reached the same stretch: ordered replay frees it first."""
    name = mirror.name()
    table = mirror.create(name, "id integer PRIMARY KEY, name text UNIQUE, total integer")
    mirror.apply(tx("seed", changes(Op.INSERT, table, ins(1, "a", 1))))
    mirror.apply(tx("t1", changes(Op.UPDATE, table, upd([1, "a", 1], [1, "old", 1]))),
                 tx("t2", changes(Op.INSERT, table, ins(2, "a", 2))))
    assert mirror.rows(name) == [(1, "old", 1), (2, "a", 2)]


def test_a_real_constraint_violation_names_the_transaction_and_applies_nothing(mirror: Mirror) -> None:
    name = mirror.name()
    table = mirror.create(name, "id integer PRIMARY KEY, name text NOT NULL, total integer")
    mirror.apply(tx("seed", changes(Op.INSERT, table, ins(1, "a", 1))))
    before = mirror.sink.read_position("shop", mirror.id)
    with pytest.raises(SinkError, match=r"txid t2\b") as raised:
        mirror.apply(tx("t1", changes(Op.INSERT, table, ins(2, "b", 2))),
                     tx("t2", changes(Op.INSERT, table, ins(3, None, 3))),
                     tx("t3", changes(Op.INSERT, table, ins(4, "d", 4))))
    assert name in str(raised.value) and "\n" not in str(raised.value)
    assert mirror.rows(name) == [(1, "a", 1)]
    assert mirror.sink.read_position("shop", mirror.id) == before


# --- errors and position --------------------------------------------------------------------


def test_malformed_row_image_is_a_sink_error_and_applies_nothing(mirror: Mirror, orders: tuple[str, str]) -> None:
    table, name = orders
    with pytest.raises(SinkError, match=rf"malformed delete row image for table 'public.{name}' \(txid t1\)"):
        mirror.apply(tx("t1", changes(Op.INSERT, table, ins(1, "a", 1)), changes(Op.DELETE, table, Row(None, None))))
    assert mirror.rows(name) == []


def test_heartbeat_stores_the_whole_state_and_mirrors_are_independent(mirror: Mirror) -> None:
    assert mirror.sink.read_position("shop", mirror.id) is None
    stored = mirror.position(9, "t9", hold_until=5, excluded_txids=("bad1", "bad2"))
    assert mirror.sink.apply([tx("hb", kind=Kind.HEARTBEAT, offset=8)], stored) == 0
    assert mirror.sink.read_position("shop", mirror.id) == stored and stored.mode == "holding"
    promoted = replace(stored, next_offset=10, hold_until=None, promoted_at=7, promote_target=8)
    mirror.sink.apply([], promoted)
    other = MirrorPosition("shop", mirror.id + "-2", "shop", 3, 42, None, None, None, snapshot_done=False)
    mirror.sink.apply([], other)
    assert mirror.sink.read_position("shop", mirror.id) == promoted and promoted.mode == "promoted"
    assert mirror.sink.read_position("shop", mirror.id + "-2") == other
    assert mirror.sink.read_position("other-funnel", mirror.id) is None

"""Drain windows: the net effect of many transactions, and the applier writing it per window.

``applier.window.net_effect`` must leave a mirror exactly as applying every transaction in
order would (checked against the real SQLite sink on random histories, key changes,
keyless tables and schema changes included), and a drain on the in-memory funnel must
form windows of whole transactions, leave excluded transactions out, stop exactly at
the target and record the position with every window.
"""
from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from applier.sinks.sqlite import SqliteSink
from applier.transaction import MirrorPosition, Transaction
from applier.window import net_effect
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges
from tests.unit.test_applier_loop import T0, S, Mirror, chunk

COLUMNS = ["id", "name"]


def tx(txid: str, *groups: TableChanges) -> Transaction:
    batch = ChangeBatch("src", txid, T0, 0, 0, sum(len(g.rows) for g in groups), Kind.CHANGES, list(groups))
    return Transaction(txid, T0, Kind.CHANGES, 0, 0, [batch])


def insert(*rows: list, table: str = "items", key: tuple = ("id",)) -> TableChanges:
    return TableChanges(table, Op.INSERT, COLUMNS, list(key), [Row(None, list(r)) for r in rows])


def update(*pairs: tuple[list, list], table: str = "items", key: tuple = ("id",)) -> TableChanges:
    return TableChanges(table, Op.UPDATE, COLUMNS, list(key), [Row(list(b), list(a)) for b, a in pairs])


def delete(*rows: list, table: str = "items", key: tuple = ("id",)) -> TableChanges:
    return TableChanges(table, Op.DELETE, COLUMNS, list(key), [Row(list(r), None) for r in rows])


def state(path: Path) -> dict[str, list]:
    with sqlite3.connect(path) as db:
        return {table: db.execute(f"SELECT id, name FROM {table} ORDER BY id, name").fetchall()
                for table in ("items", "notes")}


def apply_both_ways(tmp_path: Path, transactions: list[Transaction]) -> tuple[dict, dict, list[Transaction]]:
    """The mirror after every transaction in turn, and after their net effect in one call."""
    results = []
    for name, calls in (("each", [[t] for t in transactions]), ("net", [net_effect(transactions)])):
        path = tmp_path / f"{name}.db"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT UNIQUE)")
            db.execute("CREATE TABLE notes (id INTEGER, name TEXT)")  # keyless in the funnel
        sink = SqliteSink(path)
        sink.claim("f", "m")
        for n, call in enumerate(calls):
            sink.apply(call, MirrorPosition("f", "m", "f", 0, n + 1))
        sink.close()
        results.append(state(path))
    return results[0], results[1], net_effect(transactions)


def test_a_key_inserted_updated_and_deleted_in_one_window_ends_as_one_delete(tmp_path: Path) -> None:
    each, net, collapsed = apply_both_ways(tmp_path, [
        tx("1", insert([1, "a"], [2, "b"])), tx("2", update(([1, "a"], [1, "a2"]))), tx("3", delete([2, "b"])),
        tx("4", update(([1, "a2"], [1, "a3"])))])
    assert each == net == {"items": [(1, "a3")], "notes": []}
    groups = collapsed[0].changes
    assert [(g.op, [tuple(r) for r in g.rows]) for g in groups] == [
        (Op.DELETE, [([2, "b"], None)]), (Op.INSERT, [(None, [1, "a3"])])]
    assert collapsed[0].txid == "1..4"


def test_a_changed_key_and_a_freed_unique_value_end_exact(tmp_path: Path) -> None:
    # Key 1 becomes key 5; key 2 is deleted and its unique name taken by a new key 3.
    each, net, _ = apply_both_ways(tmp_path, [
        tx("1", insert([1, "a"], [2, "b"])), tx("2", update(([1, "a"], [5, "a"]))),
        tx("3", delete([2, "b"]), insert([3, "b"]))])
    assert each == net == {"items": [(3, "b"), (5, "a")], "notes": []}


def test_keyless_rows_fold_into_net_copies_of_each_image(tmp_path: Path) -> None:
    keyless = {"table": "notes", "key": ()}
    each, net, collapsed = apply_both_ways(tmp_path, [
        tx("1", insert([1, "x"], [1, "x"], [2, None], **keyless), insert([1, "a"])),
        tx("2", delete([1, "x"], **keyless), update(([1, "a"], [1, "b"]))),
        tx("3", update(([2, None], [2, "y"]), **keyless), insert([3, "z"], **keyless)),
        tx("4", delete([3, "z"], **keyless))])
    assert each == net == {"items": [(1, "b")], "notes": [(1, "x"), (2, "y")]}
    notes = [(g.op, [tuple(r) for r in g.rows]) for g in collapsed[0].changes if g.table == "notes"]
    assert notes == [(Op.INSERT, [(None, (1, "x")), (None, (2, "y"))])]


def test_keyless_deletes_of_mirror_rows_come_first_and_windows_do_not_cut(tmp_path: Path) -> None:
    keyless = {"table": "notes", "key": ()}
    start = [tx("0", insert(*[[n % 3, "dup"] for n in range(30)], **keyless))]  # 10 copies of 3 images
    history = [tx(str(n), insert([n, f"i{n}"]), delete([n % 3, "dup"], **keyless), insert([n, "new"], **keyless))
               for n in range(1, 21)]
    collapsed = net_effect(history)
    assert len(collapsed) == 1 and [(g.table, g.op, len(g.rows)) for g in collapsed[0].changes] == [
        ("items", Op.INSERT, 20), ("notes", Op.DELETE, 20), ("notes", Op.INSERT, 20)]
    each, net, _ = apply_both_ways(tmp_path, start + history)
    assert each == net and net["notes"].count((1, "dup")) == 3  # 10 copies, 7 deleted


def test_keyless_images_that_cannot_be_counted_pass_through_in_order(tmp_path: Path) -> None:
    keyless = {"table": "notes", "key": ()}
    odd = TableChanges("notes", Op.INSERT, COLUMNS, [], [Row(None, [1, {"not": "hashable"}])])
    collapsed = net_effect([tx("1", insert([1, "x"], **keyless)), tx("2", odd), tx("3", insert([2, "y"], **keyless))])
    assert [(g.op, [tuple(r) for r in g.rows]) for g in collapsed[0].changes] == [
        (Op.INSERT, [(None, (1, "x"))]), (Op.INSERT, [(None, [1, {"not": "hashable"}])]),
        (Op.INSERT, [(None, (2, "y"))])]


def test_random_keyless_histories_end_the_same_through_their_net_effect(tmp_path: Path) -> None:
    rng = random.Random(7)
    keyless = {"table": "notes", "key": ()}
    images = [[1, "a"], [1, None], [None, None], [2, "b"], [2.5, "c"], [-0.0, "z"], [0.0, "z"]]
    for run in range(4):
        rows: list[list] = []
        transactions = []
        for n in range(40):
            groups = []
            for _ in range(rng.randint(1, 3)):
                if rows and rng.random() < 0.5:
                    before = rows.pop(rng.randrange(len(rows)))
                    if rng.random() < 0.5:
                        groups.append(delete(before, **keyless))
                    else:
                        rows.append(list(rng.choice(images)))
                        groups.append(update((before, rows[-1]), **keyless))
                else:
                    new = [list(rng.choice(images)) for _ in range(rng.choice([1, 20]))]
                    rows.extend(map(list, new))
                    groups.append(insert(*new, **keyless))
            transactions.append(tx(str(n), *groups))
        folder = tmp_path / str(run)
        folder.mkdir()
        each, net, _ = apply_both_ways(folder, transactions)
        assert each["notes"] == net["notes"], run


def test_a_group_with_other_columns_cuts_the_window_into_segments(tmp_path: Path) -> None:
    narrow = TableChanges("items", Op.UPDATE, ["id"], ["id"], [Row([1], [1])])
    collapsed = net_effect([tx("1", insert([1, "a"])), tx("2", narrow), tx("3", update(([1, "a"], [1, "c"])))])
    assert [(g.op, g.columns) for g in collapsed[0].changes] == [
        (Op.INSERT, COLUMNS), (Op.INSERT, ["id"]), (Op.INSERT, COLUMNS)]


def test_random_histories_end_the_same_through_their_net_effect(tmp_path: Path) -> None:
    rng = random.Random(13)
    for run in range(5):
        live: dict[int, str] = {}
        transactions = []
        for n in range(40):
            groups = []
            for _ in range(rng.randint(1, 4)):
                key = rng.randint(1, 12)
                if key in live and rng.random() < 0.4:
                    groups.append(delete([key, live.pop(key)]))
                elif key in live:
                    new_key = key if rng.random() < 0.7 else rng.choice([k for k in range(13, 30) if k not in live])
                    before = [key, live.pop(key)]
                    live[new_key] = f"v{run}.{n}.{new_key}"
                    groups.append(update((before, [new_key, live[new_key]])))
                else:
                    live[key] = f"v{run}.{n}.{key}"
                    groups.append(insert([key, live[key]]))
            transactions.append(tx(str(n), *groups))
        folder = tmp_path / str(run)
        folder.mkdir()
        each, net, _ = apply_both_ways(folder, transactions)
        assert each == net == {"items": sorted(live.items()), "notes": []}


def test_nothing_to_write_gives_no_transaction() -> None:
    assert net_effect([]) == []
    assert net_effect([tx("h")]) == []


def test_a_schema_change_passes_through_whole_and_names_its_own_txid() -> None:
    # A sink error applying the schema change must name that transaction, not the window.
    ddl = tx("t3", TableChanges("items", Op.DDL, [], [], []), insert([9, "nine"]))
    out = net_effect([tx("h1"), tx("t1", insert([1, "a"])), tx("t2", update(([1, "a"], [1, "b"]))), ddl,
                      tx("t4", insert([2, "c"])), tx("h2")])
    assert [t.txid for t in out] == ["t1..t2", "t3", "t4"]
    assert out[1] is ddl


class Recording(SqliteSink):
    """The real SQLite sink, recording each call's transaction count and position."""

    calls: list[tuple[int, int, str | None]]

    def apply(self, transactions, position):
        self.calls = getattr(self, "calls", [])
        self.calls.append((len(transactions), position.next_offset, position.last_txid))
        return super().apply(transactions, position)


def drain_mirror(tmp_path: Path, window_rows: int, worker: bool = False) -> Mirror:
    mirror = Mirror(tmp_path, delay_s=3600)
    mirror.applier.options = type(mirror.applier.options)("shop", "m1", 3600, drain_window_rows=window_rows,
                                                          decode_worker=worker)
    mirror.applier.sink = Recording(mirror.path)
    # 12 transactions of 2 rows each; t3 overwrites t1's key 1 and t7 deletes it.
    batches = [chunk(f"t{i}", T0 + i * S, [i * 10, i * 10 + 1]) for i in range(12)]
    batches[3].changes.append(TableChanges("items", Op.UPDATE, ["id", "name"], ["id"],
                                           [Row([10, "item 10"], [10, "changed"])]))
    batches[3].tx_rows += 1
    batches[7].changes.append(TableChanges("items", Op.DELETE, ["id", "name"], ["id"], [Row([10, "changed"], None)]))
    batches[7].tx_rows += 1
    mirror.funnel.publish(*batches)
    mirror.applier.start()
    return mirror


@pytest.mark.parametrize("worker", [False, True], ids=["in-process", "worker"])
def test_a_drain_writes_windows_of_whole_transactions_with_their_position(tmp_path: Path, worker: bool) -> None:
    mirror = drain_mirror(tmp_path, window_rows=5, worker=worker)
    mirror.command(T0 + 60 * S, id="c1", kind="seek", to=T0 + 9 * S)  # t0..t8 are before the target
    sink = mirror.applier.sink
    windows = [(next_offset, txid) for count, next_offset, txid in sink.calls if count]
    # 2- and 3-row transactions, windows of at most 5 rows: never half a transaction, one
    # database transaction per window, each with the position after its last transaction.
    assert windows == [(2, "t1"), (4, "t3"), (6, "t5"), (8, "t7"), (9, "t8")]
    assert all(count == 1 for count, _, _ in sink.calls if count)  # one net-effect transaction per window
    expected = sorted(({i * 10 for i in range(9)} | {i * 10 + 1 for i in range(9)}) - {10})
    assert mirror.ids() == expected and mirror.applier.position.next_offset == 9
    assert mirror.applier.stats.applied_transactions == 9
    assert (mirror.applier.pipeline.worker is not None) == worker  # a drain of two windows or more uses it
    mirror.applier.close()


@pytest.mark.parametrize("worker", [False, True], ids=["in-process", "worker"])
def test_a_drain_leaves_excluded_transactions_out_and_stops_at_the_target(tmp_path: Path, worker: bool) -> None:
    mirror = drain_mirror(tmp_path, window_rows=6, worker=worker)
    # Leaving out t7 (the delete of key 10) keeps key 10 with t3's image.
    mirror.command(T0 + 60 * S, id="c1", kind="seek", to=T0 + 10 * S, excluded=["t7", "t2"])
    with sqlite3.connect(mirror.path) as db:
        assert db.execute("SELECT name FROM items WHERE id = 10").fetchone() == ("changed",)
    expected = sorted(({i * 10 for i in range(10)} | {i * 10 + 1 for i in range(10)}) - {20, 21, 70, 71})
    assert mirror.ids() == expected
    assert mirror.applier.position.next_offset == 10 and mirror.applier.position.last_txid == "t9"
    offsets = [next_offset for count, next_offset, _ in mirror.applier.sink.calls if count]
    assert offsets == sorted(offsets) and offsets[-1] == 10 and len(offsets) >= 3  # windows of at most 6 rows
    assert (mirror.applier.pipeline.worker is not None) == worker
    mirror.applier.close()


def test_a_promote_polled_with_the_data_before_its_target_applies_that_data_first(tmp_path: Path) -> None:
    # The command and the funnel's messages arrive in one poll: the command must not find
    # "nothing held, read to the end" and promote a mirror that lacks them.
    mirror = drain_mirror(tmp_path, window_rows=100)
    mirror.command(T0 + 60 * S, id="p1", kind="promote", to=T0 + 4 * S)
    assert mirror.applier.finished and mirror.applier.position.promoted_at is not None
    assert mirror.ids() == [0, 1, 10, 11, 20, 21, 30, 31]  # t0..t3, not one less

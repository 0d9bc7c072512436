"""The net effect of row changes (applier.sinks.collapse): pure, no database."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Callable

import pytest

from applier.sinks.collapse import DELETE, DELETE_ONE, INSERT, UPDATE_ONE, UPSERT, Ordered, Stretch, changed_key_rows
from funnel.events import Op, Row, TableChanges


@dataclass(frozen=True)
class Plan:
    keyless: bool
    key_of: Callable[[Any], Any]


KEYED = Plan(False, itemgetter(0))
PAIR = Plan(False, itemgetter(0, 1))
KEYLESS = Plan(True, tuple)


def group(op: Op, *rows: Row, table: str = "t") -> TableChanges:
    return TableChanges(table, op, ["k", "v"], ["k"], list(rows))


def ins(k: Any, v: Any) -> Row:
    return Row(None, [k, v])


def upd(before: list, after: list) -> Row:
    return Row(before, after)


def dele(k: Any, v: Any) -> Row:
    return Row([k, v], None)


def net(*steps: tuple[TableChanges, Plan, str]) -> list[tuple[str, str, list, str]]:
    stretch = Stretch()
    for changes, plan, txid in steps:
        assert stretch.fits(changes.table, plan)
        stretch.add(changes.table, changes, plan, txid)
    deletes, rest = stretch.batches()
    assert not stretch
    return [(b.kind, b.plan is KEYLESS, b.items, b.txids) for b in deletes + rest]


def test_last_image_per_key_wins_and_deletes_go_first() -> None:
    assert net((group(Op.INSERT, ins(1, "a"), ins(2, "b")), KEYED, "t1"),
               (group(Op.UPDATE, upd([1, "a"], [1, "a2"])), KEYED, "t2"),
               (group(Op.DELETE, dele(2, "b")), KEYED, "t3"),
               (group(Op.INSERT, ins(3, "c")), KEYED, "t4")) == [
        (DELETE, False, [2], "t1..t4"), (UPSERT, False, [[1, "a2"], [3, "c"]], "t1..t4")]


def test_a_deleted_key_inserted_again_is_an_upsert() -> None:
    assert net((group(Op.DELETE, dele(1, "a")), KEYED, "t1"), (group(Op.INSERT, ins(1, "b")), KEYED, "t2")) == [
        (UPSERT, False, [[1, "b"]], "t1..t2")]


def test_a_key_change_deletes_the_old_key_and_chains_collapse() -> None:
    # 1 -> 2 -> 3, then the freed 1 is taken by another row.
    assert net((group(Op.UPDATE, upd([1, "a"], [2, "a"]), upd([2, "a"], [3, "b"])), KEYED, "t1"),
               (group(Op.UPDATE, upd([5, "e"], [1, "e"])), KEYED, "t2")) == [
        (DELETE, False, [2, 5], "t1..t2"), (UPSERT, False, [[1, "e"], [3, "b"]], "t1..t2")]


def test_composite_keys_are_tuples() -> None:
    changes = TableChanges("t", Op.UPDATE, ["a", "b", "v"], ["a", "b"], [Row([1, 1, 0], [1, 2, 0])])
    assert net((changes, PAIR, "t1")) == [(DELETE, False, [(1, 1)], "t1"), (UPSERT, False, [[1, 2, 0]], "t1")]


def test_keyless_changes_end_as_net_copies_per_image_deletes_first() -> None:
    # Three x inserted, one updated to y, one deleted: one x and one y are left; z was in
    # the mirror and is deleted twice (two equal rows), w inserted and deleted again.
    assert net((group(Op.INSERT, ins(1, "x"), ins(1, "x")), KEYLESS, "t1"),
               (group(Op.INSERT, ins(1, "x"), ins(2, "w")), KEYLESS, "t2"),
               (group(Op.UPDATE, Row([1, "x"], [1, "y"])), KEYLESS, "t3"),
               (group(Op.DELETE, dele(1, "x"), dele(2, "w"), dele(3, "z"), dele(3, "z")), KEYLESS, "t4")) == [
        (DELETE_ONE, True, [Row((3, "z"), None)] * 2, "t1..t4"), (INSERT, True, [(1, "x"), (1, "y")], "t1..t4")]


def test_keyless_counting_tells_apart_what_the_mirror_stores_apart() -> None:
    # 1, 1.0 and True are one key in a dict, 0.0 and -0.0 too; NaN never equals itself.
    nan = float("nan")
    assert net((group(Op.UPDATE, Row([1, 0.0], [1.0, -0.0]), Row([True, 2], [1, 2])), KEYLESS, "t1"),
               (group(Op.UPDATE, Row([nan, 1], [float("nan"), 1])), KEYLESS, "t2")) == [
        (DELETE_ONE, True, [Row((1, 0.0), None), Row((True, 2), None)], "t1..t2"),
        (INSERT, True, [(1.0, -0.0), (1, 2)], "t1..t2")]


def test_a_keyless_image_that_cannot_be_counted_sends_its_table_back_to_order() -> None:
    odd = Row(None, [1, ["a list"]])  # unhashable: never from the codec, but never a wrong count
    assert net((group(Op.INSERT, ins(1, "x"), ins(1, "x")), KEYLESS, "t1"),
               (group(Op.DELETE, dele(1, "x")), KEYLESS, "t2"),
               (group(Op.INSERT, odd), KEYLESS, "t3"),
               (group(Op.UPDATE, Row([1, "x"], [1, "y"])), KEYLESS, "t4"),
               (group(Op.DELETE, dele(1, "q"), table="k"), KEYED, "t5")) == [
        (DELETE, False, [1], "t5"),
        (INSERT, True, [(1, "x"), [1, ["a list"]]], "t1..t3"),
        (UPDATE_ONE, True, [Row([1, "x"], [1, "y"])], "t4")]


def random_keyless_groups(rng, count: int) -> tuple[list[TableChanges], list]:
    """Valid keyless groups over few distinct images (so duplicates abound), from an
    initial multiset; returns the groups and the initial rows."""
    images = [[1, "a"], [1, None], [2, "a"], [None, None], [1.5, "b"]]
    initial = [list(rng.choice(images)) for _ in range(6)]
    rows = list(map(list, initial))
    groups = []
    for _ in range(count):
        op = rng.choice([Op.INSERT, Op.SNAPSHOT, Op.UPDATE, Op.DELETE]) if rows else Op.INSERT
        picked = []
        for _ in range(rng.choice([1, 1, 2, 5])):
            if op in (Op.INSERT, Op.SNAPSHOT):
                picked.append(Row(None, list(rng.choice(images))))
                rows.append(list(picked[-1].after))
            elif rows:
                before = rows.pop(rng.randrange(len(rows)))
                after = list(rng.choice(images)) if op == Op.UPDATE else None
                picked.append(Row(before, after))
                if after is not None:
                    rows.append(list(after))
        if picked:
            groups.append(group(op, *picked))
    return groups, initial


def replay_multiset(initial: list, batches) -> list:
    """A multiset mirror applying writer batches as both writers do; fails on an unmatched row."""
    rows = [tuple(r) for r in initial]
    for batch in batches:
        if batch.kind == INSERT:
            rows.extend(map(tuple, batch.items))
        else:
            for before, after in batch.items:
                rows.remove(tuple(before))  # ValueError: a delete of a row the mirror lacks
                if batch.kind == UPDATE_ONE:
                    rows.append(tuple(after))
    return sorted(rows, key=repr)


def test_keyless_net_effect_equals_ordered_replay() -> None:
    import random

    for seed in range(60):
        groups, initial = random_keyless_groups(random.Random(seed), 30)
        stretch, ordered = Stretch(), Ordered()
        for i, g in enumerate(groups):
            stretch.add("t", g, KEYLESS, str(i))
            ordered.add(g, KEYLESS, str(i))
        deletes, rest = stretch.batches()
        assert replay_multiset(initial, deletes + rest) == replay_multiset(initial, ordered.batches()), seed


def test_tables_keep_the_order_they_first_changed_in() -> None:
    stretch = Stretch()
    stretch.add("b", group(Op.INSERT, ins(1, "x"), table="b"), KEYED, "t1")
    stretch.add("a", group(Op.INSERT, ins(1, "x"), table="a"), Plan(False, itemgetter(0)), "t2")
    _, rest = stretch.batches()
    assert [b.first_txid for b in rest] == ["t1", "t2"]


def test_another_layout_of_a_pending_table_does_not_fit() -> None:
    stretch = Stretch()
    stretch.add("t", group(Op.INSERT, ins(1, "x")), KEYED, "t1")
    assert not stretch.fits("t", Plan(False, itemgetter(0)))
    assert stretch.fits("other", KEYLESS)


def test_snapshot_rows_mark_their_batch() -> None:
    stretch = Stretch()
    stretch.add("t", group(Op.SNAPSHOT, ins(1, "x")), KEYED, "s")
    _, rest = stretch.batches()
    assert rest[0].snapshot


def test_malformed_images_and_unknown_operations_raise() -> None:
    with pytest.raises(TypeError):
        Stretch().add("t", group(Op.DELETE, Row(None, None)), KEYED, "t1")
    with pytest.raises(ValueError):
        Stretch().add("t", group(Op.TRUNCATE, ins(1, "x")), KEYED, "t1")


def test_ordered_keeps_every_change_and_batches_per_transaction() -> None:
    ordered = Ordered()
    ordered.add(group(Op.INSERT, ins(1, "a"), ins(1, "b")), KEYED, "t1")
    ordered.add(group(Op.INSERT, ins(2, "c")), KEYED, "t2")
    ordered.add(group(Op.UPDATE, upd([1, "b"], [3, "b"])), KEYED, "t2")
    assert [(b.kind, b.items, b.txids) for b in ordered.batches()] == [
        (UPSERT, [[1, "a"], [1, "b"]], "t1"), (UPSERT, [[2, "c"]], "t2"), (DELETE, [1], "t2"),
        (UPSERT, [[3, "b"]], "t2")]
    assert ordered.batches() == []


def test_changed_key_rows_without_before_image() -> None:
    rows = [Row(None, [1, "a"]), Row([2, "b"], [3, "b"]), Row([4, "c"], [4, "d"])]
    assert changed_key_rows(rows, itemgetter(0)) == [1]


def test_memory_is_per_distinct_key() -> None:
    stretch = Stretch()
    for n in range(1000):
        stretch.add("t", group(Op.UPDATE, *(upd([k, n], [k, n + 1]) for k in range(10))), KEYED, f"t{n}")
    _, rest = stretch.batches()
    assert rest[0].items == [[k, 1000] for k in range(10)] and rest[0].txids == "t0..t999"


# -- the one per-key rule, shared by the sink's stretches and the drains' windows ------------------

def random_keyed_groups(rng, count: int) -> list[TableChanges]:
    """Groups of one- and many-row inserts, updates (some changing the key) and deletes."""
    rows: dict[int, list] = {}
    groups = []
    for n in range(count):
        size = rng.choice([1, 1, 3, 20])  # row by row, and in bulk
        op = rng.choice([Op.INSERT, Op.SNAPSHOT]) if len(rows) < size else rng.choice(list(Op)[:4])
        picked: list[Row] = []
        for _ in range(size):
            if op in (Op.INSERT, Op.SNAPSHOT):
                image = [rng.randrange(40), f"v{n}"]
                picked.append(Row(None, image))
            else:
                before = rows.pop(rng.choice(sorted(rows)))
                image = [rng.choice([before[0], rng.randrange(40)]), f"u{n}"] if op == Op.UPDATE else None
                picked.append(Row(before, image))
            if image is not None:
                rows[image[0]] = image
        groups.append(group(op, *picked))
    return groups


@pytest.mark.parametrize("size", [1, 40])  # row by row, and in bulk
def test_fold_keyed_keeps_before_images_only_when_asked(size: int) -> None:
    from applier.sinks.collapse import fold_keyed
    plain: dict = {}
    kept: dict = {}
    filler = [ins(k, "x") for k in range(100, 100 + size)]  # other keys, to reach the bulk path
    for g in (group(Op.INSERT, ins(1, "a"), ins(2, "b"), *filler), group(Op.UPDATE, upd([1, "a"], [3, "a"]), *filler),
              group(Op.DELETE, dele(2, "b"), *[dele(*row.after) for row in filler])):
        fold_keyed(plain, g.op, g.rows, itemgetter(0))
        fold_keyed(kept, g.op, g.rows, itemgetter(0), keep_before=True)
    assert plain == {1: None, 2: None, 3: [3, "a"], **{k: None for k in range(100, 100 + size)}}
    for k in range(100, 100 + size):
        assert kept.pop(k) == Row([k, "x"], None)
    assert kept == {1: Row([1, "a"], None), 2: Row([2, "b"], None), 3: [3, "a"]}
    assert [type(v) is Row for v in kept.values()] == [True, True, False]


def normal(batches: list) -> list:
    """Batches as comparable text, items in any order (a multiset's images have none)."""
    return sorted(repr((kind, keyless, sorted(map(repr, items)), txids)) for kind, keyless, items, txids in batches)


def test_window_and_stretch_fold_by_the_same_rule() -> None:
    """A drain window's net effect, folded again by the sink, is the sink's net of the raw groups."""
    import random

    from applier.transaction import Transaction
    from applier.window import net_effect
    from funnel.events import ChangeBatch, Kind

    for seed in range(40):
        groups = random_keyed_groups(random.Random(seed), 40)
        keyless, _ = random_keyless_groups(random.Random(seed), 20)
        groups += [dataclasses.replace(g, table="u", key=[]) for g in keyless]
        random.Random(seed).shuffle(groups)
        transactions = [Transaction(str(i), 0, Kind.CHANGES, i, i, [ChangeBatch("s", str(i), 0, 0, 0, 1, Kind.CHANGES, [g])])
                        for i, g in enumerate(groups)]
        windowed = [g for t in net_effect(transactions) for b in t.batches for g in b.changes]
        direct = net(*[(g, KEYED if g.key else KEYLESS, "t") for g in groups])
        again = net(*[(g, KEYED if g.key else KEYLESS, "t") for g in windowed])
        assert normal(again) == normal(direct), seed
        for g in windowed:  # a window's deletes keep whole before images
            assert all(len(r.before) == 2 and r.after is None for r in g.rows if g.op == Op.DELETE)

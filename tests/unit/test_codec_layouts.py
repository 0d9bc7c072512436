"""The codec's remembered group layouts (codec_read._LAYOUTS, codec_write._HEADS): a
remembered layout must never stand in for another, and the caches stay bounded."""
from __future__ import annotations

import pytest

from funnel import codec_read, codec_write
from funnel.codec import HEADER_SIZE
from funnel.errors import CodecError
from funnel.events import Op, Row, TableChanges
from tests.unit.test_codec import CODEC, COLUMNS, fastavro_body, group, image, make_batch, round_trip


def test_groups_of_one_layout_share_their_column_and_key_lists() -> None:
    first = make_batch(group(Op.UPDATE, [Row(image(1), image(2))]), group(Op.UPDATE, [Row(image(3), image(4))]))
    second = make_batch(group(Op.UPDATE, [Row(image(5), image(6))]), txid="tx-43")
    groups = round_trip(first).changes + round_trip(second).changes
    assert all(g.columns == COLUMNS and g.key == ["id"] for g in groups)
    assert len({id(g.columns) for g in groups}) == 1 and len({id(g.key) for g in groups}) == 1


def test_one_table_with_changing_layouts_decodes_each_exactly() -> None:
    # Same table name, layouts differing only in op, a column, the key or a name's
    # prefix: a remembered layout must never stand in for another.
    layouts = [
        (Op.INSERT, ["id", "name"], ["id"]),
        (Op.UPDATE, ["id", "name"], ["id"]),
        (Op.INSERT, ["id", "name", "x"], ["id"]),
        (Op.INSERT, ["id", "name"], ["name"]),
        (Op.INSERT, ["id", "name"], []),
        (Op.INSERT, ["id", "nam"], ["id"]),
        (Op.INSERT, ["id", "namé"], ["id"]),
    ]
    groups = [TableChanges("public.orders", op, columns, key, [Row(None, [1, "a", 2][: len(columns)])])
              for op, columns, key in layouts]
    for batch in (make_batch(*groups, *reversed(groups)), make_batch(*reversed(groups))):
        assert CODEC.encode(batch)[HEADER_SIZE:] == fastavro_body(batch)  # the writer's heads too
        assert round_trip(batch) == batch


def test_lists_changed_after_encoding_encode_as_they_are_now() -> None:
    columns, key = ["id", "name"], ["id"]
    batch = make_batch(TableChanges("public.orders", Op.INSERT, columns, key, [Row(None, [1, "a"])]))
    CODEC.encode(batch)
    columns.append("x")
    key[0] = "name"
    batch.changes[0].rows[0].after.append(2)
    assert CODEC.encode(batch)[HEADER_SIZE:] == fastavro_body(batch)
    assert round_trip(batch).changes[0].columns == ["id", "name", "x"]


def test_more_layouts_than_remembered_still_code(monkeypatch: pytest.MonkeyPatch) -> None:
    for module, cache in ((codec_read, "_LAYOUTS"), (codec_write, "_HEADS")):
        monkeypatch.setattr(module, "_MAX_TABLES", 3)
        monkeypatch.setattr(module, "_MAX_PER_TABLE", 2)
        monkeypatch.setattr(module, cache, {})
    groups = [TableChanges(f"t{t}", Op.INSERT, [f"c{c}"], [], [Row(None, [c])]) for t in range(5) for c in range(4)]
    for _ in range(2):
        batch = make_batch(*groups)
        assert CODEC.encode(batch)[HEADER_SIZE:] == fastavro_body(batch)
        assert round_trip(batch) == batch
    for cache in (codec_read._LAYOUTS, codec_write._HEADS):
        assert len(cache) <= 3 and all(len(known) <= 2 for known in cache.values())


def test_truncated_layout_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec_read, "_LAYOUTS", {})
    message = CODEC.encode(make_batch(TableChanges("t", Op.INSERT, ["a", "b"], ["a"], [])))
    with pytest.raises(CodecError):
        CODEC.decode(message[:-8])  # cut before the end of the column names
    assert codec_read._LAYOUTS == {}
    assert CODEC.decode(message).changes[0].columns == ["a", "b"]

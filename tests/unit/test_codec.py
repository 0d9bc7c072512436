"""The Avro codec (funnel.codec): framing, exact values, schema resolution, bad input."""
from __future__ import annotations

import copy
import enum
import io
import math
import random
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

import schemas
from funnel import codec as codec_module
from funnel import codec_layout
from funnel.codec import HEADER_SIZE, MAGIC, EventCodec, record_of
from funnel.ddl import ADD_COLUMN, RENAME_COLUMN, Action, ColumnDef, Ddl, TableDef
from funnel.errors import CodecError
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges

CODEC = EventCodec()
COLUMNS = ["id", "name", "price", "active", "note", "blob"]


def make_batch(*groups: TableChanges, kind: Kind = Kind.CHANGES, **fields: Any) -> ChangeBatch:
    values: dict[str, Any] = dict(
        source="shop", txid="tx-42", commit_ts=1_795_953_600_123_456, position=9001, seq=0, tx_rows=3
    )
    values.update(fields)
    return ChangeBatch(kind=kind, changes=list(groups), **values)


def group(op: Op, rows: list[Row], columns: list[str] | None = None) -> TableChanges:
    return TableChanges("public.orders", op, columns or COLUMNS, ["id"], rows)


def image(i: int) -> list[Any]:
    return [i, f"name-{i}", i * 0.5, i % 2 == 0, None, bytes([i % 256]) * 3]


def one_value_batch(value: Any) -> ChangeBatch:
    return make_batch(group(Op.INSERT, [Row(None, [value])], columns=["v"]))


def round_trip(batch: ChangeBatch, codec: EventCodec = CODEC) -> ChangeBatch:
    return codec.decode(codec.encode(batch))


def current_schema() -> dict[str, Any]:
    return copy.deepcopy(schemas.versions("change_batch")[-1][1])


# --- operations, kinds, structure ------------------------------------------------------

OP_ROWS = {
    Op.SNAPSHOT: [Row(None, image(1)), Row(None, image(2))],
    Op.INSERT: [Row(None, image(3))],
    Op.UPDATE: [Row(image(4), image(5)), Row(image(6), image(7))],
    Op.DELETE: [Row(image(8), None)],
    Op.TRUNCATE: [],
    Op.DDL: [],
}


@pytest.mark.parametrize("op", list(Op))
def test_every_op_round_trips(op: Op) -> None:
    batch = make_batch(group(op, OP_ROWS[op]))
    decoded = round_trip(batch)
    assert decoded == batch
    decoded_group = decoded.changes[0]
    assert decoded_group.op is op
    assert all(type(row) is Row for row in decoded_group.rows)
    assert all(
        image is None or type(image) is list for row in decoded_group.rows for image in row
    )


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_round_trips(kind: Kind) -> None:
    batch = make_batch(kind=kind)
    decoded = round_trip(batch)
    assert decoded == batch
    assert decoded.kind is kind


def test_heartbeat_has_no_changes_and_keeps_its_time() -> None:
    batch = make_batch(kind=Kind.HEARTBEAT, txid="", tx_rows=0, commit_ts=1_795_953_600_000_001)
    decoded = round_trip(batch)
    assert decoded.kind is Kind.HEARTBEAT
    assert decoded.changes == []
    assert decoded.commit_ts == 1_795_953_600_000_001
    assert type(decoded.commit_ts) is int  # no timestamp-micros -> datetime conversion


def test_truncate_group_without_rows_then_inserts() -> None:
    batch = make_batch(
        TableChanges("public.orders", Op.TRUNCATE, [], [], []),
        group(Op.INSERT, [Row(None, image(1))]),
    )
    decoded = round_trip(batch)
    assert decoded == batch
    assert decoded.changes[0].rows == [] and decoded.changes[0].columns == []


def test_many_groups_keep_their_order() -> None:
    ops = [Op.INSERT, Op.UPDATE, Op.DELETE, Op.INSERT, Op.TRUNCATE]
    batch = make_batch(*(group(op, OP_ROWS[op]) for op in ops))
    assert [g.op for g in round_trip(batch).changes] == ops


def test_header_fields_round_trip_at_their_limits() -> None:
    batch = make_batch(
        source="prod-db/ü", txid="tx-" + "9" * 40, commit_ts=-1, position=2**63 - 1, seq=0, tx_rows=2**40
    )
    assert round_trip(batch) == batch


def test_wide_and_long_groups_use_multi_byte_counts() -> None:
    # 70 columns and 300 rows: array counts and lengths above 63 need multi-byte varints.
    columns = [f"c{i}" for i in range(70)]
    rows = [Row(None, [i * 1000 + c for c in range(70)]) for i in range(300)]
    rows.append(Row(["x" * 5000] * 70, [b"\x01" * 70] * 70))
    batch = make_batch(TableChanges("public.wide", Op.UPDATE, columns, columns[:2], rows))
    assert round_trip(batch) == batch


# --- values ---------------------------------------------------------------------------

EXACT_VALUES = [
    None,
    True,
    False,
    0,
    1,
    -1,
    63,
    64,
    -64,
    -65,
    8191, 8192, -8192, -8193,  # the decoder reads longs of 1, 2 and 3 bytes on their own paths
    2**20 - 1, 2**20, -(2**20), -(2**20) - 1,
    2**31,
    2**63 - 1,
    -(2**63 - 1),
    -(2**63),
    0.0,
    1.5,
    -2.75,
    1e308,
    5e-324,
    float("inf"),
    float("-inf"),
    "",
    "plain text",
    "y" * 64, "z" * 8192,  # text lengths of 1, 2 and 3 bytes
    "😀 emoji",
    "𝄞 astral",
    "nul\x00inside",
    "\x00",
    "שלום עולם",  # right-to-left
    "\u202eRTL override",
    "x" * 100_000,
    b"",
    b"\x00",
    b"\x00\xff\xfe binary",
    bytes(range(256)) * 40,
]


@pytest.mark.parametrize("value", EXACT_VALUES, ids=lambda v: repr(v)[:40])
def test_value_round_trips_with_its_exact_type(value: Any) -> None:
    decoded = round_trip(one_value_batch(value)).changes[0].rows[0].after[0]
    assert type(decoded) is type(value)
    assert decoded == value


def test_nan_round_trips() -> None:
    decoded = round_trip(one_value_batch(float("nan"))).changes[0].rows[0].after[0]
    assert type(decoded) is float and math.isnan(decoded)


def test_negative_zero_keeps_its_sign() -> None:
    decoded = round_trip(one_value_batch(-0.0)).changes[0].rows[0].after[0]
    assert decoded == 0.0 and math.copysign(1.0, decoded) == -1.0


def test_bool_and_int_stay_distinct() -> None:
    values = [True, 1, False, 0, 1.0]
    batch = make_batch(group(Op.INSERT, [Row(None, values)], columns=["a", "b", "c", "d", "e"]))
    decoded = round_trip(batch).changes[0].rows[0].after
    assert [type(v) for v in decoded] == [bool, int, bool, int, float]
    assert decoded[0] is True and decoded[2] is False


def test_null_images_and_null_values_are_different() -> None:
    batch = make_batch(group(Op.UPDATE, [Row([None] * 6, None), Row(None, [None] * 6)]))
    rows = round_trip(batch).changes[0].rows
    assert rows == [Row([None] * 6, None), Row(None, [None] * 6)]


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_int_outside_64_bits_is_rejected_naming_table_and_column(value: int) -> None:
    rows = [Row(None, image(1)), Row(image(2), image(2)[:2] + [value] + image(2)[3:])]
    with pytest.raises(CodecError) as caught:
        CODEC.encode(make_batch(group(Op.UPDATE, rows)))
    message = str(caught.value)
    assert "public.orders.price" in message
    assert "row 1" in message and "after" in message
    assert str(value) in message


@pytest.mark.parametrize("value", [Decimal("1.5"), object(), [1], ("long", 1), {"a": 1}])
def test_unsupported_value_type_is_rejected(value: Any) -> None:
    with pytest.raises(CodecError, match=r"public\.orders\.v .*" + type(value).__name__):
        CODEC.encode(one_value_batch(value))


def test_text_that_is_not_unicode_is_rejected() -> None:
    with pytest.raises(CodecError, match=r"public\.orders\.v .*UTF-8"):
        CODEC.encode(one_value_batch("lone \ud800 surrogate"))


def test_image_with_wrong_width_is_rejected() -> None:
    with pytest.raises(CodecError, match="5 values for 6 columns"):
        CODEC.encode(make_batch(group(Op.INSERT, [Row(None, image(1)[:5])])))


class Colour(enum.IntEnum):
    RED = 7


class Label(str):
    pass


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Colour.RED, 7),
        (Label("tag"), "tag"),
        (bytearray(b"\x01\x02"), b"\x01\x02"),
        (memoryview(b"\x03"), b"\x03"),
    ],
)
def test_subclasses_travel_as_their_base_type(value: Any, expected: Any) -> None:
    decoded = round_trip(one_value_batch(value)).changes[0].rows[0].after[0]
    assert type(decoded) is type(expected) and decoded == expected


def test_encode_rejects_unknown_op_and_kind() -> None:
    with pytest.raises(CodecError, match="not a funnel.events.Op"):
        CODEC.encode(make_batch(TableChanges("t", "upsert", [], [], [])))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="not a funnel.events.Kind"):
        CODEC.encode(make_batch(kind="later"))  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["commit_ts", "position", "seq", "tx_rows"])
def test_encode_rejects_header_field_outside_64_bits(field: str) -> None:
    with pytest.raises(CodecError, match=f"'tx-42' has {field} 18446744073709551616, which does not fit"):
        CODEC.encode(make_batch(**{field: 2**64}))


def test_encode_rejects_header_field_of_the_wrong_type() -> None:
    with pytest.raises(CodecError, match="'tx-42' has commit_ts"):
        CODEC.encode(make_batch(commit_ts=1.5e15))


# --- agreement with fastavro and the Avro spec ----------------------------------------

def _corpus() -> list[ChangeBatch]:
    odd = [v for v in EXACT_VALUES if not isinstance(v, bytes | str) or len(v) < 1000]
    return [
        make_batch(*(group(op, rows) for op, rows in OP_ROWS.items())),
        make_batch(group(Op.INSERT, [Row(None, odd)], columns=[f"c{i}" for i in range(len(odd))])),
        make_batch(kind=Kind.SNAPSHOT_END),
    ]


def fastavro_body(batch: ChangeBatch) -> bytes:
    fo = io.BytesIO()
    fastavro.schemaless_writer(fo, parse_schema(current_schema()), record_of(batch))
    return fo.getvalue()


@pytest.mark.parametrize("batch", _corpus())
def test_body_is_byte_identical_to_fastavro(batch: ChangeBatch) -> None:
    body = fastavro_body(batch)
    message = CODEC.encode(batch)
    assert message[HEADER_SIZE:] == body
    # And the specialised reader reads what fastavro wrote.
    assert CODEC.decode(message[:HEADER_SIZE] + body) == batch


def test_header_is_magic_and_crc64_fingerprint_of_the_canonical_form() -> None:
    expected = bytes.fromhex(
        fingerprint(to_parsing_canonical_form(parse_schema(current_schema())), "CRC-64-AVRO")
    )
    message = CODEC.encode(make_batch())
    assert message[:2] == MAGIC == b"\xc3\x01"
    assert message[2:HEADER_SIZE] == expected == CODEC.fingerprint


def test_fastavro_fingerprint_is_little_endian_as_the_spec_requires() -> None:
    # Avro's published test vector: the 64-bit fingerprint of "null" is 7195948357588979594.
    raw = bytes.fromhex(fingerprint('"null"', "CRC-64-AVRO"))
    assert int.from_bytes(raw, "little", signed=True) == 7195948357588979594


def test_shipped_schema_is_what_the_fast_coder_implements() -> None:
    assert "change_batch.v1.avsc" in schemas.schema_files()
    schema = current_schema()
    fields = {f["name"]: f for f in schema["fields"]}
    assert fields["commit_ts"]["type"] == {"type": "long", "logicalType": "timestamp-micros"}
    assert tuple(fields["kind"]["type"]["symbols"]) == tuple(k.name for k in codec_layout.KINDS)
    ops = fields["changes"]["type"]["items"]["fields"][1]["type"]["symbols"]
    assert tuple(ops) == tuple(o.name for o in codec_layout.OPS)
    assert {k.name for k in Kind} == set(fields["kind"]["type"]["symbols"])
    assert {o.name for o in Op} == set(ops)


def test_codec_refuses_a_newer_schema_without_a_matching_coder(monkeypatch: pytest.MonkeyPatch) -> None:
    newer = current_schema()
    newer["fields"].append({"name": "origin", "type": "string", "default": ""})
    versions = schemas.versions("change_batch") + [(99, newer)]
    monkeypatch.setattr(schemas, "versions", lambda name: versions)
    codec_module._shipped_schemas.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="update write_batch and read_batch"):
            EventCodec()
    finally:
        monkeypatch.undo()
        codec_module._shipped_schemas.cache_clear()
    assert EventCodec().fingerprint == CODEC.fingerprint


def test_decode_accepts_bytearray_and_memoryview() -> None:
    batch = make_batch(group(Op.INSERT, [Row(None, image(9))]))
    message = CODEC.encode(batch)
    assert CODEC.decode(bytearray(message)) == batch
    assert CODEC.decode(memoryview(message)) == batch


def long(n: int) -> bytes:
    fo = io.BytesIO()
    fastavro.schemaless_writer(fo, "long", n)
    return fo.getvalue()


def text(s: str) -> bytes:
    return long(len(s.encode())) + s.encode()


def test_reads_arrays_written_in_several_blocks() -> None:
    # Avro writers may split arrays into blocks, and a negative count is followed by the
    # block's byte size.  fastavro never does, so write this body by hand.
    value_a = b"\x04" + long(5)  # long branch, 5
    value_b = b"\x08" + text("b")  # string branch, "b"
    image_blocks = long(-1) + long(len(value_a)) + value_a + long(1) + value_b + long(0)
    row = b"\x00" + b"\x02" + image_blocks  # before null, after the image
    body = (
        text("shop") + text("tx") + long(7) + long(8) + long(0) + long(2) + long(0)
        + long(1) + text("t") + long(1)  # one group: table t, op INSERT
        + long(2) + text("a") + text("b") + long(0)  # columns
        + long(1) + text("a") + long(0)  # key
        + long(-1) + long(len(row)) + row + long(1) + row + long(0)  # two rows, two blocks
        + long(0)  # ddl: null
        + long(0)  # end of changes
    )
    decoded = CODEC.decode(MAGIC + CODEC.fingerprint + body)
    assert decoded.changes == [TableChanges("t", Op.INSERT, ["a", "b"], ["a"], [Row(None, [5, "b"])] * 2)]


# --- older writers ---------------------------------------------------------------------


def test_older_writer_without_kind_decodes_with_the_field_default() -> None:
    v0 = current_schema()
    v0["fields"] = [f for f in v0["fields"] if f["name"] != "kind"]
    batch = make_batch(group(Op.UPDATE, OP_ROWS[Op.UPDATE]))
    record = record_of(batch)
    del record["kind"]
    message = _write_with(v0, record)

    with pytest.raises(CodecError, match="unknown writer schema fingerprint") as caught:
        CODEC.decode(message)
    assert caught.value.hint and "upgrade" in caught.value.hint

    codec = EventCodec(extra_writer_schemas=[v0])
    decoded = codec.decode(message)
    assert decoded == batch
    assert decoded.kind is Kind.CHANGES
    assert type(decoded.changes[0].rows[0]) is Row


def test_older_writer_symbols_resolve_to_the_enum_defaults() -> None:
    old = current_schema()
    fields = {f["name"]: f for f in old["fields"]}
    fields["kind"]["type"]["symbols"].append("CHECKPOINT")
    group_fields = fields["changes"]["type"]["items"]["fields"]
    group_fields[1]["type"]["symbols"].append("MERGE")
    record = record_of(make_batch(group(Op.INSERT, [Row(None, image(1))])))
    record["kind"] = "CHECKPOINT"
    record["changes"][0]["op"] = "MERGE"

    decoded = EventCodec([old]).decode(_write_with(old, record))
    assert decoded.kind is Kind.HEARTBEAT
    assert decoded.changes[0].op is Op.UPDATE
    assert decoded.changes[0].rows == [Row(None, image(1))]


def test_older_writer_with_another_value_union_keeps_every_value_type() -> None:
    # fastavro alone would resolve these bytes to the reader's "string" branch.
    old = current_schema()
    row_fields = old["fields"][7]["type"]["items"]["fields"][4]["type"]["items"]["fields"]
    for image_field in row_fields:
        image_field["type"][1]["items"] = ["null", "bytes", "long", "string"]
    rows = [Row([1, "a", b"\xff\xfe", None], [2**62, "é", b"ok", b""])]
    batch = make_batch(group(Op.UPDATE, rows, columns=["w", "x", "y", "z"]))
    decoded = EventCodec([old]).decode(_write_with(old, record_of(batch)))
    assert decoded == batch
    assert [type(v) for v in decoded.changes[0].rows[0].after] == [int, str, bytes, bytes]


def test_older_writer_value_the_reader_cannot_hold_raises_codec_error() -> None:
    old = current_schema()
    row_fields = old["fields"][7]["type"]["items"]["fields"][4]["type"]["items"]["fields"]
    for image_field in row_fields:
        image_field["type"][1]["items"] = ["null", {"type": "map", "values": "long"}]
    record = record_of(make_batch(group(Op.INSERT, [Row(None, [{"a": 1}])], columns=["m"])))
    with pytest.raises(CodecError, match="a dict value is not a column value"):
        EventCodec([old]).decode(_write_with(old, record))


def test_older_writer_body_that_is_truncated_raises_codec_error() -> None:
    v0 = current_schema()
    v0["fields"] = [f for f in v0["fields"] if f["name"] != "kind"]
    record = record_of(make_batch(group(Op.INSERT, [Row(None, image(1))])))
    del record["kind"]
    message = _write_with(v0, record)
    codec = EventCodec([v0])
    with pytest.raises(CodecError, match="cannot decode"):
        codec.decode(message[:-5])
    with pytest.raises(CodecError, match="trailing"):
        codec.decode(message + b"\x00")


def _write_with(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    parsed = parse_schema(schema)
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    fo = io.BytesIO()
    fastavro.schemaless_writer(fo, parsed, record)
    return MAGIC + fp + fo.getvalue()


# --- malformed input --------------------------------------------------------------------

GOOD = CODEC.encode(make_batch(group(Op.UPDATE, [Row(image(1), image(2))]), group(Op.TRUNCATE, [])))


@pytest.mark.parametrize("data", [b"", b"\xc3", b"\xc3\x01\x00", GOOD[:HEADER_SIZE - 1]])
def test_too_short_for_a_header(data: bytes) -> None:
    with pytest.raises(CodecError, match="shorter than the 10-byte"):
        CODEC.decode(data)


@pytest.mark.parametrize("magic", [b"\x00\x00", b"\xc3\x00", b"\x01\xc3", b"{\""])
def test_wrong_magic(magic: bytes) -> None:
    with pytest.raises(CodecError, match="expected Avro single-object magic c3 01"):
        CODEC.decode(magic + GOOD[2:])


def test_unknown_fingerprint() -> None:
    with pytest.raises(CodecError, match="unknown writer schema fingerprint 0102030405060708"):
        CODEC.decode(MAGIC + bytes(range(1, 9)) + GOOD[HEADER_SIZE:])


def test_every_truncation_of_the_body_raises_codec_error() -> None:
    for end in range(HEADER_SIZE, len(GOOD)):
        with pytest.raises(CodecError, match="cannot decode"):
            CODEC.decode(GOOD[:end])


def test_trailing_bytes_raise_codec_error() -> None:
    with pytest.raises(CodecError, match="1 trailing bytes"):
        CODEC.decode(GOOD + b"\x00")


def _body_with(value_bytes: bytes) -> bytes:
    """A current-schema message with one one-column row whose value is ``value_bytes``."""
    message = CODEC.encode(one_value_batch(None))
    marker = b"\x02\x02\x00\x00"  # image branch, count 1, null value, end of array
    assert message.count(marker) == 1
    return message.replace(marker, b"\x02\x02" + value_bytes + b"\x00")


@pytest.mark.parametrize(
    ("value_bytes", "what"),
    [
        (b"\x0c", "value branch 12"),  # union index 6 does not exist
        (b"\x01", "value branch 1"),  # union index -1
        (b"\x08\x03", "negative length"),  # string of length -2
        (b"\x08\x04\xff\xfe", "not valid UTF-8"),
        (b"\x02\x05", "boolean byte 5"),
        (b"\x04" + b"\xff" * 10 + b"\x01", "longer than 64 bits"),
    ],
)
def test_malformed_values_raise_codec_error(value_bytes: bytes, what: str) -> None:
    assert CODEC.decode(_body_with(b"\x04\x02")).changes[0].rows[0].after == [1]  # the frame is sound
    with pytest.raises(CodecError, match=what):
        CODEC.decode(_body_with(value_bytes))


def test_varint_longer_than_64_bits_in_a_header_field_raises_codec_error() -> None:
    body = text("shop") + text("tx") + b"\xff" * 10 + b"\x01" + long(0) * 4 + long(0)
    with pytest.raises(CodecError, match="longer than 64 bits"):
        CODEC.decode(MAGIC + CODEC.fingerprint + body)


def test_malformed_enum_index_raises_codec_error() -> None:
    message = bytearray(CODEC.encode(make_batch(kind=Kind.HEARTBEAT)))
    assert message[-2] == 6  # kind HEARTBEAT (3), then the empty changes array
    message[-2] = 8  # kind index 4 does not exist
    with pytest.raises(CodecError, match="kind index 4"):
        CODEC.decode(bytes(message))
    message[-2] = 1  # kind index -1 must not wrap around to the last symbol
    with pytest.raises(CodecError, match="kind index -1"):
        CODEC.decode(bytes(message))


def test_garbage_bodies_raise_only_codec_error() -> None:
    rng = random.Random(20261129)
    header = GOOD[:HEADER_SIZE]
    for _ in range(2000):
        body = rng.randbytes(rng.randrange(0, 64))
        try:
            decoded = CODEC.decode(header + body)
        except CodecError:
            continue
        assert isinstance(decoded, ChangeBatch)  # a few random bodies are valid batches


# --- schema changes (change_batch v2) ---------------------------------------------------

DDL_EVENT = Ddl(
    tag="ALTER TABLE", statement='ALTER TABLE orders ADD COLUMN "note" TEXT', object="public.orders",
    actions=(Action(ADD_COLUMN, "note", column=ColumnDef("note", "text")),
             Action(RENAME_COLUMN, "name", to="title")),
    definition=TableDef((ColumnDef("id", "integer", nullable=False), ColumnDef("title", "text"),
                         ColumnDef("note", "text", default="'x'")), ("id",)),
)


def test_ddl_group_round_trips_with_its_definition() -> None:
    ddl_group = TableChanges("public.orders", Op.DDL, ["id", "title", "note"], ["id"], [], DDL_EVENT)
    batch = make_batch(group(Op.INSERT, [Row(None, image(1))]), ddl_group,
                       TableChanges("public.orders", Op.INSERT, ["id", "title", "note"], ["id"], [Row(None, [2, "b", None])]))
    decoded = round_trip(batch)
    assert decoded == batch
    assert decoded.changes[1].ddl == DDL_EVENT and decoded.changes[0].ddl is None


def test_fast_coder_matches_fastavro_for_a_ddl_group() -> None:
    ddl_group = TableChanges("public.orders", Op.DDL, ["id"], ["id"], [], DDL_EVENT)
    record = record_of(make_batch(ddl_group))
    record["changes"][0]["ddl"] = DDL_EVENT.to_json()
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parse_schema(codec_module._strip_logical_types(current_schema())), record)
    assert CODEC.encode(make_batch(ddl_group))[HEADER_SIZE:] == out.getvalue()


def test_v1_messages_still_decode_without_ddl() -> None:
    v1 = next(schema for version, schema in schemas.versions("change_batch") if version == 1)
    codec = EventCodec()
    batch = make_batch(group(Op.UPDATE, OP_ROWS[Op.UPDATE]), group(Op.TRUNCATE, []))
    record = record_of(batch)
    for g in record["changes"]:
        g.pop("ddl", None)
    parsed = parse_schema(codec_module._strip_logical_types(copy.deepcopy(v1)))
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, record)
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    assert fp != codec.fingerprint and fp in codec.known_fingerprints
    decoded = codec.decode(MAGIC + fp + out.getvalue())
    assert decoded == batch
    assert all(g.ddl is None for g in decoded.changes)


def test_malformed_ddl_text_raises_codec_error() -> None:
    good = CODEC.encode(make_batch(TableChanges("t", Op.DDL, [], [], [], Ddl("DROP TABLE", "", "t"))))
    bad = good.replace(b'"tag"', b'"tax"')
    with pytest.raises(CodecError, match="DDL"):
        CODEC.decode(bad)

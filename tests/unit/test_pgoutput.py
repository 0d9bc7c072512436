"""The pgoutput decoder (producer.sources.postgres.pgoutput) on hand-built messages, byte by byte
as PostgreSQL's "Logical Replication Message Formats" lay them out."""
from __future__ import annotations

import pickle
import struct

import pytest

from producer.sources.postgres.pgoutput import (
    PG_EPOCH_US,
    UNCHANGED,
    XLOGDATA_HEADER,
    Begin,
    Commit,
    DataType,
    Delete,
    Insert,
    Keepalive,
    LogicalMessage,
    Origin,
    PgOutputError,
    Relation,
    RelationColumn,
    Truncate,
    Update,
    XLogData,
    change_relid,
    decode_begin,
    decode_change,
    decode_commit,
    decode_copy_message,
    decode_message,
    decode_tuple,
    lsn_from_text,
    lsn_to_text,
    standby_status_update,
)

# 2026-01-02T03:04:05.123456Z in the two epochs
UNIX_US = 1_767_323_045_123_456
PG_US = UNIX_US - 946_684_800_000_000


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def text_col(value: bytes) -> bytes:
    return b"t" + struct.pack(">i", len(value)) + value


def tuple_data(*columns: bytes) -> bytes:
    return struct.pack(">h", len(columns)) + b"".join(columns)


def test_epoch_constant_is_2000_01_01():
    assert PG_EPOCH_US == 946_684_800 * 1_000_000


def test_begin():
    data = b"B" + struct.pack(">QqI", 0x16_B374_D848, PG_US, 4_000_000_123)
    assert decode_message(data) == Begin(final_lsn=0x16_B374_D848, commit_ts=UNIX_US, xid=4_000_000_123)


def test_commit():
    data = b"C" + b"\x00" + struct.pack(">QQq", 100, 148, PG_US)
    assert decode_message(data) == Commit(flags=0, commit_lsn=100, end_lsn=148, commit_ts=UNIX_US)


def test_commit_timestamp_before_2000_is_negative_in_the_protocol():
    data = b"C" + b"\x00" + struct.pack(">QQq", 1, 2, -1)
    assert decode_message(data).commit_ts == PG_EPOCH_US - 1


def test_origin():
    data = b"O" + struct.pack(">Q", 77) + cstr("pg_16384")
    assert decode_message(data) == Origin(commit_lsn=77, name="pg_16384")


def test_relation_with_identity_flags_types_and_utf8_names():
    data = (b"R" + struct.pack(">I", 16_390) + cstr("sales") + cstr("bestellungen_ü") + b"d"
            + struct.pack(">h", 3)
            + b"\x01" + cstr("id") + struct.pack(">Ii", 23, -1)
            + b"\x00" + cstr("price") + struct.pack(">Ii", 1700, (10 << 16 | 2) + 4)
            + b"\x00" + cstr("größe") + struct.pack(">Ii", 1043, 44))
    relation = decode_message(data)
    assert relation == Relation(16_390, "sales", "bestellungen_ü", "d", (
        RelationColumn(1, "id", 23, -1), RelationColumn(0, "price", 1700, 655_366),
        RelationColumn(0, "größe", 1043, 44)))
    assert [c.in_identity for c in relation.columns] == [True, False, False]


def test_relation_in_pg_catalog_has_an_empty_namespace():
    data = b"R" + struct.pack(">I", 1) + cstr("") + cstr("t") + b"f" + struct.pack(">h", 0)
    relation = decode_message(data)
    assert relation.namespace == "" and relation.replica_identity == "f" and relation.columns == ()


def test_type():
    data = b"Y" + struct.pack(">I", 16_500) + cstr("public") + cstr("mood")
    assert decode_message(data) == DataType(16_500, "public", "mood")


def test_insert_with_text_null_and_empty_values():
    columns = tuple_data(text_col(b"17"), b"n", text_col(b""), text_col("é\x00".encode()))
    data = b"I" + struct.pack(">I", 42) + b"N" + columns
    assert decode_message(data) == Insert(42, [b"17", None, b"", "é\x00".encode()])


def test_update_without_old_row():
    data = b"U" + struct.pack(">I", 42) + b"N" + tuple_data(text_col(b"1"), b"u")
    message = decode_message(data)
    assert message == Update(42, None, None, [b"1", UNCHANGED])
    assert message.new[1] is UNCHANGED


@pytest.mark.parametrize("kind", ["K", "O"])
def test_update_with_old_key_or_row(kind):
    old = tuple_data(text_col(b"1"), b"n")
    new = tuple_data(text_col(b"2"), text_col(b"x"))
    data = b"U" + struct.pack(">I", 7) + kind.encode() + old + b"N" + new
    assert decode_message(data) == Update(7, [b"1", None], kind, [b"2", b"x"])


def test_delete():
    data = b"D" + struct.pack(">I", 7) + b"K" + tuple_data(text_col(b"5"), b"n", b"n")
    assert decode_message(data) == Delete(7, [b"5", None, None], "K")


def test_delete_without_key_is_rejected():
    data = b"D" + struct.pack(">I", 7) + b"N" + tuple_data(text_col(b"5"))
    with pytest.raises(PgOutputError, match="without old key"):
        decode_message(data)


def test_truncate_with_options():
    data = b"T" + struct.pack(">iB", 3, 3) + struct.pack(">III", 10, 11, 4_294_967_295)
    message = decode_message(data)
    assert message == Truncate(3, (10, 11, 4_294_967_295))
    assert message.cascade and message.restart_identity
    plain = decode_message(b"T" + struct.pack(">iB", 1, 0) + struct.pack(">I", 9))
    assert not plain.cascade and not plain.restart_identity


def test_logical_message():
    data = b"M" + b"\x01" + struct.pack(">Q", 999) + cstr("app") + struct.pack(">i", 3) + b"a\x00b"
    assert decode_message(data) == LogicalMessage(True, 999, "app", b"a\x00b")


def test_decoding_from_an_offset_inside_xlogdata():
    payload = b"I" + struct.pack(">I", 1) + b"N" + tuple_data(text_col(b"x"))
    framed = b"w" + struct.pack(">QQq", 5, 6, 7) + payload
    assert decode_message(framed, XLOGDATA_HEADER) == Insert(1, [b"x"])


def test_large_value_keeps_every_byte():
    value = bytes(range(256)) * 4000
    values, end = decode_tuple(tuple_data(text_col(value), b"n"), 0)
    assert values == [value, None] and end == 2 + 5 + len(value) + 1


@pytest.mark.parametrize("data, match", [
    (b"", "empty"),
    (b"Z\x00", "unknown pgoutput message type 'Z'"),
    (b"B" + b"\x00" * 10, "malformed"),
    (b"C" + b"\x00" + struct.pack(">QQq", 1, 2, 3) + b"\x00", "trailing"),
    (b"I" + struct.pack(">I", 1) + b"X" + tuple_data(), "expected submessage"),
    (b"I" + struct.pack(">I", 1) + b"N" + tuple_data(b"b" + struct.pack(">i", 1) + b"\x01"), "binary"),
    (b"I" + struct.pack(">I", 1) + b"N" + tuple_data(b"q"), "unknown pgoutput column kind"),
    (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"t" + struct.pack(">i", 10) + b"abc",
     "cut short"),
    (b"R" + struct.pack(">I", 1) + b"public", "malformed"),  # no NUL after the namespace
    (b"M" + b"\x00" + struct.pack(">Q", 1) + cstr("p") + struct.pack(">i", 5) + b"ab", "cut short"),
])
def test_malformed_messages_raise(data, match):
    with pytest.raises(PgOutputError, match=match):
        decode_message(data)


def test_xlogdata_framing():
    payload = b"B" + struct.pack(">QqI", 1, 2, 3)
    data = b"w" + struct.pack(">QQq", 0x10, 0x20, PG_US) + payload
    assert decode_copy_message(data) == XLogData(0x10, 0x20, UNIX_US, payload)


@pytest.mark.parametrize("reply", [0, 1])
def test_keepalive(reply):
    data = b"k" + struct.pack(">QqB", 0xABCDEF, PG_US, reply)
    assert decode_copy_message(data) == Keepalive(0xABCDEF, UNIX_US, bool(reply))


@pytest.mark.parametrize("data", [b"", b"x123", b"k" + b"\x00" * 5, b"k" + b"\x00" * 18])
def test_bad_copy_messages_raise(data):
    with pytest.raises(PgOutputError):
        decode_copy_message(data)


def test_standby_status_update_layout():
    message = standby_status_update(0x30, 0x20, 0x10, UNIX_US, reply_requested=True)
    assert message == b"r" + struct.pack(">QQQqB", 0x30, 0x20, 0x10, PG_US, 1)
    assert len(message) == 34
    assert standby_status_update(1, 1, 1, PG_EPOCH_US)[-9:] == b"\x00" * 9


@pytest.mark.parametrize("text, value", [
    ("0/0", 0), ("0/16B3748", 0x16B3748), ("16/B374D848", 0x16_B374_D848),
    ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
])
def test_lsn_text_round_trip(text, value):
    assert lsn_from_text(text) == value
    assert lsn_to_text(value) == text


@pytest.mark.parametrize("text", ["", "16B374D848", "G/0", "1/2/3", "100000000/0"])
def test_malformed_lsn_raises(text):
    with pytest.raises(PgOutputError):
        lsn_from_text(text)


def test_unchanged_is_a_singleton_that_survives_pickling():
    assert pickle.loads(pickle.dumps(UNCHANGED)) is UNCHANGED
    assert repr(UNCHANGED) == "UNCHANGED"
    assert UNCHANGED not in [b"", None, 0]


# -- the capture's hot path: decode_change, decode_begin, decode_commit -------------

def tagged(count: int) -> list:
    """Converters that tag each value with its column number (to see which ran where)."""
    return [lambda value, i=i: (i, bytes(value)) for i in range(count)]


def converted(values):
    return None if values is None else [v if v is None or v is UNCHANGED else (i, v) for i, v in enumerate(values)]


ROW = tuple_data(text_col(b"17"), b"n", b"u")
OLD = tuple_data(text_col(b"16"), text_col(b"old"), text_col(b"big"))


@pytest.mark.parametrize("data", [
    b"I" + struct.pack(">I", 7) + b"N" + ROW,
    b"U" + struct.pack(">I", 7) + b"N" + ROW,
    b"U" + struct.pack(">I", 7) + b"K" + OLD + b"N" + ROW,
    b"U" + struct.pack(">I", 7) + b"O" + OLD + b"N" + ROW,
    b"D" + struct.pack(">I", 7) + b"K" + OLD,
    b"D" + struct.pack(">I", 7) + b"O" + OLD,
])
def test_decode_change_reads_what_decode_message_reads_converting_each_text_value(data):
    message = decode_message(data)
    framed = b"w" + b"\x00" * 24 + data
    old_kind, old, new = decode_change(framed, XLOGDATA_HEADER, tagged(3))
    assert change_relid(framed, XLOGDATA_HEADER) == message.relid == 7
    assert old_kind == getattr(message, "old_kind", None)
    assert old == converted(getattr(message, "old", None))
    assert new == converted(getattr(message, "new", None))


@pytest.mark.parametrize("data, error, match", [
    (b"I" + struct.pack(">I", 1) + b"X" + ROW, PgOutputError, "expected submessage"),
    (b"U" + struct.pack(">I", 1) + b"X" + ROW, PgOutputError, "expected submessage"),
    (b"D" + struct.pack(">I", 1) + b"N" + ROW, PgOutputError, "without old key or row"),
    (b"I" + struct.pack(">I", 1) + b"N" + ROW + b"\x00", PgOutputError, "trailing"),
    (b"I" + struct.pack(">I", 1) + b"N" + tuple_data(b"b" + struct.pack(">i", 1) + b"\x01", b"n", b"n"),
     PgOutputError, "binary"),
    (b"I" + struct.pack(">I", 1) + b"N" + tuple_data(b"q", b"n", b"n"), PgOutputError, "unknown pgoutput column kind"),
    (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 3) + b"t" + struct.pack(">i", 10) + b"abc",
     PgOutputError, "cut short"),
    (b"I" + struct.pack(">I", 1) + b"N" + tuple_data(b"n", b"n"), ValueError, "2 values for 3 columns"),
    (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 3) + b"n", IndexError, None),
])
def test_decode_change_refuses_what_decode_message_refuses(data, error, match):
    with pytest.raises(error, match=match):
        decode_change(data, 0, tagged(3))


def test_decode_begin_and_commit_read_what_decode_message_reads():
    begin = b"B" + struct.pack(">QqI", 0x16_B374_D848, PG_US, 4_000_000_123)
    commit = b"C" + b"\x00" + struct.pack(">QQq", 100, 148, PG_US)
    assert decode_begin(begin, 0) == (0x16_B374_D848, UNIX_US, 4_000_000_123)
    assert decode_commit(commit, 0) == (148, UNIX_US)
    for data, decode in ((begin, decode_begin), (commit, decode_commit)):
        with pytest.raises(PgOutputError, match="trailing"):
            decode(data + b"\x00", 0)
        with pytest.raises(struct.error):
            decode(data[:-1], 0)

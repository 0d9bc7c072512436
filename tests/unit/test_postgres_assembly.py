"""Transaction assembly (producer.sources.postgres.assembly) on hand-built pgoutput
messages: no server, no I/O, the messages as ``pgoutput.decode_message`` returns them.

Every test that feeds through ``feed_all``/``feed_one`` runs twice: once with the decoded
messages (``Assembler.feed``), once with their bytes as the walsender sends them
(``Assembler.feed_raw``, the capture's path), which must give the same transactions and errors."""
from __future__ import annotations

import struct
import sys

import pytest

from funnel.errors import SourceError
from funnel.events import Op, Row
from producer.sources.postgres.assembly import Assembler
from producer.sources.postgres.catalog import ColumnInfo, TableInfo
from producer.sources.postgres.pgoutput import (
    PG_EPOCH_US,
    UNCHANGED,
    XLOGDATA_HEADER,
    Begin,
    Commit,
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
    decode_message,
)

INT4, INT8, TEXT, BOOL, BYTEA, FLOAT8, NUMERIC, DOMAIN = 23, 20, 25, 16, 17, 701, 1700, 90001
ORDERS, OTHER = 16400, 16401


def orders(identity: str = "d", key: tuple[str, ...] = ("id",)) -> TableInfo:
    columns = (ColumnInfo("id", INT4, INT4, "integer", True), ColumnInfo("note", TEXT, TEXT, "text", False),
               ColumnInfo("qty", DOMAIN, INT8, "positive_qty", False))
    return TableInfo(ORDERS, "public", "orders", columns, key, identity, True, True)


def relation(relid: int = ORDERS, namespace: str = "public", name: str = "orders", identity: str = "d",
             columns: tuple[tuple[str, int], ...] = (("id", INT4), ("note", TEXT), ("qty", DOMAIN))) -> Relation:
    return Relation(relid, namespace, name, identity,
                    tuple(RelationColumn(1 if column == "id" else 0, column, oid, -1) for column, oid in columns))


def begin(xid: int = 700, final_lsn: int = 0x1000) -> Begin:
    return Begin(final_lsn=final_lsn, commit_ts=1_000, xid=xid)


def commit(end_lsn: int = 0x1010, commit_ts: int = 2_000) -> Commit:
    return Commit(flags=0, commit_lsn=end_lsn - 0x10, end_lsn=end_lsn, commit_ts=commit_ts)


RAW = False  # set by the ``path`` fixture: feed bytes through feed_raw


@pytest.fixture(autouse=True, params=["decoded", "raw"])
def path(request, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "RAW", request.param == "raw")
    return request.param


def feed_one(assembler: Assembler, message):
    if not RAW:
        return assembler.feed(message)
    data = b"w" + struct.pack(">QQq", 0, 0, 0) + wire(message)  # XLogData framing, as the stream has it
    return assembler.feed_raw(data, XLOGDATA_HEADER)


def feed_all(assembler: Assembler, *messages):
    """The transactions the messages complete, in order."""
    return [tx for tx in (feed_one(assembler, message) for message in messages) if tx is not None]


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def tuple_bytes(values) -> bytes:
    def column(value) -> bytes:
        if value is None:
            return b"n"
        if value is UNCHANGED:
            return b"u"
        return b"t" + struct.pack(">i", len(value)) + value
    return struct.pack(">h", len(values)) + b"".join(map(column, values))


def wire(message) -> bytes:
    """``message`` as pgoutput writes it (checked: decode_message reads it back)."""
    if isinstance(message, Begin):
        data = b"B" + struct.pack(">QqI", message.final_lsn, message.commit_ts - PG_EPOCH_US, message.xid)
    elif isinstance(message, Commit):
        data = b"C" + struct.pack(">BQQq", message.flags, message.commit_lsn, message.end_lsn,
                                  message.commit_ts - PG_EPOCH_US)
    elif isinstance(message, Origin):
        data = b"O" + struct.pack(">Q", message.commit_lsn) + cstr(message.name)
    elif isinstance(message, Relation):
        data = (b"R" + struct.pack(">I", message.relid) + cstr(message.namespace) + cstr(message.name)
                + message.replica_identity.encode() + struct.pack(">h", len(message.columns))
                + b"".join(bytes([c.flags]) + cstr(c.name) + struct.pack(">Ii", c.type_oid, c.type_modifier)
                           for c in message.columns))
    elif isinstance(message, Insert):
        data = b"I" + struct.pack(">I", message.relid) + b"N" + tuple_bytes(message.new)
    elif isinstance(message, Update):
        old = b"" if message.old is None else message.old_kind.encode() + tuple_bytes(message.old)
        data = b"U" + struct.pack(">I", message.relid) + old + b"N" + tuple_bytes(message.new)
    elif isinstance(message, Delete):
        data = b"D" + struct.pack(">I", message.relid) + message.old_kind.encode() + tuple_bytes(message.old)
    elif isinstance(message, Truncate):
        data = (b"T" + struct.pack(">iB", len(message.relids), message.options)
                + struct.pack(f">{len(message.relids)}I", *message.relids))
    else:
        assert isinstance(message, LogicalMessage)
        data = (b"M" + bytes([message.transactional]) + struct.pack(">Q", message.lsn) + cstr(message.prefix)
                + struct.pack(">i", len(message.content)) + message.content)
    assert decode_message(data) == message
    return data


def test_a_transaction_is_returned_whole_at_its_commit_with_values_converted():
    assembler = Assembler({ORDERS: orders()})
    assert feed_all(assembler, begin(), relation(), Insert(ORDERS, [b"1", b"first", b"5"])) == []
    assert assembler.in_transaction
    [tx] = feed_all(assembler, Insert(ORDERS, [b"2", None, b"7"]), commit(end_lsn=0x2000, commit_ts=3_000))
    assert not assembler.in_transaction
    assert (tx.txid, tx.position, tx.commit_ts) == ("700", 0x2000, 3_000), "the commit's end LSN and time"
    [group] = tx.changes
    assert (group.table, group.op, group.columns, group.key) == ("public.orders", Op.INSERT,
                                                                 ["id", "note", "qty"], ["id"])
    assert group.rows == [Row(None, [1, "first", 5]), Row(None, [2, None, 7])], "the domain reads as its base int8"


def test_each_change_of_op_or_table_starts_a_new_group_in_commit_order():
    other = TableInfo(OTHER, "public", "other", (ColumnInfo("k", TEXT, TEXT, "text", True),), ("k",), "d", True, True)
    assembler = Assembler({ORDERS: orders(), OTHER: other})
    [tx] = feed_all(assembler, begin(), relation(), relation(OTHER, name="other", columns=(("k", TEXT),)),
                    Insert(ORDERS, [b"1", b"a", b"1"]), Insert(ORDERS, [b"2", b"b", b"2"]),
                    Insert(OTHER, [b"x"]), Delete(ORDERS, [b"1", None, None], "K"),
                    Insert(ORDERS, [b"3", b"c", b"3"]), commit())
    assert [(g.table, g.op, len(g.rows)) for g in tx.changes] == [
        ("public.orders", Op.INSERT, 2), ("public.other", Op.INSERT, 1), ("public.orders", Op.DELETE, 1),
        ("public.orders", Op.INSERT, 1)]
    assert tx.row_count == 5


def test_an_update_without_the_old_row_gets_the_key_as_before_image():
    assembler = Assembler({ORDERS: orders()})
    [tx] = feed_all(assembler, begin(), relation(), Update(ORDERS, None, None, [b"1", b"new", b"9"]), commit())
    assert tx.changes[0].rows == [Row([1, None, None], [1, "new", 9])]


def test_an_update_that_changed_the_key_carries_the_old_key():
    assembler = Assembler({ORDERS: orders()})
    [tx] = feed_all(assembler, begin(), relation(), Update(ORDERS, [b"1", None, None], "K", [b"2", b"n", b"9"]),
                    commit())
    assert tx.changes[0].rows == [Row([1, None, None], [2, "n", 9])]


def test_an_unchanged_toast_value_is_taken_from_the_full_old_row():
    assembler = Assembler({ORDERS: orders("f")})
    [tx] = feed_all(assembler, begin(), relation(identity="f"),
                    Update(ORDERS, [b"1", b"big", b"3"], "O", [b"1", UNCHANGED, b"4"]), commit())
    [group] = tx.changes
    assert group.columns == ["id", "note", "qty"]
    assert group.rows == [Row([1, "big", 3], [1, "big", 4])]


def test_an_unchanged_toast_value_without_the_old_row_leaves_its_column_out_in_a_group_of_its_own():
    assembler = Assembler({ORDERS: orders()})
    [tx] = feed_all(assembler, begin(), relation(),
                    Update(ORDERS, None, None, [b"1", UNCHANGED, b"4"]),
                    Update(ORDERS, None, None, [b"2", UNCHANGED, b"5"]),
                    Update(ORDERS, None, None, [b"3", b"whole", b"6"]), commit())
    assert [(g.columns, g.rows) for g in tx.changes] == [
        (["id", "qty"], [Row([1, None], [1, 4]), Row([2, None], [2, 5])]),
        (["id", "note", "qty"], [Row([3, None, None], [3, "whole", 6])])]


def test_a_delete_carries_the_old_row_and_truncate_names_every_captured_table():
    other = TableInfo(OTHER, "public", "other", (ColumnInfo("k", TEXT, TEXT, "text", True),), ("k",), "d", True, True)
    assembler = Assembler({ORDERS: orders(), OTHER: other})
    [tx] = feed_all(assembler, begin(), relation(), relation(OTHER, name="other", columns=(("k", TEXT),)),
                    Delete(ORDERS, [b"1", None, None], "K"), Truncate(0, (ORDERS, OTHER)), commit())
    assert tx.changes[0].rows == [Row([1, None, None], None)]
    assert [(g.table, g.op, g.rows) for g in tx.changes[1:]] == [
        ("public.orders", Op.TRUNCATE, []), ("public.other", Op.TRUNCATE, [])]


def test_relations_that_are_published_but_not_captured_are_skipped():
    assembler = Assembler({ORDERS: orders()})
    [tx] = feed_all(assembler, begin(), relation(OTHER, name="elsewhere", columns=(("k", TEXT),)),
                    Insert(OTHER, [b"x"]), Truncate(0, (OTHER,)), commit())
    assert tx.changes == [] and tx.position == 0x1010, "an empty transaction still moves the position"


def test_messages_without_rows_are_ignored():
    assembler = Assembler({ORDERS: orders()})
    [tx] = feed_all(assembler, begin(), Origin(0x10, "elsewhere"), LogicalMessage(True, 0x10, "p", b"c"),
                    relation(), Insert(ORDERS, [b"1", b"a", b"1"]), commit())
    assert tx.row_count == 1
    assert assembler.feed(Keepalive(0x3000, 0, False)) is None


def test_a_renamed_table_carries_its_new_name():
    assembler = Assembler({ORDERS: orders()})
    [tx] = feed_all(assembler, begin(), relation(name="orders_2024"), Insert(ORDERS, [b"1", b"a", b"1"]), commit())
    assert tx.changes[0].table == "public.orders_2024"


def test_a_column_added_later_is_read_by_its_own_type():
    assembler = Assembler({ORDERS: orders()})
    wider = (("id", INT4), ("note", TEXT), ("qty", DOMAIN), ("ok", BOOL), ("blob", BYTEA), ("price", FLOAT8),
             ("amount", NUMERIC))
    [tx] = feed_all(assembler, begin(), relation(columns=wider),
                    Insert(ORDERS, [b"1", b"a", b"2", b"t", b"\\x00ff", b"-Infinity", b"1.50"]), commit())
    assert tx.changes[0].rows[0].after == [1, "a", 2, True, b"\x00\xff", float("-inf"), "1.50"]


def test_a_relation_that_lost_its_key_column_is_refused():
    assembler = Assembler({ORDERS: orders()})
    feed_one(assembler, begin())
    with pytest.raises(SourceError, match="lost its key column 'id'"):
        feed_one(assembler, relation(columns=(("note", TEXT),)))


def test_a_malformed_value_names_the_table_and_the_transaction():
    assembler = Assembler({ORDERS: orders()})
    feed_all(assembler, begin(xid=4242), relation())
    with pytest.raises(SourceError, match=r"insert row of public.orders \(xid 4242\)"):
        feed_one(assembler, Insert(ORDERS, [b"not a number", b"a", b"1"]))
    with pytest.raises(SourceError, match=r"update row"):
        feed_one(assembler, Update(ORDERS, None, None, [b"1", b"a"]))  # a value short


@pytest.mark.parametrize("messages, error", [
    ((Insert(ORDERS, [b"1", b"a", b"1"]),), "change of relation 16400 before its Relation message"),
    ((relation(), Insert(ORDERS, [b"1", b"a", b"1"])), "insert outside a transaction"),
    ((commit(),), "Commit outside a transaction"),
    ((begin(xid=1), begin(xid=2)), "Begin of xid 2 inside xid 1"),
])
def test_messages_out_of_place_are_refused(messages, error):
    assembler = Assembler({ORDERS: orders()})
    with pytest.raises(SourceError, match=error):
        feed_all(assembler, *messages)


def test_feed_raw_refuses_a_message_cut_short_as_malformed():
    assembler = Assembler({ORDERS: orders()})
    feed_all(assembler, begin(), relation())
    data = b"w" + bytes(24) + wire(Insert(ORDERS, [b"1", b"a", b"1"]))
    with pytest.raises(PgOutputError, match="malformed pgoutput 'I' message"):
        assembler.feed_raw(data[:-3], XLOGDATA_HEADER)  # cut inside the last value's length

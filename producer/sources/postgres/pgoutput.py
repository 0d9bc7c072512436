"""The pgoutput logical replication protocol (version 1) and the streaming-replication
framing around it: bytes in, values out, no I/O.

``decode_message`` reads one pgoutput message (Begin, Commit, Origin, Relation, Type,
Insert, Update, Delete, Truncate, Message) as PostgreSQL's "Logical Replication Message
Formats" describe it.  ``decode_copy_message`` reads what the walsender sends inside the
replication COPY stream (XLogData around a pgoutput message, or a primary keepalive), and
``standby_status_update`` builds our reply.

Row values stay as the server sent them: ``None`` for a null ('n'), ``UNCHANGED`` for an
unchanged TOASTed value that the server did not send ('u'), and the raw bytes of the
value's text form ('t').  Converting text to Python values needs the column types, which
only the caller knows (see ``producer.sources.postgres``).  We never ask for the binary
format ('b', PostgreSQL 14+), so it is rejected rather than silently mis-read.

Timestamps are returned in microseconds since the Unix epoch (the protocol counts from
2000-01-01), LSNs as unsigned 64-bit integers.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Union

from funnel.errors import SourceError

# Microseconds between 1970-01-01 and 2000-01-01, PostgreSQL's epoch.
PG_EPOCH_US = 946_684_800_000_000

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")
_RELATION_COLUMN_TAIL = struct.Struct(">Ii")
_XLOGDATA = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QqB")
_STATUS_UPDATE = struct.Struct(">cQQQqB")
XLOGDATA_HEADER = 1 + _XLOGDATA.size  # where the pgoutput message starts in a 'w' message


class PgOutputError(SourceError):
    """A message of the replication stream is malformed or of a kind we do not read."""


class _Unchanged:
    """The type of ``UNCHANGED``: a TOASTed value the server did not resend."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()

RawValue = Union[bytes, None, _Unchanged]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # the LSN of the commit record
    commit_ts: int  # µs since the Unix epoch
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int  # the LSN just after the commit record: where a restart resumes
    commit_ts: int  # µs since the Unix epoch


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int  # the commit LSN on the origin server
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    flags: int  # 1: part of the replica identity (every column under REPLICA IDENTITY FULL)
    name: str
    type_oid: int
    type_modifier: int

    @property
    def in_identity(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    relid: int
    namespace: str  # '' stands for pg_catalog
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class DataType:
    """A 'Y' message: the name of a non-built-in type that a Relation uses."""

    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relid: int
    new: list[RawValue]


@dataclass(frozen=True, slots=True)
class Update:
    relid: int
    old: list[RawValue] | None  # None unless the key changed or REPLICA IDENTITY FULL
    old_kind: str | None  # 'K': replica identity columns only; 'O': the whole old row
    new: list[RawValue]


@dataclass(frozen=True, slots=True)
class Delete:
    relid: int
    old: list[RawValue]
    old_kind: str  # 'K' or 'O', as for Update


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int  # bit 1: CASCADE, bit 2: RESTART IDENTITY
    relids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        return bool(self.options & 1)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & 2)


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """An 'M' message written with pg_logical_emit_message (only sent when asked for)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = Union[Begin, Commit, Origin, Relation, DataType, Insert, Update, Delete, Truncate, LogicalMessage]


@dataclass(frozen=True, slots=True)
class XLogData:
    data_start: int
    wal_end: int
    send_time: int  # µs since the Unix epoch
    payload: bytes  # one pgoutput message


@dataclass(frozen=True, slots=True)
class Keepalive:
    wal_end: int  # how far the walsender has read the WAL (for logical decoding)
    send_time: int  # µs since the Unix epoch
    reply_requested: bool


# -- pgoutput messages -------------------------------------------------------------


def decode_message(data: bytes, start: int = 0) -> Message:
    """The pgoutput message in ``data`` from offset ``start`` (to the end).

    Raises PgOutputError for an unknown message type, a value in binary format, or a
    message that is shorter or longer than its fields.
    """
    if start >= len(data):
        raise PgOutputError("empty pgoutput message")
    decoder = _DECODERS.get(data[start])
    if decoder is None:
        raise PgOutputError(f"unknown pgoutput message type {chr(data[start])!r}",
                            hint="capture asks for protocol version 1; is the slot's plugin pgoutput?")
    try:
        message, end = decoder(data, start + 1)
    except (struct.error, IndexError, ValueError) as exc:  # ValueError: no NUL, bad UTF-8
        raise PgOutputError(f"malformed pgoutput {chr(data[start])!r} message: {exc}") from exc
    if end != len(data):
        raise PgOutputError(f"pgoutput {chr(data[start])!r} message has {len(data) - end} trailing bytes")
    return message


def _begin(data: bytes, pos: int) -> tuple[Begin, int]:
    final_lsn, ts, xid = _BEGIN.unpack_from(data, pos)
    return Begin(final_lsn, ts + PG_EPOCH_US, xid), pos + _BEGIN.size


def _commit(data: bytes, pos: int) -> tuple[Commit, int]:
    flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(data, pos)
    return Commit(flags, commit_lsn, end_lsn, ts + PG_EPOCH_US), pos + _COMMIT.size


def _origin(data: bytes, pos: int) -> tuple[Origin, int]:
    (lsn,) = struct.unpack_from(">Q", data, pos)
    name, pos = _string(data, pos + 8)
    return Origin(lsn, name), pos


def _relation(data: bytes, pos: int) -> tuple[Relation, int]:
    (relid,) = _UINT32.unpack_from(data, pos)
    namespace, pos = _string(data, pos + 4)
    name, pos = _string(data, pos)
    identity = chr(data[pos])
    (count,) = _INT16.unpack_from(data, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = data[pos]
        column, pos = _string(data, pos + 1)
        type_oid, modifier = _RELATION_COLUMN_TAIL.unpack_from(data, pos)
        pos += _RELATION_COLUMN_TAIL.size
        columns.append(RelationColumn(flags, column, type_oid, modifier))
    return Relation(relid, namespace, name, identity, tuple(columns)), pos


def _type(data: bytes, pos: int) -> tuple[DataType, int]:
    (oid,) = _UINT32.unpack_from(data, pos)
    namespace, pos = _string(data, pos + 4)
    name, pos = _string(data, pos)
    return DataType(oid, namespace, name), pos


def _insert(data: bytes, pos: int) -> tuple[Insert, int]:
    (relid,) = _UINT32.unpack_from(data, pos)
    _expect(data, pos + 4, b"N", "Insert")
    new, pos = decode_tuple(data, pos + 5)
    return Insert(relid, new), pos


def _update(data: bytes, pos: int) -> tuple[Update, int]:
    (relid,) = _UINT32.unpack_from(data, pos)
    pos += 4
    old = old_kind = None
    if data[pos] in b"KO":
        old_kind = chr(data[pos])
        old, pos = decode_tuple(data, pos + 1)
    _expect(data, pos, b"N", "Update")
    new, pos = decode_tuple(data, pos + 1)
    return Update(relid, old, old_kind, new), pos


def _delete(data: bytes, pos: int) -> tuple[Delete, int]:
    (relid,) = _UINT32.unpack_from(data, pos)
    kind = data[pos + 4]
    if kind not in b"KO":
        raise PgOutputError(f"pgoutput Delete without old key or row (submessage {chr(kind)!r})")
    old, pos = decode_tuple(data, pos + 5)
    return Delete(relid, old, chr(kind)), pos


def _truncate(data: bytes, pos: int) -> tuple[Truncate, int]:
    (count,) = _INT32.unpack_from(data, pos)
    options = data[pos + 4]
    pos += 5
    relids = struct.unpack_from(f">{count}I", data, pos)
    return Truncate(options, tuple(relids)), pos + 4 * count


def _logical_message(data: bytes, pos: int) -> tuple[LogicalMessage, int]:
    flags = data[pos]
    (lsn,) = struct.unpack_from(">Q", data, pos + 1)
    prefix, pos = _string(data, pos + 9)
    (length,) = _INT32.unpack_from(data, pos)
    content = bytes(data[pos + 4:pos + 4 + length])
    if len(content) != length:
        raise PgOutputError(f"pgoutput Message content is cut short ({len(content)} of {length} bytes)")
    return LogicalMessage(bool(flags & 1), lsn, prefix, content), pos + 4 + length


_DECODERS = {
    ord("B"): _begin, ord("C"): _commit, ord("O"): _origin, ord("R"): _relation, ord("Y"): _type,
    ord("I"): _insert, ord("U"): _update, ord("D"): _delete, ord("T"): _truncate,
    ord("M"): _logical_message,
}


def decode_tuple(data: bytes, pos: int) -> tuple[list[RawValue], int]:
    """TupleData at ``pos``: the column values as raw bytes and the offset after them.

    Raises PgOutputError for a binary-format value, an unknown column kind or a value
    cut short.
    """
    (count,) = _INT16.unpack_from(data, pos)
    return decode_row(data, pos, [_as_read] * count)


def _as_read(value: bytes) -> bytes:
    return value


# -- the hot path: row changes read and converted in one pass ------------------------
# A capture of small transactions spends most of its time here: ``decode_message`` builds
# a message object and a list of raw values for each change, which the assembler then
# converts into a second list.  ``decode_change`` reads the same bytes with the same
# checks but converts each value as it reads it, and builds no message object.

_INSERT, _UPDATE, _DELETE, _NEW, _KEY, _OLD = 0x49, 0x55, 0x44, 0x4E, 0x4B, 0x4F


def change_relid(data: bytes, start: int) -> int:
    """The relation of the Insert, Update or Delete message at ``start`` (its type byte).
    Raises struct.error if the message is too short."""
    return _UINT32.unpack_from(data, start + 1)[0]


def decode_change(data: bytes, start: int, converters: list) -> tuple[str | None, list | None, list | None]:
    """The Insert, Update or Delete message at ``start`` as (old kind, old values, new
    values), each text value passed through its column's converter as it is read; None
    and ``UNCHANGED`` stay as they are.  The same message as ``decode_message`` reads.

    Raises PgOutputError for a malformed message, ValueError for a tuple whose column
    count is not ``len(converters)``, whatever a converter raises for a bad value, and
    struct.error or IndexError for a message cut short.
    """
    kind = data[start]
    pos = start + 5
    old_kind = old = new = None
    if kind != _INSERT and data[pos] in (_KEY, _OLD):
        old_kind = chr(data[pos])
        old, pos = decode_row(data, pos + 1, converters)
    elif kind == _DELETE:
        raise PgOutputError(f"pgoutput Delete without old key or row (submessage {chr(data[pos])!r})")
    if kind != _DELETE:
        if data[pos] != _NEW:
            what = "Insert" if kind == _INSERT else "Update"
            raise PgOutputError(f"pgoutput {what} expected submessage b'N', found {bytes(data[pos:pos + 1])!r}")
        new, pos = decode_row(data, pos + 1, converters)
    if pos != len(data):
        raise PgOutputError(f"pgoutput {chr(kind)!r} message has {len(data) - pos} trailing bytes")
    return old_kind, old, new


def decode_row(data: bytes, pos: int, converters: list) -> tuple[list, int]:
    """TupleData at ``pos`` converted as it is read (see ``decode_change``); the offset after it."""
    (count,) = _INT16.unpack_from(data, pos)
    if count != len(converters):
        raise ValueError(f"{count} values for {len(converters)} columns")
    pos += 2
    size = len(data)
    values: list = []
    append = values.append
    unpack = _INT32.unpack_from
    for convert in converters:
        kind = data[pos]
        if kind == 0x74:  # 't': text
            (length,) = unpack(data, pos + 1)
            pos += 5
            end = pos + length
            if end > size:
                raise PgOutputError(f"pgoutput column value is cut short ({size - pos} of {length} bytes)")
            append(convert(data[pos:end]))
            pos = end
        elif kind == 0x6E:  # 'n': null
            append(None)
            pos += 1
        elif kind == 0x75:  # 'u': unchanged TOASTed value, not sent
            append(UNCHANGED)
            pos += 1
        elif kind == 0x62:  # 'b'
            raise PgOutputError("pgoutput sent a column in binary format, but capture reads text",
                                hint="do not set the 'binary' option on the slot's stream")
        else:
            raise PgOutputError(f"unknown pgoutput column kind {chr(kind)!r}")
    return values, pos


def decode_begin(data: bytes, start: int) -> tuple[int, int, int]:
    """The Begin message at ``start`` as (final LSN, commit time, xid), without a Begin object.
    Raises PgOutputError for a message of the wrong length, struct.error if too short."""
    final_lsn, ts, xid = _BEGIN.unpack_from(data, start + 1)
    if start + 1 + _BEGIN.size != len(data):
        raise PgOutputError(f"pgoutput 'B' message has {len(data) - start - 1 - _BEGIN.size} trailing bytes")
    return final_lsn, ts + PG_EPOCH_US, xid


def decode_commit(data: bytes, start: int) -> tuple[int, int]:
    """The Commit message at ``start`` as (end LSN, commit time), without a Commit object.
    Raises PgOutputError for a message of the wrong length, struct.error if too short."""
    _, _, end_lsn, ts = _COMMIT.unpack_from(data, start + 1)
    if start + 1 + _COMMIT.size != len(data):
        raise PgOutputError(f"pgoutput 'C' message has {len(data) - start - 1 - _COMMIT.size} trailing bytes")
    return end_lsn, ts + PG_EPOCH_US


def _string(data: bytes, pos: int) -> tuple[str, int]:
    """A NUL-terminated UTF-8 string at ``pos`` and the offset after its NUL."""
    end = data.index(b"\x00", pos)
    return bytes(data[pos:end]).decode("utf-8"), end + 1


def _expect(data: bytes, pos: int, marker: bytes, what: str) -> None:
    if data[pos:pos + 1] != marker:
        raise PgOutputError(f"pgoutput {what} expected submessage {marker!r}, found {bytes(data[pos:pos + 1])!r}")


# -- replication stream framing ----------------------------------------------------


def decode_copy_message(data: bytes) -> XLogData | Keepalive:
    """One CopyData message of a logical replication stream.

    Raises PgOutputError for anything but XLogData ('w') and a primary keepalive ('k').
    """
    if not data:
        raise PgOutputError("empty replication stream message")
    try:
        if data[0] == 0x77:  # 'w'
            start, end, sent = _XLOGDATA.unpack_from(data, 1)
            return XLogData(start, end, sent + PG_EPOCH_US, bytes(data[XLOGDATA_HEADER:]))
        if data[0] == 0x6B:  # 'k'
            end, sent, reply = _KEEPALIVE.unpack_from(data, 1)
            if len(data) != 1 + _KEEPALIVE.size:
                raise PgOutputError(f"keepalive message of {len(data)} bytes")
            return Keepalive(end, sent + PG_EPOCH_US, bool(reply))
    except struct.error as exc:
        raise PgOutputError(f"malformed replication stream message {chr(data[0])!r}: {exc}") from exc
    raise PgOutputError(f"unknown replication stream message {chr(data[0])!r}")


def standby_status_update(write_lsn: int, flush_lsn: int, apply_lsn: int, now_us: int,
                          reply_requested: bool = False) -> bytes:
    """Our 'r' message: WAL received up to ``write_lsn``, safe to forget up to ``flush_lsn``.

    For a logical slot only ``flush_lsn`` matters: it becomes the slot's
    confirmed_flush_lsn.  ``now_us`` is µs since the Unix epoch.
    """
    return _STATUS_UPDATE.pack(b"r", write_lsn, flush_lsn, apply_lsn, now_us - PG_EPOCH_US,
                               1 if reply_requested else 0)


# -- LSNs ----------------------------------------------------------------------------


def lsn_from_text(text: str) -> int:
    """'16/B374D848' -> 0x16B374D848.  Raises PgOutputError for anything else."""
    high, slash, low = text.partition("/")
    try:
        if not slash:
            raise ValueError(text)
        value = (int(high, 16) << 32) | int(low, 16)
    except ValueError as exc:
        raise PgOutputError(f"malformed LSN {text!r}") from exc
    if int(high, 16) >= 1 << 32 or int(low, 16) >= 1 << 32:
        raise PgOutputError(f"LSN {text!r} out of range")
    return value


def lsn_to_text(lsn: int) -> str:
    """0x16B374D848 -> '16/B374D848', as PostgreSQL writes LSNs."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"

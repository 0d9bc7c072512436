"""The codec's specialised reader: current-schema message bodies -> ``ChangeBatch``.

The inverse of ``codec_write``, byte for byte what fastavro reads (the unit tests check
it), built for decoding speed: decoding is the apply bottleneck.  ``read_batch`` raises
``Malformed``, IndexError, struct.error or UnicodeDecodeError for a bad body;
``funnel.codec`` turns them into a CodecError.
"""
from __future__ import annotations

from typing import Any

from funnel.codec_layout import (BOOLEAN, BYTES, DOUBLE, KINDS, LONG, NULL, OPS, STRING, new_tuple,
                                 unpack_double)
from funnel.ddl import Ddl
from funnel.errors import CodecError
from funnel.events import ChangeBatch, Op, Row, TableChanges, Value


class Malformed(Exception):
    """Internal: the body breaks the Avro encoding; decode() turns it into a CodecError."""


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint and the position after it. Raises Malformed past 64 bits."""
    b = buf[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
    if n >> 64:
        raise Malformed(f"varint ending at byte {pos} is longer than 64 bits")
    return (n >> 1) ^ -(n & 1), pos


def _read_length(buf: bytes, pos: int) -> tuple[int, int]:
    """A string or bytes length. Raises Malformed if negative."""
    n, pos = _read_long(buf, pos)
    if n < 0:
        raise Malformed(f"negative length {n} at byte {pos}")
    return n, pos


def _read_count(buf: bytes, pos: int) -> tuple[int, int]:
    """The item count of an array block (a negative count is followed by a byte size)."""
    n, pos = _read_long(buf, pos)
    if n < 0:
        n = -n
        _, pos = _read_long(buf, pos)
    return n, pos


def _read_str(buf: bytes, pos: int) -> tuple[str, int]:
    n, pos = _read_length(buf, pos)
    end = pos + n
    return buf[pos:end].decode(), end


def _read_strings(buf: bytes, pos: int) -> tuple[list[str], int]:
    out: list[str] = []
    while True:
        count, pos = _read_count(buf, pos)
        if not count:
            return out, pos
        for _ in range(count):
            text, pos = _read_str(buf, pos)
            out.append(text)


def _read_enum(buf: bytes, pos: int, symbols: tuple[Any, ...], what: str) -> tuple[Any, int]:
    index, pos = _read_long(buf, pos)
    if not 0 <= index < len(symbols):
        raise Malformed(f"{what} index {index} is not in the schema")
    return symbols[index], pos


# Decoded group layouts (table, op, columns, key), by the table name's bytes: for each,
# the bytes that follow the name (op, columns, key) and what they decode to.  OLTP
# messages are many small groups of the same few layouts, and reading their column
# names again for every group was the largest cost of decoding them.  A hit is an exact
# byte comparison, so it decodes to what reading would; the lists it returns are shared
# by every group with that layout (the sinks find their plan by comparing them, which
# identity makes cheap) and must not be mutated.
_LAYOUTS: dict[bytes, list[tuple[bytes, str, Op, list[str], list[str]]]] = {}
_MAX_TABLES = 4096  # beyond this many names the cache starts again (bounded memory)
_MAX_PER_TABLE = 8  # layouts kept per name (a table whose columns keep changing)


def read_batch(buf: bytes, pos: int) -> tuple[ChangeBatch, int]:
    """A v2 body from ``pos``: the batch and the position after it."""
    source, pos = _read_str(buf, pos)
    txid, pos = _read_str(buf, pos)
    commit_ts, pos = _read_long(buf, pos)
    position, pos = _read_long(buf, pos)
    seq, pos = _read_long(buf, pos)
    tx_rows, pos = _read_long(buf, pos)
    kind, pos = _read_enum(buf, pos, KINDS, "kind")
    groups = []
    layouts = _LAYOUTS
    startswith = buf.startswith
    while True:
        count, pos = _read_count(buf, pos)
        if not count:
            break
        for _ in range(count):
            n = buf[pos]
            if n & 0x81:
                n, start = _read_length(buf, pos)
            else:
                n >>= 1
                start = pos + 1
            end = start + n
            for tail, table, op, columns, key in layouts.get(buf[start:end], ()):
                if startswith(tail, end):
                    pos = end + len(tail)
                    break
            else:
                table, op, columns, key, pos = _read_layout(buf, start, end)
            rows, pos = _read_rows(buf, pos)
            if buf[pos] == 0:  # no ddl: every group but a DDL group
                pos += 1
                ddl = None
            else:
                ddl, pos = _read_ddl(buf, pos)
            groups.append(TableChanges(table, op, columns, key, rows, ddl))
    return ChangeBatch(source, txid, commit_ts, position, seq, tx_rows, kind, groups), pos


def _read_layout(buf: bytes, start: int, end: int) -> tuple[str, Op, list[str], list[str], int]:
    """The layout of a group whose name is ``buf[start:end]``, read and remembered."""
    table = buf[start:end].decode()
    op, pos = _read_enum(buf, end, OPS, "op")
    columns, pos = _read_strings(buf, pos)
    key, pos = _read_strings(buf, pos)
    # Only now, after every read of the layout succeeded: a bad body remembers nothing.
    name = buf[start:end]
    known = _LAYOUTS.get(name)
    if known is None:
        if len(_LAYOUTS) >= _MAX_TABLES:
            _LAYOUTS.clear()
        known = _LAYOUTS[name] = []
    elif len(known) >= _MAX_PER_TABLE:
        del known[0]
    known.append((buf[end:pos], table, op, columns, key))
    return table, op, columns, key, pos


def _read_ddl(buf: bytes, pos: int) -> tuple[Ddl | None, int]:
    """The nullable ``ddl`` text of a group. Raises Malformed for a bad union branch."""
    branch = buf[pos]
    if branch == 0:
        return None, pos + 1
    if branch != 2:
        raise Malformed(f"ddl branch {branch} at byte {pos}")
    text, pos = _read_str(buf, pos + 1)
    try:
        return Ddl.from_json(text), pos
    except CodecError as exc:
        raise Malformed(str(exc)) from exc


def _read_rows(buf: bytes, pos: int) -> tuple[list[Row], int]:
    rows: list[Row] = []
    append = rows.append
    while True:
        count = buf[pos]
        if count & 0x81:  # several bytes, or negative: not the common small block
            count, pos = _read_count(buf, pos)
        else:
            count >>= 1
            pos += 1
        if not count:
            return rows, pos
        for _ in range(count):
            branch = buf[pos]
            if branch == 0:
                before = None
                pos += 1
            elif branch == 2:
                before, pos = _read_image(buf, pos + 1)
            else:
                raise Malformed(f"row image branch {branch} at byte {pos}")
            branch = buf[pos]
            if branch == 0:
                after = None
                pos += 1
            elif branch == 2:
                after, pos = _read_image(buf, pos + 1)
            else:
                raise Malformed(f"row image branch {branch} at byte {pos}")
            append(new_tuple(Row, (before, after)))


def _read_image(buf: bytes, pos: int) -> tuple[list[Value], int]:
    """One row image (array of value unions). The hot loop: keep it inline."""
    values: list[Value] = []
    append = values.append
    unpack = unpack_double  # a local: the loop below is the hottest of decoding
    while True:
        count = buf[pos]
        if count & 0x81:  # several bytes, or negative: not the common small block
            count, pos = _read_count(buf, pos)
        else:
            count >>= 1
            pos += 1
        if not count:
            return values, pos
        for _ in range(count):
            branch = buf[pos]
            pos += 1
            if branch == LONG:
                b = buf[pos]
                pos += 1
                if b < 0x80:
                    append((b >> 1) ^ -(b & 1))
                    continue
                n = buf[pos]
                if n < 0x80:  # two bytes
                    pos += 1
                    n = (n << 7) | (b & 0x7F)
                    append((n >> 1) ^ -(n & 1))
                    continue
                c = buf[pos + 1]
                if c < 0x80:  # three bytes: keys and amounts below a million
                    pos += 2
                    n = (c << 14) | ((n & 0x7F) << 7) | (b & 0x7F)
                    append((n >> 1) ^ -(n & 1))
                    continue
                n = b & 0x7F
                shift = 7
                while b & 0x80:
                    b = buf[pos]
                    pos += 1
                    n |= (b & 0x7F) << shift
                    shift += 7
                if n >> 64:
                    raise Malformed(f"varint ending at byte {pos} is longer than 64 bits")
                append((n >> 1) ^ -(n & 1))
            elif branch == STRING:
                n = buf[pos]
                if not n & 0x81:
                    n >>= 1
                    pos += 1
                elif n & 1 or buf[pos + 1] & 0x80:  # negative, or 3 bytes and more
                    n, pos = _read_length(buf, pos)
                else:  # two bytes: text of 64 to 8191 bytes
                    n = ((buf[pos + 1] << 7) | (n & 0x7F)) >> 1
                    pos += 2
                end = pos + n
                append(buf[pos:end].decode())
                pos = end
            elif branch == NULL:
                append(None)
            elif branch == DOUBLE:
                append(unpack(buf, pos)[0])
                pos += 8
            elif branch == BOOLEAN:
                b = buf[pos]
                pos += 1
                if b > 1:
                    raise Malformed(f"boolean byte {b} at byte {pos - 1}")
                append(b == 1)
            elif branch == BYTES:
                n, pos = _read_length(buf, pos)
                end = pos + n
                append(buf[pos:end])
                pos = end
            else:
                raise Malformed(f"value branch {branch} at byte {pos - 1}")

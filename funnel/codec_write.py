"""The codec's specialised writer: ``ChangeBatch`` -> current-schema message body.

Byte for byte what fastavro writes for the current schema (the unit tests check it),
about 10x faster.  ``write_batch`` raises CodecError naming the table and column of a
value that cannot be encoded, or TypeError, ValueError, AttributeError or OverflowError
for a batch that is not one, which ``funnel.codec`` turns into a CodecError.
"""
from __future__ import annotations

from typing import Any

from funnel.codec_layout import (BOOLEAN, BYTES, DOUBLE, KIND_INDEX, LONG, LONG_MAX, LONG_MIN, NULL, OP_INDEX,
                                 STRING, pack_double)
from funnel.errors import CodecError
from funnel.events import ChangeBatch, Op, TableChanges, Value


_LONG_FIELDS = ("commit_ts", "position", "seq", "tx_rows")


class _BadValue(Exception):
    """Internal: a value the writer cannot encode; the message says why."""


def _write_long(out: bytearray, n: int) -> None:
    """Append ``n`` as a zigzag varint. Raises OverflowError outside signed 64 bits."""
    if not LONG_MIN <= n <= LONG_MAX:
        raise OverflowError(f"{n}, which does not fit in a signed 64-bit long")
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _write_str(out: bytearray, text: str) -> None:
    data = text.encode()
    _write_long(out, len(data))
    out += data


def _write_strings(out: bytearray, texts: list[str]) -> None:
    if texts:
        _write_long(out, len(texts))
        for text in texts:
            _write_str(out, text)
    out.append(0)


def write_batch(out: bytearray, batch: ChangeBatch) -> None:
    """Append the v2 body of ``batch``. Raises CodecError for a bad value or enum."""
    source = _SOURCES.get(batch.source)
    if source is None:
        source = _encoded_source(batch.source)
    out += source
    _write_str(out, batch.txid)
    try:  # one message per small source transaction: the four longs without a loop
        _write_long(out, batch.commit_ts)
        _write_long(out, batch.position)
        _write_long(out, batch.seq)
        _write_long(out, batch.tx_rows)
    except (OverflowError, TypeError):
        _describe_bad_long(batch)
        raise
    kind = KIND_INDEX.get(batch.kind)
    if kind is None:
        raise CodecError(
            f"batch txid={batch.txid!r} has kind {batch.kind!r}, not a funnel.events.Kind"
        )
    out.append(kind << 1)
    if batch.changes:
        _write_long(out, len(batch.changes))
        for group in batch.changes:
            _write_group(out, group)
    out.append(0)


def _describe_bad_long(batch: ChangeBatch) -> None:
    """Raises CodecError naming the first of the long fields that cannot be written."""
    for name in _LONG_FIELDS:
        try:
            _write_long(bytearray(), getattr(batch, name))
        except (OverflowError, TypeError) as exc:
            raise CodecError(f"batch txid={batch.txid!r} has {name} {exc}") from exc


# Encoded source names: a capture writes the same one into every message.
_SOURCES: dict[str, bytes] = {}


def _encoded_source(source: str) -> bytes:
    """Raises AttributeError for a source that is not text (encode turns it into a CodecError)."""
    out = bytearray()
    _write_str(out, source)
    if type(source) is str:
        if len(_SOURCES) >= _MAX_TABLES:
            _SOURCES.clear()
        _SOURCES[source] = bytes(out)
    return bytes(out)


# Encoded group heads (table, op, columns, key) by table: OLTP transactions are many
# small groups of the same few layouts, and encoding every column name again for each
# one was a large part of their cost.  Entries hold copies of the lists, so a caller
# that changes its lists later cannot change what a head means.
_HEADS: dict[str, list[tuple[Op, list[str], list[str], bytes]]] = {}
_MAX_TABLES = 4096  # beyond this many tables the cache starts again (bounded memory)
_MAX_PER_TABLE = 8  # heads kept per table (a table whose columns keep changing)


def _write_group(out: bytearray, group: TableChanges) -> None:
    table, op, columns, key = group.table, group.op, group.columns, group.key
    for known_op, known_columns, known_key, head in _HEADS.get(table, ()):
        if known_op is op and known_columns == columns and known_key == key:
            out += head
            break
    else:
        out += _new_head(table, op, columns, key)
    rows = group.rows
    if rows:
        width = len(group.columns)
        if len(rows) < 64:  # one byte, as _write_long would write it
            out.append(len(rows) << 1)
        else:
            _write_long(out, len(rows))
        try:
            for before, after in rows:
                if before is None:
                    out.append(0)
                else:
                    out.append(2)
                    _write_image(out, before, width)
                if after is None:
                    out.append(0)
                else:
                    out.append(2)
                    _write_image(out, after, width)
        except (_BadValue, UnicodeEncodeError) as exc:
            # Find the culprit only now, so the happy path carries no bookkeeping.
            raise CodecError(_describe_bad_rows(group)) from exc
    out.append(0)
    if group.ddl is None:
        out.append(0)
    else:
        out.append(2)
        _write_str(out, group.ddl.to_json())


def _new_head(table: str, op: Op, columns: list[str], key: list[str]) -> bytearray:
    """The encoded head of a group, remembered. Raises CodecError for an unknown op."""
    out = bytearray()
    _write_str(out, table)
    index = OP_INDEX.get(op)
    if index is None:
        raise CodecError(f"table {table!r} has op {op!r}, not a funnel.events.Op")
    out.append(index << 1)
    _write_strings(out, columns)
    _write_strings(out, key)
    if type(table) is str and type(columns) is list and type(key) is list:
        known = _HEADS.get(table)
        if known is None:
            if len(_HEADS) >= _MAX_TABLES:
                _HEADS.clear()
            known = _HEADS[table] = []
        elif len(known) >= _MAX_PER_TABLE:
            del known[0]
        known.append((op, list(columns), list(key), bytes(out)))
    return out


def _write_image(out: bytearray, values: list[Value], width: int) -> None:
    """Append one row image. The hot loop: keep it inline. Raises _BadValue."""
    append = out.append
    n = len(values)
    if n != width:
        raise _BadValue(f"{n} values for {width} columns")
    if n:
        if n < 64:
            append(n << 1)
        else:
            _write_long(out, n)
        for value in values:
            kind = type(value)
            if kind is str:
                data = value.encode()
                n = len(data)
                append(STRING)
                if n < 64:
                    append(n << 1)
                else:
                    _write_long(out, n)
                out += data
            elif kind is int:
                # LONG_MIN and LONG_MAX as literals: a constant is cheaper than a global here
                if not -0x8000000000000000 <= value <= 0x7FFFFFFFFFFFFFFF:
                    raise _BadValue(value)
                append(LONG)
                value = (value << 1) ^ (value >> 63)
                while value > 0x7F:
                    append((value & 0x7F) | 0x80)
                    value >>= 7
                append(value)
            elif value is None:
                append(NULL)
            elif kind is float:
                append(DOUBLE)
                out += pack_double(value)
            elif kind is bool:  # bool is tested by exact type, so True never becomes 1
                append(BOOLEAN)
                append(value)
            elif kind is bytes:
                append(BYTES)
                _write_long(out, len(value))
                out += value
            else:
                _write_value(out, _normalise(value))
    append(0)


def _write_value(out: bytearray, value: Value) -> None:
    """Append one value of an exact type (the slow path for subclasses)."""
    kind = type(value)
    if value is None:
        out.append(NULL)
    elif kind is bool:
        out += bytes((BOOLEAN, value))
    elif kind is int:
        out.append(LONG)
        _write_long(out, value)
    elif kind is float:
        out.append(DOUBLE)
        out += pack_double(value)
    elif kind is str:
        out.append(STRING)
        _write_str(out, value)
    else:
        out.append(BYTES)
        _write_long(out, len(value))
        out += value


def _normalise(value: Any) -> Value:
    """``value`` as an exact column type (IntEnum -> int, bytearray -> bytes...).

    Raises _BadValue saying why a value cannot travel.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        value = int(value)
        if not LONG_MIN <= value <= LONG_MAX:
            raise _BadValue(
                f"integer {value} does not fit in a signed 64-bit long; send it as text"
            )
        return value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        value = str.__str__(value)
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise _BadValue(f"text is not encodable as UTF-8 ({exc.reason})") from exc
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise _BadValue(
        f"{type(value).__name__} is not a column value type "
        "(None, bool, int, float, str, bytes); send it as text"
    )


def _describe_bad_rows(group: TableChanges) -> str:
    """Name the first value of ``group`` that cannot be encoded, with table and column."""
    width = len(group.columns)
    for number, row in enumerate(group.rows):
        for image_name, image in (("before", row[0]), ("after", row[1])):
            if image is None:
                continue
            where = f"{Op(group.op).value} row {number}, {image_name} image"
            if len(image) != width:
                return f"{group.table} ({where}): {len(image)} values for {width} columns"
            for column, value in zip(group.columns, image):
                try:
                    _normalise(value)
                except _BadValue as exc:
                    return f"cannot encode {group.table}.{column} ({where}): {exc}"
    return f"cannot encode a row of {group.table}"  # not reached: the writer found one

"""The Avro codec of the funnel: ``ChangeBatch`` <-> message bytes.

Framing is Avro single-object encoding: ``C3 01``, the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then the Avro
binary body.  So every message names the schema that wrote it, and any Avro reader
holding ``schemas/`` can decode it.

Two paths, because decoding is the apply bottleneck (docs/ARCHITECTURE.md, Performance notes):

- The current schema is written and read by a coder specialised to its layout
  (``_write_batch`` / ``_read_batch``).  fastavro is generic: it picks every union
  branch by trying validators in turn and reads every value through a type dispatch,
  which for this layout measured about 55k rows/s encoding and 150k rows/s decoding;
  the specialised coder measured about 10x and 2x that and builds the dataclasses
  directly (``bench/codec.py``).  The unit tests check it byte for byte against fastavro.
  It is pinned to one layout by fingerprint (``_FAST_LAYOUT``): a new schema version
  must come with a new coder, and the codec refuses to start until it does.
- Messages written with an older schema version are read by fastavro, resolving the
  writer schema against the current one (see ``_decode_resolved`` for the one place
  where we do not take fastavro's resolution as it is).

fastavro parses and validates every schema and computes the fingerprints.
``commit_ts`` is declared ``timestamp-micros`` for other readers; we strip logical
types before parsing so it stays an int of microseconds (the canonical form ignores
logical types, so the fingerprint is the same).  A message from a newer writer has a
fingerprint this reader does not know, and decoding stops with a CodecError instead of
guessing; the enum defaults serve other Avro readers, and older writers whose symbols
a later schema dropped.
"""
from __future__ import annotations

import functools
import io
import struct
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

import schemas
from funnel.ddl import Ddl
from funnel.errors import CodecError
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges, Value

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
SCHEMA_NAME = "change_batch"

# The fingerprint of the layout _write_batch and _read_batch implement (change_batch.v2:
# v1 plus op DDL and the nullable ``ddl`` text after each group's rows).
_FAST_LAYOUT = bytes.fromhex("24affd6e70940259")
# Enum symbols in schema order; pinned by _FAST_LAYOUT like the rest of the layout.
_KINDS = (Kind.CHANGES, Kind.SNAPSHOT, Kind.SNAPSHOT_END, Kind.HEARTBEAT)
_OPS = (Op.SNAPSHOT, Op.INSERT, Op.UPDATE, Op.DELETE, Op.TRUNCATE, Op.DDL)
_KIND_INDEX = {kind: index for index, kind in enumerate(_KINDS)}
_OP_INDEX = {op: index for index, op in enumerate(_OPS)}

_LONG_MIN = -(1 << 63)
_LONG_MAX = (1 << 63) - 1
_pack_double = struct.Struct("<d").pack
_unpack_double = struct.Struct("<d").unpack_from
_new_tuple = tuple.__new__

# Union branch indexes of a column value, zigzag-encoded as the single byte Avro writes:
# null 0, boolean 1, long 2, double 3, string 4, bytes 5.
_NULL, _BOOLEAN, _LONG, _DOUBLE, _STRING, _BYTES = 0, 2, 4, 6, 8, 10


class EventCodec:
    """Encodes and decodes funnel messages; knows every schema version in ``schemas/``.

    ``extra_writer_schemas`` registers more writer schemas (tests, or a schema learnt
    from elsewhere); their messages are resolved against the current schema.
    """

    def __init__(self, extra_writer_schemas: Iterable[Mapping[str, Any]] = ()) -> None:
        shipped = _shipped_schemas()
        self._fingerprint = shipped.fingerprint
        self._skeleton = shipped.skeleton
        self._header = MAGIC + self._fingerprint
        self._writers = dict(shipped.writers)
        for schema in extra_writer_schemas:
            fp, parsed = _parse(schema)
            self._writers.setdefault(fp, parsed)

    @property
    def fingerprint(self) -> bytes:
        """The 8-byte fingerprint of the schema this codec writes."""
        return self._fingerprint

    @property
    def writer_schema(self) -> dict[str, Any]:
        """The current schema as fastavro parsed it (logical types stripped)."""
        return _shipped_schemas().current

    @property
    def known_fingerprints(self) -> frozenset[bytes]:
        """Fingerprints of every writer schema this codec can read."""
        return frozenset(self._writers)

    def encode(self, batch: ChangeBatch) -> bytes:
        """The message bytes of ``batch``, written with the current schema.

        Raises CodecError naming the table and column of a value that cannot be sent
        (an int outside signed 64 bits, an unsupported type), or the field at fault.
        """
        out = bytearray(self._header)
        try:
            _write_batch(out, batch)
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise CodecError(
                f"cannot encode batch txid={getattr(batch, 'txid', '?')!r}: {exc}"
            ) from exc
        return bytes(out)

    def decode(self, data: bytes) -> ChangeBatch:
        """The batch in message ``data``.

        Raises CodecError for a missing or wrong magic, a writer schema this codec does
        not know (written by a newer timefunnel: upgrade the reader), or a truncated or
        malformed body.
        """
        if type(data) is not bytes:
            data = bytes(data)  # slices must be bytes, not memoryview or bytearray
        fp = _read_header(data)
        if fp == self._fingerprint:
            return _decode_fast(data, fp)
        writer = self._writers.get(fp)
        if writer is None:
            known = ", ".join(sorted(f.hex() for f in self._writers))
            raise CodecError(
                f"unknown writer schema fingerprint {fp.hex()} (this reader knows {known})",
                hint="the message was written by a newer timefunnel: upgrade the reader",
            )
        return _decode_resolved(data, fp, writer, self._skeleton)


# --- schemas -------------------------------------------------------------------------


def _strip_logical_types(schema: Any) -> Any:
    """A copy of ``schema`` without ``logicalType`` attributes (see module docstring)."""
    if isinstance(schema, Mapping):
        return {k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical_types(item) for item in schema]
    return schema


def _parse(schema: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """``(fingerprint, parsed schema)``. Raises CodecError if fastavro rejects the schema."""
    try:
        parsed = parse_schema(_strip_logical_types(schema))
        canonical = to_parsing_canonical_form(parsed)
    except Exception as exc:  # fastavro raises several types for a bad schema
        raise CodecError(f"invalid Avro schema {schema.get('name')!r}: {exc}") from exc
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")), parsed


class _Shipped(NamedTuple):
    fingerprint: bytes  # of the current schema
    current: dict[str, Any]  # the current schema, parsed
    skeleton: dict[str, Any]  # the current schema without row images (_decode_resolved)
    writers: dict[bytes, dict[str, Any]]  # every shipped version by fingerprint


@functools.cache
def _shipped_schemas() -> _Shipped:
    """The schemas in ``schemas/``, parsed once.

    Raises RuntimeError if the newest schema is not the layout the fast coder implements:
    that is a bug to fix here, not an operator error.
    """
    versions = [schema for _, schema in schemas.versions(SCHEMA_NAME)]
    parsed = [_parse(schema) for schema in versions]
    fp, current = parsed[-1]
    if fp != _FAST_LAYOUT:
        raise RuntimeError(
            f"the newest {SCHEMA_NAME} schema has fingerprint {fp.hex()}, but "
            f"funnel/codec.py implements {_FAST_LAYOUT.hex()}: update _write_batch and "
            "_read_batch for the new layout"
        )
    _, skeleton = _parse(_without_row_images(versions[-1]))
    return _Shipped(fp, current, skeleton, dict(parsed))


def _without_row_images(schema: Any) -> Any:
    """A copy of ``schema`` whose ``Row`` record has no fields, so a reader skips the images."""
    if isinstance(schema, Mapping):
        if schema.get("type") == "record" and schema.get("name") == "Row":
            return {**schema, "fields": []}
        return {k: _without_row_images(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_without_row_images(item) for item in schema]
    return schema


# --- decoding ------------------------------------------------------------------------


class _Malformed(Exception):
    """Internal: the body breaks the Avro encoding; decode() turns it into a CodecError."""


def _read_header(data: bytes) -> bytes:
    """The writer fingerprint. Raises CodecError if the single-object header is missing."""
    if len(data) < HEADER_SIZE:
        raise CodecError(
            f"message of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte Avro "
            "single-object header"
        )
    if data[:2] != MAGIC:
        raise CodecError(
            f"not a timefunnel event: expected Avro single-object magic c3 01, "
            f"got {data[:2].hex(' ')}"
        )
    return data[2:HEADER_SIZE]


def _decode_fast(data: bytes, fp: bytes) -> ChangeBatch:
    """Decode a current-schema message. Raises CodecError if the body is malformed."""
    try:
        batch, pos = _read_batch(data, HEADER_SIZE)
    except (IndexError, struct.error) as exc:
        raise _body_error(data, fp, "body is truncated") from exc
    except UnicodeDecodeError as exc:
        raise _body_error(data, fp, f"text is not valid UTF-8 ({exc.reason})") from exc
    except _Malformed as exc:
        raise _body_error(data, fp, str(exc)) from exc
    if pos != len(data):
        what = "body is truncated" if pos > len(data) else f"{len(data) - pos} trailing bytes"
        raise _body_error(data, fp, what)
    return batch


def _decode_resolved(
    data: bytes, fp: bytes, writer: dict[str, Any], skeleton: dict[str, Any]
) -> ChangeBatch:
    """Decode an older-schema message with fastavro. Raises CodecError if malformed.

    fastavro resolves a union value to the first reader branch it can promote it to,
    not to the exact one, so an older writer's ``bytes`` value would come back as
    ``str`` (``string`` precedes ``bytes`` in our value union) or fail as bad UTF-8.
    So the resolved read uses a reader schema without row images (``skeleton``: fastavro
    skips them) and gives the structure, defaults and enum defaults; a plain read with
    the writer schema gives the images, every value in its own type, which we check.
    Both reads see the same bytes, so their arrays line up.
    """
    exact = _fastavro_read(data, fp, writer, None)
    resolved = _fastavro_read(data, fp, writer, skeleton)
    for group, exact_group in zip(resolved["changes"], exact.get("changes", ())):
        group["rows"] = [_exact_row(data, fp, row) for row in exact_group["rows"]]
    return _batch_from_record(resolved)


_VALUE_TYPES = frozenset({type(None), bool, int, float, str, bytes})


def _exact_row(data: bytes, fp: bytes, row: dict[str, Any]) -> dict[str, Any]:
    """A row of an older writer, checked. Raises CodecError for a missing image or bad value."""
    images = {}
    for name in ("before", "after"):
        if name not in row:
            raise _body_error(data, fp, f"the writer schema's Row has no {name!r} field")
        image = row[name]
        if image is not None:
            if type(image) is not list:
                raise _body_error(data, fp, f"the writer schema's Row {name!r} is not an array")
            for value in image:
                if type(value) not in _VALUE_TYPES:
                    raise _body_error(
                        data, fp, f"a {type(value).__name__} value is not a column value"
                    )
        images[name] = image
    return images


def _fastavro_read(
    data: bytes, fp: bytes, writer: dict[str, Any], reader: dict[str, Any] | None
) -> dict[str, Any]:
    """The body of ``data`` as fastavro's dicts. Raises CodecError if it cannot be read."""
    fo = io.BytesIO(data)
    fo.seek(HEADER_SIZE)
    try:
        record = fastavro.schemaless_reader(fo, writer, reader)
    except Exception as exc:  # EOFError, ValueError, IndexError, SchemaResolutionError...
        raise _body_error(data, fp, f"{type(exc).__name__}: {exc}") from exc
    if fo.tell() != len(data):
        raise _body_error(data, fp, f"{len(data) - fo.tell()} trailing bytes")
    return record


def _body_error(data: bytes, fp: bytes, what: str) -> CodecError:
    what = " ".join(what.split())  # one line, even when fastavro's message is not
    return CodecError(f"cannot decode {len(data)}-byte message (schema {fp.hex()}): {what}")



def record_of(batch: ChangeBatch) -> dict[str, Any]:
    """The batch as the dicts fastavro writes and reads (the inverse of ``_batch_from_record``):
    for writing with fastavro directly, as the unit tests and ``bench/codec.py`` do."""
    return {
        "source": batch.source,
        "txid": batch.txid,
        "commit_ts": batch.commit_ts,
        "position": batch.position,
        "seq": batch.seq,
        "tx_rows": batch.tx_rows,
        "kind": batch.kind.name,
        "changes": [
            {
                "table": g.table,
                "op": g.op.name,
                "columns": g.columns,
                "key": g.key,
                "rows": [{"before": r.before, "after": r.after} for r in g.rows],
            }
            for g in batch.changes
        ],
    }

def _batch_from_record(record: dict[str, Any]) -> ChangeBatch:
    """The batch in a record as fastavro returns it (dicts, enum symbols as str)."""
    groups = [
        TableChanges(
            group["table"],
            Op[group["op"]],
            group["columns"],
            group["key"],
            [_new_tuple(Row, row.values()) for row in group["rows"]],
            _ddl_from_text(group.get("ddl")),
        )
        for group in record["changes"]
    ]
    return ChangeBatch(
        record["source"],
        record["txid"],
        record["commit_ts"],
        record["position"],
        record["seq"],
        record["tx_rows"],
        Kind[record["kind"]],
        groups,
    )


def _ddl_from_text(text: str | None) -> Ddl | None:
    """Raises CodecError for text that is not a Ddl (funnel.ddl)."""
    return None if text is None else Ddl.from_json(text)


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint and the position after it. Raises _Malformed past 64 bits."""
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
        raise _Malformed(f"varint ending at byte {pos} is longer than 64 bits")
    return (n >> 1) ^ -(n & 1), pos


def _read_length(buf: bytes, pos: int) -> tuple[int, int]:
    """A string or bytes length. Raises _Malformed if negative."""
    n, pos = _read_long(buf, pos)
    if n < 0:
        raise _Malformed(f"negative length {n} at byte {pos}")
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
        raise _Malformed(f"{what} index {index} is not in the schema")
    return symbols[index], pos


def _read_batch(buf: bytes, pos: int) -> tuple[ChangeBatch, int]:
    """A v2 body from ``pos``: the batch and the position after it."""
    source, pos = _read_str(buf, pos)
    txid, pos = _read_str(buf, pos)
    commit_ts, pos = _read_long(buf, pos)
    position, pos = _read_long(buf, pos)
    seq, pos = _read_long(buf, pos)
    tx_rows, pos = _read_long(buf, pos)
    kind, pos = _read_enum(buf, pos, _KINDS, "kind")
    groups = []
    while True:
        count, pos = _read_count(buf, pos)
        if not count:
            break
        for _ in range(count):
            table, pos = _read_str(buf, pos)
            op, pos = _read_enum(buf, pos, _OPS, "op")
            columns, pos = _read_strings(buf, pos)
            key, pos = _read_strings(buf, pos)
            rows, pos = _read_rows(buf, pos)
            ddl, pos = _read_ddl(buf, pos)
            groups.append(TableChanges(table, op, columns, key, rows, ddl))
    return ChangeBatch(source, txid, commit_ts, position, seq, tx_rows, kind, groups), pos


def _read_ddl(buf: bytes, pos: int) -> tuple[Ddl | None, int]:
    """The nullable ``ddl`` text of a group. Raises _Malformed for a bad union branch."""
    branch = buf[pos]
    if branch == 0:
        return None, pos + 1
    if branch != 2:
        raise _Malformed(f"ddl branch {branch} at byte {pos}")
    text, pos = _read_str(buf, pos + 1)
    try:
        return Ddl.from_json(text), pos
    except CodecError as exc:
        raise _Malformed(str(exc)) from exc


def _read_rows(buf: bytes, pos: int) -> tuple[list[Row], int]:
    rows: list[Row] = []
    append = rows.append
    while True:
        count, pos = _read_count(buf, pos)
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
                raise _Malformed(f"row image branch {branch} at byte {pos}")
            branch = buf[pos]
            if branch == 0:
                after = None
                pos += 1
            elif branch == 2:
                after, pos = _read_image(buf, pos + 1)
            else:
                raise _Malformed(f"row image branch {branch} at byte {pos}")
            append(_new_tuple(Row, (before, after)))


def _read_image(buf: bytes, pos: int) -> tuple[list[Value], int]:
    """One row image (array of value unions). The hot loop: keep it inline."""
    values: list[Value] = []
    append = values.append
    unpack_double = _unpack_double
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
            if branch == _STRING:
                n = buf[pos]
                if n & 0x81:
                    n, pos = _read_length(buf, pos)
                else:
                    n >>= 1
                    pos += 1
                end = pos + n
                append(buf[pos:end].decode())
                pos = end
            elif branch == _LONG:
                b = buf[pos]
                pos += 1
                if b < 0x80:
                    append((b >> 1) ^ -(b & 1))
                    continue
                n = b & 0x7F
                shift = 7
                while b & 0x80:
                    b = buf[pos]
                    pos += 1
                    n |= (b & 0x7F) << shift
                    shift += 7
                if n >> 64:
                    raise _Malformed(f"varint ending at byte {pos} is longer than 64 bits")
                append((n >> 1) ^ -(n & 1))
            elif branch == _NULL:
                append(None)
            elif branch == _DOUBLE:
                append(unpack_double(buf, pos)[0])
                pos += 8
            elif branch == _BOOLEAN:
                b = buf[pos]
                pos += 1
                if b > 1:
                    raise _Malformed(f"boolean byte {b} at byte {pos - 1}")
                append(b == 1)
            elif branch == _BYTES:
                n, pos = _read_length(buf, pos)
                end = pos + n
                append(buf[pos:end])
                pos = end
            else:
                raise _Malformed(f"value branch {branch} at byte {pos - 1}")


# --- encoding ------------------------------------------------------------------------


_LONG_FIELDS = ("commit_ts", "position", "seq", "tx_rows")


class _BadValue(Exception):
    """Internal: a value the writer cannot encode; the message says why."""


def _write_long(out: bytearray, n: int) -> None:
    """Append ``n`` as a zigzag varint. Raises OverflowError outside signed 64 bits."""
    if not _LONG_MIN <= n <= _LONG_MAX:
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


def _write_batch(out: bytearray, batch: ChangeBatch) -> None:
    """Append the v2 body of ``batch``. Raises CodecError for a bad value or enum."""
    _write_str(out, batch.source)
    _write_str(out, batch.txid)
    for name in _LONG_FIELDS:
        try:
            _write_long(out, getattr(batch, name))
        except (OverflowError, TypeError) as exc:
            raise CodecError(f"batch txid={batch.txid!r} has {name} {exc}") from exc
    kind = _KIND_INDEX.get(batch.kind)
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


def _write_group(out: bytearray, group: TableChanges) -> None:
    _write_str(out, group.table)
    op = _OP_INDEX.get(group.op)
    if op is None:
        raise CodecError(f"table {group.table!r} has op {group.op!r}, not a funnel.events.Op")
    out.append(op << 1)
    _write_strings(out, group.columns)
    _write_strings(out, group.key)
    rows = group.rows
    if rows:
        width = len(group.columns)
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
                append(_STRING)
                if n < 64:
                    append(n << 1)
                else:
                    _write_long(out, n)
                out += data
            elif kind is int:
                if not _LONG_MIN <= value <= _LONG_MAX:
                    raise _BadValue(value)
                append(_LONG)
                value = (value << 1) ^ (value >> 63)
                while value > 0x7F:
                    append((value & 0x7F) | 0x80)
                    value >>= 7
                append(value)
            elif value is None:
                append(_NULL)
            elif kind is float:
                append(_DOUBLE)
                out += _pack_double(value)
            elif kind is bool:  # bool is tested by exact type, so True never becomes 1
                append(_BOOLEAN)
                append(value)
            elif kind is bytes:
                append(_BYTES)
                _write_long(out, len(value))
                out += value
            else:
                _write_value(out, _normalise(value))
    append(0)


def _write_value(out: bytearray, value: Value) -> None:
    """Append one value of an exact type (the slow path for subclasses)."""
    kind = type(value)
    if value is None:
        out.append(_NULL)
    elif kind is bool:
        out += bytes((_BOOLEAN, value))
    elif kind is int:
        out.append(_LONG)
        _write_long(out, value)
    elif kind is float:
        out.append(_DOUBLE)
        out += _pack_double(value)
    elif kind is str:
        out.append(_STRING)
        _write_str(out, value)
    else:
        out.append(_BYTES)
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
        if not _LONG_MIN <= value <= _LONG_MAX:
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

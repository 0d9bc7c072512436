"""The Avro codec of the funnel: ``ChangeBatch`` <-> message bytes.

Framing is Avro single-object encoding: ``C3 01``, the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then the Avro
binary body.  So every message names the schema that wrote it, and any Avro reader
holding ``schemas/`` can decode it.

Two paths, because decoding is the apply bottleneck (docs/ARCHITECTURE.md, Performance notes):

- The current schema is written and read by a coder specialised to its layout
  (``funnel.codec_write`` / ``funnel.codec_read``).  fastavro is generic: it picks every
  union branch by trying validators in turn and reads every value through a type
  dispatch, which for this layout measured about 55k rows/s encoding and 150k rows/s
  decoding; the specialised coder measured about 10x and 2x that and builds the
  dataclasses directly (``bench/codec.py``).  Both remember the group layouts they met
  (small transactions repeat the same few), so a decoded group's ``columns`` and ``key``
  lists are shared with every other group of that layout: read them, never change them.  The unit tests check it byte for byte
  against fastavro.  It is pinned to one layout by fingerprint (``funnel.codec_layout``):
  a new schema version must come with a new coder, and the codec refuses to start until
  it does.
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
from funnel.codec_layout import FAST_LAYOUT, new_tuple
from funnel.codec_read import Malformed, read_batch
from funnel.codec_write import write_batch
from funnel.ddl import Ddl
from funnel.errors import CodecError
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
SCHEMA_NAME = "change_batch"


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
            write_batch(out, batch)
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
    if fp != FAST_LAYOUT:
        raise RuntimeError(
            f"the newest {SCHEMA_NAME} schema has fingerprint {fp.hex()}, but "
            f"funnel/codec_read.py and codec_write.py implement {FAST_LAYOUT.hex()}: update "
            "write_batch and read_batch (and codec_layout) for the new layout"
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
        batch, pos = read_batch(data, HEADER_SIZE)
    except (IndexError, struct.error) as exc:
        raise _body_error(data, fp, "body is truncated") from exc
    except UnicodeDecodeError as exc:
        raise _body_error(data, fp, f"text is not valid UTF-8 ({exc.reason})") from exc
    except Malformed as exc:
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
            [new_tuple(Row, row.values()) for row in group["rows"]],
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



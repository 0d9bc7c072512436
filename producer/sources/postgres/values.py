"""Text form -> event value: how capture reads PostgreSQL's values.

pgoutput sends every value in text form, written by the walsender with the session
settings that ``SESSION_OPTIONS`` fixes (DateStyle ISO, IntervalStyle postgres, TimeZone
UTC, extra_float_digits 3, bytea_output hex, client_encoding UTF8).  The COPY connection
uses the same settings, so a row reads the same from the snapshot and from the stream.
int2/int4/int8 become int, float4/float8 float (NaN, ±Infinity and -0 included), bool
bool, bytea bytes, text/varchar/char str; every other type (numeric, dates and times,
interval, uuid, json, arrays, enums, ...) stays PostgreSQL's canonical text, which it
accepts back losslessly.  Domains are converted as their base type.  Generated columns
are not sent by pgoutput, so they are left out of the snapshot and the definitions too.
"""
from __future__ import annotations

import binascii
from collections.abc import Callable

from funnel.events import Value

# What the walsender and the COPY connection write values with: one canonical text form.
SESSION_OPTIONS = ("-c datestyle=ISO -c intervalstyle=postgres -c timezone=UTC "
                   "-c extra_float_digits=3 -c bytea_output=hex")

# Text form -> event value, by base type OID; every other type stays text.
_BOOLS = {b"t": True, b"f": False, "t": True, "f": False}
_INT_TYPES = {20: "int8", 21: "int2", 23: "int4"}
_FLOAT_TYPES = {700: "float4", 701: "float8"}
_BOOL_OID, _BYTEA_OID = 16, 17
# What a malformed text form raises while it is converted.
VALUE_ERRORS = (ValueError, KeyError, UnicodeDecodeError, binascii.Error)


def _bytea(text: bytes | str) -> bytes:
    """'\\x0aff' -> b'\\n\\xff'.  Raises ValueError for another bytea_output format."""
    if text[:2] not in (b"\\x", "\\x"):
        raise ValueError(f"bytea value not in hex format: {text[:20]!r}")
    return binascii.unhexlify(text[2:])


def converter(base_oid: int) -> Callable[[bytes], Value]:
    """The function from pgoutput's text bytes to the event value for a base type."""
    if base_oid in _INT_TYPES:
        return int
    if base_oid in _FLOAT_TYPES:
        return float  # float() reads 'NaN', 'Infinity', '-Infinity' and '-0' as PostgreSQL writes them
    if base_oid == _BOOL_OID:
        return _BOOLS.__getitem__
    if base_oid == _BYTEA_OID:
        return _bytea
    return bytes.decode  # UTF-8: the stream's client_encoding


def copy_type(base_oid: int) -> str:
    """The psycopg loader for a COPY column: the same values as ``converter`` gives."""
    return _INT_TYPES.get(base_oid) or _FLOAT_TYPES.get(base_oid) or {
        _BOOL_OID: "bool", _BYTEA_OID: "bytea"}.get(base_oid, "text")

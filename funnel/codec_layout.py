"""The binary layout the codec's specialised coder implements (``funnel.codec``).

Pinned to one schema version by its fingerprint: a new schema version must come with a
new coder (``codec_read``, ``codec_write``), and the codec refuses to start until it does.
"""
from __future__ import annotations

import struct

from funnel.events import Kind, Op

# The fingerprint of the layout write_batch and read_batch implement (change_batch.v2:
# v1 plus op DDL and the nullable ``ddl`` text after each group's rows).
FAST_LAYOUT = bytes.fromhex("24affd6e70940259")
# Enum symbols in schema order; pinned by FAST_LAYOUT like the rest of the layout.
KINDS = (Kind.CHANGES, Kind.SNAPSHOT, Kind.SNAPSHOT_END, Kind.HEARTBEAT)
OPS = (Op.SNAPSHOT, Op.INSERT, Op.UPDATE, Op.DELETE, Op.TRUNCATE, Op.DDL)
KIND_INDEX = {kind: index for index, kind in enumerate(KINDS)}
OP_INDEX = {op: index for index, op in enumerate(OPS)}

LONG_MIN = -(1 << 63)
LONG_MAX = (1 << 63) - 1
pack_double = struct.Struct("<d").pack
unpack_double = struct.Struct("<d").unpack_from
new_tuple = tuple.__new__

# Union branch indexes of a column value, zigzag-encoded as the single byte Avro writes:
# null 0, boolean 1, long 2, double 3, string 4, bytes 5.
NULL, BOOLEAN, LONG, DOUBLE, STRING, BYTES = 0, 2, 4, 6, 8, 10

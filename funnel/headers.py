"""Kafka message headers: what a reader needs to schedule a message without decoding it.

The applier keeps messages it cannot apply yet as raw bytes (memory stays small and
bounded) and decodes them only when they are due; ``funnel status`` and ``inspect``
count transactions and rows from headers alone.  The Avro body stays the source of
truth; the headers repeat four of its fields.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from funnel.errors import CodecError
from funnel.events import Kind

_TS = "tf-ts"  # commit time, µs since the epoch, 8 bytes big-endian signed
_KIND = "tf-kind"  # Kind value
_ROWS = "tf-rows"  # rows in this message, 4 bytes big-endian
_END = "tf-end"  # present on the last message of a source transaction
_KINDS = {kind.value.encode(): kind for kind in Kind}


@dataclass(frozen=True, slots=True)
class MessageMeta:
    commit_ts: int
    kind: Kind
    rows: int
    ends_transaction: bool


def encode(commit_ts: int, kind: Kind, rows: int, ends_transaction: bool) -> list[tuple[str, bytes]]:
    headers = [(_TS, struct.pack(">q", commit_ts)), (_KIND, kind.value.encode()),
               (_ROWS, struct.pack(">I", rows))]
    if ends_transaction:
        headers.append((_END, b"1"))
    return headers


def decode(headers: list[tuple[str, bytes]] | None, where: str) -> MessageMeta:
    """Raises CodecError naming ``where`` (topic[partition] offset) when headers are missing or bad."""
    found = dict(headers or ())
    try:
        return MessageMeta(commit_ts=struct.unpack(">q", found[_TS])[0], kind=_KINDS[found[_KIND]],
                           rows=struct.unpack(">I", found[_ROWS])[0], ends_transaction=_END in found)
    except (KeyError, struct.error, TypeError) as exc:
        raise CodecError(f"{where}: not a timefunnel event (missing or malformed headers)",
                         hint="only timefunnel producers may write into a funnel topic") from exc

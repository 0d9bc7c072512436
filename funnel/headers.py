"""Kafka message headers: what a reader needs to schedule a message without decoding it.

The applier keeps messages it cannot apply yet as raw bytes (memory stays small and
bounded) and decodes them only when they are due; ``funnel status`` and ``inspect``
count transactions and rows from headers alone.  The Avro body stays the source of
truth; the headers repeat four of its fields.
"""
from __future__ import annotations

import struct
from typing import Callable, NamedTuple

from funnel.errors import CodecError
from funnel.events import Kind

_TS = "tf-ts"  # commit time, µs since the epoch, 8 bytes big-endian signed
_KIND = "tf-kind"  # Kind value
_ROWS = "tf-rows"  # rows in this message, 4 bytes big-endian
_END = "tf-end"  # present on the last message of a source transaction
_KINDS = {kind.value.encode(): kind for kind in Kind}


class MessageMeta(NamedTuple):
    """A message's scheduling fields.  A NamedTuple: one is made per message read, and a
    frozen dataclass costs several times more to build (readers of a deep funnel make millions)."""

    commit_ts: int
    kind: Kind
    rows: int
    ends_transaction: bool


_unpack_ts = struct.Struct(">q").unpack
_unpack_rows = struct.Struct(">I").unpack


def encode(commit_ts: int, kind: Kind, rows: int, ends_transaction: bool) -> list[tuple[str, bytes]]:
    headers = [(_TS, struct.pack(">q", commit_ts)), (_KIND, kind.value.encode()),
               (_ROWS, struct.pack(">I", rows))]
    if ends_transaction:
        headers.append((_END, b"1"))
    return headers


def decode(headers: list[tuple[str, bytes]] | None, where: str | Callable[[], str]) -> MessageMeta:
    """Raises CodecError naming ``where`` (topic[partition] offset, or a function that
    says it: built only for the error) when headers are missing or bad."""
    try:
        # The order ``encode`` writes, read without building a dict: every message read
        # passes here (a drain of millions of events).
        if headers is not None and 3 <= len(headers) <= 4:
            (ts_name, ts), (kind_name, kind), (rows_name, rows) = headers[0], headers[1], headers[2]
            if ts_name == _TS and kind_name == _KIND and rows_name == _ROWS and (
                    len(headers) == 3 or headers[3][0] == _END):
                return MessageMeta(_unpack_ts(ts)[0], _KINDS[kind], _unpack_rows(rows)[0], len(headers) == 4)
        found = dict(headers or ())
        return MessageMeta(commit_ts=struct.unpack(">q", found[_TS])[0], kind=_KINDS[found[_KIND]],
                           rows=struct.unpack(">I", found[_ROWS])[0], ends_transaction=_END in found)
    except (KeyError, struct.error, TypeError, ValueError) as exc:
        place = where() if callable(where) else where
        raise CodecError(f"{place}: not a timefunnel event (missing or malformed headers)",
                         hint="only timefunnel producers may write into a funnel topic") from exc

"""Codec throughput: EventCodec against fastavro on the same batches, one JSON object out.

A batch is 1,000 rows of 8 mixed-type columns (int, text, float, bool, null, bytes,
int, timestamp text): 500 inserts and 500 updates with before images.  The baseline
is fastavro's raw ``schemaless_writer`` / ``schemaless_reader`` on the equivalent dicts
with the same parsed schema, in the same run; ``ratio`` is codec / raw.  Rates are
rows/s from the best of several repeats (the least disturbed by other processes).

Run: ``python bench/codec.py [--rows 1000] [--repeat 7]``
"""
from __future__ import annotations

import argparse
import io
import json
import pathlib
import platform
import sys
import timeit
from typing import Any, Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import fastavro  # noqa: E402

from funnel.codec import HEADER_SIZE, EventCodec, record_of  # noqa: E402
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges  # noqa: E402

COLUMNS = ["id", "name", "price", "active", "note", "blob", "qty", "updated_at"]


def image(i: int) -> list[Any]:
    return [
        i,
        f"customer-{i}",
        i * 1.25,
        i % 2 == 0,
        None,
        b"\x00\x01payload" * 2,
        i * 7919,
        "2026-11-29T12:00:00.123456Z",
    ]


def make_batch(rows: int) -> ChangeBatch:
    half = rows // 2
    inserts = [Row(None, image(i)) for i in range(half)]
    updates = [Row(image(i), image(i + 1)) for i in range(half, rows)]
    return ChangeBatch(
        source="bench",
        txid="tx-1",
        commit_ts=1_795_000_000_000_000,
        position=123_456,
        seq=0,
        tx_rows=rows,
        kind=Kind.CHANGES,
        changes=[
            TableChanges("public.customers", Op.INSERT, COLUMNS, ["id"], inserts),
            TableChanges("public.customers", Op.UPDATE, COLUMNS, ["id"], updates),
        ],
    )


def rate(fn: Callable[[], object], rows: int, repeat: int) -> float:
    number = 10
    best = min(timeit.repeat(fn, number=number, repeat=repeat)) / number
    return round(rows / best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    codec = EventCodec()
    schema = codec.writer_schema  # the same parsed schema the codec writes
    batch = make_batch(args.rows)
    record = record_of(batch)
    message = codec.encode(batch)
    body = message[HEADER_SIZE:]
    if codec.decode(message) != batch:
        raise SystemExit("codec round trip failed")

    def raw_write() -> bytes:
        fo = io.BytesIO()
        fastavro.schemaless_writer(fo, schema, record)
        return fo.getvalue()

    if raw_write() != body:
        raise SystemExit("codec and fastavro bodies differ")

    def raw_read() -> object:
        return fastavro.schemaless_reader(io.BytesIO(body), schema, None)

    result: dict[str, Any] = {
        "bench": "codec",
        "rows_per_message": args.rows,
        "columns": len(COLUMNS),
        "message_bytes": len(message),
        "python": platform.python_version(),
        "fastavro": fastavro.__version__,
        "encode_rows_per_s": rate(lambda: codec.encode(batch), args.rows, args.repeat),
        "decode_rows_per_s": rate(lambda: codec.decode(message), args.rows, args.repeat),
        "raw_fastavro_encode_rows_per_s": rate(raw_write, args.rows, args.repeat),
        "raw_fastavro_decode_rows_per_s": rate(raw_read, args.rows, args.repeat),
    }
    result["encode_ratio"] = round(
        result["encode_rows_per_s"] / result["raw_fastavro_encode_rows_per_s"], 2
    )
    result["decode_ratio"] = round(
        result["decode_rows_per_s"] / result["raw_fastavro_decode_rows_per_s"], 2
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

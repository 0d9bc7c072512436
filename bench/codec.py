"""Codec throughput: EventCodec against fastavro on the same batches, one JSON object out.

Two shapes, each measured against fastavro in the same run:

- ``bulk``: one message of 1,000 rows of 8 mixed-type columns (int, text, float, bool,
  null, bytes, int, timestamp text): 500 inserts and 500 updates with before images.
- ``oltp``: the pgbench shape, many small messages, each one transaction touching 3-4
  tables (accounts, tellers, branches updated with before images, a history insert) in
  groups of 1-4 rows: the same few layouts over and over.

The baseline is fastavro's raw ``schemaless_writer`` / ``schemaless_reader`` on the
equivalent dicts with the same parsed schema, in the same run; ``ratio`` is codec / raw.
Rates are rows/s from the best of several interleaved rounds (the least disturbed
by other processes).  The top-level fields are the bulk shape's (as before the oltp shape existed).

Run: ``python bench/codec.py [--rows 1000] [--messages 250] [--repeat 7]``
"""
from __future__ import annotations

import argparse
import io
import json
import os
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


# The pgbench tables (a key added to history), filler as pgbench -i leaves it.
OLTP_TABLES = [
    ("public.pgbench_accounts", ["aid", "bid", "abalance", "filler"], ["aid"]),
    ("public.pgbench_tellers", ["tid", "bid", "tbalance", "filler"], ["tid"]),
    ("public.pgbench_branches", ["bid", "bbalance", "filler"], ["bid"]),
    ("public.pgbench_history", ["hid", "tid", "bid", "aid", "delta", "mtime", "filler"], ["hid"]),
]


def oltp_image(table: int, i: int, balance: int) -> list[Any]:
    if table == 0:
        return [i * 37 % 1_000_000 + 1, i % 10 + 1, balance, " " * 84]
    if table == 1:
        return [i % 100 + 1, i % 10 + 1, balance, None]
    if table == 2:
        return [i % 10 + 1, balance, None]
    return [i, i % 100 + 1, i % 10 + 1, i * 37 % 1_000_000 + 1, balance % 5000 - 2500,
            "2026-12-02 09:40:00.123456", None]


def make_oltp_batches(messages: int) -> list[ChangeBatch]:
    """Message ``m`` touches 3 or 4 tables in groups of 1-4 rows."""
    batches = []
    for m in range(messages):
        groups = []
        for table, (name, columns, key) in enumerate(OLTP_TABLES[: 3 + (m % 2)]):
            count = 1 + (m + table) % 4
            rows = [
                Row(None, oltp_image(table, m * 4 + r, m * 100 + r)) if table == 3
                else Row(oltp_image(table, m * 4 + r, m), oltp_image(table, m * 4 + r, m * 100 + r))
                for r in range(count)
            ]
            groups.append(TableChanges(name, Op.INSERT if table == 3 else Op.UPDATE, columns, key, rows))
        tx_rows = sum(len(g.rows) for g in groups)
        batches.append(ChangeBatch("pgbench", f"{700_000 + m}", 1_795_000_000_000_000 + m * 250,
                                   123_456 + m * 512, 0, tx_rows, Kind.CHANGES, groups))
    return batches


def rates(fns: dict[str, Callable[[], object]], rows: int, repeat: int) -> dict[str, int]:
    """Rows/s of each function, best of ``repeat`` rounds.  The rounds interleave the
    functions, so a burst of load on a shared machine falls on all of them alike and
    the ratios stay comparable."""
    number = 10
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            best[name] = min(best[name], timeit.timeit(fn, number=number) / number)
    return {name: round(rows / seconds) for name, seconds in best.items()}


def measure(codec: EventCodec, batches: list[ChangeBatch], repeat: int) -> dict[str, Any]:
    """Rows/s of the codec and of raw fastavro over ``batches``, and their ratios."""
    schema = codec.writer_schema  # the same parsed schema the codec writes
    records = [record_of(batch) for batch in batches]
    messages = [codec.encode(batch) for batch in batches]
    bodies = [message[HEADER_SIZE:] for message in messages]
    rows = sum(len(g.rows) for batch in batches for g in batch.changes)
    if [codec.decode(message) for message in messages] != batches:
        raise SystemExit("codec round trip failed")

    def raw_write() -> list[bytes]:
        out = []
        for record in records:
            fo = io.BytesIO()
            fastavro.schemaless_writer(fo, schema, record)
            out.append(fo.getvalue())
        return out

    if raw_write() != bodies:
        raise SystemExit("codec and fastavro bodies differ")

    def raw_read() -> object:
        return [fastavro.schemaless_reader(io.BytesIO(body), schema, None) for body in bodies]

    encode, decode = codec.encode, codec.decode
    result: dict[str, Any] = {
        "rows": rows,
        "messages": len(batches),
        "message_bytes": sum(len(message) for message in messages),
        **rates({
            "encode_rows_per_s": lambda: [encode(batch) for batch in batches],
            "decode_rows_per_s": lambda: [decode(message) for message in messages],
            "raw_fastavro_encode_rows_per_s": raw_write,
            "raw_fastavro_decode_rows_per_s": raw_read,
        }, rows, repeat),
    }
    result["encode_ratio"] = round(
        result["encode_rows_per_s"] / result["raw_fastavro_encode_rows_per_s"], 2
    )
    result["decode_ratio"] = round(
        result["decode_rows_per_s"] / result["raw_fastavro_decode_rows_per_s"], 2
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    codec = EventCodec()
    bulk = measure(codec, [make_batch(args.rows)], args.repeat)
    oltp = measure(codec, make_oltp_batches(args.messages), args.repeat)
    result: dict[str, Any] = {
        "bench": "codec",
        "rows_per_message": args.rows,
        "columns": len(COLUMNS),
        "message_bytes": bulk["message_bytes"],
        "python": platform.python_version(),
        "fastavro": fastavro.__version__,
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }
    result.update({k: v for k, v in bulk.items() if k not in ("rows", "messages", "message_bytes")})
    result["oltp"] = oltp
    print(json.dumps(result))


if __name__ == "__main__":
    main()

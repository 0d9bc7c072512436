"""Reading and sealing the changelog that the capture's triggers write.

``seal_group`` cuts the changelog into groups (our source transactions), ``read``
returns them as SourceTransactions, ``acknowledge`` deletes what is safely in Kafka.

Row images are stored as native values, not as text: the changelog keeps each image in
untyped columns ``v0, v1, ...`` (an UPDATE stores the before image, then the after
image).  Untyped columns have no affinity, so SQLite keeps every value exactly as the
trigger saw it: integers, text (also with NUL), blobs, and reals bit for bit, -0.0
included.  We first tried type-tagged text in a ``json_array`` and measured that it
cannot be exact: SQLite's own float-to-text conversion does not round-trip doubles
(``printf('%!.17g')`` failed for 523 of 302k random doubles on SQLite 3.40 and for 13%
of them on 3.51; ``%!.20e`` and ``quote()`` fail on 3.51 too), and no core SQL function
can see the sign of -0.0.  Native columns also need no JSON1 in the application's SQLite
and nothing to decode here: reading is a plain row fetch.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from funnel.databases.names import SQLITE_CHANGELOG, SQLITE_GROUPS
from funnel.ddl import Ddl
from funnel.events import Op, Row, TableChanges
from producer.sources.base import SourceTransaction
from producer.sources.sqlite.catalog import Layout
from producer.sources.sqlite.triggers import BASE_COLUMNS

OPS = {"I": Op.INSERT, "U": Op.UPDATE, "D": Op.DELETE}
DDL_MARK, TRUNCATE_MARK = "S", "T"  # changelog rows that schema following writes, never a trigger
_MARKS = (DDL_MARK, TRUNCATE_MARK)


@dataclass(slots=True)
class Group:
    gid: int
    upto_seq: int
    sealed_at_us: int


def seal_group(conn: sqlite3.Connection, clock: Callable[[], int], strictly_later: bool = False) -> int | None:
    """Inside the write transaction: seals the changelog rows after the last group.

    Returns its gid, or None when no row arrived since.  ``strictly_later``: stamp it at
    least 1 µs after the last group, so that a target time can fall between the rows
    before a schema change and the change itself.
    """
    last = conn.execute(
        f"SELECT upto_seq, sealed_at_us FROM {SQLITE_GROUPS} ORDER BY gid DESC LIMIT 1"
    ).fetchone()
    top = conn.execute(f"SELECT max(seq) FROM {SQLITE_CHANGELOG}").fetchone()[0]
    if top is None or (last is not None and top <= last[0]):
        return None
    # commit_ts must not go backwards, or a target time would fall inside the
    # order of transactions; a clock step back reuses the previous stamp.
    sealed_at = max(clock(), last[1] + strictly_later if last is not None else 0)
    cursor = conn.execute(
        f"INSERT INTO {SQLITE_GROUPS}(upto_seq, sealed_at_us) VALUES (?, ?)", (top, sealed_at)
    )
    return int(cursor.lastrowid)


def read(conn: sqlite3.Connection, position: int, limit_groups: int,
         load: Callable[[sqlite3.Connection, str], Layout]) -> list[SourceTransaction]:
    """Inside a read transaction: the sealed groups after ``position`` (see
    ``SqliteSource.transactions_after``); ``load`` returns a recorded layout by id."""
    groups = [
        Group(*row)
        for row in conn.execute(
            f"SELECT gid, upto_seq, sealed_at_us FROM {SQLITE_GROUPS} "
            "WHERE upto_seq > ? ORDER BY upto_seq LIMIT ?",
            (position, limit_groups),
        )
    ]
    if not groups:
        return []
    rows = conn.execute(
        f"SELECT * FROM {SQLITE_CHANGELOG} WHERE seq > ? AND seq <= ? ORDER BY seq",
        (position, groups[-1].upto_seq),
    )
    return _assemble(conn, groups, rows, load)


def acknowledge(conn: sqlite3.Connection, position: int) -> None:
    """Inside the write transaction: deletes the changelog rows and groups up to ``position``."""
    conn.execute(f"DELETE FROM {SQLITE_CHANGELOG} WHERE seq <= ?", (position,))
    conn.execute(f"DELETE FROM {SQLITE_GROUPS} WHERE upto_seq <= ?", (position,))


def _assemble(conn: sqlite3.Connection, groups: list[Group], rows: Iterator[tuple],
              load: Callable[[sqlite3.Connection, str], Layout]) -> list[SourceTransaction]:
    """Cuts changelog rows (in seq order) into one SourceTransaction per group."""
    # The hot loop of capture (over 100k rows/s is the target): no calls per row
    # beyond the slicing, the rest only when the table or op changes.
    transactions = [SourceTransaction(str(g.gid), g.sealed_at_us, g.upto_seq) for g in groups]
    index, upto = 0, groups[0].upto_seq
    changes = transactions[0].changes
    last_key: tuple[str, str] | None = None
    append = None
    start = BASE_COLUMNS
    for row in rows:
        if row[0] > upto:
            while row[0] > groups[index].upto_seq:
                index += 1
            upto, changes, last_key = groups[index].upto_seq, transactions[index].changes, None
        op = row[2]
        if (row[3], op) != last_key:
            last_key = (row[3], op)
            layout = load(conn, row[3])
            if op in _MARKS:  # a schema change or a truncate written by schema following: no rows
                changes.append(_mark(layout, op, row[start]))
                last_key = None
                continue
            batch = TableChanges(layout.event_table, OPS[op], list(layout.columns), list(layout.key))
            changes.append(batch)
            append = batch.rows.append
            end, after_end = start + layout.width, start + 2 * layout.width
        if op == "I":
            append(Row(None, list(row[start:end])))
        elif op == "U":
            append(Row(list(row[start:end]), list(row[end:after_end])))
        else:
            append(Row(list(row[start:end]), None))
    return transactions


def _mark(layout: Layout, op: str, value: object) -> TableChanges:
    if op == DDL_MARK:
        return TableChanges(layout.event_table, Op.DDL, list(layout.columns), list(layout.key), [],
                            Ddl.from_json(str(value)))
    return TableChanges(layout.event_table, Op.TRUNCATE, [], [], [])


def snapshot_position(conn: sqlite3.Connection) -> int:
    """The highest changelog sequence committed (kept in sqlite_sequence even after
    acknowledge() deleted the rows).  ``sqlite3.Error`` when capture is not installed."""
    row = conn.execute(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = ?), 0), "
        f"coalesce((SELECT max(seq) FROM {SQLITE_CHANGELOG}), 0))",
        (SQLITE_CHANGELOG,),
    ).fetchone()
    return int(row[0])

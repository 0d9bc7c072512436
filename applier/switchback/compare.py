"""Pure decisions on table contents: how to reset production, how to tell both sides are equal.

Reset plan
----------
Production may be empty or hold stale data (a damaged original).  After prepare it must
hold exactly the mirror's tables and rows, so before the initial copy arrives:

- a table both have with the same columns and key is *emptied* and keeps production's own
  definition (its declared types, defaults, indexes: what the application was built on);
- a table whose columns or key differ is *recreated* from the mirror's definition;
- a table only production has is *dropped* (a stale table must not survive);
- a table only the mirror has is *created* from the mirror's definition.

Checksums
---------
Each row is hashed with its values' types (1 and 1.0 and '1' differ, -0.0 differs from
0.0, NULL from ''), and the row hashes are added modulo 2**128, so the result does not
depend on the order the database returns rows in (collations may differ between the two
sides) and a table is read once, streaming.
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MODULUS = 1 << 128


@dataclass(frozen=True)
class TableShape:
    """A user table as the database defines it: column names in order and its primary key."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]

    def same_shape(self, other: "TableShape", fold: bool) -> bool:
        norm = (lambda names: tuple(n.lower() for n in names)) if fold else tuple
        return set(norm(self.columns)) == set(norm(other.columns)) and norm(self.key) == norm(other.key)


@dataclass(frozen=True)
class ResetPlan:
    """Table names as each side spells them: empty/recreate/drop name production's tables,
    recreate/create name the mirror's (the definition comes from there)."""

    empty: tuple[str, ...] = ()
    recreate: tuple[tuple[str, str], ...] = ()  # (production name, mirror name)
    drop: tuple[str, ...] = ()
    create: tuple[str, ...] = ()

    def summary(self) -> dict[str, list[str]]:
        return {"emptied": list(self.empty), "recreated": [m for _, m in self.recreate], "dropped": list(self.drop),
                "created": list(self.create)}


def plan_reset(production: Mapping[str, TableShape], mirror: Mapping[str, TableShape],
               fold_case: bool) -> ResetPlan:
    """How to make production's tables the mirror's (see the module docstring).

    ``fold_case``: table and column names compare case-insensitively (SQLite).
    """
    def norm(name: str) -> str:
        return name.lower() if fold_case else name

    ours = {norm(name): shape for name, shape in production.items()}
    theirs = {norm(name): shape for name, shape in mirror.items()}
    empty, recreate, drop, create = [], [], [], []
    for name in sorted(ours):
        if name not in theirs:
            drop.append(ours[name].name)
        elif ours[name].same_shape(theirs[name], fold_case):
            empty.append(ours[name].name)
        else:
            recreate.append((ours[name].name, theirs[name].name))
    create = [theirs[name].name for name in sorted(theirs) if name not in ours]
    return ResetPlan(tuple(empty), tuple(recreate), tuple(drop), tuple(create))


# -- checksums --------------------------------------------------------------------------


def value_bytes(value: Any) -> bytes:
    """A type-tagged, length-prefixed encoding: distinct values give distinct bytes."""
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"T" if value else b"F"
    if isinstance(value, int):
        tag, body = b"I", str(value).encode()
    elif isinstance(value, float):
        tag, body = b"D", struct.pack(">d", value)  # bit-exact: -0.0 and NaN payloads kept
    elif isinstance(value, str):
        tag, body = b"S", value.encode("utf-8", "surrogatepass")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        tag, body = b"B", bytes(value)
    else:  # PostgreSQL types without a plain Python counterpart: their text, tagged with the type
        tag, body = b"O", f"{type(value).__name__}:{value}".encode()
    return tag + len(body).to_bytes(4, "big") + body


def row_digest(row: Sequence[Any]) -> int:
    digest = hashlib.blake2b(digest_size=16)
    for value in row:
        digest.update(value_bytes(value))
    return int.from_bytes(digest.digest(), "big")


@dataclass
class TableChecksum:
    """Row count and order-independent checksum of one table."""

    rows: int = 0
    total: int = 0

    def add(self, row: Sequence[Any]) -> None:
        self.rows += 1
        self.total = (self.total + row_digest(row)) % MODULUS

    @property
    def checksum(self) -> str:
        return f"{self.total:032x}"

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "checksum": self.checksum}


def checksum_rows(rows: Iterable[Sequence[Any]]) -> TableChecksum:
    result = TableChecksum()
    for row in rows:
        result.add(row)
    return result


def compare_tables(mirror: Mapping[str, TableShape], production: Mapping[str, TableShape],
                   fold_case: bool) -> list[str]:
    """Differences in the table sets and shapes, one line each (empty when equal)."""
    def norm(name: str) -> str:
        return name.lower() if fold_case else name

    ours = {norm(n): s for n, s in production.items()}
    theirs = {norm(n): s for n, s in mirror.items()}
    problems = [f"table {theirs[n].name!r} is on the mirror but not on production" for n in sorted(theirs)
                if n not in ours]
    problems += [f"table {ours[n].name!r} is on production but not on the mirror" for n in sorted(ours)
                 if n not in theirs]
    problems += [f"table {theirs[n].name!r} has columns {list(theirs[n].columns)} key {list(theirs[n].key)} on "
                 f"the mirror but {list(ours[n].columns)} key {list(ours[n].key)} on production"
                 for n in sorted(theirs) if n in ours and not theirs[n].same_shape(ours[n], fold_case)]
    return problems


def compare_checksums(mirror: Mapping[str, TableChecksum], production: Mapping[str, TableChecksum]) -> list[str]:
    """Tables whose row count or checksum differ, one line each (empty when equal)."""
    problems = []
    for table in sorted(mirror):
        ours, theirs = production.get(table), mirror[table]
        if ours is None:
            problems.append(f"table {table!r}: not read on production")
        elif ours.rows != theirs.rows:
            problems.append(f"table {table!r}: {theirs.rows} rows on the mirror, {ours.rows} on production")
        elif ours.total != theirs.total:
            problems.append(f"table {table!r}: same row count ({ours.rows}) but checksums differ "
                            f"({theirs.checksum} on the mirror, {ours.checksum} on production)")
    return problems


# -- freeze ------------------------------------------------------------------------------


@dataclass
class WriteActivity:
    """What reached the mirror since a point: row changes per table, and who may be writing."""

    changes: dict[str, int] = field(default_factory=dict)
    writers: list[str] = field(default_factory=list)  # processes or sessions, as the database can tell

    def describe(self, seconds: float) -> str:
        tables = ", ".join(f"{table} +{count}" for table, count in sorted(self.changes.items(),
                                                                          key=lambda item: (-item[1], item[0])))
        text = (f"row changes in the last {seconds:.1f}s: {tables}" if tables
                else f"a write transaction is still open after {seconds:.1f}s")
        if self.writers:
            text += "; still connected: " + "; ".join(self.writers)
        return text


def is_quiet(markers: Sequence[tuple[float, int]], quiet_s: float) -> bool:
    """True when the write marker (changelog sequence, write counter) has not moved for ``quiet_s``.

    ``markers`` are (monotonic time, marker) samples, oldest first.
    """
    if not markers:
        return False
    last_time, last = markers[-1]
    since = last_time
    for when, marker in reversed(markers):
        if marker != last:
            break
        since = when
    return last_time - since >= quiet_s

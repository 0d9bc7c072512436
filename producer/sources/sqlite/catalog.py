"""Reading the production file's catalog: which tables are captured, with which layout.

A *layout* (table, columns in declared order, key) is stored once per version in
``_timefunnel_layouts`` and every changelog row names its layout, so rows written before
a schema change still decode with the columns they were written with.  ``Catalog``
reads layouts from the schema as it is now (``inspect``), from what the capture
recorded (``installed``, ``load``), and says how the two differ (``drift``).
Nothing here writes.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass

from funnel.databases.names import (INTERNAL_PREFIX, SQLITE_CAPTURED, SQLITE_CHANGELOG, SQLITE_GROUPS,
                                    SQLITE_LAYOUTS, STATE_TABLE, quote_ident)
from funnel.errors import SchemaChangedError, SourceError
from funnel.tablenames import check_distinct, sqlite_event_name

OPS = ("I", "U", "D")  # changelog op codes a trigger writes: insert, update, delete

REINITIALISE = (
    "a mirror cannot follow this schema change in place, so re-initialise: capture into a new "
    "funnel (`funnel create NEW`, then `funnel capture ... --funnel NEW`) and apply it to a new, "
    "empty mirror; the old mirror stays valid up to the change"
)

# What timefunnel itself keeps in a SQLite file: the capture's bookkeeping, and the state
# table of a mirror (a promoted mirror is the production a switchback captures).
_OWN_TABLES = frozenset({SQLITE_CHANGELOG, SQLITE_GROUPS, SQLITE_LAYOUTS, SQLITE_CAPTURED, STATE_TABLE})


@dataclass(frozen=True, slots=True)
class Layout:
    """One version of a captured table's shape: what its changelog rows hold."""

    table: str
    columns: tuple[str, ...]  # declared order; ``rowid`` first for rowid-keyed tables
    key: tuple[str, ...]
    rowid: bool = False  # keyed by the implicit rowid (opt-in, see ``SqliteSource``)

    @property
    def event_table(self) -> str:
        """The table's name in events (``funnel.tablenames``): ``main.a.b`` for ``"a.b"``."""
        return sqlite_event_name(self.table)

    @property
    def id(self) -> str:
        """Stable name of this layout: a change of columns, key or event name gives a new id."""
        fields: list = ["v1", self.table, self.columns, self.key, self.rowid]
        if self.event_table != self.table:
            # Events named dotted tables without ``main.`` before: a new id makes a capture
            # installed then refuse to resume instead of splitting the table on the mirror.
            fields.append(self.event_table)
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]

    @property
    def width(self) -> int:
        return len(self.columns)

    def trigger_names(self) -> dict[str, str]:
        """Trigger name per changelog op code."""
        return {op: f"{INTERNAL_PREFIX}{op.lower()}_{self.id}" for op in OPS}


class Catalog:
    """The layouts of the file at ``path``: ``requested`` tables (None: every ordinary
    table), keyed by rowid where they have no key and ``rowid_key`` allows it.

    Keeps every layout it read from ``_timefunnel_layouts`` (they never change).
    """

    def __init__(self, path: str, requested: list[str] | None, rowid_key: bool) -> None:
        self.path = path
        self.requested = requested
        self.rowid_key = rowid_key
        self._cache: dict[str, Layout] = {}

    def inspect(self, conn: sqlite3.Connection, names: list[str] | None = None) -> list[Layout]:
        """The layouts of ``names`` (default: the requested tables), as the schema is now.

        Raises SourceError naming the first table that cannot be captured; ``sqlite3.Error``
        passes (the caller wraps it).
        """
        kinds = table_kinds(conn)
        names = names if names is not None else self.requested
        if names is None:
            refuse_reserved_names(kinds, self.path)
            names = sorted(n for n, k in kinds.items() if k == "table" and not is_internal(n))
        # dict.fromkeys: "Orders" and "orders" name one table, captured once
        layouts = list(dict.fromkeys(self.layout(conn, kinds, name) for name in names))
        if not layouts:
            raise SourceError(
                f"no tables to capture in {self.path}",
                hint="create the application's tables first, or name the tables to capture",
            )
        check_distinct([layout.event_table for layout in layouts], self.path)
        return layouts

    def layout(self, conn: sqlite3.Connection, kinds: dict[str, str], name: str) -> Layout:
        """Raises SourceError if ``name`` is not an ordinary table with a usable key."""
        table = {n.lower(): n for n in kinds}.get(name.lower())
        if table is None:
            raise SourceError(f'table "{name}" does not exist in {self.path}')
        kind = kinds[table]
        where = f'"{table}" in {self.path}'
        if kind == "view":
            raise SourceError(f"{where} is a view: capture its base tables instead")
        if kind != "table":
            raise SourceError(f"{where} is a {kind} table: triggers cannot capture it")
        if is_internal(table):
            raise SourceError(f"{where} is an internal table of SQLite or timefunnel")
        info = conn.execute(f"PRAGMA table_xinfo({quote_ident(table)})").fetchall()
        columns = tuple(row[1] for row in info if row[6] == 0)  # hidden != 0: generated
        key = tuple(row[1] for row in sorted((r for r in info if r[5] > 0), key=lambda r: r[5]))
        if key:
            return Layout(table, columns, key)
        return self._rowid_layout(table, columns)

    def _rowid_layout(self, table: str, columns: tuple[str, ...]) -> Layout:
        if not self.rowid_key:
            raise SourceError(
                f'table "{table}" in {self.path} has no PRIMARY KEY',
                hint="declare one, or key it by rowid with `funnel capture --rowid-key` (library: rowid_key=True) "
                "(only if nothing VACUUMs the database: VACUUM may renumber rowids)",
            )
        if any(c.lower() in ("rowid", "oid", "_rowid_") for c in columns):
            raise SourceError(
                f'table "{table}" in {self.path} has no PRIMARY KEY and a column named like '
                "its rowid, so the rowid cannot be read",
                hint="declare a PRIMARY KEY",
            )
        return Layout(table, ("rowid", *columns), ("rowid",), rowid=True)

    def load(self, conn: sqlite3.Connection, layout_id: str) -> Layout:
        """The recorded layout ``layout_id``.  Raises SourceError if we never recorded it."""
        cached = self._cache.get(layout_id)
        if cached is not None:
            return cached
        found = conn.execute(
            f"SELECT tbl, columns, key, rowid FROM {SQLITE_LAYOUTS} WHERE layout = ?", (layout_id,)
        ).fetchone()
        if found is None:
            raise SourceError(
                f"changelog of {self.path} names unknown layout {layout_id}",
                hint=f"the {SQLITE_LAYOUTS} table was altered by hand; re-create the mirror",
            )
        table, columns, key, rowid = found
        layout = Layout(table, tuple(json.loads(columns)), tuple(json.loads(key)), bool(rowid))
        self._cache[layout_id] = layout
        return layout

    def installed(self, conn: sqlite3.Connection) -> list[Layout]:
        """The layouts the capture was installed with, as the database records them.

        A database installed before the ``captured`` record existed names them only in its
        triggers' names (``_timefunnel_<op>_<layout id>``); a table dropped since is then
        not noticed.  Raises SourceError for a layout id that ``layouts`` does not know.
        """
        if has_table(conn, SQLITE_CAPTURED):
            ids = [row[0] for row in conn.execute(f"SELECT layout FROM {SQLITE_CAPTURED} ORDER BY tbl")]
        else:
            ids = sorted({
                row[0].rsplit("_", 1)[1]
                for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger'")
                if row[0].startswith(INTERNAL_PREFIX)
            })
        return [self.load(conn, i) for i in ids]

    def check_unchanged(self, conn: sqlite3.Connection, installed: list[Layout], when: str,
                        hint: str | None = None) -> None:
        """Raises SchemaChangedError listing every difference from ``installed``."""
        problems = self.drift(conn, installed)
        if problems:
            raise SchemaChangedError(
                f"the schema of {self.path} changed {when}: {'; '.join(problems)}; "
                "capture stopped before publishing any change made after that",
                hint=hint or REINITIALISE,
            )

    def drift(self, conn: sqlite3.Connection, installed: list[Layout]) -> list[str]:
        """What no longer matches ``installed`` (the layouts our triggers were made for),
        one phrase per table: changed, dropped, without triggers, or new to the capture."""
        kinds = table_kinds(conn)
        triggers = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger'")
        }
        problems = [
            problem
            for layout in installed
            if (problem := self._table_drift(conn, kinds, triggers, layout)) is not None
        ]
        known = {layout.table.lower() for layout in installed}
        wanted = self.requested
        if wanted is None:
            wanted = [name for name, kind in kinds.items() if kind == "table" and not is_internal(name)]
        problems += [
            f'table "{name}" is new to the capture' for name in sorted(wanted) if name.lower() not in known
        ]
        return problems

    def _table_drift(
        self, conn: sqlite3.Connection, kinds: dict[str, str], triggers: set[str], layout: Layout
    ) -> str | None:
        table = {name.lower(): name for name in kinds}.get(layout.table.lower())
        if table is None or kinds[table] != "table":
            return f'table "{layout.table}" was dropped or renamed'
        try:
            now = self.layout(conn, kinds, table)
        except SourceError as exc:  # lost its key in a rebuild, say
            return str(exc)
        if now != layout:
            return describe_change(layout, now)
        if not set(layout.trigger_names().values()) <= triggers:
            return (f'the capture triggers of table "{layout.table}" are missing or were made for '
                    "another layout (was the table re-created, or installed by an older timefunnel?)")
        return None


def describe_change(old: Layout, new: Layout) -> str:
    """One phrase saying how a captured table's layout changed."""
    if old.table != new.table:
        return f'table "{old.table}" was renamed to "{new.table}"'
    if old.columns != new.columns:
        return (f'table "{old.table}" changed its columns from ({", ".join(old.columns)}) '
                f'to ({", ".join(new.columns)})')
    return f'table "{old.table}" changed its key from ({", ".join(old.key)}) to ({", ".join(new.key)})'


def schema_version(conn: sqlite3.Connection) -> int:
    """SQLite's schema cookie: it changes with every committed DDL statement."""
    return int(conn.execute("PRAGMA schema_version").fetchone()[0])


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (name,)
    ).fetchone() is not None


def table_kinds(conn: sqlite3.Connection) -> dict[str, str]:
    """Name -> 'table', 'view', 'virtual' or 'shadow', for the main schema."""
    return {
        name: kind
        for schema, name, kind, *_ in conn.execute("PRAGMA table_list")
        if schema == "main"
    }


def is_internal(name: str) -> bool:
    """True for SQLite's own tables and timefunnel's (any case): never captured."""
    lowered = name.lower()
    return lowered.startswith("sqlite_") or lowered.startswith(INTERNAL_PREFIX)


def refuse_reserved_names(kinds: dict[str, str], path: str) -> None:
    """Raises SourceError for an application table named like timefunnel's own tables.

    "Every table" leaves out timefunnel's tables by their prefix; an application's
    ``_timefunnel_audit`` would be left out silently, so it is refused instead, by name.
    """
    for name, kind in sorted(kinds.items()):
        if kind == "table" and name.lower().startswith(INTERNAL_PREFIX) and name.lower() not in _OWN_TABLES:
            raise SourceError(
                f'table "{name}" in {path} is named with timefunnel\'s reserved prefix "{INTERNAL_PREFIX}": '
                f"capturing every table would leave it out of the mirror",
                hint="rename it (ALTER TABLE ... RENAME TO), or name the tables to capture with --table",
            )

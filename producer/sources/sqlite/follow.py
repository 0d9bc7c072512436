"""Following the application's schema changes at each seal.

``changes`` tells, inside the capture's write transaction, how the captured tables
changed since their triggers were made (``producer.sources.sqlite.ddl`` tells renames
from drops and adds by reading our own triggers, which SQLite rewrites).  ``follow``
then publishes them: the rows recorded so far are sealed with the old columns, then one
more group holds the DDL events and the current images of the rows the DDL may have
changed, and the triggers are rebuilt, all in the same write transaction.  A changed
primary key or a new table without one cannot be followed: SchemaChangedError.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from funnel.databases.names import SQLITE_CHANGELOG, SQLITE_GROUPS, column_list, quote_ident
from funnel.ddl import Ddl
from funnel.errors import SchemaChangedError, SourceError
from funnel.tablenames import check_distinct
from producer.sources.sqlite import changelog, ddl, triggers
from producer.sources.sqlite.catalog import REINITIALISE, Catalog, Layout, is_internal, schema_version, table_kinds

_TOUCHED = "touched"  # the rows the last group touched are published again, as they are now
_WHOLE = "whole"  # a new table: every row
_WHOLE_AGAIN = "whole again"  # a re-created table: truncated, then every row
_DROPPED = "dropped"
_SCHEMA_ONLY = "schema only"  # an index: no rows follow


@dataclass(slots=True)
class CapturedSchema:
    """What the capture knows of the captured tables: their layouts, SQLite's schema
    cookie when last checked, and their indexes by layout id as last published (None:
    not known before install, so index changes are not followed until they are).

    Following replaces the attributes, never mutates them: a shallow copy taken before
    a write transaction restores the knowledge when it rolls back.
    """

    layouts: list[Layout]
    version: int | None = None
    indexes: dict[str, dict[str, ddl.Index]] | None = None

    def refresh(self, conn: sqlite3.Connection) -> None:
        """Records the schema cookie and the indexes as they are now (after install or a follow)."""
        self.version = schema_version(conn)
        self.indexes = {layout.id: ddl.indexes(conn, layout.table) for layout in self.layouts}


@dataclass(frozen=True, slots=True)
class Change:
    """A schema change to publish: the layouts before and after it, and which rows follow it."""

    old: Layout | None
    new: Layout | None
    mode: str
    ddl: Ddl


def changes(conn: sqlite3.Connection, catalog: Catalog, schema: CapturedSchema) -> list[Change]:
    """Inside the write transaction: how the captured tables changed since their
    triggers were made ([] when they did not).  Costs one PRAGMA while no DDL ran.

    Raises SchemaChangedError for a change that cannot be followed: a changed primary
    key, or a table that can no longer be captured (no key, a clash of names).
    """
    version = schema_version(conn)
    if version == schema.version:
        return []
    found = _Finder(conn, catalog, schema).changes()
    if not found:
        schema.version = version  # an index, another's trigger: nothing we capture
    return found


def follow(conn: sqlite3.Connection, catalog: Catalog, schema: CapturedSchema, changes: list[Change],
           clock: Callable[[], int]) -> int | None:
    """Inside the write transaction: publishes ``changes`` in order and rebuilds the triggers.

    The rows sealed so far were written with the old columns: they are sealed first
    as they are.  Then, as one more group, each schema change followed by the rows
    that make the mirror exact at this instant (we hold the write lock, so the
    tables are as the application committed them): the current image of every row
    the last group touched (its rows written after the DDL had the old columns), or
    the whole table where the triggers were gone.  Returns the last gid.
    """
    last = conn.execute(f"SELECT upto_seq FROM {SQLITE_GROUPS} ORDER BY gid DESC LIMIT 1").fetchone()
    since = last[0] if last is not None else 0  # rows after it may have been written after the DDL
    changelog.seal_group(conn, clock)
    top = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {SQLITE_CHANGELOG}").fetchone()[0]
    captured = {layout.id: layout for layout in schema.layouts}
    for change in changes:
        if change.old is not None:
            captured.pop(change.old.id, None)
        if change.new is not None:
            captured[change.new.id] = change.new
    schema.layouts = list(captured.values())
    check_distinct([layout.event_table for layout in schema.layouts], catalog.path)
    triggers.create_bookkeeping(conn)
    triggers.widen_changelog(conn, 2 * max((layout.width for layout in schema.layouts), default=1))
    triggers.sync_triggers(conn, schema.layouts)  # records the new layouts before the marks name them
    for change in changes:
        _write_change(conn, change, since, top)
    gid = changelog.seal_group(conn, clock, strictly_later=True)
    schema.refresh(conn)
    return gid


class _Finder:
    """One search for the changes of the captured tables, inside the write transaction."""

    def __init__(self, conn: sqlite3.Connection, catalog: Catalog, schema: CapturedSchema) -> None:
        self.conn, self.catalog, self.schema = conn, catalog, schema
        self.kinds = table_kinds(conn)
        self.by_lower = {name.lower(): name for name, kind in self.kinds.items() if kind == "table"}
        self.claimed: set[str] = set()  # the tables (lower case) a captured layout accounts for

    def changes(self) -> list[Change]:
        conn = self.conn
        found = [change for layout in self.schema.layouts if (change := self._table_change(layout)) is not None]
        for name in self._new_tables():
            new = self._followed_layout(name)
            definition = ddl.table_definition(conn, new.table, new.columns, new.key)
            statement = ddl.create_statement(conn, new.table)
            found.append(Change(None, new, _WHOLE, ddl.create_ddl(new.event_table, definition, statement)))
        return found + self._index_changes(found)

    def _index_changes(self, changes: list[Change]) -> list[Change]:
        """CREATE and DROP INDEX on the captured tables, after their other changes."""
        if self.schema.indexes is None:
            return []
        conn = self.conn
        changed = {change.old.id: change for change in changes if change.old is not None}
        result = []
        for layout in [c.new for c in changes if c.old is None and c.new is not None] + self.schema.layouts:
            change = changed.get(layout.id)
            if change is not None and change.new is None:
                continue  # dropped: its indexes went with it
            now = change.new if change is not None else layout
            assert now is not None
            recreated = change is not None and change.mode == _WHOLE_AGAIN
            before = {} if recreated or layout.id not in self.schema.indexes else self.schema.indexes[layout.id]
            current = ddl.indexes(conn, now.table)
            definition = ddl.table_definition(conn, now.table, now.columns, now.key)
            for event in ddl.index_ddls(now.event_table, before, current, definition):
                result.append(Change(now, now, _SCHEMA_ONLY, event))
        return result

    def _table_change(self, layout: Layout) -> Change | None:
        """How one captured table changed, or None; adds the table it is now to ``claimed``."""
        conn = self.conn
        names = layout.trigger_names()
        view = ddl.trigger_view(conn, names["I"], layout.id, layout.width)
        present = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name IN (?, ?, ?)", tuple(names.values()))}
        if view is not None and len(present) == 3:
            # The triggers went with the table through renames: follow them.
            self.claimed.add(view.table.lower())
            new = self._followed_layout(view.table)
            if new == layout:
                return None
            renames = ddl.renames(layout.columns, view)
            if tuple(renames.get(k, k) for k in layout.key) != new.key:
                raise self._unfollowable(f'table "{layout.table}" changed its primary key from '
                                         f'({", ".join(layout.key)}) to ({", ".join(new.key)})')
            definition = ddl.table_definition(conn, new.table, new.columns, new.key)
            event = ddl.alter_ddl(layout.event_table, new.event_table, layout.columns, definition, renames,
                                  ddl.create_statement(conn, new.table))
            return Change(layout, new, _TOUCHED, event)
        table = self.by_lower.get(layout.table.lower())
        if table is None or table.lower() in self.claimed:
            return Change(layout, None, _DROPPED, ddl.drop_ddl(layout.event_table, layout.table))
        # Re-created without our triggers (SQLite's 12-step ALTER, DROP and CREATE): what
        # happened to it since the last seal is unknown, so it is published whole.
        self.claimed.add(table.lower())
        new = self._followed_layout(table)
        if new.key != layout.key:
            raise self._unfollowable(f'table "{layout.table}" was re-created with primary key '
                                     f'({", ".join(new.key)}) instead of ({", ".join(layout.key)})')
        definition = ddl.table_definition(conn, new.table, new.columns, new.key)
        event = ddl.alter_ddl(layout.event_table, new.event_table, layout.columns, definition, {},
                              ddl.create_statement(conn, new.table))
        return Change(layout, new, _WHOLE_AGAIN, event)

    def _new_tables(self) -> list[str]:
        """Tables to capture that no captured layout accounts for: created since."""
        requested = self.catalog.requested
        if requested is None:
            wanted = [name for name in self.by_lower.values() if not is_internal(name)]
        else:
            wanted = [self.by_lower[name.lower()] for name in requested if name.lower() in self.by_lower]
        return sorted(name for name in wanted if name.lower() not in self.claimed)

    def _followed_layout(self, table: str) -> Layout:
        try:
            return self.catalog.layout(self.conn, self.kinds, table)
        except SourceError as exc:
            raise self._unfollowable(str(exc)) from exc

    def _unfollowable(self, what: str) -> SchemaChangedError:
        return SchemaChangedError(
            f"the schema of {self.catalog.path} changed in a way capture cannot follow: {what}; "
            "capture stopped before publishing any change made after that", hint=REINITIALISE)


def _write_change(conn: sqlite3.Connection, change: Change, since: int, top: int) -> None:
    layout = change.new or change.old
    assert layout is not None
    conn.execute(f"INSERT INTO {SQLITE_CHANGELOG}(tbl, op, layout, v0) VALUES (?, ?, ?, ?)",
                 (layout.table, changelog.DDL_MARK, layout.id, change.ddl.to_json()))
    if change.new is None or change.mode == _SCHEMA_ONLY:
        return
    new = change.new
    targets = ", ".join(f"v{i}" for i in range(new.width))
    insert = f"INSERT INTO {SQLITE_CHANGELOG}(tbl, op, layout, {targets}) "
    columns = column_list(new.columns)
    if change.mode == _TOUCHED:
        assert change.old is not None
        _write_touched(conn, change.old, new, insert, columns, since, top)
        return
    if change.mode == _WHOLE_AGAIN:
        conn.execute(f"INSERT INTO {SQLITE_CHANGELOG}(tbl, op, layout) VALUES (?, ?, ?)",
                     (new.table, changelog.TRUNCATE_MARK, new.id))
    conn.execute(insert + f"SELECT ?, 'I', ?, {columns} FROM {quote_ident(new.table)}", (new.table, new.id))


def _write_touched(conn: sqlite3.Connection, old: Layout, new: Layout, insert: str, columns: str,
                   since: int, top: int) -> None:
    """The current image of every row of ``old`` the changelog rows (since, top] touched."""
    where = " AND ".join(f"{quote_ident(k)} IS ?" for k in new.key)
    select = f"SELECT {columns} FROM {quote_ident(new.table)} WHERE {where}"
    for key in _touched_keys(conn, old, since, top):
        found = conn.execute(select, key).fetchone()
        if found is not None:
            conn.execute(insert + f"VALUES (?, 'I', ?, {', '.join('?' * new.width)})",
                         (new.table, new.id, *found))
        else:  # deleted since: a delete by key (the other columns are not known)
            image = [None] * new.width
            for value, name in zip(key, new.key):
                image[new.columns.index(name)] = value
            conn.execute(insert + f"VALUES (?, 'D', ?, {', '.join('?' * new.width)})",
                         (new.table, new.id, *image))


def _touched_keys(conn: sqlite3.Connection, old: Layout, since: int, top: int) -> list[tuple]:
    """The keys (old positions) of the rows of ``old`` in the changelog rows (since, top]."""
    positions = [old.columns.index(k) for k in old.key]
    width = old.width
    before = ", ".join(f"v{p}" for p in positions)
    after = ", ".join(f"v{width + p}" for p in positions)
    keys: dict[tuple, None] = {}
    for row in conn.execute(f"SELECT op, {before}, {after} FROM {SQLITE_CHANGELOG} "
                            "WHERE layout = ? AND seq > ? AND seq <= ? AND op IN ('I', 'U', 'D') ORDER BY seq",
                            (old.id, since, top)):
        n = len(positions)
        keys[tuple(row[1:1 + n])] = None
        if row[0] == "U":
            keys[tuple(row[1 + n:])] = None
    return list(keys)

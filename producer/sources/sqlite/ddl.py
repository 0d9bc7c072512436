"""Following an application's SQLite migrations: what changed since the triggers were made.

SQLite tells no one about DDL, but two things survive it and say what happened:

- ``PRAGMA schema_version`` moves with every committed DDL (checked at each seal);
- our triggers: ``ALTER TABLE ... RENAME COLUMN`` rewrites the ``NEW."col"`` references
  in them, and ``ALTER TABLE ... RENAME TO`` moves them to the new table name.  So the
  INSERT trigger of a layout still names, position by position, what each captured
  column is called now, and a rename is told apart from a drop and an add (which would
  lose the column's values on the mirror).  A position that reads ``NULL`` was dropped
  by ``SqliteSource.migrate`` (SQLite refuses DROP COLUMN on a column a trigger names).

A table whose triggers are gone while a table of its name exists was re-created (the
"12-step" ALTER of SQLite's documentation, or DROP and CREATE): its changes since the
last seal are unknown, so it is published whole (truncate, then every row).

Everything here reads the schema inside the capture's write transaction; nothing writes.
"""
from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from funnel.databases.names import quote_ident as _q
from funnel.ddl import CREATE_INDEX, DROP_INDEX, Action, ColumnDef, Ddl, TableDef, diff

# One value of our INSERT trigger after the layout id: NEW."name" (quotes doubled) or NULL.
_VALUE = re.compile(r'NEW\."((?:[^"]|"")*)"|NULL')


@dataclass(frozen=True, slots=True)
class TriggerView:
    """What the INSERT trigger of a layout says now: its table and column names (None: dropped)."""

    table: str
    names: tuple[str | None, ...]


def trigger_view(conn: sqlite3.Connection, trigger: str, layout_id: str, width: int) -> TriggerView | None:
    """The trigger's current table and names, or None when the trigger is gone or unreadable."""
    found = conn.execute(
        "SELECT tbl_name, sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?", (trigger,)
    ).fetchone()
    if found is None:
        return None
    table, sql = found
    marker = f"'{layout_id}', "
    start = sql.find(marker)
    if start < 0:
        return None
    names = tuple(m.group(1).replace('""', '"') if m.group(1) is not None else None
                  for m in _VALUE.finditer(sql, start + len(marker)))
    if len(names) != width:
        return None
    return TriggerView(table, names)


def table_definition(conn: sqlite3.Connection, table: str, columns: tuple[str, ...],
                     key: tuple[str, ...]) -> TableDef:
    """The definition of ``table`` for the captured ``columns`` (``rowid`` as INTEGER NOT NULL)."""
    info = {row[1]: row for row in conn.execute(f"PRAGMA table_xinfo({_q(table)})")}
    defs = []
    for name in columns:
        row = info.get(name)
        if row is None:  # the implicit rowid of a rowid-keyed table
            defs.append(ColumnDef(name, "INTEGER", False))
        else:
            defs.append(ColumnDef(name, row[2] or "", not row[3] and row[5] == 0, row[4]))
    return TableDef(tuple(defs), key)


def renames(old_columns: tuple[str, ...], view: TriggerView) -> dict[str, str]:
    """Old name -> new name for the columns a RENAME COLUMN changed."""
    return {old: now for old, now in zip(old_columns, view.names) if now is not None and now != old}


def alter_ddl(event_table: str, new_event_table: str, old_columns: tuple[str, ...], new: TableDef,
              column_renames: dict[str, str], statement: str, tag: str = "ALTER TABLE") -> Ddl:
    """The DDL event of a captured table that changed (columns renamed, added, dropped; renamed).

    SQLite changes no type in place, so the old definition takes the types of the
    columns it keeps: the difference holds renames, adds and drops only.
    """
    kept = {c.name: c for c in new.columns}
    old_defs = []
    for name in old_columns:
        now = kept.get(column_renames.get(name, name))
        old_defs.append(ColumnDef(name, now.type, now.nullable, now.default) if now else ColumnDef(name))
    back = {now: was for was, now in column_renames.items()}
    old = TableDef(tuple(old_defs), tuple(back.get(k, k) for k in new.key))
    actions = diff(event_table, old, new, column_renames,
                   new_name=new_event_table if new_event_table != event_table else None)
    return Ddl(tag, statement, event_table, tuple(actions), new)


def create_ddl(event_table: str, new: TableDef, statement: str) -> Ddl:
    return Ddl("CREATE TABLE", statement, event_table, tuple(diff(event_table, None, new)), new)


def drop_ddl(event_table: str, table: str) -> Ddl:
    return Ddl("DROP TABLE", f"DROP TABLE {_q(table)}", event_table, tuple(diff(event_table, TableDef(()), None)))


def create_statement(conn: sqlite3.Connection, table: str) -> str:
    found = conn.execute("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return found[0] if found else ""


@dataclass(frozen=True, slots=True)
class Index:
    """An index the application created on a captured table (plain columns, not partial)."""

    columns: tuple[str, ...]
    unique: bool
    sql: str


def indexes(conn: sqlite3.Connection, table: str) -> dict[str, Index]:
    """The table's indexes made by CREATE INDEX on plain columns; partial and expression
    indexes are left out (a mirror need not have them to hold the same rows)."""
    found = {}
    for _, name, unique, origin, partial in conn.execute(f"PRAGMA index_list({_q(table)})"):
        if origin != "c" or partial:
            continue
        columns = [row[2] for row in conn.execute(f"PRAGMA index_info({_q(name)})")]
        if columns and all(c is not None for c in columns):
            sql = conn.execute("SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = ?", (name,)).fetchone()
            found[name] = Index(tuple(columns), bool(unique), sql[0] if sql else "")
    return found


def index_ddls(event_table: str, before: dict[str, Index], now: dict[str, Index], definition: TableDef) -> list[Ddl]:
    """One DDL event per dropped, then per created index (a changed one is dropped and created)."""
    result = []
    for name, index in sorted(before.items()):
        if now.get(name) != index:
            result.append(Ddl("DROP INDEX", f"DROP INDEX {_q(name)}", event_table,
                              (Action(DROP_INDEX, name),), definition))
    for name, index in sorted(now.items()):
        if before.get(name) != index:
            result.append(Ddl("CREATE INDEX", index.sql, event_table,
                              (Action(CREATE_INDEX, name, columns=index.columns, unique=index.unique),), definition))
    return result

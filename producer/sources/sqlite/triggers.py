"""What the capture installs in the production file: bookkeeping tables and triggers.

Each captured table gets AFTER INSERT/UPDATE/DELETE triggers that append one row to
``_timefunnel_changelog`` inside the application's own write transaction, so a change
is in the changelog exactly when it is committed.  Everything here runs inside a write
transaction the caller holds, except ``uninstall``, which takes its own.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
from contextlib import closing

from funnel.databases import sqlite as sqlite_files
from funnel.databases.names import (INTERNAL_PREFIX, SQLITE_CAPTURED, SQLITE_CHANGELOG, SQLITE_GROUPS,
                                    SQLITE_LAYOUTS, quote_ident)
from funnel.errors import SourceError
from producer.sources.sqlite import ddl
from producer.sources.sqlite.catalog import Layout

BASE_COLUMNS = 4  # seq, tbl, op, layout: the value columns v0.. follow

# SQLite's refusal of DROP COLUMN on a column one of our triggers names.
_BLOCKED_DROP = re.compile(r"error in trigger (_timefunnel_[a-z]_[0-9a-f]+) after drop column: "
                           r"no such column: (?:NEW|OLD)\.(.+)$")


def quote_text(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def create_bookkeeping(conn: sqlite3.Connection) -> None:
    # AUTOINCREMENT: sequence numbers and gids are never reused after acknowledge()
    # deleted the rows, so positions only grow and txids stay unique.
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {SQLITE_CHANGELOG}(seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "tbl TEXT NOT NULL, op TEXT NOT NULL, layout TEXT NOT NULL)"
    )
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {SQLITE_GROUPS}(gid INTEGER PRIMARY KEY AUTOINCREMENT, "
        "upto_seq INTEGER NOT NULL, sealed_at_us INTEGER NOT NULL)"
    )
    conn.execute(f"CREATE INDEX IF NOT EXISTS {SQLITE_GROUPS}_upto ON {SQLITE_GROUPS}(upto_seq)")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {SQLITE_LAYOUTS}(layout TEXT PRIMARY KEY, tbl TEXT NOT NULL, "
        "columns TEXT NOT NULL, key TEXT NOT NULL, rowid INTEGER NOT NULL)"
    )
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {SQLITE_CAPTURED}(tbl TEXT PRIMARY KEY, layout TEXT NOT NULL)"
    )


def widen_changelog(conn: sqlite3.Connection, needed: int) -> None:
    """Adds untyped value columns until the changelog has ``needed`` of them."""
    have = len(conn.execute(f"PRAGMA table_info({SQLITE_CHANGELOG})").fetchall()) - BASE_COLUMNS
    for index in range(have, needed):
        # no declared type = no affinity: values are stored exactly as given
        conn.execute(f"ALTER TABLE {SQLITE_CHANGELOG} ADD COLUMN v{index}")


def sync_triggers(conn: sqlite3.Connection, captured: list[Layout]) -> None:
    """Makes our triggers exactly those of the ``captured`` layouts, and records them."""
    wanted: dict[str, str] = {}
    for layout in captured:
        conn.execute(
            f"INSERT OR IGNORE INTO {SQLITE_LAYOUTS} VALUES (?, ?, ?, ?, ?)",
            (layout.id, layout.table, json.dumps(layout.columns), json.dumps(layout.key),
             int(layout.rowid)),
        )
        for op, name in layout.trigger_names().items():
            wanted[name] = trigger_sql(layout, op, name)
    existing = {
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'trigger'")
        if row[0].startswith(INTERNAL_PREFIX)
    }
    for name in existing - wanted.keys():
        conn.execute(f"DROP TRIGGER {quote_ident(name)}")
    for name in wanted.keys() - existing:
        conn.execute(wanted[name])
    # What a resumed capture compares the schema with: unlike the triggers, this
    # record still names a table after it was dropped.
    conn.execute(f"DELETE FROM {SQLITE_CAPTURED}")
    conn.executemany(
        f"INSERT INTO {SQLITE_CAPTURED}(tbl, layout) VALUES (?, ?)",
        [(layout.table, layout.id) for layout in captured],
    )


def trigger_sql(layout: Layout, op: str, name: str, names: list[str | None] | None = None,
                table: str | None = None) -> str:
    """CREATE TRIGGER appending one changelog row per row change of ``layout.table``.

    ``names``: the columns' current names, None for a column released by ``migrate``
    (recorded as NULL); ``table``: the table's current name.
    """
    event = {"I": "INSERT", "U": "UPDATE", "D": "DELETE"}[op]
    images = {"I": ["NEW"], "U": ["OLD", "NEW"], "D": ["OLD"]}[op]
    columns = names if names is not None else list(layout.columns)
    values = [f"{image}.{quote_ident(c)}" if c is not None else "NULL" for image in images for c in columns]
    targets = ", ".join(f"v{i}" for i in range(len(values)))
    return (
        f"CREATE TRIGGER {quote_ident(name)} AFTER {event} ON {quote_ident(table or layout.table)} "
        f"BEGIN INSERT INTO {SQLITE_CHANGELOG}(tbl, op, layout, {targets}) VALUES ("
        f"{quote_text(layout.table)}, '{op}', '{layout.id}', {', '.join(values)}); END"
    )


# -- migrations the triggers would block ----------------------------------------------


def run_migration_statement(conn: sqlite3.Connection, installed: list[Layout], statement: str,
                            number: int, path: str) -> None:
    """Runs one statement of ``SqliteSource.migrate``, releasing a column our triggers name
    when SQLite refuses to drop it.  Raises SourceError for any other failure."""
    for _ in range(4 * max((layout.width for layout in installed), default=1) + 1):
        try:
            conn.execute(statement)
            return
        except sqlite3.OperationalError as exc:
            blocked = _BLOCKED_DROP.match(str(exc))
            layout = _layout_of_trigger(installed, blocked.group(1)) if blocked else None
            if layout is None:
                raise SourceError(f"migration statement {number} failed on {path}: {exc} "
                                  "(nothing of the migration was applied)",
                                  hint="fix the statement and run the migration again") from exc
            _release_column(conn, layout, blocked.group(2))
    raise SourceError(f"migration statement {number} kept failing on {path}")


def _release_column(conn: sqlite3.Connection, layout: Layout, column: str) -> None:
    """Rewrites ``layout``'s triggers with NULL where they name ``column`` (see migrate)."""
    view = ddl.trigger_view(conn, layout.trigger_names()["I"], layout.id, layout.width)
    names = list(view.names if view is not None else layout.columns)
    names = [None if name is not None and name.lower() == column.lower() else name for name in names]
    for op, name in layout.trigger_names().items():
        conn.execute(f"DROP TRIGGER IF EXISTS {quote_ident(name)}")
        conn.execute(trigger_sql(layout, op, name, names,
                                 table=view.table if view is not None else layout.table))


def _layout_of_trigger(layouts: list[Layout], trigger: str) -> Layout | None:
    layout_id = trigger.rsplit("_", 1)[-1]
    return next((layout for layout in layouts if layout.id == layout_id), None)


def split_script(script: str) -> list[str]:
    """The complete SQL statements of ``script``, in order (semicolons inside literals kept)."""
    statements, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\r\n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \t\r\n;"):
        statements.append(current.strip().rstrip(";"))
    return statements


# -- removal ---------------------------------------------------------------------------


def uninstall(path: str, busy_timeout_s: float = 30) -> list[str]:
    """Drops the capture's triggers and bookkeeping tables from the file at ``path`` in one
    write transaction, whatever its tables are now; returns what it dropped ([] for no file).
    The capture cannot resume after this: the funnel needs a new initial copy.  Raises SourceError."""
    if not os.path.isfile(path):
        return []
    removed = []
    # closing: an open transaction is rolled back
    with closing(sqlite_files.connect(path, timeout=busy_timeout_s)) as conn:
        try:
            conn.execute("BEGIN IMMEDIATE")
            objects = conn.execute("SELECT type, name FROM sqlite_schema WHERE type IN ('trigger', 'table')").fetchall()
            triggers = [name for kind, name in objects if kind == "trigger" and name.startswith(INTERNAL_PREFIX)]
            for name in triggers:
                conn.execute(f"DROP TRIGGER {quote_ident(name)}")
            removed += [f"{len(triggers)} capture triggers"] if triggers else []
            for table in (SQLITE_CHANGELOG, SQLITE_GROUPS, SQLITE_LAYOUTS, SQLITE_CAPTURED):
                if ("table", table) in objects:
                    conn.execute(f"DROP TABLE {quote_ident(table)}")
                    removed.append(table)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SourceError(f"cannot remove the capture from {path}: {exc}") from exc
    return removed

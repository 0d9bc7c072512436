"""PostgreSQL schema changes as funnel DDL events (``funnel capture --capture-ddl``).

Logical decoding carries no DDL, so capture installs, per slot, in schema ``timefunnel``:

- ``<slot>_defs(relid, definition, published)``: the last definition of every table of
  the captured schemas (columns with attnum, format_type, nullability and default;
  primary key; plain-column indexes) and whether the publication carries it;
- ``<slot>_ddl(id, tag, object_identity, statement, relid, old, new, published)``: the
  log, which is in the capture's publication;
- ``<slot>_rows(id, relid, vals)``: the rows log, in the publication too, always empty;
- functions (SQL in ``ddl_sql``) fired by the event triggers ``<slot>_end``
  (``ddl_command_end``) and ``<slot>_drop`` (``sql_drop``): for every table a command
  touched they read the new definition, and when it (or its publication) differs from
  the stored one they store it and insert a log row with the old and the new definition.

The log row is written in the DDL's own transaction, so its INSERT arrives in the
replication stream exactly where the DDL happened, between the rows written before and
after it.  Old and new definition both travel in the row: the difference never depends
on what a restarted capture knows.  A rename is told apart from a drop and an add by the
column's attnum, which PostgreSQL keeps.

New tables: with capture's own publication and capture by schema, a table created in a
captured schema with a key (any table under ``--replica-identity-full``, which the
trigger sets on it) joins the publication in its CREATE's transaction, so its later
rows are decoded.  Rows it had before it joined (CREATE TABLE AS, SELECT INTO, a key
added later, an operator adding it to their publication) were never decoded: the
trigger then logs the table as created (old NULL) and copies its rows into the rows log
(each as a JSON array of its columns' text forms, with the stream's session settings)
and deletes them again; the inserts stay in the WAL, and ``DdlFollower`` turns them into
inserts right after the DDL event.  Which tables the stream side follows: see
``DdlFollower._follows``.

Event triggers can only be created by a superuser (PostgreSQL 15), so ``--capture-ddl``
needs a superuser capture role; without the flag nothing here is installed.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from funnel.databases.names import INTERNAL_PREFIX, POSTGRES_CAPTURE_SCHEMA, is_internal
from funnel.ddl import CREATE_INDEX, DROP_COLUMN, DROP_INDEX, RENAME_TABLE, Action, ColumnDef, Ddl, TableDef, diff
from funnel.errors import SourceError
from funnel.events import Op, Row, TableChanges
from producer.sources.postgres import ddl_sql as postgres_ddl_sql
from producer.sources.postgres.catalog import ColumnInfo, TableInfo
from producer.sources.postgres.values import converter

log = logging.getLogger("timefunnel.capture.postgres")

SCHEMA = POSTGRES_CAPTURE_SCHEMA

_FUNCTIONS = (postgres_ddl_sql.DEF_FN, postgres_ddl_sql.PUB_FN, postgres_ddl_sql.ROWS_FN, postgres_ddl_sql.LOG_FN,
              postgres_ddl_sql.TRIGGER_FN)


def names(slot: str) -> dict[str, sql.Composable]:
    return {"schema": sql.Identifier(SCHEMA), "log": sql.Identifier(f"{slot}_ddl"),
            "rows": sql.Identifier(f"{slot}_rows"), "defs": sql.Identifier(f"{slot}_defs"),
            "deffn": sql.Identifier(f"{slot}_def"), "pubfn": sql.Identifier(f"{slot}_published"),
            "rowsfn": sql.Identifier(f"{slot}_copy_rows"), "logfn": sql.Identifier(f"{slot}_log"),
            "trgfn": sql.Identifier(f"{slot}_trigger"),
            "end": sql.Identifier(f"{slot}_end"), "drop": sql.Identifier(f"{slot}_drop")}


def log_table(slot: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, f"{slot}_ddl")


def log_tables(slot: str) -> list[sql.Identifier]:
    """The tables capture's publication must carry: the DDL log and the rows log."""
    return [log_table(slot), sql.Identifier(SCHEMA, f"{slot}_rows")]


def check_may_install(conn: psycopg.Connection) -> None:
    """Raises SourceError when the role may not create event triggers (not a superuser)."""
    role, superuser = conn.execute(
        "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if not superuser:
        raise SourceError(
            f"--capture-ddl needs a superuser capture role, and role {role} is not one: PostgreSQL lets only "
            "superusers create the event trigger that records schema changes",
            hint="capture with a superuser role, or leave out --capture-ddl (the applier then stops at a "
                 "column the mirror lacks; see README 'Schema changes')")


def install(conn: psycopg.Connection, slot: str, schemas: list[str], publication: str, add_new: bool,
            full: bool = False) -> None:
    """Creates the logs, the definitions (filled for every table of ``schemas``), the
    functions and the event triggers; idempotent (an older install is brought up to date).
    ``add_new``: tables created in ``schemas`` join ``publication`` (capture's own);
    ``full``: they get REPLICA IDENTITY FULL first.  Runs in the caller's transaction."""
    n = names(slot)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {schema}").format(**n))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {schema}.{log} (id bigserial PRIMARY KEY, tag text NOT NULL, "
                         "object_identity text, statement text, relid oid NOT NULL, old jsonb, new jsonb)").format(**n))
    # published: whether the row is about a table the publication carries (NULL: logged before it was kept)
    conn.execute(sql.SQL("ALTER TABLE {schema}.{log} ADD COLUMN IF NOT EXISTS published boolean").format(**n))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {schema}.{rows} (id bigserial PRIMARY KEY, relid oid NOT NULL, "
                         "vals jsonb NOT NULL)").format(**n))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {schema}.{defs} (relid oid PRIMARY KEY, "
                         "definition jsonb NOT NULL)").format(**n))
    conn.execute(sql.SQL("ALTER TABLE {schema}.{defs} ADD COLUMN IF NOT EXISTS published boolean").format(**n))
    literals = {"publication": sql.Literal(publication), "add_new": sql.Literal(add_new),
                "full": sql.Literal(full), "busy": sql.Literal(f"timefunnel.busy_{slot}"),
                "internal": sql.Literal(INTERNAL_PREFIX.replace("_", "\\_") + "%"),
                "schemas": sql.SQL("{}::text[]").format(sql.Literal(schemas))}
    for text in _FUNCTIONS:
        conn.execute(sql.SQL(text).format(**n, **literals))
    # Capture's own publication changes in this transaction (a table added to --table) are no
    # schema change to publish: the triggers step aside until commit (mark_published records them).
    conn.execute("SELECT set_config(%s, 'on', true)", (f"timefunnel.busy_{slot}",))
    conn.execute(sql.SQL(
        "INSERT INTO {schema}.{defs} SELECT c.oid, {schema}.{deffn}(c.oid) FROM pg_class c "
        "JOIN pg_namespace ns ON ns.oid = c.relnamespace WHERE ns.nspname = ANY({schemas}) "
        "AND c.relkind = 'r' AND c.relpersistence = 'p' AND c.relname NOT LIKE {internal} "
        "ON CONFLICT (relid) DO NOTHING").format(**n, **literals))
    for trigger, event in (("end", "ddl_command_end"), ("drop", "sql_drop")):
        if conn.execute("SELECT 1 FROM pg_event_trigger WHERE evtname = %s",
                        (f"{slot}_{trigger}",)).fetchone() is None:
            conn.execute(sql.SQL("CREATE EVENT TRIGGER {} ON {} EXECUTE FUNCTION {schema}.{trgfn}()").format(
                n[trigger], sql.SQL(event), **n))
    log.info("installed the schema-change event triggers %s_end and %s_drop", slot, slot)


def mark_published(conn: psycopg.Connection, slot: str) -> None:
    """Records which tables the publication carries now (after install() and the publication's
    sync, in their transaction): the event trigger compares with it to see a table join."""
    n = names(slot)
    conn.execute(sql.SQL("UPDATE {schema}.{defs} SET published = {schema}.{pubfn}(relid) "
                         "WHERE published IS DISTINCT FROM {schema}.{pubfn}(relid)").format(**n))


def left_out(conn: psycopg.Connection, slot: str, oids: list[int]) -> list[int]:
    """``oids`` without the tables the event trigger saw created and did not capture (no key,
    or not in an operator's publication): a restarted capture keeps leaving them out."""
    if log_relid(conn, slot) is None:
        return oids
    n = names(slot)
    skipped = {relid: name for relid, name in conn.execute(sql.SQL(
        "SELECT relid, relid::regclass::text FROM {schema}.{defs} d WHERE relid = ANY(%s) "
        "AND to_jsonb(d)->>'published' = 'false'"  # an older install has no such column yet
    ).format(**n), (oids,))}
    for name in skipped.values():
        log.warning("table %s is not captured: it was created without a key or outside the publication while "
                    "capture ran (see README 'Schema changes')", name)
    return [oid for oid in oids if oid not in skipped]


def publish_log(conn: psycopg.Connection, slot: str, publication: str) -> None:
    """Adds the logs to ``publication`` unless they are in it (an operator's publication)."""
    for table in (f"{slot}_ddl", f"{slot}_rows"):
        if conn.execute("SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s "
                        "AND tablename = %s", (publication, SCHEMA, table)).fetchone() is None:
            conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(publication),
                                                                            sql.Identifier(SCHEMA, table)))
            log.info("added the schema-change log %s.%s to publication %s", SCHEMA, table, publication)


def log_relid(conn: psycopg.Connection, slot: str, table: str = "ddl") -> int | None:
    return conn.execute("SELECT to_regclass(%s)::oid", (f'{SCHEMA}."{slot}_{table}"',)).fetchone()[0]


def follower(conn: psycopg.Connection, slot: str, captured: dict[int, Any], *, capture_new: bool,
             own_publication: bool, publication: str, full: bool) -> "DdlFollower | None":
    """The stream side of an installed capture of ``slot``, or None when nothing is installed."""
    relid = log_relid(conn, slot)
    if relid is None:
        return None
    return DdlFollower(relid, captured, capture_new, adopt=capture_new and own_publication,
                       rows_relid=log_relid(conn, slot, "rows"), publication=publication,
                       own_publication=own_publication, full=full)


def uninstall(conn: psycopg.Connection, slot: str) -> list[str]:
    """Drops the event triggers, functions and tables of ``slot``; returns what was there."""
    n = names(slot)
    removed = []
    for trigger in ("end", "drop"):
        if conn.execute("SELECT 1 FROM pg_event_trigger WHERE evtname = %s", (f"{slot}_{trigger}",)).fetchone():
            conn.execute(sql.SQL("DROP EVENT TRIGGER {}").format(n[trigger]))
            removed.append(f"event trigger {slot}_{trigger}")
    if log_relid(conn, slot) is not None:
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {schema}.{trgfn}(), {schema}.{logfn}(oid, text, text), "
                             "{schema}.{rowsfn}(oid), {schema}.{pubfn}(oid), {schema}.{deffn}(oid)").format(**n))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {schema}.{log}, {schema}.{rows}, {schema}.{defs}").format(**n))
        removed.append(f"schema-change log {SCHEMA}.{slot}_ddl")
    return removed


# -- the stream side: a log row becomes a DDL event ---------------------------------------


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value if isinstance(value, str) else None


def _qualified(definition: dict) -> str:
    return f"{definition['schema']}.{definition['name']}"


def _table_def(definition: dict) -> TableDef:
    columns = []
    for c in definition["columns"]:
        default = c.get("default")
        if default and "nextval(" in default:  # the mirror has no such sequence; events carry the values
            default = None
        columns.append(ColumnDef(c["name"], c["type"], bool(c["nullable"]), default))
    return TableDef(tuple(columns), tuple(definition["key"]))


def _index_actions(old: dict | None, new: dict | None) -> list[Action]:
    before = {i["name"]: i for i in (old or {}).get("indexes", [])}
    now = {i["name"]: i for i in (new or {}).get("indexes", [])} if new else {}
    actions = [Action(DROP_INDEX, name) for name, index in sorted(before.items())
               if new is not None and now.get(name) != index]
    actions += [Action(CREATE_INDEX, name, columns=tuple(index["columns"]), unique=bool(index["unique"]))
                for name, index in sorted(now.items()) if before.get(name) != index]
    return actions


def ddl_of(tag: str, statement: str, old: dict | None, new: dict | None) -> Ddl:
    """The DDL event of one log row: the definition difference of ``old`` and ``new``."""
    if old is None:
        definition = _table_def(new)
        actions = diff(_qualified(new), None, definition) + _index_actions(None, new)
        return Ddl(tag, statement, _qualified(new), tuple(actions), definition)
    if new is None:
        return Ddl(tag, statement, _qualified(old), tuple(diff(_qualified(old), _table_def(old), None)))
    attnames = {c["attnum"]: c["name"] for c in new["columns"]}
    renames = {c["name"]: attnames[c["attnum"]] for c in old["columns"]
               if c["attnum"] in attnames and attnames[c["attnum"]] != c["name"]}
    # A column dropped and one of the same name added (another attnum) by one statement: by
    # name alone it would look like a type change that keeps the old values.
    kept = {c["attnum"] for c in new["columns"]}
    new_names = {c["name"] for c in new["columns"]}
    replaced = [c["name"] for c in old["columns"] if c["attnum"] not in kept and c["name"] in new_names]
    remaining = dict(old, columns=[c for c in old["columns"] if c["name"] not in replaced])
    definition = _table_def(new)
    actions = diff(_qualified(old), _table_def(remaining), definition, renames,
                   new_name=_qualified(new) if _qualified(new) != _qualified(old) else None)
    first = 1 if actions and actions[0].kind == RENAME_TABLE else 0
    actions[first:first] = [Action(DROP_COLUMN, name) for name in replaced]
    return Ddl(tag, statement, _qualified(old), tuple(actions + _index_actions(old, new)), definition)


class DdlFollower:
    """Turns the logs' inserts into events and keeps the captured tables' info current.

    ``captured`` is the assembler's relid -> TableInfo map, changed in place: a created
    table joins it when ``capture_new`` (capture by schema) and the publication carries
    it, a dropped one leaves it, an altered one gets its new columns and key.  A row of
    the rows log becomes an insert into its table, right after the DDL event that made
    the table captured.
    """

    def __init__(self, relid: int, captured: dict[int, Any], capture_new: bool, adopt: bool = False, *,
                 rows_relid: int | None = None, publication: str = "", own_publication: bool = True,
                 full: bool = False) -> None:
        self.relid = relid
        self.rows_relid = rows_relid
        self.relids = frozenset(r for r in (relid, rows_relid) if r is not None)
        self._captured = captured
        self._capture_new = capture_new
        self._adopt = adopt
        self._publication = publication
        self._own_publication = own_publication
        self._full = full
        self._copied: TableChanges | None = None  # the last group of copied rows

    def adopt(self, message: Any) -> Any:
        """The TableInfo of a relation the catalog no longer shows as it was, or None.

        Our own publication holds only captured tables and the logs, so a Relation of a
        table we do not know is one created after capture last started and since dropped
        or changed (a restart replays the stream from the slot's position).  Its rows
        and its DDL events must still be published; the Relation message says its
        columns and its replica identity columns (the key; none for a FULL keyless table).
        """
        if not self._adopt or message.relid in self.relids or message.replica_identity not in ("d", "i", "f"):
            return None

        columns = tuple(ColumnInfo(c.name, c.type_oid, c.type_oid, "", False) for c in message.columns)
        key = tuple(c.name for c in message.columns if c.in_identity)
        if not key and message.replica_identity != "f":
            return None
        if message.replica_identity == "f":  # FULL marks every column: the key is the primary key, unknown here
            key = ()
        info = TableInfo(message.relid, message.namespace, message.name, columns, key, message.replica_identity,
                         True, True)
        self._captured[message.relid] = info
        log.info("following table %s, created while capture was away", info.qualified)
        return info

    def insert(self, relid: int, values: list, changes: list[TableChanges]) -> None:
        """Adds the event of one log row (DDL log or rows log) to ``changes``, the open
        transaction's; nothing for a table not captured.  Raises SourceError for a
        malformed row."""
        change = self.change(values) if relid == self.relid else self.row(values)
        if change is None:
            return
        last = self._copied
        if change.op is Op.INSERT and changes and changes[-1] is last and last.table == change.table:
            last.rows.extend(change.rows)  # only our own group: a native one may hold other columns
            return
        self._copied = change if change.op is Op.INSERT else None
        changes.append(change)

    def row(self, values: list) -> TableChanges | None:
        """The insert of one rows-log row (id, relid, vals), or None for a table not captured."""

        try:
            info = self._captured.get(int(_text(values[1])))
            if info is None:
                return None
            texts = json.loads(_text(values[2]))
            if len(texts) != len(info.columns):
                raise ValueError(f"{len(texts)} values for the {len(info.columns)} columns of {info.qualified}")
            row = [None if t is None else converter(c.base_oid)(t.encode()) for c, t in zip(info.columns, texts)]
        except (IndexError, ValueError, TypeError, KeyError) as exc:
            raise SourceError(f"replication stream: malformed row of the rows log: {exc}") from exc
        return TableChanges(info.qualified, Op.INSERT, info.column_names, list(info.key), [Row(None, row)])

    def change(self, values: list) -> TableChanges | None:
        """The DDL event of one log row (id, tag, object_identity, statement, relid, old, new
        [, published]), or None for a table not captured.  Raises SourceError for a malformed row."""
        try:
            tag, statement = _text(values[1]) or "", _text(values[3]) or ""
            relid = int(_text(values[4]))
            old_text, new_text = _text(values[5]), _text(values[6])
            old = json.loads(old_text) if old_text else None
            new = json.loads(new_text) if new_text else None
            published = {"t": True, "f": False}.get(_text(values[7])) if len(values) > 7 else None
        except (IndexError, ValueError, TypeError) as exc:
            raise SourceError(f"replication stream: malformed schema-change log row: {exc}") from exc
        if is_internal((new or old or {}).get("name", "")):
            return None  # logged by an older install: timefunnel's own tables are never captured
        info = self._captured.get(relid)
        if info is None and not self._follows(old, new, published):
            return None
        if info is not None and new is not None and published is False:
            self._captured.pop(relid, None)  # the operator took it out of the publication
            log.warning("table %s left publication %s: its changes are no longer captured", _qualified(new),
                        self._publication)
            return None
        ddl = ddl_of(tag, statement, old, new)
        key = self._follow(relid, info, new)
        if new is None:
            return TableChanges(ddl.object, Op.DDL, [c["name"] for c in old["columns"]], list(old["key"]), [], ddl)
        return TableChanges(ddl.object, Op.DDL, ddl.definition.names, list(key), [], ddl)

    def _follows(self, old: dict | None, new: dict | None, published: bool | None) -> bool:
        """Whether the change of a table we do not know now is one of ours: a table that
        the publication carries from now on, in the captured schemas, when capturing by
        schema; or (see ``adopt``) one our publication held and that was changed or
        dropped while capture was away."""
        if old is None:
            if new is None:
                return False
            if not self._capture_new:
                log.info("table %s was created: not captured (capture names its tables with --table)",
                         _qualified(new))
                return False
            if published or (published is None and new.get("keyed")):
                return True
            log.warning("table %s: %s", _qualified(new), self._why_not(new))
            return False
        return self._adopt and bool(old.get("keyed"))

    def _why_not(self, new: dict) -> str:
        if not self._own_publication:
            return (f"not in publication {self._publication}, so not captured; after ALTER PUBLICATION "
                    f"{self._publication} ADD TABLE {_qualified(new)} capture follows it with its rows")
        return ("created without a primary key, so not captured (capture with --replica-identity-full captures "
                "such tables as multisets); once it has a key capture follows it with its rows")

    def _follow(self, relid: int, info: Any, new: dict | None) -> tuple[str, ...]:
        """Updates ``captured``; returns the table's key in events from now on."""
        if new is None:
            self._captured.pop(relid, None)
            return ()

        columns = tuple(ColumnInfo(c["name"], int(c["typid"]), _base(info, c), c["type"], not c["nullable"])
                        for c in new["columns"])
        if info is None:
            info = TableInfo(relid, new["schema"], new["name"], columns, tuple(new["key"]),
                             "f" if self._full else "d", True, True)
            key = tuple(new["key"])
        elif not info.key:  # captured keyless: the mirror's table is a multiset and stays one
            key = ()
        else:
            key = tuple(new["key"]) or info.key
        self._captured[relid] = replace(info, schema=new["schema"], name=new["name"], columns=columns, key=key)
        return key


def _base(info: Any, column: dict) -> int:
    """The base type of a column we knew with the same type (domains), else its own type."""
    if info is not None:
        for known in info.columns:
            if known.name == column["name"] and known.type_oid == int(column["typid"]):
                return known.base_oid
    return int(column["typid"])

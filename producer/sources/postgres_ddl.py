"""PostgreSQL schema changes as funnel DDL events (``funnel capture --capture-ddl``).

Logical decoding carries no DDL, so capture installs, per slot, in schema ``timefunnel``:

- ``<slot>_defs(relid, definition)``: the last definition of every table of the captured
  schemas (columns with attnum, format_type, nullability and default; primary key;
  plain-column indexes), filled at install;
- ``<slot>_ddl(id, tag, object_identity, statement, relid, old, new)``: the log, which is
  in the capture's publication;
- one SECURITY DEFINER function fired by the event triggers ``<slot>_end``
  (``ddl_command_end``) and ``<slot>_drop`` (``sql_drop``): for every table a command
  touched it reads the new definition, and when it differs from the stored one it
  stores it and inserts a log row with the old and the new definition.

The log row is written in the DDL's own transaction, so its INSERT arrives in the
replication stream exactly where the DDL happened, between the rows written before and
after it.  Old and new definition both travel in the row: the difference never depends
on what a restarted capture knows.  A rename is told apart from a drop and an add by the
column's attnum, which PostgreSQL keeps.  A table created in a captured schema with a
key is added to the capture's own publication by the same function, so its rows written
in the same transaction, after the CREATE, are decoded too.

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

from funnel.ddl import CREATE_INDEX, DROP_COLUMN, DROP_INDEX, RENAME_TABLE, Action, ColumnDef, Ddl, TableDef, diff
from funnel.errors import SourceError
from funnel.events import Op, TableChanges

log = logging.getLogger("timefunnel.capture.postgres")

SCHEMA = "timefunnel"

_DEF_FN = """
CREATE OR REPLACE FUNCTION {schema}.{deffn}(rel oid) RETURNS jsonb LANGUAGE sql STABLE
SET search_path = pg_catalog AS $f$
SELECT jsonb_build_object(
  'schema', n.nspname, 'name', c.relname,
  'keyed', c.relreplident IN ('f', 'i')
           OR EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
  'columns', COALESCE((SELECT jsonb_agg(jsonb_build_object(
       'attnum', a.attnum, 'name', a.attname, 'typid', a.atttypid, 'type', format_type(a.atttypid, a.atttypmod),
       'nullable', NOT a.attnotnull, 'default', pg_get_expr(d.adbin, d.adrelid)) ORDER BY a.attnum)
     FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '[]'),
  'key', COALESCE((SELECT jsonb_agg(a.attname ORDER BY k.ord)
     FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = c.oid AND i.indisprimary), '[]'),
  'indexes', COALESCE((SELECT jsonb_agg(jsonb_build_object('name', ic.relname, 'unique', i.indisunique,
       'columns', (SELECT jsonb_agg(a.attname ORDER BY k.ord)
                   FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)) ORDER BY ic.relname)
     FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
     WHERE i.indrelid = c.oid AND NOT i.indisprimary AND i.indexprs IS NULL AND i.indpred IS NULL), '[]'))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = rel AND c.relkind = 'r' AND c.relpersistence = 'p'
$f$"""

_LOG_FN = """
CREATE OR REPLACE FUNCTION {schema}.{logfn}(rel oid, tag text, identity text) RETURNS void LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $f$
DECLARE old jsonb; new jsonb;
BEGIN
  SELECT definition INTO old FROM {schema}.{defs} WHERE relid = rel;
  new := {schema}.{deffn}(rel);
  IF old IS NOT DISTINCT FROM new THEN RETURN; END IF;
  IF new IS NULL THEN
    DELETE FROM {schema}.{defs} WHERE relid = rel;
  ELSE
    INSERT INTO {schema}.{defs} VALUES (rel, new) ON CONFLICT (relid) DO UPDATE SET definition = EXCLUDED.definition;
  END IF;
  -- A new keyed table joins our publication now, so its rows of this transaction are decoded.
  IF old IS NULL AND new IS NOT NULL AND (new->>'keyed')::boolean AND {add_new}
     AND EXISTS (SELECT 1 FROM pg_publication WHERE pubname = {publication})
     AND NOT EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                     WHERE p.pubname = {publication} AND r.prrelid = rel) THEN
    EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', {publication}, rel::regclass);
  END IF;
  INSERT INTO {schema}.{log}(tag, object_identity, statement, relid, old, new)
  VALUES (tag, identity, current_query(), rel, old, new);
END $f$"""

_TRIGGER_FN = """
CREATE OR REPLACE FUNCTION {schema}.{trgfn}() RETURNS event_trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $f$
DECLARE r record; rel oid; done oid[] := '{{}}';
BEGIN
  IF TG_EVENT = 'sql_drop' THEN
    FOR r IN SELECT * FROM pg_event_trigger_dropped_objects()
             WHERE object_type IN ('table', 'index') AND schema_name = ANY({schemas})
             ORDER BY object_type = 'index' LOOP
      IF r.object_type = 'table' THEN
        rel := r.objid;
      ELSE  -- the index is gone from the catalog: find its table in our definitions
        SELECT s.relid INTO rel FROM {schema}.{defs} s
        WHERE s.definition->>'schema' = r.schema_name
          AND s.definition->'indexes' @> jsonb_build_array(jsonb_build_object('name', r.object_name));
      END IF;
      CONTINUE WHEN rel IS NULL OR rel = ANY(done);
      done := done || rel;
      PERFORM {schema}.{logfn}(rel, TG_TAG, r.object_identity);
    END LOOP;
  ELSE
    FOR r IN SELECT * FROM pg_event_trigger_ddl_commands()
             WHERE object_type IN ('table', 'index', 'table column') AND schema_name = ANY({schemas}) LOOP
      rel := CASE WHEN r.object_type = 'index' THEN (SELECT indrelid FROM pg_index WHERE indexrelid = r.objid)
                  ELSE r.objid END;
      CONTINUE WHEN rel IS NULL OR rel = ANY(done);
      done := done || rel;
      PERFORM {schema}.{logfn}(rel, r.command_tag, r.object_identity);
    END LOOP;
  END IF;
END $f$"""


def names(slot: str) -> dict[str, sql.Composable]:
    return {"schema": sql.Identifier(SCHEMA), "log": sql.Identifier(f"{slot}_ddl"),
            "defs": sql.Identifier(f"{slot}_defs"), "deffn": sql.Identifier(f"{slot}_def"),
            "logfn": sql.Identifier(f"{slot}_log"), "trgfn": sql.Identifier(f"{slot}_trigger"),
            "end": sql.Identifier(f"{slot}_end"), "drop": sql.Identifier(f"{slot}_drop")}


def log_table(slot: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, f"{slot}_ddl")


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


def install(conn: psycopg.Connection, slot: str, schemas: list[str], publication: str, add_new: bool) -> None:
    """Creates the log, the definitions (filled for every table of ``schemas``), the
    functions and the event triggers; idempotent.  Runs in the caller's transaction."""
    n = names(slot)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {schema}").format(**n))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {schema}.{log} (id bigserial PRIMARY KEY, tag text NOT NULL, "
                         "object_identity text, statement text, relid oid NOT NULL, old jsonb, new jsonb)").format(**n))
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {schema}.{defs} (relid oid PRIMARY KEY, "
                         "definition jsonb NOT NULL)").format(**n))
    literals = {"publication": sql.Literal(publication), "add_new": sql.Literal(add_new),
                "schemas": sql.SQL("{}::text[]").format(sql.Literal(schemas))}
    for text in (_DEF_FN, _LOG_FN, _TRIGGER_FN):
        conn.execute(sql.SQL(text).format(**n, **literals))
    conn.execute(sql.SQL(
        "INSERT INTO {schema}.{defs} SELECT c.oid, {schema}.{deffn}(c.oid) FROM pg_class c "
        "JOIN pg_namespace ns ON ns.oid = c.relnamespace WHERE ns.nspname = ANY({schemas}) "
        "AND c.relkind = 'r' AND c.relpersistence = 'p' ON CONFLICT (relid) DO NOTHING").format(**n, **literals))
    for trigger, event in (("end", "ddl_command_end"), ("drop", "sql_drop")):
        if conn.execute("SELECT 1 FROM pg_event_trigger WHERE evtname = %s",
                        (f"{slot}_{trigger}",)).fetchone() is None:
            conn.execute(sql.SQL("CREATE EVENT TRIGGER {} ON {} EXECUTE FUNCTION {schema}.{trgfn}()").format(
                n[trigger], sql.SQL(event), **n))
    log.info("installed the schema-change event triggers %s_end and %s_drop", slot, slot)


def publish_log(conn: psycopg.Connection, slot: str, publication: str) -> None:
    """Adds the log to ``publication`` unless it is in it (an operator's publication)."""
    if conn.execute("SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s "
                    "AND tablename = %s", (publication, SCHEMA, f"{slot}_ddl")).fetchone() is None:
        conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(publication),
                                                                        log_table(slot)))
        log.info("added the schema-change log %s.%s_ddl to publication %s", SCHEMA, slot, publication)


def log_relid(conn: psycopg.Connection, slot: str) -> int | None:
    return conn.execute("SELECT to_regclass(%s)::oid", (f'{SCHEMA}."{slot}_ddl"',)).fetchone()[0]


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
                             "{schema}.{deffn}(oid)").format(**n))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {schema}.{log}, {schema}.{defs}").format(**n))
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
    """Turns the log table's inserts into DDL events and keeps the captured tables' info current.

    ``captured`` is the assembler's relid -> TableInfo map, changed in place: a created
    table joins it when ``capture_new`` (capture by schema) and it has a key, a dropped one
    leaves it, an altered one gets its new columns and key.
    """

    def __init__(self, relid: int, captured: dict[int, Any], capture_new: bool, adopt: bool = False) -> None:
        self.relid = relid
        self._captured = captured
        self._capture_new = capture_new
        self._adopt = adopt

    def adopt(self, message: Any) -> Any:
        """The TableInfo of a relation the catalog no longer shows as it was, or None.

        Our own publication holds only captured tables and the log, so a Relation of a
        table we do not know is one created after capture last started and since dropped
        or changed (a restart replays the stream from the slot's position).  Its rows
        and its DDL events must still be published; the Relation message says its
        columns and its replica identity columns (the key).
        """
        if not self._adopt or message.relid == self.relid or message.replica_identity not in ("d", "i"):
            return None
        from producer.sources.postgres import ColumnInfo, TableInfo

        columns = tuple(ColumnInfo(c.name, c.type_oid, c.type_oid, "", False) for c in message.columns)
        key = tuple(c.name for c in message.columns if c.in_identity)
        if not key:
            return None
        info = TableInfo(message.relid, message.namespace, message.name, columns, key, message.replica_identity,
                         True, True)
        self._captured[message.relid] = info
        log.info("following table %s, created while capture was away", info.qualified)
        return info

    def change(self, values: list) -> TableChanges | None:
        """The DDL event of one log row (id, tag, object_identity, statement, relid, old, new),
        or None for a table not captured.  Raises SourceError for a malformed row."""
        try:
            tag, statement = _text(values[1]) or "", _text(values[3]) or ""
            relid = int(_text(values[4]))
            old_text, new_text = _text(values[5]), _text(values[6])
            old = json.loads(old_text) if old_text else None
            new = json.loads(new_text) if new_text else None
        except (IndexError, ValueError, TypeError) as exc:
            raise SourceError(f"replication stream: malformed schema-change log row: {exc}") from exc
        info = self._captured.get(relid)
        if info is None and not self._follows(old, new):
            return None
        ddl = ddl_of(tag, statement, old, new)
        self._follow(relid, info, new)
        if new is None:
            return TableChanges(ddl.object, Op.DDL, [c["name"] for c in old["columns"]], list(old["key"]), [], ddl)
        return TableChanges(ddl.object, Op.DDL, ddl.definition.names, list(ddl.definition.key), [], ddl)

    def _follows(self, old: dict | None, new: dict | None) -> bool:
        """Whether the change of a table we do not know now is one of ours: a keyed table
        created in the captured schemas, or (see ``adopt``) one our publication held and
        that was changed or dropped while capture was away."""
        if old is None:
            if new is not None and self._capture_new and new.get("keyed"):
                return True
            if new is not None:
                log.warning("table %s was created without a key (or outside the captured tables): not captured",
                            _qualified(new))
            return False
        return self._adopt and bool(old.get("keyed"))

    def _follow(self, relid: int, info: Any, new: dict | None) -> None:
        if new is None:
            self._captured.pop(relid, None)
            return
        from producer.sources.postgres import ColumnInfo, TableInfo

        columns = tuple(ColumnInfo(c["name"], int(c["typid"]), _base(info, c), c["type"], not c["nullable"])
                        for c in new["columns"])
        if info is None:
            info = TableInfo(relid, new["schema"], new["name"], columns, tuple(new["key"]), "d", True, True)
        key = tuple(new["key"]) or info.key
        self._captured[relid] = replace(info, schema=new["schema"], name=new["name"], columns=columns, key=key)


def _base(info: Any, column: dict) -> int:
    """The base type of a column we knew with the same type (domains), else its own type."""
    if info is not None:
        for known in info.columns:
            if known.name == column["name"] and known.type_oid == int(column["typid"]):
                return known.base_oid
    return int(column["typid"])

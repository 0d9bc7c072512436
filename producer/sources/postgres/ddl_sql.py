"""The server side of ``ddl``: the functions the event triggers run, as SQL text.

Formatted with ``ddl.names(slot)`` (identifiers) and the capture's literals
(``publication``, ``schemas``, ``add_new``, ``full``, ``busy``).  Kept apart from the
Python that reads their output so that each file stays readable.
"""
from __future__ import annotations

# A table's definition as the mirror needs it; NULL for anything but a permanent table, and
# for timefunnel's own tables (a mirror's or a switchback's _timefunnel_state): never captured.
DEF_FN = """
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
WHERE c.oid = rel AND c.relkind = 'r' AND c.relpersistence = 'p' AND c.relname NOT LIKE {internal}
$f$"""

# Whether the capture's publication (ours or the operator's, whatever its form) publishes rel.
PUB_FN = """
CREATE OR REPLACE FUNCTION {schema}.{pubfn}(rel oid) RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog AS $f$
SELECT EXISTS (SELECT 1 FROM pg_publication_tables t JOIN pg_class c ON c.relname = t.tablename
               JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = t.schemaname
               WHERE t.pubname = {publication} AND c.oid = rel)
$f$"""

# The rows of rel as they are now, one log row each: a JSON array of the columns' text forms
# (attnum order, generated columns left out, as pgoutput sends them), written with the
# stream's own session settings so that a value reads the same as from the stream.  The
# log rows are deleted again at once: their inserts stay in the WAL, which is all capture
# reads, and the table stays empty.
ROWS_FN = """
CREATE OR REPLACE FUNCTION {schema}.{rowsfn}(rel oid) RETURNS void LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog
SET datestyle = 'ISO' SET intervalstyle = 'postgres' SET timezone = 'UTC' SET extra_float_digits = 3
SET bytea_output = 'hex' AS $f$
DECLARE cols text;
BEGIN
  SELECT string_agg(format('CASE WHEN t.%1$I IS NULL THEN NULL ELSE format(%2$L, t.%1$I) END', a.attname, '%s'),
                    ', ' ORDER BY a.attnum) INTO cols
  FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
  IF cols IS NULL THEN RETURN; END IF;
  -- Writers that commit before this transaction must be in the copy: wait for them and hold
  -- off new ones until commit (a CREATE or an ALTER TABLE holds a stronger lock already).
  -- Each statement of this function reads with a new snapshot (READ COMMITTED).
  EXECUTE format('LOCK TABLE %s IN SHARE MODE', rel::regclass);
  EXECUTE format('INSERT INTO {schema}.{rows}(relid, vals) SELECT %s, to_jsonb(ARRAY[%s]::text[]) FROM %s t',
                 rel, cols, rel::regclass);
  DELETE FROM {schema}.{rows} WHERE relid = rel;
END $f$"""

# One table touched by a command: store its new definition and, when it differs from the
# stored one, log both.  A table that joins the publication after it had rows (CREATE TABLE
# AS, a key added later, an operator's ALTER PUBLICATION ... ADD TABLE) is logged as created
# (old NULL) and followed by its rows: pgoutput never sent them.
LOG_FN = """
CREATE OR REPLACE FUNCTION {schema}.{logfn}(rel oid, tag text, identity text) RETURNS void LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $f$
DECLARE old jsonb; new jsonb; was boolean; published boolean; added boolean := false;
BEGIN
  SELECT s.definition, s.published INTO old, was FROM {schema}.{defs} s WHERE s.relid = rel;
  new := {schema}.{deffn}(rel);
  IF new IS NOT NULL AND {add_new} AND NOT {schema}.{pubfn}(rel)
     AND EXISTS (SELECT 1 FROM pg_publication WHERE pubname = {publication}) THEN
    -- Under --replica-identity-full every table capture takes gets FULL, so a keyless one is captured too.
    IF {full} AND (SELECT relreplident FROM pg_class WHERE oid = rel) <> 'f' THEN
      EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel::regclass);
      new := {schema}.{deffn}(rel);
    END IF;
    -- Publishing a table without identity would make production's UPDATE and DELETE fail.
    IF (new->>'keyed')::boolean THEN
      EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', {publication}, rel::regclass);
      added := true;
    END IF;
  END IF;
  published := new IS NOT NULL AND {schema}.{pubfn}(rel);
  IF old IS NOT DISTINCT FROM new AND was IS NOT DISTINCT FROM published THEN RETURN; END IF;
  IF new IS NULL THEN
    DELETE FROM {schema}.{defs} WHERE relid = rel;
  ELSE
    INSERT INTO {schema}.{defs} VALUES (rel, new, published)
    ON CONFLICT (relid) DO UPDATE SET definition = EXCLUDED.definition, published = EXCLUDED.published;
  END IF;
  IF published AND NOT COALESCE(was, false) AND (added OR old IS NOT NULL) THEN
    INSERT INTO {schema}.{log}(tag, object_identity, statement, relid, old, new, published)
    VALUES (tag, identity, current_query(), rel, NULL, new, true);
    PERFORM {schema}.{rowsfn}(rel);
  ELSE
    INSERT INTO {schema}.{log}(tag, object_identity, statement, relid, old, new, published)
    VALUES (tag, identity, current_query(), rel, old, new, published);
  END IF;
END $f$"""

# The event triggers' function.  The DDL it runs itself (REPLICA IDENTITY FULL, ALTER
# PUBLICATION) fires the event triggers again: the transaction-local flag {busy} makes those
# inner calls return at once, the outer call reads the result.
TRIGGER_FN = """
CREATE OR REPLACE FUNCTION {schema}.{trgfn}() RETURNS event_trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $f$
DECLARE r record; rel oid; done oid[] := '{{}}';
BEGIN
  IF current_setting({busy}, true) = 'on' THEN RETURN; END IF;
  PERFORM set_config({busy}, 'on', true);
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
             WHERE (object_type IN ('table', 'index', 'table column') AND schema_name = ANY({schemas}))
                OR object_type = 'publication relation' LOOP
      rel := CASE WHEN r.object_type = 'index' THEN (SELECT indrelid FROM pg_index WHERE indexrelid = r.objid)
                  WHEN r.object_type = 'publication relation' THEN (
                    SELECT pr.prrelid FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                    JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE pr.oid = r.objid AND p.pubname = {publication} AND n.nspname = ANY({schemas}))
                  ELSE r.objid END;
      CONTINUE WHEN rel IS NULL OR rel = ANY(done);
      done := done || rel;
      PERFORM {schema}.{logfn}(rel, r.command_tag, r.object_identity);
    END LOOP;
  END IF;
  PERFORM set_config({busy}, 'off', true);
END $f$"""

"""Schema changes on a mirror: the SQL of a DDL event's actions, per dialect (pure).

A DDL event (``funnel.ddl``) carries the definition difference as actions.  Each
dialect turns them into statements that the sink runs in the same database
transaction as the rows around them and the position, so a DDL is applied whole, in
order, exactly once.  What a dialect cannot express raises SinkError before any of it
runs: the applier stops before that transaction, and the hint says what to do.

SQLite mirrors keep columns untyped and nullable (values keep their exact type, see
``applier.sinks.sqlite_sql``): a change of nullability or default changes nothing a
mirror holds (every event carries every column) and is skipped; a change of type
would change the stored values of existing rows on production but not on the
mirror, so it is refused.
"""
from __future__ import annotations

import re

from applier.sinks import postgres_sql, sqlite_sql
from funnel import ddl as d
from funnel.databases.names import qualified_name, quote_ident
from funnel.errors import SinkError

_SQLITE_IGNORED = (d.SET_NOT_NULL, d.DROP_NOT_NULL, d.SET_DEFAULT, d.DROP_DEFAULT)


def sqlite_statements(ddl: d.Ddl, table: str, txid: str) -> list[str]:
    """The SQLite statements applying ``ddl`` of source table ``table`` (its event name).

    Raises SinkError naming the table and txid for an action SQLite cannot express.
    """
    current = sqlite_sql.mirror_table_name(ddl.object)
    statements: list[str] = []
    for action in ddl.actions:
        if action.kind in _SQLITE_IGNORED:
            continue
        if action.kind == d.RENAME_TABLE:
            target = sqlite_sql.mirror_table_name(action.to or table)
            statements.append(f"ALTER TABLE {_q(current)} RENAME TO {_q(target)}")
            current = target
            continue
        statements.append(_sqlite_action(ddl, action, current, table, txid))
    return statements


def _sqlite_action(ddl: d.Ddl, action: d.Action, current: str, table: str, txid: str) -> str:
    q = _q
    if action.kind == d.CREATE_TABLE:
        definition = _definition(ddl, table, txid)
        return sqlite_sql.create_table_sql(sqlite_sql.mirror_table_name(table), definition.names,
                                           definition.key)
    if action.kind == d.DROP_TABLE:
        return f"DROP TABLE IF EXISTS {q(current)}"
    if action.kind == d.RENAME_COLUMN:
        return f"ALTER TABLE {q(current)} RENAME COLUMN {q(action.name)} TO {q(action.to or '')}"
    if action.kind == d.DROP_COLUMN:
        return f"ALTER TABLE {q(current)} DROP COLUMN {q(action.name)}"
    if action.kind == d.ADD_COLUMN:
        default = _sqlite_default(action.column.default if action.column is not None else None)
        if default is False:
            raise unsupported("SQLite", ddl, action, txid)
        # Existing rows take the default on production too; untyped, like every mirror column.
        return f"ALTER TABLE {q(current)} ADD COLUMN {q(action.name)}" + (f" DEFAULT {default}" if default else "")
    if action.kind == d.CREATE_INDEX:
        return _create_index(action, q(current), q)
    if action.kind == d.DROP_INDEX:
        return f"DROP INDEX IF EXISTS {q(action.name)}"
    raise unsupported("SQLite", ddl, action, txid)


def postgres_statements(ddl: d.Ddl, table: str, txid: str) -> list[str]:
    """The PostgreSQL statements applying ``ddl`` of source table ``table`` (its event name).

    Types are production's type text, checked to be a plain type name.  Raises SinkError
    for an untyped column (a SQLite source) or an unknown action.
    """
    schema, name = postgres_sql.mirror_table_name(ddl.object)
    statements: list[str] = []
    for action in ddl.actions:
        target = qualified_name(schema, name)
        if action.kind == d.RENAME_TABLE:
            new_schema, new_name = postgres_sql.mirror_table_name(action.to or table)
            if new_schema != schema:
                statements.append(f"ALTER TABLE {target} SET SCHEMA {_pq(new_schema)}")
                target = qualified_name(new_schema, name)
            statements.append(f"ALTER TABLE {target} RENAME TO {_pq(new_name)}")
            schema, name = new_schema, new_name
            continue
        statements.append(_postgres_action(ddl, action, target, schema, table, txid))
    return statements


def _postgres_action(ddl: d.Ddl, action: d.Action, target: str, schema: str, table: str, txid: str) -> str:
    q = _pq
    column = action.column
    if action.kind == d.CREATE_TABLE:
        definition = _definition(ddl, table, txid)
        new_schema, new_name = postgres_sql.mirror_table_name(table)
        spec = {"columns": [{"name": c.name, "type": _pg_type(ddl, c, txid), "not_null": not c.nullable}
                            for c in definition.columns], "key": list(definition.key)}
        return postgres_sql.create_table_sql(new_schema, new_name, spec)
    if action.kind == d.DROP_TABLE:
        return f"DROP TABLE IF EXISTS {target}"
    if action.kind == d.RENAME_COLUMN:
        return f"ALTER TABLE {target} RENAME COLUMN {q(action.name)} TO {q(action.to or '')}"
    if action.kind == d.DROP_COLUMN:
        return f"ALTER TABLE {target} DROP COLUMN {q(action.name)}"
    if action.kind == d.ADD_COLUMN and column is not None:
        default = f" DEFAULT {column.default}" if column.default else ""
        not_null = "" if column.nullable else " NOT NULL"
        return f"ALTER TABLE {target} ADD COLUMN {q(action.name)} {_pg_type(ddl, column, txid)}{default}{not_null}"
    if action.kind == d.ALTER_TYPE and column is not None:
        type_text = _pg_type(ddl, column, txid)
        return (f"ALTER TABLE {target} ALTER COLUMN {q(action.name)} TYPE {type_text} "
                f"USING {q(action.name)}::{type_text}")
    if action.kind in (d.SET_NOT_NULL, d.DROP_NOT_NULL):
        verb = "SET" if action.kind == d.SET_NOT_NULL else "DROP"
        return f"ALTER TABLE {target} ALTER COLUMN {q(action.name)} {verb} NOT NULL"
    if action.kind == d.SET_DEFAULT and column is not None and column.default:
        return f"ALTER TABLE {target} ALTER COLUMN {q(action.name)} SET DEFAULT {column.default}"
    if action.kind == d.DROP_DEFAULT:
        return f"ALTER TABLE {target} ALTER COLUMN {q(action.name)} DROP DEFAULT"
    if action.kind == d.CREATE_INDEX:
        return _create_index(action, target, q)
    if action.kind == d.DROP_INDEX:
        return f"DROP INDEX IF EXISTS {q(schema)}.{q(action.name)}"
    raise unsupported("PostgreSQL", ddl, action, txid)


def _create_index(action: d.Action, table: str, quote) -> str:
    """CREATE INDEX in the words SQLite and PostgreSQL share; ``table`` is already quoted."""
    unique = "UNIQUE " if action.unique else ""
    return (f"CREATE {unique}INDEX IF NOT EXISTS {quote(action.name)} ON {table} "
            f"({', '.join(quote(c) for c in action.columns)})")


def _pg_type(ddl: d.Ddl, column: d.ColumnDef, txid: str) -> str:
    if not column.type.strip():
        raise SinkError(
            f"schema change of {ddl.object!r} (txid {txid}): column {column.name!r} has no declared type, "
            "which a PostgreSQL mirror needs",
            hint="Apply this change to the mirror by hand, then set the mirror's position past this transaction.")
    return postgres_sql.check_type_text(ddl.object, column.name, column.type)


def _definition(ddl: d.Ddl, table: str, txid: str) -> d.TableDef:
    if ddl.definition is None or not ddl.definition.columns:
        raise SinkError(f"schema change of {table!r} (txid {txid}) creates a table without a definition")
    return ddl.definition


# A literal default as PostgreSQL writes it ('red'::text, 0, '1.5'::numeric, true), casts and all.
_PG_LITERAL = re.compile(r"\(?(?P<literal>'(?:[^']|'')*'|-?\d+(?:\.\d+)?|true|false)\)?(?:::[\w .\[\]()\",]+)?")


def _sqlite_default(default: str | None) -> str | None | bool:
    """The default as SQLite accepts it, None for none, False when it is no literal.

    SQLite sources write defaults SQLite reads already (passed as they are); PostgreSQL
    ones carry casts (``'red'::text``), which SQLite rejects: a cast literal loses its
    cast, a cast expression is refused (SQLite refuses non-constant defaults itself).
    """
    if not default:
        return None
    found = _PG_LITERAL.fullmatch(default.strip())
    if found is None:
        return default if "::" not in default else False
    literal = found.group("literal")
    return {"true": "1", "false": "0"}.get(literal, literal)


def unsupported(dialect: str, ddl: d.Ddl, action: d.Action, txid: str) -> SinkError:
    """The error for an action a mirror dialect cannot apply: nothing of the transaction is applied."""
    return SinkError(
        f"a {dialect} mirror cannot apply {action.kind.replace('_', ' ')} {action.name!r} of table "
        f"{ddl.object!r} (txid {txid}, {ddl.tag}); the applier stopped before that transaction",
        hint="Mirror this funnel into a database that can apply the change (a PostgreSQL mirror applies "
             "every action), or re-create this mirror from a new funnel after the change.",
    )


_q = _pq = quote_ident


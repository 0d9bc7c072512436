"""Schema changes (DDL) as funnel events: the model and the pure definition difference.

A DDL travels as a ``TableChanges`` group with ``op=Op.DDL``, no rows, and a ``Ddl``
in its ``ddl`` field, in the source transaction where it happened, so a mirror applies
it in order with the rows around it.  ``table`` is the table's event name after the
change (before it, for a DROP TABLE), ``columns`` and ``key`` its columns and key after
the change.

A ``Ddl`` carries what happened (``tag``, ``statement``, ``object``), the resulting
table definition (``definition``; None after a DROP TABLE) and the *actions*: the
definition difference as a list of steps a mirror of any dialect can translate
(``add_column``, ``rename_column``...).  Actions are computed at the source by ``diff``
because only the source knows which column was renamed rather than dropped and added.

On the wire a Ddl is one JSON text (``to_json``/``from_json``) in the nullable ``ddl``
field of change_batch v2, so the Avro schema does not change with every new action.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from funnel.errors import CodecError

# Action kinds, in the order ``diff`` emits them for one table.
CREATE_TABLE = "create_table"
DROP_TABLE = "drop_table"
RENAME_TABLE = "rename_table"
RENAME_COLUMN = "rename_column"
DROP_COLUMN = "drop_column"
ADD_COLUMN = "add_column"
ALTER_TYPE = "alter_type"
SET_NOT_NULL = "set_not_null"
DROP_NOT_NULL = "drop_not_null"
SET_DEFAULT = "set_default"
DROP_DEFAULT = "drop_default"
CREATE_INDEX = "create_index"
DROP_INDEX = "drop_index"
ACTIONS = (CREATE_TABLE, DROP_TABLE, RENAME_TABLE, RENAME_COLUMN, DROP_COLUMN, ADD_COLUMN, ALTER_TYPE,
           SET_NOT_NULL, DROP_NOT_NULL, SET_DEFAULT, DROP_DEFAULT, CREATE_INDEX, DROP_INDEX)


@dataclass(frozen=True, slots=True)
class ColumnDef:
    """One column: its declared type as the source spells it ('' when untyped)."""

    name: str
    type: str = ""
    nullable: bool = True
    default: str | None = None  # the default as an SQL expression of the source


@dataclass(frozen=True, slots=True)
class TableDef:
    """A table's definition after a change: columns in order and the primary key."""

    columns: tuple[ColumnDef, ...]
    key: tuple[str, ...] = ()

    def column(self, name: str) -> ColumnDef | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass(frozen=True, slots=True)
class Action:
    """One step of a definition difference.

    ``name`` is the table (table actions), the column or the index; ``to`` the new name
    of a rename; ``column`` the definition a column action sets; ``columns`` and
    ``unique`` describe an index.
    """

    kind: str
    name: str
    to: str | None = None
    column: ColumnDef | None = None
    columns: tuple[str, ...] = ()
    unique: bool = False


@dataclass(frozen=True, slots=True)
class Ddl:
    """A schema change of one table (see the module docstring)."""

    tag: str  # "CREATE TABLE", "ALTER TABLE", "DROP TABLE", "CREATE INDEX"...
    statement: str  # the statement as the source knows it (SQLite: the table's new CREATE text)
    object: str  # the table's event name before the change
    actions: tuple[Action, ...] = ()
    definition: TableDef | None = None

    @property
    def tables(self) -> list[str]:
        """Every table name this change touches (before and after a rename)."""
        names = [self.object]
        names += [a.to for a in self.actions if a.kind == RENAME_TABLE and a.to]
        return names

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Ddl:
        """Raises CodecError for text that is not a Ddl."""
        try:
            data = json.loads(text)
            return Ddl(
                tag=data["tag"], statement=data["statement"], object=data["object"],
                actions=tuple(_action(a) for a in data.get("actions", ())),
                definition=_table(data["definition"]) if data.get("definition") else None,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CodecError(f"malformed DDL event: {exc}") from exc


def _column(data: Mapping[str, Any]) -> ColumnDef:
    return ColumnDef(data["name"], data.get("type", ""), bool(data.get("nullable", True)), data.get("default"))


def _table(data: Mapping[str, Any]) -> TableDef:
    return TableDef(tuple(_column(c) for c in data["columns"]), tuple(data.get("key", ())))


def _action(data: Mapping[str, Any]) -> Action:
    if data["kind"] not in ACTIONS:
        raise ValueError(f"unknown DDL action {data['kind']!r}")
    column = _column(data["column"]) if data.get("column") else None
    return Action(data["kind"], data["name"], data.get("to"), column, tuple(data.get("columns", ())),
                  bool(data.get("unique", False)))


def diff(table: str, old: TableDef | None, new: TableDef | None,
         renames: Mapping[str, str] | None = None, new_name: str | None = None) -> list[Action]:
    """The actions that turn table ``table`` defined as ``old`` into ``new``.

    ``old`` None: the table is created; ``new`` None: it is dropped.  ``renames`` maps
    old column names to new ones (the source knows them; by name alone a rename looks
    like a drop and an add, which loses the column's values).  ``new_name``: the table
    is renamed.  Column actions name the table's columns by their names at that step.
    """
    if new is None:
        return [Action(DROP_TABLE, table)]
    if old is None:
        return [Action(CREATE_TABLE, new_name or table)]
    actions: list[Action] = []
    if new_name and new_name != table:
        actions.append(Action(RENAME_TABLE, table, to=new_name))
    renames = dict(renames or {})
    renamed = {renames.get(c.name, c.name): c for c in old.columns}
    for before, after in renames.items():
        if after and after != before:
            actions.append(Action(RENAME_COLUMN, before, to=after))
    new_names = set(new.names)
    for name in renamed:
        if name not in new_names:
            actions.append(Action(DROP_COLUMN, name))
    for column in new.columns:
        previous = renamed.get(column.name)
        if previous is None:
            actions.append(Action(ADD_COLUMN, column.name, column=column))
        else:
            actions += _column_changes(previous, column)
    return actions


def _column_changes(old: ColumnDef, new: ColumnDef) -> list[Action]:
    actions = []
    if old.type != new.type:
        actions.append(Action(ALTER_TYPE, new.name, column=new))
    if old.nullable != new.nullable:
        actions.append(Action(DROP_NOT_NULL if new.nullable else SET_NOT_NULL, new.name, column=new))
    if old.default != new.default:
        actions.append(Action(DROP_DEFAULT if new.default is None else SET_DEFAULT, new.name, column=new))
    return actions


def describe(ddl: Ddl) -> str:
    """One line for ``funnel inspect``: the tag, the object and the actions."""
    steps = ", ".join(_describe_action(a) for a in ddl.actions) or "no change"
    return f"{ddl.tag} {ddl.object}: {steps}"


def _describe_action(action: Action) -> str:
    if action.to:
        return f"{action.kind} {action.name} -> {action.to}"
    if action.kind in (ADD_COLUMN, ALTER_TYPE) and action.column is not None and action.column.type:
        return f"{action.kind} {action.name} {action.column.type}"
    return f"{action.kind} {action.name}"

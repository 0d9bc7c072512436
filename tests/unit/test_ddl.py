"""Schema changes: the definition difference (funnel.ddl) and its SQL per mirror dialect (applier.sinks.ddl)."""
from __future__ import annotations

import sqlite3

import pytest

from applier.sinks.ddl import postgres_statements, sqlite_statements
from funnel import ddl as d
from funnel.ddl import Action, ColumnDef, Ddl, TableDef, diff
from funnel.errors import CodecError, SinkError

OLD = TableDef((ColumnDef("id", "INTEGER", False), ColumnDef("name", "TEXT"), ColumnDef("qty", "INTEGER")), ("id",))


def test_a_rename_is_not_a_drop_and_an_add() -> None:
    new = TableDef((ColumnDef("id", "INTEGER", False), ColumnDef("title", "TEXT"), ColumnDef("qty", "INTEGER")), ("id",))
    assert diff("main.t", OLD, new, {"name": "title"}) == [Action(d.RENAME_COLUMN, "name", to="title")]
    by_name = diff("main.t", OLD, new)
    assert [a.kind for a in by_name] == [d.DROP_COLUMN, d.ADD_COLUMN]


def test_added_dropped_and_changed_columns() -> None:
    new = TableDef((ColumnDef("id", "INTEGER", False), ColumnDef("qty", "BIGINT", False, "0"),
                    ColumnDef("note", "TEXT", default="'x'")), ("id",))
    actions = diff("main.t", OLD, new)
    assert [(a.kind, a.name) for a in actions] == [
        (d.DROP_COLUMN, "name"), (d.ALTER_TYPE, "qty"), (d.SET_NOT_NULL, "qty"), (d.SET_DEFAULT, "qty"),
        (d.ADD_COLUMN, "note")]
    assert actions[-1].column == ColumnDef("note", "TEXT", default="'x'")


def test_create_drop_and_rename_table() -> None:
    assert diff("main.t", None, OLD) == [Action(d.CREATE_TABLE, "main.t")]
    assert diff("main.t", OLD, None) == [Action(d.DROP_TABLE, "main.t")]
    assert diff("main.t", OLD, OLD, new_name="main.u") == [Action(d.RENAME_TABLE, "main.t", to="main.u")]


def test_ddl_json_round_trip_and_bad_text() -> None:
    ddl = Ddl("ALTER TABLE", "ALTER TABLE t ADD c", "main.t", tuple(diff("main.t", OLD, OLD, {"qty": "n"})), OLD)
    assert Ddl.from_json(ddl.to_json()) == ddl
    with pytest.raises(CodecError):
        Ddl.from_json('{"tag": "X", "statement": "", "object": "t", "actions": [{"kind": "explode", "name": "t"}]}')


def test_sqlite_statements_apply_to_a_real_table() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute('CREATE TABLE "t" ("id", "name", "qty", PRIMARY KEY ("id"))')
    conn.execute("INSERT INTO t VALUES (1, 'a', 2)")
    new = TableDef((ColumnDef("id"), ColumnDef("title"), ColumnDef("note", default="'x'")), ("id",))
    actions = (Action(d.RENAME_COLUMN, "name", to="title"), Action(d.DROP_COLUMN, "qty"),
               Action(d.ADD_COLUMN, "note", column=ColumnDef("note", default="'x'")),
               Action(d.SET_NOT_NULL, "title"), Action(d.CREATE_INDEX, "t_title", columns=("title",)),
               Action(d.RENAME_TABLE, "main.t", to="main.u"))
    for statement in sqlite_statements(Ddl("ALTER TABLE", "", "main.t", actions, new), "main.u", "7"):
        conn.execute(statement)
    assert conn.execute("SELECT * FROM u").fetchall() == [(1, "a", "x")]
    assert conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index' AND name = 't_title'").fetchone()


def test_sqlite_refuses_a_type_change_before_running_anything() -> None:
    ddl = Ddl("ALTER TABLE", "ALTER TABLE t ALTER qty TYPE numeric", "public.t",
              (Action(d.ADD_COLUMN, "x", column=ColumnDef("x")), Action(d.ALTER_TYPE, "qty", column=ColumnDef("qty", "numeric"))))
    with pytest.raises(SinkError, match="cannot apply alter type 'qty' of table 'public.t' \\(txid 42"):
        sqlite_statements(ddl, "public.t", "42")


def test_postgres_statements() -> None:
    actions = (Action(d.ADD_COLUMN, "note", column=ColumnDef("note", "text", True, "'x'::text")),
               Action(d.ALTER_TYPE, "qty", column=ColumnDef("qty", "numeric(12,2)")),
               Action(d.RENAME_TABLE, "public.t", to="public.u"), Action(d.DROP_NOT_NULL, "note"))
    assert postgres_statements(Ddl("ALTER TABLE", "", "public.t", actions), "public.u", "1") == [
        'ALTER TABLE "public"."t" ADD COLUMN "note" text DEFAULT \'x\'::text',
        'ALTER TABLE "public"."t" ALTER COLUMN "qty" TYPE numeric(12,2) USING "qty"::numeric(12,2)',
        'ALTER TABLE "public"."t" RENAME TO "u"',
        'ALTER TABLE "public"."u" ALTER COLUMN "note" DROP NOT NULL',
    ]
    with pytest.raises(SinkError, match="no declared type"):
        postgres_statements(Ddl("ALTER TABLE", "", "main.t", (Action(d.ADD_COLUMN, "c", column=ColumnDef("c")),)),
                            "main.t", "1")


# --- the SQLite mirror applies a DDL in order, in the same transaction as the rows -------

def _tx(txid: str, *groups, offset: int = 0):
    from applier.transaction import Transaction
    from funnel.events import ChangeBatch, Kind
    rows = sum(len(g.rows) for g in groups)
    return Transaction(txid, 1_000 + offset, Kind.CHANGES, offset, offset,
                       [ChangeBatch("shop", txid, 1_000 + offset, offset, 0, rows, Kind.CHANGES, list(groups))])


def _position(next_offset: int):
    from applier.transaction import MirrorPosition
    return MirrorPosition("shop", "m1", "shop", 0, next_offset, None, None, None, snapshot_done=True)


def test_sqlite_sink_applies_rows_then_ddl_then_rows(tmp_path) -> None:
    from applier.sinks.sqlite import SqliteSink
    from funnel.events import Op, Row, TableChanges
    path = tmp_path / "m.db"
    sink = SqliteSink(path)
    sink.apply([_tx("1", TableChanges("main.t", Op.INSERT, ["id", "name"], ["id"], [Row(None, [1, "a"])]))],
               _position(1))
    new = TableDef((ColumnDef("id"), ColumnDef("title"), ColumnDef("n", default="7")), ("id",))
    ddl = Ddl("ALTER TABLE", "", "main.t", (Action(d.RENAME_COLUMN, "name", to="title"),
                                            Action(d.ADD_COLUMN, "n", column=ColumnDef("n", default="7"))), new)
    sink.apply([_tx("2", TableChanges("main.t", Op.INSERT, ["id", "name"], ["id"], [Row(None, [2, "b"])]),
                    TableChanges("main.t", Op.DDL, new.names, ["id"], [], ddl),
                    TableChanges("main.t", Op.INSERT, new.names, ["id"], [Row(None, [3, "c", 9])]), offset=1)],
               _position(2))
    # A type change SQLite cannot express: nothing of the call is applied, not even the rows before it.
    bad = Ddl("ALTER TABLE", "", "main.t", (Action(d.ALTER_TYPE, "n", column=ColumnDef("n", "numeric")),), new)
    with pytest.raises(SinkError, match="cannot apply alter type"):
        sink.apply([_tx("3", TableChanges("main.t", Op.INSERT, new.names, ["id"], [Row(None, [4, "d", 1])]),
                        TableChanges("main.t", Op.DDL, new.names, ["id"], [], bad), offset=2)], _position(3))
    sink.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT id, title, n FROM t ORDER BY id").fetchall() == [(1, "a", 7), (2, "b", 7), (3, "c", 9)]
    assert conn.execute("SELECT next_offset FROM _timefunnel_state").fetchone() == (2,)


def test_backward_seek_refuses_to_cross_a_schema_change() -> None:
    from applier.undo import UndoError, invert
    from funnel.events import Op, TableChanges
    ddl = Ddl("DROP TABLE", "DROP TABLE t", "main.t", (Action(d.DROP_TABLE, "main.t"),))
    with pytest.raises(UndoError, match="changed the schema of 'main.t' \\(DROP TABLE\\)"):
        invert(_tx("9", TableChanges("main.t", Op.DDL, [], [], [], ddl)))


def test_a_ddl_after_a_full_chunk_stays_in_the_transactions_last_chunk() -> None:
    from funnel.events import Op, Row, TableChanges
    from producer.publisher import chunk_transaction, split_batch
    from producer.sources.base import SourceTransaction
    ddl = Ddl("DROP TABLE", "DROP TABLE t", "main.t", (Action(d.DROP_TABLE, "main.t"),))
    rows = TableChanges("main.t", Op.DELETE, ["id"], ["id"], [Row([i], None) for i in range(4)])
    tx = SourceTransaction("7", 1, 1, [rows, TableChanges("main.t", Op.DDL, [], [], [], ddl)])
    batches = chunk_transaction(tx, "shop", chunk_rows=2)
    assert [b.row_count for b in batches] == [2, 2]
    assert [b.ends_transaction for b in batches] == [False, True]
    assert batches[-1].changes[-1].ddl == ddl
    assert split_batch(batches[-1])[0].changes[-1].ddl == ddl or split_batch(batches[-1])[1].changes[-1].ddl == ddl


def test_backward_seek_across_a_ddl_changes_nothing_even_past_a_batch(monkeypatch) -> None:
    """The refusal comes before the first undo batch is applied, however many batches come first."""
    from applier import pointintime
    from funnel.codec import EventCodec
    from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges
    from funnel.reader import TransactionSummary

    codec = EventCodec()
    ddl = Ddl("ALTER TABLE", "", "main.t", (Action(d.ADD_COLUMN, "c", column=ColumnDef("c")),))
    groups = [TableChanges("main.t", Op.INSERT, ["id"], ["id"], [Row(None, [0])]),
              TableChanges("main.t", Op.DDL, ["id", "c"], ["id"], [], ddl)]
    groups += [TableChanges("main.t", Op.INSERT, ["id", "c"], ["id"], [Row(None, [i, None])]) for i in range(1, 5)]
    summaries = []
    for i, group in enumerate(groups):
        batch = ChangeBatch("src", f"t{i}", 1_000 + i, i, 0, len(group.rows), Kind.CHANGES, [group])
        summaries.append(TransactionSummary(f"t{i}", batch.commit_ts, Kind.CHANGES, i, i, len(group.rows), 1,
                                            [codec.encode(batch)]))

    class Reader:
        topic = "shop"

        def transactions(self, start, end, keep_payloads=False):
            yield from summaries[start:end]

    class Sink:
        applied: list = []

        def apply(self, transactions, position):
            self.applied.append(transactions)
            return 0

    monkeypatch.setattr(pointintime, "UNDO_BATCH_ROWS", 1)
    from applier.undo import UndoError
    sink = Sink()
    with pytest.raises(UndoError, match="changed the schema of 'main.t' \\(ALTER TABLE\\)"):
        pointintime.undo_back(sink, Reader(), _position(len(groups)), 0, codec)
    assert sink.applied == [], "nothing was undone before the refusal"

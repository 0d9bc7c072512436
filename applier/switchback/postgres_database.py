"""The switchback's direct work on a PostgreSQL database (see ``databases``).

PostgreSQL freeze: ``ALTER DATABASE ... SET default_transaction_read_only = on`` and the
termination of every other client session of the database except timefunnel's own
(``application_name`` exactly one of ``funnel.databases.postgres.OUR_APPLICATION_NAMES``,
which the connection factory forces whatever the operator's URL says: an application that
calls itself ``timefunnel-fake`` is ended like any other); new sessions start read-only.
A session that explicitly asks for a read-write transaction is not stopped by that:
the freeze hook must stop the application.
"""
from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from typing import Any

from applier.sinks.sqlite_sql import STATE_TABLE
from applier.sinks.state import position_from_row, position_to_row
from applier.switchback.compare import ResetPlan, TableChecksum, TableShape, WriteActivity, checksum_rows
from applier.switchback.databases import Database, database_errors, fetch_all
from funnel.errors import SwitchbackError
from applier.transaction import MirrorPosition
from funnel.databases import postgres as pg
from funnel.databases import postgres_catalog
from funnel.databases.names import INTERNAL_PREFIX, POSTGRES_CAPTURE_SCHEMA
from funnel.databases.names import quote_ident as quote
from funnel.identity import postgres_identity


_PG_OTHER_SESSIONS = """
SELECT pid, usename, application_name, state, backend_xid IS NOT NULL, left(query, 80)
FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend' AND coalesce(application_name, '') <> ALL(%s)"""

_OURS = (list(pg.OUR_APPLICATION_NAMES),)  # the sessions a freeze spares: timefunnel's own, by exact name
ROLE = "switchback"


class PostgresDatabase:
    kind = "postgresql"
    fold_case = False
    quiet_s = 2.5  # table statistics reach other sessions up to a second late

    def __init__(self, url: str) -> None:
        pg.conninfo(url, ROLE)  # raises ConfigError for a malformed URL
        self.url = url

    def _connect(self):
        conn = pg.connect(self.url, ROLE, error=SwitchbackError)
        # The switchback's own sessions write while the database is frozen (state row, unfreeze).
        conn.execute("SET default_transaction_read_only = off")
        return conn

    @database_errors
    def check(self, must_exist: bool) -> None:
        self._connect().close()

    @database_errors
    def identity(self) -> str:
        """The server's system identifier and the database's oid (funnel.identity)."""
        with self._connect() as conn:
            return postgres_identity(conn)

    @database_errors
    def tables(self) -> dict[str, TableShape]:
        with self._connect() as conn:
            # Partitioned tables as one table (their partitions are not compared on their own).
            tables = postgres_catalog.tables(
                conn, kinds="rp", roots_only=True, skip_internal=True,
                excluded=(*postgres_catalog.SYSTEM_SCHEMAS, POSTGRES_CAPTURE_SCHEMA))  # capture's DDL log
            oids = [oid for oid, _, _ in tables]
            columns, keys = postgres_catalog.columns(conn, oids), postgres_catalog.keys(conn, oids)
            shapes = {}
            for oid, schema, name in tables:
                shapes[f"{schema}.{name}"] = TableShape(f"{schema}.{name}", tuple(c.name for c in columns[oid]),
                                                        keys[oid].primary or ())
            return shapes

    @database_errors
    def ddl(self, table: str) -> list[str]:
        return []  # PostgreSQL mirrors create tables from the capture's definitions (create_tables)

    @database_errors
    def read_position(self, funnel: str, mirror: str) -> MirrorPosition | None:
        from applier.sinks.postgres_sql import position_select_sql

        with self._connect() as conn:
            if conn.execute("SELECT to_regclass(%s) IS NULL", (STATE_TABLE,)).fetchone()[0]:
                return None
            row = conn.execute(position_select_sql(), (funnel, mirror)).fetchone()
        return None if row is None else position_from_row(row)

    @database_errors
    def write_position(self, position: MirrorPosition) -> None:
        """Writes the state row even while the database is frozen (this session opts out)."""
        from applier.sinks.postgres_sql import create_state_table_sql, position_upsert_sql

        with self._connect() as conn:
            with conn.transaction():
                conn.execute(create_state_table_sql())
                conn.execute(position_upsert_sql(), position_to_row(position))

    @database_errors
    def forget_position(self, funnel: str, mirror: str) -> None:
        with self._connect() as conn:
            if conn.execute("SELECT to_regclass(%s) IS NULL", (STATE_TABLE,)).fetchone()[0]:
                return
            with conn.transaction():
                conn.execute(f"DELETE FROM {STATE_TABLE} WHERE funnel = %s AND mirror = %s", (funnel, mirror))
                if conn.execute(f"SELECT count(*) FROM {STATE_TABLE}").fetchone()[0] == 0:
                    conn.execute(f"DROP TABLE {STATE_TABLE}")

    @database_errors
    def reset(self, plan: ResetPlan, source: Database) -> None:
        """Drops and empties in one transaction; the reverse applier creates missing tables from the
        definitions the reverse capture publishes (``create_tables``)."""
        with self._connect() as conn, conn.transaction():
            for name in [p for p, _ in plan.recreate] + list(plan.drop):
                conn.execute(f"DROP TABLE {_pg_name(name)}")
            if plan.empty:
                conn.execute("TRUNCATE " + ", ".join(_pg_name(name) for name in plan.empty))

    def _counters(self, conn) -> dict[str, int]:
        rows = conn.execute("SELECT schemaname || '.' || relname, n_tup_ins + n_tup_upd + n_tup_del "
                            "FROM pg_stat_user_tables").fetchall()
        return {name: int(count) for name, count in rows if not name.split(".", 1)[1].startswith(INTERNAL_PREFIX)}

    def _writers(self, conn) -> list[str]:
        sessions = conn.execute(_PG_OTHER_SESSIONS, _OURS).fetchall()
        return [f"pid {pid} user {user} app {app!r} {state}: {query}"
                for pid, user, app, state, writing, query in sessions if writing]

    @database_errors
    def write_marker(self) -> Hashable:
        with self._connect() as conn:
            return tuple(sorted(self._counters(conn).items())) + tuple(self._writers(conn))

    @database_errors
    def activity_since(self, marker: Hashable) -> WriteActivity:
        before = {item[0]: item[1] for item in marker if isinstance(item, tuple)}  # type: ignore[union-attr]
        with self._connect() as conn:
            now = self._counters(conn)
            changes = {name: count - before.get(name, 0) for name, count in now.items()
                       if count != before.get(name, 0)}
            return WriteActivity(changes, self._writers(conn))

    @database_errors
    def freeze(self, tables: Sequence[str], timeout_s: float, reason: str) -> int:
        """Read-only default for new sessions, other sessions ended; returns the WAL position then."""
        deadline = time.monotonic() + timeout_s
        with self._connect() as conn:
            database = conn.execute("SELECT current_database()").fetchone()[0]
            conn.execute(f"ALTER DATABASE {quote(database)} SET default_transaction_read_only = on")
            while True:
                pids = [row[0] for row in conn.execute(_PG_OTHER_SESSIONS, _OURS).fetchall()]
                if not pids:
                    break
                conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
                if time.monotonic() > deadline:
                    raise SwitchbackError(f"sessions {pids} of database {database} did not end within "
                                          f"{timeout_s:.1f}s", hint="rerun `funnel switchback complete`")
                time.sleep(0.1)
            return _lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])

    @database_errors
    def frozen(self) -> bool:
        with self._connect() as conn:
            return bool(conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                "WHERE d.datname = current_database() AND s.setrole = 0 "
                "AND 'default_transaction_read_only=on' = ANY(s.setconfig))").fetchone()[0])

    @database_errors
    def unfreeze(self) -> int:
        was = self.frozen()
        with self._connect() as conn:
            database = conn.execute("SELECT current_database()").fetchone()[0]
            conn.execute(f"ALTER DATABASE {quote(database)} RESET default_transaction_read_only")
        return int(was)

    @database_errors
    def captured_through(self, marker: int, capture: Any) -> bool:
        """The capture's slot confirmed everything before WAL position ``marker``: every
        transaction committed before the freeze is in the reverse funnel."""
        with self._connect() as conn:
            row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                               (capture.source.slot,)).fetchone()
        return row is not None and row[0] is not None and _lsn(row[0]) >= marker

    @database_errors
    def column_types(self, shapes: Sequence[TableShape]) -> dict[str, list[str]]:
        with self._connect() as conn:
            result = {}
            for shape in shapes:
                rows = conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                                    "attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                                    (_pg_name(shape.name),)).fetchall()
                declared = dict(rows)
                result[shape.name] = [declared.get(column, "") for column in shape.columns]
            return result

    @database_errors
    def checksums(self, shapes: Sequence[TableShape],
                  as_types: dict[str, list[str]] | None = None) -> dict[str, TableChecksum]:
        """Like SQLite's; ``as_types`` casts each column to production's type on the way out."""
        result = {}
        with self._connect() as conn:
            conn.autocommit = False
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            for shape in shapes:
                types = (as_types or {}).get(shape.name) or [""] * len(shape.columns)
                columns = ", ".join(quote(c) + (f"::{t}" if t else "") for c, t in zip(shape.columns, types))
                with conn.cursor(name="timefunnel_checksum") as cursor:
                    cursor.execute(f"SELECT {columns} FROM {_pg_name(shape.name)}")
                    result[shape.name] = checksum_rows(fetch_all(cursor))
            conn.rollback()
        return result


def _pg_name(name: str) -> str:
    schema, _, table = name.partition(".")
    return f"{quote(schema)}.{quote(table)}"


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)

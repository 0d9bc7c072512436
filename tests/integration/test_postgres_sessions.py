"""timefunnel's PostgreSQL sessions carry their role's ``application_name`` whatever the
operator's URL says, and the switchback freeze spares exactly those: not timefunnel's
own capture when the URL names itself, and never an application that merely calls
itself "timefunnel…" (funnel.databases.postgres, applier.switchback.postgres_database)."""
from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from applier.switchback.postgres_database import PostgresDatabase
from funnel.databases import postgres as pg
from funnel.identity import database_identity
from producer.sources.postgres import PostgresSource, conninfo, default_slot_name
from tests.integration import test_postgres_source
from tests.integration.test_postgres_source import admin

WAIT_S = 30.0
db = test_postgres_source.db  # the fixture: a fresh database per test


def names_in(url: str) -> list[str]:
    with admin(url) as conn:
        return sorted(row[0] for row in conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"))


def wait_for(what, check) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_every_connection_carries_its_role_not_the_url_s_application_name(db: str) -> None:
    url = f"{db}?application_name=myapp"
    info = conninfo_to_dict(conninfo(url, replication="database"))
    assert (info["application_name"], info["replication"]) == ("timefunnel-capture", "database")
    with pg.connect(url, "applier") as conn:
        assert conn.execute("SHOW application_name").fetchone()[0] == "timefunnel-applier"
    assert database_identity(url).startswith("postgresql:")
    with pytest.raises(ValueError, match="unknown timefunnel role"):
        pg.application_name("timefunnelx")


def test_freeze_spares_exactly_timefunnel_s_own_sessions(db: str) -> None:
    url = f"{db}?application_name=myapp"  # the operator's URL names its sessions
    with admin(db) as conn:
        conn.execute("CREATE TABLE orders(id int PRIMARY KEY, item text)")
    impostors = [psycopg.connect(db, autocommit=True, application_name=name)
                 for name in ("myapp", "timefunnel-fake", "timefunnelx", "timefunnel")]
    source = PostgresSource(url, slot=default_slot_name(f"f_{uuid.uuid4().hex[:8]}"))
    applier = pg.connect(url, "applier")
    database = PostgresDatabase(url)
    try:
        wait_for("every session to show", lambda: len(names_in(db)) == 6)
        database.freeze([], WAIT_S, "test")
        assert names_in(db) == ["timefunnel-applier", "timefunnel-capture"], \
            "the application's sessions ended, timefunnel's own (named by role, not by the URL) kept"
        assert applier.execute("SELECT 1").fetchone() == (1,)
        source.install()  # its session still works (and was not made read-only)
    finally:
        database.unfreeze()
        applier.close()
        source.close()
        for conn in impostors:
            conn.close()

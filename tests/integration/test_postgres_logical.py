"""The private PostgreSQL server supports logical decoding (what capture will use)."""
from __future__ import annotations

import psycopg


def test_logical_replication_slot_can_be_created_and_dropped(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SHOW wal_level").fetchone()[0] == "logical"
        conn.execute("SELECT pg_create_logical_replication_slot('tf_probe', 'pgoutput')")
        slots = conn.execute("SELECT slot_name, plugin, slot_type FROM pg_replication_slots").fetchall()
        assert ("tf_probe", "pgoutput", "logical") in slots
        conn.execute("SELECT pg_drop_replication_slot('tf_probe')")
        remaining = conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'tf_probe'")
        assert remaining.fetchone()[0] == 0


def test_logical_decoding_sees_a_committed_change(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS probe (id int primary key, v text)")
        conn.execute("SELECT pg_create_logical_replication_slot('tf_probe2', 'test_decoding')")
        try:
            conn.execute("INSERT INTO probe VALUES (1, 'hello')")
            changes = [row[0] for row in conn.execute(
                "SELECT data FROM pg_logical_slot_get_changes('tf_probe2', NULL, NULL)")]
        finally:
            conn.execute("SELECT pg_drop_replication_slot('tf_probe2')")
            conn.execute("DROP TABLE probe")
    assert any("INSERT" in change and "'hello'" in change for change in changes), changes

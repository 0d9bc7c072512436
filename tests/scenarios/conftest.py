"""Fixtures the mission's drills share."""
from __future__ import annotations

import time
import uuid

import pytest


@pytest.fixture
def pg_databases(postgres_url):
    """A fresh production and mirror database on the test server: (prod_url, mirror_url).

    Dropped afterwards together with their replication slots (a slot keeps WAL).
    """
    import psycopg

    base = postgres_url.rsplit("/", 1)[0]
    suffix = uuid.uuid4().hex[:8]
    names = [f"prod_{suffix}", f"mirror_{suffix}"]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    yield tuple(f"{base}/{name}" for name in names)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for name in names:
            conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                         "WHERE database = %s AND active_pid IS NOT NULL", (name,))
            time.sleep(0.2)
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                         (name,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

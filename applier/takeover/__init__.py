"""Built-in takeovers: move the name applications use (a pgbouncer database entry, an
HAProxy backend server) to another PostgreSQL server.

Each mover checks everything before it changes anything, does nothing on a rerun that
finds the move done, reports one line per action and raises ``TakeoverError`` (nothing
changed) when the pooler or proxy cannot be reached or the input is wrong.  They are
meant to run as ``funnel promote --on-promote`` and as switchback's hooks, which pass
the database to use now in ``FUNNEL_SINK_URL``.
"""
from __future__ import annotations

from applier.takeover.target import DatabaseTarget, TakeoverError, parse_address, parse_database_target

__all__ = ["DatabaseTarget", "TakeoverError", "parse_address", "parse_database_target"]

"""Is a database the production a funnel's capture reads?  Then nothing may apply into it.

An applier writing into the database its own funnel captures would capture every row
it applies again, and apply it again: a loop that never ends and multiplies the funnel.
The capture leaves marks that tell such a database apart (the producer knows them, so
they are read here): on SQLite its triggers and changelog (any SQLite capture: a
captured file is never a mirror), on PostgreSQL the funnel's replication slot
``timefunnel_<funnel>`` in that very database, or the publication of that slot.

Only reads: nothing is created, not even an empty SQLite file.
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from urllib.parse import urlsplit

from funnel.control import ControlChannel, ControlState
from funnel.databases import postgres
from funnel.databases import sqlite as sqlite_files
from funnel.databases.names import INTERNAL_PREFIX as PREFIX
from funnel.databases.names import SQLITE_CHANGELOG as CHANGELOG
from funnel.errors import SinkError, TimeFunnelError
from funnel.kafka import KafkaSettings
from funnel.urls import masked_password, sqlite_path

_HINT = ("apply into a separate mirror database; a database that a capture reads cannot be its mirror "
         "(the applied rows would be captured and applied again, forever)")


def refuse_capture_source(url: str, funnel: str, slots: Iterable[str] = ()) -> None:
    """Raises SinkError if the database at ``url`` is read by a capture (of ``funnel``).

    ``slots`` are the replication slots the funnel's captures reported (``capture_slots``):
    a capture started with its own ``--slot`` leaves no ``timefunnel_<funnel>`` slot.

    Call it before anything is written to the mirror.  Other URL schemes pass (the sink
    refuses them itself); so does a missing SQLite file and a PostgreSQL server that
    cannot be reached (the sink says why).  Raises SinkError too when the marks cannot be read.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        _refuse_sqlite(sqlite_path(url))
    elif scheme in ("postgresql", "postgres"):
        _refuse_postgres(url, funnel, slots)


def refuse_funnel_source(kafka: KafkaSettings, url: str, funnel: str) -> None:
    """``refuse_capture_source`` with the slots the funnel's captures reported on its
    control topic: what apply, seek, promote and resume check before touching a sink."""
    refuse_capture_source(url, funnel, capture_slots(ControlChannel(kafka, funnel).state()))


def capture_slots(control: ControlState) -> list[str]:
    """The replication slots the funnel's PostgreSQL captures reported in their status records."""
    return sorted({capture.slot for capture in control.captures().values() if capture.slot is not None})


def _refuse_sqlite(path: str) -> None:
    if not os.path.isfile(path):
        return
    try:
        with closing(sqlite_files.connect(path, timeout=10, read_only=True)) as conn:
            marks = conn.execute(
                "SELECT type, name FROM sqlite_schema WHERE (type = 'table' AND name = ?) "
                "OR (type = 'trigger' AND substr(name, 1, ?) = ?) ORDER BY type, name",
                (CHANGELOG, len(PREFIX), PREFIX),
            ).fetchall()
    except sqlite3.Error as exc:
        raise SinkError(f"cannot read {path} to check that no capture reads it: {exc}",
                        hint="check that the file is a SQLite database and readable") from exc
    if marks:
        triggers = sum(1 for kind, _ in marks if kind == "trigger")
        raise SinkError(
            f"{path} is a production that timefunnel captures (it has {triggers} capture triggers"
            f"{' and ' + CHANGELOG if any(kind == 'table' for kind, _ in marks) else ''}): "
            "refusing to apply into it",
            hint=_HINT,
        )


def _refuse_postgres(url: str, funnel: str, reported_slots: Iterable[str]) -> None:
    import psycopg

    from producer.sources.postgres import default_publication_name, default_slot_name

    slot = default_slot_name(funnel)
    publication = default_publication_name(slot)
    slots = sorted({slot, *reported_slots})
    try:
        conn = postgres.connect(url, "check")
    except TimeFunnelError:
        return  # unreachable or a malformed URL: the sink says so, with its hint
    try:
        with conn:
            held = [row[0] for row in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY(%s) "
                "AND database = current_database() ORDER BY slot_name", (slots,))]
            published = conn.execute("SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = %s)",
                                     (publication,)).fetchone()[0]
    except psycopg.Error as exc:
        raise SinkError(f"cannot check that no capture reads {masked_password(url)}: {exc}") from exc
    marks = [f"replication slot {name}" for name in held] + ([f"publication {publication}"] if published else [])
    if marks:
        raise SinkError(
            f"{masked_password(url)} is the production that funnel {funnel!r} captures "
            f"(it holds the capture's {' and '.join(marks)}): refusing to apply into it",
            hint=_HINT,
        )

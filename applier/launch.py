"""Starting a mirror's applier from a sink URL: the checks and the clean-up that `funnel apply` needs.

A start can be refused (delay not shorter than the funnel's retention, no delay known,
events expired); a refused start leaves nothing behind, not even the SQLite file that
opening the sink just created.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from applier.applier import Applier, ApplierOptions
from applier.sinks import open_sink
from funnel.control import ControlChannel
from funnel.kafka import KafkaSettings
from funnel.records import check_delay_fits_retention
from funnel.topic import FunnelAdmin
from funnel.urls import sqlite_path, without_password


def check_options(kafka: KafkaSettings, options: ApplierOptions) -> None:
    """Raises ConfigError for invalid options or a delay not shorter than the funnel's retention,
    FunnelError for an unknown funnel."""
    options.validate()
    info = FunnelAdmin(kafka).describe(options.funnel)
    if options.delay_s is not None:
        check_delay_fits_retention(options.delay_s, info.retention_s, options.funnel)


def start_applier(kafka: KafkaSettings, sink_url: str, options: ApplierOptions,
                  create_tables: bool = False, after_start: Callable[[Applier], object] | None = None) -> Applier:
    """An applier of the mirror at ``sink_url``, started (``Applier.start``; its errors pass through).

    ``after_start(applier)`` (serving its metrics, say) belongs to the start: if it
    raises, the start is refused like any other.
    """
    new_file = _new_sqlite_file(sink_url)
    sink = open_sink(sink_url, create_tables=create_tables,
                     table_definitions=lambda: ControlChannel(kafka, options.funnel).table_definitions())
    applier = Applier(kafka, sink, options)
    applier.sink_url = without_password(sink_url)
    try:
        applier.start(announce=False)
        if after_start is not None:
            after_start(applier)
        applier.announce_delay()  # last: a refused start leaves the delay other commands see alone
    except BaseException:
        # A refused start (no delay known, events expired, a metrics address that cannot
        # be served) must not leave behind the mirror file that opening the sink just created.
        sink.close()
        if new_file:
            _remove_sqlite_file(new_file)
        raise
    return applier


def _new_sqlite_file(sink_url: str) -> Path | None:
    """The mirror's file when ``sink_url`` is a SQLite URL whose file does not exist yet."""
    if not sink_url.lower().startswith("sqlite:"):
        return None
    path = Path(sqlite_path(sink_url))
    return None if path.exists() else path


def _remove_sqlite_file(path: Path) -> None:
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"),
                     path.with_name(path.name + "-journal")):
        leftover.unlink(missing_ok=True)

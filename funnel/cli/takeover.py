"""``funnel takeover pgbouncer|haproxy``: move the name applications use to another server.

Made to run as ``funnel promote --on-promote`` and as switchback's ``--freeze-hook`` and
``--takeover-hook``: without TARGET they read ``FUNNEL_SINK_URL``, the database to use now.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from funnel.cli.options import DURATION

target_argument = click.argument("target", required=False, metavar="[TARGET]")


@click.group()
def takeover() -> None:
    """Point a connection pooler or proxy at another server (the promoted mirror, or production again)."""


def _target_text(target: str | None) -> str | None:
    return target or os.environ.get("FUNNEL_SINK_URL") or None


@takeover.command()
@click.argument("database")
@target_argument
@click.option("--config", "-c", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The pgbouncer.ini this pgbouncer runs with; its [databases] entry is rewritten.")
@click.option("--admin", "admin_url", default=None, metavar="URL",
              help="Admin console [default: from --config: listen_addr, listen_port, first of admin_users, "
                   "database pgbouncer]; password via PGPASSWORD or ~/.pgpass.")
@click.option("--pause-only", is_flag=True, help="Only PAUSE the entry, holding its clients (a --freeze-hook).")
@click.option("--resume-only", is_flag=True, help="Only RESUME the entry (held clients go on where it points).")
@click.option("--pause-timeout", type=DURATION, default=30.0, show_default=True,
              help="Longest wait for PAUSE (transactions in flight); then resume and fail.")
def pgbouncer(database: str, target: str | None, config: Path | None, admin_url: str | None, pause_only: bool,
              resume_only: bool, pause_timeout: float) -> None:
    """Point pgbouncer's DATABASE entry at TARGET (a postgresql:// URL) [default: $FUNNEL_SINK_URL].

    PAUSE (transactions in flight finish, new ones wait), rewrite the entry, RELOAD, RESUME:
    clients keep their connections and go on at TARGET. A rerun that finds it done does nothing.
    """
    from applier.takeover import parse_database_target
    from applier.takeover.pgbouncer import Mode, PgbouncerMove, move
    from funnel.errors import ConfigError

    if pause_only and resume_only:
        raise ConfigError("--pause-only and --resume-only exclude each other", hint="give one of them")
    mode = Mode.PAUSE if pause_only else Mode.RESUME if resume_only else Mode.MOVE
    text = _target_text(target) if mode is Mode.MOVE else None
    parsed = parse_database_target(text) if text else None
    move(PgbouncerMove(database, parsed, config, admin_url, mode, pause_timeout), click.echo)


@takeover.command()
@click.argument("server", metavar="BACKEND/SERVER")
@target_argument
@click.option("--socket", "address", required=True, metavar="PATH|HOST:PORT",
              help="HAProxy's runtime API: a `stats socket ... level admin` path, or host:port.")
@click.option("--disable-only", is_flag=True,
              help="Only put the server in maintenance and cut its sessions (a --freeze-hook).")
@click.option("--keep-sessions", is_flag=True,
              help="Leave connections open to the old address (by default they are cut, so clients reconnect).")
def haproxy(server: str, target: str | None, address: str, disable_only: bool, keep_sessions: bool) -> None:
    """Move HAProxy's BACKEND/SERVER to TARGET (host:port or a postgresql:// URL) [default: $FUNNEL_SINK_URL].

    disable, shut down its sessions, set server addr/port, enable. A rerun that finds it done does nothing.
    """
    from applier.takeover import parse_address
    from applier.takeover.haproxy import HaproxyMove, RuntimeApi, move, parse_server

    backend, name = parse_server(server)
    text = None if disable_only else _target_text(target)
    addr, port = parse_address(text) if text else (None, None)
    move(RuntimeApi(address), HaproxyMove(backend, name, addr, port, disable_only, keep_sessions), click.echo)

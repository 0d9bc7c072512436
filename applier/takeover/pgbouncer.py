"""Move a pgbouncer database entry to another server without dropping a client.

PAUSE the entry (transactions in flight finish, pgbouncer closes its server connections,
new queries wait), rewrite the entry in pgbouncer.ini, RELOAD, check that pgbouncer now
points at the target, RESUME: the waiting clients continue on the new server over the
connections they already have.  With ``pool_mode = session`` PAUSE waits until every
client has disconnected, so the move is bounded by ``pause_timeout_s``.
"""
from __future__ import annotations

import enum
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from applier.takeover.pgbouncer_ini import find_entry, rewrite, sections, write_atomically
from applier.takeover.target import DatabaseTarget, TakeoverError

CONSOLE_HINT = ("check --admin (host, port, a user in admin_users, password via PGPASSWORD or ~/.pgpass) "
                "and that pgbouncer runs")


class Mode(str, enum.Enum):
    MOVE = "move"      # pause, rewrite, reload, resume
    PAUSE = "pause"    # hold the clients (a switchback's freeze hook); a later move resumes them
    RESUME = "resume"  # let held clients go on (after a failed or aborted switchback)


class Step(str, enum.Enum):
    PAUSE = "pause"
    REWRITE = "rewrite"
    RELOAD = "reload"
    RESUME = "resume"


@dataclass(frozen=True)
class PoolerDatabase:
    """One row of SHOW DATABASES."""

    name: str
    host: str | None
    port: int | None
    database: str | None
    paused: bool

    def points_at(self, target: DatabaseTarget) -> bool:
        return (self.host, self.port, self.database) == (target.host, target.port, target.dbname)

    def where(self) -> str:
        return f"{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True)
class PgbouncerMove:
    database: str
    target: DatabaseTarget | None = None
    config: Path | None = None
    admin_url: str | None = None
    mode: Mode = Mode.MOVE
    pause_timeout_s: float = 30.0

    def validate(self) -> None:
        if self.mode is Mode.MOVE and self.target is None:
            raise TakeoverError("no target given", hint="give TARGET, or run as a takeover hook (FUNNEL_SINK_URL)")
        if self.mode is Mode.MOVE and self.config is None:
            raise TakeoverError("a move rewrites pgbouncer.ini: --config is needed",
                                hint="pass --config /etc/pgbouncer/pgbouncer.ini")
        if self.config is None and self.admin_url is None:
            raise TakeoverError("no way to reach pgbouncer", hint="pass --config (or --admin URL)")
        if self.pause_timeout_s <= 0:
            raise TakeoverError("--pause-timeout must be positive", hint="e.g. --pause-timeout 30s")


def plan(mode: Mode, running: PoolerDatabase, config_points: bool, target: DatabaseTarget | None) -> list[Step]:
    """The steps still to do, none when a rerun finds the work done.  Pure."""
    if mode is Mode.PAUSE:
        return [] if running.paused else [Step.PAUSE]
    if mode is Mode.RESUME:
        return [Step.RESUME] if running.paused else []
    assert target is not None
    there = running.points_at(target)
    if there and config_points and not running.paused:
        return []
    steps = [] if running.paused else [Step.PAUSE]
    if not config_points:
        steps.append(Step.REWRITE)
    if not there or not config_points:
        steps.append(Step.RELOAD)
    return steps + [Step.RESUME]


def admin_url_from_config(text: str) -> str:
    """The admin console as pgbouncer.ini describes it: listen_addr/listen_port (a wildcard
    becomes loopback, no address the unix socket), the first of admin_users, database pgbouncer."""
    from psycopg.conninfo import make_conninfo

    settings = sections(text).get("pgbouncer", {})
    addresses = [a.strip() for a in settings.get("listen_addr", "").split(",") if a.strip()]
    host = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(addresses[0], addresses[0]) if addresses \
        else (settings.get("unix_socket_dir") or "/tmp")
    users = [u.strip().strip('"') for u in settings.get("admin_users", "").replace(",", " ").split() if u.strip()]
    return make_conninfo(host=host, port=settings.get("listen_port") or "6432", dbname="pgbouncer",
                         user=users[0] if users else "pgbouncer", connect_timeout="5")


class Console:
    """pgbouncer's admin console: simple query protocol, autocommit, one connection."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        try:
            self.conn = psycopg.connect(url, autocommit=True, prepare_threshold=None,
                                        **({} if "connect_timeout" in url else {"connect_timeout": 5}))
        except psycopg.Error as exc:
            raise TakeoverError(f"cannot reach pgbouncer's admin console at {_shown(url)}: {_first_line(exc)}",
                                hint=CONSOLE_HINT) from exc

    def run(self, command: str) -> list[dict]:
        import psycopg

        try:
            cursor = self.conn.execute(command)
            if cursor.description is None:
                return []
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]
        except psycopg.Error as exc:
            raise TakeoverError(f"pgbouncer refused {command!r}: {_first_line(exc)}", hint=CONSOLE_HINT) from exc

    def database(self, name: str) -> PoolerDatabase | None:
        for row in self.run("SHOW DATABASES"):
            if row["name"] == name:
                return PoolerDatabase(name, row["host"], row["port"], row["database"], bool(row["paused"]))
        return None

    def pause(self, name: str, timeout_s: float) -> None:
        """PAUSE, bounded: PAUSE returns once the entry has no server connection, which in
        session mode means every client has gone.  On timeout the entry is resumed."""
        failure: list[BaseException] = []
        worker = threading.Thread(target=_capture_failure, args=(lambda: self.run(f"PAUSE {_ident(name)}"), failure),
                                  daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            Console(self.url).run(f"RESUME {_ident(name)}")
            raise TakeoverError(f"PAUSE {name} did not finish within {timeout_s:g}s: clients still hold server "
                                "connections (pool_mode = session waits for them to disconnect); resumed, "
                                "nothing changed", hint="use pool_mode = transaction, or a longer --pause-timeout")
        if failure:
            raise failure[0]

    def close(self) -> None:
        self.conn.close()


def _capture_failure(call: Callable[[], object], failure: list[BaseException]) -> None:
    try:
        call()
    except BaseException as exc:  # handed to the waiting thread
        failure.append(exc)


def _ident(name: str) -> str:
    return name if name.replace("_", "").isalnum() else '"' + name.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _shown(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except Exception:
        return "(unparsable admin URL)"
    return f"{params.get('host', '')}:{params.get('port', '6432')} (user {params.get('user', '?')})"


def move(options: PgbouncerMove, echo: Callable[[str], None]) -> list[Step]:
    """Carry out ``options``; returns the steps done (none: it was done already).

    Raises TakeoverError, with nothing changed, for an unknown entry, an unreadable or
    unwritable configuration, an unreachable console, or a reload that did not take.
    """
    options.validate()
    name, target = options.database, options.target
    text = _read_config(options.config) if options.config else None
    new_text, config_points = None, True
    if options.mode is Mode.MOVE and text is not None and target is not None:
        config_points = find_entry(text, name).points_at(target)
        new_text = None if config_points else rewrite(text, name, target)
        if new_text is not None:
            _check_writable(options.config)
    console = Console(options.admin_url or admin_url_from_config(text or ""))
    try:
        running = console.database(name)
        if running is None:
            raise TakeoverError(f"pgbouncer has no database {name!r} (SHOW DATABASES)",
                                hint="name an entry of [databases]; after editing the file, RELOAD pgbouncer")
        steps = plan(options.mode, running, config_points, target)
        if not steps:
            echo(_nothing_to_do(options.mode, running))
        else:
            _carry_out(console, options, steps, text, new_text, echo)
        return steps
    finally:
        console.close()


def _nothing_to_do(mode: Mode, running: PoolerDatabase) -> str:
    if mode is Mode.MOVE:
        return f"pgbouncer database {running.name!r} already points at {running.where()}: nothing to do"
    return f"pgbouncer database {running.name!r} is already {'paused' if mode is Mode.PAUSE else 'running'}"


def _carry_out(console: Console, options: PgbouncerMove, steps: list[Step], old_text: str | None,
               new_text: str | None, echo: Callable[[str], None]) -> None:
    name, done = options.database, []
    try:
        for step in steps:
            if step is Step.PAUSE:
                console.pause(name, options.pause_timeout_s)
                echo(f"paused {name!r}: transactions in flight finished, new ones wait")
            elif step is Step.REWRITE:
                write_atomically(options.config, new_text)
                echo(f"rewrote [databases] {name} in {options.config}: host={options.target.host} "
                     f"port={options.target.port} dbname={options.target.dbname}")
            elif step is Step.RELOAD:
                console.run("RELOAD")
                _check_reloaded(console, name, options.target)
                echo(f"reloaded: {name!r} points at {options.target}")
            else:
                console.run(f"RESUME {_ident(name)}")
                echo(f"resumed {name!r}" + (f": waiting clients go on at {options.target}" if options.target else ""))
            done.append(step)
    except (TakeoverError, OSError) as exc:
        if options.mode is Mode.MOVE:
            _undo(console, options, done, old_text, echo)
        raise TakeoverError(f"{exc}; undone, {name!r} is as it was" if options.mode is Mode.MOVE else str(exc),
                            hint=getattr(exc, "hint", None) or "fix the cause and rerun the same command") from exc


def _check_reloaded(console: Console, name: str, target: DatabaseTarget) -> None:
    running = console.database(name)
    if running is None or not running.points_at(target):
        now = running.where() if running else "no such database"
        raise TakeoverError(f"after RELOAD pgbouncer shows {name!r} at {now}, not {target} (see pgbouncer's log)",
                            hint="check that --config is the file this pgbouncer was started with")


def _undo(console: Console, options: PgbouncerMove, done: list[Step], old_text: str | None,
          echo: Callable[[str], None]) -> None:
    """Back to the state before the move: the old file, reloaded, and the clients resumed."""
    if Step.REWRITE in done and old_text is not None:
        write_atomically(options.config, old_text)
        console.run("RELOAD")
        echo(f"restored {options.config} and reloaded")
    if Step.PAUSE in done:
        console.run(f"RESUME {_ident(options.database)}")
        echo(f"resumed {options.database!r} where it was")


def _read_config(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise TakeoverError(f"cannot read the pgbouncer configuration {path}: {exc.strerror}",
                            hint="pass the pgbouncer.ini this pgbouncer runs with as --config") from exc


def _check_writable(path: Path) -> None:
    real = path.resolve()
    if not os.access(real.parent, os.W_OK | os.X_OK):
        raise TakeoverError(f"cannot write {real.parent} (the new {real.name} is written beside it and renamed)",
                            hint="run as a user who may change pgbouncer's configuration")

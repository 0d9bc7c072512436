"""``funnel broker start|stop|status``: the local Apache Kafka for the demo and tests."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import click

from funnel.broker import LocalBroker
from funnel.errors import BrokerError

state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where the broker keeps data and logs (default: $FUNNEL_STATE_DIR/broker or "
         "~/.local/state/timefunnel/broker).")


@contextlib.contextmanager
def _state_dir_errors(local: LocalBroker) -> Iterator[None]:
    """A state directory that cannot be made or written is one error line, not a traceback."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or local.state_dir
        raise BrokerError(f"cannot use the broker's state directory {local.state_dir}: {where}: {exc.strerror}",
                          hint="pass --state-dir DIR (or set FUNNEL_STATE_DIR), a directory you can write to") from exc


@click.group()
def broker() -> None:
    """Run a local single-node Apache Kafka (KRaft) from the official jars."""


@broker.command()
@state_dir_option
@click.option("--port", type=int, default=None, help="Listener port on 127.0.0.1 (default: the one of the last run in this state "
                   "directory if it is free, so running clients reconnect; else a free one).")
def start(state_dir: Path | None, port: int | None) -> None:
    """Start the broker (once) and print its bootstrap address."""
    local = LocalBroker(state_dir, port=port)
    with _state_dir_errors(local):
        info, started = local.start()
    verb = "started" if started else "already running"
    click.echo(f"Apache Kafka {info.version} {verb} (pid {info.pid}), bootstrap {info.bootstrap}",
               err=True)
    if local.moved_from:
        click.echo(f"warning: port {local.moved_from} of the last run is taken by another process, so the broker "
                   f"listens on {info.bootstrap} instead: captures and appliers still using "
                   f"127.0.0.1:{local.moved_from} will not reconnect; restart them with --bootstrap "
                   f"{info.bootstrap} (or free port {local.moved_from}, then `funnel broker stop` and "
                   f"`funnel broker start` again)", err=True)
    click.echo(info.bootstrap)


@broker.command()
@state_dir_option
def stop(state_dir: Path | None) -> None:
    """Stop the broker cleanly; says so when none runs."""
    local = LocalBroker(state_dir)
    with _state_dir_errors(local):
        info = local.stop()
    if info:
        click.echo(f"stopped Apache Kafka {info.version} (pid {info.pid}) at {info.bootstrap}")
    else:
        click.echo("no broker running")


@broker.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(state_dir: Path | None, as_json: bool) -> None:
    """Say whether a broker runs, where, and which version."""
    local = LocalBroker(state_dir)
    info = local.running()
    if as_json:
        click.echo(json.dumps({"running": bool(info), **(info.__dict__ if info else
                                                          {"state_dir": str(local.state_dir)})}))
    elif info:
        click.echo(f"running: Apache Kafka {info.version}, pid {info.pid}, bootstrap "
                   f"{info.bootstrap}, state {info.state_dir}, log {info.log_file}")
    else:
        click.echo(f"not running (state dir {local.state_dir})")

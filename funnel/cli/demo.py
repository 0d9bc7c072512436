"""``funnel demo``: the main job on embedded defaults (local Apache Kafka + SQLite files)."""
from __future__ import annotations

from pathlib import Path

import click

from funnel.broker import LocalBroker


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".demo"),
              show_default=True, help="Where the demo keeps its broker state and database files.")
def demo(workdir: Path) -> None:
    """Start a local broker and show the time funnel at work on SQLite files."""
    broker = LocalBroker(workdir / "broker")
    info, started = broker.start()
    click.echo(f"Apache Kafka {info.version} {'started' if started else 'already running'} "
               f"at {info.bootstrap} (stop it with: funnel broker stop --state-dir {workdir / 'broker'})")

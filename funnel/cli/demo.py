"""``funnel demo``: the main job on embedded defaults (local Apache Kafka + SQLite files).

A shop application writes orders into ``prod.db``; capture publishes every committed
change into a funnel on a local Apache Kafka; a mirror ``mirror.db`` follows 8 seconds
behind. Then somebody runs ``DELETE FROM orders`` on production. The demo finds the
bad transaction with ``funnel inspect``, promotes the mirror to just before it with
``funnel promote --at`` (the real CLI, through the control topic of the running
applier), and shows that the orders are back.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import click

from funnel.broker import LocalBroker
from funnel.errors import ConfigError

DELAY_S = 8.0


class Shop:
    """The application: one order (with a customer now and then) every 50 ms."""

    def __init__(self, path: Path) -> None:
        self.path = path
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript("""
            CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL,
                                               placed_at TEXT);""")
        conn.close()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30)
        n = conn.execute("SELECT coalesce(max(id), 0) FROM orders").fetchone()[0]
        while not self.stop.wait(0.05):
            n += 1
            with conn:
                if n % 4 == 1:
                    conn.execute("INSERT OR IGNORE INTO customers VALUES (?, ?)", (n, f"customer {n}"))
                conn.execute("INSERT INTO orders VALUES (?, ?, ?, ?)",
                             (n, n - (n - 1) % 4, round(9.5 + n % 17, 2), datetime.now().isoformat()))
        conn.close()


def count(path: Path, table: str) -> int:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def funnel_cli(bootstrap: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "funnel.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "FUNNEL_BOOTSTRAP": bootstrap}, timeout=300)


def say(text: str) -> None:
    click.secho(text, fg="cyan", bold=True)


def show(prod: Path, mirror: Path, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        click.echo(f"  production orders: {count(prod, 'orders'):5d}   mirror orders ({DELAY_S:g}s behind): "
                   f"{count(mirror, 'orders'):5d}")
        time.sleep(1.0)


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".demo"),
              show_default=True, help="Where the demo keeps its broker state and database files.")
@click.option("--keep-broker", is_flag=True, help="Leave the local broker running at the end.")
def demo(workdir: Path, keep_broker: bool) -> None:
    """Show the time funnel at work on SQLite files: delay, a bad DELETE, and the takeover."""
    from applier.applier import Applier, ApplierOptions
    from applier.sinks import open_sink
    from funnel.control import ControlChannel
    from funnel.kafka import KafkaSettings
    from funnel.topic import FunnelAdmin, FunnelSpec
    from producer.capture import Capture, CaptureOptions
    from producer.publisher import EventPublisher
    from producer.sources import open_source

    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the demo's directory {workdir}: {exc.strerror}",
                          hint="pass --workdir DIR, a directory you can write to") from exc
    broker = LocalBroker(workdir / "broker")
    info, _ = broker.start()
    say(f"1. A local Apache Kafka {info.version} runs at {info.bootstrap} (KRaft, jars from Maven Central).")
    kafka = KafkaSettings(info.bootstrap)
    run = time.strftime("%Y%m%d-%H%M%S")
    name, prod, mirror = f"demo-{run}", workdir / f"prod-{run}.db", workdir / f"mirror-{run}.db"
    FunnelAdmin(kafka).create(FunnelSpec(name, 86400))
    shop = Shop(prod)
    shop.thread.start()
    say(f"2. Funnel {name!r} created; a shop writes orders into {prod}.")

    stop = threading.Event()
    failures: list[BaseException] = []

    def in_thread(body):
        def run() -> None:
            try:
                body()
            except BaseException as exc:  # shown by the demo, which then stops
                failures.append(exc)
                stop.set()
        return threading.Thread(target=run, daemon=True)

    def capture() -> None:
        # SQLite connections belong to the thread that opened them: open them here.
        # Poll every 20 ms: a SQLite source groups what committed between two polls into
        # one source transaction, so short polls keep the DELETE apart from the orders.
        Capture(open_source(f"sqlite://{prod.resolve()}"), EventPublisher(kafka, name, "shop"),
                ControlChannel(kafka, name), CaptureOptions(poll_interval_s=0.02)).run(stop)

    def apply() -> None:
        applier = Applier(kafka, open_sink(f"sqlite://{mirror.resolve()}"), ApplierOptions(name, "m1", DELAY_S))
        applier.sink_url = f"sqlite://{mirror.resolve()}"
        applier.run(stop)

    threads = [in_thread(capture), in_thread(apply)]
    for thread in threads:
        thread.start()
    say(f"3. Capture and a mirror {DELAY_S:g} s behind production are running:")
    show(prod, mirror, 12)

    conn = sqlite3.connect(prod, timeout=30)
    with conn:
        lost = conn.execute("DELETE FROM orders").rowcount
    conn.close()
    say(f"4. Oops: DELETE FROM orders on production ({lost} orders gone). The mirror has not applied it yet:")
    show(prod, mirror, 3)

    if failures:
        raise failures[0]
    found = funnel_cli(info.bootstrap, "inspect", "--funnel", name, "--op", "delete", "--table", "orders", "--json")
    bad = json.loads(found.stdout)["transactions"][0]
    say(f"5. `funnel inspect --op delete` finds it: txid {bad['txid']} committed at {bad['commit_ts']}, "
        f"{bad['rows']} rows.")
    promoted = funnel_cli(info.bootstrap, "promote", "m1", "--funnel", name, "--at", bad["commit_ts"],
                          "--on-promote", "echo takeover: point the shop at $FUNNEL_SINK_URL")
    click.echo(promoted.stdout.rstrip() or promoted.stderr.rstrip())
    shop.stop.set()
    stop.set()
    for thread in threads:
        thread.join(15)
    restored = count(mirror, "orders")
    say(f"6. The mirror is promoted with {restored} orders; production had {lost} just before the DELETE "
        f"and has {count(prod, 'orders')} now.")
    if restored != lost:
        click.echo(f"   ({lost - restored} orders committed within the same capture poll as the DELETE were grouped "
                   f"with it: SQLite has no transaction ids. PostgreSQL capture keeps every transaction apart.)")
    if keep_broker:
        click.echo(f"Broker left running at {info.bootstrap}; try: FUNNEL_BOOTSTRAP={info.bootstrap} "
                   f"funnel status --funnel {name}")
    else:
        broker.stop()
        click.echo("Broker stopped. Run `make demo` again any time.")

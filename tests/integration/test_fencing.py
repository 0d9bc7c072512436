"""Two appliers on one mirror: the newer one fences the older one, on SQLite and PostgreSQL.

The sink tests run one suite against both sinks: claim, fenced write (rows and
position roll back together), the race for a mirror that has no row yet, and the
in-place migration of a state table made before fencing.  The process test pauses a
real `funnel apply` (SIGSTOP) while it holds transactions, lets a second one take the
mirror further, resumes the first, and checks with a concurrent reader that the mirror
never showed a state production never had.
"""
from __future__ import annotations

import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from applier.sinks import open_sink
from applier.sinks.base import Sink
from applier.transaction import MirrorPosition, Transaction
from funnel.control import ControlChannel, status_key
from funnel.errors import FencedError
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges
from funnel.kafka import KafkaSettings
from producer.library import Publisher
from tests.support.processes import Background, wait_for

COMMIT = 1_700_000_000_000_000
OLD_STATE_COLUMNS = ("funnel TEXT NOT NULL, mirror TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, "
                     "next_offset BIGINT NOT NULL, last_txid TEXT, last_commit_ts BIGINT, valid_as_of BIGINT, "
                     "snapshot_done INTEGER NOT NULL DEFAULT 0, hold_until BIGINT, promoted_at BIGINT, "
                     "promote_target BIGINT, excluded_txids TEXT, PRIMARY KEY (funnel, mirror)")


# --- one suite, both sinks -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_url(postgres_url: str) -> Iterator[str]:
    name = f"tf_fence_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield urlunsplit(urlsplit(postgres_url)._replace(path=f"/{name}"))
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


class Mirror:
    """A mirror database of either kind: open sinks on it, run SQL on it as an outside reader."""

    def __init__(self, url: str, query: Callable[[str], list[tuple]], execute: Callable[[str], None]) -> None:
        self.url = url
        self.query = query
        self.execute = execute
        self.sinks: list[Sink] = []

    def sink(self) -> Sink:
        opened = open_sink(self.url)
        self.sinks.append(opened)
        return opened


@pytest.fixture(params=["sqlite", "postgresql"])
def mirror(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mirror]:
    if request.param == "sqlite":
        path = tmp_path / "mirror.db"

        def query(statement: str) -> list[tuple]:
            with sqlite3.connect(path) as conn:
                return conn.execute(statement).fetchall()

        def execute(statement: str) -> None:
            with sqlite3.connect(path) as conn:
                conn.execute(statement)

        made = Mirror(f"sqlite:///{path}", query, execute)
    else:
        url = request.getfixturevalue("pg_url")

        def query(statement: str) -> list[tuple]:
            with psycopg.connect(url, autocommit=True) as conn:
                return conn.execute(statement).fetchall()

        def execute(statement: str) -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(statement)

        made = Mirror(url, query, execute)
        execute("DROP TABLE IF EXISTS _timefunnel_state, items")
        execute("CREATE TABLE items (id bigint PRIMARY KEY, v text)")
    yield made
    for opened in made.sinks:
        opened.close()


def item_tx(txid: str, offset: int, item: int) -> Transaction:
    group = TableChanges("items", Op.INSERT, ["id", "v"], ["id"], [Row(None, [item, txid])])
    batch = ChangeBatch("src", txid, COMMIT + offset, offset, 0, 1, Kind.CHANGES, [group])
    return Transaction(txid, COMMIT + offset, Kind.CHANGES, offset, offset, [batch])


def at(next_offset: int, mirror: str = "m1") -> MirrorPosition:
    return MirrorPosition("shop", mirror, "shop", 0, next_offset, last_txid=f"t{next_offset}")


def test_a_write_of_an_older_applier_is_rolled_back_whole_and_fenced(mirror: Mirror) -> None:
    older, newer = mirror.sink(), mirror.sink()
    assert older.claim("shop", "m1") is None
    older.apply([item_tx("t1", 0, 1)], at(1))
    assert newer.claim("shop", "m1") == at(1)  # the position is read after the claim
    newer.apply([item_tx("t2", 1, 2)], at(2))
    with pytest.raises(FencedError, match="fenced by a newer applier of mirror 'm1'"):
        older.apply([item_tx("t3", 2, 3)], at(3))
    with pytest.raises(FencedError):
        older.check_fence("shop", "m1")
    newer.check_fence("shop", "m1")
    assert mirror.query("SELECT id FROM items ORDER BY id") == [(1,), (2,)]  # t3's row rolled back with it
    assert mirror.query("SELECT next_offset, epoch FROM _timefunnel_state") == [(2, 2)]
    newer.apply([item_tx("t3", 2, 3)], at(3))  # the newer applier is not disturbed
    assert mirror.query("SELECT next_offset FROM _timefunnel_state") == [(3,)]


def test_two_appliers_of_a_new_mirror_race_for_its_first_row(mirror: Mirror) -> None:
    first, second = mirror.sink(), mirror.sink()
    assert first.claim("shop", "m2") is None and second.claim("shop", "m2") is None
    second.apply([item_tx("t1", 0, 10)], at(1, "m2"))
    with pytest.raises(FencedError):
        first.apply([item_tx("t9", 8, 90)], at(9, "m2"))
    second.apply([], at(2, "m2"))
    assert mirror.query("SELECT id FROM items ORDER BY id") == [(10,)]
    assert mirror.query("SELECT next_offset, epoch FROM _timefunnel_state WHERE mirror = 'm2'") == [(2, 1)]


def test_a_state_table_from_before_fencing_is_migrated_in_place(mirror: Mirror) -> None:
    mirror.execute(f"CREATE TABLE _timefunnel_state ({OLD_STATE_COLUMNS})")
    mirror.execute("INSERT INTO _timefunnel_state (funnel, mirror, topic, partition, next_offset, last_txid) "
                   "VALUES ('shop', 'm1', 'shop', 0, 7, 't7')")
    old = mirror.sink()
    assert mirror.query("SELECT next_offset, epoch FROM _timefunnel_state") == [(7, 0)]
    assert old.claim("shop", "m1") == at(7)
    old.apply([], replace(at(8), last_txid="t8"))
    assert mirror.query("SELECT next_offset, epoch FROM _timefunnel_state") == [(8, 1)]
    mirror.sink().claim("shop", "m1")
    with pytest.raises(FencedError):
        old.apply([], at(9))


def test_writers_that_never_claim_keep_the_epoch(mirror: Mirror) -> None:
    """The switchback writes a mirror's position without claiming; an applier's claim still holds."""
    applier, other = mirror.sink(), mirror.sink()
    applier.claim("shop", "m1")
    other.apply([], at(5))  # creates the row with epoch 0: the applier expected no row
    with pytest.raises(FencedError):
        applier.apply([], at(1))
    again = mirror.sink()
    assert again.claim("shop", "m1") == at(5)
    other.apply([], at(6))
    again.apply([], at(7))
    assert mirror.query("SELECT next_offset, epoch FROM _timefunnel_state") == [(7, 1)]


# --- real processes: a paused applier resumes after a newer one took over ------------------------


def publish_items(funnel: str, bootstrap: str, first: int, last: int) -> None:
    """Transaction i inserts item i and sets the counter to i: production's invariant is
    counter == number of items == largest item."""
    with Publisher(funnel, bootstrap=bootstrap, source="app") as pub:
        for i in range(first, last + 1):
            with pub.transaction() as tx:
                tx.insert("items", {"id": i}, {"id": i, "v": f"item {i}"})
                tx.update("counter", {"id": 1}, {"id": 1, "n": i})


class Reader(threading.Thread):
    """Reads the mirror as an application would, all the time, and records every state it saw."""

    def __init__(self, read: Callable[[], tuple | None]) -> None:
        super().__init__(daemon=True)
        self.read = read
        self.stop = threading.Event()
        self.offsets: list[int] = []
        self.items = 0
        self.bad: list[tuple] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                seen = self.read()
            except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):
                seen = None  # tables not created yet
            if seen is not None:
                offset, counter, count, largest = seen
                self.offsets.append(offset)
                self.items = count
                if not (counter is not None and counter == count == largest):
                    self.bad.append(seen)
            time.sleep(0.01)


# One snapshot for all three reads: what an application sees at one moment.
STATE_READS = ("SELECT next_offset FROM _timefunnel_state WHERE mirror = 'm1'",
               "SELECT count(*), max(id) FROM items", "SELECT n FROM counter WHERE id = 1")


def sqlite_reader(path: Path) -> Callable[[], tuple | None]:
    def read() -> tuple | None:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            conn.execute("BEGIN")
            return _one_state([conn.execute(q).fetchone() for q in STATE_READS])
        finally:
            conn.close()
    return read


def postgres_reader(url: str) -> Callable[[], tuple | None]:
    def read() -> tuple | None:
        with psycopg.connect(url) as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return _one_state([conn.execute(q).fetchone() for q in STATE_READS])
    return read


def _one_state(found: list) -> tuple | None:
    offset, (count, largest), counter = found
    return None if offset is None else (offset[0], counter[0] if counter else None, count, largest)


@pytest.fixture(params=["sqlite", "postgresql"])
def paused_mirror(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Callable[[], tuple | None]]:
    """(sink URL, reader) of an empty mirror database."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'mirror.db'}", sqlite_reader(tmp_path / "mirror.db")
    url = request.getfixturevalue("pg_url")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS _timefunnel_state, items, counter")
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, v text)")
        conn.execute("CREATE TABLE counter (id bigint PRIMARY KEY, n bigint)")
    return url, postgres_reader(url)


def test_a_paused_applier_resumed_after_a_newer_one_took_over_stops_fenced(bootstrap, funnel_name, procs,
                                                                          tmp_path, paused_mirror):
    url, read = paused_mirror
    published_at = time.monotonic()
    publish_items(funnel_name, bootstrap, 1, 10)

    def apply(delay: str) -> Background:
        proc = Background(bootstrap, tmp_path / f"apply-{len(procs)}.log", "apply", url,
                          "--funnel", funnel_name, "--mirror", "m1", "--delay", delay)
        procs.append(proc)
        return proc

    def held_by_a() -> int:
        status = ControlChannel(KafkaSettings(bootstrap), funnel_name).read_all().get(status_key("m1")) or {}
        return status.get("held_transactions", 0)

    a = apply("12s")  # holds the ten transactions: not due for a while
    wait_for(lambda: held_by_a() == 10, 60, 0.3, "applier A to hold the ten transactions")
    a.process.send_signal(signal.SIGSTOP)
    reader = Reader(read)
    reader.start()
    try:
        b = apply("0s")  # a rollout's second pod, or an operator's restart: it takes the mirror over
        wait_for(lambda: reader.items == 10, 60, 0.2, "applier B to apply")
        publish_items(funnel_name, bootstrap, 11, 15)
        wait_for(lambda: reader.items == 15, 60, 0.2, "B to apply 15 items")
        # A's ten transactions are due by now: on SIGCONT its first act would be to write them,
        # with the position after the tenth, over B's newer state.
        time.sleep(max(0.0, 12.5 - (time.monotonic() - published_at)))
        a.process.send_signal(signal.SIGCONT)
        assert a.process.wait(60) == 1
        time.sleep(1.0)  # let the reader look at the mirror after A has gone
        publish_items(funnel_name, bootstrap, 16, 16)  # B still follows
        wait_for(lambda: reader.items == 16, 60, 0.2, "B to go on applying")
    finally:
        reader.stop.set()
        reader.join(10)
    output = a.output()
    assert "Error: fenced by a newer applier of mirror 'm1'" in output and "Traceback" not in output, output
    assert b.alive(), b.output()
    assert reader.bad == [], reader.bad[:5]
    assert reader.offsets == sorted(reader.offsets), "the mirror's position went backwards"

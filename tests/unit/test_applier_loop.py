"""The applier's loop on an in-memory funnel, a fake clock and a real SQLite mirror: no broker.

What the integration tests show through Kafka, checked here step by step: a transaction
is applied at ``commit_ts + delay`` and not a microsecond before, whole transactions are
group-committed and a transaction split over several messages is never half-applied, a
delay changed on the control topic takes effect at once, seek commands hold and undo,
and expired events stop the applier instead of being skipped.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from applier.applier import Applier, ApplierOptions
from applier.memory_feed import MemoryFunnel
from applier.sinks.sqlite import SqliteSink
from funnel.control import command_key, delay_key, status_key
from funnel.errors import EventsExpiredError
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges

T0 = 1_800_000_000_000_000
S = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now

    def monotonic(self) -> float:
        return self.now / S


def chunk(txid: str, commit_ts: int, ids: list[int], seq: int = 0, tx_rows: int | None = None) -> ChangeBatch:
    rows = [Row(None, [i, f"item {i}"]) for i in ids]
    group = TableChanges("items", Op.INSERT, ["id", "name"], ["id"], rows)
    return ChangeBatch("src", txid, commit_ts, 0, seq, len(ids) if tx_rows is None else tx_rows,
                       Kind.CHANGES, [group])


class Mirror:
    """One mirror file, its in-memory funnel and the applier that follows it."""

    def __init__(self, tmp_path: Path, delay_s: float = 60.0, max_commit_rows: int = 20_000) -> None:
        self.path = tmp_path / "mirror.db"
        with sqlite3.connect(self.path) as db:
            db.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT)")
        self.funnel = MemoryFunnel("shop")
        self.clock = Clock()
        self.delay_s = delay_s
        self.max_commit_rows = max_commit_rows
        self.applier = self.new_applier()

    def new_applier(self) -> Applier:
        options = ApplierOptions("shop", "m1", self.delay_s, max_commit_rows=self.max_commit_rows)
        return Applier(self.funnel.feed(), SqliteSink(self.path), options, clock=self.clock,
                       monotonic=self.clock.monotonic)

    def ids(self) -> list[int]:
        with sqlite3.connect(self.path) as db:
            return [row[0] for row in db.execute("SELECT id FROM items ORDER BY id")]

    def step_at(self, now: int) -> int:
        self.clock.now = now
        return self.applier.step(poll_timeout_s=0)

    def command(self, now: int, **record) -> None:
        """Send a command and step until the applier says it is done (it reads the funnel again after an undo)."""
        self.funnel.write_control(command_key("m1"), record)
        for _ in range(10):
            self.step_at(now)
            if self.applier.command is not None and self.applier.command.id == record["id"] \
                    and self.applier.command_done():
                return
        raise AssertionError(f"command {record} not done")

    def status(self) -> dict:
        return self.funnel.control().latest(status_key("m1"))


@pytest.fixture
def mirror(tmp_path: Path):
    made = Mirror(tmp_path)
    yield made
    made.applier.close()


def test_a_transaction_is_applied_at_commit_time_plus_delay_and_not_before(mirror: Mirror) -> None:
    mirror.funnel.publish(chunk("t1", T0, [1]), chunk("t2", T0 + 30 * S, [2]))
    mirror.applier.start()

    assert mirror.step_at(T0 + 60 * S - 1) == 0 and mirror.ids() == []
    assert mirror.step_at(T0 + 60 * S) == 1 and mirror.ids() == [1]  # the due instant itself is due
    assert mirror.step_at(T0 + 90 * S - 1) == 0 and mirror.ids() == [1]
    assert mirror.step_at(T0 + 90 * S) == 1 and mirror.ids() == [1, 2]
    assert mirror.applier.position.next_offset == 2 and mirror.funnel.committed == 2


def test_group_commit_takes_whole_transactions_and_never_half_of_one(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path, delay_s=0, max_commit_rows=5)
    # t1 is six rows in three messages; only two of them are in the funnel yet.
    mirror.funnel.publish(chunk("t1", T0, [1, 2], seq=0, tx_rows=6), chunk("t1", T0, [3, 4], seq=2, tx_rows=6))
    mirror.applier.start()
    assert mirror.step_at(T0 + S) == 0 and mirror.ids() == []
    assert mirror.applier.position.next_offset == 0 and not mirror.applier.caught_up()

    mirror.funnel.publish(chunk("t1", T0, [5, 6], seq=4, tx_rows=6), chunk("t2", T0 + 1, [7, 8]),
                          chunk("t3", T0 + 2, [9, 10]))
    # t1 alone is more than a commit's worth: it goes whole, alone; t2 and t3 share the next commit.
    assert mirror.step_at(T0 + S) == 6 and mirror.ids() == [1, 2, 3, 4, 5, 6]
    assert mirror.step_at(T0 + S) == 4 and mirror.ids() == list(range(1, 11))
    assert mirror.applier.stats.commits == 2 and mirror.applier.stats.applied_transactions == 3
    assert mirror.applier.position.next_offset == 5 and mirror.applier.position.last_txid == "t3"
    assert mirror.applier.caught_up()
    mirror.applier.close()


def test_a_delay_changed_on_the_control_topic_applies_at_once(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path, delay_s=3600)
    mirror.funnel.publish(chunk("t1", T0, [1]))
    mirror.applier.start()
    assert mirror.step_at(T0 + 600 * S) == 0

    mirror.funnel.write_control(delay_key("m1"), {"delay_s": 300.0, "set_at": T0 + 600 * S})
    assert mirror.step_at(T0 + 600 * S) == 1 and mirror.ids() == [1]
    mirror.step_at(T0 + 602 * S)  # the next status record says so
    assert mirror.applier.delay_us == 300 * S and mirror.status()["delay_s"] == 300.0
    mirror.applier.close()


def test_seek_commands_hold_forward_undo_backward_and_resume(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path, delay_s=3600)
    mirror.funnel.publish(*(chunk(f"t{i}", T0 + i * 10 * S, [i]) for i in range(4)))
    mirror.applier.start()
    now = T0 + 60 * S  # nothing is due with the delay

    # Forward: everything before the target is applied at once and the mirror holds there.
    mirror.command(now, id="c1", kind="seek", to=T0 + 25 * S)
    assert mirror.ids() == [0, 1, 2] and mirror.applier.position.hold_until == T0 + 25 * S
    assert mirror.status()["command"]["state"] == "done"

    # Backward: t2 and t1 are undone newest first, through the sink.
    mirror.command(now, id="c2", kind="seek", to=T0 + 5 * S)
    assert mirror.ids() == [0] and mirror.applier.position.next_offset == 1
    reported = mirror.status()["command"]
    assert (reported["id"], reported["state"], reported["undone_transactions"]) == ("c2", "done", 2)

    # Resume: the delay rules again, so only what is due follows.
    mirror.command(now, id="c3", kind="resume")
    assert mirror.applier.position.hold_until is None and mirror.ids() == [0]
    mirror.step_at(T0 + 3620 * S)
    assert mirror.ids() == [0, 1, 2]
    mirror.applier.close()


def test_a_mirror_whose_next_events_expired_refuses_to_start(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path, delay_s=0)
    mirror.funnel.publish(*(chunk(f"t{i}", T0 + i, [i]) for i in range(4)))
    mirror.applier.start()
    mirror.step_at(T0 + S)  # one commit: all four
    mirror.applier.close()
    mirror.funnel.publish(*(chunk(f"t{i}", T0 + i, [i]) for i in range(4, 8)))
    mirror.funnel.expire(before=6)  # offsets 4 and 5 went before the mirror applied them

    restarted = mirror.new_applier()
    with pytest.raises(EventsExpiredError, match=r"offsets 4\.\.5 expired"):
        restarted.start()
    restarted.close()
    assert mirror.ids() == [0, 1, 2, 3]


def test_events_that_expire_while_the_applier_reads_stop_it(mirror: Mirror) -> None:
    mirror.funnel.publish(*(chunk(f"t{i}", T0 + i, [i]) for i in range(3)))
    mirror.applier.start()
    mirror.funnel.expire(before=2)
    with pytest.raises(EventsExpiredError, match=r"offsets 0\.\.1 expired"):
        mirror.step_at(T0)
    assert mirror.ids() == []

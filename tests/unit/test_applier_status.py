"""A long undo keeps the applier's status fresh: published from inside the undo, paced by an injected clock.

`funnel promote` through a running applier gives up when the applier's status goes
stale; an undo of thousands of transactions reads and inverts them all before its
first commit, so the status must be published from inside it, not only between steps.
"""
from __future__ import annotations

import pytest

from applier.applier import Applier, ApplierOptions, Command
from applier.memory_feed import MemoryFunnel
from applier.transaction import MirrorPosition
from funnel.codec import EventCodec
from funnel.control import STATUS_STALE_AFTER_S, status_key
from funnel.errors import ConfigError
from funnel.events import ChangeBatch, Kind, Op, Row, TableChanges
from funnel.reader import TransactionSummary

READ_S = 0.25  # reading and inverting one transaction, in fake seconds
COMMIT_S = 3.0  # one undo batch's database transaction


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def micros(self) -> int:
        return int(self.now * 1e6)


class Sink:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.positions: list[MirrorPosition] = []

    def claim(self, funnel, mirror):
        return None

    def check_fence(self, funnel, mirror) -> None:
        pass

    def epoch(self, funnel, mirror) -> int:
        return 3

    def apply(self, transactions, position) -> int:
        self.clock.now += COMMIT_S
        self.positions.append(position)
        return len(transactions)

    def close(self) -> None:
        pass


class Reader:
    topic = "shop"

    def __init__(self, clock: Clock, count: int) -> None:
        self.clock = clock
        codec = EventCodec()
        self.summaries = []
        for i in range(count):
            group = TableChanges("items", Op.INSERT, ["id"], ["id"], [Row(None, [i])])
            batch = ChangeBatch("src", f"t{i}", 1_700_000_000_000_000 + i, i, 0, 1, Kind.CHANGES, [group])
            self.summaries.append(TransactionSummary(f"t{i}", batch.commit_ts, Kind.CHANGES, i, i, 1, 1,
                                                     [codec.encode(batch)]))

    def transactions(self, start, end, keep_payloads=False):
        for summary in self.summaries[start:end]:
            self.clock.now += READ_S
            yield summary


class Control:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.published: list[tuple[float, dict]] = []

    def write(self, key, value, flush=True) -> None:
        assert key == status_key("m1")
        self.published.append((self.clock.now, value))


def test_a_long_undo_publishes_status_every_interval_and_counts_what_it_undid() -> None:
    clock = Clock()
    sink = Sink(clock)
    applier = Applier(MemoryFunnel("shop").feed(), sink, ApplierOptions("shop", "m1", delay_s=0),
                      clock=clock.micros, monotonic=clock.monotonic)
    applier.control = Control(clock)
    applier.position = MirrorPosition("shop", "m1", "shop", 0, 200, last_txid="t199")
    applier.command = Command("c1", "promote")
    applier.command.begin(applier.stats)
    started = clock.now

    applier._undo_back(Reader(clock, 200), 0)

    times = [started] + [at for at, _ in applier.control.published]
    assert clock.now - started > 5 * STATUS_STALE_AFTER_S  # reading 200 transactions back: a long undo
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert max(gaps) <= applier.options.status_interval_s + COMMIT_S < STATUS_STALE_AFTER_S, gaps
    assert applier.position.next_offset == 0 and sink.positions[-1].next_offset == 0
    final = applier.status()
    assert final["command"]["undone_transactions"] == 200 and final["command"]["undone_rows"] == 200
    assert final["epoch"] == 3


def test_status_is_published_at_most_once_per_interval_unless_forced() -> None:
    clock = Clock()
    applier = Applier(MemoryFunnel("shop").feed(), Sink(clock), ApplierOptions("shop", "m1", delay_s=0),
                      clock=clock.micros, monotonic=clock.monotonic)
    applier.control = Control(clock)
    applier.position = MirrorPosition("shop", "m1", "shop", 0, 0)
    for _ in range(10):
        applier._publish_status()
        clock.now += 0.25
    applier._publish_status(force=True)
    assert [round(at - 1000.0, 2) for at, _ in applier.control.published] == [0.0, 1.0, 2.0, 2.5]


def test_a_start_that_fails_before_it_could_run_takes_nothing_over() -> None:
    """An operator's mistaken `funnel apply` without a known delay must not fence the applier that runs."""
    class Unclaimed(Sink):
        claims = 0

        def read_position(self, funnel, mirror):
            return MirrorPosition("shop", "m1", "shop", 0, 5)

        def claim(self, funnel, mirror):
            self.claims += 1
            return None

    class NoRecords(Control):
        def read_all(self) -> dict:
            return {}

    clock = Clock()
    sink = Unclaimed(clock)
    applier = Applier(MemoryFunnel("shop").feed(), sink, ApplierOptions("shop", "m1", delay_s=None),
                      clock=clock.micros, monotonic=clock.monotonic)
    applier.control = NoRecords(clock)
    with pytest.raises(ConfigError, match="no delay known"):
        applier.start()
    assert sink.claims == 0

"""The control records as typed values and the numbers derived from them (funnel.records), defined once."""
from __future__ import annotations

import math

import pytest

from funnel.control import ControlState, delay_key, producer_key, status_key, switchback_key
from funnel.errors import ConfigError
from funnel.events import Kind
from funnel.reader import TransactionSummary
from funnel.records import (CaptureStatus, CommandRecord, DelayRecord, MirrorStatus, SwitchbackPhase,
                            check_delay_fits_retention,
                            delay_fits_retention, is_fresh, oldest_pending, retention_headroom_s)

NOW = 1_800_000_000_000_000
S = 1_000_000


def test_a_status_record_survives_json_and_older_records_take_defaults() -> None:
    status = MirrorStatus("m1", "shop", "running", 7, delay_s=60.0, excluded_txids=("t9",), updated_at=NOW)
    assert MirrorStatus.from_json(status.to_json()) == status
    assert status.to_json()["excluded_txids"] == ["t9"]  # JSON as before: a list
    older = MirrorStatus.from_json({"mirror": "m1", "funnel": "shop", "state": "stopped", "next_offset": 3,
                                    "a_key_from_the_future": 1})
    assert (older.epoch, older.mode, older.excluded_txids) == (None, "running", ())


def test_running_is_saying_so_recently() -> None:
    status = MirrorStatus("m1", "shop", "running", 0, updated_at=NOW - 9 * S)
    assert status.running(NOW) and not status.running(NOW + 2 * S)
    assert not MirrorStatus("m1", "shop", "stopped", 0, updated_at=NOW).running(NOW)
    assert is_fresh(NOW, NOW) and not is_fresh(None, NOW)


def test_oldest_pending_counts_copy_rows_but_not_heartbeats() -> None:
    held = [TransactionSummary("h", NOW - 50 * S, Kind.HEARTBEAT, 0, 0),
            TransactionSummary("s", NOW - 40 * S, Kind.SNAPSHOT, 1, 1),
            TransactionSummary("t", NOW - 30 * S, Kind.CHANGES, 2, 2)]
    assert oldest_pending(held) == NOW - 40 * S and oldest_pending(held[:1]) is None


def test_retention_headroom_runs_from_the_oldest_pending_transaction() -> None:
    assert retention_headroom_s(NOW - 100 * S, 3600.0, NOW) == 3500.0
    assert retention_headroom_s(None, 3600.0, NOW) == 3600.0
    assert retention_headroom_s(NOW, math.inf, NOW) == math.inf


def test_a_delay_must_be_shorter_than_the_retention() -> None:
    assert delay_fits_retention(3599.0, 3600.0) and not delay_fits_retention(3600.0, 3600.0)
    with pytest.raises(ConfigError, match="not shorter than funnel 'shop'") as raised:
        check_delay_fits_retention(7200.0, 3600.0, "shop")
    assert raised.value.hint


SWITCHBACK = {"funnel": "shop", "mirror": "m2", "cycle": "c1", "phase": "done", "from_url": "sqlite:///m.db",
              "to_url": "sqlite:///p.db", "reverse_funnel": "shop.switchback-c1", "source_name": "src",
              "started_at": NOW, "updated_at": NOW, "forward": {"next_offset": 40, "low_offset": 40}}


def test_the_control_state_reads_typed_records_by_the_keys_control_builds() -> None:
    capture = {"source": "src", "funnel": "shop", "state": "running", "position": 12, "updated_at": NOW,
               "reconnects": 2}
    state = ControlState({delay_key("m1"): {"delay_s": 60, "set_at": NOW},
                          status_key("m2"): MirrorStatus("m2", "shop", "running", 5).to_json(),
                          producer_key("src"): capture, switchback_key("m2"): SWITCHBACK})
    assert state.mirrors() == ["m1", "m2"]
    assert state.delay("m1") == DelayRecord(60.0, NOW) and state.delay("m2") is None
    assert state.status("m2").next_offset == 5 and state.status("m1") is None
    assert state.captures()["src"].position == 12 and state.switchback("m2").phase is SwitchbackPhase.DONE
    assert state.switchback("m2").forward_next_offset == 40 and state.switchback("m1") is None
    assert CaptureStatus.from_json(capture).to_json() == {**capture, **CaptureStatus.from_json(capture).to_json()}
    assert CaptureStatus.from_json(capture).to_json()["reconnects"] == 2  # keys newer captures add pass through
    assert CommandRecord.from_json(CommandRecord("c1", "seek", NOW, ("t1",)).to_json()) == \
        CommandRecord("c1", "seek", NOW, ("t1",))


def test_a_capture_status_types_the_slot_and_restarts_and_writes_no_slot_for_sqlite() -> None:
    postgres = CaptureStatus("src", "shop", position=12, restarts=2, slot="my_slot", updated_at=NOW)
    assert CaptureStatus.from_json(postgres.to_json()) == postgres
    assert postgres.to_json()["slot"] == "my_slot" and postgres.to_json()["restarts"] == 2
    assert "slot" not in CaptureStatus("src", "shop").to_json()  # the JSON a SQLite capture wrote before
    assert CaptureStatus.from_json({"source": "src", "slot": 7}).slot is None  # not a slot name


def test_a_capture_reports_its_state_until_its_status_goes_stale() -> None:
    stopped = CaptureStatus("src", state="stopped", updated_at=NOW)
    assert stopped.reported_state(NOW + 1 * S) == "stopped" and not stopped.running(NOW + 1 * S)
    assert CaptureStatus("src", updated_at=NOW).reported_state(NOW + 60 * S) == "not running"
    assert CaptureStatus("src", updated_at=NOW).age_s(NOW + 3 * S) == 3.0

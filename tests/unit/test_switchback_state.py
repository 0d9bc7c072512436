"""The switchback's pure parts: the state machine and its decisions, reset plans, checksums, quiet detection."""
from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

import pytest

from applier.switchback.compare import (ResetPlan, TableShape, WriteActivity, checksum_rows, compare_checksums,
                                        compare_tables, is_quiet, plan_reset, row_digest, value_bytes)
from applier.switchback.sqlite_database import _with_affinity
from applier.switchback.state import ALLOWED, NO_RETURN, Phase, SwitchbackState, abort_plan, advance, complete_decision, failed, new_state, next_action, prepare_decision, reverse_funnel_name
from funnel.errors import SwitchbackError
from funnel.urls import without_password

T0 = 1_800_000_000_000_000


def state(phase: Phase = Phase.PREPARING, **changes) -> SwitchbackState:
    base = new_state("shop", "m1", "c0ffee00", "sqlite:///m.db", "sqlite:///p.db", "prod", ("orders",), T0)
    return replace(base, phase=phase, **changes)


# -- the machine ----------------------------------------------------------------------------


def test_the_happy_path_is_allowed_step_by_step_and_recorded():
    current = state()
    path = [Phase.SYNCING, Phase.COMPLETING, Phase.FROZEN, Phase.DRAINED, Phase.VERIFIED, Phase.FORWARD_READY,
            Phase.TAKEN_OVER, Phase.DONE]
    for index, phase in enumerate(path):
        current = advance(current, phase, T0 + index + 1, f"step {phase.value}")
    assert current.phase is Phase.DONE and not current.active
    assert [entry["phase"] for entry in current.history][1:] == [p.value for p in path]
    assert current.updated_at == T0 + len(path)


@pytest.mark.parametrize("start, target", [(Phase.PREPARING, Phase.FROZEN), (Phase.SYNCING, Phase.DONE),
                                           (Phase.FORWARD_READY, Phase.ABORTING), (Phase.DONE, Phase.SYNCING),
                                           (Phase.FROZEN, Phase.SYNCING), (Phase.ABORTED, Phase.PREPARING)])
def test_skipping_a_step_or_going_back_after_the_freeze_is_refused(start, target):
    with pytest.raises(SwitchbackError, match=f"cannot go from {start.value} to {target.value}"):
        advance(state(start), target, T0, "x")


def test_a_failed_freeze_may_go_back_to_syncing_and_nothing_after_no_return_may_abort():
    assert Phase.SYNCING in ALLOWED[Phase.COMPLETING]
    assert all(Phase.ABORTING not in ALLOWED[phase] for phase in NO_RETURN)
    assert all(Phase.ABORTING in ALLOWED[phase] for phase in Phase
               if phase not in NO_RETURN and phase not in (Phase.ABORTING, Phase.ABORTED))


def test_a_record_survives_json_and_a_failure_is_kept_until_the_next_step():
    current = failed(state(Phase.FROZEN, freeze={"marker": 7, "at": T0, "waited_s": 1.5}), "drain timed out", T0 + 5)
    back = SwitchbackState.from_record(json.loads(json.dumps(current.as_record())))
    assert back == current and back.error == "drain timed out" and back.history[-1]["step"].startswith("failed")
    assert advance(back, Phase.DRAINED, T0 + 6, "drained").error is None


def test_an_unreadable_record_is_one_clear_error():
    with pytest.raises(SwitchbackError, match="unreadable switchback record"):
        SwitchbackState.from_record({"phase": "sideways"})


def test_each_cycle_gets_its_own_reverse_funnel():
    assert reverse_funnel_name("shop", "ab12") == "shop.switchback-ab12" != reverse_funnel_name("shop", "cd34")
    assert state().reverse_funnel == "shop.switchback-c0ffee00"


def test_urls_are_recorded_without_password():
    assert without_password("postgresql://app:s3cret@db:5432/shop") == "postgresql://app@db:5432/shop"
    assert without_password("sqlite:///srv/prod.db") == "sqlite:///srv/prod.db"


# -- decisions ------------------------------------------------------------------------------


def test_prepare_starts_a_new_cycle_after_done_or_aborted_and_resumes_an_unfinished_one():
    assert prepare_decision(None, "sqlite:///p.db", None) == "new"
    assert prepare_decision(state(Phase.DONE), "sqlite:///other.db", None) == "new"
    assert prepare_decision(state(Phase.ABORTED), "sqlite:///p.db", None) == "new"
    assert prepare_decision(state(Phase.PREPARING), "sqlite:///p.db", None) == "resume"
    assert prepare_decision(state(Phase.SYNCING), "sqlite:///p.db", "sqlite:///m.db") == "resume"


@pytest.mark.parametrize("phase, to, source, message", [
    (Phase.SYNCING, "sqlite:///elsewhere.db", None, "already syncing"),
    (Phase.PREPARING, "sqlite:///p.db", "sqlite:///other-mirror.db", "reads from sqlite:///m.db"),
    (Phase.FROZEN, "sqlite:///p.db", None, "past preparing"),
    (Phase.ABORTING, "sqlite:///p.db", None, "being aborted"),
])
def test_prepare_refuses_what_would_mix_two_switchbacks(phase, to, source, message):
    with pytest.raises(SwitchbackError, match=message):
        prepare_decision(state(phase), to, source)


def test_complete_needs_a_prepared_switchback_and_says_when_there_is_nothing_left():
    with pytest.raises(SwitchbackError, match="no switchback of mirror 'm1' was prepared"):
        complete_decision(None, "m1")
    with pytest.raises(SwitchbackError, match="not prepared yet"):
        complete_decision(state(Phase.PREPARING), "m1")
    with pytest.raises(SwitchbackError, match="was aborted"):
        complete_decision(state(Phase.ABORTED), "m1")
    assert complete_decision(state(Phase.DONE), "m1") == "done"
    assert all(complete_decision(state(p), "m1") == "resume" for p in
               (Phase.SYNCING, Phase.COMPLETING, Phase.FROZEN, Phase.FORWARD_READY, Phase.TAKEN_OVER))


def test_abort_unfreezes_only_once_a_freeze_may_exist_and_stops_at_the_point_of_no_return():
    syncing = abort_plan(state(Phase.SYNCING), "m1")
    assert syncing.stop_prepare and not syncing.unfreeze_mirror and syncing.remove_reverse_capture
    assert "not restored" in syncing.cannot_undo[0]
    for phase in (Phase.COMPLETING, Phase.FROZEN, Phase.VERIFIED):
        assert abort_plan(state(phase), "m1").unfreeze_mirror
    for phase in NO_RETURN:
        with pytest.raises(SwitchbackError, match="point of no return"):
            abort_plan(state(phase), "m1")
    with pytest.raises(SwitchbackError, match="no switchback of mirror 'm1' to abort"):
        abort_plan(None, "m1")


def test_status_tells_the_next_command():
    assert "prepare" in next_action(None, "m1")
    assert "switchback complete" in next_action(state(Phase.SYNCING), "m1")
    assert "switchback complete" in next_action(state(Phase.FORWARD_READY), "m1")
    assert "funnel apply sqlite:///m.db" in next_action(state(Phase.DONE), "m1")


def test_status_says_when_there_is_nothing_to_switch_back_and_when_prepare_must_run_again():
    assert "unknown mirror 'ghost'" in next_action(None, "ghost", known=False)
    assert "prepare" not in next_action(None, "ghost", known=False)
    not_promoted = next_action(None, "m1", promoted=False)
    assert "mirror 'm1' is not promoted" in not_promoted and "prepare" not in not_promoted
    assert "prepare --mirror m1" in next_action(None, "m1", promoted=True)
    # After a freeze timeout the phase is syncing again, but complete had stopped prepare.
    stopped = next_action(state(Phase.SYNCING), "m1", prepare_running=False)
    assert stopped.startswith("prepare is not running") and "rerun `funnel switchback prepare" in stopped
    assert "--to sqlite:///p.db" in stopped
    assert next_action(state(Phase.SYNCING), "m1", prepare_running=True).startswith("keep prepare running")
    assert "wait until it says syncing" in next_action(state(Phase.PREPARING), "m1", prepare_running=True)
    assert "(re)run `funnel switchback prepare" in next_action(state(Phase.PREPARING), "m1", prepare_running=False)


# -- reset plan -----------------------------------------------------------------------------


def shape(name, columns=("id", "v"), key=("id",)):
    return TableShape(name, tuple(columns), tuple(key))


def test_reset_empties_same_tables_recreates_changed_ones_drops_stale_ones_and_creates_missing_ones():
    production = {"orders": shape("orders"), "Items": shape("Items", ("id", "sku")), "junk": shape("junk"),
                  "keyed": shape("keyed", key=("v",))}
    mirror = {"orders": shape("orders", ("v", "id")), "items": shape("items", ("id", "sku", "qty")),
              "keyed": shape("keyed"), "customers": shape("customers")}
    plan = plan_reset(production, mirror, fold_case=True)
    assert plan == ResetPlan(empty=("orders",), recreate=(("Items", "items"), ("keyed", "keyed")), drop=("junk",),
                             create=("customers",))
    assert plan.summary()["dropped"] == ["junk"]


def test_reset_of_an_empty_production_creates_everything_and_names_compare_by_case_only_where_they_should():
    assert plan_reset({}, {"a": shape("a")}, fold_case=True) == ResetPlan(create=("a",))
    assert plan_reset({"A": shape("A")}, {"a": shape("a")}, fold_case=False) == ResetPlan(drop=("A",),
                                                                                          create=("a",))


# -- checksums ------------------------------------------------------------------------------


def test_values_that_differ_in_type_or_sign_hash_differently():
    values = [None, 0, 0.0, -0.0, "", "0", b"", b"0", True, 1, 1.0, "1", float("nan")]
    encoded = [value_bytes(v) for v in values]
    assert len(set(encoded)) == len(values)
    assert row_digest(("a", "bc")) != row_digest(("ab", "c"))  # values are length-prefixed


def test_checksums_do_not_depend_on_row_order_but_on_every_value():
    table = [(1, "a", 1.5), (2, "b", None), (3, "c", b"\x00")]
    assert checksum_rows(table).checksum == checksum_rows(reversed(table)).checksum
    changed = [(1, "a", 1.5), (2, "b", None), (3, "c", b"\x01")]
    assert checksum_rows(changed).checksum != checksum_rows(table).checksum
    swapped = [(1, "b", 1.5), (2, "a", None), (3, "c", b"\x00")]
    assert checksum_rows(swapped).checksum != checksum_rows(table).checksum
    assert checksum_rows(table).rows == 3 and checksum_rows([]).checksum == "0" * 32


def test_compare_names_the_table_and_what_differs():
    same = {"orders": checksum_rows([(1, "a")])}
    assert compare_checksums(same, {"orders": checksum_rows([(1, "a")])}) == []
    assert compare_checksums(same, {"orders": checksum_rows([(1, "a"), (2, "b")])}) == [
        "table 'orders': 1 rows on the mirror, 2 on production"]
    assert "checksums differ" in compare_checksums(same, {"orders": checksum_rows([(1, "b")])})[0]
    problems = compare_tables({"orders": shape("orders"), "new": shape("new")},
                              {"ORDERS": shape("ORDERS"), "old": shape("old")}, fold_case=True)
    assert problems == ["table 'new' is on the mirror but not on production",
                        "table 'old' is on production but not on the mirror"]


def test_the_mirror_values_are_hashed_as_production_columns_store_them():
    # A mirror column is untyped; production's REAL column stores the 5 an application wrote as 5.0.
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, total REAL, note TEXT, raw)")
    conn.execute("INSERT INTO t VALUES (1, 5, 12, x'00')")
    stored = conn.execute("SELECT * FROM t").fetchall()
    converted = list(_with_affinity([(1, 5, 12, b"\x00")], ["INTEGER", "REAL", "TEXT", ""]))
    assert converted == stored and type(converted[0][1]) is float and converted[0][2] == "12"
    assert checksum_rows(converted).checksum == checksum_rows(stored).checksum
    assert checksum_rows([(1, 5, 12, b"\x00")]).checksum != checksum_rows(stored).checksum


# -- freeze -----------------------------------------------------------------------------------


def test_quiet_means_the_marker_stood_still_for_the_whole_window():
    assert not is_quiet([], 1.0)
    assert not is_quiet([(0.0, 5), (0.5, 5)], 1.0)
    assert is_quiet([(0.0, 5), (0.6, 5), (1.0, 5)], 1.0)
    assert not is_quiet([(0.0, 5), (0.5, 6), (1.2, 6)], 1.0)
    assert is_quiet([(0.0, 5), (0.5, 6), (1.5, 6)], 1.0)
    assert not is_quiet([(0.0, 5), (1.0, 5), (2.0, 6)], 1.0)


def test_the_freeze_report_names_tables_busiest_first_and_the_writers():
    report = WriteActivity({"items": 40, "orders": 20, "customers": 20}, ["pid 42 (python app.py)"]).describe(3.0)
    assert report == ("row changes in the last 3.0s: items +40, customers +20, orders +20; "
                      "still connected: pid 42 (python app.py)")
    assert "write transaction is still open" in WriteActivity().describe(2.0)

"""Small CLI promises of issue 10's QA: a pipe closed by the reader is no error, every
refused input has a ``Try:`` line, and a delay for a mirror that never ran says so."""
from __future__ import annotations

import subprocess
import sys

from producer.library import Publisher
from tests.integration.test_cli_errors import expect_one_error, run_parallel
from tests.support.processes import ROOT, funnel_env, run_funnel


def test_a_reader_that_stops_early_is_no_error(bootstrap, funnel_name):
    # One transaction whose row images are far more than a pipe buffer holds.
    with Publisher(funnel_name, bootstrap=bootstrap, source="shop") as pub:
        with pub.transaction() as tx:
            for key in range(400):
                tx.insert("orders", {"id": key}, {"id": key, "note": "x" * 400})
    inspect = subprocess.Popen([sys.executable, "-m", "funnel.cli", "inspect", "--funnel", funnel_name,
                                "--txid", "shop-1", "--rows"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=funnel_env(bootstrap), cwd=ROOT)
    assert inspect.stdout.readline()  # what `| head -1` reads, then it goes away
    inspect.stdout.close()
    stderr = inspect.stderr.read().decode()
    # Before: exit 1 and nothing said (click's own handling of the broken pipe).
    assert inspect.wait(timeout=120) == 0 and stderr == "", stderr


def test_malformed_durations_and_settings_have_a_hint(bootstrap, funnel_name):
    duration, setting, time = run_parallel(
        bootstrap, ("delay", "m1", "15q", "--funnel", funnel_name),
        ("status", "--funnel", funnel_name, "-X", "no-equals-sign"),
        ("seek", "m1", "--to", "yesterday", "--funnel", funnel_name))
    assert "malformed duration '15q'" in expect_one_error(duration[0])
    assert "malformed -X setting 'no-equals-sign'" in expect_one_error(setting[0])
    assert "malformed time 'yesterday'" in expect_one_error(time[0])


def test_a_delay_for_a_mirror_that_never_ran_is_set_with_a_note(bootstrap, funnel_name):
    result = run_funnel(bootstrap, "delay", "typo", "15m", "--funnel", funnel_name)
    assert result.returncode == 0, result.stderr
    assert "delay set to 15m" in result.stdout
    assert result.stderr.strip() == ("note: no applier of mirror 'typo' has reported yet; "
                                     "it will start with this delay")

"""The operator hook runner (funnel/hooks.py) that promote and switchback share."""
from __future__ import annotations

from funnel.hooks import TIMED_OUT, run_hook


def test_exit_code_and_both_output_streams_are_reported() -> None:
    result = run_hook("echo to-stdout; echo to-stderr >&2; exit 3", {})
    assert result.exit_code == 3 and not result.ok
    assert result.output == "to-stdout\nto-stderr\n"
    assert result.describe("takeover") == f"takeover: hook exited 3 after {result.seconds}s:\nto-stdout\nto-stderr"


def test_the_hook_sees_its_environment_and_ours() -> None:
    result = run_hook('echo "$FUNNEL_MIRROR/$PATH"', {"FUNNEL_MIRROR": "m1"})
    assert result.ok
    mirror, path = result.output.strip().split("/", 1)
    assert mirror == "m1" and path  # PATH is inherited, so the hook finds its tools


def test_a_url_in_the_environment_goes_without_its_password() -> None:
    url = "postgresql://app:s3cret@db.example:5432/shop"
    result = run_hook('echo "$FUNNEL_SINK_URL"', {"FUNNEL_SINK_URL": url, "FUNNEL_AT": "2026-11-29T12:00:00Z"})
    assert result.output.strip() == "postgresql://app@db.example:5432/shop"
    assert "s3cret" not in str(result.as_dict())
    assert result.environment["FUNNEL_AT"] == "2026-11-29T12:00:00Z"


def test_a_hook_that_hangs_is_stopped_and_reported() -> None:
    result = run_hook("echo started; exec sleep 30", {}, timeout_s=0.5)
    assert result.exit_code == TIMED_OUT
    assert result.output.startswith("hook timed out after")
    assert result.seconds < 20

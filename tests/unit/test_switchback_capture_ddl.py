"""A switchback's captures capture schema changes when the forward capture did (no broker)."""
from __future__ import annotations

from types import SimpleNamespace

from applier.switchback import reverse
from applier.switchback.state import new_state
from funnel.control import ControlState, producer_key
from funnel.records import CaptureStatus
from producer.capture import Capture


class Publisher:
    funnel, source = "shop", "prod"
    published_transactions = published_events = published_rows = published_bytes = 0


def status_of(source: object) -> dict:
    return Capture(source, Publisher()).status().to_json()


def test_the_capture_status_records_capture_ddl_and_older_records_read_as_without():
    assert status_of(SimpleNamespace(slot="timefunnel_shop", capture_ddl=True))["capture_ddl"] is True
    assert "capture_ddl" not in status_of(SimpleNamespace(slot="timefunnel_shop", capture_ddl=False))
    assert "capture_ddl" not in status_of(SimpleNamespace())  # a SQLite source follows migrations anyway
    assert CaptureStatus.from_json({"source": "prod"}).capture_ddl is False
    assert CaptureStatus.from_json({"source": "prod", "capture_ddl": True}).capture_ddl is True


class Port:
    def __init__(self) -> None:
        self.opened: list[dict] = []

    def open(self, url, funnel, source_name, tables, publish_status, capture_ddl=False):
        self.opened.append({"url": url, "capture_ddl": capture_ddl})
        return SimpleNamespace(close=lambda: None)


def context(records: dict) -> SimpleNamespace:
    control = SimpleNamespace(state=lambda: ControlState(records))
    return SimpleNamespace(port=Port(), control=control, kafka=None, mirror="m1", poll_interval_s=0.2)


def test_the_reverse_capture_passes_capture_ddl_when_the_forward_capture_had_it(monkeypatch):
    monkeypatch.setattr(reverse, "open_sink", lambda *args, **kwargs: SimpleNamespace())
    monkeypatch.setattr(reverse, "Applier", lambda *args, **kwargs: SimpleNamespace())
    state = new_state("shop", "m1", "c1", "postgresql://m/db", "postgresql://p/db", "prod", ("public.t",), 1)
    for recorded, expected in (({"source": "prod", "capture_ddl": True}, True), ({"source": "prod"}, False)):
        ctx = context({producer_key("prod"): recorded})
        reverse.open_pipeline(ctx, state, "postgresql://m/db", "postgresql://p/db")
        assert ctx.port.opened == [{"url": "postgresql://m/db", "capture_ddl": expected}]
    assert reverse.forward_captures_ddl(context({}), "prod") is False  # no forward capture ever reported

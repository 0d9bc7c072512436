"""A control record the broker never acknowledged is an Error with a Try line (seen when
the broker died while `funnel seek` was writing its command)."""
from __future__ import annotations

import socket

import pytest

import funnel.control as control
from funnel.errors import FunnelError
from funnel.kafka import KafkaSettings


def test_an_undelivered_control_record_has_a_hint(monkeypatch):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(control, "READ_TIMEOUT_S", 0.5)
    channel = control.ControlChannel(KafkaSettings(f"127.0.0.1:{port}"), "shop")
    with pytest.raises(FunnelError, match="not delivered") as caught:
        channel.write("delay/m1", {"delay_s": 60})
    assert caught.value.hint and "run the command again" in caught.value.hint

"""The shared /metrics endpoint of ``funnel apply`` and ``funnel capture``: no broker needed."""
from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from funnel.errors import ConfigError
from funnel.metrics_endpoint import new_registry, sample, serve_registry


class OneGauge(Collector):
    def __init__(self, value: float | None) -> None:
        self.value = value

    def collect(self):
        yield from sample(GaugeMetricFamily, "tf_test_value", "A test value.", ("funnel",), ["f1"], self.value)


def test_a_value_of_none_is_left_out() -> None:
    assert sample(GaugeMetricFamily, "tf_x", "x", ("funnel",), ["f"], None) == ()
    (family,) = sample(GaugeMetricFamily, "tf_x", "x", ("funnel",), ["f"], 0.0)
    assert [(s.labels, s.value) for s in family.samples] == [({"funnel": "f"}, 0.0)]


def test_serves_the_collector_and_process_metrics_then_closes() -> None:
    closed = []
    endpoint = serve_registry(new_registry(OneGauge(42.0)), 0, "127.0.0.1", on_close=lambda: closed.append(1))
    try:
        assert endpoint.url.startswith("http://127.0.0.1:") and endpoint.url.endswith("/metrics")
        text = urllib.request.urlopen(endpoint.url, timeout=10).read().decode()
    finally:
        endpoint.close()
    assert 'tf_test_value{funnel="f1"} 42.0' in text
    assert "python_gc_objects_collected_total" in text
    assert closed == [1]


def test_a_taken_port_is_a_config_error() -> None:
    first = serve_registry(new_registry(OneGauge(None)), 0, "127.0.0.1")
    try:
        port = first.server.server_port
        with pytest.raises(ConfigError) as caught:
            serve_registry(new_registry(OneGauge(None)), port, "127.0.0.1")
    finally:
        first.close()
    assert f"127.0.0.1:{port}" in str(caught.value) and "--metrics-port" in caught.value.hint

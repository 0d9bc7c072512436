"""The ``/metrics`` HTTP endpoint that ``funnel apply`` and ``funnel capture`` serve.

Each side brings its own collector (``applier.metrics``, ``producer.metrics``), read at
scrape time; this module gives both the same registry (plus process, platform and
garbage-collector metrics), the same one-sample families and the same server.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from funnel.errors import ConfigError


class MetricsEndpoint:
    """The HTTP server of ``/metrics`` and what feeds it; ``close()`` stops both."""

    def __init__(self, server, url: str, on_close: Callable[[], None] | None = None) -> None:
        self.server = server
        self.url = url
        self._on_close = on_close

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._on_close is not None:
            self._on_close()


def new_registry(collector: Collector) -> CollectorRegistry:
    """A registry with ``collector`` and the process, platform and GC metrics every exporter shows."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(collector)
    return registry


def sample(kind: type, name: str, doc: str, label_names: Sequence[str], labels: Sequence[str],
           value: float | None) -> tuple[Metric, ...]:
    """One family with one sample, or none when ``value`` is None (absent, not wrong)."""
    if value is None:
        return ()
    family = kind(name, doc, labels=list(label_names))
    family.add_metric(list(labels), value)
    return (family,)


def serve_registry(registry: CollectorRegistry, port: int, addr: str,
                   on_close: Callable[[], None] | None = None) -> MetricsEndpoint:
    """Serve ``registry`` on http://addr:port/metrics (port 0: any free port).

    Raises ConfigError when the address cannot be bound.
    """
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}",
                          hint="choose another --metrics-port (0 picks a free one) or --metrics-addr") from exc
    host = f"[{addr}]" if ":" in addr else addr
    return MetricsEndpoint(server, f"http://{host}:{server.server_port}/metrics", on_close)

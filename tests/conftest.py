"""Session fixtures: one real Kafka broker and one real PostgreSQL server for all tests.

Kafka: ``FUNNEL_TEST_BOOTSTRAP`` if set; else testcontainers' Kafka module if
``FUNNEL_TEST_BROKER=testcontainers`` (needs Docker); else the project's own local
Apache Kafka (``funnel.broker.LocalBroker``) in a temporary state directory.
PostgreSQL: ``FUNNEL_TEST_POSTGRES`` (a URL) if set; else a private server started
from the installed binaries (``tests/support/pgserver.py``).

Under pytest-xdist (``make test`` runs ``-n``) "session" means one worker: each worker
starts its own broker and PostgreSQL on free ports in its own temporary directories.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass

import pytest

_banner: list[str] = []


@dataclass(frozen=True)
class KafkaEndpoint:
    bootstrap: str
    description: str


@pytest.fixture(scope="session")
def kafka() -> KafkaEndpoint:
    explicit = os.environ.get("FUNNEL_TEST_BOOTSTRAP")
    if explicit:
        endpoint = KafkaEndpoint(explicit, f"external broker at {explicit} (FUNNEL_TEST_BOOTSTRAP)")
        _banner.append(f"kafka: {endpoint.description}")
        yield endpoint
        return
    if os.environ.get("FUNNEL_TEST_BROKER") == "testcontainers":
        yield from _testcontainers_kafka()
        return
    from funnel.broker import LocalBroker

    with tempfile.TemporaryDirectory(prefix="timefunnel-broker-") as state:
        broker = LocalBroker(state)
        with broker:
            info = broker.info
            endpoint = KafkaEndpoint(info.bootstrap, f"Apache Kafka {info.version} (local KRaft, "
                                                     f"pid {info.pid}) at {info.bootstrap}")
            _banner.append(f"kafka: {endpoint.description}")
            yield endpoint


def _testcontainers_kafka():
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft() as container:
        bootstrap = container.get_bootstrap_server()
        endpoint = KafkaEndpoint(bootstrap, f"testcontainers Kafka at {bootstrap}")
        _banner.append(f"kafka: {endpoint.description}")
        yield endpoint


@pytest.fixture(scope="session")
def bootstrap(kafka: KafkaEndpoint) -> str:
    return kafka.bootstrap


@pytest.fixture
def topic_name() -> str:
    """A fresh, unique topic (funnel) name for each test."""
    return f"tf-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def funnel_name(bootstrap, topic_name) -> str:
    """A fresh funnel (data and control topics, retention 1 day), made with the real CLI."""
    from tests.support.processes import run_funnel

    result = run_funnel(bootstrap, "create", topic_name, "--retention", "1d")
    assert result.returncode == 0, result.stderr
    return topic_name


@pytest.fixture
def procs():
    """Background `funnel` processes started by a test; stopped (SIGTERM) at its end."""
    started: list = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    explicit = os.environ.get("FUNNEL_TEST_POSTGRES")
    if explicit:
        _banner.append(f"postgresql: external server {explicit} (FUNNEL_TEST_POSTGRES)")
        yield explicit
        return
    from tests.support.pgserver import PrivatePostgres

    server = PrivatePostgres().start()
    _banner.append(f"postgresql: private {server.version} at 127.0.0.1:{server.port}")
    try:
        yield server.url
    finally:
        server.stop()


def _local_broker_wanted() -> bool:
    return not os.environ.get("FUNNEL_TEST_BOOTSTRAP") and os.environ.get("FUNNEL_TEST_BROKER") != "testcontainers"


def pytest_configure(config) -> None:
    # Under xdist the workers start their brokers at the same moment: on a fresh machine
    # two Maven downloads into one cache directory could hand a worker half-written jars.
    # The controller (which runs no tests) fills the cache once before it starts them.
    is_controller = not hasattr(config, "workerinput") and getattr(config.option, "numprocesses", None)
    if is_controller and _local_broker_wanted():
        from funnel.broker import resolve_jars
        from funnel.errors import BrokerError

        try:
            resolve_jars()
        except BrokerError:
            pass  # each worker's broker fixture then reports the same error on its tests


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session) -> None:
    # An xdist worker's terminal output is discarded: hand its banner to the controller.
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["timefunnel_banner"] = list(_banner)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    worker = node.gateway.id
    _banner.extend(f"[{worker}] {line}" for line in getattr(node, "workeroutput", {}).get("timefunnel_banner", []))


def pytest_terminal_summary(terminalreporter) -> None:
    for line in _banner:
        terminalreporter.write_line(line)

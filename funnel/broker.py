"""A local single-node Apache Kafka (KRaft) for the demo and the tests.

The broker is the real one: the official ``org.apache.kafka:kafka_2.13`` jars from
Maven Central, resolved once with Maven into the user's cache directory and started
with Java 17.  We never substitute a Kafka-compatible imitation: the properties the
funnel relies on (``offsets_for_times``, watermarks, transactions, compaction) are
exactly what imitations get wrong (docs/ARCHITECTURE.md, Local broker).

Use it from code as a context manager::

    with LocalBroker(state_dir) as broker:
        print(broker.bootstrap)

or from the shell with ``funnel broker start|stop|status``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from funnel.errors import BrokerError

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"  # the log4j2 that kafka 4.1 itself depends on
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "timefunnel"


def default_state_dir() -> Path:
    explicit = os.environ.get("FUNNEL_STATE_DIR")
    if explicit:
        return Path(explicit) / "broker"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "timefunnel" / "broker"


@dataclass(frozen=True)
class BrokerInfo:
    """What ``broker.json`` in the state directory records about a running broker."""

    pid: int
    bootstrap: str
    controller: str
    version: str
    state_dir: str
    log_file: str


def require_tool(name: str, what: str) -> str:
    """Return the path of ``name`` or raise BrokerError saying what to install."""
    path = shutil.which(name)
    if not path:
        raise BrokerError(f"{name} not found on PATH", hint=f"install {what}")
    return path


def java_command() -> str:
    """The java binary: ``FUNNEL_JAVA``, then ``$JAVA_HOME/bin/java``, then PATH."""
    explicit = os.environ.get("FUNNEL_JAVA")
    if explicit:
        return explicit
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return require_tool("java", "Java 17 (Debian: apt install openjdk-17-jre-headless)")


def _pom(version: str) -> str:
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>timefunnel.local</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"""


def resolve_jars(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> Path:
    """Download the broker's jars with Maven once; later calls reuse the cache.

    Raises BrokerError when Maven is missing or cannot resolve the artifacts.
    """
    libs = (cache_dir or default_cache_dir()) / f"kafka-{version}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = require_tool("mvn", "Maven (Debian: apt install maven)")
    libs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        Path(work, "pom.xml").write_text(_pom(version))
        result = subprocess.run(
            [mvn, "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={libs}",
             "-DincludeScope=runtime"],
            cwd=work, capture_output=True, text=True,
        )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise BrokerError(f"Maven could not resolve org.apache.kafka:kafka_2.13:{version}:\n{tail}")
    marker.write_text(version)
    return libs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a listener can bind ``port`` on 127.0.0.1 now (connections of a killed
    broker left in TIME_WAIT do not count: Kafka binds with SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _if_free(port: int | None) -> int | None:
    return port if port and port_is_free(port) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    # Retention checks and segment deletion run every second so that tests and the
    # demo can show expiry with tiny retentions; a production cluster keeps defaults.
    return f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data_dir}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.check.interval.ms=1000
log.segment.delete.delay.ms=1000
log.cleaner.backoff.ms=1000
"""


LOG4J2_CONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="${sys:kafka.logs.dir}/server.log">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


class LocalBroker:
    """One broker per state directory: start, stop, status, and a context manager."""

    def __init__(self, state_dir: Path | str | None = None, version: str = KAFKA_VERSION,
                 port: int | None = None, cache_dir: Path | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.version = version
        self.port = port
        self.cache_dir = cache_dir
        self.info: BrokerInfo | None = None
        self._started_here = False
        # The port of the last run when start() found it taken and listened elsewhere:
        # clients still retrying that port will never find this broker.
        self.moved_from: int | None = None

    # -- paths -----------------------------------------------------------------
    @property
    def info_file(self) -> Path:
        return self.state_dir / "broker.json"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def bootstrap(self) -> str:
        if not self.info:
            raise BrokerError("the local broker is not running", hint="funnel broker start")
        return self.info.bootstrap

    # -- status ----------------------------------------------------------------
    def running(self) -> BrokerInfo | None:
        """The broker recorded in the state directory, if its process still lives."""
        try:
            info = BrokerInfo(**json.loads(self.info_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return info if pid_alive(info.pid) else None

    # -- start -----------------------------------------------------------------
    def start(self) -> tuple[BrokerInfo, bool]:
        """Start the broker unless one already runs here; returns (info, started_now).

        Raises BrokerError with the broker's last log lines when it does not come up.
        """
        existing = self.running()
        if existing:
            self.info = existing
            return existing, False
        java = java_command()
        libs = resolve_jars(self.version, self.cache_dir)
        recorded, recorded_controller = self.recorded_ports()
        # Clients that ran through a crash keep retrying the address they were given:
        # come back where they look, unless something else took the port meanwhile.
        port = self.port or _if_free(recorded) or free_port()
        self.moved_from = recorded if recorded and not self.port and port != recorded else None
        controller_port = _if_free(recorded_controller) or free_port()
        config = self._write_config(port, controller_port)
        self._format_storage(java, libs, config)
        process = self._spawn(java, libs, config)
        info = BrokerInfo(pid=process.pid, bootstrap=f"127.0.0.1:{port}",
                          controller=f"127.0.0.1:{controller_port}", version=self.version,
                          state_dir=str(self.state_dir), log_file=str(self.log_dir / "server.log"))
        self._wait_until_ready(process, info)
        self.info_file.write_text(json.dumps(asdict(info), indent=2))
        self.info = info
        return info, True

    def recorded_ports(self) -> tuple[int | None, int | None]:
        """(listener, controller) ports of the last run in this state directory, if any."""
        try:
            text = (self.state_dir / "server.properties").read_text()
        except OSError:
            return None, None
        line = re.search(r"^listeners=(.*)$", text, re.MULTILINE)
        found = dict(re.findall(r"(PLAINTEXT|CONTROLLER)://[^:,]+:(\d+)", line[1] if line else ""))
        ports = [int(found[name]) if name in found else None for name in ("PLAINTEXT", "CONTROLLER")]
        return ports[0], ports[1]

    def _write_config(self, port: int, controller_port: int) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in ("stdout.log", "server.log"):  # keep one previous run for post-mortems
            if (self.log_dir / name).exists():
                (self.log_dir / name).replace(self.log_dir / f"{name}.prev")
        config = self.state_dir / "server.properties"
        config.write_text(server_properties(self.state_dir / "data", port, controller_port))
        (self.state_dir / "log4j2.xml").write_text(LOG4J2_CONFIG)
        return config

    def _format_storage(self, java: str, libs: Path, config: Path) -> None:
        # Ports may change between runs, the cluster's data may not: format only once.
        if (self.state_dir / "data" / "meta.properties").exists():
            return
        try:
            result = subprocess.run(
                [java, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
                 "-t", uuid.uuid4().hex[:22], "-c", str(config)],
                capture_output=True, text=True, timeout=120)
        except OSError as exc:
            raise BrokerError(f"cannot run Java ({java}): {exc}",
                              hint="install Java 17 or set JAVA_HOME / FUNNEL_JAVA") from exc
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise BrokerError(f"formatting the broker's storage failed ({java}):\n{tail}",
                              hint="check that Java 17 is installed (java -version)")

    def _spawn(self, java: str, libs: Path, config: Path) -> subprocess.Popen:
        stdout = open(self.log_dir / "stdout.log", "ab")
        try:
            return subprocess.Popen(
                [java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC",
                 f"-Dkafka.logs.dir={self.log_dir}",
                 f"-Dlog4j2.configurationFile={self.state_dir / 'log4j2.xml'}",
                 "-cp", f"{libs}/*", "kafka.Kafka", str(config)],
                stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # outlives the CLI that started it
        except OSError as exc:
            raise BrokerError(f"cannot run Java ({java}): {exc}",
                              hint="install Java 17 or set JAVA_HOME / FUNNEL_JAVA") from exc
        finally:
            stdout.close()

    def _wait_until_ready(self, process: subprocess.Popen, info: BrokerInfo) -> None:
        from confluent_kafka.admin import AdminClient  # heavy import, only when starting

        admin = AdminClient({"bootstrap.servers": info.bootstrap, "log_level": 0})
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log = self.last_log_lines()
                hint = ("choose another --port or stop what listens there"
                        if "Address already in use" in self._log_text() else None)
                raise BrokerError(f"the broker exited with code {process.returncode} while "
                                  f"starting; last log lines:\n{log}", hint=hint)
            try:
                if admin.list_topics(timeout=1).brokers:
                    return
            except Exception:  # KafkaException until the listener answers; keep waiting
                time.sleep(0.2)
        process.kill()
        raise BrokerError(f"the broker did not answer within {START_TIMEOUT_S:.0f}s; "
                          f"last log lines:\n{self.last_log_lines()}")

    def last_log_lines(self, count: int = 12) -> str:
        """The broker's ERROR lines (the cause) followed by its last lines (the context)."""
        lines = self._log_text().splitlines()
        errors = [line for line in lines if " ERROR " in line or " FATAL " in line][-5:]
        tail = [line for line in lines[-count:] if line not in errors]
        return "\n".join(errors + tail) or "(no log output)"

    def _log_text(self) -> str:
        return "".join((self.log_dir / name).read_text(errors="replace")
                       for name in ("stdout.log", "server.log") if (self.log_dir / name).exists())

    # -- stop ------------------------------------------------------------------
    def stop(self) -> BrokerInfo | None:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after a grace period).

        Returns the stopped broker's info, or None when none was running.
        """
        info = self.running()
        if not info:
            self.info_file.unlink(missing_ok=True)
            return None
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while pid_alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
        self._reap(info.pid)
        self.info_file.unlink(missing_ok=True)
        self.info = None
        return info

    @staticmethod
    def _reap(pid: int) -> None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not our child (started by another CLI call): init reaps it

    # -- context manager -------------------------------------------------------
    def __enter__(self) -> "LocalBroker":
        _, self._started_here = self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Leave a broker that somebody else started (funnel broker start) running.
        if self._started_here:
            self.stop()

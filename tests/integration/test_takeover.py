"""`funnel takeover pgbouncer|haproxy` against a real pgbouncer and a real HAProxy (Debian's
packages) on private loopback ports: the move, the rerun that does nothing, and bad input
refused with one line and nothing changed."""
from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from applier.takeover.haproxy import RuntimeApi, parse_servers_state
from tests.support.pgserver import _free_port
from tests.support.poolers import HAProxy, PgBouncer
from tests.support.processes import ROOT


def funnel(*args: str, sink_url: str | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "FUNNEL_SINK_URL"}
    env["PYTHONPATH"] = str(ROOT)
    if sink_url:
        env["FUNNEL_SINK_URL"] = sink_url
    return subprocess.run([sys.executable, "-m", "funnel.cli", "takeover", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)


def ok(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout.splitlines()


def refused(result: subprocess.CompletedProcess) -> str:
    """Exit 1, one `Error:` line (and a `Try:` line), no traceback, nothing on stdout."""
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Error: ") and len(lines) <= 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", result.stdout
    return lines[0]


def refused_after_actions(result: subprocess.CompletedProcess) -> str:
    """Exit 1 and one `Error:` line after the lines of the actions taken and undone."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, f"{result.stdout}\n{result.stderr}"
    assert result.stdout.splitlines()[-1].startswith("resumed 'app' where it was"), result.stdout
    return result.stderr.splitlines()[0]


# -- pgbouncer --------------------------------------------------------------------------


@pytest.fixture
def bouncer(postgres_url):
    port = psycopg.conninfo.conninfo_to_dict(postgres_url)["port"]
    server = PgBouncer(app=f"host=127.0.0.1 port={port} dbname=postgres pool_size=5",
                       other=f"host=127.0.0.1 port={port} dbname=postgres").start()
    yield server, int(port)
    server.stop()


def where(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT current_database()").fetchone()[0]


def test_pgbouncer_move_keeps_the_client_connection_and_a_rerun_does_nothing(bouncer):
    server, port = bouncer
    config = str(server.config)
    before = server.config.read_text()
    client = psycopg.connect(server.url("app"), autocommit=True, prepare_threshold=None)
    assert where(client) == "postgres"

    # As a takeover hook: the target comes from FUNNEL_SINK_URL (its user is not used).
    lines = ok(funnel("pgbouncer", "app", "--config", config,
                      sink_url=f"postgresql://apply@127.0.0.1:{port}/template1"))
    assert [line.split(" ")[0] for line in lines] == ["paused", "rewrote", "reloaded:", "resumed"], lines
    assert where(client) == "template1", "the same client connection goes on at the new database"
    after = server.config.read_text()
    changed = [(old, new) for old, new in zip(before.splitlines(), after.splitlines()) if old != new]
    assert changed == [(f"app = host=127.0.0.1 port={port} dbname=postgres pool_size=5",
                        f"app = host=127.0.0.1 port={port} dbname=template1 pool_size=5")]
    assert len(after.splitlines()) == len(before.splitlines()) and after.endswith("\n")
    assert server.show_databases()["app"]["database"] == "template1" and not server.show_databases()["app"]["paused"]

    again = ok(funnel("pgbouncer", "app", f"postgresql://127.0.0.1:{port}/template1", "--config", config))
    assert again == [f"pgbouncer database 'app' already points at 127.0.0.1:{port}/template1: nothing to do"]
    assert server.config.read_text() == after

    # The freeze hook holds the clients; the takeover hook moves and releases them.
    assert ok(funnel("pgbouncer", "app", "--pause-only", "--config", config))[0].startswith("paused 'app'")
    assert ok(funnel("pgbouncer", "app", "--pause-only", "--config", config)) == [
        "pgbouncer database 'app' is already paused"]
    answer: list[str] = []
    held = threading.Thread(target=lambda: answer.append(where(client)))
    held.start()
    time.sleep(0.5)
    assert answer == [], "a paused entry holds its clients"
    lines = ok(funnel("pgbouncer", "app", f"postgresql://127.0.0.1:{port}/postgres", "--config", config))
    assert [line.split(" ")[0] for line in lines] == ["rewrote", "reloaded:", "resumed"], lines
    held.join(10)
    assert answer == ["postgres"]
    assert ok(funnel("pgbouncer", "app", "--resume-only", "--admin", server.admin_url)) == [
        "pgbouncer database 'app' is already running"]
    client.close()


def test_pgbouncer_bad_input_is_one_line_and_changes_nothing(bouncer, tmp_path):
    server, port = bouncer
    config = str(server.config)
    text, shown = server.config.read_text(), server.show_databases()
    target = f"postgresql://127.0.0.1:{port}/template1"
    cases = {
        "has no [databases] entry 'nosuch'": ("pgbouncer", "nosuch", target, "--config", config),
        "cannot reach pgbouncer's admin console": ("pgbouncer", "app", target, "--config", config, "--admin",
                                                   f"postgresql://postgres@127.0.0.1:{_free_port()}/pgbouncer"),
        "malformed target": ("pgbouncer", "app", "postgresql://127.0.0.1/x?bogus=1", "--config", config),
        "no target given": ("pgbouncer", "app", "--config", config),
        "cannot read the pgbouncer configuration": ("pgbouncer", "app", target, "--config", str(tmp_path / "no.ini")),
    }
    for expected, args in cases.items():
        assert expected in refused(funnel(*args)), expected
    # An entry the file has but the running pgbouncer does not (the file edited, not reloaded).
    server_text = text.replace("[databases]\n", f"[databases]\nlate = host=127.0.0.1 port={port} dbname=x\n")
    edited = tmp_path / "edited.ini"
    edited.write_text(server_text)
    assert "pgbouncer has no database 'late'" in refused(
        funnel("pgbouncer", "late", target, "--config", str(edited), "--admin", server.admin_url))
    assert edited.read_text() == server_text
    # A --config that is not the file pgbouncer runs with: the RELOAD does not take, all is undone.
    copy = tmp_path / "copy.ini"
    copy.write_text(text)
    failed = funnel("pgbouncer", "app", target, "--config", str(copy), "--admin", server.admin_url)
    error = refused_after_actions(failed)
    assert "after RELOAD pgbouncer shows 'app' at" in error and "undone, 'app' is as it was" in error
    assert copy.read_text() == text
    assert server.config.read_text() == text and server.show_databases() == shown


def test_pgbouncer_pause_that_cannot_finish_in_session_mode_resumes_and_fails(postgres_url):
    port = psycopg.conninfo.conninfo_to_dict(postgres_url)["port"]
    server = PgBouncer(pool_mode="session", app=f"host=127.0.0.1 port={port} dbname=postgres").start()
    try:
        with psycopg.connect(server.url("app"), autocommit=True) as session:
            assert where(session) == "postgres"  # the session holds a server connection until it ends
            error = refused(funnel("pgbouncer", "app", f"postgresql://127.0.0.1:{port}/template1", "--config",
                                   str(server.config), "--pause-timeout", "1s"))
            assert "did not finish within 1s" in error and "pool_mode = session" in error
            assert where(session) == "postgres", "the session goes on, untouched"
            assert not server.show_databases()["app"]["paused"]
            assert "dbname=postgres" in server.config.read_text()
    finally:
        server.stop()


# -- HAProxy ----------------------------------------------------------------------------


class Banner(socketserver.ThreadingTCPServer):
    """A TCP server that greets each connection with its name and keeps it open."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str) -> None:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.sendall(name.encode() + b"\n")
                while not outer.closing.is_set() and self.request.recv(64):
                    pass

        self.closing = threading.Event()
        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()


def greeting(port: int) -> tuple[str, socket.socket]:
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    return conn.recv(64).decode().strip(), conn


@pytest.fixture
def proxied():
    a, b = Banner("A"), Banner("B")
    proxy = HAProxy(f"127.0.0.1:{a.port}").start()
    yield proxy, a, b
    proxy.stop()
    a.close()
    b.close()


def test_haproxy_move_cuts_old_sessions_and_a_rerun_does_nothing(proxied):
    proxy, a, b = proxied
    name, old_session = greeting(proxy.port)
    assert name == "A"
    lines = ok(funnel("haproxy", "be/db", "--socket", str(proxy.socket),
                      sink_url=f"postgresql://mirror@127.0.0.1:{b.port}/shop"))
    assert lines[0] == "disable server be/db" and lines[1] == "shutdown sessions server be/db", lines
    assert lines[2].startswith(f"set server be/db addr 127.0.0.1 port {b.port}: IP changed") or \
        lines[2].startswith(f"set server be/db addr 127.0.0.1 port {b.port}: no need"), lines
    assert lines[3:] == ["enable server be/db"], lines
    assert old_session.recv(64) == b"", "the session to the old server is cut, the application reconnects"
    assert greeting(proxy.port)[0] == "B"
    assert ok(funnel("haproxy", "be/db", f"127.0.0.1:{b.port}", "--socket", str(proxy.socket))) == [
        f"HAProxy server be/db already at 127.0.0.1:{b.port}, enabled: nothing to do"]

    # Freeze (maintenance) then the takeover, over the TCP runtime API.
    api = f"127.0.0.1:{proxy.api_port}"
    assert ok(funnel("haproxy", "be/db", "--disable-only", "--socket", api)) == [
        "disable server be/db", "shutdown sessions server be/db"]
    assert ok(funnel("haproxy", "be/db", "--disable-only", "--socket", api)) == [
        "HAProxy server be/db is already disabled: nothing to do"]
    assert ok(funnel("haproxy", "be/db", f"localhost:{a.port}", "--socket", api))[-1] == "enable server be/db"
    assert greeting(proxy.port)[0] == "A"


def test_haproxy_bad_input_is_one_line_and_changes_nothing(proxied, tmp_path):
    proxy, a, b = proxied
    sock = str(proxy.socket)
    api = RuntimeApi(sock)
    state = parse_servers_state(api.send("show servers state be"), "be")
    assert (state["db"].addr, state["db"].port, state["db"].disabled) == ("127.0.0.1", a.port, False)
    target = f"127.0.0.1:{b.port}"
    cases = {
        "has no server 'nosuch' (it has db, spare)": ("haproxy", "be/nosuch", target, "--socket", sock),
        "answered `show servers state nosuch`": ("haproxy", "nosuch/db", target, "--socket", sock),
        "cannot reach HAProxy's runtime API": ("haproxy", "be/db", target, "--socket", str(tmp_path / "no.sock")),
        "expected BACKEND/SERVER": ("haproxy", "bedb", target, "--socket", sock),
        "no target given": ("haproxy", "be/db", "--socket", sock),
    }
    for expected, args in cases.items():
        assert expected in refused(funnel(*args)), expected
    assert parse_servers_state(api.send("show servers state be"), "be") == state, "nothing changed"
    assert greeting(proxy.port)[0] == "A", "nothing moved"


def test_haproxy_runtime_api_below_admin_is_refused():
    a = Banner("A")
    proxy = HAProxy(f"127.0.0.1:{a.port}", level="operator").start()
    try:
        error = refused(funnel("haproxy", "be/db", "127.0.0.1:5432", "--socket", str(proxy.socket)))
        assert "has level 'operator'; a move needs admin" in error
        assert greeting(proxy.port)[0] == "A"
    finally:
        proxy.stop()
        a.close()

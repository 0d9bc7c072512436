"""The local broker comes back on the ports it last used, when they are free (no Java needed)."""
from __future__ import annotations

import socket

from funnel.broker import LocalBroker, free_port, port_is_free, server_properties


def test_recorded_ports_are_read_from_the_last_config(tmp_path):
    (tmp_path / "server.properties").write_text(server_properties(tmp_path / "data", 40123, 40124))
    assert LocalBroker(tmp_path).recorded_ports() == (40123, 40124)


def test_no_config_records_no_ports(tmp_path):
    assert LocalBroker(tmp_path).recorded_ports() == (None, None)


def test_a_port_someone_listens_on_is_not_free():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free(port)
    assert port_is_free(port)
    assert port_is_free(free_port())


def test_a_restart_whose_port_was_taken_meanwhile_says_so(tmp_path, monkeypatch):
    """After a crash, `broker start` comes back on the recorded port when it is free; when
    something else took it, the broker listens elsewhere and the operator must hear that the
    running clients will not find it (before: only the new address, easy to miss). Java is
    replaced by a stand-in: what is checked is the choice of port and what the CLI says."""
    from click.testing import CliRunner

    import funnel.broker as broker_module
    from funnel.cli import main

    monkeypatch.setattr(broker_module, "java_command", lambda: "java")
    monkeypatch.setattr(broker_module, "resolve_jars", lambda *args: tmp_path)
    monkeypatch.setattr(LocalBroker, "_format_storage", lambda *args: None)
    monkeypatch.setattr(LocalBroker, "_spawn", lambda *args: type("Process", (), {"pid": 4242})())
    monkeypatch.setattr(LocalBroker, "_wait_until_ready", lambda *args: None)
    monkeypatch.setattr(broker_module, "pid_alive", lambda pid: False)  # the last run crashed
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        (tmp_path / "server.properties").write_text(server_properties(tmp_path / "data", taken, free_port()))
        result = CliRunner().invoke(main, ["broker", "start", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    bootstrap = result.stdout.strip()
    assert bootstrap != f"127.0.0.1:{taken}"
    warning = result.stderr.splitlines()[-1]
    assert warning.startswith(f"warning: port {taken} of the last run is taken by another process")
    assert f"restart them with --bootstrap {bootstrap}" in warning


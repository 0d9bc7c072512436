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

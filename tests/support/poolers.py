"""A private pgbouncer and a private HAProxy for tests, from Debian's packages.

Both listen on free loopback ports with their configuration in a temporary directory.
pgbouncer refuses to run as root: then it runs as the ``postgres`` system user through
``runuser`` (as the test PostgreSQL does), in a directory that user owns.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.pgserver import _free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def _wait_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited {process.returncode}: {log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{process.args} does not listen on {port}: {log.read_text(errors='replace')}")


class PgBouncer:
    """pgbouncer with one ``[databases]`` entry per keyword argument (name -> libpq string)."""

    def __init__(self, pool_mode: str = "transaction", **databases: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="timefunnel-pgbouncer-"))
        self.port = _free_port()
        self.config = self.root / "pgbouncer.ini"
        self.log = self.root / "pgbouncer.log"
        self.run_as: list[str] = []
        entries = "".join(f"{name} = {conn}\n" for name, conn in databases.items())
        (self.root / "users.txt").write_text('"postgres" ""\n')
        self.config.write_text(
            f"; written by the tests\n[databases]\n{entries}\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.root / 'users.txt'}\nadmin_users = postgres\n"
            f"pool_mode = {pool_mode}\nmax_client_conn = 100\ndefault_pool_size = 20\n"
            f"logfile = {self.log}\npidfile = {self.root / 'pgbouncer.pid'}\n")
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (self.root, *self.root.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
            self.run_as = ["runuser", "-u", "postgres", "--"]
        self.process: subprocess.Popen | None = None

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/pgbouncer"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> "PgBouncer":
        self.process = subprocess.Popen([*self.run_as, PGBOUNCER, str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.process, self.log)
        return self

    def show_databases(self) -> dict[str, dict]:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, prepare_threshold=None) as conn:
            cursor = conn.execute("SHOW DATABASES")
            names = [c.name for c in cursor.description]
            return {row[0]: dict(zip(names, row)) for row in cursor.fetchall()}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            pidfile = self.root / "pgbouncer.pid"
            try:  # pgbouncer itself: runuser would wait 2 s before passing SIGTERM on
                os.kill(int(pidfile.read_text()), 15)
            except (OSError, ValueError):
                self.process.terminate()
            _wait_or_kill(self.process)
        shutil.rmtree(self.root, ignore_errors=True)



def _wait_or_kill(process: subprocess.Popen) -> None:
    """Waits for a server asked to stop; one that does not within 30 s is killed."""
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)

class HAProxy:
    """HAProxy in TCP mode: frontend on ``port`` to backend ``be`` with one server ``db``
    at ``server``, runtime API on a unix socket (level admin) and on TCP ``api_port``."""

    def __init__(self, server: str, level: str = "admin") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="timefunnel-haproxy-"))
        self.port, self.api_port = _free_port(), _free_port()
        self.socket = self.root / "admin.sock"
        self.config = self.root / "haproxy.cfg"
        self.log = self.root / "haproxy.log"
        self.config.write_text(
            f"global\n    stats socket {self.socket} mode 600 level {level}\n"
            f"    stats socket 127.0.0.1:{self.api_port} level {level}\n\n"
            "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\n"
            f"frontend fe\n    bind 127.0.0.1:{self.port}\n    default_backend be\n\n"
            f"backend be\n    server db {server}\n    server spare 127.0.0.1:9 disabled\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> "HAProxy":
        self.handle = open(self.log, "wb")
        self.process = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=self.handle,
                                        stderr=subprocess.STDOUT)
        _wait_port(self.api_port, self.process, self.log)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            _wait_or_kill(self.process)
            self.handle.close()
        shutil.rmtree(self.root, ignore_errors=True)

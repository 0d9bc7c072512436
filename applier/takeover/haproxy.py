"""Move an HAProxy backend server to another address through the runtime API.

The runtime API (``stats socket ... level admin``, a unix socket or TCP) takes one command
per connection and answers in text.  A move is: ``disable server`` (maintenance: no new
connection goes to it), ``shutdown sessions server`` (connections still open to the old
server are cut: a TCP proxy cannot move them, the applications reconnect to the new
one), ``set server ... addr ... port ...``, ``enable server``.
"""
from __future__ import annotations

import enum
import socket
from dataclasses import dataclass
from typing import Callable

from applier.takeover.target import TakeoverError

SOCKET_HINT = ("check --socket (a `stats socket ... level admin` of this HAProxy: a path, or host:port) "
               "and that HAProxy runs")
FORCED_MAINTENANCE = 0x01  # srv_admin_state bit set by `disable server`


class Step(str, enum.Enum):
    DISABLE = "disable"
    SHUTDOWN = "shutdown sessions"
    SET_ADDR = "set addr"
    ENABLE = "enable"


@dataclass(frozen=True)
class ServerState:
    """One server of ``show servers state``."""

    backend: str
    name: str
    addr: str
    port: int
    admin_state: int

    @property
    def disabled(self) -> bool:
        return bool(self.admin_state & FORCED_MAINTENANCE)


@dataclass(frozen=True)
class HaproxyMove:
    backend: str
    server: str
    addr: str | None = None
    port: int | None = None
    disable_only: bool = False
    keep_sessions: bool = False

    def validate(self) -> None:
        if not self.disable_only and (self.addr is None or self.port is None):
            raise TakeoverError("no target given", hint="give TARGET, or run as a takeover hook (FUNNEL_SINK_URL)")


def parse_server(text: str) -> tuple[str, str]:
    """``backend/server``.  Raises TakeoverError otherwise."""
    backend, sep, server = text.partition("/")
    if not sep or not backend or not server or "/" in server or any(c.isspace() for c in text):
        raise TakeoverError(f"bad server {text!r}: expected BACKEND/SERVER", hint="e.g. pg/primary")
    return backend, server


def command(step: Step, move: HaproxyMove) -> str:
    """The runtime API command for ``step``."""
    ref = f"{move.backend}/{move.server}"
    if step is Step.SET_ADDR:
        return f"set server {ref} addr {move.addr} port {move.port}"
    if step is Step.SHUTDOWN:
        return f"shutdown sessions server {ref}"
    return f"{step.value} server {ref}"


def parse_servers_state(text: str, backend: str) -> dict[str, ServerState]:
    """``show servers state <backend>``: version line, ``# name name ...`` header, rows.
    Raises TakeoverError when HAProxy answers with an error (an unknown backend)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = next((line for line in lines if line.startswith("#")), None)
    if header is None:
        raise TakeoverError(f"HAProxy answered `show servers state {backend}` with: {_short(text)}",
                            hint="name a backend of this HAProxy (`show backend` lists them)")
    names = header.lstrip("# ").split()
    servers = {}
    for line in lines:
        if line.startswith("#") or line.strip().isdigit():
            continue
        row = dict(zip(names, line.split()))
        servers[row["srv_name"]] = ServerState(row["be_name"], row["srv_name"], row["srv_addr"],
                                               int(row["srv_port"]), int(row["srv_admin_state"]))
    return servers


def plan(state: ServerState, move: HaproxyMove) -> list[Step]:
    """The commands still to send, none when a rerun finds the work done.  Pure."""
    if move.disable_only:
        return [] if state.disabled else [Step.DISABLE] + ([] if move.keep_sessions else [Step.SHUTDOWN])
    moving = (state.addr, state.port) != (move.addr, move.port)
    if not moving:
        return [Step.ENABLE] if state.disabled else []
    steps = [] if state.disabled else [Step.DISABLE]
    if not move.keep_sessions:
        steps.append(Step.SHUTDOWN)
    return steps + [Step.SET_ADDR, Step.ENABLE]


def answer_ok(step: Step, answer: str) -> bool:
    """Whether HAProxy's answer to a step's command means it was done."""
    if step is Step.SET_ADDR:
        return "changed from" in answer or "no need to change" in answer
    return answer.strip() == ""


class RuntimeApi:
    """HAProxy's runtime API on a unix socket (a path) or TCP (host:port)."""

    def __init__(self, address: str, timeout_s: float = 5.0) -> None:
        self.address, self.timeout_s = address, timeout_s

    def _connect(self) -> socket.socket:
        if "/" in self.address or ":" not in self.address:
            family, where = socket.AF_UNIX, self.address
        else:
            host, _, port = self.address.rpartition(":")
            if not port.isdigit():
                raise TakeoverError(f"bad --socket {self.address!r}", hint=SOCKET_HINT)
            family, where = (socket.AF_INET6 if ":" in host else socket.AF_INET), (host.strip("[]"), int(port))
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(where)
        except OSError as exc:
            sock.close()
            raise TakeoverError(f"cannot reach HAProxy's runtime API at {self.address}: {exc.strerror or exc}",
                                hint=SOCKET_HINT) from exc
        return sock

    def send(self, line: str) -> str:
        """One command, its whole answer (HAProxy closes the connection after it)."""
        with self._connect() as sock:
            try:
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except OSError as exc:
                raise TakeoverError(f"HAProxy's runtime API at {self.address} failed during {line!r}: {exc}",
                                    hint=SOCKET_HINT) from exc
        return b"".join(chunks).decode(errors="replace")


def _short(text: str) -> str:
    return " ".join(text.split()) or "(nothing)"


def move(api: RuntimeApi, options: HaproxyMove, echo: Callable[[str], None]) -> list[Step]:
    """Carry out ``options``; returns the steps done (none: it was done already).

    Raises TakeoverError, with nothing changed, for an unreachable API, a level below
    admin, an unknown backend or server; a command HAProxy refuses midway stops the move
    (each step is idempotent: fix the cause and rerun).
    """
    options.validate()
    level = api.send("show cli level").strip()
    if level != "admin":
        raise TakeoverError(f"HAProxy's runtime API at {api.address} has level {_short(level)!r}; a move needs admin",
                            hint="declare the socket with `stats socket ... level admin`")
    servers = parse_servers_state(api.send(f"show servers state {options.backend}"), options.backend)
    state = servers.get(options.server)
    if state is None:
        raise TakeoverError(f"HAProxy backend {options.backend!r} has no server {options.server!r} "
                            f"(it has {', '.join(sorted(servers)) or 'none'})", hint="name a server of that backend")
    steps = plan(state, options)
    if not steps:
        echo(f"HAProxy server {options.backend}/{options.server} "
             + ("is already disabled" if options.disable_only else f"already at {state.addr}:{state.port}, enabled")
             + ": nothing to do")
    for step in steps:
        line = command(step, options)
        answer = api.send(line)
        if not answer_ok(step, answer):
            raise TakeoverError(f"HAProxy refused `{line}`: {_short(answer)}",
                                hint="fix the cause and rerun: every step is skipped once done")
        echo(f"{line}" + (f": {_short(answer)}" if answer.strip() else ""))
    return steps

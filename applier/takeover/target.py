"""Where a takeover points the service: a PostgreSQL server and database, parsed once."""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from funnel.errors import TimeFunnelError

DEFAULT_PORT = 5432
TARGET_HINT = "give a URL such as postgresql://db2.internal:5432/shop (or host:port for HAProxy)"


class TakeoverError(TimeFunnelError):
    """A takeover cannot be done as asked; nothing was changed (the message says so otherwise)."""


@dataclass(frozen=True)
class DatabaseTarget:
    """A PostgreSQL server (host name, IP address or unix socket directory), port and database."""

    host: str
    port: int
    dbname: str | None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.dbname}" if self.dbname else f"{self.host}:{self.port}"


def parse_database_target(text: str, need_dbname: bool = True) -> DatabaseTarget:
    """A ``postgresql://`` URL or libpq ``key=value`` string as a target; the user and the
    password in it are ignored (the applications keep their own credentials).

    Raises TakeoverError for a malformed string, several hosts, or a missing host or database.
    """
    from psycopg.conninfo import conninfo_to_dict

    if not text or not text.strip():
        raise TakeoverError("empty target", hint=TARGET_HINT)
    if "://" not in text and "=" not in text:
        return _address_target(text, need_dbname)
    if "://" in text and not text.startswith(("postgresql://", "postgres://")):
        raise TakeoverError(f"target {text!r} is not a PostgreSQL URL", hint=TARGET_HINT)
    try:
        params = conninfo_to_dict(text)
    except Exception as exc:  # psycopg raises ProgrammingError; any parse failure is bad input
        raise TakeoverError(f"malformed target {text!r}: {str(exc).splitlines()[0]}", hint=TARGET_HINT) from exc
    host, port, dbname = str(params.get("host") or ""), str(params.get("port") or DEFAULT_PORT), params.get("dbname")
    if not host:
        raise TakeoverError(f"target {text!r} names no host", hint=TARGET_HINT)
    if "," in host or "," in port:
        raise TakeoverError(f"target {text!r} names several hosts; a takeover moves to one", hint=TARGET_HINT)
    if need_dbname and not dbname:
        raise TakeoverError(f"target {text!r} names no database", hint=TARGET_HINT)
    return DatabaseTarget(host, _port(port, text), str(dbname) if dbname else None)


def _address_target(text: str, need_dbname: bool) -> DatabaseTarget:
    """``host:port`` or ``[v6]:port``."""
    if need_dbname:
        raise TakeoverError(f"target {text!r} is not a PostgreSQL URL", hint=TARGET_HINT)
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise TakeoverError(f"target {text!r} is not host:port", hint=TARGET_HINT)
    return DatabaseTarget(host.strip("[]"), _port(port, text), None)


def _port(text: str, target: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise TakeoverError(f"target {target!r} has a bad port {text!r}", hint=TARGET_HINT)
    return int(text)


def parse_address(text: str) -> tuple[str, int]:
    """The IP address and port of a target (URL or host:port), a host name resolved once
    (to its first IPv4 address when it has one).

    Raises TakeoverError for a malformed target, a unix socket or a name that does not resolve.
    """
    target = parse_database_target(text, need_dbname=False)
    if target.host.startswith("/"):
        raise TakeoverError(f"target {text!r} is a unix socket; a proxy needs an IP address", hint=TARGET_HINT)
    try:
        return str(ipaddress.ip_address(target.host)), target.port
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TakeoverError(f"cannot resolve {target.host!r}: {exc}", hint="check the target's host name") from exc
    # IPv4 first: "localhost" and dual-stack names must not land on ::1 when the server listens on 127.0.0.1 only.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0]), target.port

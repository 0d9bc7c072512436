"""pgbouncer.ini as text: find one ``[databases]`` entry and rewrite it, nothing else.

Pure functions of the file's text.  pgbouncer's ini format: ``[section]`` headers,
``key = value`` lines, comments starting with ``;`` or ``#``; a database entry's value is
a libpq-style ``key=value`` list whose values may be single-quoted (``''`` is a quote).
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from applier.takeover.target import DatabaseTarget, TakeoverError

_SECTION = re.compile(r"^\s*\[\s*([^\]]*?)\s*\]\s*$")
_ENTRY = re.compile(r'^(\s*)("(?:[^"]|"")*"|[^=;#\s][^=]*?)(\s*=\s*)(.*?)(\s*)$')
_PAIR = re.compile(r"\s*([A-Za-z0-9_]+)\s*=\s*('(?:[^']|'')*'|[^\s']*)")
TARGET_KEYS = ("host", "port", "dbname")


@dataclass(frozen=True)
class Entry:
    """One ``[databases]`` line: its index in the file and its connection parameters in order."""

    name: str
    line: int
    params: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        return dict(self.params).get(key)

    def points_at(self, target: DatabaseTarget) -> bool:
        return (self.get("host"), self.get("port") or "5432", self.get("dbname") or self.name) == (
            target.host, str(target.port), target.dbname)


def _unquote_name(raw: str) -> str:
    raw = raw.strip()
    return raw[1:-1].replace('""', '"') if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw


def sections(text: str) -> dict[str, dict[str, str]]:
    """Every section's ``key = value`` settings (names lowercased), for reading ``[pgbouncer]``."""
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        header = _SECTION.match(line)
        if header:
            current = found.setdefault(header.group(1).lower(), {})
            continue
        entry = _ENTRY.match(line)
        if current is not None and entry and not line.lstrip().startswith((";", "#")):
            current[_unquote_name(entry.group(2)).lower()] = entry.group(4)
    return found


def parse_connstr(value: str) -> tuple[tuple[str, str], ...]:
    """``host=a port=5 dbname='x y'`` as pairs.  Raises TakeoverError for what pgbouncer would not read."""
    pairs, pos = [], 0
    while value[pos:].strip():
        match = _PAIR.match(value, pos)
        if not match:
            raise TakeoverError(f"cannot read the connection string {value!r} at {value[pos:]!r}",
                                hint="fix the entry in pgbouncer.ini by hand")
        raw = match.group(2)
        pairs.append((match.group(1), raw[1:-1].replace("''", "'") if raw.startswith("'") else raw))
        pos = match.end()
    return tuple(pairs)


def format_connstr(params: tuple[tuple[str, str], ...]) -> str:
    return " ".join(f"{key}={_quote(value)}" for key, value in params)


def _quote(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("'", "''") + "'"


def find_entry(text: str, name: str) -> Entry:
    """The ``[databases]`` entry ``name``.  Raises TakeoverError when there is none."""
    in_databases, seen_section = False, False
    for index, line in enumerate(text.splitlines()):
        header = _SECTION.match(line)
        if header:
            in_databases = header.group(1).lower() == "databases"
            seen_section = seen_section or in_databases
            continue
        if not in_databases or line.lstrip().startswith((";", "#")):
            continue
        entry = _ENTRY.match(line)
        if entry and _unquote_name(entry.group(2)) == name:
            return Entry(name, index, parse_connstr(entry.group(4)))
    where = "has no [databases] section" if not seen_section else f"has no [databases] entry {name!r}"
    raise TakeoverError(f"the pgbouncer configuration {where}",
                        hint="name an entry of [databases] (an entry in an %include file: pass that file as --config)")


def retarget(params: tuple[tuple[str, str], ...], target: DatabaseTarget) -> tuple[tuple[str, str], ...]:
    """``params`` with host, port and dbname of ``target``; every other parameter (user,
    pool_size, ...) kept in place.  The applications' credentials do not change."""
    wanted = {"host": target.host, "port": str(target.port), "dbname": target.dbname or ""}
    kept = tuple((key, wanted.pop(key) if key in wanted else value) for key, value in params)
    return kept + tuple((key, wanted[key]) for key in TARGET_KEYS if key in wanted)


def rewrite(text: str, name: str, target: DatabaseTarget) -> str:
    """``text`` with entry ``name`` pointing at ``target``; every other byte as it was."""
    entry = find_entry(text, name)
    lines = text.splitlines(keepends=True)
    old = lines[entry.line]
    ending = old[len(old.rstrip("\r\n")):]
    match = _ENTRY.match(old.rstrip("\r\n"))
    assert match is not None  # find_entry matched this line
    lead, key, equals, _, trail = match.groups()
    lines[entry.line] = f"{lead}{key}{equals}{format_connstr(retarget(entry.params, target))}{trail}{ending}"
    return "".join(lines)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one rename: pgbouncer reads the old file or the new
    one, never half of one.  Mode and (when allowed) owner of the old file are kept."""
    path = path.resolve()
    info = path.stat()
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, info.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(temp, info.st_uid, info.st_gid)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise

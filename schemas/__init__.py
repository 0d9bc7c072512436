"""The Avro schemas of the funnel, shipped as package data.

Each file is ``<name>.v<version>.avsc``.  Every version ever published stays here:
a message names its writer schema by fingerprint, and a reader can only resolve an
old event if it still has the schema that wrote it.  The files are read through
``importlib.resources`` so they work from a source tree, a wheel or a zip.
"""
from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

_FILE_NAME = re.compile(r"^(?P<name>[a-z][a-z0-9_]*)\.v(?P<version>\d+)\.avsc$")


def schema_files() -> list[str]:
    """Names of all ``.avsc`` files in this package, sorted."""
    root = resources.files(__name__)
    return sorted(entry.name for entry in root.iterdir() if _FILE_NAME.match(entry.name))


def load_schema(file_name: str) -> dict[str, Any]:
    """The parsed JSON of one schema file.

    Raises FileNotFoundError if there is no such file, ValueError if it is not JSON.
    """
    text = resources.files(__name__).joinpath(file_name).read_text(encoding="utf-8")
    return json.loads(text)


def versions(name: str) -> list[tuple[int, dict[str, Any]]]:
    """Every version of schema ``name`` as ``(version, schema)``, oldest first.

    Raises LookupError if no file of that name exists.
    """
    found = []
    for file_name in schema_files():
        match = _FILE_NAME.match(file_name)
        if match and match["name"] == name:
            found.append((int(match["version"]), load_schema(file_name)))
    if not found:
        raise LookupError(f"no schema files named {name}.v<N>.avsc in package {__name__}")
    return sorted(found, key=lambda pair: pair[0])

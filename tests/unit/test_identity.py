"""Same database or not: by identity (device and inode; system identifier and oid), not by spelling."""
from __future__ import annotations

import os
import sqlite3

import pytest

from funnel.errors import ConfigError
from funnel.identity import database_identity, same_identity, sqlite_identity


def test_a_hard_link_a_symlink_and_a_relative_path_are_the_same_sqlite_file(tmp_path, monkeypatch):
    db = tmp_path / "mirror.db"
    sqlite3.connect(db).close()
    os.link(db, tmp_path / "hard.db")
    os.symlink(db, tmp_path / "soft.db")
    monkeypatch.chdir(tmp_path)
    mine = database_identity(f"sqlite://{db}")
    assert mine is not None
    for other in (f"sqlite://{tmp_path}/hard.db", f"sqlite://{tmp_path}/soft.db", "sqlite:mirror.db",
                  f"sqlite://{tmp_path}/./mirror.db"):
        assert same_identity(mine, database_identity(other)), other
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    assert not same_identity(mine, sqlite_identity(str(copy))), "a copy is another database"


def test_a_file_that_does_not_exist_yet_has_no_identity_and_is_no_other_database(tmp_path):
    assert sqlite_identity(str(tmp_path / "new.db")) is None
    assert sqlite_identity(str(tmp_path / "no-dir" / "new.db")) is None
    assert not same_identity(None, None)


def test_an_unsupported_url_is_a_config_error():
    with pytest.raises(ConfigError, match="unsupported database URL"):
        database_identity("ftp://host/db")

"""Same database or not: by identity (device and inode; system identifier and oid), not by spelling."""
from __future__ import annotations

import os
import sqlite3

import pytest

from funnel.errors import ConfigError, SourceError
from funnel.identity import database_identity, same_identity, sqlite_identity
from producer.lineage import continued_source, refuse_other_database


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


def test_a_capture_continues_the_newest_source_recorded_for_its_database():
    records = {
        "source/prod": {"source": "prod", "identity": "sqlite:1:2", "published_at": 5},
        "source/older": {"source": "older", "identity": "sqlite:1:2", "published_at": 3},
        "source/other": {"source": "other", "identity": "sqlite:1:9", "published_at": 9},
        "producer/prod": {"source": "prod"},
    }
    assert continued_source(records, "sqlite:///new.db", lambda url: "sqlite:1:2") == "prod"
    assert continued_source(records, "sqlite:///x.db", lambda url: "sqlite:7:7") is None
    assert continued_source(records, "sqlite:///missing.db", lambda url: None) is None


def test_without_a_recorded_source_the_database_is_not_even_looked_at():
    def never(url):
        raise AssertionError("no identity needed")

    assert continued_source({"producer/prod": {"source": "prod"}}, "postgresql://h/db", never) is None


def test_a_capture_of_another_database_under_a_recorded_source_name_is_refused():
    # the old production, left in place by a switchback onto a new file, has the old name
    records = {"source/prod": {"source": "prod", "identity": "sqlite:1:2", "url": "sqlite:///srv/new.db",
                               "cycle": "c1"}}
    with pytest.raises(SourceError, match=r"source 'prod' continues in sqlite:///srv/new\.db") as error:
        refuse_other_database(records, "sqlite:///srv/prod.db", "prod", lambda url: "sqlite:1:7")
    assert "--source-name prod" in error.value.hint
    with pytest.raises(SourceError):  # a file that is gone and made anew is another database too
        refuse_other_database(records, "sqlite:///srv/prod.db", "prod", lambda url: None)
    refuse_other_database(records, "sqlite:///srv/new.db", "prod", lambda url: "sqlite:1:2")

    def never(url):
        raise AssertionError("no identity needed")

    refuse_other_database(records, "sqlite:///srv/shop.db", "shop", never)  # no record for this name

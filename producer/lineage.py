"""Which source a capture continues: the one a switchback published for this database.

``switchback complete`` publishes an initial copy of the rebuilt production under the
forward capture's source name and records ``source/<name>`` with production's identity
on the control topic.  The capture started afterwards must continue that source, or it
publishes a second initial copy under another name (the file of a rebuilt production
may be called differently) and the rows deleted meanwhile stay on the mirror for good.
The database is recognised by its identity (``funnel.identity``), not by its URL.
"""
from __future__ import annotations

from typing import Any, Callable

from funnel.control import SOURCE_PREFIX, source_key
from funnel.errors import SourceError
from funnel.identity import database_identity, same_identity
from funnel.urls import without_password


def continued_source(records: dict[str, dict[str, Any]], url: str,
                     identity_of: Callable[[str], str | None] = database_identity) -> str | None:
    """The source name recorded for the database at ``url``, the newest if several; None when
    no switchback recorded one (then the database is not even looked at).

    Raises what ``identity_of`` raises (a PostgreSQL server that cannot be reached).
    """
    recorded = [value for key, value in records.items() if key.startswith(SOURCE_PREFIX) and value.get("identity")]
    if not recorded:
        return None
    identity = identity_of(url)
    mine = [value for value in recorded if same_identity(identity, value["identity"])]
    if not mine:
        return None
    return max(mine, key=lambda value: value.get("published_at", 0))["source"]


def refuse_other_database(records: dict[str, dict[str, Any]], url: str, name: str,
                          identity_of: Callable[[str], str | None] = database_identity) -> None:
    """Refuses to capture the database at ``url`` as source ``name`` when a switchback
    recorded that source for another database.

    After a switchback onto a new file or database the old production may still exist,
    its capture triggers and changelog intact; capturing it under the recorded name (the
    same command as before the disaster) would publish the old timeline's changes into
    the mirror after the new production's copy.  Raises SourceError then.
    """
    record = records.get(source_key(name))
    if not record or not record.get("identity"):
        return
    if same_identity(identity_of(url), record["identity"]):
        return
    recorded = record.get("url") or "the database switchback complete made production"
    raise SourceError(
        f"source {name!r} continues in {recorded} since the switchback (cycle {record.get('cycle', '?')}), "
        f"not in {without_password(url)}: capturing this database would publish another timeline into the mirror",
        hint=f"capture {recorded}; if this database is it, copied or moved since, pass --source-name {name}")

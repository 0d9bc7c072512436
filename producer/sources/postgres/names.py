"""The names capture gives its replication slot and publication.

The slot is ``timefunnel_<funnel>`` (``default_slot_name``: made a valid slot name, with a
hash suffix when that changed it) unless given; the publication capture creates has the
slot's name (``timefunnel_`` prefixed when the slot lacks it).
"""
from __future__ import annotations

import hashlib
import re

SLOT_PREFIX = "timefunnel_"
SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")  # what CREATE_REPLICATION_SLOT accepts unquoted


def default_slot_name(funnel: str) -> str:
    """``timefunnel_<funnel>`` made a valid slot name ([a-z0-9_], at most 63 characters).

    Long or changed names get a hash suffix, so two funnels never share a slot.
    """
    cleaned = re.sub(r"[^a-z0-9_]", "_", funnel.lower())
    name = SLOT_PREFIX + cleaned
    if cleaned == funnel and len(name) <= 63:
        return name
    digest = hashlib.sha256(funnel.encode()).hexdigest()[:8]
    return f"{name[:54]}_{digest}"


def default_publication_name(slot: str) -> str:
    """The publication capture creates: the slot's name, prefixed ``timefunnel_`` unless it is."""
    return slot if slot.startswith(SLOT_PREFIX) else (SLOT_PREFIX + slot)[:63]

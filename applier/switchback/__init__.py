"""Switchback: rebuild the original production from the promoted mirror, then return to it.

``state`` (the persisted state machine) and ``compare`` (reset plans, checksums) are pure;
``databases``, ``store``, ``pipeline`` and ``runner`` do the I/O.
"""

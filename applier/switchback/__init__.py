"""Switchback: rebuild the original production from the promoted mirror, then return to it.

``state`` (the persisted state machine) and ``compare`` (reset plans, checksums) are pure.
The phases are functions over one ``context.SwitchbackContext``: ``prepare``,
``complete`` (with ``freeze`` and ``forward``), ``abort`` and ``report``; ``runner``
is the entry point the CLI calls.  ``databases`` (one module per kind), ``store``,
``pipeline`` and ``reverse`` do the I/O.
"""

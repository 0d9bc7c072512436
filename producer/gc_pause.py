"""Cyclic garbage collection paused over a stretch of work that makes many objects.

Capture makes a handful of small containers per row (value lists, rows, groups,
transactions) and keeps up to a step's worth alive at once, so Python's collector,
triggered every few hundred new containers, walks them again and again (decoding
recorded pgbench transactions: 8.2 us per row with it, 6.8 without).  None of them form
cycles, so nothing is lost by collecting once at the end instead (as the applier's
drains do).
"""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside; nested uses leave it to the outermost to resume."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()

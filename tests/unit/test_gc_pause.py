"""producer.gc_pause: cyclic collection paused over a stretch of work, resumed after it."""
from __future__ import annotations

import gc

import pytest

from producer.gc_pause import gc_paused


def test_collection_is_paused_inside_and_resumed_after_even_on_an_error():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), gc_paused():
        raise ValueError("boom")
    assert gc.isenabled()


def test_a_nested_pause_leaves_resuming_to_the_outermost():
    with gc_paused():
        with gc_paused():
            pass
        assert not gc.isenabled(), "the inner pause must not resume collection for the outer one"
    assert gc.isenabled()


def test_a_collector_disabled_by_the_caller_stays_disabled():
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()

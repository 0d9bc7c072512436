"""Message headers: the fast path for the order timefunnel writes, and any other order."""
from __future__ import annotations

import pytest

from funnel import headers
from funnel.errors import CodecError
from funnel.events import Kind


@pytest.mark.parametrize("ends", [True, False])
def test_headers_in_any_order_decode_the_same(ends: bool) -> None:
    written = headers.encode(1_700_000_000_123_456, Kind.CHANGES, 7, ends)
    shuffled = list(reversed(written)) + [("someone-else", b"x")]
    expected = headers.MessageMeta(1_700_000_000_123_456, Kind.CHANGES, 7, ends)
    assert headers.decode(written, "t[0] offset 1") == expected
    assert headers.decode(shuffled, "t[0] offset 1") == expected


def test_a_fourth_header_that_is_not_the_end_mark_does_not_end_the_transaction() -> None:
    written = headers.encode(5, Kind.SNAPSHOT, 1, False) + [("trace-id", b"abc")]
    assert headers.decode(written, "x").ends_transaction is False


@pytest.mark.parametrize("bad", [None, [], [("tf-ts", b"short"), ("tf-kind", b"changes"), ("tf-rows", b"\0\0\0\1")],
                                 [("tf-ts", b"\0" * 8), ("tf-kind", b"nonsense"), ("tf-rows", b"\0\0\0\1")]])
def test_malformed_headers_name_where_only_when_they_fail(bad) -> None:
    asked = []

    def where() -> str:
        asked.append(True)
        return "shop.funnel[0] offset 42"

    with pytest.raises(CodecError, match=r"shop.funnel\[0\] offset 42: not a timefunnel event"):
        headers.decode(bad, where)
    assert asked == [True]
    headers.decode(headers.encode(1, Kind.CHANGES, 1, True), where)
    assert asked == [True]

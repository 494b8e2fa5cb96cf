"""Per-type length caps: lowered by the general cap, shared between buffers, never stale."""

from __future__ import annotations

import struct

import pytest

import pgwire as pw


def frame(code: bytes, body_size: int) -> bytes:
    return code + struct.pack("!i", body_size + 4) + b"x" * body_size


def test_a_per_type_cap_is_enforced_and_only_lowers_the_general_one() -> None:
    limits = {b"S": 10}
    roomy = pw.ReceiveBuffer(100, limits)
    roomy.feed(frame(b"S", 10) + frame(b"Q", 50))
    assert roomy.next_frame() is not None
    assert roomy.next_frame() is not None
    roomy.feed(frame(b"S", 11))
    with pytest.raises(pw.RemoteProtocolError, match="invalid message length"):
        roomy.next_frame()
    tight = pw.ReceiveBuffer(5, limits)  # the general cap is below the type's own
    tight.feed(frame(b"S", 6))
    with pytest.raises(pw.RemoteProtocolError, match="exceeds the maximum message size of 5"):
        tight.next_frame()


def test_frontends_share_one_table_of_caps() -> None:
    first, second = pw.Frontend(), pw.Frontend()
    assert first._buffer._limits is second._buffer._limits
    assert len(first._buffer._limits) == 248
    smaller = pw.Frontend(max_message_size=1000)
    assert smaller._buffer._limits is not first._buffer._limits
    assert max(smaller._buffer._limits.values()) == 1000


def test_a_table_changed_after_use_is_read_again() -> None:
    limits = {b"S": 10}
    pw.ReceiveBuffer(100, limits)
    limits[b"S"] = 20
    limits[b"X"] = 0
    buffer = pw.ReceiveBuffer(100, limits)
    buffer.feed(frame(b"S", 20))
    assert buffer.next_frame() is not None
    buffer.feed(frame(b"X", 1))
    with pytest.raises(pw.RemoteProtocolError, match="invalid message length"):
        buffer.next_frame()


def test_many_distinct_tables_all_work() -> None:
    """Past the cache's size, tables are still applied (just not shared)."""
    for cap in range(100):
        buffer = pw.ReceiveBuffer(1000, {b"S": cap})
        buffer.feed(frame(b"S", cap) + frame(b"S", cap + 1))
        assert buffer.next_frame() is not None
        with pytest.raises(pw.RemoteProtocolError):
            buffer.next_frame()

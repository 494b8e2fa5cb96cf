"""pgwire.ReceiveBuffer: cutting a byte stream into frames, and its length limits."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

import pgwire as pw

from .helpers import frame, header, int32, protocol_error

STREAM = (
    frame(b"Z", b"I")
    + frame(b"T", b"\x00\x00")
    + frame(b"D", b"\x00\x01\x00\x00\x00\x03abc")
    + frame(b"C", b"SELECT 1\x00")
    + frame(b"1")
    + frame(b"d", b"x" * 300)
)
STREAM_FRAMES = [
    (b"Z", b"I"),
    (b"T", b"\x00\x00"),
    (b"D", b"\x00\x01\x00\x00\x00\x03abc"),
    (b"C", b"SELECT 1\x00"),
    (b"1", b""),
    (b"d", b"x" * 300),
]


def _frames(buffer: pw.ReceiveBuffer) -> list[tuple[bytes, bytes]]:
    out = []
    while (raw := buffer.next_frame()) is not None:
        out.append((raw.type_code, bytes(raw.body)))
    return out


@pytest.mark.parametrize(
    "chunk_size", [1, 2, 3, 5, 7, 64, len(STREAM)], ids=lambda n: f"chunks-of-{n}"
)
def test_any_chunking_gives_the_same_frames(chunk_size: int) -> None:
    buffer = pw.ReceiveBuffer()
    seen: list[tuple[bytes, bytes]] = []
    for pos in range(0, len(STREAM), chunk_size):
        buffer.feed(STREAM[pos : pos + chunk_size])
        seen.extend(_frames(buffer))
    assert seen == STREAM_FRAMES
    assert len(buffer) == 0


def test_one_byte_at_a_time_returns_none_until_complete() -> None:
    message = frame(b"C", b"SELECT 1\x00")
    buffer = pw.ReceiveBuffer()
    for byte in message[:-1]:
        buffer.feed(bytes([byte]))
        assert buffer.next_frame() is None
    buffer.feed(message[-1:])
    raw = buffer.next_frame()
    assert raw is not None
    assert bytes(raw) == message
    assert buffer.next_frame() is None


def test_mutable_input_is_copied() -> None:
    data = bytearray(frame(b"Z", b"I"))
    buffer = pw.ReceiveBuffer()
    buffer.feed(data)
    buffer.feed(memoryview(bytearray(frame(b"Z", b"T"))))
    data[5] = ord("E")
    assert _frames(buffer) == [(b"Z", b"I"), (b"Z", b"T")]


def test_empty_feed_changes_nothing() -> None:
    buffer = pw.ReceiveBuffer()
    buffer.feed(b"")
    assert len(buffer) == 0
    assert buffer.next_frame() is None


# ---------------------------------------------------------------------------
# Length words
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [3, 0, -1, -(2**31)], ids=lambda n: f"length-{n}")
def test_length_below_4_is_refused_from_the_header_alone(length: int) -> None:
    buffer = pw.ReceiveBuffer()
    buffer.feed(header(b"Z", length))
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid message length"):
        buffer.next_frame()


def test_length_below_4_is_refused_even_when_more_bytes_follow() -> None:
    buffer = pw.ReceiveBuffer()
    buffer.feed(header(b"Z", 2) + frame(b"Z", b"I") * 3)
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid message length 2"):
        buffer.next_frame()


LIMITS: list[Any] = [
    pytest.param(b"D", 1000, None, id="body-at-max-accepted"),
    pytest.param(b"D", 1001, "54000", id="body-over-max-54000"),
    pytest.param(b"S", 20, None, id="limited-type-at-its-limit-accepted"),
    pytest.param(b"S", 21, "08P01", id="limited-type-over-its-limit-08P01"),
]


@pytest.mark.parametrize(("type_code", "body_size", "sqlstate"), LIMITS)
def test_limits_checked_from_the_header_alone(
    type_code: bytes, body_size: int, sqlstate: str | None
) -> None:
    buffer = pw.ReceiveBuffer(max_message_size=1000, limits={b"S": 20})
    buffer.feed(header(type_code, body_size + 4))
    if sqlstate is None:
        assert buffer.next_frame() is None
        buffer.feed(b"\x00" * body_size)
        raw = buffer.next_frame()
        assert raw is not None
        assert len(raw.body) == body_size
    else:
        with protocol_error(pw.RemoteProtocolError, sqlstate):
            buffer.next_frame()


def test_limit_applies_when_the_whole_message_is_already_buffered() -> None:
    buffer = pw.ReceiveBuffer(max_message_size=10, limits={b"S": 2})
    buffer.feed(frame(b"S", b"abc"))
    with protocol_error(pw.RemoteProtocolError, "08P01"):
        buffer.next_frame()
    buffer = pw.ReceiveBuffer(max_message_size=10)
    buffer.feed(frame(b"d", b"x" * 11))
    with protocol_error(pw.RemoteProtocolError, "54000", "maximum message size of 10"):
        buffer.next_frame()


def test_per_type_limit_never_raises_the_overall_maximum() -> None:
    # The docstring: ``limits`` *lowers* the cap for particular type bytes. A
    # per-type limit above max_message_size must not let bigger messages in.
    buffer = pw.ReceiveBuffer(max_message_size=100, limits={b"S": 9996})
    buffer.feed(frame(b"S", b"x" * 200))
    with protocol_error(pw.RemoteProtocolError, "54000"):
        buffer.next_frame()


def test_protocol_ceiling_length_is_framed_lazily() -> None:
    buffer = pw.ReceiveBuffer()  # PostgreSQL's own ceiling, 0x3fffffff
    buffer.feed(header(b"d", 0x3FFFFFFF))
    assert buffer.next_frame() is None
    buffer = pw.ReceiveBuffer()
    buffer.feed(header(b"d", 0x40000000))
    with protocol_error(pw.RemoteProtocolError, "54000"):
        buffer.next_frame()


def test_negative_max_message_size_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        pw.ReceiveBuffer(max_message_size=-1)


# ---------------------------------------------------------------------------
# Memory: nothing allocated in proportion to a claimed length
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(pw.ReceiveBuffer, id="ReceiveBuffer"),
        pytest.param(lambda: pw.Frontend(max_message_size=None), id="Frontend-no-limit"),
        pytest.param(lambda: pw.Backend(max_message_size=None), id="Backend-no-limit"),
    ],
)
def test_huge_claimed_length_allocates_nothing_proportional(make: Any) -> None:
    target = make()
    tracemalloc.start()
    try:
        if isinstance(target, pw.ReceiveBuffer):
            target.feed(header(b"d", 0x3FFFFFF0))
            for _ in range(100):
                target.feed(b"x" * 100)
                assert target.next_frame() is None
        else:
            if isinstance(target, pw.Frontend):
                target.send(pw.StartupMessage.from_dict({"user": "u"}))
                target.receive_data(pw.AuthenticationOk().encode())
                assert isinstance(target.next_event(), pw.AuthenticationOk)
                target.receive_data(pw.ReadyForQuery().encode())
                assert isinstance(target.next_event(), pw.ReadyForQuery)
                target.send(pw.Query(query="select"))
                target.receive_data(header(b"D", 0x3FFFFFF0))
            else:
                target.receive_data(pw.StartupMessage.from_dict({"user": "u"}).encode())
                assert isinstance(target.next_event(), pw.StartupMessage)
                target.send(pw.AuthenticationOk())
                target.send(pw.ReadyForQuery())
                target.receive_data(header(b"d", 0x3FFFFFF0))
            for _ in range(100):
                assert target.next_event() is pw.NEED_DATA
                target.receive_data(b"x" * 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_partial_message_over_many_chunks_is_joined_once() -> None:
    body = bytes(range(256)) * 40
    message = frame(b"d", body)
    buffer = pw.ReceiveBuffer()
    first = message[:100]
    buffer.feed(first)
    for pos in range(100, len(message) - 1, 37):
        assert buffer.next_frame() is None
        buffer.feed(message[pos : min(pos + 37, len(message) - 1)])
        # The head chunk is kept as is and the rest queued: no re-join per chunk.
        assert buffer._data is first
    assert buffer.next_frame() is None
    assert buffer._data is first
    buffer.feed(message[-1:])
    raw = buffer.next_frame()
    assert raw is not None
    assert bytes(raw.body) == body
    assert len(buffer) == 0


# ---------------------------------------------------------------------------
# RawMessage
# ---------------------------------------------------------------------------


def test_raw_message_views_bytes_and_equality() -> None:
    buffer = pw.ReceiveBuffer()
    buffer.feed(frame(b"Z", b"I") + frame(b"C", b"SELECT 1\x00") + frame(b"C", b"SELECT 1\x00"))
    ready, first, second = buffer.next_frame(), buffer.next_frame(), buffer.next_frame()
    assert ready is not None and first is not None and second is not None
    assert ready.type_code == b"Z"
    assert isinstance(first.body, memoryview)
    assert bytes(first.body) == b"SELECT 1\x00"
    assert bytes(first.frame) == frame(b"C", b"SELECT 1\x00")
    assert bytes(first) == frame(b"C", b"SELECT 1\x00")
    assert len(first) == len(frame(b"C", b"SELECT 1\x00"))
    assert first == second
    assert hash(first) == hash(second)
    assert first != ready
    assert first != frame(b"C", b"SELECT 1\x00")  # a RawMessage is not its bytes
    assert repr(first) == "RawMessage(type_code=b'C', body_length=9)"


def test_raw_message_of_empty_body() -> None:
    buffer = pw.ReceiveBuffer()
    buffer.feed(frame(b"1"))
    raw = buffer.next_frame()
    assert raw is not None
    assert bytes(raw.body) == b""
    assert bytes(raw) == b"1\x00\x00\x00\x04"


# ---------------------------------------------------------------------------
# Untyped packets and single bytes (startup phase)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [7, 4, 0, -1], ids=lambda n: f"length-{n}")
def test_untyped_packet_length_below_8(length: int) -> None:
    buffer = pw.ReceiveBuffer()
    buffer.feed(int32(length))
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid length of startup packet"):
        buffer.next_untyped(10000)


def test_untyped_packet_over_max_body_refused_from_its_length_word() -> None:
    buffer = pw.ReceiveBuffer()
    buffer.feed(int32(10005))
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid length of startup packet"):
        buffer.next_untyped(10000)
    buffer = pw.ReceiveBuffer()
    buffer.feed(int32(10004))
    assert buffer.next_untyped(10000) is None


def test_untyped_packet_and_single_bytes() -> None:
    buffer = pw.ReceiveBuffer()
    assert buffer.peek_byte() is None
    assert buffer.next_byte() is None
    buffer.feed(b"S")
    buffer.feed(int32(8) + b"\x04\xd2")
    assert buffer.peek_byte() == ord("S")
    assert buffer.next_byte() == b"S"
    assert buffer.next_untyped(10000) is None
    buffer.feed(b"\x16\x2f" + b"rest")
    packet = buffer.next_untyped(10000)
    assert packet is not None
    data, start, end = packet
    assert data[start:end] == b"\x04\xd2\x16\x2f"
    assert buffer.take_all() == b"rest"
    assert len(buffer) == 0

"""Pass-through framing throughput: cut the stream into frames, decode nothing.

This is what a proxy does with a result stream nobody inspects: find where
each message ends and hand the frame on. Both variants are fed the same
64 KiB chunks (see ``_stream.py``) and walk every frame; the clock covers
feeding and framing only.

- ``pgwire.ReceiveBuffer.next_frame()``: zero-copy ``RawMessage`` frames.
- "naive bytearray framer", the baseline: what one writes by hand, a
  ``bytearray`` that chunks are appended to, the header read with
  ``struct.unpack`` on a slice, each frame sliced off as ``bytes`` and removed
  with ``del buf[:n]``.

Prints messages/second and MB/s (best of ``--repeat`` runs) and the line
``ratio pgwire/naive: X.XXx``. Run with no arguments::

    .venv/bin/python benchmarks/bench_framing.py
"""

from __future__ import annotations

import struct
import time

from _harness import Runner, measure, parse_options, print_environment, print_rates, profile
from _stream import Stream, build_stream, chunks

import pgwire as pw

#: Pass-through framing target from the issue, messages per second.
TARGET_RATE = 2_000_000

_HEADER = struct.Struct("!ci")

#: What a framing run is checked by: (frames cut, bytes framed).
Framed = tuple[int, int]


def receive_buffer_runner(pieces: list[bytes]) -> tuple[Framed, float]:
    buffer = pw.ReceiveBuffer()
    feed = buffer.feed
    next_frame = buffer.next_frame
    count = 0
    start = time.perf_counter()
    for piece in pieces:
        feed(piece)
        while next_frame() is not None:
            count += 1
    seconds = time.perf_counter() - start
    return (count, sum(map(len, pieces)) - len(buffer)), seconds


class NaiveFramer:
    """The baseline: a hand-written framer with the same shape of API as
    ReceiveBuffer (``feed``, then ``next_frame`` until None)."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next_frame(self) -> bytes | None:
        buf = self.buf
        if len(buf) < 5:
            return None
        _, length = _HEADER.unpack(buf[:5])
        size = length + 1
        if len(buf) < size:
            return None
        frame = bytes(buf[:size])
        del buf[:size]
        return frame


def naive_framer_runner(pieces: list[bytes]) -> tuple[Framed, float]:
    framer = NaiveFramer()
    feed = framer.feed
    next_frame = framer.next_frame
    count = 0
    start = time.perf_counter()
    for piece in pieces:
        feed(piece)
        while next_frame() is not None:
            count += 1
    seconds = time.perf_counter() - start
    return (count, sum(map(len, pieces)) - len(framer.buf)), seconds


def naive_inline_runner(pieces: list[bytes]) -> tuple[Framed, float]:
    """The same framer written into the loop: no call per frame."""
    buf = bytearray()
    unpack = _HEADER.unpack
    count = 0
    start = time.perf_counter()
    for piece in pieces:
        buf += piece
        while len(buf) >= 5:
            _, length = unpack(buf[:5])
            size = length + 1
            if len(buf) < size:
                break
            frame = bytes(buf[:size])  # noqa: F841  (a framer hands the frame on)
            del buf[:size]
            count += 1
    seconds = time.perf_counter() - start
    return (count, sum(map(len, pieces)) - len(buf)), seconds


def check_frames(stream: Stream, pieces: list[bytes]) -> None:
    """Untimed: both framers cut the stream exactly where the messages end."""
    buffer = pw.ReceiveBuffer()
    frames: list[bytes] = []
    for piece in pieces:
        buffer.feed(piece)
        while (frame := buffer.next_frame()) is not None:
            frames.append(bytes(frame))
    if b"".join(frames) != stream.data or len(frames) != stream.messages:
        raise SystemExit("ReceiveBuffer frames do not reassemble the stream")
    codes = bytes(frame[0] for frame in frames)
    if codes != b"T" + b"D" * stream.rows + b"CZ":
        raise SystemExit("ReceiveBuffer frame types are wrong")
    framer = NaiveFramer()
    naive_frames: list[bytes] = []
    for piece in pieces:
        framer.feed(piece)
        while (naive_frame := framer.next_frame()) is not None:
            naive_frames.append(naive_frame)
    if naive_frames != frames:
        raise SystemExit("the naive framer cuts the stream differently")


def main(argv: list[str] | None = None) -> None:
    options = parse_options(__doc__, argv, fed_by="feed", profiled="one ReceiveBuffer run")
    stream = build_stream(options.rows)
    pieces = chunks(stream.data, options.chunk_size)
    check_frames(stream, pieces)

    labels = {
        "pgwire": "pgwire ReceiveBuffer.next_frame()",
        "naive": "naive bytearray framer (baseline)",
        "inline": "naive framer inlined, no call/frame",
    }
    runners: dict[str, Runner[Framed]] = {
        "pgwire": receive_buffer_runner,
        "naive": naive_framer_runner,
        "inline": naive_inline_runner,
    }

    def check_framed(name: str, framed: Framed) -> None:
        count, framed_bytes = framed
        if count != stream.messages or framed_bytes != len(stream.data):
            raise SystemExit(f"{name}: framed {count} messages / {framed_bytes} bytes")

    best = measure(runners, pieces, options.repeat, options.disable_gc, check_framed)

    megabytes = len(stream.data) / 1e6
    print(f"framing benchmark: {stream.messages:,} messages, {megabytes:.1f} MB "
          f"in {len(pieces)} chunks of {options.chunk_size:,} bytes")
    print_environment(f"pgwire {pw.__version__}", options)
    print_rates(labels, best, stream.messages, megabytes, width=36)
    rate = stream.messages / best["pgwire"]
    print(f"ratio pgwire/naive: {best['naive'] / best['pgwire']:.2f}x")
    print(f"  target >= {TARGET_RATE:,} msg/s: {'met' if rate >= TARGET_RATE else 'NOT met'}")
    if options.profile:
        profile(receive_buffer_runner, pieces)


if __name__ == "__main__":
    main()

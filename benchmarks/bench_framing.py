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

import argparse
import cProfile
import gc
import platform
import pstats
import struct
import sys
import time
from collections.abc import Callable

from _stream import CHUNK_SIZE, DEFAULT_ROWS, Stream, build_stream, chunks

import pgwire as pw

#: Pass-through framing target from the issue, messages per second.
TARGET_RATE = 2_000_000

_HEADER = struct.Struct("!ci")

#: A timed run: takes the chunks, returns (frames, bytes framed, seconds).
Runner = Callable[[list[bytes]], tuple[int, int, float]]


def receive_buffer_runner(pieces: list[bytes]) -> tuple[int, int, float]:
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
    return count, sum(map(len, pieces)) - len(buffer), seconds


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


def naive_framer_runner(pieces: list[bytes]) -> tuple[int, int, float]:
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
    return count, sum(map(len, pieces)) - len(framer.buf), seconds


def naive_inline_runner(pieces: list[bytes]) -> tuple[int, int, float]:
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
    return count, sum(map(len, pieces)) - len(buf), seconds


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


def measure(runners: dict[str, Runner], pieces: list[bytes], stream: Stream, repeat: int,
            disable_gc: bool) -> dict[str, float]:
    """Best time per variant; variants take turns so drift hits both alike."""
    best = {name: float("inf") for name in runners}
    for _ in range(repeat):
        for name, runner in runners.items():
            gc.collect()
            if disable_gc:
                gc.disable()
            try:
                count, framed, seconds = runner(pieces)
            finally:
                gc.enable()
            if count != stream.messages or framed != len(stream.data):
                raise SystemExit(f"{name}: framed {count} messages / {framed} bytes")
            best[name] = min(best[name], seconds)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS,
                        help=f"DataRows in the stream (default {DEFAULT_ROWS:,})")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed runs per variant; the best is reported (default 5)")
    parser.add_argument("--chunk-size", type=int, default=CHUNK_SIZE,
                        help=f"bytes per feed (default {CHUNK_SIZE})")
    parser.add_argument("--disable-gc", action="store_true",
                        help="turn the cyclic garbage collector off during timed runs")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, profile one ReceiveBuffer run with cProfile")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeat < 1 or args.chunk_size < 1:
        parser.error("--rows, --repeat and --chunk-size must be positive")

    stream = build_stream(args.rows)
    pieces = chunks(stream.data, args.chunk_size)
    check_frames(stream, pieces)

    labels = {
        "pgwire": "pgwire ReceiveBuffer.next_frame()",
        "naive": "naive bytearray framer (baseline)",
        "inline": "naive framer inlined, no call/frame",
    }
    runners: dict[str, Runner] = {
        "pgwire": receive_buffer_runner,
        "naive": naive_framer_runner,
        "inline": naive_inline_runner,
    }
    best = measure(runners, pieces, stream, args.repeat, args.disable_gc)

    megabytes = len(stream.data) / 1e6
    print(f"framing benchmark: {stream.messages:,} messages, {megabytes:.1f} MB "
          f"in {len(pieces)} chunks of {args.chunk_size:,} bytes")
    print(f"Python {platform.python_version()} ({sys.implementation.name}), "
          f"pgwire {pw.__version__}; best of {args.repeat} runs; "
          f"gc {'DISABLED' if args.disable_gc else 'enabled'} during timed runs")
    for key, label in labels.items():
        seconds = best[key]
        print(f"  {label:<36} {stream.messages / seconds:>13,.0f} msg/s "
              f"{megabytes / seconds:>8.1f} MB/s {seconds:>8.3f} s")
    rate = stream.messages / best["pgwire"]
    print(f"ratio pgwire/naive: {best['naive'] / best['pgwire']:.2f}x")
    print(f"  target >= {TARGET_RATE:,} msg/s: {'met' if rate >= TARGET_RATE else 'NOT met'}")
    if args.profile:
        profile(receive_buffer_runner, pieces)


def profile(runner: Runner, pieces: list[bytes]) -> None:
    """One untimed run under cProfile (which inflates small calls: read the
    split between functions, not the totals)."""
    profiler = cProfile.Profile()
    profiler.runcall(runner, pieces)
    print()
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()

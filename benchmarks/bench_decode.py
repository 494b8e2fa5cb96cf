"""Decode throughput of a large result stream: pgwire's Frontend against pygwire.

The stream (see ``_stream.py``) is one simple-query answer: RowDescription,
N five-column DataRows, CommandComplete, ReadyForQuery. Each variant is fed the
same 64 KiB chunks, as a socket would deliver them, and takes every message
out; the clock covers feeding and decoding only, not building the stream or
the connection. Variants:

(a) pgwire ``Frontend`` decoding everything: each DataRow becomes a
    ``pgwire.DataRow`` whose values are ``bytes`` (or None).
(b) pygwire ``BackendMessageDecoder``, its incremental decoder for server
    messages, used as its docs show (``feed()`` then iterate), phase set as
    a client's would be after sending a Query. The named baseline.
(c) pgwire ``Frontend(decode={b"T", b"C", b"Z"})``: DataRows come out as
    ``RawMessage`` pass-through frames, still checked by the state machine.
(d) pygwire ``FrontendConnection`` (decoder plus its state machine), the
    like-for-like of (a), for information.

Prints messages/second (best of ``--repeat`` runs) and the line
``ratio pgwire/pygwire: X.XXx`` (a over b). Run with no arguments::

    .venv/bin/python benchmarks/bench_decode.py
"""

from __future__ import annotations

import time
from collections.abc import Collection
from importlib.metadata import version

import pygwire
import pygwire.messages as pg_messages
from _harness import Runner, measure, parse_options, print_environment, print_rates, profile
from _stream import QUERY, Stream, build_stream, chunks, login_bytes
from pygwire.constants import ConnectionPhase

import pgwire as pw
from pgwire.protocol._messages import SPEEDUPS

#: Ratio of (a) over (b) the issue asks for.
TARGET_RATIO = 5.0


# -- pgwire ------------------------------------------------------------------------


def ready_frontend(decode: Collection[bytes] | None) -> pw.Frontend:
    """A Frontend past startup that has sent :data:`QUERY`, so DataRows are legal."""
    frontend = pw.Frontend(decode=decode)
    frontend.send(pw.StartupMessage.from_dict({"user": "bench", "database": "bench"}))
    frontend.receive_data(login_bytes())
    while frontend.next_event() is not pw.NEED_DATA:
        pass
    if frontend.phase is not pw.Phase.READY:
        raise RuntimeError(f"Frontend did not reach READY after login: {frontend.phase}")
    frontend.send(pw.Query(query=QUERY))
    return frontend


def pgwire_runner(decode: Collection[bytes] | None) -> Runner[int]:
    def run(pieces: list[bytes]) -> tuple[int, float]:
        frontend = ready_frontend(decode)
        receive_data = frontend.receive_data
        next_event = frontend.next_event
        need_data = pw.NEED_DATA
        count = 0
        start = time.perf_counter()
        for piece in pieces:
            receive_data(piece)
            while next_event() is not need_data:
                count += 1
        return count, time.perf_counter() - start

    return run


def check_pgwire(stream: Stream, pieces: list[bytes], decode: Collection[bytes] | None) -> None:
    """Untimed: the Frontend yields exactly the messages that were encoded."""
    frontend = ready_frontend(decode)
    events: list[object] = []
    for piece in pieces:
        frontend.receive_data(piece)
        while (event := frontend.next_event()) is not pw.NEED_DATA:
            events.append(event)
    _expect(len(events) == stream.messages, f"pgwire: {len(events)} messages")
    head, *rows, complete, ready = events
    _expect(isinstance(head, pw.RowDescription) and len(head.fields) == 5, "pgwire: header")
    _expect(isinstance(complete, pw.CommandComplete)
            and complete.tag == f"SELECT {stream.rows}", "pgwire: CommandComplete")
    _expect(isinstance(ready, pw.ReadyForQuery), "pgwire: ReadyForQuery")
    for index, values in stream.samples.items():
        row = rows[index]
        if isinstance(row, pw.RawMessage):
            _expect(decode is not None and b"D" not in decode, "pgwire: raw row not asked for")
            row = frontend.decode(row)
        _expect(isinstance(row, pw.DataRow) and row.values == values, f"pgwire: row {index}")
        assert isinstance(row, pw.DataRow)
        _expect(all(v is None or type(v) is bytes for v in row.values), "pgwire: value types")
    _expect(frontend.phase is pw.Phase.READY and not frontend.busy, "pgwire: final state")


# -- pygwire -----------------------------------------------------------------------


def pygwire_decoder_runner(pieces: list[bytes]) -> tuple[int, float]:
    decoder = pygwire.BackendMessageDecoder()
    decoder.phase = ConnectionPhase.SIMPLE_QUERY
    feed = decoder.feed
    count = 0
    start = time.perf_counter()
    for piece in pieces:
        feed(piece)
        for _ in decoder:
            count += 1
    return count, time.perf_counter() - start


def ready_pygwire_connection() -> pygwire.FrontendConnection:
    connection = pygwire.FrontendConnection(initial_phase=ConnectionPhase.READY)
    connection.send(pg_messages.Query(query_string=QUERY))
    return connection


def pygwire_connection_runner(pieces: list[bytes]) -> tuple[int, float]:
    connection = ready_pygwire_connection()
    receive = connection.receive
    count = 0
    start = time.perf_counter()
    for piece in pieces:
        for _ in receive(piece):
            count += 1
    return count, time.perf_counter() - start


def check_pygwire(stream: Stream, pieces: list[bytes]) -> None:
    """Untimed: pygwire decodes the same stream to the same values."""
    decoder = pygwire.BackendMessageDecoder()
    decoder.phase = ConnectionPhase.SIMPLE_QUERY
    decoded: list[pg_messages.PGMessage] = []
    for piece in pieces:
        decoder.feed(piece)
        decoded.extend(decoder)
    _expect(len(decoded) == stream.messages, f"pygwire: {len(decoded)} messages")
    rows = decoded[1:-2]
    for index, values in stream.samples.items():
        row = rows[index]
        _expect(isinstance(row, pg_messages.DataRow) and tuple(row.columns) == values,
                f"pygwire: row {index}")
    connection = ready_pygwire_connection()
    count = sum(1 for piece in pieces for _ in connection.receive(piece))
    _expect(count == stream.messages and connection.is_ready, "pygwire connection: final state")


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"decoder output check failed: {what}")


# -- driver ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    options = parse_options(__doc__, argv, fed_by="receive_data()/feed() call",
                            profiled="one run of variant (a)")
    stream = build_stream(options.rows)
    pieces = chunks(stream.data, options.chunk_size)
    check_pgwire(stream, pieces, None)
    check_pgwire(stream, pieces, {b"T", b"C", b"Z"})
    check_pygwire(stream, pieces)

    labels = {
        "a": "(a) pgwire Frontend, every message decoded",
        "b": "(b) pygwire BackendMessageDecoder (baseline)",
        "c": "(c) pgwire Frontend, decode={T,C,Z}, rows raw",
        "d": "(d) pygwire FrontendConnection (+ state machine)",
    }
    runners: dict[str, Runner[int]] = {
        "a": pgwire_runner(None),
        "b": pygwire_decoder_runner,
        "c": pgwire_runner({b"T", b"C", b"Z"}),
        "d": pygwire_connection_runner,
    }

    def check_count(name: str, count: int) -> None:
        if count != stream.messages:
            raise SystemExit(f"{name}: took {count} messages, expected {stream.messages}")

    best = measure(runners, pieces, options.repeat, options.disable_gc, check_count)

    megabytes = len(stream.data) / 1e6
    print(f"decode benchmark: {stream.rows:,} DataRows, {stream.messages:,} messages, "
          f"{megabytes:.1f} MB in {len(pieces)} chunks of {options.chunk_size:,} bytes")
    print_environment(f"pgwire {pw.__version__} (C accelerator {'on' if SPEEDUPS else 'off'}), "
                      f"pygwire {version('pygwire')}", options)
    print_rates(labels, best, stream.messages, megabytes, width=50)
    ratio = best["b"] / best["a"]
    print(f"ratio pgwire/pygwire: {ratio:.2f}x")
    print(f"  target >= {TARGET_RATIO:.0f}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'}")
    print(f"ratio pgwire/pygwire-connection: {best['d'] / best['a']:.2f}x")
    print(f"ratio pgwire-rows-raw/pgwire: {best['a'] / best['c']:.2f}x")
    if options.profile:
        profile(pgwire_runner(None), pieces)


if __name__ == "__main__":
    main()

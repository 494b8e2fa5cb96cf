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
(e) node-postgres's parser, the ``pg-protocol`` package, in ``node`` on the
    same bytes and chunks (values decoded to strings), timed inside node after
    two warm-up passes. The second named baseline. It runs only when ``node``
    is installed; the package is installed with ``npm`` into a cache directory
    outside the repository (``$PGWIRE_BENCH_CACHE``, default
    ``~/.cache/pgwire-bench``) when missing. Otherwise, or with
    ``PGWIRE_BENCH_NODE=0``, a line says why it was skipped.
(p) When the C accelerator is built: (a) again with the pure-Python row
    decoder, which must meet the same targets.

Prints messages/second (best of ``--repeat`` runs) and the lines
``ratio pgwire/pygwire: X.XXx`` (a over b) and ``ratio pgwire/pg-protocol:
X.XXx`` (a over e), each with its target. Run with no arguments::

    .venv/bin/python benchmarks/bench_decode.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import pygwire
import pygwire.messages as pg_messages
from _harness import Runner, measure, parse_options, print_environment, print_rates, profile
from _stream import QUERY, Stream, build_stream, chunks, login_bytes
from pygwire.constants import ConnectionPhase

import pgwire as pw
from pgwire.protocol import _framing
from pgwire.protocol._messages import SPEEDUPS, _decode_data_rows_py

#: Ratio of (a) over (b) the issue asks for.
TARGET_RATIO = 5.0
#: Ratio of (a) over (e) the issue asks for.
TARGET_NODE_RATIO = 0.5
#: The node-postgres parser compared against (pinned, so runs compare alike).
PG_PROTOCOL = "pg-protocol@1.16.1"
#: Untimed passes node makes before the timed one, so its JIT has compiled the parser.
NODE_WARMUPS = 2


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


@contextmanager
def pure_python_rows(enabled: bool) -> Iterator[None]:
    """Within the block, the Frontend decodes row runs with the pure-Python
    decoder even when the C accelerator is built."""
    namespace = vars(_framing)  # ReceiveBuffer.data_rows looks the decoder up here
    accelerated = namespace["decode_data_rows"]
    if enabled:
        namespace["decode_data_rows"] = _decode_data_rows_py
    try:
        yield
    finally:
        namespace["decode_data_rows"] = accelerated


def pgwire_runner(decode: Collection[bytes] | None, pure_python: bool = False) -> Runner[int]:
    def run(pieces: list[bytes]) -> tuple[int, float]:
        with pure_python_rows(pure_python):
            return timed(pieces)

    def timed(pieces: list[bytes]) -> tuple[int, float]:
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


def check_pgwire(stream: Stream, pieces: list[bytes], decode: Collection[bytes] | None,
                 pure_python: bool = False) -> None:
    """Untimed: the Frontend yields exactly the messages that were encoded."""
    frontend = ready_frontend(decode)
    events: list[object] = []
    with pure_python_rows(pure_python):
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



# -- node-postgres (pg-protocol) ------------------------------------------------------

#: Run by node: argv is the package directory, the stream file, the chunk size,
#: the warm-up passes and the row indices whose values to print. Prints one JSON
#: object: messages parsed and seconds of the last pass, and the sampled rows.
NODE_SCRIPT = """\
"use strict";
const fs = require("fs");
const path = require("path");
const [root, file, chunkSize, warmups, sampleList] = process.argv.slice(2);
const { Parser } = require(path.join(root, "node_modules", "pg-protocol", "dist", "parser.js"));
const data = fs.readFileSync(file);
const pieces = [];
for (let at = 0; at < data.length; at += Number(chunkSize)) {
  pieces.push(data.subarray(at, at + Number(chunkSize)));
}
const wanted = new Set(sampleList ? sampleList.split(",").map(Number) : []);
function pass(samples) {
  const parser = new Parser();
  let count = 0;
  const callback = samples === null ? () => { count++; } : (message) => {
    if (wanted.has(count)) samples[count] = message.fields;
    count++;
  };
  const start = process.hrtime.bigint();
  for (const piece of pieces) parser.parse(piece, callback);
  return [count, Number(process.hrtime.bigint() - start) / 1e9];
}
for (let i = 0; i < Number(warmups); i++) pass(null);
const samples = wanted.size ? {} : null;
const [count, seconds] = pass(samples);
process.stdout.write(JSON.stringify({ count, seconds, samples }) + "\\n");
"""


def node_cache() -> Path:
    """Where pg-protocol is installed: never inside the repository."""
    configured = os.environ.get("PGWIRE_BENCH_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pgwire-bench"


def find_node() -> tuple[list[str], str] | str:
    """``(node command prefix, versions)``, installing the package if needed;
    or why the node baseline cannot run."""
    if os.environ.get("PGWIRE_BENCH_NODE") == "0":
        return "PGWIRE_BENCH_NODE=0"
    node = shutil.which("node")
    if node is None:
        return "no node in PATH"
    cache = node_cache()
    package = cache / "node_modules" / "pg-protocol" / "package.json"
    if not package.exists():
        npm = shutil.which("npm")
        if npm is None:
            return f"{PG_PROTOCOL} is not in {cache} and there is no npm in PATH to install it"
        try:
            cache.mkdir(parents=True, exist_ok=True)
            installed = subprocess.run(
                [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund",
                 "--loglevel=error", PG_PROTOCOL],
                capture_output=True, text=True, timeout=300, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"npm install {PG_PROTOCOL} into {cache} failed: {exc}"
        if installed.returncode != 0 or not package.exists():
            reason = (installed.stderr.strip().splitlines() or ["no output"])[-1]
            return f"npm install {PG_PROTOCOL} into {cache} failed: {reason}"
    script = cache / "bench_decode_pg_protocol.js"
    if not script.exists() or script.read_text() != NODE_SCRIPT:
        script.write_text(NODE_SCRIPT)
    try:
        node_version = subprocess.run([node, "--version"], capture_output=True, text=True,
                                      timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"node does not run: {exc}"
    package_version = json.loads(package.read_text())["version"]
    return [node, str(script), str(cache)], f"node {node_version}, pg-protocol {package_version}"


def run_node(command: list[str], stream_file: str, chunk_size: int, warmups: int,
             samples: Collection[int] = ()) -> dict[str, object]:
    sample_list = ",".join(map(str, samples))
    result = subprocess.run([*command, stream_file, str(chunk_size), str(warmups), sample_list],
                            capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise SystemExit(f"pg-protocol (node) failed: {result.stderr.strip()}")
    outcome: dict[str, object] = json.loads(result.stdout)
    return outcome


def node_runner(command: list[str], stream_file: str, chunk_size: int) -> Runner[int]:
    def run(pieces: list[bytes]) -> tuple[int, float]:
        outcome = run_node(command, stream_file, chunk_size, NODE_WARMUPS)
        count, seconds = outcome["count"], outcome["seconds"]
        assert isinstance(count, int) and isinstance(seconds, (int, float))
        return count, float(seconds)

    return run


def check_node(stream: Stream, command: list[str], stream_file: str, chunk_size: int) -> None:
    """Untimed: pg-protocol parses the same messages to the same values (as text)."""
    outcome = run_node(command, stream_file, chunk_size, 0, [i + 1 for i in stream.samples])
    _expect(outcome["count"] == stream.messages, f"pg-protocol: {outcome['count']} messages")
    samples = outcome["samples"]
    assert isinstance(samples, dict)
    for index, values in stream.samples.items():
        expected = [None if v is None else v.decode() for v in values]
        _expect(samples.get(str(index + 1)) == expected, f"pg-protocol: row {index}")


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
    if SPEEDUPS:
        check_pgwire(stream, pieces, None, pure_python=True)
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
    if SPEEDUPS:
        labels["p"] = "(p) as (a), pure-Python row decoder"
        runners["p"] = pgwire_runner(None, pure_python=True)

    with tempfile.TemporaryDirectory(prefix="pgwire-bench-") as scratch:
        node = find_node()
        node_versions = ""
        if not isinstance(node, str):
            command, node_versions = node
            stream_file = str(Path(scratch) / "stream.bin")
            Path(stream_file).write_bytes(stream.data)
            check_node(stream, command, stream_file, options.chunk_size)
            labels["e"] = "(e) node pg-protocol Parser (baseline 2)"
            runners["e"] = node_runner(command, stream_file, options.chunk_size)

        def check_count(name: str, count: int) -> None:
            if count != stream.messages:
                raise SystemExit(f"{name}: took {count} messages, expected {stream.messages}")

        best = measure(runners, pieces, options.repeat, options.disable_gc, check_count)

    megabytes = len(stream.data) / 1e6
    print(f"decode benchmark: {stream.rows:,} DataRows, {stream.messages:,} messages, "
          f"{megabytes:.1f} MB in {len(pieces)} chunks of {options.chunk_size:,} bytes")
    print_environment(f"pgwire {pw.__version__} (C accelerator {'on' if SPEEDUPS else 'off'}), "
                      f"pygwire {version('pygwire')}"
                      + (f", {node_versions}" if node_versions else ""), options)
    print_rates(labels, best, stream.messages, megabytes, width=50)
    pgwire_variants = {"a": "pgwire"}
    if SPEEDUPS:
        pgwire_variants["p"] = "pgwire-pure-python"
    for key, name in pgwire_variants.items():
        ratio = best["b"] / best[key]
        print(f"ratio {name}/pygwire: {ratio:.2f}x")
        print(f"  target >= {TARGET_RATIO:.0f}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'}")
    if "e" in best:
        for key, name in pgwire_variants.items():
            ratio = best["e"] / best[key]
            print(f"ratio {name}/pg-protocol: {ratio:.2f}x")
            print(f"  target >= {TARGET_NODE_RATIO}x: "
                  f"{'met' if ratio >= TARGET_NODE_RATIO else 'NOT met'}")
    else:
        print(f"(e) node pg-protocol skipped: {node}")
    print(f"ratio pgwire/pygwire-connection: {best['d'] / best['a']:.2f}x")
    print(f"ratio pgwire-rows-raw/pgwire: {best['a'] / best['c']:.2f}x")
    if options.profile:
        profile(pgwire_runner(None), pieces)


if __name__ == "__main__":
    main()

"""Make the seed corpus from real sessions: ``python -m fuzz.capture [--out fuzz/corpus]``.

Starts a throwaway PostgreSQL (:class:`pgwire.testing.cluster.PostgresCluster`,
SCRAM passwords), puts a recording byte relay in front of it, and runs real
clients through the relay: pgbench (``-i``, ``-S``, the default script,
``-M extended``, ``-M prepared``), psql (backslash commands, COPY in and out,
an error, NOTICE, LISTEN/NOTIFY), psycopg 3 and asyncpg. Every connection's
bytes are kept per direction, with the chunks as they were read and their
order across directions. Then each harness gets inputs in its own format
(the harness modules' docstrings), cut from those streams: the server's
login and its answers for the Frontend, the client's packets for the
Backend, SCRAM payloads, startup packets, and whole conversations for the
proxy session. Files are trimmed to ``--max-bytes`` (4 KB) so the corpus
stays small; synthetic seeds (:mod:`fuzz.seeds`) are added too.

Needs the PostgreSQL server binaries, ``pgbench``, ``psql``, psycopg and asyncpg.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pgwire.testing.cluster import PostgresCluster

from . import seeds
from ._common import piece_bytes
from .backend import PHASES as BACKEND_PHASES
from .frontend import PHASES as FRONTEND_PHASES
from .session import delivery, event

__all__ = ["Recording", "Relay", "capture", "main", "write_corpus"]

PASSWORD = "secret"
USER = "alice"
DATABASE = "app"
MAX_BYTES = 4096
MAX_FILES = 40


@dataclass
class Recording:
    """One connection through the relay: its chunks in the order they were read."""

    chunks: list[tuple[str, bytes]] = field(default_factory=list)  # ("client"|"server", data)

    def stream(self, side: str) -> bytes:
        """Everything ``side`` sent, joined."""
        return b"".join(data for who, data in self.chunks if who == side)


class Relay:
    """A TCP relay on a free loopback port that records every connection."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.recordings: list[Recording] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            recording = Recording()
            with self._lock:
                self.recordings.append(recording)
            for source, sink, side in ((client, server, "client"), (server, client, "server")):
                thread = threading.Thread(target=self._pump, daemon=True,
                                          args=(source, sink, side, recording))
                thread.start()
                self._threads.append(thread)

    def _pump(self, source: socket.socket, sink: socket.socket, side: str,
              recording: Recording) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            with self._lock:
                recording.chunks.append((side, data))
            with contextlib.suppress(OSError):
                sink.sendall(data)

    def close(self) -> None:
        """Stop accepting; wait for the connections to end."""
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=10)


# -- the clients ---------------------------------------------------------------------------

PSQL_SCRIPT = r"""
\set ON_ERROR_STOP off
select 1 as one, 'two' as two, null as three;
\dt
\d t
\l
\copy t to stdout
\copy t from stdin
7	seven
8	eight
\.
select * from t where a > 5 order by a;
begin;
insert into t values (9, 'nine');
select 1/0;
rollback;
do $$ begin raise notice 'hello %', 42; end $$;
listen fuzz_channel;
notify fuzz_channel, 'payload';
set application_name = 'capture';
show server_version;
select repeat('x', 3000) as long_text;
"""


def _run(argv: list[str], env: dict[str, str]) -> None:
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=300)


def _pgbench(port: int, env: dict[str, str]) -> None:
    base = ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", USER]
    _run([*base, "-i", "-s", "1", "-q", DATABASE], env)
    for extra in (["-S"], [], ["-M", "extended"], ["-M", "prepared"], ["-S", "-M", "prepared"]):
        _run([*base, "-n", "-c", "1", "-t", "5", *extra, DATABASE], env)


def _psql(port: int, env: dict[str, str]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(PSQL_SCRIPT)
    try:
        _run(["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-d", DATABASE,
              "-f", script.name], env)
    finally:
        os.unlink(script.name)


def _psycopg(port: int) -> None:
    import psycopg  # noqa: PLC0415 - a capture-only dependency

    with psycopg.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD,
                         dbname=DATABASE, sslmode="disable") as conn:
        conn.add_notice_handler(lambda notice: None)
        cur = conn.cursor()
        cur.execute("select %s::int + 1, %s::text, %s::bytea", (41, "text", b"\x00\x01"))
        cur.fetchall()
        cur.executemany("insert into t values (%s, %s)", [(10, "ten"), (11, "eleven")])
        with cur.copy("copy t (a, b) from stdin") as copy:
            copy.write_row((12, "twelve"))
        with cur.copy("copy t to stdout") as copy:
            for _ in copy:
                pass
        cur.execute("do $$ begin raise notice 'from psycopg'; end $$")
        with contextlib.suppress(psycopg.Error):
            cur.execute("select * from missing_table")
        conn.rollback()
        conn.execute("listen c1")
        conn.execute("notify c1, 'x'")
        conn.commit()
        with conn.cursor(binary=True) as binary:
            binary.execute("select a, b from t order by a limit 5")
            binary.fetchall()


async def _asyncpg_session(port: int) -> None:
    import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415 - a capture-only dependency

    conn = await asyncpg.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD,
                                 database=DATABASE, ssl=False)
    try:
        await conn.fetch("select $1::int * 2 as doubled, $2::text", 21, "asyncpg")
        statement = await conn.prepare("select a, b from t where a > $1")
        await statement.fetch(0)
        await conn.executemany("insert into t values ($1, $2)", [(20, "a"), (21, "b")])
        await conn.copy_records_to_table("t", records=[(30, "thirty")], columns=["a", "b"])
        await conn.copy_from_query("select * from t", output=_discard)
        async with conn.transaction():
            await conn.execute("update t set b = 'y' where a = 20")
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.fetch("select 1/0")
    finally:
        await conn.close()


async def _discard(data: bytes) -> None:
    del data


def capture(work: Path) -> list[tuple[str, Recording]]:
    """Run every client through a recording relay; (client name, recording) pairs."""
    del work
    captured: list[tuple[str, Recording]] = []
    with PostgresCluster(ssl=False, auth="scram-sha-256") as cluster:
        cluster.sql(f"create role {USER} login password '{PASSWORD}'; "
                    f"create database {DATABASE} owner {USER};")
        cluster.sql("create table t (a int, b text); insert into t values (1, 'one'), "
                    "(2, 'two');", user=USER, dbname=DATABASE, password=PASSWORD)
        env = {**os.environ, "PGPASSWORD": PASSWORD, "PGSSLMODE": "disable"}
        for name, run in (("pgbench", lambda port: _pgbench(port, env)),
                          ("psql", lambda port: _psql(port, env)),
                          ("psycopg", _psycopg),
                          ("asyncpg", lambda port: asyncio.run(_asyncpg_session(port)))):
            relay = Relay((cluster.host, cluster.port))
            try:
                run(relay.port)
            finally:
                relay.close()
            captured += [(name, recording) for recording in relay.recordings]
    return captured


# -- cutting streams into seeds --------------------------------------------------------------


def frames(stream: bytes, *, untyped_first: bool = False) -> list[bytes]:
    """The complete frames of a stream (the first untyped: a startup packet)."""
    found: list[bytes] = []
    position = 0
    if untyped_first and len(stream) >= 4:
        length = int.from_bytes(stream[:4], "big")
        found.append(stream[:length])
        position = length
    while position + 5 <= len(stream):
        length = int.from_bytes(stream[position + 1:position + 5], "big")
        end = position + 1 + length
        if end > len(stream):
            break
        found.append(stream[position:end])
        position = end
    return found


def _segments(server_frames: list[bytes]) -> list[list[bytes]]:
    """Server frames cut after each ReadyForQuery (the first segment is the login)."""
    segments: list[list[bytes]] = [[]]
    for frame in server_frames:
        segments[-1].append(frame)
        if frame[:1] == b"Z":
            segments.append([])
    return [s for s in segments if s]


def _requests(client_frames: list[bytes]) -> list[str]:
    """What each server segment after login answers: 'query' or 'extended'."""
    kinds: list[str] = []
    for frame in client_frames:
        if frame[:1] == b"Q" or frame[:1] == b"F":
            kinds.append("query")
        elif frame[:1] == b"S":
            kinds.append("extended")
    return kinds


class _Corpus:
    """Seeds per harness, deduplicated and trimmed."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.files: dict[str, dict[str, bytes]] = {}

    def add(self, harness: str, data: bytes) -> None:
        data = data[:self.max_bytes]
        name = hashlib.sha1(data).hexdigest()[:16]
        self.files.setdefault(harness, {})[name] = data


def _add_recording(corpus: _Corpus, recording: Recording) -> None:
    client_stream = recording.stream("client")
    server_stream = recording.stream("server")
    client_frames = frames(client_stream, untyped_first=True)
    server_frames = frames(server_stream)
    if not client_frames or not server_frames:
        return
    segments = _segments(server_frames)
    login = b"".join(segments[0])
    corpus.add("frontend", bytes([FRONTEND_PHASES.index("startup"), 0]) + login)
    corpus.add("frontend", bytes([FRONTEND_PHASES.index("startup"), 5]) + login)
    auth_end = 1
    while auth_end < len(client_frames) and client_frames[auth_end][:1] == b"p":
        auth_end += 1
    after_login = client_frames[auth_end:]
    kinds = _requests(after_login)
    for kind, segment in zip(kinds, segments[1:], strict=False):
        answer = b"".join(segment)
        codes = [f[:1] for f in segment]
        if b"G" in codes:
            rest = b"".join(segment[codes.index(b"G") + 1:])
            corpus.add("frontend", bytes([FRONTEND_PHASES.index("copy_in"), 0]) + rest)
        elif b"H" in codes:
            rest = b"".join(segment[codes.index(b"H") + 1:])
            corpus.add("frontend", bytes([FRONTEND_PHASES.index("copy_out"), 3]) + rest)
        else:
            phase = FRONTEND_PHASES.index(kind)
            corpus.add("frontend", bytes([phase, 0]) + answer)
            corpus.add("frontend", bytes([phase | 0x10, 4]) + answer)
    # The Backend: the startup packet; the auth answers; the requests after login.
    corpus.add("backend", bytes([BACKEND_PHASES.index("startup"), 0]) + client_frames[0])
    corpus.add("backend", bytes([BACKEND_PHASES.index("startup"), 2]) + client_stream[:600])
    sasl = [f for f in client_frames[1:auth_end]]
    if sasl:
        corpus.add("backend", bytes([BACKEND_PHASES.index("sasl"), 0]) + sasl[0])
    if len(sasl) > 1:
        corpus.add("backend", bytes([BACKEND_PHASES.index("sasl_continue"), 1]) + sasl[1])
    rest = b"".join(after_login)
    corpus.add("backend", bytes([BACKEND_PHASES.index("ready"), 0]) + rest)
    corpus.add("backend", bytes([BACKEND_PHASES.index("ready") | 0x10, 6]) + rest)
    copy_data = [f for f in after_login if f[:1] in (b"d", b"c", b"f")]
    if copy_data:
        corpus.add("backend", bytes([BACKEND_PHASES.index("copy_in"), 0]) + b"".join(copy_data))
    # SCRAM payloads, as the real client and server sent them (their nonces are not ours).
    server_auth = [f for f in segments[0] if f[:1] == b"R"]
    if len(sasl) > 1 and len(server_auth) > 2:
        initial, response = sasl[0][5:], sasl[1][5:]
        mechanism, _, rest_initial = initial.partition(b"\0")
        first = rest_initial[4:]
        corpus.add("scram_server", bytes([8]) + piece_bytes(mechanism, first) + response)
        corpus.add("scram_client", bytes([0]) + piece_bytes(b"", server_auth[1][9:])
                   + server_auth[2][9:])
    # The startup packet's body, for the sanitizer (every policy's bits vary in mutation).
    corpus.add("startup", bytes([0x00]) + client_frames[0][8:])
    corpus.add("startup", bytes([0x0B]) + client_frames[0][8:])
    # Whole conversations for the proxy session, chunks as they were read.
    conversation = b"".join(delivery(0 if who == "client" else 1, data)
                            for who, data in recording.chunks)
    for mode in range(3):
        corpus.add("session", bytes([mode, 0]) + conversation + event("client_eof"))
    pooled_client = [(who, data) for who, data in _after_login_chunks(recording)]
    if pooled_client:
        tail = b"".join(delivery(0 if who == "client" else 1, data) for who, data in
                        pooled_client)
        corpus.add("session", bytes([2, 1]) + tail)
        corpus.add("session_pool", bytes([0]) + tail)
        corpus.add("session_pool", bytes([3]) + tail)


def _after_login_chunks(recording: Recording) -> Iterator[tuple[str, bytes]]:
    """The chunks after the server's first ReadyForQuery."""
    seen = bytearray()
    logged_in = False
    for who, data in recording.chunks:
        if logged_in:
            yield who, data
        elif who == "server":
            seen += data
            if b"Z\x00\x00\x00\x05" in seen:
                logged_in = True


def write_corpus(corpus: _Corpus, out: Path, max_files: int) -> dict[str, tuple[int, int]]:
    """Write each harness's seeds (at most ``max_files``, the most varied first) to ``out``."""
    written: dict[str, tuple[int, int]] = {}
    for harness, files in sorted(corpus.files.items()):
        directory = out / harness
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            old.unlink()
        chosen = sorted(files.items(), key=lambda item: (item[1][:2], -len(item[1])))
        by_kind: dict[bytes, list[tuple[str, bytes]]] = {}
        for name, data in chosen:
            by_kind.setdefault(data[:2], []).append((name, data))
        picked: list[tuple[str, bytes]] = []
        while len(picked) < max_files and any(by_kind.values()):
            for kind in list(by_kind):
                if by_kind[kind] and len(picked) < max_files:
                    picked.append(by_kind[kind].pop(0))
        for name, data in picked:
            (directory / name).write_bytes(data)
        written[harness] = (len(picked), sum(len(d) for _, d in picked))
    return written


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m fuzz.capture", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "corpus")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES)
    parser.add_argument("--max-files", type=int, default=MAX_FILES)
    args = parser.parse_args(argv)
    corpus = _Corpus(args.max_bytes)
    with tempfile.TemporaryDirectory(prefix="pgwire-capture-") as work:
        for _client, recording in capture(Path(work)):
            _add_recording(corpus, recording)
    for harness, data in seeds.synthetic():
        corpus.add(harness, data)
    written = write_corpus(corpus, args.out, args.max_files)
    for harness, (count, size) in written.items():
        print(f"{harness:14} {count:3} files {size:7} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

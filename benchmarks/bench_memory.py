"""Proxy memory per idle client session: N clients logged in through the proxy, then idle.

Starts a throwaway PostgreSQL (`pgwire.testing.cluster.PostgresCluster`, trust
authentication, ``max_connections`` raised to fit the largest N), then, one
target after the other, each in a subprocess of its own so that its resident
memory is its own:

1. a baseline asyncio byte relay (``bench_proxy.py --relay-only``): what holding
   two sockets per session costs in Python with no protocol work at all;
2. ``python -m pgwire proxy --adapter A`` for each ``--adapter`` (default
   asyncio; passthrough authentication, no middleware);
3. the asyncio proxy with RoleRewrite, RoleGuard and Audit (JSON Lines sink)
   chained by ``bench_proxy.py``'s TOML (skipped with a note when a middleware
   or pglast is missing).

For each target the script logs in a few warm-up clients and closes them (so
lazily imported code and first-use caches are paid for), reads the target's
memory, then opens clients up to each N of ``--sessions`` (default 500 and
2,000), each a raw socket that sends a StartupMessage and reads up to
ReadyForQuery with a :class:`pgwire.Frontend` (the Frontend is dropped after
login: only the socket stays open), and reads the memory again. Memory is
VmRSS from ``/proc/PID/status`` and USS (private pages) from
``/proc/PID/smaps_rollup``. The table gives KiB per session = (memory at N -
memory before) / N, and the marginal cost between the two largest N, against
the issue's target of 20 KiB per idle session and against the relay.

``--query SQL`` has each client run SQL once before it idles (what a session
keeps after traffic). ``--tracemalloc`` runs each measured adapter once more,
and the middleware chain, under :mod:`tracemalloc` (through this script's
``--serve-traced`` mode) and prints the top allocation sites of the sessions
held open: what Python objects the memory goes to (C allocations such as
uvloop's are not seen). ``--pgwire-command`` runs another checkout's proxy, for
before/after numbers. The proxy's ``max_clients`` is raised through a
``--config`` file. Run::

    .venv/bin/python benchmarks/bench_memory.py [--adapter trio --adapter blocking]
"""

from __future__ import annotations

import argparse
import contextlib
import linecache
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn

import bench_proxy
from bench_proxy import LOOPBACK, ArgvForPort, TargetError, TargetSkipped

import pgwire as pw
from pgwire.testing.cluster import ClusterUnavailable, PostgresCluster, find_postgres_bindir

TARGET_KIB: Final = 20.0
DATABASE: Final = "postgres"
WARM_UP: Final = 20  # logins opened and closed before the "before" reading
LOGIN_THREADS: Final = 8
SETTLE_SECONDS: Final = 0.5  # after the last login, before reading the memory
ADAPTERS: Final = ("asyncio", "trio", "blocking")
LABEL_RELAY: Final = "asyncio relay (baseline)"
LABEL_MIDDLEWARE: Final = "pgwire asyncio, rewrite+guard+audit"


# ---------------------------------------------------------------------------
# Reading a process's memory


@dataclass(frozen=True, slots=True)
class Memory:
    """A process's resident memory, in KiB."""

    rss: int
    uss: int | None  # private clean + private dirty; None without smaps_rollup

    @classmethod
    def of(cls, pid: int) -> Memory:
        rss = 0
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                private = [int(line.split()[1]) for line in rollup
                           if line.startswith(("Private_Clean:", "Private_Dirty:"))]
        except OSError:
            return cls(rss, None)
        return cls(rss, sum(private))


# ---------------------------------------------------------------------------
# The idle clients


def login(port: int, user: str, query: str | None = None) -> socket.socket:
    """A socket logged in through ``port`` (StartupMessage up to ReadyForQuery),
    which then ran ``query`` (simple protocol, up to its ReadyForQuery)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=60)
    try:
        connection = pw.Frontend(decode={b"Z", b"E"})
        sock.sendall(connection.send(pw.StartupMessage.from_dict(
            {"user": user, "database": DATABASE})))
        while True:
            event = connection.next_event()
            if event is pw.NEED_DATA:
                connection.receive_data(sock.recv(65536))
            elif isinstance(event, pw.ReadyForQuery):
                if query is None:
                    return sock
                sock.sendall(connection.send(pw.Query(query=query)))
                query = None
            elif isinstance(event, pw.ErrorResponse):
                raise TargetError(f"login refused: {event.code} {event.message}")
            elif isinstance(event, pw.ConnectionClosed):
                raise TargetError("the target closed the connection during login")
    except BaseException:
        sock.close()
        raise


class Clients:
    """Idle logged-in sockets, opened a few threads at a time."""

    def __init__(self, port: int, user: str, query: str | None = None) -> None:
        self.port = port
        self.user = user
        self.query = query
        self.sockets: list[socket.socket] = []
        self._pool = ThreadPoolExecutor(LOGIN_THREADS, thread_name_prefix="login")

    def open_up_to(self, count: int) -> None:
        missing = count - len(self.sockets)
        if missing > 0:
            self.sockets.extend(self._pool.map(lambda _: login(self.port, self.user, self.query),
                                               range(missing)))

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        self._pool.shutdown()


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < needed:
        fail(f"{needed} file descriptors are needed and the hard limit is {hard}: "
             "raise it (ulimit -Hn) or ask for fewer --sessions")


# ---------------------------------------------------------------------------
# Measuring one target


@dataclass(slots=True)
class Reading:
    label: str
    before: Memory | None = None
    at: dict[int, Memory] = field(default_factory=dict)
    skipped: str | None = None

    def per_session(self, count: int, kind: str) -> float | None:
        if self.before is None or count not in self.at:
            return None
        before: int | None = getattr(self.before, kind)
        after: int | None = getattr(self.at[count], kind)
        return None if before is None or after is None else (after - before) / count

    def marginal(self, kind: str) -> float | None:
        counts = sorted(self.at)
        if len(counts) < 2:
            return None
        low: int | None = getattr(self.at[counts[-2]], kind)
        high: int | None = getattr(self.at[counts[-1]], kind)
        if low is None or high is None:
            return None
        return (high - low) / (counts[-1] - counts[-2])


def wait_for_backends_gone(cluster: PostgresCluster, timeout: float = 60.0) -> None:
    """PostgreSQL ends a backend shortly after its socket closes: wait for it, so
    the next target finds every slot free."""
    deadline = time.monotonic() + timeout
    query = ("select count(*) from pg_stat_activity "
             "where backend_type = 'client backend' and pid <> pg_backend_pid()")
    while int(cluster.sql(query)) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)


def measure_target(label: str, argv: ArgvForPort, cluster: PostgresCluster,
                   sessions: Sequence[int], query: str | None) -> Reading:
    reading = Reading(label)
    progress(f"{label}: starting")
    try:
        with bench_proxy.running(label, argv) as served:
            port, pid = int(served), getattr(served, "pid", None)
            if pid is None:
                raise TargetError("bench_proxy.running() did not say which process serves")
            warm_up = Clients(port, cluster.superuser)
            warm_up.open_up_to(WARM_UP)
            warm_up.close()
            time.sleep(SETTLE_SECONDS)
            reading.before = Memory.of(pid)
            clients = Clients(port, cluster.superuser, query)
            try:
                for count in sessions:
                    started = time.monotonic()
                    clients.open_up_to(count)
                    time.sleep(SETTLE_SECONDS)
                    reading.at[count] = Memory.of(pid)
                    progress(f"{label}: {count:,} sessions open "
                             f"({time.monotonic() - started:.1f} s), "
                             f"RSS {reading.at[count].rss / 1024:.1f} MiB")
            finally:
                clients.close()
    except TargetSkipped as exc:
        reading.skipped = str(exc)
    except TargetError as exc:
        reading.skipped = f"failed: {exc}"
    wait_for_backends_gone(cluster)
    return reading


# ---------------------------------------------------------------------------
# The tracemalloc view (``--serve-traced``: run the proxy, snapshot on request)


TRACE_FRAMES: Final = 12
SNAPSHOT_TAKEN: Final = "bench_memory: snapshot taken"
TRACED_START_TIMEOUT: Final = 180.0  # imports under tracemalloc are slow


def serve_traced(proxy_args: Sequence[str]) -> NoReturn:
    """Run ``pgwire proxy PROXY_ARGS`` under tracemalloc. Each line ``snapshot
    PATH`` on stdin writes the snapshot to PATH, then ``ok`` to stdout."""
    tracemalloc.start(TRACE_FRAMES)

    def answer() -> None:
        for line in sys.stdin:
            command, _, path = line.strip().partition(" ")
            if command == "snapshot":
                import gc  # noqa: PLC0415 - only here
                gc.collect()
                tracemalloc.take_snapshot().dump(path)
                print(SNAPSHOT_TAKEN, flush=True)

    threading.Thread(target=answer, daemon=True).start()
    from pgwire.cli import main  # noqa: PLC0415 - after tracemalloc started
    sys.exit(main(["proxy", *proxy_args]))


def show_traced(label: str, config_text: str, cluster: PostgresCluster, *, count: int,
                directory: Path, top: int, adapter: str = "asyncio") -> None:
    port = bench_proxy.free_port()
    config = directory / "pgwire-traced.toml"
    config.write_text(config_text + limits_config(count + WARM_UP + 50))
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-traced",
            "--listen", f"{LOOPBACK}:{port}", "--upstream", f"{LOOPBACK}:{cluster.port}",
            "--log-level", "warning", "--config", str(config), "--adapter", adapter]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, cwd=bench_proxy.ROOT,
                               env=bench_proxy.child_env())
    assert process.stdin is not None and process.stdout is not None

    def snapshot(name: str) -> tracemalloc.Snapshot:
        path = directory / name
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"snapshot {path}\n")
        process.stdin.flush()
        for line in process.stdout:  # the proxy may log to stdout too
            if line.strip() == SNAPSHOT_TAKEN:
                break
        else:
            raise TargetError("the traced proxy ended without taking its snapshot")
        return tracemalloc.Snapshot.load(str(path))

    try:
        deadline = time.monotonic() + TRACED_START_TIMEOUT
        while not bench_proxy.accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise TargetError("the traced proxy did not start")
            time.sleep(0.05)
        warm_up = Clients(port, cluster.superuser)
        warm_up.open_up_to(WARM_UP)
        warm_up.close()
        time.sleep(SETTLE_SECONDS)
        before = snapshot("before.snap")
        clients = Clients(port, cluster.superuser)
        try:
            clients.open_up_to(count)
            time.sleep(SETTLE_SECONDS)
            after = snapshot("after.snap")
        finally:
            clients.close()
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    wait_for_backends_gone(cluster)
    ignore = (tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, linecache.__file__))
    before, after = before.filter_traces(ignore), after.filter_traces(ignore)
    print(f"\ntracemalloc, {label}, {count:,} idle sessions minus none "
          f"(Python allocations only):")
    total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    print(f"  total {total / 1024 / count:,.2f} KiB per session")
    print(f"  top {top} lines, bytes per session (count of blocks per session):")
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        print(f"  {stat.size_diff / count:9.1f} B ({stat.count_diff / count:5.2f})  "
              f"{short_path(frame.filename)}:{frame.lineno}  "
              f"{linecache.getline(frame.filename, frame.lineno).strip()[:70]}")
    print(f"  top {top} allocation call paths (innermost pgwire frame first):")
    for stat in after.compare_to(before, "traceback")[:top]:
        frames = [f"{short_path(f.filename)}:{f.lineno}" for f in reversed(stat.traceback)
                  if "pgwire" in f.filename][:4]
        where = " < ".join(frames) or short_path(stat.traceback[0].filename)
        print(f"  {stat.size_diff / count:9.1f} B  {where}")


def short_path(path: str) -> str:
    for marker in ("/pgwire/", "/site-packages/", "/lib/python"):
        if marker in path:
            return path[path.index(marker) + 1:]
    return path


# ---------------------------------------------------------------------------
# The report


def print_report(readings: Sequence[Reading], sessions: Sequence[int]) -> None:
    relay = next((r for r in readings if r.label == LABEL_RELAY and r.skipped is None), None)
    width = max(len(r.label) for r in readings)
    print()
    print(f"Proxy memory per idle session (KiB; target {TARGET_KIB:g} KiB per session):")
    columns = [f"RSS@{n:,}" for n in sessions] + ["marginal", "USS marg.", "vs target",
                                                  "vs relay"]
    print(f"  {'target':<{width}} {'RSS before':>10}  " + "  ".join(f"{c:>9}" for c in columns))
    for reading in readings:
        if reading.skipped is not None or reading.before is None:
            print(f"  {reading.label:<{width}} skipped: {reading.skipped}")
            continue
        cells = [cell(reading.per_session(n, "rss")) for n in sessions]
        marginal = reading.marginal("rss")
        relay_marginal = relay.marginal("rss") if relay is not None else None
        largest = reading.per_session(sessions[-1], "rss")
        cells += [cell(marginal), cell(reading.marginal("uss")),
                  ratio(largest, TARGET_KIB), ratio(marginal, relay_marginal)]
        print(f"  {reading.label:<{width}} {reading.before.rss / 1024:>7.1f} MiB  "
              + "  ".join(f"{c:>9}" for c in cells))
    print(f"  (RSS@N: (VmRSS with N sessions open - before) / N; marginal: between the two "
          f"largest N;\n   vs target: RSS@{sessions[-1]:,} / {TARGET_KIB:g} KiB; vs relay: "
          "marginal / the relay's marginal)")


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def ratio(value: float | None, against: float | None) -> str:
    if value is None or not against:
        return "-"
    return f"{value / against:.2f}x"


def progress(message: str) -> None:
    print(f"[bench_memory] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    print(f"bench_memory: {message}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------------------
# main


#: How the proxy is run (``--pgwire-command`` replaces it).
PGWIRE_COMMAND: list[str] = [sys.executable, "-m", "pgwire", "proxy"]


def pgwire_argv(upstream_port: int, adapter: str, *extra: str) -> ArgvForPort:
    def argv(port: int) -> list[str]:
        return [*PGWIRE_COMMAND, "--adapter", adapter,
                "--listen", f"{LOOPBACK}:{port}", "--upstream", f"{LOOPBACK}:{upstream_port}",
                "--log-level", "warning", *extra]
    return argv


def limits_config(max_clients: int) -> str:
    """The proxy's ``[limits]`` table: room for every client (the default is 1,000)."""
    return f"\n[limits]\nmax_clients = {max_clients}\n"


def plain_target(upstream_port: int, adapter: str, directory: Path,
                 max_clients: int) -> ArgvForPort:
    config = directory / "pgwire-plain.toml"
    config.write_text(limits_config(max_clients))
    return pgwire_argv(upstream_port, adapter, "--config", str(config))


def middleware_target(upstream_port: int, directory: Path,
                      max_clients: int) -> ArgvForPort | str:
    """The asyncio proxy with the three role middleware, or why it cannot run."""
    import bench_roles  # noqa: PLC0415 - only for this target

    try:
        bench_roles.check_middleware_available()
    except TargetSkipped as exc:
        return str(exc)
    config = directory / "pgwire-middleware.toml"
    config.write_text(bench_proxy.middleware_config(upstream_port, directory / "audit.jsonl")
                      + limits_config(max_clients))
    return pgwire_argv(upstream_port, "asyncio", "--config", str(config))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sessions", default="500,2000",
                        help="comma-separated numbers of idle sessions (default 500,2000)")
    parser.add_argument("--adapter", action="append", choices=ADAPTERS,
                        help="pgwire adapter(s) to measure (repeatable; default asyncio)")
    parser.add_argument("--no-relay", action="store_true", help="skip the relay baseline")
    parser.add_argument("--no-middleware", action="store_true",
                        help="skip the proxy with the three role middleware")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also show where a traced asyncio proxy's memory goes")
    parser.add_argument("--top", type=int, default=20, help="tracemalloc lines shown (20)")
    parser.add_argument("--query", metavar="SQL",
                        help="each client runs SQL once after login, then idles (default: "
                             "idle right after login)")
    parser.add_argument("--pgwire-command", type=shlex.split, metavar="COMMAND",
                        help="run the proxy with COMMAND instead of `python -m pgwire proxy` "
                             "(another checkout, say)")
    args = parser.parse_args(argv)
    try:
        args.counts = sorted({int(n) for n in args.sessions.split(",") if n.strip()})
    except ValueError:
        parser.error(f"--sessions takes numbers, not {args.sessions!r}")
    if not args.counts or args.counts[0] <= 0:
        parser.error("--sessions needs at least one positive number")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["--serve-traced"]:  # internal: the traced proxy's process
        serve_traced(arguments[1:])
    args = parse_args(arguments)
    if args.pgwire_command:
        PGWIRE_COMMAND[:] = args.pgwire_command
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    largest = args.counts[-1]
    raise_file_limit(2 * largest + WARM_UP + 200)
    try:
        bindir = find_postgres_bindir()
    except ClusterUnavailable as exc:
        fail(str(exc))
    max_clients = largest + WARM_UP + 50
    settings = {"max_connections": max_clients, "shared_buffers": "16MB"}
    targets: list[tuple[str, ArgvForPort | str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as temp, \
            PostgresCluster(bindir=bindir, ssl=False, auth="trust", settings=settings) as cluster:
        directory = Path(temp)
        if not args.no_relay:
            targets.append((LABEL_RELAY, bench_proxy.relay_argv(cluster.port)))
        for adapter in args.adapter or ["asyncio"]:
            targets.append((f"pgwire {adapter}",
                            plain_target(cluster.port, adapter, directory, max_clients)))
        if not args.no_middleware:
            targets.append((LABEL_MIDDLEWARE,
                            middleware_target(cluster.port, directory, max_clients)))
        readings = []
        for label, target in targets:
            if isinstance(target, str):
                readings.append(Reading(label, skipped=target))
            else:
                readings.append(measure_target(label, target, cluster, args.counts,
                                               args.query))
        print_environment(cluster)
        print_report(readings, args.counts)
        if args.tracemalloc:
            for adapter in args.adapter or ["asyncio"]:
                show_traced(f"pgwire {adapter}", "", cluster, count=largest,
                            directory=directory, top=args.top, adapter=adapter)
            if not args.no_middleware and not isinstance(readings[-1].skipped, str):
                show_traced(LABEL_MIDDLEWARE, bench_proxy.middleware_config(
                    cluster.port, directory / "traced-audit.jsonl"), cluster, count=largest,
                    directory=directory, top=args.top)
    failed = [r for r in readings if r.skipped is not None and r.skipped.startswith("failed")]
    return 1 if failed else 0


def print_environment(cluster: PostgresCluster) -> None:
    loop = "uvloop" if importlib_available("uvloop") else "asyncio"
    print(f"Python {sys.version.split()[0]}, PostgreSQL {cluster.sql('show server_version')}, "
          f"asyncio adapter on {loop}; clients: raw sockets, {LOGIN_THREADS} login threads")


def importlib_available(name: str) -> bool:
    import importlib.util  # noqa: PLC0415 - only here
    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

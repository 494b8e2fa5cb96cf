"""Connection storm: thousands of connects and disconnects, many cut short; nothing may leak.

Starts a throwaway PostgreSQL (SCRAM logins) and ``python -m pgwire proxy``
in front of it with Audit, RoleRewrite and RoleGuard (``reliability/_rig.py``)
and client TLS (a throwaway certificate), then opens ``--connections``
connections through it, ``--batch`` at a time (each batch starts together,
one thread per connection, and ends before the next starts). They take
turns through ten slots:

===================  =====  ================================================
kind                 share  what the client does
===================  =====  ================================================
``login``            4/10   SCRAM login, ``select 1``, Terminate
``tls login``        1/10   the same over TLS (SSLRequest, then a handshake)
``ssl request``      1/10   sends an SSLRequest and closes at once
``half startup``     1/10   sends half a StartupMessage and closes
``before password``  1/10   StartupMessage, waits for the server's SCRAM
                            request, closes instead of answering
``reset handshake``  1/10   the same, then a TCP reset (SO_LINGER 0)
``reset query``      1/10   logs in, sends ``select pg_sleep(0.2)``, resets
===================  =====  ================================================

A warm-up storm (``--warm-up`` connections, same mix, default 5,000) runs
first, so that what the proxy creates once or keeps up to a bound is in the
baseline (its descriptors, threads and memory once idle): what is created
on first use (with uvloop, one descriptor and one thread), the allocator's
arenas for a batch's sessions, and the audit sink's cache of encoded
session fields, which holds up to 4,096 sessions (ended ones too) before it
is cleared: RSS climbs by several MiB over the first few thousand logins,
then stays flat. The
proxy is read again, once idle, halfway through the storm and at its end,
and the report gives the RSS change per connection over the second half.
After the storm the run passes when, within ``--settle`` seconds (30; less than the
proxy's login timeout and PostgreSQL's ``authentication_timeout``, both 60,
so a leftover that only a timeout would end is caught):

- every connection behaved as its kind expects (logins answered ``1``, the
  aborting kinds got as far as they meant to), with no error from the proxy;
- the proxy has no session left (its ``pgwire_sessions`` gauge) and
  PostgreSQL no client backend left (``pg_stat_activity``);
- the proxy's descriptors are back to the baseline, its threads not above
  it (idle worker threads may end), and its RSS is at most ``--rss-bound``
  (10%) above it;
- the proxy counted every connection (``sessions_started``) and every login,
  and no internal or upstream error;
- the audit file verifies, has a ``disconnect`` record for each ``connect``
  and an ``auth`` record for each login.

The report gives each kind's counts, the proxy's readings (baseline, peak,
after), its counters and the criteria. Exit status 0 when every criterion
passes, 1 otherwise. Run::

    .venv/bin/python reliability/storm.py --connections 10000
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import _rig
from _rig import Criteria, Reading, progress

import pgwire as pw
from pgwire.client import ClientConnection
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.pki import CertificateAuthority

#: Seconds any one socket operation of a storm client may take.
CLIENT_TIMEOUT: Final = 30.0
#: How far the proxy's RSS may rise above the baseline after the storm, by default.
RSS_BOUND: Final = 0.10


class Unexpected(Exception):
    """A storm connection did not go as its kind expects: the message says what happened."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where and as whom the storm's clients connect."""

    port: int
    user: str
    password: str

    def connect(self) -> socket.socket:
        return socket.create_connection((_rig.LOOPBACK, self.port), timeout=CLIENT_TIMEOUT)

    def startup(self) -> bytes:
        return pw.StartupMessage.from_dict({"user": self.user, "database": _rig.DATABASE,
                                            "application_name": "storm"}).encode()


def _events(sock: socket.socket, connection: ClientConnection,
            until: Callable[[pw.FrontendEvent], bool]) -> list[pw.FrontendEvent]:
    """Events up to the first ``until`` accepts; an ErrorResponse or the end is Unexpected."""
    events: list[pw.FrontendEvent] = []
    while True:
        event = connection.next_event()
        outgoing = connection.data_to_send()
        if outgoing:
            sock.sendall(outgoing)
        if event is pw.NEED_DATA:
            data = sock.recv(65536)
            connection.receive_data(data)
            continue
        if isinstance(event, pw.ErrorResponse):
            raise Unexpected(f"{event.code} {event.message}")
        if isinstance(event, pw.ConnectionClosed):
            raise Unexpected("the proxy closed the connection")
        events.append(event)
        if until(event):
            return events


def _login(target: Target, sock: socket.socket, *, tls: bool) -> ClientConnection:
    connection = ClientConnection(user=target.user, database=_rig.DATABASE,
                                  password=target.password,
                                  sslmode="require" if tls else "disable",
                                  parameters={"application_name": "storm"})
    connection.start()
    sock.sendall(connection.data_to_send())
    _events(sock, connection, lambda e: isinstance(e, pw.ReadyForQuery))
    return connection


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def login(target: Target, *, tls: bool = False) -> None:
    with target.connect() as sock:
        connection = _login(target, sock, tls=tls)
        connection.send(pw.Query(query="select 1"))
        sock.sendall(connection.data_to_send())
        events = _events(sock, connection, lambda e: isinstance(e, pw.ReadyForQuery))
        rows = [bytes(e.values[0] or b"") for e in events if isinstance(e, pw.DataRow)]
        if rows != [b"1"]:
            raise Unexpected(f"select 1 returned {rows!r}")
        connection.send(pw.Terminate())
        sock.sendall(connection.data_to_send())


def tls_login(target: Target) -> None:
    login(target, tls=True)


def ssl_request(target: Target) -> None:
    with target.connect() as sock:
        sock.sendall(pw.SSLRequest().encode())


def half_startup(target: Target) -> None:
    startup = target.startup()
    with target.connect() as sock:
        sock.sendall(startup[: len(startup) // 2])


def _until_password_request(target: Target, sock: socket.socket) -> None:
    frontend = pw.Frontend()
    sock.sendall(frontend.send(pw.StartupMessage.from_dict(
        {"user": target.user, "database": _rig.DATABASE, "application_name": "storm"})))
    while True:
        event = frontend.next_event()
        if event is pw.NEED_DATA:
            frontend.receive_data(sock.recv(65536))
        elif isinstance(event, pw.AuthenticationSASL):
            return
        else:
            raise Unexpected(f"expected the server's SCRAM request, got {event!r}")


def before_password(target: Target) -> None:
    with target.connect() as sock:
        _until_password_request(target, sock)


def reset_handshake(target: Target) -> None:
    sock = target.connect()
    try:
        _until_password_request(target, sock)
    finally:
        _reset(sock)


def reset_query(target: Target) -> None:
    sock = target.connect()
    try:
        connection = _login(target, sock, tls=False)
        connection.send(pw.Query(query="select pg_sleep(0.2)"))
        sock.sendall(connection.data_to_send())
    finally:
        _reset(sock)


#: The ten slots the connections take turns through: (kind, what the client does).
SLOTS: Final[tuple[tuple[str, Callable[[Target], None]], ...]] = (
    ("login", login),
    ("ssl request", ssl_request),
    ("login", login),
    ("half startup", half_startup),
    ("tls login", tls_login),
    ("before password", before_password),
    ("login", login),
    ("reset handshake", reset_handshake),
    ("login", login),
    ("reset query", reset_query),
)
KINDS: Final = tuple(dict.fromkeys(kind for kind, _ in SLOTS))
#: Kinds that log in (the proxy counts a login for each).
LOGIN_KINDS: Final = ("login", "tls login", "reset query")


@dataclass(slots=True)
class Outcome:
    """How the connections of one kind went."""

    attempted: int = 0
    unexpected: int = 0
    examples: list[str] = field(default_factory=list)


class Storm:
    """Runs connections in batches and counts how each kind went."""

    def __init__(self, target: Target, batch: int) -> None:
        self.target = target
        self.batch = batch
        self.outcomes = {kind: Outcome() for kind in KINDS}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(batch, thread_name_prefix="storm")

    def close(self) -> None:
        self._pool.shutdown()

    def _one(self, number: int) -> None:
        kind, client = SLOTS[number % len(SLOTS)]
        try:
            client(self.target)
            problem = None
        except Exception as exc:  # Unexpected, OSError, a refused login, TLS, SCRAM: all count
            problem = f"{type(exc).__name__}: {exc}"
        with self._lock:
            outcome = self.outcomes[kind]
            outcome.attempted += 1
            if problem is not None:
                outcome.unexpected += 1
                if len(outcome.examples) < 3:
                    outcome.examples.append(problem)

    def run(self, stop: int, *, start: int = 0,
            on_batch: Callable[[int], None] | None = None) -> None:
        """Connections number ``start`` to ``stop`` (their kinds follow `SLOTS` by
        number), ``batch`` at a time; ``on_batch`` gets the number reached."""
        for first in range(start, stop, self.batch):
            numbers = range(first, min(first + self.batch, stop))
            list(self._pool.map(self._one, numbers))
            if on_batch is not None:
                on_batch(numbers.stop)

    @property
    def attempted(self) -> int:
        return sum(o.attempted for o in self.outcomes.values())

    def logins(self) -> int:
        return sum(self.outcomes[kind].attempted for kind in LOGIN_KINDS)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else "")
    parser.add_argument("--connections", type=int, default=10_000,
                        help="connections in the storm (default 10,000)")
    parser.add_argument("--batch", type=int, default=100,
                        help="connections started together (default 100)")
    parser.add_argument("--warm-up", type=int, default=5_000,
                        help="connections of the warm-up storm before the baseline (default "
                             "5,000: enough logins to fill the audit's cache of 4,096 sessions)")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="seconds sessions and backends get to go away (default 30)")
    parser.add_argument("--rss-bound", type=float, default=RSS_BOUND,
                        help="how far RSS may end above the baseline, as a fraction "
                             f"(default {RSS_BOUND})")
    parser.add_argument("--adapter", default="asyncio", choices=("asyncio", "trio", "blocking"),
                        help="the proxy's adapter (default asyncio)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the proxy's config, stderr and audit file in DIR")
    args = parser.parse_args(argv)
    if min(args.connections, args.batch) < 1 or args.warm_up < 0 or args.settle <= 0:
        parser.error("--connections and --batch must be positive, --warm-up not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _rig.exit_on_sigterm()
    bindir = _rig.postgres_bindir()
    _rig.raise_file_limit(4 * args.batch + 256)
    criteria = Criteria()
    with contextlib.ExitStack() as stack:
        directory = _rig.work_directory(stack, args.keep, "pgwire-storm-")
        ca = CertificateAuthority.create(directory / "pki")
        cert, key = ca.issue_server_certificate()
        tls = f'\n[client_tls]\ncert = "{cert}"\nkey = "{key}"\n'
        cluster = stack.enter_context(PostgresCluster(
            bindir=bindir, ssl=False, auth="scram-sha-256",
            settings={"max_connections": args.batch + 50}))
        server_version = cluster.sql("show server_version")
        proxy = stack.enter_context(_rig.watched_proxy(
            cluster.port, max_clients=args.batch + 50, adapter=args.adapter, extra=tls,
            directory=directory))
        target = Target(proxy.port, cluster.superuser, cluster.superuser_password)
        start = proxy.reading()

        def settle() -> tuple[bool, int, bool, int]:
            """Wait for no session and no backend; then read (idle, sessions, gone, backends)."""
            idle = proxy.wait_idle(args.settle)
            gone = _rig.wait_for(lambda: _rig.client_backends(cluster) == 0, args.settle,
                                 interval=0.25)
            time.sleep(0.5)  # let the metrics scrape's thread end before counting
            return idle, proxy.session_count(), gone, _rig.client_backends(cluster)

        warm_up = Storm(target, args.batch)
        if args.warm_up:
            progress(f"warm-up: {args.warm_up} connections")
            warm_up.run(args.warm_up)
        warm_up.close()
        settle()
        baseline = proxy.reading()
        counters_before = proxy.counters()

        storm = Storm(target, args.batch)
        half = args.connections // 2
        progress(f"storm: {args.connections} connections, {args.batch} at a time")
        began = time.monotonic()

        def report_progress(done: int) -> None:
            if done % 1000 == 0:
                progress(f"  {done} connections, {time.monotonic() - began:.0f} s")

        with _rig.Sampler(proxy.pid) as sampler:
            sampler.phase = "storm"
            storm.run(half, on_batch=report_progress)
            sampler.phase = "settle"
            settle()
            middle = proxy.reading()
            sampler.phase = "storm"
            storm.run(args.connections, start=half, on_batch=report_progress)
            storm_seconds = time.monotonic() - began
            sampler.phase = "settle"
            idle, sessions_left, gone, backends_left = settle()
        storm.close()
        after = proxy.reading()
        counters = proxy.counters()
        proxy.stop()
        proxy_log = proxy.stderr_path.read_text(errors="replace")
        verified, verify_line = _rig.audit_verify(proxy.audit_path)
        events = _rig.audit_events(proxy.audit_path)

    readings = [s.reading for s in sampler.samples] or [after]
    peak = Reading(max(r.rss_kib for r in readings), max(r.fds for r in readings),
                   max(r.threads for r in readings))
    print(f"storm: {args.connections:,} connections through pgwire proxy ({args.adapter}) with "
          f"Audit, RoleRewrite, RoleGuard and client TLS, {args.batch} at a time, after a "
          f"warm-up of {args.warm_up:,}; {storm_seconds:.0f} s, "
          f"{args.connections / storm_seconds:,.0f} connections/s")
    print(f"Python {platform.python_version()}, PostgreSQL {server_version}")
    print()
    _rig.table(("kind", "connections", "as expected", "unexpected"),
               [(kind, f"{o.attempted:,}", f"{o.attempted - o.unexpected:,}", o.unexpected)
                for kind, o in storm.outcomes.items()])
    print()
    _rig.table(("proxy", "RSS MiB", "fds", "threads"),
               [(label, f"{r.rss_mib:.1f}", r.fds, r.threads)
                for label, r in (("start", start), ("baseline (after warm-up)", baseline),
                                 ("peak during the storm", peak),
                                 (f"after {half:,} connections", middle),
                                 (f"after {args.connections:,} connections", after))])
    print(f"  (peak: each column's highest of {len(sampler.samples)} readings, one a second; "
          "the others once no session was left)")
    second_half = args.connections - half
    slope = (after.rss_kib - middle.rss_kib) * 1024 / second_half
    print(f"  RSS over the second half: {slope:+,.0f} bytes per connection")
    print()
    delta = {name: int(counters.get(name, 0) - counters_before.get(name, 0)) for name in counters}
    print("proxy counters during the storm: " + ", ".join(
        f"{name} {value:,}" for name, value in delta.items() if value))
    print("audit: " + ", ".join(f"{event} {count:,}" for event, count in events.most_common()))
    print()

    unexpected = {kind: o for kind, o in storm.outcomes.items() if o.unexpected}
    criteria.check("every connection went as its kind expects", not unexpected,
                   f"{storm.attempted:,} connections, "
                   f"{sum(o.unexpected for o in storm.outcomes.values())} unexpected"
                   + "".join(f"\n      {kind}: {o.unexpected} unexpected, e.g. "
                             + "; ".join(o.examples) for kind, o in unexpected.items()))
    criteria.check("no session left in the proxy", idle and sessions_left == 0,
                   f"{sessions_left} sessions left (waited up to {args.settle:g} s)")
    criteria.check("no backend left in PostgreSQL", gone and backends_left == 0,
                   f"{backends_left} client backends in pg_stat_activity")
    criteria.check("fds back to the baseline", after.fds == baseline.fds,
                   f"baseline {baseline.fds}, after {after.fds}")
    # Fewer is fine: idle worker threads may end (trio's thread cache keeps them 10 s).
    criteria.check("threads back to the baseline", after.threads <= baseline.threads,
                   f"baseline {baseline.threads}, after {after.threads}")
    growth = after.rss_kib / baseline.rss_kib - 1
    criteria.check(f"RSS within {args.rss_bound:.0%} of the baseline", growth <= args.rss_bound,
                   f"{baseline.rss_mib:.1f} -> {after.rss_mib:.1f} MiB ({growth:+.1%}); "
                   f"peak {peak.rss_mib:.1f} MiB")
    criteria.check("the proxy counted every connection and login",
                   delta.get("sessions_started") == storm.attempted
                   and delta.get("logins") == storm.logins(),
                   f"sessions_started {delta.get('sessions_started')} of {storm.attempted}, "
                   f"logins {delta.get('logins')} of {storm.logins()}")
    errors = {name: delta.get(name, 0) for name in
              ("internal_errors", "upstream_errors", "upstream_connect_failures",
               "login_failures", "refused_max_clients", "login_timeouts")}
    criteria.check("no internal, upstream or login error", not any(errors.values()),
                   ", ".join(f"{name} {value}" for name, value in errors.items()))
    logged = [line for line in proxy_log.splitlines() if " ERROR " in line or "Traceback" in line]
    criteria.check("proxy logged no error", not logged,
                   "\n      ".join(logged[:5]) if logged else "stderr has none")
    criteria.check("proxy exits 0 on SIGTERM", proxy.exit_status == 0,
                   f"exit status {proxy.exit_status}")
    criteria.check("pgwire audit verify passes", verified, verify_line)
    logins = warm_up.logins() + storm.logins()
    criteria.check("audit: a disconnect per connect, an auth per login",
                   events["connect"] == events["disconnect"]
                   and events["auth"] == logins,
                   f"connect {events['connect']:,}, disconnect {events['disconnect']:,}, "
                   f"auth {events['auth']:,} (logins {logins:,})")
    print()
    criteria.print()
    return 0 if criteria.passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""Idle and busy: 2,000 idle sessions must not slow 8 busy pgbench clients by more than 20%.

Starts a throwaway PostgreSQL (trust logins, TLS off, ``max_connections``
raised to fit: see below) filled by ``pgbench -i``, and ``python -m pgwire
proxy`` in front of it with Audit, RoleRewrite and RoleGuard
(``reliability/_rig.py``) and ``max_clients`` above ``--idle`` + ``--clients``.
Then pgbench runs of ``--seconds`` each, ``--clients`` busy clients,
select-only: one without idle sessions, then ``--rounds`` (2) times one
*with* ``--idle`` sessions logged in first (raw sockets: a StartupMessage,
then reading up to ReadyForQuery with a :class:`pgwire.Frontend`,
``benchmarks/bench_memory.py``'s clients), kept open and silent during the
run, each of which must still answer a ``select 1`` afterwards, followed by
one without (the idle sessions closed again).

The comparison takes the best run of each kind: on a shared machine other
load only ever lowers a rate, and two runs without idle sessions alone were
seen to differ by 18%. The proxy's own CPU time per transaction (from
``/proc``) is compared too: it depends much less on what else runs, and it
is what idle sessions would raise if the proxy did work per session on
every event.

Why session mode, 2,000 server connections: the proxy runs in passthrough
session mode (every client has its own server connection, what the soak
and most deployments use), so each idle client holds two sockets in the
proxy, a session with its middleware state, and a PostgreSQL backend. That
is the heavier case for the proxy (4,000 sockets on one event loop); a
transaction pool would hold only the 2,000 client sockets. The cost is on
the server side: ``max_connections`` is set to ``--idle`` + ``--clients``
+ 60 (about 2,070), i.e. 2,000 idle backend processes of a few MiB each.
(PostgreSQL's own limit is ``max_connections``, bounded by the kernel's
semaphores and memory; a real deployment with that many clients would pool.)

The run passes when every pgbench run is clean (exit 0, no failed
transaction), every idle session logged in and still answers, the best busy
TPS with idle sessions is at least 80% of the best without, the lowest
proxy CPU per transaction with them at most 120% of the lowest without, and
after the idle sessions close the proxy has no session left and its
descriptors are back to their count after the first run. The report prints
each run's TPS and the proxy's memory, descriptors and threads. Exit status
0 when every criterion passes, 1 otherwise. Run::

    .venv/bin/python reliability/idle_busy.py
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import _rig
import bench_memory  # on the path once _rig is imported
import bench_proxy
from _rig import Criteria, Reading, progress

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster

#: The busy clients' workload: select-only, simple protocol.
OPTIONS: Final = ("-S", "-M", "simple")
#: The lowest busy TPS with idle sessions, as a share of the TPS without.
RATIO_FLOOR: Final = 0.80
#: Server connections beyond the clients: the guard's role-graph connection,
#: psql for the checks, superuser_reserved_connections (3), margin.
SERVER_SLOTS_SPARE: Final = 60


@dataclass(frozen=True, slots=True)
class Run:
    """One pgbench run and the proxy's state during and after it."""

    label: str
    idle: int
    run: _rig.PgbenchRun
    #: The proxy's CPU time (user + system) per transaction, in microseconds.
    cpu_us: float | None
    end: Reading | None  # the last reading during the run
    after: Reading  # once only the idle sessions (if any) were left


@dataclass(slots=True)
class Idle:
    """One round's idle sessions: how many logged in, were counted, still answered."""

    logged_in: int = 0
    counted: int = 0
    answering: int = 0
    login_seconds: float = 0.0


def still_answers(sock: socket.socket) -> bool:
    """Whether an idle logged-in socket answers ``select 1`` with a row and no error,
    up to ReadyForQuery."""
    try:
        sock.sendall(pw.Query(query="select 1").encode())
        received = b""
        types: list[bytes] = []
        while b"Z" not in types:
            data = sock.recv(65536)
            if not data:
                return False
            received += data
            # Whole frames off the front: a type byte, then a length that counts itself.
            while len(received) >= 5:
                length = int.from_bytes(received[1:5], "big")
                if len(received) < 1 + length:
                    break
                types.append(received[:1])
                received = received[1 + length:]
    except OSError:
        return False
    return b"D" in types and b"E" not in types


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else "")
    parser.add_argument("--idle", type=int, default=2000,
                        help="idle sessions held open during the second run (default 2,000)")
    parser.add_argument("--clients", type=int, default=8, help="busy pgbench clients (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="pgbench threads (default 2)")
    parser.add_argument("--seconds", type=int, default=30,
                        help="length of each pgbench run (default 30)")
    parser.add_argument("--scale", type=int, default=1, help="pgbench -i scale (default 1)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs with idle sessions, each followed by one without; the "
                             "first run has none (default 2)")
    parser.add_argument("--adapter", default="asyncio", choices=("asyncio", "trio", "blocking"),
                        help="the proxy's adapter (default asyncio)")
    args = parser.parse_args(argv)
    if min(args.idle, args.clients, args.threads, args.seconds, args.scale, args.rounds) < 1:
        parser.error("--idle, --clients, --threads, --seconds, --scale and --rounds must be "
                     "positive")
    args.threads = min(args.threads, args.clients)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _rig.exit_on_sigterm()
    bindir = _rig.postgres_bindir()
    pgbench = _rig.pgbench_in(bindir)
    sessions = args.idle + args.clients
    # Ours: one socket per idle session; the proxy's (inherited): two per session.
    _rig.raise_file_limit(2 * sessions + 512)
    criteria = Criteria()
    runs: list[Run] = []
    rounds: list[Idle] = []
    settled: list[bool] = []
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="pgwire-idle-busy-")))
        cluster = stack.enter_context(PostgresCluster(
            bindir=bindir, ssl=False, auth="trust",
            settings={"max_connections": sessions + SERVER_SLOTS_SPARE}))
        bench = bench_proxy.Bench(program=pgbench, user=cluster.superuser,
                                  password=cluster.superuser_password, clients=args.clients,
                                  threads=args.threads, seconds=args.seconds)
        progress(f"pgbench -i -s {args.scale} on PostgreSQL at {cluster.host}:{cluster.port}")
        bench.initialise(cluster.port, args.scale)
        server_version = cluster.sql("show server_version")
        proxy = stack.enter_context(_rig.watched_proxy(
            cluster.port, max_clients=sessions + 50, adapter=args.adapter, directory=directory))
        sampler = stack.enter_context(_rig.Sampler(proxy.pid))

        def measure(label: str, idle: int) -> Run:
            progress(f"{label}: pgbench {' '.join(OPTIONS)}, {args.clients} clients, "
                     f"{args.seconds} s, {idle:,} idle sessions")
            sampler.phase = label
            cpu_before = bench_proxy.process_cpu_seconds(proxy.pid)
            run = _rig.run_pgbench(bench, proxy.port, OPTIONS, args.seconds)
            cpu_after = bench_proxy.process_cpu_seconds(proxy.pid)
            end = sampler.samples[-1].reading if sampler.samples else None
            sampler.phase = "between"
            _rig.wait_for(lambda: proxy.session_count() <= idle, interval=0.25)
            time.sleep(0.5)  # let the metrics scrape's thread end before counting
            if not run.clean:
                progress(f"{label} failed: {run.problem()}")
            cpu_us = (None if cpu_before is None or cpu_after is None or not run.transactions
                      else (cpu_after - cpu_before) * 1e6 / run.transactions)
            return Run(label, idle, run, cpu_us, end, proxy.reading())

        def with_idle(round_number: int) -> Idle:
            progress(f"logging in {args.idle:,} idle sessions")
            sampler.phase = "logging in"
            idle = Idle()
            began = time.monotonic()
            clients = bench_memory.Clients(proxy.port, cluster.superuser)
            try:
                clients.open_up_to(args.idle)
            except (bench_proxy.TargetError, OSError) as exc:
                _rig.fail(f"an idle session could not log in: {exc}")
            idle.login_seconds = time.monotonic() - began
            idle.logged_in = len(clients.sockets)
            idle.counted = proxy.session_count()
            runs.append(measure(f"with idle {round_number}", idle.logged_in))
            progress("checking that every idle session still answers")
            with ThreadPoolExecutor(bench_memory.LOGIN_THREADS) as pool:
                idle.answering = sum(pool.map(still_answers, clients.sockets))
            clients.close()
            return idle

        runs.append(measure("without 0", 0))
        for round_number in range(1, args.rounds + 1):
            rounds.append(with_idle(round_number))
            settled.append(proxy.wait_idle() and _rig.wait_for(
                lambda: _rig.client_backends(cluster) == 0, interval=0.25))
            runs.append(measure(f"without {round_number}", 0))
        counters = proxy.counters()
        proxy.stop()

    print(f"idle+busy: pgbench {' '.join(OPTIONS)}, {args.clients} clients, {args.threads} "
          f"threads, {args.seconds} s per run, through pgwire proxy ({args.adapter}, passthrough, "
          f"session mode) with Audit, RoleRewrite, RoleGuard; {args.rounds} round(s) with "
          f"{args.idle:,} idle sessions, each between two runs without")
    print(f"Python {platform.python_version()}, {bench_proxy.first_line([pgbench, '--version'])}, "
          f"PostgreSQL {server_version} (max_connections {sessions + SERVER_SLOTS_SPARE})")
    print()
    _rig.table(("run", "idle sessions", "TPS", "transactions", "failed", "proxy CPU us/txn",
                "RSS MiB", "fds", "threads"),
               [(r.label, f"{r.idle:,}", f"{r.run.tps:,.1f}" if r.run.tps is not None else "-",
                 f"{r.run.transactions:,}", r.run.failed if r.run.clean else "FAILED",
                 f"{r.cpu_us:.1f}" if r.cpu_us is not None else "-",
                 f"{r.end.rss_mib:.1f}" if r.end else "-",
                 r.end.fds if r.end else "-", r.end.threads if r.end else "-")
                for r in runs])
    print("  (RSS, fds, threads: the proxy's last reading during the run; logging the idle "
          "sessions in took " + ", ".join(f"{i.login_seconds:.0f} s" for i in rounds) + ")")
    print()
    busy = [r for r in runs if r.idle]
    quiet = [r for r in runs if not r.idle]
    unclean = [r for r in runs if not r.run.clean]
    criteria.check("zero client errors", not unclean,
                   f"{len(runs)} pgbench runs, {len(unclean)} not clean"
                   + "".join(f"\n      {r.label}: {r.run.problem()}" for r in unclean))
    criteria.check(f"{args.idle:,} idle sessions logged in",
                   all(i.logged_in == i.counted == args.idle for i in rounds),
                   "; ".join(f"{i.logged_in:,} logged in, the proxy counted {i.counted:,}"
                             for i in rounds))
    criteria.check("every idle session still answers after the busy run",
                   all(i.answering == i.logged_in for i in rounds),
                   "; ".join(f"{i.answering:,} of {i.logged_in:,} answered select 1"
                             for i in rounds))
    # Best of each: other load on the machine only ever lowers a rate.
    best_busy = max((r.run.tps for r in busy if r.run.tps is not None), default=None)
    best_quiet = max((r.run.tps for r in quiet if r.run.tps is not None), default=None)
    name = f"busy TPS with idle sessions within {1 - RATIO_FLOOR:.0%}"
    if best_busy is not None and best_quiet is not None:
        ratio = best_busy / best_quiet
        criteria.check(name, ratio >= RATIO_FLOOR,
                       f"best {best_busy:,.1f} with vs best {best_quiet:,.1f} without: "
                       f"{ratio:.2f}x")
    else:
        criteria.check(name, False, "a run has no TPS")
    cheapest_busy = min((r.cpu_us for r in busy if r.cpu_us is not None), default=None)
    cheapest_quiet = min((r.cpu_us for r in quiet if r.cpu_us is not None), default=None)
    name = f"proxy CPU per transaction with idle sessions within {1 - RATIO_FLOOR:.0%}"
    if cheapest_busy is not None and cheapest_quiet is not None:
        ratio = cheapest_busy / cheapest_quiet
        criteria.check(name, ratio <= 2 - RATIO_FLOOR,
                       f"lowest {cheapest_busy:.1f} us with vs lowest {cheapest_quiet:.1f} us "
                       f"without: {ratio:.2f}x")
    else:
        criteria.check(name, False, "the proxy's CPU time could not be read")
    criteria.check("no session or backend left once the idle sessions closed", all(settled),
                   f"rounds settled: {settled}")
    fds = [r.after.fds for r in quiet]
    criteria.check("fds back after the idle sessions closed", len(set(fds)) == 1,
                   f"once idle after each run without: {fds}")
    errors = {name: int(counters.get(name, 0)) for name in
              ("internal_errors", "upstream_errors", "client_protocol_errors",
               "refused_max_clients", "login_failures")}
    criteria.check("proxy counted no error", not any(errors.values()),
                   ", ".join(f"{name} {value}" for name, value in errors.items()))
    criteria.check("proxy exits 0 on SIGTERM", proxy.exit_status == 0,
                   f"exit status {proxy.exit_status}")
    print()
    criteria.print()
    return 0 if criteria.passed else 1


if __name__ == "__main__":
    sys.exit(main())

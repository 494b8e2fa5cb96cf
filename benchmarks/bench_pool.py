"""Transaction pooling: pgbench through PgBouncer (pool_mode=transaction) and pgwire's pool.

One run, one throwaway PostgreSQL (filled by ``pgbench -i``), and five
targets that take turns, run after run, so that a machine that gets slower
or faster during the run treats them alike:

1. direct to PostgreSQL (for reference);
2. PgBouncer, ``pool_mode = transaction``, ``default_pool_size`` = the pool
   size, ``auth_type = scram-sha-256`` with the superuser's SCRAM secret from
   ``pg_authid`` in its userlist (as ``bench_proxy.py`` runs it), and
   ``max_prepared_statements = 100`` when the installed PgBouncer has it
   (1.21 and later). An older PgBouncer is skipped for ``-M prepared``: in
   transaction mode without that setting, a statement one client prepared
   is missing on the next server connection it gets;
3. pgwire's transaction pool: ``ProxyConfig(auth=ProxyAuth(...),
   pool=PoolConfig(mode="transaction", max_size=POOL_SIZE))`` with every other
   setting at its default (the minimal reset of what a client left, and the
   verification of ``current_user, session_user`` before a connection goes to
   another client);
4. pgwire's session pool (``mode="session"``), for reference;
5. pgwire's proxy without a pool (passthrough authentication, no
   middleware: what ``bench_proxy.py`` runs as ``python -m pgwire proxy``),
   for reference: what the pool costs on top of the proxy.

pgwire runs in a process of its own, on the asyncio adapter (on uvloop when
it is installed), as ``pgwire proxy`` runs it: this script again, with
``--serve MODE``, which builds the ProxyConfig itself. When it stops, it
writes ``Pool.stats()`` and the CPU time it used while serving to a file;
the report sums those per workload.

Workloads: pgbench's built-in ``select-only`` and ``tpcb-like`` scripts, for
every protocol in ``--protocols`` (default ``simple``). Every run is
``pgbench -n -c CLIENTS -j CLIENTS -T SECONDS``: as many threads as clients,
because with ``-M prepared`` a pgbench thread that serves several clients
prepares each one's statements with a blocking call while its other clients
hold server connections mid-transaction, which deadlocks any transaction pool
smaller than the client count. Before each run the script vacuums
``pgbench_branches`` and ``pgbench_tellers`` and truncates ``pgbench_history``
(what pgbench itself does without ``-n``), on its own connection to the
server, so that every target starts from the same tables. Each target is
started before its run and stopped after it.

The report: TPS per workload and target (the best of ``--rounds``), the
ratio pgwire transaction pool / PgBouncer, with ``--rounds`` above 1 the
spread of each rate over the rounds, then the pools' counters and each pgwire
process's CPU time per transaction. A failed
run (or a target that would not start) is reported and makes the script exit
1. Every process it starts is stopped on the way out, also on Ctrl-C or
SIGTERM. Run it with::

    .venv/bin/python benchmarks/bench_pool.py --seconds 10 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, NoReturn

import bench_proxy
from bench_proxy import DATABASE, LOOPBACK, Bench, Result, TargetError, TargetSkipped

from pgwire.proxy import PoolConfig, ProxyAuth, ProxyConfig
from pgwire.testing.cluster import ClusterUnavailable, PostgresCluster, find_postgres_bindir

SCRIPT: Final = Path(__file__).resolve()
PROTOCOLS: Final = ("simple", "extended", "prepared")
#: pgbench's built-in scripts, in the order they are reported.
SCRIPTS: Final = ("select-only", "tpcb-like")
DEFAULT_POOL_SIZE: Final = 8
#: The first PgBouncer with ``max_prepared_statements`` (protocol-level
#: prepared statements in transaction mode).
PGBOUNCER_PREPARED_SINCE: Final = (1, 21)
BOUNCER_MAX_PREPARED: Final = 100
SHUTDOWN_TIMEOUT: Final = 5.0  # seconds the pgwire proxy gives sessions when stopped

LABEL_DIRECT: Final = "direct"
LABEL_BOUNCER: Final = "pgbouncer tx"
LABEL_TRANSACTION: Final = "pgwire tx"
LABEL_SESSION: Final = "pgwire session"
LABEL_NO_POOL: Final = "pgwire no pool"
#: The pool counters the report shows (keys of ``Pool.stats()`` rows), and their headings.
COUNTERS: Final = (
    ("checkouts", "checkouts"), ("verifications", "verifications"), ("resets", "resets"),
    ("discard_alls", "discard_alls"), ("reprepared", "reprepared"),
    ("pinned_transactions", "pinned"), ("servers_opened", "opened"),
)

PROCESSED_LINE: Final = re.compile(r"^number of transactions actually processed: (\d+)",
                                   re.MULTILINE)
FAILED_LINE: Final = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
VERSION_NUMBER: Final = re.compile(r"(\d+)\.(\d+)")
#: What pgbench does before a run unless told -n, run here on a connection of our own.
TABLE_UPKEEP: Final = ("VACUUM pgbench_branches;\nVACUUM pgbench_tellers;\n"
                       "TRUNCATE pgbench_history;\n")


@dataclass(frozen=True, slots=True)
class Workload:
    """One pgbench load: the protocol (``-M``) and the built-in script (``-b``)."""

    protocol: str
    script: str

    def label(self) -> str:
        return f"{self.protocol} {self.script}"


# ---------------------------------------------------------------------------
# pgbench


@dataclass(frozen=True, slots=True)
class Run:
    """One pgbench run against one target: its rate (or why there is none), the
    transactions pgbench completed, and the pool's counters for the run."""

    result: Result
    transactions: int = 0
    counters: dict[str, float] | None = None
    internal_errors: int = 0


def parse_count(pattern: re.Pattern[str], output: str) -> int | None:
    """The number of the first line of pgbench's ``output`` that ``pattern`` matches."""
    found = pattern.search(output)
    return int(found.group(1)) if found else None


def run_length(seconds: int, transactions: int | None) -> tuple[str, ...]:
    """pgbench's options for how long a run lasts: ``-T SECONDS``, or ``-t N``
    transactions per client."""
    return ("-T", str(seconds)) if transactions is None else ("-t", str(transactions))


def run_pgbench(bench: Bench, port: int, workload: Workload,
                length: Sequence[str]) -> tuple[Result, int]:
    """``pgbench -b SCRIPT -M PROTOCOL`` against ``port`` for ``length``
    (:func:`run_length`): its result and the transactions it completed."""
    argv = [bench.program, "-b", workload.script, "-n", "-M", workload.protocol,
            "-c", str(bench.clients), "-j", str(bench.threads), *length,
            *bench.login(port), DATABASE]
    try:
        completed = subprocess.run(argv, env=bench.env(), capture_output=True, text=True,
                                   timeout=bench.seconds + 120, check=False)
    except subprocess.TimeoutExpired:
        return Bench.failure(argv, "did not finish in time", ""), 0
    output = completed.stdout
    tps = bench_proxy.parse_tps(output)
    failed = parse_count(FAILED_LINE, output) or 0
    if completed.returncode != 0 or tps is None:
        return Bench.failure(argv, f"exit {completed.returncode}",
                             completed.stderr + output), 0
    if failed:
        return Bench.failure(argv, f"{failed} failed transactions",
                             completed.stderr + output), 0
    return Result(tps=tps), parse_count(PROCESSED_LINE, output) or 0


# ---------------------------------------------------------------------------
# pgwire in a process of its own (``--serve MODE``)

#: What ``--serve`` runs: a pool mode, or the proxy without a pool.
ServeMode = Literal["transaction", "session", "no-pool"]
SERVE_MODES: Final[tuple[ServeMode, ...]] = ("transaction", "session", "no-pool")


def serve_config(mode: ServeMode, upstream: tuple[str, int], user: str | None,
                 password_file: str | None, pool_size: int) -> ProxyConfig:
    """The ProxyConfig ``--serve MODE`` runs: a pool checks the one user's
    password itself and logs in upstream with it; no pool is passthrough."""
    if mode == "no-pool":
        return ProxyConfig(upstream=upstream, shutdown_timeout=SHUTDOWN_TIMEOUT)
    assert user is not None and password_file is not None
    return ProxyConfig(
        upstream=upstream,
        auth=ProxyAuth(method="scram-sha-256", users={user: Path(password_file).read_text()}),
        pool=PoolConfig(mode=mode, max_size=pool_size),
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )


def serve_pgwire(args: argparse.Namespace) -> int:
    """Run the proxy on the asyncio adapter until SIGTERM or SIGINT, then write
    ``Pool.stats()``, the proxy's counters and the CPU seconds it used while
    serving to ``--stats-file`` (JSON)."""
    from pgwire.adapters.asyncio import run, start_proxy  # noqa: PLC0415 - this mode only

    config = serve_config(args.serve, args.upstream, args.user, args.password_file,
                          args.pool_size)

    async def main() -> int:
        server = await start_proxy(config, [args.listen])
        cpu_at_start = time.process_time()
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []

        def stop() -> None:
            if not stopping:
                stopping.append(loop.create_task(server.shutdown()))

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop)
        print(f"pgwire ({args.serve}) listening on {args.listen[0]}:{args.listen[1]}, "
              f"event loop {type(loop).__module__}.{type(loop).__name__}", flush=True)
        await server.serve_until_shutdown()
        cpu_seconds = time.process_time() - cpu_at_start
        pool = server.proxy.pool
        Path(args.stats_file).write_text(json.dumps({
            "pool": pool.stats() if pool is not None else [],
            "proxy": server.proxy.stats.as_dict(), "cpu_seconds": cpu_seconds}))
        return 0

    status: int = run(main)
    return status


class PgwireTarget:
    """Starts ``--serve MODE`` for one run and reads its counters after it stopped."""

    def __init__(self, mode: ServeMode, *, upstream_port: int, user: str, password_file: Path,
                 pool_size: int, directory: Path) -> None:
        self.mode = mode
        self.upstream_port = upstream_port
        self.user = user
        self.password_file = password_file
        self.pool_size = pool_size
        self.directory = directory
        self._runs = itertools.count(1)
        self.stats_file: Path | None = None

    def argv(self, stats_file: Path) -> bench_proxy.ArgvForPort:
        def argv(port: int) -> list[str]:
            return [sys.executable, str(SCRIPT), "--serve", self.mode,
                    "--listen", f"{LOOPBACK}:{port}",
                    "--upstream", f"{LOOPBACK}:{self.upstream_port}",
                    "--user", self.user, "--password-file", str(self.password_file),
                    "--pool-size", str(self.pool_size), "--stats-file", str(stats_file)]
        return argv

    @contextlib.contextmanager
    def start(self) -> Iterator[int]:
        self.stats_file = self.directory / f"pgwire-{self.mode}-{next(self._runs)}.json"
        with bench_proxy.running(f"pgwire ({self.mode})", self.argv(self.stats_file)) as port:
            yield port

    def read_stats(self) -> tuple[dict[str, float] | None, int]:
        """The run's pool counters (summed over the pool's keys, plus the CPU
        seconds the process used while it served, as ``cpu_seconds``) and the
        proxy's internal errors; (None, 0) when the process wrote no stats."""
        if self.stats_file is None or not self.stats_file.exists():
            return None, 0
        data = json.loads(self.stats_file.read_text())
        totals: dict[str, float] = {"cpu_seconds": float(data["cpu_seconds"])}
        for row in data["pool"]:
            for name, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    totals[name] = totals.get(name, 0) + value
        return totals, int(data["proxy"].get("internal_errors", 0))


# ---------------------------------------------------------------------------
# PgBouncer in transaction mode


def version_tuple(text: str) -> tuple[int, int] | None:
    """``(major, minor)`` of the first ``N.N`` in ``text`` (``PgBouncer 1.18.0``)."""
    found = VERSION_NUMBER.search(text)
    return (int(found.group(1)), int(found.group(2))) if found else None


def bouncer_has_prepared(version_line: str) -> bool:
    """Whether this PgBouncer keeps protocol-level prepared statements across
    transaction-mode server connections (``max_prepared_statements``)."""
    version = version_tuple(version_line)
    return version is not None and version >= PGBOUNCER_PREPARED_SINCE


@contextlib.contextmanager
def pgbouncer_transaction(binary: str, *, upstream_port: int, user: str, scram_secret: str,
                          pool_size: int, clients: int, prepared: bool) -> Iterator[int]:
    """PgBouncer in transaction mode in front of the server: ``bench_proxy``'s
    PgBouncer with ``pool_mode = transaction`` and, when ``prepared``,
    ``max_prepared_statements``."""
    settings = [f"max_prepared_statements = {BOUNCER_MAX_PREPARED}"] if prepared else []
    with bench_proxy.pgbouncer(binary, upstream_port, user, scram_secret, clients,
                               pool_mode="transaction", pool_size=pool_size,
                               settings=settings) as port:
        yield port


# ---------------------------------------------------------------------------
# The targets and the rounds


@dataclass(slots=True)
class Target:
    """A system pgbench runs against: how to start it for one run, and what it
    cannot run (protocol -> why)."""

    label: str
    start: Callable[[], contextlib.AbstractContextManager[int]]
    pgwire: PgwireTarget | None = None
    unsupported: dict[str, str] = field(default_factory=dict)


def run_once(target: Target, workload: Workload, bench: Bench, length: Sequence[str],
             prefix: str) -> Run:
    """Start ``target``, run ``workload`` against it, stop it."""
    reason = target.unsupported.get(workload.protocol)
    if reason is not None:
        return Run(Result(skipped=reason))
    try:
        with target.start() as port:
            bench_proxy.progress(f"{prefix}{workload.label()} through {target.label} "
                                 f"(port {port}), {' '.join(length)}")
            result, transactions = run_pgbench(bench, port, workload, length)
    except TargetSkipped as exc:
        bench_proxy.progress(f"{prefix}{target.label}: skipped: {exc}")
        return Run(Result(skipped=str(exc).partition("\n")[0]))
    except TargetError as exc:
        bench_proxy.progress(f"{prefix}{target.label}: FAILED: {exc}")
        return Run(Result(failed=str(exc).partition("\n")[0].rstrip(":")))
    counters, internal_errors = (target.pgwire.read_stats() if target.pgwire is not None
                                 else (None, 0))
    if result.tps is not None:
        bench_proxy.progress(f"{prefix}  {result.tps:,.1f} TPS, {transactions:,} transactions")
    return Run(result, transactions, counters, internal_errors)


@dataclass(slots=True)
class Tally:
    """Every run of one target on one workload: the best rate, and sums."""

    result: Result | None = None
    transactions: int = 0
    counters: dict[str, float] | None = None
    internal_errors: int = 0
    #: The rate of every round that measured one.
    rates: list[float] = field(default_factory=list)

    def add(self, run: Run) -> None:
        if run.result.tps is not None:
            self.rates.append(run.result.tps)
        old, new = self.result, run.result
        if old is None or (old.tps is not None and (new.tps is None or new.tps > old.tps)):
            self.result = new  # a failure or a skip wins over any rate
        self.transactions += run.transactions
        self.internal_errors += run.internal_errors
        if run.counters is not None:
            totals = self.counters if self.counters is not None else {}
            for name, value in run.counters.items():
                totals[name] = totals.get(name, 0) + value
            self.counters = totals

    @property
    def done(self) -> bool:
        """Skipped or failed: once is enough."""
        return self.result is not None and self.result.tps is None

    def spread(self) -> str:
        """``(best - worst) / best`` over the rounds, as a percentage."""
        if len(self.rates) < 2:
            return "-"
        return f"{(max(self.rates) - min(self.rates)) / max(self.rates):.0%}"


Tallies = dict[tuple[str, Workload], Tally]


def run_rounds(targets: Sequence[Target], workloads: Sequence[Workload], *, bench: Bench,
               length: Sequence[str], rounds: int, upkeep: Callable[[], None]) -> Tallies:
    """Every workload against every target, ``rounds`` times, the targets taking
    turns on each workload."""
    tallies: Tallies = {(t.label, w): Tally() for w in workloads for t in targets}
    for round_number in range(1, rounds + 1):
        prefix = f"round {round_number}: " if rounds > 1 else ""
        for workload in workloads:
            for target in targets:
                tally = tallies[target.label, workload]
                if tally.done:
                    continue
                if workload.protocol not in target.unsupported:
                    upkeep()
                tally.add(run_once(target, workload, bench, length, prefix))
    return tallies


# ---------------------------------------------------------------------------
# The report


class Notes:
    """Footnotes for the cells that hold no rate: ``[1]``, ``[2]`` ..."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def print(self) -> None:
        for number, text in enumerate(self.texts, 1):
            print(f"  [{number}] {text}")


def cell(result: Result | None, label: str, notes: Notes) -> str:
    if result is None:
        return "-"
    if result.tps is not None:
        return f"{result.tps:,.1f}"
    if result.skipped is not None:
        return "skipped " + notes.mark(f"{label}: {result.skipped}")
    return "FAILED " + notes.mark(f"{label}: {result.failed}")


def print_tps_table(tallies: Tallies, targets: Sequence[Target],
                    workloads: Sequence[Workload]) -> None:
    notes = Notes()
    ratio_title = f"{LABEL_TRANSACTION}/{LABEL_BOUNCER}"
    widths = [max(14, len(t.label)) for t in targets]
    print(f"  {'protocol':<9} {'script':<12} "
          + " ".join(f"{t.label:>{w}}" for t, w in zip(targets, widths, strict=True))
          + f"  {ratio_title:>{len(ratio_title)}}")
    for workload in workloads:
        cells = [cell(tallies[t.label, workload].result, t.label, notes) for t in targets]
        ratio = bench_proxy.ratio(
            tps(tallies, LABEL_TRANSACTION, workload), tps(tallies, LABEL_BOUNCER, workload))
        print(f"  {workload.protocol:<9} {workload.script:<12} "
              + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
              + f"  {ratio:>{len(ratio_title)}}")
    notes.print()


def print_spread_table(tallies: Tallies, targets: Sequence[Target],
                       workloads: Sequence[Workload]) -> None:
    widths = [max(14, len(t.label)) for t in targets]
    print(f"  {'protocol':<9} {'script':<12} "
          + " ".join(f"{t.label:>{w}}" for t, w in zip(targets, widths, strict=True)))
    for workload in workloads:
        print(f"  {workload.protocol:<9} {workload.script:<12} "
              + " ".join(f"{tallies[t.label, workload].spread():>{w}}"
                         for t, w in zip(targets, widths, strict=True)))


def tps(tallies: Tallies, label: str, workload: Workload) -> float | None:
    tally = tallies.get((label, workload))
    return None if tally is None or tally.result is None else tally.result.tps


def counter_cells(counters: dict[str, float], transactions: int) -> list[str]:
    """A row of the counters table; "-" for what a proxy without a pool lacks."""
    pooled = "checkouts" in counters
    cells = [f"{transactions:,}"]
    cells += [f"{int(counters.get(name, 0)):,}" if pooled else "-" for name, _ in COUNTERS]
    if not transactions:
        return [*cells, "n/a", "n/a"]
    per = f"{counters['checkouts'] / transactions:.3f}" if pooled else "-"
    return [*cells, per, f"{counters['cpu_seconds'] * 1e6 / transactions:.1f}"]


def print_counter_table(tallies: Tallies, targets: Sequence[Target],
                        workloads: Sequence[Workload]) -> None:
    headings = ["transactions", *(heading for _, heading in COUNTERS), "checkouts/txn",
                "cpu_us/txn"]
    widths = [max(8, len(h)) for h in headings]
    print(f"  {'protocol':<9} {'script':<12} {'pool':<14} "
          + " ".join(f"{h:>{w}}" for h, w in zip(headings, widths, strict=True)))
    for workload in workloads:
        for target in targets:
            if target.pgwire is None:
                continue
            tally = tallies[target.label, workload]
            if tally.counters is None:
                values = ["n/a"] * len(headings)
            else:
                values = counter_cells(tally.counters, tally.transactions)
            print(f"  {workload.protocol:<9} {workload.script:<12} {target.label:<14} "
                  + " ".join(f"{v:>{w}}" for v, w in zip(values, widths, strict=True)))


def print_report(tallies: Tallies, targets: Sequence[Target], workloads: Sequence[Workload],
                 header: Sequence[str], args: argparse.Namespace) -> None:
    for line in header:
        print(line)
    rounds = f"best of {args.rounds} rounds" if args.rounds > 1 else "1 round"
    print()
    length = " ".join(run_length(args.seconds, args.transactions))
    print(f"TPS ({rounds}; pgbench -n -c {args.clients} -j {args.threads} {length}, "
          f"scale {args.scale}):")
    print_tps_table(tallies, targets, workloads)
    if args.rounds > 1:
        print()
        print(f"spread of the {args.rounds} rounds, (best - worst) / best: how much the "
              "machine moved the numbers")
        print_spread_table(tallies, targets, workloads)
    print()
    summed = f"summed over {args.rounds} rounds" if args.rounds > 1 else "1 round"
    print(f"pgwire counters ({summed}; Pool.stats() when each proxy stopped; "
          "transactions: pgbench's count; cpu_us/txn: the proxy process's CPU time "
          "while serving, per transaction):")
    print_counter_table(tallies, targets, workloads)
    internal = sum(t.internal_errors for t in tallies.values())
    if internal:
        print(f"pgwire internal errors: {internal} (see the proxy log)")
    print()
    print(f"{LABEL_TRANSACTION}/{LABEL_BOUNCER}: " + ", ".join(
        f"{w.label()} "
        + bench_proxy.ratio(tps(tallies, LABEL_TRANSACTION, w), tps(tallies, LABEL_BOUNCER, w))
        for w in workloads))


# ---------------------------------------------------------------------------
# Driver


def parse_protocols(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in PROTOCOLS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of "
                                         f"{', '.join(PROTOCOLS)}, got {text!r}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0] if __doc__ else "")
    bench_proxy.add_pgbench_arguments(parser)
    parser.set_defaults(threads=None, scale=None)
    for action in parser._actions:  # the shared options, with this script's defaults
        if action.dest == "threads":
            action.help = ("pgbench worker threads, at most --clients (default: --clients; "
                           "fewer deadlock -M prepared when the pool is smaller than --clients)")
        elif action.dest == "scale":
            action.help = ("pgbench -i scale factor, 100,000 accounts and one branch each "
                           "(default: --clients, so that tpcb-like's clients do not all wait "
                           "for one another's branch row lock)")
    parser.add_argument("--protocols", type=parse_protocols, default=("simple",),
                        help="pgbench -M protocols to run, comma-separated, of "
                             f"{', '.join(PROTOCOLS)} (default simple)")
    parser.add_argument("--transactions", type=int, metavar="N",
                        help="run pgbench -t N (transactions per client) instead of "
                             "-T SECONDS: for quick checks, where the rates mean little")
    parser.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE,
                        help="server connections per pool: PgBouncer's default_pool_size and "
                             f"pgwire's max_size (default {DEFAULT_POOL_SIZE})")
    serving = parser.add_argument_group("internal: be the pgwire target (--serve)")
    serving.add_argument("--serve", choices=SERVE_MODES,
                         help="run pgwire's proxy with this pool mode, or none, until SIGTERM")
    serving.add_argument("--listen", type=bench_proxy.parse_address, help="HOST:PORT")
    serving.add_argument("--upstream", type=bench_proxy.parse_address, help="HOST:PORT")
    serving.add_argument("--user", help="the one user clients log in as")
    serving.add_argument("--password-file", help="a file holding that user's password")
    serving.add_argument("--stats-file", help="where to write the counters when stopped")
    args = parser.parse_args(argv)
    if args.serve is not None:
        needed = ["listen", "upstream", "stats_file"]
        if args.serve != "no-pool":
            needed += ["user", "password_file"]
        missing = [f"--{name.replace('_', '-')}" for name in needed if getattr(args, name) is None]
        if missing:
            parser.error(f"--serve {args.serve} needs {', '.join(missing)}")
        return args
    if args.threads is None:
        args.threads = args.clients
    if args.scale is None:
        args.scale = args.clients  # pgbench's advice for tpcb-like: no fewer branches than clients
    if min(args.seconds, args.clients, args.threads, args.scale, args.rounds,
           args.pool_size, 1 if args.transactions is None else args.transactions) < 1:
        parser.error("--seconds, --transactions, --clients, --threads, --scale, --rounds and "
                     "--pool-size must be positive")
    args.threads = min(args.threads, args.clients)
    if "prepared" in args.protocols and args.threads < args.clients and (
        args.pool_size < args.clients
    ):
        parser.error("-M prepared with fewer --threads than --clients and a pool smaller than "
                     "--clients deadlocks: a pgbench thread prepares for one of its clients "
                     "with a blocking call while the others hold every server connection "
                     "mid-transaction; give --threads equal to --clients")
    return args


def fail(message: str) -> NoReturn:
    bench_proxy.fail(message)


def pgwire_revision() -> str:
    """``commit abc1234`` of the checkout the script runs from, and whether
    ``pgwire/`` has uncommitted changes (each target restarts per run, so a
    tree that changes during the run mixes versions)."""
    root = str(bench_proxy.ROOT)
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=30, check=True)
        status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "pgwire"],
                                capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return "commit unknown (not a git checkout)"
    dirty = ", with uncommitted changes in pgwire/" if status.stdout.strip() else ""
    return f"commit {commit.stdout.strip()}{dirty}"


def event_loop_name() -> str:
    if importlib.util.find_spec("uvloop") is None:
        return "asyncio's event loop (uvloop not installed)"
    return f"uvloop {importlib.metadata.version('uvloop')}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve is not None:
        with contextlib.suppress(KeyboardInterrupt):
            return serve_pgwire(args)
        return 0

    signal.signal(signal.SIGTERM, bench_proxy._terminate)
    try:
        bindir = find_postgres_bindir()
    except ClusterUnavailable as exc:
        fail(str(exc))
    pgbench = bench_proxy.find_pgbench(bindir)
    if pgbench is None:
        fail(f"pgbench is neither in {bindir} nor on PATH: install the PostgreSQL client "
             "programs (apt-get install postgresql-client)")
    try:
        ProxyConfig(upstream=(LOOPBACK, 5432), auth=ProxyAuth(users={"check": "check"}),
                    pool=PoolConfig(mode="transaction"))
    except ValueError as exc:  # pglast missing: the transaction pool cannot run
        fail(f"pgwire's transaction pool cannot run here: {exc}")
    bouncer_binary = bench_proxy.find_pgbouncer()
    bouncer_version = (bench_proxy.first_line([bouncer_binary, "--version"])
                       if bouncer_binary else "PgBouncer not installed")
    bouncer_prepared = bouncer_binary is not None and bouncer_has_prepared(bouncer_version)
    workloads = [Workload(protocol, script) for protocol in args.protocols for script in SCRIPTS]
    revision = pgwire_revision()

    started = time.monotonic()
    try:
        with (tempfile.TemporaryDirectory(prefix="pgwire-bench-pool-") as name,
              PostgresCluster(bindir=bindir, ssl=False, auth="scram-sha-256") as cluster):
            directory = Path(name)
            bench = Bench(program=pgbench, user=cluster.superuser,
                          password=cluster.superuser_password, clients=args.clients,
                          threads=args.threads, seconds=args.seconds)
            bench_proxy.progress(f"pgbench -i -s {args.scale} on PostgreSQL at "
                                 f"{cluster.host}:{cluster.port}")
            bench.initialise(cluster.port, args.scale)
            server_version = cluster.sql("show server_version")
            secret = cluster.sql("select rolpassword from pg_authid "
                                 f"where rolname = '{cluster.superuser}'")
            password_file = directory / "password"
            password_file.write_text(cluster.superuser_password)
            password_file.chmod(0o600)

            @contextlib.contextmanager
            def direct() -> Iterator[int]:
                yield cluster.port

            @contextlib.contextmanager
            def bouncer() -> Iterator[int]:
                if bouncer_binary is None:
                    raise TargetSkipped("no pgbouncer binary in PATH or /usr/sbin; "
                                        f"{bench_proxy.PGBOUNCER_HELP}")
                with pgbouncer_transaction(
                    bouncer_binary, upstream_port=cluster.port, user=cluster.superuser,
                    scram_secret=secret, pool_size=args.pool_size, clients=args.clients,
                    prepared=bouncer_prepared,
                ) as port:
                    yield port

            def pgwire(mode: ServeMode) -> PgwireTarget:
                return PgwireTarget(mode, upstream_port=cluster.port, user=cluster.superuser,
                                    password_file=password_file, pool_size=args.pool_size,
                                    directory=directory)

            transaction_pool, session_pool, no_pool = (
                pgwire("transaction"), pgwire("session"), pgwire("no-pool"))
            targets = [
                Target(LABEL_DIRECT, direct),
                Target(LABEL_BOUNCER, bouncer, unsupported={} if bouncer_prepared else {
                    "prepared": f"{bouncer_version} has no max_prepared_statements "
                                f"({'.'.join(map(str, PGBOUNCER_PREPARED_SINCE))} and later): "
                                "in transaction mode a client's prepared statements are "
                                "missing on its next server connection"}),
                Target(LABEL_TRANSACTION, transaction_pool.start, pgwire=transaction_pool),
                Target(LABEL_SESSION, session_pool.start, pgwire=session_pool),
                Target(LABEL_NO_POOL, no_pool.start, pgwire=no_pool),
            ]

            def upkeep() -> None:
                cluster.sql(TABLE_UPKEEP)

            tallies = run_rounds(targets, workloads, bench=bench,
                                 length=run_length(args.seconds, args.transactions),
                                 rounds=args.rounds, upkeep=upkeep)
    except (KeyboardInterrupt, bench_proxy.Terminated) as exc:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM

    header = [
        f"pool benchmark: pgbench select-only and tpcb-like, -M {','.join(args.protocols)}, "
        f"scale {args.scale}, {args.clients} clients, {args.threads} threads, "
        + (f"{args.seconds} s per run, " if args.transactions is None
           else f"{args.transactions} transactions per client per run, ")
        + (f"best of {args.rounds} rounds" if args.rounds > 1 else "1 round") + ", TLS off",
        f"Python {platform.python_version()} ({sys.implementation.name}), "
        f"{os.cpu_count()} CPUs, {platform.machine()}, "
        f"{bench_proxy.first_line([pgbench, '--version'])}, "
        f"PostgreSQL {server_version}, {bouncer_version}",
        f"pool size {args.pool_size} (PgBouncer default_pool_size, pool_mode = transaction"
        + (f", max_prepared_statements = {BOUNCER_MAX_PREPARED}" if bouncer_prepared else "")
        + f"; pgwire PoolConfig(max_size={args.pool_size}), defaults otherwise: minimal reset "
        f"and verification), pgwire on the asyncio adapter with {event_loop_name()}",
        f"{LABEL_NO_POOL}: ProxyConfig(upstream=...) with passthrough auth and no middleware "
        "(python -m pgwire proxy), one server connection per client",
        f"pgwire {revision}",
    ]
    print_report(tallies, targets, workloads, header, args)
    print(f"total time: {time.monotonic() - started:.0f} s")
    failed = any(t.result is not None and t.result.failed for t in tallies.values())
    internal = any(t.internal_errors for t in tallies.values())
    return 1 if failed or internal else 0


if __name__ == "__main__":
    sys.exit(main())

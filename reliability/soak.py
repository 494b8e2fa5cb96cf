"""Soak: minutes of mixed pgbench through the proxy with every middleware on; nothing may leak.

Starts a throwaway PostgreSQL (SCRAM logins, TLS off) filled by ``pgbench -i``
and ``python -m pgwire proxy`` in front of it with Audit (JSON Lines),
RoleRewrite and RoleGuard (``reliability/_rig.py``), then runs pgbench
through the proxy for ``--minutes`` (rounded up to whole cycles of the four
phases), in phases of ``--phase-seconds`` that take turns:

1. ``-S -M simple``: select-only, simple protocol;
2. ``-M simple``: the default TPC-B-like script (7 statements a transaction);
3. ``-b select-only -b tpcb-like -M extended``: both scripts, unnamed statements;
4. the same with ``-M prepared``: named statements, parsed once per client.

(Phases 3 and 4 run one pgbench thread: see `PHASES`.)

Each phase is a new pgbench run, so its clients log in and leave: between
phases the proxy must be back to no session. The proxy's resident memory,
open file descriptors and threads are read from ``/proc`` every second.
The run passes when:

- every pgbench run exits 0 with no failed transaction and no aborted client;
- RSS is flat: the first 20% of the run is warm-up; the highest reading of
  the last 20% is at most 10% above the mean of the 20% after the warm-up;
- descriptors and threads are flat: with no client connected, after every
  phase and at the end, the descriptors equal and the threads do not exceed
  those after the first phase (the first phase pays for what the proxy
  creates once, on first use: with uvloop, one more descriptor and one more
  thread; idle worker threads may end, as trio's thread cache's do);
- the proxy counted no protocol, internal or upstream error and logged none,
  and exits 0 on SIGTERM;
- the audit file is complete: ``pgwire audit verify`` passes; a ``connect``
  and a ``disconnect`` record per session the proxy counted; every request
  completed ``ok``; and the completions of each pgbench statement (BEGIN,
  the SELECT, the three UPDATEs, the INSERT, END) are exactly what pgbench's
  transaction counts imply (pgbench finishes the transactions in flight when
  its time is up, so the counts match exactly).

The report prints one row per phase (TPS, transactions, the proxy's memory
at the phase's end and its descriptors and threads once idle), the memory
and descriptor summary, the audit counts and each criterion with PASS or
FAIL. Exit status 0 when every criterion passes, 1 otherwise. Run::

    .venv/bin/python reliability/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import _rig
import bench_proxy  # on the path once _rig is imported
from _rig import Criteria, Reading, progress

from pgwire.testing.cluster import PostgresCluster

#: The phases, in turn: a label, pgbench's options, and whether pgbench must
#: run one thread. The two-script phases must: pgbench adds up its per-script
#: transaction counts across threads without a lock ("XXX could use a mutex
#: here, but we choose not to", pgbench.c), so with several threads a few
#: increments get lost, and the audit check needs those counts exact (a
#: 10-minute run with -j 2 found the audit 2 completions ahead of them, and
#: equal to pgbench's total, which is summed per thread and exact).
PHASES: Final = (
    ("select-only/simple", ("-S", "-M", "simple"), False),
    ("tpcb/simple", ("-M", "simple"), False),
    ("mixed/extended", ("-b", "select-only", "-b", "tpcb-like", "-M", "extended"), True),
    ("mixed/prepared", ("-b", "select-only", "-b", "tpcb-like", "-M", "prepared"), True),
)
#: Share of the run that is warm-up, and of each RSS comparison window.
WARM_UP_SHARE: Final = 0.2
#: How far the last window's highest RSS may rise above the first window's mean.
RSS_TOLERANCE: Final = 0.10
#: The statements of pgbench's builtin scripts, by their first two words.
SELECT: Final = "select abalance"
TPCB: Final = ("begin", "update pgbench_accounts", "update pgbench_tellers",
               "update pgbench_branches", "insert into", "end")
#: Fields of a JSON Lines audit record (canonical JSON: no spaces).
_STATUS: Final = re.compile(rb'"status":"(\w+)"')
_SQL: Final = re.compile(rb'"sql":"([^"\\]{0,64})')


@dataclass(frozen=True, slots=True)
class Phase:
    """One pgbench run of the soak and the proxy's state once its clients left."""

    number: int
    label: str
    seconds: int
    run: _rig.PgbenchRun
    end: Reading | None  # the last reading during the run
    idle: Reading  # once the proxy had no session left
    settled: bool  # the proxy got to no session within the settle timeout


def statement_key(sql: str | None) -> str:
    """A statement's first two words, lower case, without the final semicolon."""
    words = (sql or "").replace(";", " ").lower().split()
    return " ".join(words[:1] if words[:1] in (["begin"], ["end"]) else words[:2])


@dataclass(slots=True)
class AuditCounts:
    """What the audit file holds: records by event, completions by statement and status."""

    records: int
    events: collections.Counter[str]
    completions: collections.Counter[tuple[str, str]]

    @classmethod
    def read(cls, path: Path) -> AuditCounts:
        """Count the file's records (a regular expression per line: the soak's files
        run to gigabytes, and JSON-decoding each record would take minutes)."""
        events: collections.Counter[str] = collections.Counter()
        completions: collections.Counter[tuple[str, str]] = collections.Counter()
        records = 0
        with path.open("rb") as lines:
            for line in lines:
                records += 1
                found = _rig.AUDIT_EVENT.search(line)
                event = found.group(1).decode() if found else "(none)"
                events[event] += 1
                if event == "complete":
                    sql, status = _SQL.search(line), _STATUS.search(line)
                    completions[(statement_key(sql.group(1).decode() if sql else None),
                                 status.group(1).decode() if status else "(none)")] += 1
        return cls(records, events, completions)

    def ok(self, key: str) -> int:
        return self.completions[(key, "ok")]

    def not_ok(self) -> int:
        return sum(count for (_, status), count in self.completions.items() if status != "ok")


def expected_completions(phases: Sequence[Phase]) -> dict[str, int]:
    """How many ``ok`` completions of each pgbench statement the transactions imply."""
    select_only = sum(p.run.by_script.get("select only", 0) for p in phases)
    tpcb = sum(p.run.by_script.get("TPC-B (sort of)", 0) for p in phases)
    return {SELECT: select_only + tpcb, **dict.fromkeys(TPCB, tpcb)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else "")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="how long pgbench runs in all (default 10)")
    parser.add_argument("--phase-seconds", type=int, default=30,
                        help="length of each pgbench run; the phases take turns (default 30)")
    parser.add_argument("--clients", type=int, default=8, help="pgbench clients (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="pgbench threads (default 2)")
    parser.add_argument("--scale", type=int, default=1, help="pgbench -i scale (default 1)")
    parser.add_argument("--adapter", default="asyncio", choices=("asyncio", "trio", "blocking"),
                        help="the proxy's adapter (default asyncio)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="write the proxy's config, stderr and audit file to DIR and keep "
                             "them (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or min(args.phase_seconds, args.clients, args.threads, args.scale) < 1:
        parser.error("--minutes, --phase-seconds, --clients, --threads and --scale must be "
                     "positive")
    args.threads = min(args.threads, args.clients)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _rig.exit_on_sigterm()
    bindir = _rig.postgres_bindir()
    pgbench = _rig.pgbench_in(bindir)
    # Whole cycles of the four phases, at least as long as asked.
    count = math.ceil(args.minutes * 60 / args.phase_seconds / len(PHASES)) * len(PHASES)
    criteria = Criteria()
    with contextlib.ExitStack() as stack:
        directory = _rig.work_directory(stack, args.keep, "pgwire-soak-")
        cluster = stack.enter_context(PostgresCluster(bindir=bindir, ssl=False,
                                                      auth="scram-sha-256"))
        bench = bench_proxy.Bench(program=pgbench, user=cluster.superuser,
                                  password=cluster.superuser_password, clients=args.clients,
                                  threads=args.threads, seconds=args.phase_seconds)
        progress(f"pgbench -i -s {args.scale} on PostgreSQL at {cluster.host}:{cluster.port}")
        bench.initialise(cluster.port, args.scale)
        server_version = cluster.sql("show server_version")
        proxy = stack.enter_context(_rig.watched_proxy(
            cluster.port, max_clients=args.clients + 50, adapter=args.adapter,
            directory=directory))
        start = proxy.reading()
        phases: list[Phase] = []
        with _rig.Sampler(proxy.pid) as sampler:
            began = time.monotonic()
            for number in range(count):
                label, options, one_thread = PHASES[number % len(PHASES)]
                seconds = args.phase_seconds
                progress(f"phase {number + 1} of {count}: {label}, {seconds} s")
                sampler.phase = label
                run = _rig.run_pgbench(bench, proxy.port, options, seconds,
                                       threads=1 if one_thread else None)
                sampler.phase = "idle"
                end = sampler.samples[-1].reading if sampler.samples else None
                settled = proxy.wait_idle()
                time.sleep(0.5)  # let the metrics scrape's thread end before counting
                phases.append(Phase(number + 1, label, seconds, run, end,
                                    proxy.reading(), settled))
                if not run.clean:
                    progress(f"phase {len(phases)} failed: {run.problem()}")
            ran = time.monotonic() - began
        counters = proxy.counters()
        proxy.stop()
        proxy_log = proxy.stderr_path.read_text(errors="replace")
        progress("pgwire audit verify, and counting the audit records")
        verified, verify_line = _rig.audit_verify(proxy.audit_path)
        audit = AuditCounts.read(proxy.audit_path)
        audit_size = proxy.audit_path.stat().st_size

    print(f"soak: {ran / 60:.1f} min of pgbench through pgwire proxy ({args.adapter}) with "
          f"Audit (JSON Lines), RoleRewrite, RoleGuard; {args.clients} clients, "
          f"{args.threads} threads (1 in the two-script phases), scale {args.scale}, "
          f"phases of {args.phase_seconds} s")
    print(f"Python {platform.python_version()}, {bench_proxy.first_line([pgbench, '--version'])}, "
          f"PostgreSQL {server_version}")
    print()
    _rig.table(
        ("phase", "workload", "s", "TPS", "transactions", "failed", "RSS MiB", "idle fds",
         "idle threads"),
        [(p.number, p.label, p.seconds, f"{p.run.tps:,.1f}" if p.run.tps is not None else "-",
          f"{p.run.transactions:,}", p.run.failed if p.run.clean else "FAILED",
          f"{p.end.rss_mib:.1f}" if p.end else "-", p.idle.fds, p.idle.threads)
         for p in phases])
    print()
    for label, _, _ in PHASES:
        rates = [p.run.tps for p in phases if p.label == label and p.run.tps is not None]
        if rates:
            print(f"  {label}: mean TPS {sum(rates) / len(rates):,.1f} over {len(rates)} "
                  f"run(s) (min {min(rates):,.1f}, max {max(rates):,.1f})")
    print()

    judge_runs(criteria, phases)
    judge_memory(criteria, sampler, ran, start)
    judge_descriptors(criteria, phases, start)
    judge_proxy(criteria, counters, proxy.exit_status, proxy_log)
    judge_audit(criteria, audit, verified=verified, verify_line=verify_line, counters=counters,
                phases=phases, size=audit_size)
    print()
    criteria.print()
    return 0 if criteria.passed else 1


def judge_runs(criteria: Criteria, phases: Sequence[Phase]) -> None:
    unclean = [p for p in phases if not p.run.clean]
    failed = sum(p.run.failed for p in phases)
    criteria.check("zero client errors", not unclean and bool(phases),
                   f"{len(phases)} pgbench runs, {sum(p.run.transactions for p in phases):,} "
                   f"transactions, {failed} failed, {len(unclean)} runs not clean"
                   + "".join(f"\n      phase {p.number}: {p.run.problem()}" for p in unclean))


def judge_memory(criteria: Criteria, sampler: _rig.Sampler, ran: float, start: Reading) -> None:
    window = ran * WARM_UP_SHARE
    first = sampler.window(window, 2 * window)
    last = sampler.window(ran - window, ran + 1)
    if not first or not last:
        criteria.check("RSS flat after warm-up", False,
                       f"too few samples ({len(sampler.samples)}) for the windows")
        return
    first_mean = sum(r.rss_kib for r in first) / len(first)
    last_max = max(r.rss_kib for r in last)
    growth = last_max / first_mean - 1
    peak = max(s.reading.rss_kib for s in sampler.samples)
    print(f"RSS: start {start.rss_mib:.1f} MiB; after warm-up (mean of {window:.0f}-"
          f"{2 * window:.0f} s) {first_mean / 1024:.1f} MiB; end (max of the last "
          f"{window:.0f} s) {last_max / 1024:.1f} MiB; peak {peak / 1024:.1f} MiB; "
          f"{len(sampler.samples)} samples")
    criteria.check(f"RSS flat after warm-up (within {RSS_TOLERANCE:.0%})",
                   growth <= RSS_TOLERANCE,
                   f"{first_mean / 1024:.1f} -> {last_max / 1024:.1f} MiB ({growth:+.1%})")


def judge_descriptors(criteria: Criteria, phases: Sequence[Phase], start: Reading) -> None:
    if not phases:
        return
    baseline = phases[0].idle
    fds = [p.idle.fds for p in phases]
    threads = [p.idle.threads for p in phases]
    print(f"fds: start {start.fds}, idle after phase 1 {baseline.fds}, idle after each phase "
          f"{_spread(fds)}; threads: start {start.threads}, after phase 1 {baseline.threads}, "
          f"after each {_spread(threads)}")
    unsettled = [p.number for p in phases if not p.settled]
    criteria.check("no session left between phases", not unsettled,
                   f"phases that left sessions: {unsettled}" if unsettled
                   else f"{len(phases)} of {len(phases)} phases")
    criteria.check("fd count flat", all(n == baseline.fds for n in fds),
                   f"idle fds after each phase: {fds}")
    # Fewer is fine: idle worker threads may end (trio's thread cache keeps them 10 s).
    criteria.check("thread count flat", all(n <= baseline.threads for n in threads),
                   f"idle threads after each phase: {threads}")


def _spread(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def judge_proxy(criteria: Criteria, counters: dict[str, float], exit_status: int | None,
                log: str) -> None:
    errors = {name: int(counters.get(name, 0)) for name in
              ("client_protocol_errors", "internal_errors", "upstream_errors",
               "upstream_connect_failures", "login_failures", "rejected")}
    criteria.check("proxy counted no error", not any(errors.values()),
                   ", ".join(f"{name} {count}" for name, count in errors.items()))
    logged = [line for line in log.splitlines()
              if " ERROR " in line or "Traceback" in line or " WARNING " in line]
    criteria.check("proxy logged no warning or error", not logged,
                   "\n      ".join(logged) if logged else "stderr has none")
    criteria.check("proxy exits 0 on SIGTERM", exit_status == 0, f"exit status {exit_status}")


def judge_audit(criteria: Criteria, audit: AuditCounts, *, verified: bool, verify_line: str,
                counters: dict[str, float], phases: Sequence[Phase], size: int) -> None:
    print(f"audit: {audit.records:,} records, {size / 2**20:,.0f} MiB; " + ", ".join(
        f"{event} {count:,}" for event, count in audit.events.most_common()))
    criteria.check("pgwire audit verify passes", verified, verify_line)
    sessions = int(counters.get("sessions_started", -1))
    connects, disconnects = audit.events["connect"], audit.events["disconnect"]
    criteria.check("a connect and a disconnect record per session",
                   connects == disconnects == sessions,
                   f"{sessions} sessions, {connects} connect, {disconnects} disconnect records")
    criteria.check("every request completed ok",
                   audit.not_ok() == 0 and audit.events["error"] == 0,
                   f"{audit.not_ok()} completions not ok, {audit.events['error']} error records")
    expected = expected_completions(phases)
    found = {key: audit.ok(key) for key in expected}
    criteria.check("audit completions match pgbench's transactions", found == expected,
                   ", ".join(f"{key}: {found[key]:,}"
                             + ("" if found[key] == expected[key] else
                                f" (expected {expected[key]:,})") for key in expected))


if __name__ == "__main__":
    sys.exit(main())

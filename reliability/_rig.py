"""What every reliability script runs on: the proxy as a subprocess, watched.

`watched_proxy` starts ``python -m pgwire proxy --config FILE`` with the role
middleware chain of ``benchmarks/bench_proxy.py`` (Audit to a JSON Lines file,
RoleRewrite, RoleGuard), a metrics endpoint and the limits a script asks for,
on port 0 (the proxy prints which ports it got, so no port can be taken in
between). A `Sampler` thread reads the proxy's resident memory, open file
descriptors and threads from ``/proc`` every second. `Criteria` collects the
checks a script makes and decides its exit status. The scripts import
``bench_proxy`` (its pgbench driver and process helpers) from ``benchmarks/``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn

ROOT: Final = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_proxy  # noqa: E402 - found through the path set just above

from pgwire.testing.cluster import (  # noqa: E402
    ClusterUnavailable,
    PostgresCluster,
    find_postgres_bindir,
)

LOOPBACK: Final = bench_proxy.LOOPBACK
DATABASE: Final = bench_proxy.DATABASE
#: Seconds the proxy gets to print that it listens (RoleGuard loads the role graph first).
START_TIMEOUT: Final = 60.0
#: Seconds the proxy gets to exit after SIGTERM once its clients are gone.
STOP_TIMEOUT: Final = 30.0
#: Seconds sessions and backends get to go away after their clients did.
SETTLE_TIMEOUT: Final = 60.0


def progress(message: str) -> None:
    """A line on stderr, for whoever watches the run (the report goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    """Stop the script: it could not run (as opposed to a criterion that failed)."""
    print(message, file=sys.stderr)
    raise SystemExit(1)


def postgres_bindir() -> Path:
    """PostgreSQL's server binaries, or stop the script saying how to install them."""
    try:
        return find_postgres_bindir()
    except ClusterUnavailable as exc:
        fail(str(exc))


def pgbench_in(bindir: Path) -> str:
    """pgbench from ``bindir`` or PATH, or stop the script saying how to install it."""
    pgbench = bench_proxy.find_pgbench(bindir)
    if pgbench is None:
        fail(f"pgbench is neither in {bindir} nor on PATH: install the PostgreSQL client "
             "programs (apt-get install postgresql-client)")
    return pgbench


def exit_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C does, so that the proxy and the cluster a
    script started are stopped on the way out (a test's timeout sends it)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def raise_file_limit(needed: int) -> None:
    """Raise our RLIMIT_NOFILE (inherited by the proxy we start) to ``needed``, or fail."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        fail(f"{needed} file descriptors are needed and the hard limit is {hard}: "
             "raise it (ulimit -Hn) or ask for fewer connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def work_directory(stack: contextlib.ExitStack, keep: Path | None, prefix: str) -> Path:
    """Where a run writes its config, logs and audit: ``keep`` (made if missing,
    left behind), or a temporary directory ``stack`` removes."""
    if keep is None:
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
    keep.mkdir(parents=True, exist_ok=True)
    return keep


def wait_for(predicate: Callable[[], bool], timeout: float = SETTLE_TIMEOUT,
              interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


# ---------------------------------------------------------------------------
# Reading a process


@dataclass(frozen=True, slots=True)
class Reading:
    """A process's resident memory (KiB), open file descriptors and threads now."""

    rss_kib: int
    fds: int
    threads: int

    @classmethod
    def of(cls, pid: int) -> Reading:
        """Read ``/proc/PID``; raises OSError once the process is gone."""
        rss = 0
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        return cls(rss, len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task")))

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading, when (seconds since the sampler started) and during which phase."""

    elapsed: float
    phase: str
    reading: Reading


class Sampler:
    """Reads a process every ``interval`` seconds in a thread, labelled with `phase`."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        #: The label the next samples get; the script sets it as it goes.
        self.phase = "start"
        self.samples: list[Sample] = []
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                reading = Reading.of(self.pid)
            except OSError:
                return  # the process is gone
            self.samples.append(Sample(time.monotonic() - self._started, self.phase, reading))
            if self._stop.wait(self.interval):
                return

    def window(self, start: float, end: float) -> list[Reading]:
        """The readings taken from ``start`` to ``end`` seconds after the start."""
        return [s.reading for s in self.samples if start <= s.elapsed < end]

    def of_phase(self, phase: str) -> list[Reading]:
        return [s.reading for s in self.samples if s.phase == phase]


# ---------------------------------------------------------------------------
# The proxy


#: pgwire_sessions{state="ready"} 3
_SESSIONS_LINE: Final = re.compile(r'^pgwire_sessions\{state="([^"]+)"\} (\d+(?:\.\d+)?)$',
                                   re.MULTILINE)
#: pgwire_logins_total 12
_COUNTER_LINE: Final = re.compile(r"^pgwire_(\w+)_total (\d+(?:\.\d+)?(?:e[+-]?\d+)?)$",
                                  re.MULTILINE)


@dataclass(slots=True)
class WatchedProxy:
    """A running ``pgwire proxy`` subprocess: where it listens, its pid, its audit file."""

    process: subprocess.Popen[str]
    port: int
    metrics_url: str
    audit_path: Path
    config_path: Path
    stderr_path: Path
    #: The exit status after `stop`: 0 is a clean shutdown.
    exit_status: int | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def reading(self) -> Reading:
        return Reading.of(self.pid)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as answer:
            text: str = answer.read().decode()
            return text

    def sessions(self) -> dict[str, int]:
        """Client sessions now, by state (the metrics' ``pgwire_sessions`` gauge)."""
        return {state: int(float(count)) for state, count in _SESSIONS_LINE.findall(self.metrics())}

    def session_count(self) -> int:
        return sum(self.sessions().values())

    def counters(self) -> dict[str, float]:
        """The proxy's counters (``ProxyStats``) as the metrics endpoint gives them."""
        return {name: float(value) for name, value in _COUNTER_LINE.findall(self.metrics())}

    def wait_idle(self, timeout: float = SETTLE_TIMEOUT) -> bool:
        """Wait until the proxy has no session left (True), or ``timeout`` passed."""
        return wait_for(lambda: self.session_count() == 0, timeout, interval=0.25)

    def stop(self) -> int | None:
        """SIGTERM, and wait for a graceful exit; SIGKILL after `STOP_TIMEOUT` (status None)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.exit_status = self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self.exit_status = None
        else:
            self.exit_status = self.process.returncode
        return self.exit_status

    def stderr_tail(self, lines: int = 20) -> str:
        text = self.stderr_path.read_text(errors="replace").strip()
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def proxy_config(upstream_port: int, audit_path: Path, *, max_clients: int,
                 extra: str = "") -> str:
    """The proxy's TOML: bench_proxy's role chain (Audit, RoleRewrite, RoleGuard),
    ``max_clients``, then ``extra`` (more tables)."""
    chain: str = bench_proxy.middleware_config(upstream_port, audit_path)
    return chain + f"\n[limits]\nmax_clients = {max_clients}\n" + extra


@contextlib.contextmanager
def watched_proxy(upstream_port: int, *, max_clients: int, adapter: str = "asyncio",
                  extra: str = "", directory: Path | None = None) -> Iterator[WatchedProxy]:
    """Start the proxy with all middleware on a free port; stop it on the way out.

    The files (config, audit, stderr) go to ``directory``, or to a temporary
    directory removed afterwards. Leaving the block stops the proxy with
    SIGTERM if the caller has not (`WatchedProxy.stop`).
    """
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="pgwire-reliability-")))
        audit_path = directory / "audit.jsonl"
        config_path = directory / "pgwire.toml"
        config_path.write_text(proxy_config(upstream_port, audit_path, max_clients=max_clients,
                                            extra=extra))
        stderr_path = directory / "proxy.stderr"
        stderr = stack.enter_context(stderr_path.open("w"))
        argv = [sys.executable, "-m", "pgwire", "proxy", "--config", str(config_path),
                "--listen", f"{LOOPBACK}:0", "--metrics", f"{LOOPBACK}:0",
                "--adapter", adapter, "--log-level", "warning"]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=stderr, text=True, cwd=ROOT,
                                   env=bench_proxy.child_env())
        stack.callback(_reap, process)
        port = _read_port(process, r"^pgwire proxy listening on 127\.0\.0\.1:(\d+)", stderr_path)
        metrics_port = _read_port(process, r"^pgwire metrics listening on http://127\.0\.0\.1:(\d+)",
                                  stderr_path)
        proxy = WatchedProxy(process, port, f"http://{LOOPBACK}:{metrics_port}/metrics",
                             audit_path, config_path, stderr_path)
        yield proxy
        if process.poll() is None:
            proxy.stop()


def _read_port(process: subprocess.Popen[str], pattern: str, stderr_path: Path) -> int:
    assert process.stdout is not None
    found: list[int] = []

    def read() -> None:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(pattern, line)
        if match:
            found.append(int(match.group(1)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(START_TIMEOUT)
    if not found:
        _reap(process)
        text = stderr_path.read_text(errors="replace").strip()
        fail(f"the proxy did not start (no line matching {pattern!r} within "
             f"{START_TIMEOUT:g} s); its stderr:\n{text}")
    return found[0]


def _reap(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


# ---------------------------------------------------------------------------
# PostgreSQL


def client_backends(cluster: PostgresCluster) -> int:
    """Client backends connected to the server, other than the one asking."""
    return int(cluster.sql("select count(*) from pg_stat_activity "
                           "where backend_type = 'client backend' "
                           "and pid <> pg_backend_pid()"))


# ---------------------------------------------------------------------------
# Criteria and the report


@dataclass(frozen=True, slots=True)
class Check:
    """One criterion: what was required, what was measured, and whether it held."""

    name: str
    passed: bool
    measured: str


class Criteria:
    """The checks a run makes; the run fails when one of them does."""

    def __init__(self) -> None:
        self.checks: list[Check] = []

    def check(self, name: str, passed: bool, measured: str) -> bool:
        self.checks.append(Check(name, passed, measured))
        return passed

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def print(self) -> None:
        width = max((len(check.name) for check in self.checks), default=10)
        print("criteria:")
        for check in self.checks:
            print(f"  {'PASS' if check.passed else 'FAIL'}  {check.name:<{width}}  "
                  f"{check.measured}")
        print(f"result: {'PASS' if self.passed else 'FAIL'}")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows under a header, every column right-aligned to its widest cell."""
    cells = [list(header)] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  " + "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


#: The event of a JSON Lines audit record (canonical JSON: no spaces).
AUDIT_EVENT: Final = re.compile(rb'"event":"(\w+)"')


def audit_events(path: Path) -> collections.Counter[str]:
    """An audit file's records by event (a regular expression per line, not a JSON
    decoder: the soak's files run to gigabytes)."""
    events: collections.Counter[str] = collections.Counter()
    with path.open("rb") as lines:
        for line in lines:
            found = AUDIT_EVENT.search(line)
            events[found.group(1).decode() if found else "(none)"] += 1
    return events


def audit_verify(path: Path) -> tuple[bool, str]:
    """Run ``pgwire audit verify PATH``: whether it passed, and what it printed."""
    result = subprocess.run([sys.executable, "-m", "pgwire", "audit", "verify", str(path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    output = (result.stdout + result.stderr).strip()
    return result.returncode == 0, output.splitlines()[0] if output else "(no output)"


# ---------------------------------------------------------------------------
# pgbench


#: Statements per transaction of pgbench's builtin scripts, by the name its report gives.
BUILTIN_STATEMENTS: Final = {"select only": 1, "TPC-B (sort of)": 7, "simple update": 5}
_SINGLE_SCRIPT: Final = re.compile(r"^transaction type: <builtin: ([^>]+)>$", re.MULTILINE)
_SCRIPT_COUNT: Final = re.compile(
    r"^SQL script \d+: <builtin: ([^>]+)>\n(?: - weight: .*\n)? - (\d+) transactions",
    re.MULTILINE)
_FAILED: Final = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class PgbenchRun:
    """What one pgbench run did: its rate, its counts, and whether anything failed."""

    argv: Sequence[str]
    returncode: int
    output: str
    tps: float | None
    transactions: int
    failed: int
    #: Transactions per builtin script ("select only", "TPC-B (sort of)" ...).
    by_script: dict[str, int]

    @classmethod
    def parse(cls, argv: Sequence[str], returncode: int, output: str) -> PgbenchRun:
        """Read pgbench's report (stdout and stderr, ``output``)."""
        transactions = bench_proxy.parse_transactions(output) or 0
        by_script = {name: int(count) for name, count in _SCRIPT_COUNT.findall(output)}
        single = _SINGLE_SCRIPT.search(output)
        if not by_script and single:
            by_script = {single.group(1): transactions}
        failed = _FAILED.search(output)
        return cls(tuple(argv), returncode, output, bench_proxy.parse_tps(output), transactions,
                   int(failed.group(1)) if failed else 0, by_script)

    @property
    def aborted(self) -> bool:
        """A client aborted (pgbench says "Run was aborted" and exits 2)."""
        return "aborted" in self.output

    @property
    def clean(self) -> bool:
        """Exit 0, a rate, no failed transaction, no aborted client."""
        return (self.returncode == 0 and self.tps is not None and self.failed == 0
                and not self.aborted)

    def problem(self) -> str:
        """Why the run is not clean, with pgbench's own words (its last lines)."""
        tail = "\n".join(self.output.strip().splitlines()[-12:])
        return (f"{' '.join(self.argv)}: exit {self.returncode}, {self.failed} failed, "
                f"aborted {self.aborted}\n{tail}")


def run_pgbench(bench: bench_proxy.Bench, port: int, options: Sequence[str],
                seconds: int, *, threads: int | None = None) -> PgbenchRun:
    """``pgbench -n OPTIONS -c -j -T seconds`` against ``port`` (bench's login and
    clients; bench's threads unless ``threads`` says otherwise)."""
    threads = bench.threads if threads is None else threads
    argv = [bench.program, "-n", *options, "-c", str(bench.clients), "-j", str(threads),
            "-T", str(seconds), *bench.login(port), DATABASE]
    try:
        result = subprocess.run(argv, env=bench.env(), capture_output=True, text=True,
                                timeout=seconds + 300, check=False)
        returncode, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired:
        returncode, output = -1, f"did not finish within {seconds + 300} s"
    return PgbenchRun.parse(argv, returncode, output)

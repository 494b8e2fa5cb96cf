"""Proxy overhead: pgbench select-only through PgBouncer, a bare relay and pgwire's proxy.

Starts a throwaway PostgreSQL (`pgwire.testing.cluster.PostgresCluster`), fills
it with ``pgbench -i``, then runs ``pgbench -S`` (one primary-key SELECT per
transaction) in ``-M simple`` and ``-M prepared`` against four targets, one
after the other, each started on a free loopback port and stopped after its runs:

1. direct to PostgreSQL;
2. PgBouncer in session pooling mode (skipped, with a note, when no ``pgbouncer``
   binary is installed);
3. a baseline asyncio byte relay: this script run again with ``--relay-only``,
   nothing but bytes copied both ways, so that what the pgwire proxy costs on
   top of pure byte moving shows;
4. pgwire's proxy, ``python -m pgwire proxy --listen ... --upstream ...``
   (passthrough authentication, no middleware), or ``--pgwire-command``.

The server asks for SCRAM passwords over TCP; pgbench gets the superuser's
through ``PGPASSWORD``, and PgBouncer checks it against the SCRAM secret read
from ``pg_authid``, which also lets it log in upstream. TLS is off everywhere
(``sslmode=disable``): the numbers are about relaying, not encryption.

The report prints TPS per target and mode with ratios against direct and
against PgBouncer, and ends with ``pgwire/pgbouncer: simple X.XXx, prepared
X.XXx``. A failed pgbench run (or a target that would not start) is reported
with its error output and makes the script exit 1. Every process it starts is
stopped on the way out, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, NoReturn

from pgwire.testing.cluster import ClusterUnavailable, PostgresCluster, find_postgres_bindir

LOOPBACK = "127.0.0.1"
MODES = ("simple", "prepared")
DATABASE = "postgres"
ROOT = Path(__file__).resolve().parent.parent
SERVER_OS_USER = "postgres"  # PgBouncer refuses to run as root; it runs as this user then
START_TIMEOUT = 20.0  # seconds for a target to accept connections
START_ATTEMPTS = 3  # a port found free may be taken before the target binds it: retry
PGBOUNCER_HELP = ("install it with `apt-get install pgbouncer` (Debian/Ubuntu) or "
                  "`brew install pgbouncer` (macOS)")

LABEL_DIRECT = "direct"
LABEL_PGBOUNCER = "pgbouncer (session)"
LABEL_RELAY = "asyncio relay (baseline)"
LABEL_PGWIRE = "pgwire proxy"
LABEL_ROLES = "pgwire + rewrite, guard, audit"

#: Builds a target's command line for the port it is to listen on.
ArgvForPort = Callable[[int], list[str]]

#: The role middleware chain of the "with roles" target, and where each class lives.
MIDDLEWARE: Final = {
    "RoleRewrite": ("pgwire.middleware.rewrite", "RoleRewrite"),
    "RoleGuard": ("pgwire.middleware.roles", "RoleGuard"),
    "Audit": ("pgwire.middleware.audit", "Audit"),
}
#: RoleRewrite's rules (map mode): the last maps every user to itself, so that
#: pgbench's SCRAM login still works with passthrough authentication.
REWRITE_RULES: Final = (
    {"user": "report_*", "role": "reporting"},
    {"user": "*", "database": "sales", "role": "sales_{user}"},
    {"user": "*", "role": "{user}"},
)


# ---------------------------------------------------------------------------
# The baseline relay (``--relay-only``)


class _RelaySide(asyncio.Protocol):
    """One socket of a relayed connection: what it reads goes to its peer's socket.

    Back-pressure: when our socket's send buffer fills, asyncio calls
    `pause_writing` on us, and we stop reading from the peer until it drains.
    """

    def __init__(self, peer: _RelaySide | None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(data)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()  # sends what is still buffered first


class _ClientSide(_RelaySide):
    """The accepted socket: reads nothing until the upstream connection is open."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(None)
        self._upstream = upstream
        self._connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: _RelaySide(self), *self._upstream)
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():
            assert upstream.transport is not None
            upstream.transport.close()
            return
        self.peer = upstream
        self.transport.resume_reading()


async def serve_relay(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    """Relay every connection accepted on ``listen`` to ``upstream``, until killed."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _ClientSide(upstream), *listen)
    async with server:
        await server.serve_forever()


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as a (host, port) pair."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


# ---------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class Result:
    """What one target did in one mode: a rate, or why there is none."""

    tps: float | None = None
    skipped: str | None = None
    failed: str | None = None
    #: CPU time (user + system) the serving process used per transaction, when known.
    cpu_us: float | None = None

    def cell(self) -> str:
        if self.tps is not None:
            return f"{self.tps:>12,.1f}"
        if self.skipped is not None:
            return f"{'skipped':>12}  ({self.skipped})"
        return f"{'FAILED':>12}  ({self.failed})"


class TargetError(Exception):
    """A target could not be started: the message says why (with its log tail)."""


class TargetSkipped(Exception):
    """A target is not available on this machine: the message says how to get it."""


TPS_LINE = re.compile(r"^tps = (\d+(?:\.\d+)?) \(([^)]*)\)\s*$", re.MULTILINE)


TRANSACTIONS_LINE = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)


def parse_transactions(output: str) -> int | None:
    """How many transactions pgbench says it ran."""
    found = TRANSACTIONS_LINE.search(output)
    return int(found.group(1)) if found else None


class Served(int):
    """A port number that also knows the process serving it (``pid``), so a run
    can charge that process's CPU time to its transactions."""

    pid: int | None

    def __new__(cls, port: int, pid: int | None = None) -> Served:
        served = super().__new__(cls, port)
        served.pid = pid
        return served


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and its threads (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def parse_tps(output: str) -> float | None:
    """The TPS pgbench reports, without connection set-up time.

    pgbench 14 and later print one line, ``tps = N (without initial connection
    time)``; older versions print two, ``(including connections establishing)``
    and ``(excluding connections establishing)``: take the latter.
    """
    found = TPS_LINE.findall(output)
    for value, qualifier in found:
        if "excluding" in qualifier or "without" in qualifier:
            return float(value)
    return float(found[0][0]) if found else None


# ---------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still there after 5 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_tail(log: IO[bytes], lines: int = 15) -> str:
    log.flush()
    log.seek(0)
    text = log.read().decode(errors="replace").strip()
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


@contextlib.contextmanager
def running(name: str, argv_for_port: ArgvForPort, *, user: pwd.struct_passwd | None = None,
            cwd: Path = ROOT) -> Iterator[int]:
    """Start ``argv_for_port(port)`` on a free port, yield the port once it accepts
    connections, stop the process afterwards (whatever happens)."""
    with tempfile.TemporaryFile() as log:
        for attempt in range(1, START_ATTEMPTS + 1):
            port = free_port()
            argv = argv_for_port(port)
            log.seek(0)
            log.truncate()
            try:
                process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=cwd, env=child_env(),
                    user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                    extra_groups=[] if user else None,
                )
            except OSError as exc:
                raise TargetError(f"cannot run {shlex.join(argv)}: {exc}") from None
            try:
                deadline = time.monotonic() + START_TIMEOUT
                while process.poll() is None and not accepts(port):
                    if time.monotonic() > deadline:
                        raise TargetError(f"{name} did not accept connections on port {port} "
                                          f"within {START_TIMEOUT:g} s:\n{log_tail(log)}")
                    time.sleep(0.05)
                if process.poll() is not None:
                    if attempt < START_ATTEMPTS and "in use" in log_tail(log):
                        continue  # someone took the port between free_port() and its bind
                    raise TargetError(f"{name} exited with status {process.returncode} "
                                      f"before accepting connections ({shlex.join(argv)}):\n"
                                      f"{log_tail(log)}")
                yield Served(port, process.pid)
                if process.poll() is not None:
                    raise TargetError(f"{name} exited with status {process.returncode} "
                                      f"during the runs:\n{log_tail(log)}")
                return
            finally:
                stop_process(process)


def child_env(**extra: str) -> dict[str, str]:
    """Our environment without the caller's ``PG*`` settings, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update(extra)
    return env


def first_line(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return (result.stdout or result.stderr).strip().partition("\n")[0]


# ---------------------------------------------------------------------------
# The targets


def find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


def non_root_user() -> pwd.struct_passwd | None:
    """Who runs PgBouncer: ourselves, or the ``postgres`` OS user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise TargetSkipped(f"PgBouncer refuses to run as root and there is no "
                            f"'{SERVER_OS_USER}' OS user to run it as") from None


@contextlib.contextmanager
def pgbouncer(binary: str, upstream_port: int, user: str, scram_secret: str,
              clients: int, *, pool_mode: str = "session", pool_size: int | None = None,
              settings: Sequence[str] = ()) -> Iterator[int]:
    """PgBouncer in front of the server (session mode unless ``pool_mode`` says
    otherwise; ``pool_size`` connections, default one per client; ``settings``:
    more lines for its ``[pgbouncer]`` section), its files in a temp dir."""
    owner = non_root_user()
    with tempfile.TemporaryDirectory(prefix="pgwire-bench-pgbouncer-") as name:
        directory = Path(name)
        auth_file = directory / "userlist.txt"

        def write(path: Path, text: str) -> None:
            path.write_text(text)
            path.chmod(0o600)
            if owner is not None:
                os.chown(path, owner.pw_uid, owner.pw_gid)

        if owner is not None:  # the directory must be enterable by PgBouncer's user
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        write(auth_file, f'"{user}" "{scram_secret}"\n')

        def argv(port: int) -> list[str]:
            config = directory / "pgbouncer.ini"
            write(config, "\n".join([
                "[databases]",
                f"{DATABASE} = host={LOOPBACK} port={upstream_port} dbname={DATABASE}",
                "[pgbouncer]",
                f"listen_addr = {LOOPBACK}",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = scram-sha-256",
                f"auth_file = {auth_file}",
                f"pool_mode = {pool_mode}",
                f"default_pool_size = {clients if pool_size is None else pool_size}",
                f"max_client_conn = {clients + 10}",
                *settings,
                "server_tls_sslmode = disable",
                "client_tls_sslmode = disable",
                "log_connections = 0",
                "log_disconnections = 0",
                "",
            ]))
            return [binary, str(config)]

        with running("pgbouncer", argv, user=owner, cwd=directory) as port:
            yield port


def relay_argv(upstream_port: int) -> ArgvForPort:
    def argv(port: int) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--relay-only",
                "--listen", f"{LOOPBACK}:{port}", "--upstream", f"{LOOPBACK}:{upstream_port}"]
    return argv


def pgwire_argv(command: Sequence[str], upstream_port: int) -> ArgvForPort:
    def argv(port: int) -> list[str]:
        return [*command, "--listen", f"{LOOPBACK}:{port}",
                "--upstream", f"{LOOPBACK}:{upstream_port}"]
    return argv


def check_pgwire_command(command: Sequence[str], overridden: bool) -> None:
    """Skip the target (default command) or fail it (``--pgwire-command``) when
    ``COMMAND --help`` does not exit 0."""
    try:
        result = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True,
                                timeout=60, check=False)
        status, detail = result.returncode, (result.stderr or result.stdout).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        status, detail = -1, str(exc)
    if status == 0:
        return
    detail = detail.splitlines()[-1] if detail else "no output"
    message = f"`{shlex.join([*command, '--help'])}` exited {status}\n{detail}"
    if overridden:
        raise TargetError(message)
    raise TargetSkipped(f"{message}\n(--pgwire-command runs a stand-in meanwhile)")


# ---------------------------------------------------------------------------
# pgbench


@dataclass(frozen=True, slots=True, kw_only=True)
class Bench:
    """How to run pgbench: the program, the login, the load."""

    program: str
    user: str
    password: str
    clients: int
    threads: int
    seconds: int

    def env(self) -> dict[str, str]:
        return child_env(PGPASSWORD=self.password, PGSSLMODE="disable")

    def login(self, port: int) -> list[str]:
        return ["-h", LOOPBACK, "-p", str(port), "-U", self.user]

    def initialise(self, port: int, scale: int) -> None:
        argv = [self.program, "-i", "-q", "-s", str(scale), *self.login(port), DATABASE]
        result = subprocess.run(argv, env=self.env(), capture_output=True, text=True,
                                timeout=600, check=False)
        if result.returncode != 0:
            fail(f"{shlex.join(argv)} failed (exit {result.returncode}):\n"
                 f"{result.stderr}{result.stdout}")

    def run(self, port: int, mode: str) -> Result:
        """``pgbench -S -M mode`` against ``port``; with a `Served` port, also the
        serving process's CPU time per transaction."""
        argv = [self.program, "-S", "-n", "-M", mode, "-c", str(self.clients),
                "-j", str(self.threads), "-T", str(self.seconds), *self.login(port), DATABASE]
        pid = getattr(port, "pid", None)
        cpu_before = process_cpu_seconds(pid) if pid is not None else None
        try:
            result = subprocess.run(argv, env=self.env(), capture_output=True, text=True,
                                    timeout=self.seconds + 120, check=False)
        except subprocess.TimeoutExpired:
            return self.failure(argv, "did not finish in time", "")
        cpu_after = process_cpu_seconds(pid) if pid is not None else None
        tps = parse_tps(result.stdout)
        if result.returncode != 0 or tps is None:
            return self.failure(argv, f"exit {result.returncode}", result.stderr + result.stdout)
        transactions = parse_transactions(result.stdout)
        cpu_us = (None if cpu_before is None or cpu_after is None or not transactions
                  else (cpu_after - cpu_before) * 1e6 / transactions)
        return Result(tps=tps, cpu_us=cpu_us)

    @staticmethod
    def failure(argv: Sequence[str], what: str, output: str) -> Result:
        print(f"pgbench failed ({what}): {shlex.join(argv)}\n{output.strip()}", file=sys.stderr)
        return Result(failed=f"pgbench {what}; its output is on stderr")


def find_pgbench(bindir: Path) -> str | None:
    candidate = bindir / "pgbench"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("pgbench")


def fail(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(1)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# The report


def ratio(tps: float | None, against: float | None) -> str:
    if tps is None or against is None:
        return "n/a"
    return f"{tps / against:.2f}x"


def print_report(results: dict[str, dict[str, Result]], header: Sequence[str],
                 bench: Bench, *, baseline: str = LABEL_PGBOUNCER,
                 baseline_title: str = "vs pgbouncer") -> None:
    """One table per mode: TPS, and ratios against direct and ``baseline``."""
    for line in header:
        print(line)
    width = max(26, *(len(label) for label in results))
    column = max(12, len(baseline_title))
    for mode in MODES:
        direct = results[LABEL_DIRECT][mode].tps
        other = results[baseline][mode].tps
        print()
        print(f"-M {mode} ({bench.clients} clients, {bench.threads} threads, "
              f"{bench.seconds} s per run):")
        print(f"  {'target':<{width}} {'TPS':>12}  {'vs direct':>10}  {baseline_title:>{column}}"
              f"  {'CPU us/txn':>10}")
        for label, by_mode in results.items():
            result = by_mode[mode]
            if result.tps is None:
                print(f"  {label:<{width}} {result.cell()}")
            else:
                cpu = f"{result.cpu_us:.1f}" if result.cpu_us is not None else "-"
                print(f"  {label:<{width}} {result.cell()}  {ratio(result.tps, direct):>10}  "
                      f"{ratio(result.tps, other):>{column}}  {cpu:>10}")
    print("  (CPU us/txn: user + system time of the serving process over pgbench's "
          "transactions; - for PostgreSQL itself)")
    print()


def print_summary(results: dict[str, dict[str, Result]], label: str, baseline: str,
                  title: str, *, target: str = "") -> None:
    """``title: simple 0.80x, prepared 0.79x``: ``label``'s TPS against ``baseline``'s."""
    print(f"{title}: " + ", ".join(
        f"{mode} {ratio(results[label][mode].tps, results[baseline][mode].tps)}"
        for mode in MODES) + (f" (target {target})" if target else ""))


def print_cpu_summary(results: dict[str, dict[str, Result]], label: str, baseline: str,
                      title: str, *, target: str = "") -> None:
    """``title: simple 1.20x, prepared 1.10x``: CPU per transaction, ``label`` over ``baseline``."""
    cells = []
    for mode in MODES:
        mine, theirs = results[label][mode].cpu_us, results[baseline][mode].cpu_us
        cells.append(f"{mode} " + (f"{mine / theirs:.2f}x" if mine and theirs else "n/a"))
    print(f"{title}: " + ", ".join(cells) + (f" (target {target})" if target else ""))


def toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string


def middleware_config(upstream_port: int, audit_path: Path) -> str:
    """The proxy's TOML for the role chain: Audit first (it sees what the client
    sent and got, to a JSON Lines file), then RoleRewrite (map), then RoleGuard
    (deny)."""
    rules = ", ".join("{ " + ", ".join(f"{key} = {toml_string(value)}"
                                       for key, value in rule.items()) + " }"
                      for rule in REWRITE_RULES)
    return "\n".join([
        f"upstream = {toml_string(f'{LOOPBACK}:{upstream_port}')}",
        "",
        "[[middleware]]",
        f"class = {toml_string(':'.join(MIDDLEWARE['Audit']))}",
        f"sink = {{ type = \"jsonl\", path = {toml_string(str(audit_path))} }}",
        "",
        "[[middleware]]",
        f"class = {toml_string(':'.join(MIDDLEWARE['RoleRewrite']))}",
        'mode = "map"',
        f"rules = [{rules}]",
        "",
        "[[middleware]]",
        f"class = {toml_string(':'.join(MIDDLEWARE['RoleGuard']))}",
        'policy = "deny"',
        "",
    ])


# ---------------------------------------------------------------------------
# Driver


def add_pgbench_arguments(parser: argparse.ArgumentParser) -> None:
    """The pgbench options every benchmark that runs pgbench takes."""
    parser.add_argument("--seconds", type=int, default=10,
                        help="duration of each pgbench run (default 10)")
    parser.add_argument("--clients", type=int, default=8,
                        help="pgbench client connections (default 8)")
    parser.add_argument("--threads", type=int, default=2,
                        help="pgbench worker threads, at most --clients (default 2)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every target this many times, taking turns, and report "
                             "each one's best TPS (default 1)")
    parser.add_argument("--scale", type=int, default=1,
                        help="pgbench -i scale factor: 100,000 accounts each (default 1)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0] if __doc__ else "")
    add_pgbench_arguments(parser)
    parser.add_argument("--pgwire-command", metavar="COMMAND",
                        help="command for the pgwire target, before --listen/--upstream "
                             "(default: PYTHON -m pgwire proxy)")
    parser.add_argument("--no-roles", dest="roles", action="store_false",
                        help="leave out the target with RoleRewrite, RoleGuard and Audit")
    parser.add_argument("--relay-only", action="store_true",
                        help="internal: be the baseline relay (needs --listen, --upstream)")
    parser.add_argument("--listen", type=parse_address, help="relay mode: HOST:PORT to accept on")
    parser.add_argument("--upstream", type=parse_address, help="relay mode: HOST:PORT to relay to")
    args = parser.parse_args(argv)
    if args.relay_only:
        if args.listen is None or args.upstream is None:
            parser.error("--relay-only needs --listen and --upstream")
    elif min(args.seconds, args.clients, args.threads, args.scale, args.rounds) < 1:
        parser.error("--seconds, --clients, --threads, --scale and --rounds must be positive")
    elif args.threads > args.clients:
        args.threads = args.clients
    return args


class Terminated(BaseException):
    """SIGTERM arrived: unwind through the blocks that stop processes, like Ctrl-C."""


def _terminate(signum: int, frame: object) -> NoReturn:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.relay_only:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_relay(args.listen, args.upstream))
        return 0

    signal.signal(signal.SIGTERM, _terminate)
    try:
        bindir = find_postgres_bindir()
    except ClusterUnavailable as exc:
        fail(str(exc))
    pgbench = find_pgbench(bindir)
    if pgbench is None:
        fail(f"pgbench is neither in {bindir} nor on PATH: install the PostgreSQL client "
             "programs (apt-get install postgresql-client)")
    overridden = args.pgwire_command is not None
    pgwire_command = (shlex.split(args.pgwire_command) if overridden
                      else [sys.executable, "-m", "pgwire", "proxy"])
    bouncer_binary = find_pgbouncer()

    started = time.monotonic()
    try:
        with PostgresCluster(bindir=bindir, ssl=False, auth="scram-sha-256") as cluster:
            bench = Bench(program=pgbench, user=cluster.superuser,
                          password=cluster.superuser_password, clients=args.clients,
                          threads=args.threads, seconds=args.seconds)
            progress(f"pgbench -i -s {args.scale} on PostgreSQL at {cluster.host}:{cluster.port}")
            bench.initialise(cluster.port, args.scale)
            server_version = cluster.sql("show server_version")
            secret = cluster.sql("select rolpassword from pg_authid "
                                 f"where rolname = '{cluster.superuser}'")

            @contextlib.contextmanager
            def direct() -> Iterator[int]:
                yield cluster.port

            @contextlib.contextmanager
            def bouncer() -> Iterator[int]:
                if bouncer_binary is None:
                    raise TargetSkipped(f"no pgbouncer binary in PATH or /usr/sbin; "
                                        f"{PGBOUNCER_HELP}")
                with pgbouncer(bouncer_binary, cluster.port, cluster.superuser, secret,
                               args.clients) as port:
                    yield port

            @contextlib.contextmanager
            def pgwire_proxy() -> Iterator[int]:
                check_pgwire_command(pgwire_command, overridden)
                with running("pgwire proxy", pgwire_argv(pgwire_command, cluster.port)) as port:
                    yield port

            @contextlib.contextmanager
            def pgwire_with_roles() -> Iterator[int]:
                if importlib.util.find_spec("pglast") is None:
                    raise TargetSkipped("RoleGuard needs pglast: pip install 'pgwire[sql]'")
                check_pgwire_command(pgwire_command, overridden)
                with tempfile.TemporaryDirectory(prefix="pgwire-bench-") as directory:
                    config = Path(directory) / "pgwire.toml"
                    config.write_text(middleware_config(cluster.port,
                                                        Path(directory) / "audit.jsonl"))
                    argv = pgwire_argv([*pgwire_command, "--config", str(config)], cluster.port)
                    with running("pgwire proxy with role middleware", argv) as port:
                        yield port

            targets: dict[str, Callable[[], contextlib.AbstractContextManager[int]]] = {
                LABEL_DIRECT: direct,
                LABEL_PGBOUNCER: bouncer,
                LABEL_RELAY: lambda: running("asyncio relay", relay_argv(cluster.port)),
                LABEL_PGWIRE: pgwire_proxy,
            }
            if args.roles:
                targets[LABEL_ROLES] = pgwire_with_roles
            results: dict[str, dict[str, Result]] = {}
            for round_number in range(1, args.rounds + 1):
                for label, target in targets.items():
                    previous = results.get(label)
                    if previous is not None and any(r.tps is None for r in previous.values()):
                        continue  # skipped or failed: once is enough
                    round_label = f"round {round_number}: " if args.rounds > 1 else ""
                    latest = run_target(round_label + label, target, bench)
                    results[label] = best_of(previous, latest)
    except (KeyboardInterrupt, Terminated) as exc:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM

    bouncer_version = (first_line([bouncer_binary, "--version"]) if bouncer_binary
                       else "PgBouncer not installed")
    header = [
        f"proxy benchmark: pgbench -S (select-only), scale {args.scale}, {args.clients} clients, "
        f"{args.threads} threads, {args.seconds} s per run, "
        + (f"best of {args.rounds} rounds" if args.rounds > 1 else "1 round") + ", TLS off",
        f"Python {platform.python_version()} ({sys.implementation.name}), "
        f"{os.cpu_count()} CPUs, {first_line([pgbench, '--version'])}, "
        f"PostgreSQL {server_version}, {bouncer_version}",
        f"pgwire proxy command: {shlex.join(pgwire_command)}",
    ]
    print_report(results, header, bench)
    print_summary(results, LABEL_PGWIRE, LABEL_PGBOUNCER, "pgwire/pgbouncer")
    print_cpu_summary(results, LABEL_PGWIRE, LABEL_PGBOUNCER, "pgwire/pgbouncer CPU per txn")
    if LABEL_ROLES in results:
        print_summary(results, LABEL_ROLES, LABEL_PGBOUNCER, "pgwire+roles/pgbouncer",
                      target=">= 0.90x")
        print_summary(results, LABEL_ROLES, LABEL_RELAY, "pgwire+roles/relay",
                      target=">= 0.95x")
        print_cpu_summary(results, LABEL_ROLES, LABEL_PGBOUNCER,
                          "pgwire+roles/pgbouncer CPU per txn", target="<= 1.30x")
    print(f"total time: {time.monotonic() - started:.0f} s")
    failed = any(result.failed for by_mode in results.values() for result in by_mode.values())
    return 1 if failed else 0


def best_of(previous: dict[str, Result] | None, latest: dict[str, Result]) -> dict[str, Result]:
    """Per mode, the faster of two rounds' results; a failure or skip wins over a rate."""
    if previous is None:
        return latest
    merged: dict[str, Result] = {}
    for mode in MODES:
        old, new = previous[mode], latest[mode]
        if old.tps is None or new.tps is None:
            merged[mode] = old if old.tps is None else new
        else:
            merged[mode] = old if old.tps >= new.tps else new
    return merged


def run_target(label: str, target: Callable[[], contextlib.AbstractContextManager[int]],
               bench: Bench) -> dict[str, Result]:
    """Both modes against one target; a target that cannot start fails or skips both."""
    results: dict[str, Result] = {}
    try:
        with target() as port:
            for mode in MODES:
                progress(f"{label}: pgbench -S -M {mode} on port {port}, {bench.seconds} s")
                results[mode] = bench.run(port, mode)
    except TargetSkipped as exc:
        progress(f"{label}: skipped: {exc}")
        return dict.fromkeys(MODES, Result(skipped=str(exc).partition("\n")[0]))
    except TargetError as exc:
        progress(f"{label}: FAILED: {exc}")
        first = str(exc).partition("\n")[0].rstrip(":")
        return {mode: results.get(mode, Result(failed=first)) for mode in MODES}
    return results


if __name__ == "__main__":
    sys.exit(main())

"""The fault toolkit: a proxy process to watch, ways to break its upstream, checks.

Every fault test runs ``python -m pgwire proxy`` as a subprocess rather than
in the test's own process: what a fault leaks (a socket, a thread, a task
that never ends) then shows in the proxy's own ``/proc/PID/fd`` and
``/proc/PID/task``, untouched by the test's clients, clusters and psql
children; the session count comes from the proxy's Prometheus endpoint; the
audit file is the one a deployment would write, checked afterwards with
``pgwire audit verify``; and the proxy must still stop cleanly (exit 0 on
SIGTERM) after the fault, which a hung session would prevent.

Pieces:

- `ProxyProcess`: start one, read its counts, wait until it is quiet again,
  stop it, read and check its audit file.
- `Forwarder`: a TCP relay between the proxy and PostgreSQL that can be
  switched to swallow bytes without closing (a black hole on the read path).
- `FullBacklog`: a listening socket whose accept queue is full, so a
  connect to it hangs (a black hole on the connect path).
- `kill_backend`, `kill_postmaster`, `start_cluster`, `stop_cluster`,
  `wait_cluster_ready`: what happens to the server.
- `Client`: :class:`tests.interop.proxy_wire.RawClient` logged in as the
  cluster's superuser; `raw_connect`, `hang_up` and `read_until_closed` for
  what no client library does (half a startup packet, a reset).
- `check_audit`: every request has one outcome, every session its end.

The metrics endpoint and the audit writer are a thread and a few fds of the
proxy's own; they are part of the baseline (`ProxyProcess.warm_up`) that a
fault must come back to.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgwire as pw
from pgwire.cli import main as cli_main
from pgwire.testing.cluster import SERVER_OS_USER, PostgresCluster
from tests.audit.helpers import read_jsonl
from tests.interop.proxy_wire import TIMEOUT, RawClient, read_line, wait_until

__all__ = [
    "HANGUPS",
    "TIMEOUT",
    "Client",
    "Forwarder",
    "FullBacklog",
    "ProxyProcess",
    "Quiet",
    "abort",
    "backends",
    "check_audit",
    "direct",
    "ensure_running",
    "errors_of",
    "hang_up",
    "kill_backend",
    "kill_postmaster",
    "outcome",
    "raw_connect",
    "read_until_closed",
    "server_processes",
    "start_cluster",
    "stop_cluster",
    "wait_cluster_ready",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[2]
#: Seconds the proxy has to stop after SIGTERM (its shutdown_timeout is shorter).
STOP_TIMEOUT = 20.0
_ENV = {**os.environ, "PYTHONIOENCODING": "utf-8"}


# -- the proxy under test -----------------------------------------------------------------


@dataclass(frozen=True)
class Quiet:
    """What an idle proxy process holds: its open file descriptors and threads."""

    fds: list[str]
    threads: int


class ProxyProcess:
    """``python -m pgwire proxy`` with an Audit middleware writing JSON Lines and a
    metrics endpoint, in front of ``upstream``.

    ``toml`` is appended to the generated file (``[limits]``, ``[client_tls]``
    ...). Use it as a context manager: leaving the block stops the proxy with
    SIGTERM and checks that it exited with status 0.
    """

    def __init__(self, adapter: str, upstream: tuple[str, int], directory: Path, *,
                 toml: str = "", audit: bool = True) -> None:
        self.adapter = adapter
        self.directory = directory
        self.audit_path = directory / "audit.jsonl"
        self.stderr_path = directory / "proxy.stderr"
        self.config_path = directory / "pgwire.toml"
        text = f'upstream = "{upstream[0]}:{upstream[1]}"\nlog_level = "info"\n'
        text += "[metrics]\nlisten = \"127.0.0.1:0\"\n"
        text += toml
        if audit:
            text += ('\n[[middleware]]\nclass = "pgwire.middleware.audit:Audit"\n'
                     'redact = "none"\n[middleware.sink]\ntype = "jsonl"\n'
                     f'path = "{self.audit_path}"\n')
        self.config_path.write_text(text)
        self.process: subprocess.Popen[str] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.metrics_url = ""
        self.returncode: int | None = None

    # -- lifecycle

    def start(self) -> ProxyProcess:
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pgwire", "proxy", "-c", str(self.config_path),
                 "--listen", "127.0.0.1:0", "--adapter", self.adapter],
                stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                text=True, cwd=ROOT, env=_ENV)
        try:
            self.port = int(read_line(self.process, r"listening on 127\.0\.0\.1:(\d+)")[1])
            self.metrics_url = read_line(self.process, r"(http://\S+/metrics)")[1]
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the proxy did not start:\n{self.stderr()}") from None
        return self

    def stop(self) -> int:
        """SIGTERM, then wait for the exit status (killed after `STOP_TIMEOUT`)."""
        process = self.process
        assert process is not None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self.returncode = -9
                return -9
        assert process.stdout is not None
        process.stdout.close()
        self.returncode = process.returncode
        return process.returncode

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        status = self.stop()
        if exc_type is None:
            assert status == 0, (f"the proxy did not stop cleanly on SIGTERM (status "
                                 f"{status}); stderr:\n{self.stderr()}")

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    # -- what it holds

    def fd_targets(self) -> list[str]:
        """What each open file descriptor points at: a path, a pipe, or a socket
        with its TCP addresses and state when it has some."""
        base = f"/proc/{self.pid}/fd"
        tcp = _tcp_sockets(self.pid)
        found = []
        for name in os.listdir(base):
            with contextlib.suppress(OSError):
                target = os.readlink(f"{base}/{name}")
                inode = target.removeprefix("socket:[").removesuffix("]")
                found.append(f"{target} {tcp[inode]}" if inode in tcp else target)
        return sorted(found)

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=TIMEOUT) as response:
            text: str = response.read().decode()
            return text

    def sessions(self) -> int:
        """Client sessions the proxy still has, in any state but closed."""
        total = 0
        for state, count in re.findall(r'^pgwire_sessions\{state="(\w+)"\} (\d+)$',
                                       self.metrics(), re.M):
            if state != "closed":
                total += int(count)
        return total

    def counter(self, name: str) -> int:
        found = re.search(rf"^pgwire_{name}_total (\d+)$", self.metrics(), re.M)
        assert found is not None, f"no counter {name}"
        return int(found[1])

    def quiet(self, disconnects: int = 0) -> Quiet:
        """Wait until no session is left (and, the audit sink opening its file at
        its first write, until the file holds ``disconnects`` session ends);
        return the fd and thread counts."""
        wait_until(lambda: self._audit_bytes().count(b'"disconnect"') >= disconnects,
                   f"{disconnects} disconnect records in the audit file")
        wait_until(lambda: self.sessions() == 0, "every proxy session to end")
        return Quiet(self.fd_targets(), self.threads())

    def warm_up(self, cluster: PostgresCluster) -> Quiet:
        """One ordinary session (so that lazily made threads and files exist),
        then the idle counts: the baseline a fault must come back to."""
        with Client(self.address, cluster, "warm-up") as client:
            client.login()
            assert client.scalar("select 'warm'") == "warm"
            client.send(pw.Terminate())
        return self.quiet(disconnects=1)

    def _audit_bytes(self) -> bytes:
        try:
            return self.audit_path.read_bytes()
        except FileNotFoundError:
            return b""

    def assert_back_to(self, baseline: Quiet, timeout: float = TIMEOUT) -> None:
        """Within ``timeout``: no session left, no more fds nor threads than ``baseline``."""
        deadline = time.monotonic() + timeout
        while True:
            sessions = self.sessions()
            fds = self.fd_targets()
            threads = self.threads()
            if sessions == 0 and len(fds) <= len(baseline.fds) and threads <= baseline.threads:
                return
            if time.monotonic() > deadline:
                new = sorted(set(fds) - set(baseline.fds))
                pytest.fail(f"after {timeout:g} s the proxy still has {sessions} sessions, "
                            f"{len(fds)} fds (baseline {len(baseline.fds)}; new: {new}) and "
                            f"{threads} threads (baseline {baseline.threads})\n"
                            f"stderr tail:\n{self.stderr()[-4000:]}")
            time.sleep(0.05)

    # -- its audit file

    def audit_records(self) -> list[dict[str, Any]]:
        """The audit file, once the proxy has stopped; its chain must verify with
        ``pgwire audit verify`` (the command's own code, run in this process)."""
        assert self.returncode is not None, "stop the proxy first: the audit closes then"
        said = io.StringIO()
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            status = cli_main(["audit", "verify", str(self.audit_path)])
        assert status == 0, said.getvalue()
        return read_jsonl(self.audit_path)


_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "06": "TIME_WAIT", "07": "CLOSE",
               "08": "CLOSE_WAIT", "0A": "LISTEN", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
               "09": "LAST_ACK", "0B": "CLOSING"}


def _tcp_sockets(pid: int) -> dict[str, str]:
    """inode -> ``local->remote STATE`` for the IPv4 TCP sockets of pid's namespace."""
    found = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote = (_address(fields[1]), _address(fields[2]))
            found[fields[9]] = f"{local}->{remote} {_TCP_STATES.get(fields[3], fields[3])}"
    return found


def _address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    return f"{socket.inet_ntoa(bytes.fromhex(host)[::-1])}:{int(port, 16)}"


def check_audit(records: list[dict[str, Any]]) -> None:
    """Every request has exactly one outcome, and every session that connected
    has its disconnect record."""
    requests = {(r["session_id"], r["request"]) for r in records
                if r["event"] in ("query", "execute", "function_call")}
    outcomes = Counter((r["session_id"], r["request"]) for r in records
                       if r["event"] == "complete")
    assert set(outcomes) == requests, (sorted(requests ^ set(outcomes)), records)
    assert all(count == 1 for count in outcomes.values()), outcomes
    connected = {r["session_id"] for r in records if r["event"] == "connect"}
    ended = Counter(r["session_id"] for r in records if r["event"] == "disconnect")
    assert set(ended) == connected, (f"sessions without a disconnect record: "
                                     f"{sorted(connected - set(ended))}", records)
    assert all(count == 1 for count in ended.values()), ended


def outcome(records: list[dict[str, Any]], sql: str) -> dict[str, Any]:
    """The one ``complete`` record of the statement ``sql``."""
    found = [r for r in records if r["event"] == "complete" and r["sql"] == sql]
    assert len(found) == 1, (sql, records)
    return found[0]


# -- clients ------------------------------------------------------------------------------


class Client(RawClient):
    """A RawClient that logs in to the fault cluster through the proxy as its superuser."""

    def __init__(self, address: tuple[str, int], cluster: PostgresCluster,
                 application_name: str = "fault-test", **connection: Any) -> None:
        settings: dict[str, Any] = {
            "user": cluster.superuser, "password": cluster.superuser_password,
            "database": "postgres", "sslmode": "disable",
            "parameters": {"application_name": application_name}, **connection}
        super().__init__(address, **settings)

    def __enter__(self) -> Client:
        return self

    def begin_login(self) -> None:
        """Send the startup packet, without waiting for an answer."""
        self.conn.start()
        self.flush()

    def errors(self) -> list[pw.ErrorResponse]:
        """The rest of the stream (until the proxy closes it): its ErrorResponses."""
        return errors_of(self.rest_of_stream())


def errors_of(events: Sequence[object]) -> list[pw.ErrorResponse]:
    return [e for e in events if isinstance(e, pw.ErrorResponse)]


def raw_connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=TIMEOUT)


def read_until_closed(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """Everything the peer sends until it closes (a reset counts as a close);
    fails the test if it is still open after ``timeout``."""
    sock.settimeout(timeout)
    received = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            pytest.fail(f"the proxy kept the connection open for {timeout:g} s")
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(received)
        except TimeoutError:
            pytest.fail(f"the proxy kept the connection open for {timeout:g} s")
        if not chunk:
            return bytes(received)
        received += chunk


def abort(sock: socket.socket) -> None:
    """Close with a TCP reset, as a crashed client does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


#: The ways a client hangs up: an orderly close (FIN), a reset (RST).
HANGUPS = ("close", "reset")


def hang_up(sock: socket.socket, how: str) -> None:
    """Close ``sock`` the way ``how`` (one of `HANGUPS`) says."""
    if how == "reset":
        abort(sock)
    else:
        sock.close()


def direct(cluster: PostgresCluster, **extra: Any) -> psycopg.Connection[Any]:
    """A psycopg connection straight to the cluster (not through the proxy)."""
    return psycopg.connect(**cluster.connect_kwargs(sslmode="disable", connect_timeout=10,
                                                    **extra), autocommit=True)


def backends(cluster: PostgresCluster, application_name: str, state: str | None = None) -> int:
    """Server sessions with that application_name (and in that state)."""
    with direct(cluster) as conn:
        row = conn.execute("select count(*) from pg_stat_activity where application_name = %s"
                           " and (%s::text is null or state = %s::text)",
                           [application_name, state, state]).fetchone()
        assert row is not None
        return int(row[0])


def server_processes(cluster: PostgresCluster) -> int:
    """Processes the postmaster runs now: one per connection, logged in or not,
    plus its fixed helpers."""
    return len([pid for pid in _children(postmaster_pid(cluster)) if _alive(pid)])


# -- the server ---------------------------------------------------------------------------


def _server_user() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    import pwd  # noqa: PLC0415

    entry = pwd.getpwnam(SERVER_OS_USER)
    return entry.pw_uid, entry.pw_gid


def _pg_ctl(cluster: PostgresCluster, *args: str) -> subprocess.CompletedProcess[str]:
    ids = _server_user()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        [str(cluster.bindir / "pg_ctl"), *args, "-D", str(cluster.datadir)],
        capture_output=True, text=True, timeout=90, check=False, cwd="/", env=env,
        user=ids[0] if ids else None, group=ids[1] if ids else None,
        extra_groups=[] if ids else None)


def postmaster_pid(cluster: PostgresCluster) -> int:
    return int((cluster.datadir / "postmaster.pid").read_text().split("\n", 1)[0])


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_backend(cluster: PostgresCluster, backend_pid: int) -> None:
    """SIGKILL one server process. PostgreSQL then resets every session (a
    crashed backend may have left shared memory corrupt) and recovers; this
    waits until it accepts connections again."""
    os.kill(backend_pid, signal.SIGKILL)
    wait_until(lambda: not _alive(backend_pid), "the backend to die")
    wait_cluster_ready(cluster)


def kill_postmaster(cluster: PostgresCluster) -> None:
    """SIGKILL the postmaster and every process it started (a host crash, as far
    as the proxy can tell); the cluster is down until `start_cluster`."""
    pid = postmaster_pid(cluster)
    children = _children(pid)
    os.kill(pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    wait_until(lambda: not any(_alive(p) for p in [pid, *children]),
               "the server processes to die")
    # The dead postmaster may linger as a zombie when nothing reaps orphans (a
    # container's init), and PostgreSQL would take that for a live server.
    (cluster.datadir / "postmaster.pid").unlink()
    for leftover in cluster.socket_dir.glob(f".s.PGSQL.{cluster.port}*"):
        leftover.unlink()


def stop_cluster(cluster: PostgresCluster, mode: str = "fast") -> None:
    """``pg_ctl stop -m fast``: sessions get FATAL 57P01, then the server exits."""
    result = _pg_ctl(cluster, "stop", "-m", mode, "-w", "-t", "60")
    assert result.returncode == 0, result.stderr


def start_cluster(cluster: PostgresCluster) -> None:
    """Start a stopped (or killed) cluster again, on the same port."""
    result = _pg_ctl(cluster, "start", "-w", "-t", "60", "-l", str(cluster.log_path))
    assert result.returncode == 0, (result.stderr + result.stdout + "\n"
                                    + cluster.log_path.read_text()[-3000:])
    wait_cluster_ready(cluster)


def wait_cluster_ready(cluster: PostgresCluster, timeout: float = 60.0) -> None:
    def ready() -> bool:
        try:
            with direct(cluster) as conn:
                conn.execute("select 1")
        except psycopg.OperationalError:
            return False
        return True

    wait_until(ready, "the cluster to accept connections", timeout)


def ensure_running(cluster: PostgresCluster) -> None:
    """Start the cluster again if an earlier test left it down."""
    try:
        with direct(cluster) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError:
        if (cluster.datadir / "postmaster.pid").exists() and _alive(postmaster_pid(cluster)):
            wait_cluster_ready(cluster)
        else:
            start_cluster(cluster)


# -- the network --------------------------------------------------------------------------


class Forwarder:
    """A TCP relay on a free loopback port to ``target``, one thread per link.

    `black_hole` makes every link, open and future, swallow what either side
    sends without closing anything: from the proxy's side the server just
    stops answering. `close` ends the relay and every link.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.swallowing = threading.Event()
        #: Bytes swallowed since `black_hole`.
        self.swallowed = 0
        self.closing = threading.Event()
        self.links: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True,
                                          name="fault-forwarder")
        self._accepter.start()

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def black_hole(self) -> None:
        self.swallowing.set()

    def open_links(self) -> int:
        """Links whose proxy side is still open (the proxy has not closed them)."""
        with self._lock:
            return sum(1 for inside, _ in self.links if inside.fileno() != -1)

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self.closing.is_set():
            try:
                inside, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                outside = socket.create_connection(self.target, timeout=TIMEOUT)
            except OSError:
                inside.close()
                continue
            with self._lock:
                self.links.append((inside, outside))
            thread = threading.Thread(target=self._relay, args=(inside, outside), daemon=True,
                                      name="fault-forwarder-link")
            self._threads.append(thread)
            thread.start()

    def _relay(self, inside: socket.socket, outside: socket.socket) -> None:
        peers = {inside: outside, outside: inside}
        try:
            while not self.closing.is_set():
                readable, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if self.swallowing.is_set():
                        self.swallowed += len(data)
                    else:
                        peers[sock].sendall(data)
        except OSError:
            return
        finally:
            inside.close()
            outside.close()

    def close(self) -> None:
        self.closing.set()
        self.listener.close()
        self._accepter.join(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)


class FullBacklog:
    """A listening socket that never accepts, its accept queue filled: a connect
    to `address` hangs (the kernel drops the SYN) until the caller gives up."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.fillers: list[socket.socket] = []
        for _ in range(16):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.settimeout(0.3)
            self.fillers.append(filler)
            try:
                filler.connect(self.address)
            except TimeoutError:
                return  # the queue is full: this connect hung
        raise AssertionError("could not fill the accept queue of a listen(0) socket")

    def __enter__(self) -> FullBacklog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for filler in self.fillers:
            filler.close()
        self.listener.close()


# -- the pool -----------------------------------------------------------------------------


def pool_metric(proxy: ProxyProcess, name: str) -> int:
    """``pgwire_pool_<name>`` summed over every pool key (and state): a gauge
    (``servers``, ``clients``) or a counter (``servers_closed_total`` ...)."""
    text = proxy.metrics()
    assert re.search(rf"^# TYPE pgwire_pool_{name} ", text, re.M), f"no metric pool_{name}"
    found = re.findall(rf"^pgwire_pool_{name}\{{[^}}]*\}} (\d+(?:\.\d+)?)$", text, re.M)
    return int(sum(float(value) for value in found))


def upstream_sockets(proxy: ProxyProcess, port: int) -> list[str]:
    """The proxy's TCP sockets to the server's ``port``, with their states."""
    return [fd for fd in proxy.fd_targets() if f"->127.0.0.1:{port} " in fd]


def backend_pids(cluster: PostgresCluster, application_name: str) -> list[int]:
    """The server processes of the client sessions with that application_name."""
    with direct(cluster) as conn:
        rows = conn.execute("select pid from pg_stat_activity where application_name = %s"
                            " order by pid", [application_name]).fetchall()
    return [int(row[0]) for row in rows]

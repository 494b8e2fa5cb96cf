"""Every limit through a real proxy on each adapter, against the shared PostgreSQL.

The tests of clients that pipeline 100 MB without reading, and the second
(pooled) variant of two slow-reader tests, are marked ``soak`` (a few seconds
each: they wait for the proxy to stop reading); run them with
``pytest tests/limits -m soak -s`` to see the figures.

Each test runs once per adapter (asyncio, trio, blocking) with small limits so
that it is quick, and checks what a client sees at the boundary: a limit of
exactly N lets N through, N + 1 gets PostgreSQL's SQLSTATE (or, where
PostgreSQL says nothing, the same silent hang-up). Waits are bounded polls,
never timing assertions.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import pgwire as pw
from pgwire.middleware import Context, Middleware, Respond
from pgwire.middleware.audit import Audit
from pgwire.middleware.base import Verdict
from pgwire.proxy import PoolConfig, ProxyAuth, ProxyConfig
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import ADAPTERS, AdapterName, RunningProxy, running_proxy
from tests.audit.helpers import GateSink
from tests.interop.proxy_wire import TIMEOUT, RawClient, wait_until

pytestmark = pytest.mark.parametrize("adapter", ADAPTERS)

#: The timeouts the proxy enforces in these tests (their length is never asserted).
SHORT = 0.5
MiB = 1 << 20


def config_for(cluster: PostgresCluster, **limits: Any) -> ProxyConfig:
    return ProxyConfig(upstream=(cluster.host, cluster.port), **limits)


def client(proxy: RunningProxy, cluster: PostgresCluster) -> RawClient:
    return RawClient(proxy.address, user=cluster.superuser, database="postgres",
                     password=cluster.superuser_password, sslmode="disable")


def errors(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.severity, e.code) for e in events if isinstance(e, pw.ErrorResponse)]


def no_sessions_left(proxy: RunningProxy) -> None:
    wait_until(lambda: len(proxy.proxy) == 0, "every session to be forgotten")


def frames(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, body) of each whole message in ``data``."""
    found = []
    pos = 0
    while pos + 5 <= len(data):
        length = int.from_bytes(data[pos + 1:pos + 5])
        found.append((data[pos:pos + 1], data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    return found


def error_fields(body: bytes) -> tuple[str, str, str]:
    """Severity, SQLSTATE and message of an ErrorResponse body."""
    fields = {item[:1]: item[1:].decode() for item in body.split(b"\0") if item}
    return fields[b"V"], fields[b"C"], fields[b"M"]


def read_all(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (within TIMEOUT)."""
    sock.settimeout(TIMEOUT)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# -- max_clients ------------------------------------------------------------------------


def test_max_clients_lets_n_in_and_refuses_the_next_with_53300(
        pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    with running_proxy(config_for(pg_cluster, max_clients=2), adapter=adapter) as proxy:
        with client(proxy, pg_cluster) as first, client(proxy, pg_cluster) as second:
            first.login()
            second.login()  # exactly max_clients: both in
            with client(proxy, pg_cluster) as third:
                third.conn.start()
                third.flush()
                events = third.rest_of_stream()
            [error] = [e for e in events if isinstance(e, pw.ErrorResponse)]
            assert (error.severity, error.code, error.message) == (
                "FATAL", "53300", "sorry, too many clients already")
            assert isinstance(events[-1], pw.ConnectionClosed)
            assert first.scalar("select 1") == "1"  # the others go on
        no_sessions_left(proxy)
        with client(proxy, pg_cluster) as again:  # a freed slot is taken again
            again.login()
        assert proxy.proxy.stats.refused_max_clients == 1


# -- the startup packet -----------------------------------------------------------------


def startup_packet(cluster: PostgresCluster, body_size: int, user: str | None = None) -> bytes:
    """A StartupMessage whose body (after the length word) is ``body_size`` bytes,
    padded with an application_name."""
    fixed = struct.pack("!I", pw.PROTOCOL_3_0) + b"".join(
        key + b"\0" + value + b"\0" for key, value in (
            (b"user", (user or cluster.superuser).encode()), (b"database", b"postgres")))
    pad = body_size - len(fixed) - len(b"application_name\0") - 1 - 1
    body = fixed + b"application_name\0" + b"a" * pad + b"\0" + b"\0"
    assert len(body) == body_size
    return struct.pack("!I", body_size + 4) + body


def test_a_startup_packet_of_10000_bytes_is_read(pg_cluster: PostgresCluster,
                                                 adapter: AdapterName) -> None:
    with running_proxy(config_for(pg_cluster), adapter=adapter) as proxy:
        with client(proxy, pg_cluster) as raw:
            raw.send_bytes(startup_packet(pg_cluster, 10_000))
            raw.sock.settimeout(TIMEOUT)
            answer = raw.sock.recv(1)
        assert answer == b"R", answer  # AuthenticationOk (trust), not an error
        no_sessions_left(proxy)


def test_a_startup_packet_over_10000_bytes_is_hung_up_on(pg_cluster: PostgresCluster,
                                                         adapter: AdapterName) -> None:
    # PostgreSQL (ProcessStartupPacket) logs "invalid length of startup packet"
    # and closes without a word: so does the proxy, before reading the body.
    with running_proxy(config_for(pg_cluster), adapter=adapter) as proxy:
        with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
            sock.sendall(startup_packet(pg_cluster, 10_001)[:8])  # the length says it all
            assert read_all(sock) == b""
        no_sessions_left(proxy)
        assert proxy.proxy.stats.logins == 0


# -- max_message_size -------------------------------------------------------------------


def test_max_message_size_lets_the_limit_through_and_ends_the_next_with_54000(
        pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    limit = 4096
    sql = "select '" + "x" * (limit - 10) + "'"  # the body: limit bytes exactly
    with running_proxy(config_for(pg_cluster, max_message_size=limit),
                       adapter=adapter) as proxy:
        with client(proxy, pg_cluster) as raw:
            raw.login()
            assert errors(raw.query(sql)) == []
            raw.send(pw.Query(query=sql + "x"))
            events = raw.rest_of_stream()
        assert errors(events) == [("FATAL", "54000")]
        assert isinstance(events[-1], pw.ConnectionClosed)
        no_sessions_left(proxy)


# -- login_timeout ----------------------------------------------------------------------


def test_login_timeout_ends_a_login_left_halfway_with_08006(pg_cluster: PostgresCluster,
                                                            adapter: AdapterName) -> None:
    # A client that sent its startup packet and never answers the password
    # request. (A client that sends nothing is hung up on without a word:
    # tests/proxy/test_adapters.py.)
    auth = ProxyAuth(method="password", users={"alice": "secret"},
                     upstream_user=pg_cluster.superuser,
                     upstream_password=pg_cluster.superuser_password)
    config = config_for(pg_cluster, auth=auth, login_timeout=SHORT)
    with running_proxy(config, adapter=adapter) as proxy:
        with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
            sock.sendall(startup_packet(pg_cluster, 64, user="alice"))
            data = read_all(sock)
        sent = frames(data)
        assert [code for code, _ in sent] == [b"R", b"E"], sent  # the password request
        assert error_fields(sent[1][1])[:2] == ("FATAL", "08006")
        no_sessions_left(proxy)
        assert proxy.proxy.stats.login_timeouts == 1


# -- idle timeouts ----------------------------------------------------------------------


def test_idle_timeout_57P05(pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    with running_proxy(config_for(pg_cluster, idle_timeout=SHORT), adapter=adapter) as proxy:
        with client(proxy, pg_cluster) as raw:
            raw.login()
            events = raw.rest_of_stream()
        [error] = [e for e in events if isinstance(e, pw.ErrorResponse)]
        assert (error.severity, error.code, error.message) == (
            "FATAL", "57P05", "terminating connection due to idle-session timeout")
        no_sessions_left(proxy)


def test_idle_in_transaction_timeout_25P03(pg_cluster: PostgresCluster,
                                           adapter: AdapterName) -> None:
    config = config_for(pg_cluster, idle_in_transaction_timeout=SHORT)
    with running_proxy(config, adapter=adapter) as proxy:
        with client(proxy, pg_cluster) as raw:
            raw.login()
            assert errors(raw.query("begin")) == []
            events = raw.rest_of_stream()
        [error] = [e for e in events if isinstance(e, pw.ErrorResponse)]
        assert (error.severity, error.code, error.message) == (
            "FATAL", "25P03", "terminating connection due to idle-in-transaction timeout")
        no_sessions_left(proxy)


# -- upstream_read_timeout --------------------------------------------------------------


def test_upstream_read_timeout_ends_a_silent_server_with_08006(
        pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    marker = f"read timeout {adapter}"
    with running_proxy(config_for(pg_cluster, upstream_read_timeout=SHORT),
                       adapter=adapter) as proxy:
        with client(proxy, pg_cluster) as raw:
            raw.login()
            raw.send(pw.Query(query=f"select pg_sleep(60) /* {marker} */"))
            events = raw.rest_of_stream()
        [error] = [e for e in events if isinstance(e, pw.ErrorResponse)]
        assert (error.severity, error.code) == ("FATAL", "08006"), error
        assert "upstream_read_timeout" in error.message
        no_sessions_left(proxy)
        assert proxy.proxy.stats.upstream_read_timeouts == 1
    # The proxy closed its server link: the backend is told to stop, so it does
    # not sleep on for a minute holding a connection slot.
    with psycopg.connect(**pg_cluster.connect_kwargs(sslmode="disable"),
                         autocommit=True) as watcher:
        def backend_gone() -> bool:
            rows = watcher.execute("select pid from pg_stat_activity where query like %s "
                                   "and pid <> pg_backend_pid()", [f"%{marker}%"]).fetchall()
            for (pid,) in rows:  # pg_sleep notices a closed socket only when it ends
                watcher.execute("select pg_cancel_backend(%s)", [pid])
            return not rows

        wait_until(backend_gone, "the server's backend to end")


@pytest.mark.parametrize("pooled", [False, pytest.param(True, marks=pytest.mark.soak)],
                         ids=["direct", "pooled"])
def test_upstream_read_timeout_spares_a_server_the_proxy_stopped_reading(
        pg_cluster: PostgresCluster, adapter: AdapterName, pooled: bool) -> None:
    # The client stops reading a big result for longer than the timeout: the
    # proxy stops reading the server (back-pressure), whose silence then is not
    # the server's doing.
    options: dict[str, Any] = {"upstream_read_timeout": SHORT}
    if pooled:
        options |= {"auth": ProxyAuth(method="trust", upstream_user=pg_cluster.superuser,
                                      upstream_password=pg_cluster.superuser_password),
                    "pool": PoolConfig(mode="session", max_size=2)}
    marker = f"held, not silent {adapter} {pooled}"
    with running_proxy(config_for(pg_cluster, **options), adapter=adapter) as proxy, \
            client(proxy, pg_cluster) as raw, \
            psycopg.connect(**pg_cluster.connect_kwargs(sslmode="disable"),
                            autocommit=True) as watcher:
        raw.login()
        raw.send(pw.Query(query=f"select repeat('y', 4000) /* {marker} */ "
                                "from generate_series(1, 8000)"))
        wait_until(lambda: watcher.execute(
            "select wait_event from pg_stat_activity where query like %s "
            "and pid <> pg_backend_pid()", [f"%{marker}%"]).fetchall() == [("ClientWrite",)],
            "the server to wait for the proxy to read")
        time.sleep(SHORT * 4)  # the client reads nothing for four timeouts
        events = raw.events_until(lambda e: isinstance(e, pw.ReadyForQuery))
        assert errors(events) == []
        assert len([e for e in events if isinstance(e, pw.DataRow)]) == 8000
        assert raw.scalar("select 1") == "1"
        assert proxy.proxy.stats.upstream_read_timeouts == 0


# -- pipelining without reading -----------------------------------------------------------


QUERY = pw.Query(query="select 1").encode()
#: 1 MiB of pipelined queries.
PIPELINE_CHUNK = QUERY * (MiB // len(QUERY))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def pipeline_without_reading(sock: socket.socket, total: int, stall: float = 2.0,
                             chunk: bytes = PIPELINE_CHUNK) -> int:
    """Write up to ``total`` bytes of ``chunk`` over and over, reading nothing; stop
    when the proxy has read nothing for ``stall`` seconds. Returns the bytes written."""
    sock.setblocking(False)
    sent = 0
    view = memoryview(chunk)
    offset = 0
    while sent < total:
        _, writable, _ = select.select([], [sock], [], stall)
        if not writable:
            break  # the proxy stopped reading us
        try:
            count = sock.send(view[offset:])
        except BlockingIOError:
            continue
        sent += count
        offset = (offset + count) % len(chunk)
    return sent


def report(adapter: str, sent: int, grown: int, held: int | None = None) -> None:
    """The figures, for ``pytest -s`` (and the Reliability page)."""
    extra = f", {held} answers held" if held is not None else ""
    print(f"\n{adapter}: client wrote {sent / MiB:.1f} MiB before the proxy stopped "
          f"reading; RSS +{grown / MiB:.1f} MiB{extra}")


@contextlib.contextmanager
def logged_in_socket(proxy: RunningProxy, cluster: PostgresCluster) -> Iterator[socket.socket]:
    with client(proxy, cluster) as raw:
        raw.login()
        yield raw.sock


@pytest.mark.soak
def test_a_client_that_pipelines_100_mb_without_reading_holds_bounded_memory(
        pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    with running_proxy(config_for(pg_cluster), adapter=adapter) as proxy:
        with logged_in_socket(proxy, pg_cluster) as sock:
            before = rss_bytes()
            sent = pipeline_without_reading(sock, 100 * MiB)
            grown = rss_bytes() - before
        no_sessions_left(proxy)
    # The proxy stopped reading long before 100 MB (kernel buffers hold a few MB).
    report(adapter, sent, grown)
    assert sent < 40 * MiB, f"the proxy read {sent / MiB:.1f} MiB from a client that reads nothing"
    assert grown < 16 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"


class AnswersEverything(Middleware[None]):
    """Answers every query but the first itself, so nothing goes to the server."""

    client_messages = frozenset({b"Q"})

    def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        if isinstance(message, pw.Query) and message.query == "select 1":
            return Respond(pw.EmptyQueryResponse(),
                           pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))
        return None


@pytest.mark.soak
def test_answers_held_behind_a_long_query_are_bounded_by_max_pipeline(
        pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    # Answers a middleware makes wait for the server's earlier answer: without
    # max_pipeline the proxy would read on and hold them all, since neither
    # socket's queue fills.
    config = config_for(pg_cluster, middleware=[AnswersEverything], max_pipeline=1000)
    with running_proxy(config, adapter=adapter) as proxy:
        with logged_in_socket(proxy, pg_cluster) as sock:
            sock.sendall(pw.Query(query="select pg_sleep(3)").encode())
            before = rss_bytes()
            sent = pipeline_without_reading(sock, 100 * MiB, stall=1.0)
            grown = rss_bytes() - before
            [session] = proxy.proxy.sessions
            held = len(session._deferred)
        no_sessions_left(proxy)
    # One read past the limit at most (uvloop reads up to 256 KiB at a time).
    assert held <= 1000 + 256 * 1024 // len(QUERY), held
    report(adapter, sent, grown, held)
    assert sent < 40 * MiB, f"the proxy read {sent / MiB:.1f} MiB"
    assert grown < 16 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"


@pytest.mark.soak
def test_a_pooled_client_that_pipelines_without_reading_holds_bounded_memory(
        pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    auth = ProxyAuth(method="trust", upstream_user=pg_cluster.superuser,
                     upstream_password=pg_cluster.superuser_password)
    config = config_for(pg_cluster, auth=auth, pool=PoolConfig(mode="session", max_size=2))
    with running_proxy(config, adapter=adapter) as proxy, \
            logged_in_socket(proxy, pg_cluster) as sock:
        before = rss_bytes()
        sent = pipeline_without_reading(sock, 100 * MiB)
        grown = rss_bytes() - before
    report(f"{adapter} pooled", sent, grown)
    assert sent < 40 * MiB, f"the proxy read {sent / MiB:.1f} MiB from a client that reads nothing"
    assert grown < 16 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"



BIND_EXECUTE = (pw.Bind(portal="", statement="", parameter_formats=(), parameters=(),
                        result_formats=()).encode() + pw.Execute(portal="", max_rows=0).encode())
#: 1 MiB of Bind/Execute pairs of one extended-protocol batch that never ends in Sync.
UNSYNCED_CHUNK = BIND_EXECUTE * (MiB // len(BIND_EXECUTE))


@pytest.mark.soak
@pytest.mark.parametrize("pooled", [False, True], ids=["direct", "pooled"])
def test_a_client_that_pipelines_an_unsynced_batch_without_reading_holds_bounded_memory(
        pg_cluster: PostgresCluster, adapter: AdapterName, pooled: bool) -> None:
    # No Sync, so max_pipeline never counts these: only back-pressure bounds them.
    options: dict[str, Any] = {}
    if pooled:
        options = {"auth": ProxyAuth(method="trust", upstream_user=pg_cluster.superuser,
                                     upstream_password=pg_cluster.superuser_password),
                   "pool": PoolConfig(mode="session", max_size=2)}
    with running_proxy(config_for(pg_cluster, **options), adapter=adapter) as proxy, \
            logged_in_socket(proxy, pg_cluster) as sock:
        sock.sendall(pw.Parse(statement="", query="select 1", parameter_types=()).encode())
        before = rss_bytes()
        sent = pipeline_without_reading(sock, 100 * MiB, chunk=UNSYNCED_CHUNK)
        grown = rss_bytes() - before
    report(f"{adapter} {'pooled' if pooled else 'direct'} unsynced", sent, grown)
    assert sent < 40 * MiB, f"the proxy read {sent / MiB:.1f} MiB from a client that reads nothing"
    assert grown < 16 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"


@pytest.mark.parametrize("mode", ["session", pytest.param("transaction", marks=pytest.mark.soak)])
def test_a_pooled_slow_reader_holds_the_server_back(pg_cluster: PostgresCluster,
                                                    adapter: AdapterName, mode: str) -> None:
    # 32 MB the client does not read: the proxy must stop reading the pooled
    # server connection (which then waits in ClientWrite) rather than hold it
    # all, as it does for a connection of the client's own
    # (tests/proxy/test_adapters.py::test_slow_reader_holds_the_server_back).
    auth = ProxyAuth(method="trust", upstream_user=pg_cluster.superuser,
                     upstream_password=pg_cluster.superuser_password)
    config = config_for(pg_cluster, auth=auth, pool=PoolConfig(mode=mode, max_size=2))
    marker = f"pooled held back {adapter} {mode}"
    with running_proxy(config, adapter=adapter) as proxy, \
            client(proxy, pg_cluster) as raw, \
            psycopg.connect(**pg_cluster.connect_kwargs(sslmode="disable"),
                            autocommit=True) as watcher:
        raw.login()
        raw.send(pw.Query(query=f"select repeat('y', 4000) /* {marker} */ "
                                "from generate_series(1, 8000)"))

        def server_waits() -> bool:
            return watcher.execute(
                "select state, wait_event from pg_stat_activity where query like %s "
                "and pid <> pg_backend_pid()", [f"%{marker}%"]).fetchall() == [
                    ("active", "ClientWrite")]

        before = rss_bytes()
        wait_until(server_waits, "the server to wait for the proxy to read")
        # Still waiting a moment later: not a passing state while the proxy reads on.
        time.sleep(0.5)
        assert server_waits()
        grown = rss_bytes() - before
        events = raw.events_until(lambda e: isinstance(e, pw.ReadyForQuery))
        rows = [e for e in events if isinstance(e, pw.DataRow)]
        assert len(rows) == 8000 and errors(events) == []
        assert all(row.values == (b"y" * 4000,) for row in rows)
    assert grown < 16 * MiB, f"RSS grew by {grown / MiB:.1f} MiB"


# -- the audit queue --------------------------------------------------------------------


class OneAtATime(GateSink):
    """A sink that has fallen behind: holds its first write, one record per write."""

    batch_size = 1


def test_a_full_audit_queue_refuses_a_statement_with_53000_and_the_session_goes_on(
        pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    sink = OneAtATime()
    audit = Audit(sink, queue_size=4, when_full="reject", track_roles=False)
    try:
        config = config_for(pg_cluster, middleware=[audit])
        with running_proxy(config, adapter=adapter) as proxy, \
                client(proxy, pg_cluster) as raw:
            raw.login()
            assert sink.waiting.wait(TIMEOUT)
            refused: list[pw.ErrorResponse] = []
            for _ in range(20):
                found = [e for e in raw.query("select 1") if isinstance(e, pw.ErrorResponse)]
                if found:
                    refused = found
                    break
            [error] = refused
            assert (error.severity, error.code, error.message) == (
                "ERROR", "53000", "statement refused: the audit queue is full")
            sink.open()
            assert audit.flush(TIMEOUT)
            assert raw.scalar("select 2") == "2"  # the same session goes on
    finally:
        sink.open()
        audit.close()
    assert audit.stats.refused == 1

"""One suite for every proxy adapter: asyncio, Trio and threads must behave alike.

Each test runs once per adapter in :data:`pgwire.testing.proxy.ADAPTERS`
against the real PostgreSQL of the ``pg_cluster`` fixture. Drivers (psycopg)
show the everyday path works; a raw client built on
:class:`pgwire.client.ClientConnection` shows the exact errors and hang-ups
the proxy sends. Waits are bounded polls, never timing assertions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import pgwire as pw
from pgwire.client import ClientConnection
from pgwire.middleware.base import Context, JobOutcome, Middleware
from pgwire.proxy import ProxyConfig
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import ADAPTERS, AdapterName, RunningProxy, running_proxy

pytestmark = pytest.mark.parametrize("adapter", ADAPTERS)

#: Seconds any one socket operation or wait may take before the test fails.
TIMEOUT = 10.0
#: Short timeouts the proxy enforces in these tests (their length is never asserted).
SHORT = 0.5


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate``; fail the test if it is still false after TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what} after {TIMEOUT:g} s")
        time.sleep(0.01)


def config_for(cluster: PostgresCluster, **options: Any) -> ProxyConfig:
    return ProxyConfig(upstream=(cluster.host, cluster.port), **options)


def psycopg_connect(proxy: RunningProxy, cluster: PostgresCluster) -> psycopg.Connection[Any]:
    # autocommit: an idle client is outside a transaction, so shutdown ends it at once
    return psycopg.connect(**cluster.connect_kwargs(host=proxy.host, port=proxy.port,
                                                    sslmode="disable", connect_timeout=10),
                           autocommit=True)


def no_sessions_left(proxy: RunningProxy) -> None:
    wait_until(lambda: len(proxy.proxy) == 0, "every session to be forgotten")


def pgwire_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("pgwire")]


class RawClient:
    """A ClientConnection over a blocking socket, for exact wire-level checks."""

    def __init__(self, proxy: RunningProxy, cluster: PostgresCluster) -> None:
        self.sock = socket.create_connection(proxy.address, timeout=TIMEOUT)
        self.conn = ClientConnection(user=cluster.superuser, database="postgres",
                                     password=cluster.superuser_password, sslmode="disable")

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def next_event(self) -> pw.FrontendEvent:
        while True:
            event = self.conn.next_event()
            self.flush()
            if event is not pw.NEED_DATA:
                return event
            self.conn.receive_data(self.sock.recv(65536))

    def events_until(self, predicate: Callable[[pw.FrontendEvent], bool]
                     ) -> list[pw.FrontendEvent]:
        """Events up to the first matching ``predicate``, or to the end of the stream."""
        events: list[pw.FrontendEvent] = []
        while True:
            event = self.next_event()
            events.append(event)
            if predicate(event) or isinstance(event, pw.ConnectionClosed):
                return events

    def until_closed(self) -> list[pw.FrontendEvent]:
        return self.events_until(lambda _: False)

    def login(self) -> None:
        self.conn.start()
        self.flush()
        events = self.events_until(lambda e: isinstance(e, pw.ReadyForQuery))
        assert isinstance(events[-1], pw.ReadyForQuery), events

    def query(self, sql: str) -> list[pw.FrontendEvent]:
        self.conn.send(pw.Query(query=sql))
        self.flush()
        return self.events_until(lambda e: isinstance(e, pw.ReadyForQuery))


@contextlib.contextmanager
def raw_client(proxy: RunningProxy, cluster: PostgresCluster) -> Iterator[RawClient]:
    client = RawClient(proxy, cluster)
    try:
        yield client
    finally:
        client.close()


def errors(events: list[pw.FrontendEvent]) -> list[tuple[str, str]]:
    return [(e.severity, e.code) for e in events if isinstance(e, pw.ErrorResponse)]


def test_psycopg_query(pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    with running_proxy(config_for(pg_cluster), adapter=adapter) as proxy:
        with psycopg_connect(proxy, pg_cluster) as conn:
            row = conn.execute("select current_user, 1 + 1, %s::text", ["ok"]).fetchone()
            assert row == (pg_cluster.superuser, 2, "ok")
            assert len(proxy.proxy) == 1
        no_sessions_left(proxy)
        assert proxy.proxy.stats.logins == 1


def test_large_result(pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    with running_proxy(config_for(pg_cluster), adapter=adapter) as proxy:
        with psycopg_connect(proxy, pg_cluster) as conn:
            rows = conn.execute("select g, repeat('x', 40) from generate_series(1, 100000) g"
                                ).fetchall()
        assert len(rows) == 100_000
        assert rows[0] == (1, "x" * 40) and rows[-1] == (100_000, "x" * 40)
        no_sessions_left(proxy)


def test_slow_reader_holds_the_server_back(pg_cluster: PostgresCluster,
                                           adapter: AdapterName) -> None:
    # 80 MB the client does not read: the proxy must stop reading the server
    # (which then waits in ClientWrite) rather than hold it all, then relay
    # everything intact once the client reads.
    with running_proxy(config_for(pg_cluster), adapter=adapter) as proxy, \
            raw_client(proxy, pg_cluster) as client, \
            psycopg.connect(**pg_cluster.connect_kwargs(sslmode="disable"),
                            autocommit=True) as watcher:
        client.login()
        marker = f"held back {adapter}"
        client.conn.send(pw.Query(query=f"select repeat('y', 4000) /* {marker} */ "
                                        "from generate_series(1, 20000)"))
        client.flush()
        def server_waits() -> bool:
            return watcher.execute(
                "select state, wait_event from pg_stat_activity where query like %s "
                "and pid <> pg_backend_pid()", [f"%{marker}%"]).fetchall() == [
                    ("active", "ClientWrite")]

        wait_until(server_waits, "the server to wait for the proxy to read")
        # Still waiting a moment later: not a passing state while the proxy reads
        # on (without backpressure it would have taken all 80 MB by now).
        time.sleep(0.5)
        assert server_waits()
        events = client.events_until(lambda e: isinstance(e, pw.ReadyForQuery))
        rows = [e for e in events if isinstance(e, pw.DataRow)]
        assert len(rows) == 20000
        assert all(row.values == (b"y" * 4000,) for row in rows)
        assert errors(events) == []


def test_garbage_gets_08P01_and_close(pg_cluster: PostgresCluster,
                                      adapter: AdapterName) -> None:
    with running_proxy(config_for(pg_cluster), adapter=adapter) as proxy:
        with raw_client(proxy, pg_cluster) as client:
            client.login()
            client.sock.sendall(b"\x01\x00\x00\x00\x08garbage!")  # no such message type
            events = client.until_closed()
        assert errors(events) == [("FATAL", "08P01")]
        assert isinstance(events[-1], pw.ConnectionClosed)
        no_sessions_left(proxy)
        assert proxy.proxy.stats.client_protocol_errors == 1


def test_login_timeout_closes_silent_client(pg_cluster: PostgresCluster,
                                            adapter: AdapterName) -> None:
    with running_proxy(config_for(pg_cluster, login_timeout=SHORT), adapter=adapter) as proxy:
        with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
            # Nothing is sent, so there is no startup to answer: just the hang-up.
            assert sock.recv(1024) == b""
        no_sessions_left(proxy)
        assert proxy.proxy.stats.login_timeouts == 1


def test_idle_timeout_ends_session_with_57P05(pg_cluster: PostgresCluster,
                                              adapter: AdapterName) -> None:
    with running_proxy(config_for(pg_cluster, idle_timeout=SHORT), adapter=adapter) as proxy:
        with raw_client(proxy, pg_cluster) as client:
            client.login()
            assert errors(client.query("select 1")) == []
            events = client.until_closed()
        assert errors(events) == [("FATAL", "57P05")]
        no_sessions_left(proxy)


def test_shutdown_ends_idle_client_with_57P01(pg_cluster: PostgresCluster,
                                              adapter: AdapterName) -> None:
    with running_proxy(config_for(pg_cluster), adapter=adapter) as proxy:
        client = RawClient(proxy, pg_cluster)
        client.login()
    # The proxy is down; the client reads what it was sent before the close.
    try:
        events = client.until_closed()
    finally:
        client.close()
    assert errors(events) == [("FATAL", "57P01")]
    assert len(proxy.proxy) == 0


def test_shutdown_waits_for_transaction_then_57P01(pg_cluster: PostgresCluster,
                                                   adapter: AdapterName) -> None:
    stack = contextlib.ExitStack()
    proxy = stack.enter_context(running_proxy(config_for(pg_cluster), adapter=adapter))
    with raw_client(proxy, pg_cluster) as busy, raw_client(proxy, pg_cluster) as idle:
        busy.login()
        idle.login()
        assert errors(busy.query("begin")) == []
        stopper = threading.Thread(target=stack.close)
        stopper.start()
        try:
            wait_until(lambda: proxy.proxy.shutting_down, "the shutdown to begin")
            assert errors(idle.until_closed()) == [("FATAL", "57P01")]
            # The transaction may finish; the session ends right after it.
            commit = busy.query("commit")
            assert errors(commit) == []
            assert errors(busy.until_closed()) == [("FATAL", "57P01")]
        finally:
            stopper.join(TIMEOUT)
        assert not stopper.is_alive()
    assert len(proxy.proxy) == 0


def test_upstream_refused_gives_08006(pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        closed_port = placeholder.getsockname()[1]
    config = ProxyConfig(upstream=("127.0.0.1", closed_port))
    with running_proxy(config, adapter=adapter) as proxy:
        with raw_client(proxy, pg_cluster) as client:
            client.conn.start()
            client.flush()
            events = client.until_closed()
        assert errors(events) == [("FATAL", "08006")]
        no_sessions_left(proxy)
        assert proxy.proxy.stats.upstream_connect_failures == 1


def test_cancel_reaches_the_server(pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    with running_proxy(config_for(pg_cluster), adapter=adapter) as proxy:
        with psycopg_connect(proxy, pg_cluster) as conn, \
                psycopg.connect(**pg_cluster.connect_kwargs(sslmode="disable")) as watcher:
            watcher.autocommit = True
            failure: list[BaseException] = []

            def sleep() -> None:
                try:
                    conn.execute(f"select pg_sleep(30) /* cancel me {adapter} */")
                except BaseException as exc:
                    failure.append(exc)

            sleeper = threading.Thread(target=sleep)
            sleeper.start()
            try:
                wait_until(lambda: watcher.execute(
                    "select count(*) from pg_stat_activity where state = 'active' "
                    "and query like %s and pid <> pg_backend_pid()", [f"%cancel me {adapter}%"]
                ).fetchone() == (1,), "the query to run")
                # cancel() holds the GIL while libpq waits, which would freeze the
                # proxy's thread in this same process; cancel_safe() does not.
                conn.cancel_safe(timeout=TIMEOUT)
            finally:
                sleeper.join(TIMEOUT)
            assert [type(exc) for exc in failure] == [psycopg.errors.QueryCanceled]
            assert conn.execute("select 1").fetchone() == (1,)
        no_sessions_left(proxy)
        assert proxy.proxy.stats.cancel_requests == 1


@contextlib.contextmanager
def cancellable_sleep(pg_cluster: PostgresCluster, adapter: AdapterName,
                      marker: str) -> Iterator[tuple[RunningProxy, bytes]]:
    """A proxy with one client running ``pg_sleep``: yields the proxy and the
    CancelRequest for that client's key. After the block the sleep must have
    ended in 57014 and the cancel's session be gone."""
    with running_proxy(config_for(pg_cluster), adapter=adapter) as proxy, \
            raw_client(proxy, pg_cluster) as client, \
            psycopg.connect(**pg_cluster.connect_kwargs(sslmode="disable"),
                            autocommit=True) as watcher:
        client.login()
        client.conn.send(pw.Query(query=f"select pg_sleep(30) /* {marker} {adapter} */"))
        client.flush()
        wait_until(lambda: watcher.execute(
            "select count(*) from pg_stat_activity where state = 'active' "
            "and query like %s and pid <> pg_backend_pid()", [f"%{marker} {adapter}%"]
        ).fetchone() == (1,), "the query to run")
        key = client.conn.frontend.backend_key
        assert key is not None
        yield proxy, pw.CancelRequest(process_id=key[0], secret_key=key[1]).encode()
        events = client.events_until(lambda e: isinstance(e, pw.ReadyForQuery))
        assert errors(events) == [("ERROR", "57014")]
        wait_until(lambda: len(proxy.proxy) == 1, "the cancel's session to end")


def test_cancel_from_a_client_that_hangs_up_at_once(pg_cluster: PostgresCluster,
                                                    adapter: AdapterName) -> None:
    # The CancelRequest's connection closes right after the request (no wait for
    # the proxy's close, unlike libpq): the cancel must still reach the server.
    with cancellable_sleep(pg_cluster, adapter, "hang-up cancel") as (proxy, request), \
            socket.create_connection(proxy.address, timeout=TIMEOUT) as canceller:
        canceller.sendall(request)


def test_a_cancel_is_closed_only_after_the_server_acted_on_it(
        pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    # PostgreSQL signals a cancelled backend twice (the process, then its process
    # group) and closes the cancel connection after both. A client that waits for
    # the close, as libpq does, may then send its next statement safely; closing
    # it before the server is done would let the late signal cancel that one.
    # The postmaster is paused, so the server sits on the request.
    postmaster = int((pg_cluster.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    with cancellable_sleep(pg_cluster, adapter, "cancel waits") as (proxy, request), \
            socket.create_connection(proxy.address, timeout=TIMEOUT) as canceller:
        os.kill(postmaster, signal.SIGSTOP)
        try:
            canceller.sendall(request)
            canceller.settimeout(0.5)
            with pytest.raises(TimeoutError):
                canceller.recv(1)  # still open: the server has not acted yet
        finally:
            os.kill(postmaster, signal.SIGCONT)
        canceller.settimeout(TIMEOUT)
        assert canceller.recv(1) == b""


class _JobNotice(Middleware[None]):
    """Runs a job for every Query and tells the client where it ran."""

    client_messages = frozenset({b"Q"})

    def on_client_message(self, ctx: Context[None], message: pw.Message) -> None:
        hook_thread = threading.current_thread().name

        def report(outcome: JobOutcome) -> None:
            ctx.send_to_client(pw.NoticeResponse(
                severity="NOTICE", code="00000",
                message=f"job {outcome.value} hook {hook_thread}"))

        assert ctx.submit(lambda: threading.current_thread().name, report)


def test_middleware_job_runs_off_the_data_path(pg_cluster: PostgresCluster,
                                               adapter: AdapterName) -> None:
    config = config_for(pg_cluster, middleware=[_JobNotice])
    with running_proxy(config, adapter=adapter) as proxy, \
            raw_client(proxy, pg_cluster) as client:
        client.login()
        client.conn.send(pw.Query(query="select 1"))
        client.flush()
        events = client.events_until(lambda e: isinstance(e, pw.NoticeResponse))
        notice = events[-1]
        assert isinstance(notice, pw.NoticeResponse), events
        _, job_thread, _, hook_thread = notice.message.split(" ", 3)
        assert job_thread != hook_thread


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_no_sockets_or_threads_left(pg_cluster: PostgresCluster, adapter: AdapterName) -> None:
    with running_proxy(config_for(pg_cluster), adapter=adapter):
        pass  # first use may open process-wide descriptors (uvloop's), kept for good
    before = set(pgwire_threads())
    fds = open_fds()
    with running_proxy(config_for(pg_cluster), adapter=adapter) as proxy:
        connections = [psycopg_connect(proxy, pg_cluster) for _ in range(3)]
        for conn in connections:
            assert conn.execute("select 1").fetchone() == (1,)
        connections[0].close()
        with socket.create_connection(proxy.address, timeout=TIMEOUT):
            pass  # a client that leaves before saying anything
        with socket.create_connection(proxy.address, timeout=TIMEOUT) as rude:
            rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_until(lambda: len(proxy.proxy) == 2, "the departed clients' sessions to end")
    for conn in connections[1:]:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
        conn.close()
    assert len(proxy.proxy) == 0
    wait_until(lambda: set(pgwire_threads()) <= before, "the proxy's threads to end")
    wait_until(lambda: open_fds() <= fds, "the proxy's sockets to close")

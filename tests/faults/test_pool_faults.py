"""Faults with the pool on: pooled server connections die under the proxy.

The proxy checks each client itself (``[auth] mode = "proxy"``, the cluster
superuser's password in ``[auth.users]``) and logs in upstream with that
password, so its server connections outlive the clients and are reused. A
pool of one (``max_size = 1``) makes the next client of a key get the very
connection the last one used, if the pool still has it.

The faults: the backend of an idle pooled connection SIGKILLed (PostgreSQL
then resets every session, idle pooled connections of other keys included);
the backend killed while a client holds its connection in a transaction; the
server stopped and started; logins while the server is down; a client reset
in the middle of a transaction. After each, the next client must get a
working connection, outside any old transaction, without a proxy restart.

What the proxy must come back to: no session, no more threads nor non-server
fds than after its warm-up, and as server sockets exactly the connections its
pool reports (``pgwire_pool_servers``), each ESTABLISHED: a dead connection
the pool kept would show as CLOSE_WAIT. Then it must stop with 0 on SIGTERM
and its audit file verify.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster

from .toolkit import (
    Client,
    Forwarder,
    FullBacklog,
    ProxyProcess,
    Quiet,
    abort,
    backend_pids,
    check_audit,
    direct,
    errors_of,
    kill_backend,
    pool_metric,
    start_cluster,
    stop_cluster,
    upstream_sockets,
    wait_until,
)

pytestmark = pytest.mark.fault

MODES = ("session", "transaction")
TABLE = "pool_fault_items"
APP = "pool-fault"


def pool_toml(cluster: PostgresCluster, mode: str, **pool: object) -> str:
    settings = {"mode": f'"{mode}"', "max_size": 1, "checkout_timeout": 10, **pool}
    text = "[limits]\nshutdown_timeout = 2\nconnect_timeout = 3\n"
    text += '[auth]\nmode = "proxy"\nmethod = "scram-sha-256"\n[auth.users]\n'
    text += f'{cluster.superuser} = "{cluster.superuser_password}"\n[pool]\n'
    text += "".join(f"{key} = {value}\n" for key, value in settings.items())
    return text


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def start_pool_proxy(adapter: str, cluster: PostgresCluster, directory: Path, mode: str,
                     **pool: object) -> ProxyProcess:
    return ProxyProcess(adapter, (cluster.host, cluster.port), directory,
                        toml=pool_toml(cluster, mode, **pool))


@pytest.fixture
def pooled(adapter: str, cluster: PostgresCluster, tmp_path: Path,
           mode: str) -> Iterator[ProxyProcess]:
    """A pooling proxy (``mode``, one connection per key) in front of the file's cluster."""
    with start_pool_proxy(adapter, cluster, tmp_path, mode) as running:
        yield running


@pytest.fixture
def table(cluster: PostgresCluster) -> str:
    cluster.sql(f"drop table if exists {TABLE}; create table {TABLE} (n int);"
                f"insert into {TABLE} values (1)")
    return TABLE


def pool_baseline(proxy: ProxyProcess, cluster: PostgresCluster) -> Quiet:
    """The idle counts after one ordinary session (whose server connection the
    pool keeps: it is counted apart, see `assert_pool_back_to`)."""
    return proxy.warm_up(cluster)


def _not_server(fds: list[str], port: int) -> list[str]:
    return [fd for fd in fds if f"->127.0.0.1:{port} " not in fd]


def assert_pool_back_to(proxy: ProxyProcess, baseline: Quiet, cluster: PostgresCluster,
                        port: int | None = None) -> None:
    """No session left, no more threads nor other fds than ``baseline``, and the
    server sockets (to ``port``, the cluster's by default) are the pool's live
    connections, no more."""
    port = cluster.port if port is None else port
    others = len(_not_server(baseline.fds, port))

    def settled() -> bool:
        fds = proxy.fd_targets()
        servers = upstream_sockets(proxy, port)
        return (proxy.sessions() == 0 and proxy.threads() <= baseline.threads
                and len(_not_server(fds, port)) <= others
                and len(servers) == pool_metric(proxy, "servers")
                and all(s.endswith(" ESTABLISHED") for s in servers))

    try:
        wait_until(settled, "the proxy to be back to its baseline")
    except pytest.fail.Exception:
        pytest.fail(f"not back to baseline: sessions {proxy.sessions()}, threads "
                    f"{proxy.threads()} (baseline {baseline.threads}), fds "
                    f"{proxy.fd_targets()} (baseline {baseline.fds}), pool servers "
                    f"{pool_metric(proxy, 'servers')}\n{proxy.stderr()[-3000:]}")


def finish(proxy: ProxyProcess) -> None:
    assert proxy.stop() == 0, proxy.stderr()
    check_audit(proxy.audit_records())


def works(proxy: ProxyProcess, cluster: PostgresCluster, application_name: str = APP) -> int:
    """A new client logs in, finds no transaction open, runs a query; its backend pid."""
    with Client(proxy.address, cluster, application_name) as client:
        events = client.login()
        assert events[-1] == pw.ReadyForQuery(status=pw.TransactionStatus.IDLE), events
        pid = int(client.scalar("select pg_backend_pid()"))
        client.send(pw.Terminate())
        assert client.rest_of_stream() == [pw.ConnectionClosed()]
    return pid


def login_and_query(client: Client, sql: str) -> list[pw.FrontendEvent]:
    """Log in and, if that worked, run ``sql``: the events up to the query's
    ReadyForQuery, or up to the end of the stream when an error ends it first."""
    client.begin_login()
    events = client.events_until(
        lambda e: isinstance(e, (pw.ErrorResponse, pw.ReadyForQuery)))
    if isinstance(events[-1], pw.ReadyForQuery):
        client.send(pw.Query(query=sql))
        events += client.events_until(lambda e: isinstance(e, pw.ReadyForQuery))
    return events


def idle_pooled_backend(proxy: ProxyProcess, cluster: PostgresCluster) -> int:
    """Use the pool once and leave: the backend pid of the connection it keeps."""
    pid = works(proxy, cluster)
    wait_until(lambda: backend_pids(cluster, APP) == [pid]
               and pool_metric(proxy, "servers") >= 1, "the connection to be back in the pool")
    return pid


# -- an idle pooled connection's backend dies ---------------------------------------------


def end_backend(cluster: PostgresCluster, pid: int, how: str) -> None:
    """``sigkill`` the backend (the server then resets every session and
    recovers) or ``terminate`` it (``pg_terminate_backend``: FATAL 57P01 on
    that connection alone)."""
    if how == "sigkill":
        kill_backend(cluster, pid)
        return
    with direct(cluster) as conn:
        conn.execute("select pg_terminate_backend(%s, 10000)", [pid])


#: How the idle connection's backend ends, with the pool's health_check_after.
ENDINGS = [("sigkill", 30), ("terminate", 0.01)]


@pytest.mark.parametrize("ending", ENDINGS, ids=[f"{h}-{c:g}" for h, c in ENDINGS])
def test_idle_pooled_backend_killed(adapter: str, cluster: PostgresCluster, tmp_path: Path,
                                    mode: str, ending: tuple[str, float]) -> None:
    how, health_check_after = ending
    with start_pool_proxy(adapter, cluster, tmp_path, mode,
                          health_check_after=health_check_after) as proxy:
        baseline = pool_baseline(proxy, cluster)
        dead = idle_pooled_backend(proxy, cluster)
        closed = pool_metric(proxy, "servers_closed_total")
        end_backend(cluster, dead, how)
        # The next client of the key gets a working connection, not the dead one.
        assert works(proxy, cluster) != dead
        assert pool_metric(proxy, "servers_closed_total") > closed
        assert_pool_back_to(proxy, baseline, cluster)
        finish(proxy)


def test_backend_ended_between_transactions(pooled: ProxyProcess, cluster: PostgresCluster,
                                            mode: str) -> None:
    """The client stays connected while its backend is terminated
    (``pg_terminate_backend``; the SIGKILL case is `test_idle_pooled_backend_killed`)
    between two of its transactions. In session mode it holds that
    connection: FATAL 57P01, as on a direct connection. In transaction mode
    the connection was back in the pool, which closes it when it ends: the
    client's next transaction runs on a new one."""
    baseline = pool_baseline(pooled, cluster)
    with Client(pooled.address, cluster, APP) as client:
        client.login()
        dead = int(client.scalar("select pg_backend_pid()"))
        closed = pool_metric(pooled, "servers_closed_total")
        end_backend(cluster, dead, "terminate")
        if mode == "session":
            events = client.rest_of_stream()
            assert [(e.severity, e.sqlstate) for e in errors_of(events)] == [
                ("FATAL", "57P01")], events
        else:
            wait_until(lambda: pool_metric(pooled, "servers_closed_total") > closed,
                       "the pool to close the dead connection")
            assert int(client.scalar("select pg_backend_pid()")) != dead
            client.send(pw.Terminate())
            assert client.rest_of_stream() == [pw.ConnectionClosed()]
    assert_pool_back_to(pooled, baseline, cluster)
    finish(pooled)


# -- a held connection's backend dies mid-transaction ------------------------------------


def test_backend_killed_mid_transaction(pooled: ProxyProcess, cluster: PostgresCluster,
                                        table: str) -> None:
    baseline = pool_baseline(pooled, cluster)
    with Client(pooled.address, cluster, APP) as client:
        client.login()
        client.query("begin")
        events = client.query(f"update {table} set n = n + 1")
        assert events[-1] == pw.ReadyForQuery(status=pw.TransactionStatus.IN_TRANSACTION)
        [victim] = backend_pids(cluster, APP)
        kill_backend(cluster, victim)
        events = client.rest_of_stream()
        assert client.closed
    errors = errors_of(events)
    assert [(e.severity, e.sqlstate) for e in errors] == [("FATAL", "08006")], events
    after = works(pooled, cluster)
    assert after != victim
    with direct(cluster) as conn:  # the killed transaction never committed
        assert conn.execute(f"select n from {table}").fetchall() == [(1,)]
    assert_pool_back_to(pooled, baseline, cluster)
    finish(pooled)


# -- the server restarts -----------------------------------------------------------------


def test_server_restart_drops_idle_pooled_connections(pooled: ProxyProcess,
                                                      cluster: PostgresCluster) -> None:
    baseline = pool_baseline(pooled, cluster)
    keys = [f"{APP}-{n}" for n in range(3)]
    before = {key: works(pooled, cluster, key) for key in keys}
    wait_until(lambda: pool_metric(pooled, "servers") >= len(keys) + 1,
               "the pool to keep a connection per key")
    opened = pool_metric(pooled, "servers_opened_total")
    closed = pool_metric(pooled, "servers_closed_total")
    stop_cluster(cluster)
    start_cluster(cluster)
    after = {key: works(pooled, cluster, key) for key in keys}
    assert all(after[key] != before[key] for key in keys), (before, after)
    # Every idle connection (the warm-up's too, once it is checked out or
    # noticed) was closed; one new connection per key used since was opened.
    # Every idle connection, the warm-up's too, was closed (the pool watches
    # its idle connections); one new connection per key used since was
    # opened; none failed a login or a verification.
    wait_until(lambda: pool_metric(pooled, "servers") == len(keys),
               "the pool to keep only the new connections")
    assert pool_metric(pooled, "servers_closed_total") - closed == len(keys) + 1
    assert pool_metric(pooled, "servers_opened_total") - opened == len(keys)
    assert pool_metric(pooled, "login_failures_total") == 0
    assert pool_metric(pooled, "failed_verifications_total") == 0
    assert_pool_back_to(pooled, baseline, cluster)
    finish(pooled)


# -- the server is down at checkout ------------------------------------------------------


def test_checkout_while_the_server_is_down(pooled: ProxyProcess, cluster: PostgresCluster,
                                           mode: str) -> None:
    baseline = pool_baseline(pooled, cluster)
    idle_pooled_backend(pooled, cluster)
    stop_cluster(cluster)
    failures = []
    for _ in range(2):  # the pool's dead connection, then a connect that is refused
        with Client(pooled.address, cluster, APP) as client:
            events = login_and_query(client, "select 1")
            events += client.rest_of_stream()
            failures.append(events)
            assert client.closed, events
    for events in failures:
        assert [(e.severity, e.sqlstate) for e in errors_of(events)] == [("FATAL", "08006")], \
            (mode, failures)
    start_cluster(cluster)
    works(pooled, cluster)
    assert_pool_back_to(pooled, baseline, cluster)
    finish(pooled)


def test_checkout_while_the_server_does_not_answer(adapter: str, cluster: PostgresCluster,
                                                   tmp_path: Path) -> None:
    """The server's address takes no connection (its accept queue is full):
    the pool's connect gives up after ``connect_timeout`` (1 s) and the client
    gets 08006 for it, not 53300 at the end of its ``checkout_timeout`` (10 s)."""
    toml = pool_toml(cluster, "transaction").replace("connect_timeout = 3", "connect_timeout = 1")
    with FullBacklog() as silent, ProxyProcess(adapter, silent.address, tmp_path, audit=False,
                                               toml=toml) as proxy:
        baseline = proxy.quiet()
        with Client(proxy.address, cluster, APP) as client:
            events = login_and_query(client, "select 1")
            events += client.rest_of_stream()
        assert [(e.severity, e.sqlstate) for e in errors_of(events)] == [("FATAL", "08006")], \
            events
        assert pool_metric(proxy, "checkout_timeouts_total") == 0
        assert_pool_back_to(proxy, baseline, cluster, silent.address[1])


# -- the client vanishes mid-transaction ----------------------------------------------------


def test_client_vanishes_mid_transaction(pooled: ProxyProcess, cluster: PostgresCluster,
                                         table: str) -> None:
    """A client resets its connection (RST) inside a transaction holding a row
    lock. With a pool of one, the next client of the key gets that server
    connection rolled back (or a new one): transaction status I at login, the
    row unlocked and unchanged."""
    baseline = pool_baseline(pooled, cluster)
    with Client(pooled.address, cluster, APP) as client:
        client.login()
        client.query("begin")
        client.query(f"update {table} set n = n + 1")
        wait_until(lambda: len(backend_pids(cluster, APP)) == 1, "the transaction upstream")
        abort(client.sock)
    with Client(pooled.address, cluster, APP) as after:
        events = after.login()
        assert events[-1] == pw.ReadyForQuery(status=pw.TransactionStatus.IDLE), events
        # The old row lock is gone: the update does not wait (lock_timeout
        # would fail it with 55P03), and the old update never committed.
        after.query("begin")
        after.query("set local lock_timeout = '5s'")
        events = after.query(f"update {table} set n = n + 10 returning n")
        assert not errors_of(events), events
        assert [r.values for r in events if isinstance(r, pw.DataRow)] == [(b"11",)], events
        assert after.query("rollback")[-1] == pw.ReadyForQuery(
            status=pw.TransactionStatus.IDLE)
        after.send(pw.Terminate())
        after.rest_of_stream()
    assert_pool_back_to(pooled, baseline, cluster)
    finish(pooled)


# -- the network to the server black-holes under a pooled connection --------------------


@pytest.mark.parametrize("stage", ["verification", "login"])
def test_black_holed_pooled_connection_is_given_up(adapter: str, cluster: PostgresCluster,
                                                   tmp_path: Path, stage: str) -> None:
    """The link to the server swallows everything without closing, while the
    pool verifies an idle connection before handing it out (``verification``)
    or logs a new one in (``login``). The pool must give that connection up
    rather than keep it in that state forever: once the network is back, the
    next client of the key must work.

    Every bound a fix could reuse is shorter than the first client's wait
    (``checkout_timeout`` 3 s): ``upstream_read_timeout`` 1 s for the
    verification's answer, ``connect_timeout`` 1 s and ``login_timeout`` 2 s
    for the login."""
    with Forwarder((cluster.host, cluster.port)) as forwarder:
        toml = pool_toml(cluster, "transaction", health_check_after=0.01, checkout_timeout=3)
        toml = toml.replace("connect_timeout = 3\n", "connect_timeout = 1\n"
                            "upstream_read_timeout = 1\nlogin_timeout = 2\n")
        with ProxyProcess(adapter, forwarder.address, tmp_path, toml=toml) as proxy:
            baseline = pool_baseline(proxy, cluster)
            if stage == "verification":
                idle_pooled_backend(proxy, cluster)
            forwarder.black_hole()
            with Client(proxy.address, cluster, APP) as client:
                events = login_and_query(client, "select 1")
                events += client.rest_of_stream()
            assert [(e.severity, e.sqlstate in {"08006", "53300"})
                    for e in errors_of(events)] == [("FATAL", True)], events
            forwarder.swallowing.clear()
            with Client(proxy.address, cluster, APP) as client:
                events = login_and_query(client, "select 'back'")
                assert not errors_of(events), (
                    events, f"servers {pool_metric(proxy, 'servers')}, checking "
                    f"{_servers_in(proxy, 'checking')}, login/connecting "
                    f"{_servers_in(proxy, 'connecting')}")
                client.send(pw.Terminate())
                client.rest_of_stream()
            assert_pool_back_to(proxy, baseline, cluster, forwarder.address[1])
            finish(proxy)


def _servers_in(proxy: ProxyProcess, state: str) -> int:
    return int(sum(float(v) for v in re.findall(
        rf'^pgwire_pool_servers\{{[^}}]*state="{state}"\}} (\S+)$', proxy.metrics(), re.M)))

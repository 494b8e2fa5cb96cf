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

from pathlib import Path

import pytest

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster

from .pool_rig import (
    APP,
    assert_pool_back_to,
    end_backend,
    finish,
    idle_pooled_backend,
    pool_baseline,
    start_pool_proxy,
    works,
)
from .toolkit import (
    Client,
    ProxyProcess,
    backend_pids,
    direct,
    errors_of,
    kill_backend,
    pool_metric,
    start_cluster,
    stop_cluster,
    wait_until,
)

pytestmark = pytest.mark.fault


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

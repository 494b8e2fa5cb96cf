"""Faults with the pool on, on the network side: a server that is down, does not
accept, or goes silent during the pool's own check or login; a client that
resets mid-transaction. Set-up and checks as in ``test_pool_faults.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster

from .pool_rig import (
    APP,
    assert_pool_back_to,
    finish,
    idle_pooled_backend,
    login_and_query,
    pool_baseline,
    pool_toml,
    works,
)
from .toolkit import (
    Client,
    Forwarder,
    FullBacklog,
    ProxyProcess,
    abort,
    backend_pids,
    errors_of,
    pool_metric,
    start_cluster,
    stop_cluster,
    wait_until,
)

pytestmark = pytest.mark.fault


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

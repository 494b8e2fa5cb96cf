"""The network to the server swallows packets: connects hang, or answers never come.

Connect: the upstream address is a listening socket whose accept queue is
full, so the kernel drops the proxy's SYN and its connect hangs; the proxy's
``limits.connect_timeout`` must end the login with FATAL 08006.

Read: a forwarder between the proxy and PostgreSQL starts swallowing bytes
without closing anything. With ``limits.upstream_read_timeout`` (seconds the
proxy waits for server bytes while it owes the client an answer) the client
must get FATAL 08006 and the proxy must close the dead link; without it, a
client that gives up and hangs up must still take the link down with it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster

from .toolkit import (
    Client,
    Forwarder,
    FullBacklog,
    ProxyProcess,
    check_audit,
    outcome,
    wait_until,
)

pytestmark = pytest.mark.fault

FAULT_TIMEOUT = 1


def login_refused(proxy: ProxyProcess, cluster: PostgresCluster, name: str) -> list[object]:
    with Client(proxy.address, cluster, name) as client:
        client.begin_login()
        events: list[object] = list(client.rest_of_stream())
        return events


def test_connect_timeout_fires_when_connects_hang(adapter: str, cluster: PostgresCluster,
                                                  tmp_path: Path) -> None:
    with FullBacklog() as black_hole, ProxyProcess(
            adapter, black_hole.address, tmp_path,
            toml=f"[limits]\nconnect_timeout = {FAULT_TIMEOUT}\nshutdown_timeout = 2\n",
    ) as proxy:
        first = login_refused(proxy, cluster, "hole-first")
        baseline = proxy.quiet(disconnects=1)
        results: list[list[object]] = []
        clients = [threading.Thread(target=lambda i=i: results.append(
            login_refused(proxy, cluster, f"hole-{i}"))) for i in range(3)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(30)
        assert len(results) == 3
        for events in [first, *results]:
            assert [(e.severity, e.sqlstate) for e in events
                    if isinstance(e, pw.ErrorResponse)] == [("FATAL", "08006")], events
            assert events[-1] == pw.ConnectionClosed()
        proxy.assert_back_to(baseline)
        assert proxy.counter("upstream_connect_failures") == 4
        assert proxy.stop() == 0
    check_audit(proxy.audit_records())


def test_read_timeout_fires_when_the_server_goes_silent(adapter: str, cluster: PostgresCluster,
                                                         tmp_path: Path) -> None:
    with Forwarder((cluster.host, cluster.port)) as forwarder, ProxyProcess(
            adapter, forwarder.address, tmp_path,
            toml=f"[limits]\nupstream_read_timeout = {FAULT_TIMEOUT}\nshutdown_timeout = 2\n",
    ) as proxy:
        baseline = proxy.warm_up(cluster)
        with Client(proxy.address, cluster, "silent") as client:
            client.login()
            forwarder.black_hole()
            client.send(pw.Query(query="select 'never answered'"))
            events = client.rest_of_stream()
        assert [(e.severity, e.sqlstate) for e in events
                if isinstance(e, pw.ErrorResponse)] == [("FATAL", "08006")], events
        proxy.assert_back_to(baseline)
        wait_until(lambda: forwarder.open_links() == 0, "the proxy to close the dead link")
        assert proxy.stop() == 0
    records = proxy.audit_records()
    check_audit(records)
    assert outcome(records, "select 'never answered'")["status"] in ("unfinished", "error")


def test_a_client_that_gives_up_on_a_silent_server_takes_the_link_down(
    adapter: str, cluster: PostgresCluster, tmp_path: Path,
) -> None:
    with Forwarder((cluster.host, cluster.port)) as forwarder, ProxyProcess(
            adapter, forwarder.address, tmp_path, toml="[limits]\nshutdown_timeout = 2\n",
    ) as proxy:
        baseline = proxy.warm_up(cluster)
        with Client(proxy.address, cluster, "gives-up") as client:
            client.login()
            forwarder.black_hole()
            client.send(pw.Query(query="select 'lost in the hole'"))
            wait_until(lambda: forwarder.swallowed > 0, "the query to vanish")
            client.abort()
        proxy.assert_back_to(baseline)
        wait_until(lambda: forwarder.open_links() == 0, "the proxy to close the link")
        assert proxy.stop() == 0
    records = proxy.audit_records()
    check_audit(records)
    assert outcome(records, "select 'lost in the hole'")["status"] == "unfinished"

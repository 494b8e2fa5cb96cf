"""What the pool fault tests share: a proxy with a pool of one, its baseline, and clients.

See ``test_pool_faults.py`` for the set-up and what every test checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster

from .toolkit import (
    Client,
    ProxyProcess,
    Quiet,
    backend_pids,
    check_audit,
    direct,
    kill_backend,
    pool_metric,
    upstream_sockets,
    wait_until,
)

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


def start_pool_proxy(adapter: str, cluster: PostgresCluster, directory: Path, mode: str,
                     **pool: object) -> ProxyProcess:
    return ProxyProcess(adapter, (cluster.host, cluster.port), directory,
                        toml=pool_toml(cluster, mode, **pool))


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

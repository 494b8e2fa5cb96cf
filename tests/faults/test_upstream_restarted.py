"""The server is stopped and started again under a running proxy.

``pg_ctl stop -m fast`` ends every server session with FATAL 57P01; the proxy
must pass that on and close each client, idle or in a transaction, keep no
trace of them, and serve new sessions once the server is back, without a
restart of its own.
"""

from __future__ import annotations

import pytest

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster

from .toolkit import (
    Client,
    ProxyProcess,
    Quiet,
    check_audit,
    outcome,
    start_cluster,
    stop_cluster,
)

pytestmark = pytest.mark.fault


def test_sessions_end_cleanly_and_new_ones_work_after_a_restart(
    proxy: ProxyProcess, baseline: Quiet, cluster: PostgresCluster,
) -> None:
    with Client(proxy.address, cluster, "restart-idle") as idle, \
            Client(proxy.address, cluster, "restart-busy") as busy:
        idle.login()
        busy.login()
        busy.query("begin")
        assert busy.scalar("select 'in transaction'") == "in transaction"
        stop_cluster(cluster)
        for client in (idle, busy):
            events = client.rest_of_stream()
            errors = [e for e in events if isinstance(e, pw.ErrorResponse)]
            assert [(e.severity, e.sqlstate) for e in errors] == [("FATAL", "57P01")], events
            assert client.closed
    proxy.assert_back_to(baseline)
    with Client(proxy.address, cluster, "restart-down") as refused:
        refused.begin_login()
        events = refused.rest_of_stream()
        assert [(e.severity, e.sqlstate) for e in events
                if isinstance(e, pw.ErrorResponse)] == [("FATAL", "08006")], events
    start_cluster(cluster)
    with Client(proxy.address, cluster, "restart-after") as after:
        after.login()
        assert after.scalar("select 'back'") == "back"
        after.send(pw.Terminate())
        assert after.rest_of_stream() == [pw.ConnectionClosed()]
    proxy.assert_back_to(baseline)
    assert proxy.stop() == 0
    records = proxy.audit_records()
    check_audit(records)
    assert outcome(records, "select 'in transaction'")["status"] == "ok"
    assert outcome(records, "select 'back'")["status"] == "ok"
    names = {r["application_name"] for r in records if r["event"] == "disconnect"}
    assert {"restart-idle", "restart-busy", "restart-down", "restart-after"} <= names

"""What a session is doing when its server dies: the phases the kill tests cut.

Each ``start_*`` puts a logged-in client in its phase, waiting until the
server is really there (the statement running, the transaction open), and
returns the SQL text whose audit record the test then checks.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster

from .toolkit import (
    Client,
    ProxyProcess,
    Quiet,
    check_audit,
    direct,
    errors_of,
    kill_backend,
    kill_postmaster,
    outcome,
    start_cluster,
    wait_until,
)

TABLE = "fault_kill_items"
SLEEP = "select pg_sleep(60)"
COPY_IN = f"copy {TABLE} from stdin"
COPY_OUT = "copy (select n, repeat('x', 100) from generate_series(1, 2000000) n) to stdout"
UPDATE = f"update {TABLE} set n = n + 1 where n = 1"


def server_state(cluster: PostgresCluster, backend_pid: int) -> tuple[str, str] | None:
    with direct(cluster) as conn:
        row = conn.execute("select state, query from pg_stat_activity where pid = %s",
                           [backend_pid]).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def running(cluster: PostgresCluster, backend_pid: int, sql: str) -> Callable[[], bool]:
    return lambda: server_state(cluster, backend_pid) == ("active", sql)


def start_query(client: Client, cluster: PostgresCluster, backend_pid: int) -> str:
    client.send(pw.Query(query=SLEEP))
    wait_until(running(cluster, backend_pid, SLEEP), "pg_sleep to run on the server")
    return SLEEP


def start_copy_in(client: Client, cluster: PostgresCluster, backend_pid: int) -> str:
    client.send(pw.Query(query=COPY_IN))
    client.events_until(lambda e: isinstance(e, pw.CopyInResponse))
    client.send(*(pw.CopyData(data=f"{n}\n".encode()) for n in range(100, 200)))
    wait_until(running(cluster, backend_pid, COPY_IN), "the COPY to run on the server")
    return COPY_IN


def start_copy_out(client: Client, cluster: PostgresCluster, backend_pid: int) -> str:
    client.send(pw.Query(query=COPY_OUT))
    events = client.events_until(lambda e: isinstance(e, pw.CopyData))
    assert isinstance(events[-1], pw.CopyData), events
    return COPY_OUT


def start_transaction(client: Client, cluster: PostgresCluster, backend_pid: int) -> str:
    client.query("begin")
    events = client.query(UPDATE)
    assert events[-1] == pw.ReadyForQuery(status=pw.TransactionStatus.IN_TRANSACTION), events
    wait_until(lambda: server_state(cluster, backend_pid) == ("idle in transaction", UPDATE),
               "the transaction to be open on the server")
    return UPDATE


#: Each phase by name, for parametrize.
PHASES = {"query": start_query, "copy_in": start_copy_in, "copy_out": start_copy_out,
          "transaction": start_transaction}


@pytest.fixture
def table(cluster: PostgresCluster) -> str:
    """The phases' table, made afresh with one row (1)."""
    cluster.sql(f"drop table if exists {TABLE}; create table {TABLE} (n int);"
                f"insert into {TABLE} values (1)")
    return TABLE


def kill_during(proxy: ProxyProcess, baseline: Quiet, cluster: PostgresCluster,
                phase: str, victim: str) -> None:
    """Put a client in ``phase``, SIGKILL the ``victim`` (its ``backend`` or the
    ``postmaster``), and check what the client got, what the proxy kept, and
    the audit file."""
    with Client(proxy.address, cluster) as client:
        client.login()
        backend_pid = int(client.scalar("select pg_backend_pid()"))
        sql = PHASES[phase](client, cluster, backend_pid)
        if victim == "backend":
            kill_backend(cluster, backend_pid)
        else:
            kill_postmaster(cluster)
        events = client.rest_of_stream()
        assert client.closed
    [error] = errors_of(events)
    # A backend that outlives its postmaster for a moment reports that itself.
    expected = {"08006", "57P01"} if victim == "postmaster" else {"08006"}
    assert error.severity == "FATAL" and error.sqlstate in expected, error
    proxy.assert_back_to(baseline)
    if victim == "postmaster":
        start_cluster(cluster)
    assert proxy.stop() == 0
    records = proxy.audit_records()
    check_audit(records)
    # The open transaction's UPDATE had completed; the others were cut off.
    assert outcome(records, sql)["status"] in (
        ("ok",) if phase == "transaction" else ("unfinished", "error"))
    with direct(cluster) as conn:  # the half-sent COPY wrote nothing
        assert conn.execute(f"select n from {TABLE}").fetchall() in ([(1,)], [(2,)])

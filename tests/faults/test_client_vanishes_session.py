"""The client disappears inside a session: mid-COPY (either way), mid-transaction.

The proxy must end the session and close the server link, so that the
server session ends, its transaction rolls back and its row locks go (seen
from another connection within a bounded wait); the proxy comes back to its
idle fd and thread counts; the audit file verifies, with the statements that
ran and each session's end. Each test hangs up both ways in turn: an orderly
close (FIN), and a reset (RST, SO_LINGER 0).
"""

from __future__ import annotations

import psycopg
import psycopg.errors
import pytest

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster

from .toolkit import (
    HANGUPS,
    Client,
    ProxyProcess,
    Quiet,
    backends,
    check_audit,
    direct,
    hang_up,
    wait_until,
)

pytestmark = pytest.mark.fault

TABLE = "fault_vanish_items"
COPY_OUT = "copy (select n, repeat('x', 100) from generate_series(1, 2000000) n) to stdout"


@pytest.fixture
def table(cluster: PostgresCluster) -> str:
    cluster.sql(f"drop table if exists {TABLE}; create table {TABLE} (id int primary key, n int);"
                f"insert into {TABLE} values (1, 0)")
    return TABLE


def outcomes(records: list[dict[str, object]], sql: str) -> list[object]:
    return [r["status"] for r in records if r["event"] == "complete" and r["sql"] == sql]


@pytest.mark.parametrize("direction", ["from_stdin", "to_stdout"])
def test_mid_copy(proxy: ProxyProcess, baseline: Quiet, cluster: PostgresCluster, table: str,
                  direction: str) -> None:
    sql = f"copy {table} from stdin" if direction == "from_stdin" else COPY_OUT
    for how in HANGUPS:
        name = f"vanish-copy-{how}"
        with Client(proxy.address, cluster, name) as client:
            client.login()
            client.send(pw.Query(query=sql))
            if direction == "from_stdin":
                client.events_until(lambda e: isinstance(e, pw.CopyInResponse))
                client.send(*(pw.CopyData(data=f"{n}\t{n}\n".encode()) for n in range(2, 500)))
            else:  # the server fills every buffer on the way, then blocks writing
                client.events_until(lambda e: isinstance(e, pw.CopyData))
            wait_until(lambda name=name: backends(cluster, name, "active") == 1,  # type: ignore[misc]
                       "the COPY to run on the server")
            hang_up(client.sock, how)
        proxy.assert_back_to(baseline)
        wait_until(lambda name=name: backends(cluster, name) == 0,  # type: ignore[misc]
                   "the server session to end")
    with direct(cluster) as conn:
        assert conn.execute(f"select count(*) from {table}").fetchone() == (1,)
    assert proxy.stop() == 0
    records = proxy.audit_records()
    check_audit(records)
    assert sorted(map(str, outcomes(records, sql))) in (
        ["unfinished", "unfinished"], ["error", "unfinished"], ["error", "error"])


def row_is_free(cluster: PostgresCluster, table: str) -> bool:
    with direct(cluster) as conn:
        try:
            conn.execute(f"select n from {table} where id = 1 for update nowait")
        except psycopg.errors.LockNotAvailable:
            return False
    return True


def test_mid_transaction(proxy: ProxyProcess, baseline: Quiet, cluster: PostgresCluster,
                         table: str) -> None:
    update = f"update {table} set n = n + 1 where id = 1"
    for how in HANGUPS:
        with Client(proxy.address, cluster, f"vanish-transaction-{how}") as client:
            client.login()
            client.query("begin")
            events = client.query(update)
            assert events[-1] == pw.ReadyForQuery(status=pw.TransactionStatus.IN_TRANSACTION)
            assert not row_is_free(cluster, table)
            hang_up(client.sock, how)
        wait_until(lambda: row_is_free(cluster, table), "the row lock to be released")
        proxy.assert_back_to(baseline)
        wait_until(lambda how=how: backends(cluster, f"vanish-transaction-{how}") == 0,  # type: ignore[misc]
                   "the server session to end")
        with direct(cluster) as conn:  # rolled back
            assert conn.execute(f"select n from {table} where id = 1").fetchone() == (0,)
    assert proxy.stop() == 0
    records = proxy.audit_records()
    check_audit(records)
    assert outcomes(records, update) == ["ok", "ok"]
    ends = [r for r in records if r["event"] == "disconnect"
            and str(r["application_name"]).startswith("vanish-transaction-")]
    assert [r["statements"] for r in ends] == [2, 2]

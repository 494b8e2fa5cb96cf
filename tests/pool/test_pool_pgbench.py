"""pgbench through the pool: every query protocol, both modes, every adapter.

Each run is tiny (4 clients, 4 threads, 50 transactions each): the point is
that pgbench's traffic — simple queries, unnamed and named extended-protocol
statements, TPC-B's multi-statement transactions — comes through a pool
intact, not how fast. The select-only script (``-S``) runs for most cells;
the default TPC-B script runs once per mode, on asyncio, and its balances
must add up afterwards (every transaction moved the same delta through an
account, a teller, a branch and the history). The default test run has the
two TPC-B runs; the other 16 cells are marked slow.

Objects (prefix ``pool_bench``, unique to this module): role and database
``pool_bench``, initialised once with ``pgbench -i`` straight to the server.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import psycopg
import pytest

from pgwire.proxy import PoolConfig, PoolMode
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import ADAPTERS, AdapterName, RunningProxy

if TYPE_CHECKING:
    from .conftest import StartPool

pytestmark = pytest.mark.timeout(120)

ROLE = DB = "pool_bench"
PASSWORD = "bench-pw"
CLIENTS = 4
TRANSACTIONS = 50
Protocol = Literal["simple", "extended", "prepared"]


@pytest.fixture(scope="module")
def bench_db(pg_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """``pg_cluster`` with a pgbench database of scale 1, owned by ROLE."""
    _drop(pg_cluster)
    pg_cluster.sql(f"create role {ROLE} login password '{PASSWORD}'")
    pg_cluster.sql(f"create database {DB} owner {ROLE}")
    try:
        result = _pgbench(pg_cluster, pg_cluster.host, pg_cluster.port, ["-i", "-s", "1", "-q"])
        assert result.returncode == 0, result.stderr
        yield pg_cluster
    finally:
        _drop(pg_cluster)


def _drop(cluster: PostgresCluster) -> None:
    cluster.sql(f"drop database if exists {DB} with (force)")
    cluster.sql(f"drop role if exists {ROLE}")


def _pgbench(cluster: PostgresCluster, host: str, port: int, arguments: list[str]
             ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": PASSWORD, "PGSSLMODE": "disable",
           "PGGSSENCMODE": "disable", "PGCONNECT_TIMEOUT": "10",
           "PGPASSFILE": str(Path(__file__).with_name("no-such-pgpass"))}
    argv = [str(cluster.bindir / "pgbench"), "-h", host, "-p", str(port), "-U", ROLE,
            *arguments, DB]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=90,
                          check=False)


def _balances(cluster: PostgresCluster) -> tuple[int, ...]:
    """Sums of the account, teller and branch balances and of the history's deltas."""
    with psycopg.connect(**cluster.connect_kwargs(dbname=DB, sslmode="disable",
                                                  connect_timeout=10)) as conn:
        row = conn.execute(
            "select (select coalesce(sum(abalance), 0) from pgbench_accounts),"
            " (select coalesce(sum(tbalance), 0) from pgbench_tellers),"
            " (select coalesce(sum(bbalance), 0) from pgbench_branches),"
            " (select coalesce(sum(delta), 0) from pgbench_history),"
            " (select count(*) from pgbench_history)").fetchone()
    assert row is not None
    return tuple(int(value) for value in row)


def _pool_row(proxy: RunningProxy) -> dict[str, Any]:
    pool = proxy.proxy.pool
    assert pool is not None
    rows = pool.stats()
    assert len(rows) == 1, rows  # every pgbench client sends the same startup packet
    return rows[0]


class Cell(NamedTuple):
    adapter: AdapterName
    mode: PoolMode
    protocol: Protocol
    #: The default TPC-B script (else select-only, -S).
    tpcb: bool


def _cells() -> Iterator[Any]:
    for adapter in ADAPTERS:
        for mode in ("session", "transaction"):
            for protocol in ("simple", "extended", "prepared"):
                tpcb = adapter == "asyncio" and protocol == "prepared"
                marks = () if tpcb else (pytest.mark.slow,)
                script = "tpcb" if tpcb else "select-only"
                yield pytest.param(Cell(adapter, mode, protocol, tpcb), marks=marks,
                                   id=f"{adapter}-{mode}-{protocol}-{script}")


@pytest.mark.parametrize("cell", list(_cells()))
def test_pgbench_through_pool(start_pool: StartPool, bench_db: PostgresCluster,
                              cell: Cell) -> None:
    adapter, mode, protocol, tpcb = cell
    # Session mode: pgbench connects every client before any starts (its
    # threads wait for each other), so the pool must hold them all.
    # Transaction mode: half as many connections as clients, so they share.
    max_size = CLIENTS if mode == "session" else CLIENTS // 2
    proxy = start_pool(PoolConfig(mode=mode, max_size=max_size), {ROLE: PASSWORD},
                       adapter=adapter)
    before = _balances(bench_db) if tpcb else None
    # -j equal to -c: with -M prepared, fewer threads than clients deadlock
    # any transaction pool smaller than -c. pgbench prepares with a blocking
    # call per client, so one client of a thread can wait for a connection
    # that another client of the same thread holds mid-transaction, and that
    # client never runs again until the prepare returns.
    arguments = ["-n", "-c", str(CLIENTS), "-j", str(CLIENTS), "-t", str(TRANSACTIONS),
                 "-M", protocol]
    if not tpcb:
        arguments.append("-S")
    result = _pgbench(bench_db, proxy.host, proxy.port, arguments)
    assert result.returncode == 0, result.stdout + result.stderr
    total = CLIENTS * TRANSACTIONS
    assert f"number of transactions actually processed: {total}/{total}" in result.stdout, (
        result.stdout)
    assert re.search(r"^number of failed transactions: 0 ", result.stdout, re.MULTILINE), (
        result.stdout)
    row = _pool_row(proxy)
    assert row["failed_verifications"] == row["failed_resets"] == 0, row
    assert row["servers_opened"] <= max_size, row
    if mode == "transaction":
        assert row["checkouts"] > CLIENTS, row  # the connections really were shared
        assert row["pinned_transactions"] == 0, row
    if before is not None:
        after = _balances(bench_db)
        accounts, tellers, branches, deltas, history = after
        assert accounts == tellers == branches == deltas, after
        assert history == before[4] + total, (before, after)

"""Fixtures of the fault tests: the adapter parameter and throwaway clusters.

Each test file gets its own cluster (pytest runs with ``--dist loadfile``, so
one file stays on one worker): a test may kill or restart it, and the shared
session cluster (``pg_cluster``) must never see that. The cluster asks for
SCRAM passwords, so a client's login crosses the proxy as a real SCRAM
exchange (the mid-SCRAM fault needs one).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import ADAPTERS

from .pool_rig import MODES, TABLE, start_pool_proxy
from .toolkit import ProxyProcess, Quiet, ensure_running


@pytest.fixture(scope="module")
def fault_cluster() -> Iterator[PostgresCluster]:
    """A TLS-enabled PostgreSQL of this test file's own, SCRAM logins. Commits
    are flushed (synchronous_commit on): a killed server must not lose tables
    the tests made before killing it."""
    with PostgresCluster(ssl=True, auth="scram-sha-256",
                         settings={"synchronous_commit": True}) as cluster:
        yield cluster


@pytest.fixture
def cluster(fault_cluster: PostgresCluster) -> PostgresCluster:
    """The file's cluster, started again if an earlier test left it down."""
    ensure_running(fault_cluster)
    return fault_cluster


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def proxy(adapter: str, cluster: PostgresCluster, tmp_path: Path) -> Iterator[ProxyProcess]:
    """A proxy process with audit in front of the file's cluster (short shutdown)."""
    with ProxyProcess(adapter, (cluster.host, cluster.port), tmp_path,
                      toml="[limits]\nshutdown_timeout = 2\n") as running:
        yield running


@pytest.fixture
def baseline(proxy: ProxyProcess, cluster: PostgresCluster) -> Quiet:
    """The proxy's idle fd and thread counts after one ordinary session."""
    return proxy.warm_up(cluster)


# -- the pool's fault files (pool_rig.py) -------------------------------------------------


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """The pool mode, both in turn."""
    name: str = request.param
    return name


@pytest.fixture
def pooled(adapter: str, cluster: PostgresCluster, tmp_path: Path,
           mode: str) -> Iterator[ProxyProcess]:
    """A pooling proxy (``mode``, one connection per key) in front of the file's cluster."""
    with start_pool_proxy(adapter, cluster, tmp_path, mode) as running:
        yield running


@pytest.fixture
def table(cluster: PostgresCluster) -> str:
    """A one-row table for the lock and rollback checks."""
    cluster.sql(f"drop table if exists {TABLE}; create table {TABLE} (n int);"
                f"insert into {TABLE} values (1)")
    return TABLE

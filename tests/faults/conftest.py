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

"""Fixtures of the live pool tests: a pooling proxy in front of ``pg_cluster``.

``start_pool`` starts a proxy with a :class:`~pgwire.proxy.PoolConfig` and
:class:`~pgwire.proxy.ProxyAuth` on the adapter asked for; when the test ends it
checks what every test of a pool must end with: no session left in the proxy
and no internal error (an exception the proxy turned into an error for a
client) in any of them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import pytest

from pgwire.proxy import PoolConfig, ProxyAuth, ProxyConfig
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import AdapterName, RunningProxy, running_proxy
from tests.interop.proxy_wire import wait_until


class StartPool(Protocol):
    def __call__(self, pool: PoolConfig, users: Mapping[str, str], *,
                 adapter: AdapterName = "asyncio", **config: Any) -> RunningProxy: ...


@pytest.fixture
def start_pool(pg_cluster: PostgresCluster) -> Iterator[StartPool]:
    """Start pooling proxies in front of ``pg_cluster``; at the end each must be
    drained of sessions and must have counted no internal error."""
    with contextlib.ExitStack() as stack:
        started: list[RunningProxy] = []

        def start(pool: PoolConfig, users: Mapping[str, str], *,
                  adapter: AdapterName = "asyncio", **config: Any) -> RunningProxy:
            proxy_config = ProxyConfig(
                upstream=(pg_cluster.host, pg_cluster.port),
                auth=ProxyAuth(method="scram-sha-256", users=dict(users)),
                pool=pool, **config)
            running = stack.enter_context(running_proxy(proxy_config, adapter=adapter))
            started.append(running)
            return running

        yield start
        for running in started:
            wait_until(functools.partial(_drained, running),
                       f"the proxy to forget its sessions: {list(running.proxy.sessions)}")
            assert running.proxy.stats.internal_errors == 0, running.proxy.stats


def _drained(running: RunningProxy) -> bool:
    return len(running.proxy) == 0

"""A RoleGuard whose graph loads at start: the proxy waits for it before taking clients."""

from __future__ import annotations

import logging
import socket

import pytest

from pgwire.adapters.serve import wait_for_middleware
from pgwire.middleware.roles import RoleGuard
from pgwire.proxy import ProxyConfig
from pgwire.roles import RoleGraphSource
from pgwire.testing.cluster import PostgresCluster


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ready_once_the_graph_has_loaded(pg_cluster: PostgresCluster) -> None:
    source = RoleGraphSource((pg_cluster.host, pg_cluster.port), pg_cluster.superuser,
                             password=pg_cluster.superuser_password)
    guard = RoleGuard("drop_only", graph=source)
    assert guard.wait_ready(30) is None
    assert source.current() is not None


def test_an_unreachable_graph_is_named_and_the_proxy_starts_anyway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = RoleGraphSource(("127.0.0.1", closed_port()), "nobody")
    guard = RoleGuard("drop_only", graph=source)
    problem = guard.wait_ready(30)
    assert problem is not None and "not loaded" in problem
    config = ProxyConfig(upstream=("127.0.0.1", 1), middleware=[guard, RoleGuard])
    with caplog.at_level(logging.WARNING, logger="pgwire.proxy"):
        wait_for_middleware(config)  # a class in the list is skipped, not called
    warnings = [r.getMessage() for r in caplog.records if r.name == "pgwire.proxy"]
    assert warnings == [f"RoleGuard: {problem}"]


def test_a_guard_without_a_graph_is_ready_at_once() -> None:
    assert RoleGuard("deny").wait_ready(0) is None

"""examples/secure_client.py logs in with TLS and SCRAM-SHA-256-PLUS to a real server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwire.testing.cluster import PostgresCluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "secure_client.py"


@pytest.fixture(scope="module")
def scram_cluster() -> Iterator[PostgresCluster]:
    with PostgresCluster(ssl=True, auth="scram-sha-256") as cluster:
        cluster.sql("create role app login password 'correct horse'")
        yield cluster


def _run(cluster: PostgresCluster, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--host", "localhost", "--port", str(cluster.port),
         "--user", "app", "--password", password, "--sslrootcert", str(cluster.ca_cert),
         "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()"],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_secure_client_logs_in_with_channel_binding(scram_cluster: PostgresCluster) -> None:
    result = _run(scram_cluster, "correct horse")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("logged in with scram-sha-256-plus over TLSv1.")
    assert lines[1] == "app | t"


def test_secure_client_reports_a_wrong_password(scram_cluster: PostgresCluster) -> None:
    result = _run(scram_cluster, "wrong")
    assert result.returncode != 0
    assert "28P01: password authentication failed for user \"app\"" in result.stderr

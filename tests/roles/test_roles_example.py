"""examples/roles.toml, run as documented: ``pgwire proxy --config`` in a
subprocess, psql through it, ``pgwire audit verify`` on what it wrote."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgwire.testing.cluster import PostgresCluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "roles.toml"
LISTENING = re.compile(r"^pgwire proxy listening on 127\.0\.0\.1:(\d+), ")
ROLES = """
DROP ROLE IF EXISTS rx_app; DROP ROLE IF EXISTS rx_readers; DROP ROLE IF EXISTS rx_admins;
DROP ROLE IF EXISTS pgwire_graph;
CREATE ROLE rx_readers NOLOGIN;
CREATE ROLE rx_admins NOLOGIN SUPERUSER;
CREATE ROLE rx_app LOGIN;
GRANT rx_readers TO rx_app;
GRANT rx_admins TO rx_app;
CREATE ROLE pgwire_graph LOGIN;
"""


@dataclass
class ExampleProxy:
    process: subprocess.Popen[str]
    port: int
    directory: Path

    def stop(self) -> None:
        """SIGTERM, as a service manager would; the proxy drains and exits 0."""
        if self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, stderr


@pytest.fixture
def example_proxy(pg_cluster: PostgresCluster, tmp_path: Path) -> Iterator[ExampleProxy]:
    pg_cluster.sql(ROLES)
    address = f"{pg_cluster.host}:{pg_cluster.port}"
    config = tmp_path / "roles.toml"
    config.write_text(EXAMPLE.read_text().replace("127.0.0.1:5432", address))
    env = {**os.environ, "PGWIRE_GRAPH_PASSWORD": "unused-with-trust",
           "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pgwire", "proxy", "--config", str(config),
         "--listen", "127.0.0.1:0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = LISTENING.search(line)
    if match is None:
        process.kill()
        pytest.fail(f"no listening line: {line!r}; stderr: {process.communicate()[1]}")
    proxy = ExampleProxy(process, int(match.group(1)), tmp_path)
    try:
        yield proxy
    finally:
        proxy.stop()


def psql_program(pg_cluster: PostgresCluster) -> str:
    program = pg_cluster.bindir / "psql"
    found = str(program) if program.exists() else shutil.which("psql")
    assert found, "psql is needed (it comes with the PostgreSQL client)"
    return found


def psql(pg_cluster: PostgresCluster, port: int,
         *commands: str) -> subprocess.CompletedProcess[str]:
    argv = [psql_program(pg_cluster), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(port),
            "-U", "rx_app", "-d", "postgres"]
    for command in commands:
        argv += ["-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PGSSLMODE": "disable"}, check=False)


def test_the_example_guards_roles_and_writes_a_verifiable_audit(
    pg_cluster: PostgresCluster, example_proxy: ExampleProxy,
) -> None:
    port = example_proxy.port
    result = psql(pg_cluster, port, "SET ROLE rx_readers", "SELECT current_user",
                  "SET ROLE rx_admins", "SELECT current_user",
                  "DO $$BEGIN PERFORM 1; END$$")
    assert result.stdout.split() == ["SET", "rx_readers", "rx_readers"]
    assert 'permission denied to set role "rx_admins"' in result.stderr
    assert "SUPERUSER" in result.stderr
    assert "DO blocks are not allowed" in result.stderr
    # options=-c role=... in the startup packet is refused by RoleRewrite.
    sneaky = subprocess.run(
        [psql_program(pg_cluster), "-X", "-A", "-t", "-c", "SELECT current_user",
         f"host=127.0.0.1 port={port} user=rx_app dbname=postgres sslmode=disable "
         "options='-c role=rx_admins'"],
        capture_output=True, text=True, timeout=30, check=False)
    assert sneaky.returncode != 0 and "rx_admins" not in sneaky.stdout
    assert "role" in sneaky.stderr


def test_the_audit_of_the_example_verifies_and_names_the_effective_role(
    pg_cluster: PostgresCluster, example_proxy: ExampleProxy,
) -> None:
    psql(pg_cluster, example_proxy.port, "SET ROLE rx_readers", "SELECT 42",
         "SET ROLE rx_admins")
    example_proxy.stop()  # graceful shutdown flushes the audit
    path = example_proxy.directory / "pgwire-audit.jsonl"
    verify = subprocess.run([sys.executable, "-m", "pgwire", "audit", "verify", str(path)],
                            capture_output=True, text=True, timeout=30, check=False,
                            cwd=ROOT)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    records = [json.loads(line) for line in path.read_text().splitlines()]
    by_sql = {r.get("sql"): r for r in records if r["event"] == "complete"}
    assert by_sql["SELECT 42"]["effective_role"] == "rx_readers"
    refused = [r for r in records if r["event"] == "role_decision" and not r["allowed"]]
    assert [r["target"] for r in refused] == ["rx_admins"]
    assert records[-1]["event"] == "disconnect"

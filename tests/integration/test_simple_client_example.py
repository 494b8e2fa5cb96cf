"""examples/simple_client.py runs against the real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pgwire.testing.cluster import PostgresCluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "simple_client.py"


def test_simple_client_prints_rows_and_errors(pg_cluster: PostgresCluster) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--host", pg_cluster.host, "--port", str(pg_cluster.port),
         "--user", pg_cluster.superuser,
         "select 41 + 1 as answer, null as nothing, 'naïve' as word", "select 1/0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.stdout.splitlines() == ["answer | nothing | word", "42 | NULL | naïve"]
    assert "ERROR 22012: division by zero" in result.stderr
    assert result.returncode == 1

"""The PostgreSQL sink records every statement of a pgbench run.

pgbench runs through the proxy twice (simple and extended protocol, 2
clients x 50 select-only transactions). Two Audit middleware watch the same
traffic: one writes a JSON Lines file, the other a table in the same
cluster. After the proxy shut down (which flushes both), the table must
hold exactly the statements the file holds, and the file exactly what
pgbench ran: its 100 SELECTs per run and the statements it sends on its
first connection to learn the scale.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwire.audit import JsonLinesSink, PostgresSink, verify_chain
from pgwire.middleware.audit import Audit
from pgwire.proxy import ProxyConfig
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import running_proxy

from .helpers import events, read_jsonl

DATABASE = "audit_pgbench"
TABLE = "audit_pgbench_records"
CLIENTS, TRANSACTIONS = 2, 50
BENCH_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = "


def pgbench(pg: PostgresCluster) -> str:
    found = shutil.which("pgbench") or str(pg.bindir / "pgbench")
    assert Path(found).exists(), "pgbench is needed: install the PostgreSQL client programs"
    return found


@pytest.fixture(scope="module")
def bench_database(pg_cluster: PostgresCluster) -> Iterator[str]:
    pg_cluster.sql(f"DROP DATABASE IF EXISTS {DATABASE}")
    pg_cluster.sql(f"CREATE DATABASE {DATABASE}")
    pg_cluster.sql(f"DROP TABLE IF EXISTS {TABLE}")
    subprocess.run([pgbench(pg_cluster), "-i", "-s", "1", "-q", "-h", pg_cluster.host,
                    "-p", str(pg_cluster.port), "-U", pg_cluster.superuser, DATABASE],
                   env=pg_env(pg_cluster), check=True, capture_output=True, timeout=120)
    yield DATABASE
    pg_cluster.sql(f"DROP DATABASE IF EXISTS {DATABASE}")
    pg_cluster.sql(f"DROP TABLE IF EXISTS {TABLE}")


def pg_env(pg: PostgresCluster) -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": pg.superuser_password, "PGSSLMODE": "disable",
            "PGCONNECT_TIMEOUT": "10"}


def statement_rows(pg: PostgresCluster) -> list[dict[str, Any]]:
    with psycopg.connect(**pg.connect_kwargs()) as conn:
        cursor = conn.execute(f"SELECT event, session_id, request, sql, status, rows "
                              f"FROM {TABLE} WHERE event IN ('query', 'execute', 'complete') "
                              "ORDER BY id")
        names = [column.name for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_the_table_holds_every_statement_of_pgbench(pg_cluster: PostgresCluster,
                                                    bench_database: str,
                                                    tmp_path: Path) -> None:
    path = tmp_path / "pgbench.jsonl"
    to_file = Audit(JsonLinesSink(path))
    to_table = Audit(PostgresSink((pg_cluster.host, pg_cluster.port), pg_cluster.superuser,
                                  password=pg_cluster.superuser_password, table=TABLE,
                                  batch_size=64, flush_interval=0.05))
    processed: list[int] = []
    config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port),
                         middleware=[to_file, to_table])
    with running_proxy(config) as proxy:
        for mode in ("simple", "extended"):
            run = subprocess.run(
                [pgbench(pg_cluster), "-n", "-S", "-M", mode, "-c", str(CLIENTS),
                 "-t", str(TRANSACTIONS), "-h", proxy.host, "-p", str(proxy.port),
                 "-U", pg_cluster.superuser, bench_database],
                env=pg_env(pg_cluster), capture_output=True, text=True, timeout=120,
                check=False)
            assert run.returncode == 0, run.stderr
            match = re.search(r"actually processed: (\d+)/(\d+)", run.stdout)
            assert match is not None, run.stdout
            processed.append(int(match.group(1)))
    assert processed == [CLIENTS * TRANSACTIONS] * 2
    assert to_table.stats.written == to_table.stats.accepted
    assert to_table.stats.dropped == to_table.stats.lost == 0

    assert verify_chain(path).ok
    in_file = events(read_jsonl(path), "query", "execute", "complete")
    in_table = statement_rows(pg_cluster)
    # The table holds exactly the statements the file holds.
    def key(record: dict[str, Any]) -> tuple[Any, ...]:
        return (record["event"], record["session_id"], record["request"], record["sql"],
                record.get("status"), record.get("rows"))
    assert Counter(map(key, in_table)) == Counter(map(key, in_file))

    completions = [r for r in in_table if r["event"] == "complete"]
    bench = [r for r in completions if r["sql"].startswith(BENCH_SELECT)]
    setup = [r for r in completions if not r["sql"].startswith(BENCH_SELECT)]
    # What pgbench executed: its transactions, each one SELECT that found its row.
    assert len(bench) == sum(processed)
    assert all((r["status"], r["rows"]) == ("ok", 1) for r in bench)
    assert sum(r["sql"].endswith("$1;") for r in bench) == CLIENTS * TRANSACTIONS  # extended
    per_session = Counter(r["session_id"] for r in bench)
    assert sorted(per_session.values()) == [TRANSACTIONS] * (2 * CLIENTS)
    # And what it sends once per run before starting its clients (PostgreSQL 15's
    # pgbench: the scale from pgbench_branches, then the partitioning of accounts).
    assert all(r["status"] == "ok" for r in setup)
    assert {r["session_id"] for r in setup}.isdisjoint(per_session)
    assert len({r["session_id"] for r in setup}) == 2
    assert any("pgbench_branches" in r["sql"] for r in setup)
    # Every statement has its outcome.
    requests = {(r["session_id"], r["request"]) for r in in_table
                if r["event"] in ("query", "execute")}
    assert requests == {(r["session_id"], r["request"]) for r in completions}
    assert len(completions) == len(requests) == len(bench) + len(setup)

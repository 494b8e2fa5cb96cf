"""What a driver does besides queries, through the whole role chain.

COPY in both directions, server-side cursors (DECLARE/FETCH and protocol-level
row limits), LISTEN/NOTIFY, cancelling a running statement, binary results,
an error in the middle of a pipeline, and a large result: each runs once
directly against PostgreSQL and once through
``[Audit, RoleRewrite, RoleGuard("allowlist")]``; the client must see the
same thing both ways, and the audit must verify afterwards.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwire.audit import JsonLinesSink, verify_chain
from pgwire.middleware.audit import Audit
from pgwire.middleware.rewrite import RoleRewrite
from pgwire.middleware.roles import RoleGuard
from pgwire.proxy import ProxyConfig
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import RunningProxy, running_proxy

APP = "cf5_app"
GRP = "cf5_grp"
TABLE = "cf5_items"
SETUP = f"""
    DROP TABLE IF EXISTS {TABLE};
    DROP ROLE IF EXISTS {APP}; DROP ROLE IF EXISTS {GRP};
    CREATE ROLE {GRP} NOLOGIN;
    CREATE ROLE {APP} LOGIN;
    GRANT {GRP} TO {APP};
    CREATE TABLE {TABLE} (id int PRIMARY KEY, name text);
    GRANT ALL ON {TABLE} TO {GRP}, {APP};
"""

Scenario = Callable[[psycopg.Connection[Any]], object]


@pytest.fixture(scope="module")
def chain(pg_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[RunningProxy, Audit, Path]]:
    pg_cluster.sql(SETUP)
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    audit = Audit(JsonLinesSink(path))
    middleware = [audit, RoleRewrite(), RoleGuard("allowlist", allow={APP: [GRP]})]
    config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port), middleware=middleware)
    with running_proxy(config) as proxy:
        yield proxy, audit, path
    result = verify_chain(path)
    assert result.ok, result.reason


def connect(pg_cluster: PostgresCluster, proxy: RunningProxy | None) -> psycopg.Connection[Any]:
    where = {} if proxy is None else {"host": proxy.host, "port": proxy.port}
    kwargs = pg_cluster.connect_kwargs(user=APP, sslmode="disable", **where)
    kwargs.pop("password", None)
    return psycopg.connect(**kwargs, autocommit=True)


def both_ways(pg_cluster: PostgresCluster, proxy: RunningProxy, scenario: Scenario) -> object:
    """Run ``scenario`` directly and through the proxy; the two outcomes must match."""
    outcomes = []
    for target in (None, proxy):
        pg_cluster.sql(f"TRUNCATE {TABLE}")
        with connect(pg_cluster, target) as conn:
            outcomes.append(scenario(conn))
    direct, proxied = outcomes
    assert proxied == direct
    return proxied


def copy_in_and_out(conn: psycopg.Connection[Any]) -> object:
    with conn.cursor() as cur:
        with cur.copy(f"COPY {TABLE} (id, name) FROM STDIN") as copy:
            for i in range(2000):
                copy.write_row((i, f"name {i}"))
        with cur.copy(f"COPY (SELECT id, name FROM {TABLE} ORDER BY id) TO STDOUT") as copy:
            rows = [bytes(chunk) for chunk in copy]
        try:
            with cur.copy(f"COPY {TABLE} (id, name) FROM STDIN") as copy:
                copy.write_row((1, "duplicate"))
        except psycopg.Error as exc:
            failed = exc.sqlstate
    return len(rows), rows[:3], failed, conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()


def cursors(conn: psycopg.Connection[Any]) -> object:
    conn.execute(f"INSERT INTO {TABLE} SELECT g, 'n' || g FROM generate_series(1, 500) g")
    with conn.transaction(), conn.cursor(name="cf5_cursor") as named:
        named.itersize = 37  # DECLARE, then FETCH 37 at a time
        named.execute(f"SELECT id FROM {TABLE} ORDER BY id")
        fetched = [row[0] for row in named]
    return sum(fetched), len(fetched), conn.execute("SELECT current_user").fetchone()


def notifications(conn: psycopg.Connection[Any]) -> object:
    conn.execute("LISTEN cf5_channel")
    conn.execute("NOTIFY cf5_channel, 'one'")
    conn.execute("SELECT pg_notify('cf5_channel', 'two')")
    got = [n.payload for n in conn.notifies(timeout=5, stop_after=2)]
    return got


def binary_and_large(conn: psycopg.Connection[Any]) -> object:
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT g, g::text, g * 1.5 FROM generate_series(1, 50000) g")
        rows = cur.fetchall()
    return len(rows), rows[0], rows[-1]


def pipeline_with_an_error(conn: psycopg.Connection[Any]) -> object:
    outcomes: list[object] = []
    try:
        with conn.pipeline():
            for i in (1, 2, 1):  # the second 1 fails; what follows it is skipped
                conn.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", (i, "x"))
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        outcomes.append(exc.sqlstate)
    outcomes.append(conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone())
    return outcomes


def role_switch_with_copy(conn: psycopg.Connection[Any]) -> object:
    conn.execute(f"SET ROLE {GRP}")
    with conn.cursor() as cur, cur.copy(f"COPY {TABLE} (id, name) FROM STDIN") as copy:
        copy.write_row((7, "seven"))
    who = conn.execute("SELECT current_user").fetchone()
    conn.execute("RESET ROLE")
    return who, conn.execute("SELECT current_user").fetchone()


@pytest.mark.parametrize("scenario", [copy_in_and_out, cursors, notifications,
                                      binary_and_large, pipeline_with_an_error,
                                      role_switch_with_copy])
def test_the_chain_is_transparent(pg_cluster: PostgresCluster,
                                  chain: tuple[RunningProxy, Audit, Path],
                                  scenario: Scenario) -> None:
    proxy, _, _ = chain
    both_ways(pg_cluster, proxy, scenario)


def test_a_running_statement_can_be_cancelled_through_the_chain_and_is_audited(
    pg_cluster: PostgresCluster, chain: tuple[RunningProxy, Audit, Path],
) -> None:
    proxy, audit, path = chain
    with connect(pg_cluster, proxy) as conn:
        with conn.cursor() as cur, cur.copy("COPY (SELECT 'cf5 copied') TO STDOUT") as copy:
            assert [bytes(chunk) for chunk in copy] == [b"cf5 copied\n"]
        # cancel_safe, not cancel: libpq's PQcancel holds the GIL while it
        # waits, and the proxy runs in this process (tests/interop explains).
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        timer.join()
        assert time.monotonic() - started < 25
        assert conn.execute("SELECT current_user").fetchone() == (APP,)
    assert audit.flush(timeout=10)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    completions = {r["sql"]: r for r in records if r["event"] == "complete"}
    assert completions["COPY (SELECT 'cf5 copied') TO STDOUT"]["rows"] == 1
    assert completions["SELECT pg_sleep(30)"]["sqlstate"] == "57014"

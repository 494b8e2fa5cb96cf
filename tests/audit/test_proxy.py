"""Audit through a real proxy, with psycopg and a real PostgreSQL.

Every statement psycopg sends (simple protocol, extended protocol, prepared
statements, pipeline mode, errors, transactions) must come out of the JSON
Lines file with exactly one outcome, attributed to the right request, and
the chain must verify once the proxy has shut down.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import pytest

from pgwire.audit import JsonLinesSink, verify_chain
from pgwire.middleware.audit import REFUSED_SQLSTATE, Audit
from pgwire.middleware.roles import RoleGuard
from pgwire.proxy import ProxyConfig
from pgwire.proxy.config_file import parse_config
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.pki import CertificateAuthority
from pgwire.testing.proxy import ADAPTERS, AdapterName, RunningProxy, running_proxy
from pgwire.tls import server_context

from .helpers import TIMEOUT, GateSink, events, read_jsonl

TABLE = "audit_proxy_items"


class OneAtATime(GateSink):
    """A gated sink that takes one record per write, so a queue fills predictably."""

    batch_size = 1


@pytest.fixture(scope="module")
def table(pg_cluster: PostgresCluster) -> Iterator[str]:
    pg_cluster.sql(f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (n int)")
    yield TABLE
    pg_cluster.sql(f"DROP TABLE IF EXISTS {TABLE}")


def connect(pg: PostgresCluster, proxy: RunningProxy, **extra: Any) -> psycopg.Connection[Any]:
    settings: dict[str, Any] = {"sslmode": "disable", "application_name": "audit-test",
                                "connect_timeout": 10, **extra}
    return psycopg.connect(**pg.connect_kwargs(host=proxy.host, port=proxy.port, **settings))


def check_requests_complete(records: list[dict[str, Any]]) -> None:
    """Every request has exactly one outcome, with its own text, in its session."""
    requests = {(r["session_id"], r["request"]): r for r in records
                if r["event"] in ("query", "execute", "function_call")}
    outcomes = Counter((r["session_id"], r["request"]) for r in records
                       if r["event"] == "complete")
    assert set(outcomes) == set(requests)
    assert all(count == 1 for count in outcomes.values())
    for done in events(records, "complete"):
        assert done["sql"] == requests[done["session_id"], done["request"]]["sql"]


def test_a_session_is_recorded_completely(pg_cluster: PostgresCluster, table: str,
                                          tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = Audit(JsonLinesSink(path), redact="none")
    config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port), middleware=[audit])
    with running_proxy(config) as proxy, connect(pg_cluster, proxy) as conn:
        simple = psycopg.ClientCursor(conn)
        simple.execute("select 'simple'")
        [(backend_pid,)] = conn.execute("select pg_backend_pid()").fetchall()
        conn.execute("select %s::text", ["extended"])
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        conn.rollback()
        with conn.transaction():
            conn.execute(f"insert into {table} select generate_series(1, %s)", [3])
        for _ in range(2):
            conn.execute("select %s::int + 1 as prepared", [41], prepare=True)
        conn.commit()
    # The proxy has shut down and closed the audit: everything is on disk.
    assert verify_chain(path).ok
    records = read_jsonl(path)
    check_requests_complete(records)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    session = [r for r in records if r["event"] != "connect"]
    for record in session:
        assert record["startup_user"] == pg_cluster.superuser
        assert record["upstream_role"] == pg_cluster.superuser
        assert record["database"] == "postgres"
        assert record["backend_pid"] == backend_pid
        assert record["application_name"] == "audit-test"
        assert record["client_address"].startswith("127.0.0.1:")
    by_sql = {r["sql"]: r for r in events(records, "complete")}
    assert by_sql["select 'simple'"]["kind"] == "query"
    assert by_sql["select 'simple'"]["rows"] == 1
    assert by_sql["select $1::text"]["kind"] == "execute"
    assert by_sql["select 1/0"]["status"] == "error"
    assert by_sql["select 1/0"]["sqlstate"] == "22012"
    insert = by_sql[f"insert into {table} select generate_series(1, $1)"]
    assert (insert["status"], insert["rows"], insert["command_tags"]) == ("ok", 3, ["INSERT 0 3"])
    assert by_sql["BEGIN"]["status"] == by_sql["COMMIT"]["status"] == "ok"
    prepared = [r for r in events(records, "execute")
                if r["sql"] == "select $1::int + 1 as prepared"]
    assert len(prepared) == 2
    [parse] = [r for r in events(records, "parse") if r["sql"] == "select $1::int + 1 as prepared"]
    assert parse["statement_name"] != ""  # prepared once, executed twice by name
    assert {r["statement_name"] for r in prepared} == {parse["statement_name"]}
    [failure] = events(records, "error")
    assert (failure["sql"], failure["sqlstate"]) == ("select 1/0", "22012")
    [end] = events(records, "disconnect")
    assert end["statements"] == len(events(records, "query", "execute"))
    assert end["errors"] == 1
    assert end["rows"] == sum(r["rows"] or 0 for r in events(records, "complete"))


def test_pipeline_mode_is_attributed_request_by_request(pg_cluster: PostgresCluster,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = Audit(JsonLinesSink(path), redact="none")
    config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port), middleware=[audit])
    with running_proxy(config) as proxy, connect(pg_cluster, proxy, autocommit=True) as conn:
        with conn.pipeline() as pipeline:
            cursors = [conn.execute("select generate_series(1, %t::int)", [str(n)])
                       for n in (1, 4, 2)]
            pipeline.sync()
            counts = [len(c.fetchall()) for c in cursors]
        assert counts == [1, 4, 2]
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute("select generate_series(1, %t::int)", ["5"])
            conn.execute("select 1/%t::int", ["0"])
            conn.execute("select generate_series(1, %t::int)", ["6"])
        assert conn.execute("select 'after'").fetchone() == ("after",)
    records = read_jsonl(path)
    check_requests_complete(records)
    # Each Execute's Bind holds its parameter, so the rows it reported must match.
    binds = events(records, "bind")
    executes = events(records, "execute")
    assert len(binds) == len(executes) == 6
    outcome = {r["request"]: r for r in events(records, "complete")}
    seen = [(bind["parameters"][0], outcome[execute["request"]]["status"],
             outcome[execute["request"]]["rows"]) for bind, execute in zip(binds, executes,
                                                                             strict=True)]
    assert seen == [("1", "ok", 1), ("4", "ok", 4), ("2", "ok", 2),
                    ("5", "ok", 5), ("0", "error", None), ("6", "skipped", None)]
    [failure] = events(records, "error")
    assert failure["sql"] == "select 1/$1::int"


def test_a_full_queue_refuses_statements_and_the_transaction_follows(
        pg_cluster: PostgresCluster, table: str) -> None:
    sink = OneAtATime()
    # The writer holds the connect record; auth and role_mapping wait in the queue.
    # BEGIN and the first INSERT fit (their outcomes may overshoot); then it is full.
    audit = Audit(sink, queue_size=5, when_full="reject")
    try:
        config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port), middleware=[audit])
        with running_proxy(config) as proxy, connect(pg_cluster, proxy,
                                                     autocommit=True) as conn:
            assert sink.waiting.wait(TIMEOUT)
            conn.execute("begin")
            conn.execute(f"insert into {table} values (-3)")
            with pytest.raises(psycopg.errors.InsufficientResources) as refused:
                conn.execute(f"insert into {table} values (-1)")
            assert refused.value.sqlstate == REFUSED_SQLSTATE
            # The block failed on the server too, as it would have for a server error.
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                conn.execute("select 1")
            sink.open()
            assert audit.flush(TIMEOUT)
            commit = conn.execute("commit")
            assert commit.statusmessage == "ROLLBACK"
            conn.execute(f"insert into {table} values (-2)")
    finally:
        sink.open()
        audit.close()
    assert pg_cluster.sql(f"select n from {table} where n < 0 order by n") == "-2"
    assert audit.stats.refused == 2
    written = [r.as_dict() for r in sink.records]
    check_requests_complete(written)
    assert [r["sql"] for r in events(written, "query")] == [
        "begin", f"insert into {table} values (-3)", "commit",
        f"insert into {table} values (-2)"]


def test_when_full_block_holds_the_session_until_there_is_room(pg_cluster: PostgresCluster,
                                                               tmp_path: Path) -> None:
    sink = OneAtATime()
    audit = Audit(sink, queue_size=1, when_full="block")
    finished = threading.Event()
    answers: list[Any] = []
    try:
        with running_proxy(ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port),
                                       middleware=[audit])) as proxy:

            def client() -> None:
                with connect(pg_cluster, proxy, autocommit=True) as conn:
                    answers.append(conn.execute("select 'through'").fetchone())
                finished.set()

            thread = threading.Thread(target=client)
            thread.start()
            assert sink.waiting.wait(TIMEOUT)
            assert not finished.wait(0.3)  # the proxy waits for room in the queue
            sink.open()
            assert finished.wait(TIMEOUT)
            thread.join(TIMEOUT)
    finally:
        sink.open()
        audit.close()
    assert answers == [("through",)]
    written = [r.as_dict() for r in sink.records]
    check_requests_complete(written)
    assert [r["event"] for r in written] == ["connect", "auth", "role_mapping", "query",
                                             "complete", "disconnect"]


def test_tls_facts_are_recorded(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "pki", "audit test CA")
    cert, key = ca.issue_server_certificate("proxy")
    client_cert, client_key = ca.issue_client_certificate("audited-client")
    path = tmp_path / "audit.jsonl"
    audit = Audit(JsonLinesSink(path))
    config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port), middleware=[audit],
                         client_tls=server_context(cert, key, client_ca=ca.certificate))
    with running_proxy(config) as proxy, connect(
            pg_cluster, proxy, sslmode="verify-ca", sslrootcert=str(ca.certificate),
            sslcert=str(client_cert), sslkey=str(client_key)) as conn:
        conn.execute("select 1")
    [tls] = events(read_jsonl(path), "tls")
    assert tls["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert tls["cipher"]
    assert tls["client_certificate_cn"] == "audited-client"
    der = ssl.PEM_cert_to_DER_cert(Path(client_cert).read_text())
    assert tls["client_certificate_sha256"] == hashlib.sha256(der).hexdigest()
    assert tls["startup_user"] == pg_cluster.superuser


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_configured_from_toml_and_closed_by_the_proxy(pg_cluster: PostgresCluster,
                                                      tmp_path: Path,
                                                      adapter: AdapterName) -> None:
    path = tmp_path / "from-toml.jsonl"
    loaded = parse_config({
        "upstream": f"{pg_cluster.host}:{pg_cluster.port}",
        "middleware": [{
            "class": "pgwire.middleware.audit:Audit",
            "when_full": "drop",
            "queue_size": 1000,
            "sink": {"type": "jsonl", "path": str(path)},
        }],
    })
    [audit] = loaded.config.middleware
    assert isinstance(audit, Audit) and isinstance(audit.sink, JsonLinesSink)
    with running_proxy(loaded.config, adapter=adapter) as proxy, connect(pg_cluster,
                                                                         proxy) as conn:
        conn.execute("select 'from toml'")
    # No explicit close here: the proxy's shutdown closed the audit.
    result = verify_chain(path)
    assert result.ok
    assert any(r.get("sql") == "select 'from toml'" for r in read_jsonl(path))
    assert audit.stats.queued == 0


def test_the_role_guards_decisions_and_the_effective_role(pg_cluster: PostgresCluster,
                                                          tmp_path: Path) -> None:
    pg_cluster.sql("DROP ROLE IF EXISTS audit_reader; DROP ROLE IF EXISTS audit_admin; "
                   "CREATE ROLE audit_reader; CREATE ROLE audit_admin")
    path = tmp_path / "audit.jsonl"
    audit = Audit(JsonLinesSink(path))
    guard = RoleGuard("allowlist", allow={pg_cluster.superuser: ["audit_reader"]})
    config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port), middleware=[audit, guard])
    try:
        with running_proxy(config) as proxy, connect(pg_cluster, proxy,
                                                     autocommit=True) as conn:
            # Let the guard's login query come back first: a role change sent at
            # once can be refused while the starting role is unknown.
            conn.execute("select 'first'")
            conn.execute("set role audit_reader")
            assert conn.execute("select current_user").fetchone() == ("audit_reader",)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("set role audit_admin")
            conn.execute("reset role")
            conn.execute("select 'back'")
    finally:
        pg_cluster.sql("DROP ROLE IF EXISTS audit_reader; DROP ROLE IF EXISTS audit_admin")
    records = read_jsonl(path)
    check_requests_complete(records)
    decisions = events(records, "role_decision")
    assert [(d["sql"], d["allowed"]) for d in decisions] == [
        ("set role audit_reader", True), ("set role audit_admin", False), ("reset role", True)]
    blocked = {r["event"]: r for r in records if r.get("sql") == "set role audit_admin"}
    assert blocked["error"]["sqlstate"] == blocked["complete"]["sqlstate"] == "42501"
    assert blocked["error"]["request"] == blocked["query"]["request"]
    changes = events(records, "role_change")
    assert [c["after_current"] for c in changes][:1] == ["audit_reader"]
    effective = {r["sql"]: r["effective_role"] for r in events(records, "query")}
    assert effective["select current_user"] == "audit_reader"
    assert effective["select 'back'"] == pg_cluster.superuser
    # The guard's own queries to the server (login facts, verification) are not
    # the client's: they leave no record.
    assert all(r["sql"] in effective for r in events(records, "complete"))

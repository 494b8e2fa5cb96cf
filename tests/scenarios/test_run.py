"""Running scenarios in-process against the session's PostgreSQL (``[database]``
with ``apply_setup``): the setup, every adapter and client once, the failures
each kind of broken expectation reports, and hostile names.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwire.scenarios import (
    ClientUnavailable,
    Result,
    ScenarioError,
    ScenarioFile,
    check_client,
    load_scenario_file,
    open_database,
    parse_scenarios,
    run_scenarios,
)
from pgwire.sqlclient import SQLConnection
from pgwire.testing.cluster import PostgresCluster

from .files import (
    EXPECTED_FAILURES,
    FAILING_SCENARIOS,
    HOSTILE,
    HOSTILE_ROLE,
    PASSING_SCENARIOS,
    PASSWORD_ENV,
    POOLED_SETUP,
    database_table,
    drop_everything,
)


@pytest.fixture(scope="module")
def cluster(pg_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    yield pg_cluster
    drop_everything(pg_cluster)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "check.toml"
    path.write_text(text)
    return path


def spec_for(cluster: PostgresCluster, tmp_path: Path, body: str, *,
             apply_setup: bool = True) -> ScenarioFile:
    # [database] last: top-level keys of the body must come before any table.
    path = write(tmp_path, body + database_table(cluster, apply_setup=apply_setup))
    return load_scenario_file(path, environ={PASSWORD_ENV: cluster.superuser_password})


def admin(cluster: PostgresCluster) -> SQLConnection:
    return SQLConnection.connect((cluster.host, cluster.port), user=cluster.superuser,
                                 password=cluster.superuser_password)


def test_setup_creates_then_updates_roles_databases_and_grants(
        cluster: PostgresCluster, tmp_path: Path) -> None:
    spec = spec_for(cluster, tmp_path, POOLED_SETUP)
    with open_database(spec) as db:
        assert db.address == (cluster.host, cluster.port) and db.cluster is None
        assert db.server_version >= 140000
    with admin(cluster) as conn:
        conn.execute("ALTER ROLE chk_pool INHERIT")  # drifted; the next setup repairs it
    with open_database(spec) as db, db.connect() as conn:
        assert conn.query("SELECT rolcanlogin, rolinherit FROM pg_roles "
                          "WHERE rolname = 'chk_pool'") == [("t", "f")]
        groups = conn.query("SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON "
                            "g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member WHERE "
                            "r.rolname = 'chk_pool' ORDER BY 1")
        assert groups == [("chk_app",), ("chk_reporting",)]
        assert conn.query("SELECT pg_get_userbyid(datdba) FROM pg_database "
                          "WHERE datname = 'chk_shop'") == [("chk_app",)]
    with db.connect(database="chk_shop") as conn:
        assert conn.query("SELECT count(*) FROM items") == [("2",)]


def test_placeholders_resolve_to_the_database(cluster: PostgresCluster,
                                              tmp_path: Path) -> None:
    spec = spec_for(cluster, tmp_path, POOLED_SETUP)
    with open_database(spec) as db:
        proxy_file = spec.proxy_file(db)
    assert proxy_file.config.upstream == (cluster.host, cluster.port)
    guard = proxy_file.config.middleware[1]
    assert type(guard).__name__ == "RoleGuard"
    assert proxy_file.config.pool is not None and proxy_file.config.pool.max_size == 1


@pytest.mark.parametrize(("adapter", "client"), [
    ("asyncio", "pgwire"), ("trio", "psycopg"), ("blocking", "psql")])
def test_every_adapter_and_client_passes_the_scenarios(
        cluster: PostgresCluster, tmp_path: Path, adapter: str, client: str) -> None:
    spec = spec_for(cluster, tmp_path, POOLED_SETUP + PASSING_SCENARIOS)
    seen: list[Result] = []
    with open_database(spec) as db:
        results = run_scenarios(spec, db, adapter=adapter,  # type: ignore[arg-type]
                                client=client, progress=seen.append)  # type: ignore[arg-type]
    assert [(r.scenario, r.failure) for r in results] == [
        (s.name, None) for s in spec.scenarios]
    assert seen == results
    assert {(r.adapter, r.client) for r in results} == {(adapter, client)}


def test_each_broken_expectation_reports_its_first_failure(
        cluster: PostgresCluster, tmp_path: Path) -> None:
    spec = spec_for(cluster, tmp_path, POOLED_SETUP + FAILING_SCENARIOS)
    with open_database(spec) as db:
        results = {client: run_scenarios(spec, db, client=client)
                   for client in ("pgwire", "psql", "psycopg")}
    for client, found in results.items():
        *failed, passed = found
        assert passed.passed, (client, passed)
        assert len(failed) == len(EXPECTED_FAILURES)
        for result, (key, expected, actual) in zip(failed, EXPECTED_FAILURES, strict=True):
            assert result.failure is not None, (client, result)
            assert result.failure.key == key, (client, result)
            assert result.failure.expected.startswith(expected), (client, result)
            assert result.failure.actual.startswith(actual), (client, result)
    same_connection = results["pgwire"][7].failure
    assert same_connection is not None and "max_size = 1" in same_connection.actual
    assert "pool key" in same_connection.actual


def test_a_hostile_role_name_is_created_and_logs_in_as_itself(
        cluster: PostgresCluster, tmp_path: Path) -> None:
    spec = spec_for(cluster, tmp_path, HOSTILE)
    with open_database(spec) as db:
        (result,) = run_scenarios(spec, db, client="pgwire")
    assert result.passed, result.failure
    with admin(cluster) as conn:
        assert conn.query("SELECT rolname FROM pg_roles WHERE rolname IN ($1, 'chk_victim') "
                          "ORDER BY 1", [HOSTILE_ROLE]) == [(HOSTILE_ROLE,), ("chk_victim",)]


def test_grant_options_of_postgresql_16(cluster: PostgresCluster, tmp_path: Path) -> None:
    spec = spec_for(cluster, tmp_path, """
[roles.chk_opt_group]
[roles.chk_opt_member]
member_of = [{ role = "chk_opt_group", admin = true, inherit = false, set = false }]
""")
    with admin(cluster) as conn:
        version = int(conn.query("SHOW server_version_num")[0][0] or 0)
    if version < 160000:
        with pytest.raises(ScenarioError) as caught:
            open_database(spec).__enter__()
        assert str(caught.value).startswith(
            f"{spec.source}: roles.chk_opt_member.member_of[0].inherit: the INHERIT option "
            "of a grant needs PostgreSQL 16 or later; this server is PostgreSQL 15")
        with admin(cluster) as conn:  # refused before anything was created
            assert conn.query("SELECT 1 FROM pg_roles WHERE rolname = 'chk_opt_member'") == []
        return
    with open_database(spec) as db, db.connect() as conn:  # pragma: no cover - PostgreSQL 16+
        assert conn.query(
            "SELECT admin_option, inherit_option, set_option FROM pg_auth_members m "
            "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = 'chk_opt_member'"
        ) == [("t", "f", "f")]


def test_an_existing_database_is_left_alone_without_apply_setup(
        cluster: PostgresCluster, tmp_path: Path) -> None:
    body = 'setup = ["CREATE ROLE chk_made_anyway"]\n[roles.chk_absent]\nlogin = true\n'
    spec = spec_for(cluster, tmp_path, body, apply_setup=False)
    with pytest.raises(ScenarioError) as caught:
        open_database(spec).__enter__()
    assert str(caught.value).startswith(
        f"{spec.source}: roles.chk_absent: no such role in [database], and apply_setup is false")
    present = spec_for(cluster, tmp_path, 'setup = ["CREATE ROLE chk_made_anyway"]\n'
                                          "[roles.chk_present]\n", apply_setup=False)
    with admin(cluster) as conn:
        conn.execute("CREATE ROLE chk_present")
    with open_database(present):
        pass
    with admin(cluster) as conn:
        assert conn.query("SELECT 1 FROM pg_roles WHERE rolname LIKE 'chk_made%'") == []


def test_setup_sql_that_fails_names_its_entry(cluster: PostgresCluster,
                                              tmp_path: Path) -> None:
    spec = spec_for(cluster, tmp_path, 'setup = ["SELECT 1", "SELEC 2"]\n')
    with pytest.raises(ScenarioError) as caught:
        open_database(spec).__enter__()
    assert str(caught.value).startswith(
        f"{spec.source}: setup[1]: PostgreSQL refused the setup: 42601: syntax error")


def test_a_client_is_checked_before_anything_runs() -> None:
    spec = parse_scenarios({"scenario": [
        {"name": "a", "user": "u", "expect": {"login": "refused", "sqlstate": "28P01"}},
        {"name": "b", "user": "u", "parameters": {"search_path": "x"}}]}, source="c.toml")
    check_client(spec, "pgwire")
    with pytest.raises(ScenarioError) as caught:
        check_client(spec, "psql")
    assert str(caught.value).startswith(
        "c.toml: scenario[0].expect.sqlstate: psql cannot tell the SQLSTATE of a refused "
        "login")
    with pytest.raises(ScenarioError) as caught:
        check_client(spec, "psycopg", "b")
    assert str(caught.value).startswith(
        "c.toml: scenario[1].parameters.search_path: psycopg (libpq) can only send")
    shell = parse_scenarios({"scenario": [
        {"name": "s", "user": "u", "statements": [{"sql": "\\! touch /tmp/x"}]}]},
        source="c.toml")
    check_client(shell, "psycopg")
    with pytest.raises(ScenarioError) as caught:
        check_client(shell, "psql")
    assert str(caught.value).startswith(
        "c.toml: scenario[0].statements[0].sql: psql would run it as one of its own backslash")
    with pytest.raises(ValueError, match="client must be one of"):
        check_client(spec, "jdbc")
    assert issubclass(ClientUnavailable, RuntimeError)


def test_the_setup_login_over_tls(cluster: PostgresCluster) -> None:
    """[database] sslmode = "prefer" (the default) or "require" against a server
    with TLS: the runner's login goes through pgwire.sqlclient, which must
    complete the TLS handshake (the session cluster offers TLS)."""
    with SQLConnection.connect((cluster.host, cluster.port), user=cluster.superuser,
                               password=cluster.superuser_password, sslmode="require",
                               timeout=3) as conn:
        assert conn.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [
            ("t",)]

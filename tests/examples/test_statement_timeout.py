"""examples/statement_timeout.py through a real proxy and PostgreSQL: the cap is in
force from the first statement, PostgreSQL's 57014 reaches the client, RESET returns
to the cap, and every way to lift it is refused (or, for a function, documented)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.errors
import pytest

import pgwire as pw
from pgwire.proxy import ProxyConfig
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import RunningProxy, running_proxy
from tests.interop.proxy_wire import RawClient, load_example

from .programs import running_example, stop

statement_timeout = load_example("statement_timeout")
CAPPED, FREE = "ex_to_capped", "ex_to_free"
CAP = "300ms"


@pytest.fixture(scope="module")
def roles(pg_cluster: PostgresCluster) -> Iterator[None]:
    with psycopg.connect(**pg_cluster.connect_kwargs(), autocommit=True) as conn:
        for role in (CAPPED, FREE):
            conn.execute(f"DROP ROLE IF EXISTS {role}")
            conn.execute(f"CREATE ROLE {role} LOGIN")
        # The hole the docstring names: a function that sets the value itself.
        conn.execute("""
            CREATE OR REPLACE FUNCTION ex_to_lift() RETURNS text LANGUAGE sql
            AS $$ SELECT set_config('statement' || '_timeout', '0', false) $$""")
    yield
    with psycopg.connect(**pg_cluster.connect_kwargs(), autocommit=True) as conn:
        conn.execute("DROP FUNCTION IF EXISTS ex_to_lift()")
        for role in (CAPPED, FREE):
            conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture(scope="module")
def proxy(pg_cluster: PostgresCluster, roles: None) -> Iterator[RunningProxy]:
    capping = statement_timeout.StatementTimeout({"ex_to_cap*": CAP, "nobody": "1h"})
    config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port), middleware=[capping])
    with running_proxy(config) as running:
        yield running


def through(cluster: PostgresCluster, port: int, user: str = CAPPED,
            **extra: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(**cluster.connect_kwargs(user=user, host="127.0.0.1", port=port,
                                                    sslmode="disable", **extra),
                           autocommit=True)


def show(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SHOW statement_timeout").fetchone()
    assert row is not None
    return str(row[0])


def test_the_cap_holds_from_the_first_statement_whatever_the_client_asked(
    pg_cluster: PostgresCluster, proxy: RunningProxy,
) -> None:
    with through(pg_cluster, proxy.port, options="-c statement_timeout=0") as conn:
        assert show(conn) == CAP
    with through(pg_cluster, proxy.port, FREE) as conn:
        assert show(conn) == "0"
        conn.execute("SET statement_timeout = 0")     # nobody caps this user


def test_a_long_statement_gets_postgresqls_57014(pg_cluster: PostgresCluster,
                                                  proxy: RunningProxy) -> None:
    with through(pg_cluster, proxy.port) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            conn.execute("SELECT pg_sleep(30)")
        assert info.value.sqlstate == "57014"
        assert info.value.diag.message_primary == "canceling statement due to statement timeout"
        assert conn.execute("SELECT 1").fetchone() == (1,)


LIFTS = [
    "SET statement_timeout = 0",
    "set statement_timeout=0",
    "SET statement_timeout TO '1h'",
    "SET SESSION statement_timeout = '10min'",
    "SET LOCAL statement_timeout = 0",
    'SET "statement_timeout" = 0',
    "SET statement_timeout = 'forever'",
    'SET U&"statement\\005ftimeout" = 0',
    "SET/**/statement_timeout = 0",
    "SELECT 1; SET statement_timeout = 0",
    "SELECT set_config('statement_timeout', '0', false)",
    "SELECT set_config('STATEMENT_TIMEOUT', '0', false)",
    "SELECT set_config('statement' || '_timeout', '0', false)",
    f"ALTER ROLE {CAPPED} SET statement_timeout = 0",
]


@pytest.mark.parametrize("sql", LIFTS)
def test_every_way_to_lift_the_cap_is_refused(pg_cluster: PostgresCluster,
                                              proxy: RunningProxy, sql: str) -> None:
    with through(pg_cluster, proxy.port) as conn, psycopg.ClientCursor(conn) as cursor:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            cursor.execute(sql)
        assert str(info.value.diag.message_primary).startswith(
            "permission denied to change statement_timeout")
        assert show(conn) == CAP


def test_the_extended_protocol_and_function_calls_are_checked_too(
    pg_cluster: PostgresCluster, proxy: RunningProxy,
) -> None:
    with through(pg_cluster, proxy.port) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT set_config(%s, %s, false)", ["statement_timeout", "0"])
        assert show(conn) == CAP
    with psycopg.connect(**pg_cluster.connect_kwargs()) as conn:
        [oid] = conn.execute(
            "SELECT 'set_config(text,text,boolean)'::regprocedure::oid").fetchone() or [0]
        assert oid == statement_timeout.SET_CONFIG_OID
    with RawClient(proxy.address, user=CAPPED, database="postgres",
                   sslmode="disable") as client:
        client.login()
        client.send(pw.FunctionCall(function_oid=oid, argument_formats=(0,),
                                    arguments=(b"statement_timeout", b"0", b"f")))
        events = client.events_until(lambda e: isinstance(e, pw.ReadyForQuery))
        assert [e.code for e in events if isinstance(e, pw.ErrorResponse)] == ["42501"]
        assert client.scalar("SHOW statement_timeout") == CAP


KEEPS = [
    "RESET statement_timeout",
    "RESET ALL",
    "DISCARD ALL",
    "SET statement_timeout TO DEFAULT",
    "SET SESSION statement_timeout = DEFAULT",
]


@pytest.mark.parametrize("sql", KEEPS)
def test_resets_return_to_the_cap(pg_cluster: PostgresCluster, proxy: RunningProxy,
                                  sql: str) -> None:
    with through(pg_cluster, proxy.port) as conn:
        conn.execute("SET statement_timeout = '100ms'")   # shorter: allowed
        assert show(conn) == "100ms"
        conn.execute(sql)
        assert show(conn) == CAP
        assert conn.execute("SELECT current_setting('statement_timeout')").fetchone() == (CAP,)


def test_a_function_can_lift_it_for_later_statements_only(pg_cluster: PostgresCluster,
                                                          proxy: RunningProxy) -> None:
    with through(pg_cluster, proxy.port) as conn:
        # The statement that calls it keeps the timeout it started with ...
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT ex_to_lift(), pg_sleep(30)")
        # ... but the docstring's warning is real: the next ones run uncapped.
        conn.execute("SELECT ex_to_lift()")
        assert show(conn) == "0"


@pytest.mark.parametrize(("sql", "refused"), [
    ("SELECT 1", None),
    ("SHOW statement_timeout", None),
    ("SET statement_timeout = '250ms'", None),
    ("SET statement_timeout = 250", None),
    ("set local statement_timeout to '0.1s'", None),
    ("SELECT set_config('search_path', 'public', false)", None),
    ("SET statement_timeout = '1s'", "SET statement_timeout to '1s'"),
    ("SET statement_timeout = '1 min'", "SET statement_timeout to '1 min'"),
    ("SELECT set_config($1, $2, false)", "set_config() of statement_timeout"),
    ("SELECT set_config('statement' || '_timeout', '0', false)",
     "set_config() of statement_timeout"),
    # Errs toward refusing: set_config named at all, without a plain literal.
    ("SELECT 'set_config(text,text,boolean)'::regprocedure",
     "set_config() of statement_timeout"),
    ("SELECT name FROM pg_settings WHERE name = 'statement_timeout'", "statement_timeout"),
])
def test_the_statement_check(sql: str, refused: str | None) -> None:
    assert statement_timeout.lifting_statement(sql, 300) == refused


def test_durations() -> None:
    ms = statement_timeout.milliseconds
    assert [ms("5s"), ms("500"), ms("'1min'"), ms("1.5 h"), ms("250us")] == [
        5000, 500, 60000, 5_400_000, 0.25]
    assert ms("-1") is None and ms("5 parsecs") is None
    with pytest.raises(ValueError, match="positive duration"):
        statement_timeout.StatementTimeout({"x": "0"})


def test_it_runs_as_a_program(pg_cluster: PostgresCluster, roles: None) -> None:
    upstream = f"{pg_cluster.host}:{pg_cluster.port}"
    with running_example("statement_timeout", "--upstream", upstream,
                         "--timeout", f"{CAPPED}=2s") as (process, port):
        with through(pg_cluster, port) as conn:
            assert show(conn) == "2s"
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SET statement_timeout = 0")
        stdout, stderr = stop(process)
    assert process.returncode == 0, stderr
    assert stdout.strip() == "stopped"

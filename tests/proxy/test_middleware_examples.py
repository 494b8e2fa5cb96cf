"""The worked examples of docs/middleware.md: examples/read_only.py and
examples/query_tagger.py, through the proxy, with psycopg and a real PostgreSQL.

The examples are imported from their files, as a reader would run them; the
last tests start each one as a program. Statements go through psycopg's
ClientCursor for the simple protocol (a Query message) and with parameters
or ``prepare=True`` for the extended protocol (Parse/Bind/Execute).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import pytest
from psycopg.pq import TransactionStatus

import pgwire as pw
from pgwire.middleware import Reject
from pgwire.proxy import ProxyConfig
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import RunningProxy, running_proxy
from tests.interop.proxy_wire import load_example

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 15.0


read_only = load_example("read_only")
query_tagger = load_example("query_tagger")
ReadOnly = read_only.ReadOnly
QueryTagger = query_tagger.QueryTagger


def wait_until(predicate: Callable[[], object], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while not (result := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what} after {TIMEOUT:g} s")
        time.sleep(0.02)
    return result


@pytest.fixture(scope="module")
def objects(pg_cluster: PostgresCluster) -> Iterator[None]:
    """A table, a sequence and a function that writes, for the writes to aim at."""
    with psycopg.connect(**pg_cluster.connect_kwargs(), autocommit=True) as conn:
        conn.execute("""
            DROP TABLE IF EXISTS ro_example_items, ro_example_copy, ro_example_new;
            DROP SEQUENCE IF EXISTS ro_example_seq;
            CREATE TABLE ro_example_items (n int);
            INSERT INTO ro_example_items VALUES (1), (2);
            CREATE SEQUENCE ro_example_seq;
            CREATE OR REPLACE FUNCTION ro_example_write() RETURNS int
                LANGUAGE sql AS 'INSERT INTO ro_example_items VALUES (99) RETURNING n';
        """)
    yield
    with psycopg.connect(**pg_cluster.connect_kwargs(), autocommit=True) as conn:
        conn.execute("""
            DROP TABLE IF EXISTS ro_example_items, ro_example_copy, ro_example_new;
            DROP SEQUENCE IF EXISTS ro_example_seq;
            DROP FUNCTION IF EXISTS ro_example_write();
        """)


def direct(cluster: PostgresCluster, **extra: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(**cluster.connect_kwargs(**extra), autocommit=True)


def through(cluster: PostgresCluster, proxy: RunningProxy, *, autocommit: bool = True,
            **extra: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(**cluster.connect_kwargs(host=proxy.host, port=proxy.port,
                                                    sslmode="disable", **extra),
                           autocommit=autocommit)


def table_rows(cluster: PostgresCluster) -> list[int]:
    with direct(cluster) as conn:
        return [n for (n,) in conn.execute("SELECT n FROM ro_example_items ORDER BY n")]


@pytest.fixture
def read_only_proxy(pg_cluster: PostgresCluster, objects: None) -> Iterator[RunningProxy]:
    config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port), middleware=[ReadOnly])
    with running_proxy(config) as proxy:
        yield proxy


def simple(conn: psycopg.Connection[Any], sql: str) -> None:
    """Run ``sql`` as one Query message."""
    with psycopg.ClientCursor(conn) as cursor:
        if sql.lower().startswith("copy") and "from stdin" in sql.lower():
            with cursor.copy(sql) as copy:
                copy.write_row((5,))
        else:
            cursor.execute(sql)


# -- ReadOnly ---------------------------------------------------------------------------------

WRITES = [
    ("INSERT INTO ro_example_items VALUES (3)", "INSERT"),
    ("UPDATE ro_example_items SET n = n + 1", "UPDATE"),
    ("DELETE FROM ro_example_items", "DELETE"),
    ("SELECT n INTO ro_example_copy FROM ro_example_items", "SELECT INTO"),
    ("WITH added AS (INSERT INTO ro_example_items VALUES (3) RETURNING n) SELECT * FROM added",
     "INSERT"),
    ("SELECT * FROM ro_example_items FOR UPDATE", "SELECT FOR UPDATE"),
    ("COPY ro_example_items FROM STDIN", "COPY FROM"),
    ("SELECT nextval('ro_example_seq')", "nextval()"),
    ("CREATE TABLE ro_example_new (n int)", "CREATE TABLE"),
    ("TRUNCATE ro_example_items", "TRUNCATE TABLE"),
    ("SELECT 1; INSERT INTO ro_example_items VALUES (4)", "INSERT"),
    ("SET default_transaction_read_only = off", "SET default_transaction_read_only"),
    ("BEGIN READ WRITE", "BEGIN READ WRITE"),
    ("SELECT set_config('default_transaction_read_only', 'off', false)", "set_config()"),
    ("/* a comment first */ DELETE FROM ro_example_items", "DELETE"),
]


@pytest.mark.parametrize(("sql", "command"), WRITES, ids=[c for _, c in WRITES])
def test_writes_are_refused_in_the_simple_protocol(
    pg_cluster: PostgresCluster, read_only_proxy: RunningProxy, sql: str, command: str,
) -> None:
    with through(pg_cluster, read_only_proxy) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as info:
            simple(conn, sql)
        assert info.value.sqlstate == "25006"
        assert info.value.diag.message_primary == (
            f"cannot execute {command} in a read-only transaction")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert table_rows(pg_cluster) == [1, 2]


EXTENDED_WRITES = [
    ("INSERT INTO ro_example_items VALUES (%s)", [3], "INSERT"),
    ("UPDATE ro_example_items SET n = %s", [7], "UPDATE"),
    ("DELETE FROM ro_example_items WHERE n = %s", [1], "DELETE"),
    ("SELECT nextval(%s)", ["ro_example_seq"], "nextval()"),
    ("SELECT * FROM ro_example_items WHERE n = %s FOR SHARE", [1], "SELECT FOR SHARE"),
    ("CREATE TABLE ro_example_new AS SELECT n FROM ro_example_items", None, "CREATE TABLE AS"),
]


@pytest.mark.parametrize(("sql", "params", "command"), EXTENDED_WRITES,
                         ids=[c for *_, c in EXTENDED_WRITES])
def test_writes_are_refused_in_the_extended_protocol(
    pg_cluster: PostgresCluster, read_only_proxy: RunningProxy, sql: str,
    params: list[object] | None, command: str,
) -> None:
    with through(pg_cluster, read_only_proxy) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as info:
            conn.execute(sql, params, prepare=True)
        assert info.value.diag.message_primary == (
            f"cannot execute {command} in a read-only transaction")
        assert conn.execute("SELECT %s::int", [5]).fetchone() == (5,)
    assert table_rows(pg_cluster) == [1, 2]


def test_refusals_read_as_postgresqls_own(
    pg_cluster: PostgresCluster, read_only_proxy: RunningProxy,
) -> None:
    def refusal(conn: psycopg.Connection[Any], sql: str) -> tuple[str | None, str | None]:
        with pytest.raises(psycopg.Error) as info:
            simple(conn, sql)
        return info.value.sqlstate, info.value.diag.message_primary

    same = [sql for sql, command in WRITES
            if command in ("INSERT", "UPDATE", "DELETE", "SELECT INTO", "SELECT FOR UPDATE",
                           "COPY FROM", "nextval()", "CREATE TABLE", "TRUNCATE TABLE")
            and not sql.startswith(("WITH", "SELECT 1;", "/*"))]
    assert len(same) == 9
    with direct(pg_cluster, options="-c default_transaction_read_only=on") as server, (
        through(pg_cluster, read_only_proxy)
    ) as proxied:
        for sql in same:
            assert refusal(proxied, sql) == refusal(server, sql), sql


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_refused_write_fails_the_transaction_on_both_sides(
    pg_cluster: PostgresCluster, read_only_proxy: RunningProxy, protocol: str,
) -> None:
    name = f"ro-example-{protocol}"
    with through(pg_cluster, read_only_proxy, autocommit=False,
                 application_name=name) as conn:
        assert conn.execute("SELECT count(*) FROM ro_example_items").fetchone() == (2,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            if protocol == "simple":
                simple(conn, "INSERT INTO ro_example_items VALUES (3)")
            else:
                conn.execute("INSERT INTO ro_example_items VALUES (%s)", [3])
        assert conn.info.transaction_status == TransactionStatus.INERROR
        # The server's transaction failed too: it says so itself ...
        with direct(pg_cluster) as observer:
            state = observer.execute(
                "SELECT state FROM pg_stat_activity WHERE application_name = %s",
                [name]).fetchall()
        assert state == [("idle in transaction (aborted)",)]
        # ... and refuses the next statement with 25P02.
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM ro_example_items").fetchone() == (2,)
    assert table_rows(pg_cluster) == [1, 2]


READS = [
    "SELECT n FROM ro_example_items ORDER BY n",
    "SHOW search_path",
    "EXPLAIN SELECT * FROM ro_example_items",
    "EXPLAIN ANALYZE SELECT * FROM ro_example_items",
    "WITH x AS (SELECT n FROM ro_example_items) SELECT count(*) FROM x",
    "SET search_path = public",
    "BEGIN READ ONLY; SELECT 1; COMMIT",
    "VALUES (1), (2)",
    "SELECT 'INSERT INTO ro_example_items VALUES (1); --'",
    "SELECT $$ DELETE FROM ro_example_items $$",
    "SELECT currval('ro_example_seq') WHERE false",
]


def test_reads_pass(pg_cluster: PostgresCluster, read_only_proxy: RunningProxy) -> None:
    with through(pg_cluster, read_only_proxy) as conn:
        for sql in READS:
            simple(conn, sql)
        assert conn.execute("SELECT n FROM ro_example_items WHERE n > %s ORDER BY n",
                            [0], prepare=True).fetchall() == [(1,), (2,)]
        with conn.cursor().copy("COPY (SELECT n FROM ro_example_items) TO STDOUT") as copy:
            assert sorted(int(row[0]) for row in copy.rows()) == [1, 2]
        with conn.transaction():
            assert conn.execute("SELECT count(*) FROM ro_example_items").fetchone() == (2,)


def test_the_server_is_read_only_too_whatever_the_client_asks(
    pg_cluster: PostgresCluster, read_only_proxy: RunningProxy,
) -> None:
    with through(pg_cluster, read_only_proxy,
                 options="-c default_transaction_read_only=off") as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        # A function that writes is plain SELECT text: the server refuses it.
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as info:
            conn.execute("SELECT ro_example_write()")
        assert info.value.diag.message_primary == (
            "cannot execute INSERT in a read-only transaction")
    assert table_rows(pg_cluster) == [1, 2]


def test_only_the_statement_check_without_the_server_side(pg_cluster: PostgresCluster,
                                                           objects: None) -> None:
    config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port),
                         middleware=[lambda: ReadOnly(server_side=False)])
    with running_proxy(config) as proxy, through(pg_cluster, proxy) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM ro_example_items")


CLASSIFIED = [
    ("select 1", None),
    ("explain insert into t values (1)", None),
    ("explain analyze insert into t values (1)", "INSERT"),
    ("copy t to stdout", None),
    ("copy t to '/tmp/out'", "COPY TO"),
    ("prepare p as insert into t values (1)", "INSERT"),
    ("prepare p as select 1", None),
    ("execute p", None),
    ("declare c cursor for select * from t for update", "SELECT FOR UPDATE"),
    ("set session characteristics as transaction read write",
     "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"),
    ("reset all", None),
    ("reset default_transaction_read_only", "RESET default_transaction_read_only"),
    ('set "default_transaction_read_only" to off', "SET default_transaction_read_only"),
    ("select set_config('search_path', 'public', false)", None),
    ("select lo_unlink(42)", "lo_unlink()"),
    ("select pg_catalog.nextval('s')", "nextval()"),
    ("do $$ begin end $$", "DO"),
    ("vacuum", "VACUUM"),
    ("create unique index on t (a)", "CREATE INDEX"),
    ("create or replace view v as select 1", "CREATE VIEW"),
    ("commit prepared 'x'", "COMMIT PREPARED"),
    ("/* a /* nested */ insert */ select 1", None),
    ("select E'\\'; delete from t; --'", None),
    # standard_conforming_strings on: the string ends at the second quote.
    ("select 'a\\'; delete from t; --'", "DELETE"),
    # ... and off: "select 'a\\'' , 1; delete" is one string, then a DELETE.
    ("select 'a\\''; delete from t; --'", "DELETE"),
    ("select 'unterminated", "this statement"),
]


@pytest.mark.parametrize("classifier", ["pglast", "keywords"])
@pytest.mark.parametrize(("sql", "expected"), CLASSIFIED)
def test_the_classifiers(classifier: str, sql: str, expected: str | None) -> None:
    if classifier == "pglast":
        if not read_only.HAVE_PGLAST:
            pytest.skip("pglast (the sql extra) is not installed")
        found = read_only.pglast_write_command(sql)
    else:
        found = read_only.keyword_write_command(sql)
    if found is None and "\\" in sql:
        found = read_only.keyword_write_command(sql, backslash_escapes=True)
    if classifier == "keywords" and expected is None and sql.startswith("select set_config"):
        expected = "set_config()"   # without a grammar every set_config() is refused
    assert found == expected


def test_function_call_messages_are_refused() -> None:
    call = pw.FunctionCall(function_oid=1574, argument_formats=(), arguments=(b"s",),
                           result_format=0)
    verdict = ReadOnly().on_client_message(None, call)
    assert isinstance(verdict, Reject) and verdict.sqlstate == "25006"


# -- QueryTagger -------------------------------------------------------------------------------


@pytest.fixture
def tagger_proxy(pg_cluster: PostgresCluster) -> Iterator[RunningProxy]:
    config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port), middleware=[QueryTagger])
    with running_proxy(config) as proxy:
        yield proxy


OWN_QUERY = "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()"


def own_query(conn: psycopg.Connection[Any], *, extended: bool = False) -> str:
    if extended:
        # Unnamed (prepare=False): a named statement keeps the tag of its Parse.
        row = conn.execute(OWN_QUERY + " AND %s", [True], prepare=False).fetchone()
    else:
        with psycopg.ClientCursor(conn) as cursor:
            row = cursor.execute(OWN_QUERY).fetchone()
    assert row is not None
    return str(row[0])


def test_the_tag_shows_in_pg_stat_activity_for_a_running_query(
    pg_cluster: PostgresCluster, tagger_proxy: RunningProxy,
) -> None:
    failures: list[BaseException] = []

    def sleeper() -> None:
        try:
            with through(pg_cluster, tagger_proxy, application_name="tagger-test") as conn, (
                pytest.raises(psycopg.errors.QueryCanceled)
            ):
                conn.execute("SELECT pg_sleep(60)")
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        with direct(pg_cluster) as observer:
            def running() -> list[tuple[int, str]]:
                return observer.execute(
                    "SELECT pid, query FROM pg_stat_activity WHERE application_name = "
                    "'tagger-test' AND state = 'active'").fetchall()

            [(pid, query)] = wait_until(running, "the pg_sleep to run")
            assert query == "/* application_name=tagger-test */ SELECT pg_sleep(60)"
            observer.execute("SELECT pg_cancel_backend(%s)", [pid])
    finally:
        thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert failures == []


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
def test_the_tag_follows_set_application_name(
    pg_cluster: PostgresCluster, tagger_proxy: RunningProxy, extended: bool,
) -> None:
    with through(pg_cluster, tagger_proxy, application_name="first") as conn:
        assert own_query(conn, extended=extended).startswith("/* application_name=first */ ")
        conn.execute("SET application_name = 'second'")
        assert own_query(conn, extended=extended).startswith("/* application_name=second */ ")
        with conn.transaction():
            conn.execute("SET LOCAL application_name = 'third'")
            assert own_query(conn, extended=extended).startswith(
                "/* application_name=third */ ")
        # The transaction's end restored the name; the server reported it.
        assert own_query(conn, extended=extended).startswith("/* application_name=second */ ")


def test_without_a_name_the_tag_is_empty(pg_cluster: PostgresCluster,
                                         tagger_proxy: RunningProxy) -> None:
    with through(pg_cluster, tagger_proxy) as conn:
        assert own_query(conn) == "/* application_name= */ " + OWN_QUERY


@pytest.mark.parametrize("name", [
    "x */ SELECT 1/0; /* y",
    "/* opens a comment",
    "ends one */",
    "*/*/*/",
])
def test_a_malicious_application_name_cannot_break_out(
    pg_cluster: PostgresCluster, tagger_proxy: RunningProxy, name: str,
) -> None:
    expected = "/* application_name=" + name.replace("*", "_") + " */ " + OWN_QUERY
    with through(pg_cluster, tagger_proxy, application_name=name) as conn:
        assert own_query(conn) == expected
        assert conn.execute("SHOW application_name").fetchone() == (name,)
    with through(pg_cluster, tagger_proxy) as conn:
        conn.execute("SELECT set_config('application_name', %s, false)", [name])
        assert own_query(conn) == expected
        assert own_query(conn, extended=True).startswith(expected.removesuffix(OWN_QUERY))


def test_error_positions_point_into_the_clients_statement(
    pg_cluster: PostgresCluster, tagger_proxy: RunningProxy,
) -> None:
    sql = "SELECT 1, no_such_column"

    def position(conn: psycopg.Connection[Any]) -> str | None:
        with pytest.raises(psycopg.errors.UndefinedColumn) as info:
            conn.execute(sql)
        return info.value.diag.statement_position

    with direct(pg_cluster) as server, through(pg_cluster, tagger_proxy,
                                               application_name="pos") as proxied:
        assert position(proxied) == position(server) == "11"


def test_the_examples_compose(pg_cluster: PostgresCluster, objects: None) -> None:
    config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port),
                         middleware=[QueryTagger, ReadOnly])
    with running_proxy(config) as proxy, through(pg_cluster, proxy,
                                                 application_name="both") as conn:
        assert own_query(conn).startswith("/* application_name=both */ ")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM ro_example_items")
    assert table_rows(pg_cluster) == [1, 2]


# -- as programs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("example", ["read_only", "query_tagger"])
def test_the_examples_run_as_programs(pg_cluster: PostgresCluster, objects: None,
                                      example: str) -> None:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / f"{example}.py"), "--listen", "127.0.0.1:0",
         "--upstream", f"{pg_cluster.host}:{pg_cluster.port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.match(r"listening on 127\.0\.0\.1:(\d+)", first)
        assert match is not None, first + process.stderr.read() if process.stderr else first
        proxy = RunningProxy("127.0.0.1", int(match.group(1)), None, "asyncio")  # type: ignore[arg-type]
        with through(pg_cluster, proxy, application_name="program") as conn:
            if example == "read_only":
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    conn.execute("DELETE FROM ro_example_items")
            else:
                assert own_query(conn).startswith("/* application_name=program */ ")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert stdout.strip() == "stopped"

"""examples/sqlite_server.py with psql, psycopg and a raw protocol client: DDL, NULLs
and unicode, SQLSTATEs, transactions, multi-statement queries, parameters, text and
binary results, row limits, and bad input (malformed SQL, unknown types, huge values,
a client vanishing mid-transaction)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import pytest
from psycopg.pq import TransactionStatus

import pgwire as pw
from tests.interop.proxy_wire import RawClient, load_example, wait_until

from .programs import ENV, running_example, stop

sqlite_server = load_example("sqlite_server")


@pytest.fixture
def server() -> Iterator[Any]:
    with sqlite_server.SQLiteServer() as running:
        yield running
    assert running.errors == []


def connect(port: int, **extra: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=port, user="demo", dbname="demo",
                           sslmode="prefer", **extra)


def psql(port: int, *commands: str) -> subprocess.CompletedProcess[str]:
    psql_path = shutil.which("psql")
    assert psql_path is not None, "psql is needed: apt-get install postgresql-client"
    argv = [psql_path, "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "demo", "-d", "demo",
            "-v", "VERBOSITY=verbose", "-A", "-F", "|"]
    for command in commands:
        argv += ["-c", command]
    return subprocess.run(argv, capture_output=True, text=True, encoding="utf-8", env=ENV,
                          timeout=30, check=False)


def test_psql_creates_inserts_selects_and_gets_sqlstates(server: Any) -> None:
    done = psql(server.port, "create table t(a int, b text)",
                "insert into t values (1, 'Zoë 宮本'), (2, null)", "select * from t order by a")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["CREATE TABLE", "INSERT 0 2", "a|b", "1|Zoë 宮本", "2|",
                                        "(2 rows)"]
    for sql, code in [("selec 1", "42601"), ("select * from nope", "42P01"),
                      ("select nope from t", "42703"), ("create table t(a int)", "42P07")]:
        failed = psql(server.port, sql)
        assert failed.returncode == 1
        assert f"ERROR:  {code}:" in failed.stderr, failed.stderr


def test_psycopg_with_parameters_types_and_both_formats(server: Any) -> None:
    with connect(server.port, autocommit=True) as conn:
        conn.execute("create table v(i int, r real, t text, b blob, f bool)")
        # psycopg sends $1..$5 with the types of the values; the server binds ?1..?5.
        conn.execute("insert into v values (%s, %s, %s, %s, %s)",
                     [7, 2.5, "ünïcode", b"\x00\xff", True])
        conn.execute("insert into v values (%s, %s, %s, %s, %s)", [None] * 5)
        for binary in (False, True):
            rows = conn.execute("select * from v order by i nulls last", binary=binary).fetchall()
            assert rows == [(7, 2.5, "ünïcode", b"\x00\xff", True), (None,) * 5]
        assert conn.execute("select count(*) from v where i = %s", [7]).fetchone() == (1,)
        assert conn.execute("select %s, %s", [-(2**63), float("inf")],
                            binary=True).fetchone() == (-(2**63), float("inf"))


def test_constraint_violations_get_postgresqls_sqlstates(server: Any) -> None:
    with connect(server.port, autocommit=True) as conn:
        conn.execute("create table p(id int primary key, name text not null unique)")
        conn.execute("create table c(p int references p(id), n int check (n > 0))")
        conn.execute("pragma foreign_keys = on")
        conn.execute("insert into p values (1, 'one')")
        for sql, error in [
            ("insert into p values (1, 'again')", psycopg.errors.UniqueViolation),
            ("insert into p values (2, 'one')", psycopg.errors.UniqueViolation),
            ("insert into p values (3, null)", psycopg.errors.NotNullViolation),
            ("insert into c values (9, 1)", psycopg.errors.ForeignKeyViolation),
            ("insert into c values (1, 0)", psycopg.errors.CheckViolation),
            ("select 'unterminated", psycopg.errors.SyntaxError),
        ]:
            with pytest.raises(error):
                conn.execute(sql)


def test_transactions_and_failed_blocks(server: Any) -> None:
    with connect(server.port) as conn:          # psycopg opens a block: BEGIN first
        conn.execute("create table tx(a int unique)")
        conn.execute("insert into tx values (1)")
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("insert into tx values (1)")
        assert conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.info.transaction_status == TransactionStatus.IDLE
        with pytest.raises(psycopg.errors.UndefinedTable):   # the CREATE was rolled back
            conn.execute("select * from tx")
        conn.rollback()
        conn.execute("create table tx(a int)")
        conn.execute("insert into tx values (2)")
        conn.commit()
    with connect(server.port, autocommit=True) as conn:
        assert conn.execute("select a from tx").fetchall() == [(2,)]


def test_several_statements_in_one_query(server: Any) -> None:
    with connect(server.port, autocommit=True) as conn, psycopg.ClientCursor(conn) as cursor:
        cursor.execute("create table m(a int, b text); insert into m values (1, 'x;y'); "
                       "select a, b from m; select 2 as two")
        results: list[object] = []
        while True:
            results.append(cursor.fetchall() if cursor.description else cursor.statusmessage)
            if not cursor.nextset():
                break
        assert results == ["CREATE TABLE", "INSERT 0 1", [(1, "x;y")], [(2,)]]
        with pytest.raises(psycopg.errors.UndefinedTable):
            cursor.execute("insert into m values (3, 'z'); select * from nope; "
                           "insert into m values (4, 'never')")
        # Each statement commits on its own: the first stays, the last never ran.
        assert cursor.execute("select a from m order by a").fetchall() == [(1,), (3,)]


def raw(server: Any) -> RawClient:
    client = RawClient(("127.0.0.1", server.port), user="demo", database="demo",
                       sslmode="disable")
    client.login()
    return client


def answers(client: RawClient) -> list[Any]:
    return client.events_until(lambda e: isinstance(e, pw.ReadyForQuery))


def test_row_limits_described_statements_and_unknown_types(server: Any) -> None:
    with raw(server) as client:
        client.query("create table r(a int); insert into r values (1), (2), (3)")
        client.send(pw.Parse(statement="s", query="select a from r where a >= $1 order by a"),
                    pw.Describe(kind="S", name="s"),
                    pw.Bind(statement="s", parameters=(b"1",)),
                    pw.Execute(max_rows=2), pw.Execute(max_rows=2), pw.Sync())
        events = answers(client)
        kinds = [type(e).__name__ for e in events]
        assert kinds == ["ParseComplete", "ParameterDescription", "RowDescription",
                         "BindComplete", "DataRow", "DataRow", "PortalSuspended", "DataRow",
                         "CommandComplete", "ReadyForQuery"]
        # Described before it ran: text, as the docstring says.
        description = next(e for e in events if isinstance(e, pw.RowDescription))
        assert [(f.name, f.data_type_oid) for f in description.fields] == [("a", 25)]
        # A binary parameter of a type the server does not know: 0A000, then Sync.
        client.send(pw.Parse(query="select $1", parameter_types=(600,)),
                    pw.Bind(parameter_formats=(1,), parameters=(b"\x00" * 16,)),
                    pw.Execute(), pw.Sync())
        errors = [e for e in answers(client) if isinstance(e, pw.ErrorResponse)]
        assert [e.code for e in errors] == ["0A000"]
        # Several statements in one Parse: PostgreSQL's 42601.
        client.send(pw.Parse(query="select 1; select 2"), pw.Sync())
        assert [e.code for e in answers(client) if isinstance(e, pw.ErrorResponse)] == ["42601"]
        assert client.scalar("select 'still here'") == "still here"


def test_huge_values_and_a_message_over_the_limit() -> None:
    with sqlite_server.SQLiteServer(max_message_size=4_000_000) as server:
        big = "x" * 3_000_000
        with connect(server.port, autocommit=True) as conn:
            conn.execute("create table h(v text)")
            conn.execute("insert into h values (%s)", [big])
            assert conn.execute("select length(v), v from h").fetchone() == (len(big), big)
            with pytest.raises(psycopg.OperationalError):
                conn.execute("insert into h values (%s)", [big + big])
        with connect(server.port, autocommit=True) as conn:     # others go on
            assert conn.execute("select count(*) from h").fetchone() == (1,)
    assert server.errors == []


def test_a_client_vanishing_mid_transaction_leaves_no_lock_behind(server: Any) -> None:
    with connect(server.port, autocommit=True) as conn:
        conn.execute("create table gone(a int)")
    client = raw(server)
    client.query("begin")
    client.query("insert into gone values (1)")
    client.send(pw.Query(query="insert into gone values (2)"))
    client.abort()                           # a TCP reset, with a statement in flight
    with connect(server.port, autocommit=True) as conn:
        def rolled_back() -> bool:
            try:
                conn.execute("insert into gone values (3)")
            except psycopg.errors.LockNotAvailable:   # until the server sees the reset
                return False
            return True

        wait_until(rolled_back, "the vanished client's transaction to end")
        assert conn.execute("select a from gone").fetchall() == [(3,)]


def test_it_runs_as_a_program_on_a_file(tmp_path: Path) -> None:
    database = tmp_path / "demo.sqlite"
    with running_example("sqlite_server", "--database", str(database)) as (process, port):
        done = psql(port, "create table f(a int)", "insert into f values (42)")
        assert done.returncode == 0, done.stderr
        stdout, stderr = stop(process)
    assert process.returncode == 0, stderr
    assert stdout.strip() == "stopped"
    with sqlite3.connect(database) as db:
        assert db.execute("select a from f").fetchall() == [(42,)]

"""Real clients against the in-memory demo server (pgwire.demo_server on pgwire.Backend).

psql, psycopg 3 (libpq), asyncpg and pg8000 each connect to a DemoServer started in
this process on a free loopback port and read data that only the demo server has
(the ``users`` table, its version string), so a pass means the driver really
spoke to our Backend. A last group drives the server with pgwire.Frontend to pin
down protocol details no driver exercises on demand.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import asyncpg
import pg8000.native
import psycopg
import psycopg.errors
import pytest
from psycopg.pq import TransactionStatus as LibpqStatus

import pgwire as pw
from pgwire.demo_server import VERSION_STRING, DemoServer

USERS = [
    (1, "alice", "alice@example.com", True),
    (2, "Zoë", None, False),
    (3, "Ünal 宮本", "unal@example.jp", True),
]
PASSWORD = "s3cret-ü"


@pytest.fixture(scope="module")
def server() -> Iterator[DemoServer]:
    with DemoServer() as demo:
        yield demo
    assert demo.errors == [], "the demo server raised; see the logged traceback"


@pytest.fixture(scope="module")
def password_server() -> Iterator[DemoServer]:
    with DemoServer(password=PASSWORD) as demo:
        yield demo
    assert demo.errors == []


def conninfo(server: DemoServer, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.port, "user": "demo", "dbname": "demo", **extra}


# ---------------------------------------------------------------------------
# psql
# ---------------------------------------------------------------------------


def psql(server: DemoServer, *args: str, password: str | None = None,
         client_encoding: str = "UTF8") -> subprocess.CompletedProcess[str]:
    program = shutil.which("psql")
    if program is None:
        pytest.fail("psql is not on PATH: install the PostgreSQL client "
                    "(e.g. apt-get install postgresql-client)")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    # No ~/.pgpass: a password must come from the test or not at all.
    env |= {"PGCLIENTENCODING": client_encoding, "PGCONNECT_TIMEOUT": "10",
            "PGPASSFILE": os.path.join(os.path.dirname(__file__), "no-such-pgpass")}
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run(
        [program, "-X", "-At", "-h", "127.0.0.1", "-p", str(server.port), "-U", "demo",
         "-d", "demo", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
        encoding="utf-8" if client_encoding == "UTF8" else "latin-1",
    )


def test_psql_reads_the_users_table(server: DemoServer) -> None:
    result = psql(server, "-c", "select * from users")
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        "1|alice|alice@example.com|t", "2|Zoë||f", "3|Ünal 宮本|unal@example.jp|t"]
    assert result.returncode == 0


def test_psql_two_statements_in_one_query(server: DemoServer) -> None:
    result = psql(server, "-c", "select version(); show server_version")
    assert result.stdout.splitlines() == [VERSION_STRING, "15.0"]
    assert result.returncode == 0


def test_psql_shows_an_error_with_its_position(server: DemoServer) -> None:
    result = psql(server, "-c", "select * from nosuch")
    assert result.stderr.splitlines() == [
        'ERROR:  relation "nosuch" does not exist',
        "LINE 1: select * from nosuch",
        "                      ^",
    ]
    assert result.stdout == ""
    assert result.returncode == 1


def test_psql_latin1_client_encoding(server: DemoServer) -> None:
    result = psql(server, "-c", "show client_encoding", "-c", "select name from users where id = 2",
                  "-c", "select name from users", client_encoding="LATIN1")
    assert result.stdout.splitlines() == ["LATIN1", "Zoë"]  # decoded from LATIN1 bytes
    assert result.stderr.splitlines() == [
        "ERROR:  character with byte sequence 0xe5 0xae 0xae in encoding \"UTF8\" has no "
        'equivalent in encoding "LATIN1"']
    assert result.returncode == 1


def test_psql_password_authentication(password_server: DemoServer) -> None:
    good = psql(password_server, "-c", "select current_user", password=PASSWORD)
    assert (good.stdout, good.returncode) == ("demo\n", 0)
    bad = psql(password_server, "-c", "select 1", password="wrong")
    assert 'FATAL:  password authentication failed for user "demo"' in bad.stderr
    assert bad.returncode == 2


# ---------------------------------------------------------------------------
# psycopg 3 (libpq)
# ---------------------------------------------------------------------------


@pytest.fixture
def conn(server: DemoServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(**conninfo(server), autocommit=True) as connection:
        yield connection


def test_psycopg_simple_query(conn: psycopg.Connection[Any]) -> None:
    assert conn.info.parameter_status("server_version") == "15.0"
    assert conn.info.server_version == 150000
    cursor = conn.execute("select * from users")
    assert cursor.fetchall() == USERS
    assert cursor.description is not None
    assert [(c.name, c.type_code) for c in cursor.description] == [
        ("id", 23), ("name", 25), ("email", 25), ("active", 16)]
    assert conn.execute("select version()").fetchone() == (VERSION_STRING,)


def test_psycopg_parameters(conn: psycopg.Connection[Any]) -> None:
    # psycopg declares int2/int8/bool in binary and leaves strings untyped (OID 0).
    assert conn.execute("select %s::int, %s, %s", [5, "héllo", None]).fetchone() == (
        5, "héllo", None)
    assert conn.execute("select %s, %s, %s", [2**40, True, 7]).fetchone() == (2**40, True, 7)
    rows = conn.execute("select name, email from users where id = %s", [2]).fetchall()
    assert rows == [("Zoë", None)]


def test_psycopg_binary_results(conn: psycopg.Connection[Any]) -> None:
    cursor = conn.cursor(binary=True)
    assert cursor.execute("select * from users").fetchall() == USERS
    assert cursor.execute("select %s::int8, %s::bool", [-(2**40), False]).fetchone() == (
        -(2**40), False)


def test_psycopg_prepared_statements(conn: psycopg.Connection[Any]) -> None:
    query = "select name from users where id = %s"
    assert conn.execute(query, [1], prepare=True).fetchall() == [("alice",)]
    assert conn.execute(query, [3], prepare=True).fetchall() == [("Ünal 宮本",)]


def test_psycopg_errors_map_to_sqlstate_classes(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.SyntaxError) as syntax:
        conn.execute("selec 1")
    assert syntax.value.diag.message_primary == 'syntax error at or near "selec"'
    assert syntax.value.diag.statement_position == "1"
    with pytest.raises(psycopg.errors.UndefinedTable) as table:
        conn.execute("select id from nosuch where id = %s", [1])
    assert table.value.diag.statement_position == "16"
    with pytest.raises(psycopg.errors.UndefinedColumn):
        conn.execute("select nosuch from users")
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        conn.execute("select %s::int", ["nine"])
    assert conn.execute("select 1").fetchone() == (1,)


def test_psycopg_transaction_status(conn: psycopg.Connection[Any]) -> None:
    assert conn.info.transaction_status is LibpqStatus.IDLE
    conn.execute("BEGIN")
    assert conn.info.transaction_status is LibpqStatus.INTRANS
    with pytest.raises(psycopg.errors.UndefinedTable):
        conn.execute("select * from nosuch")
    assert conn.info.transaction_status is LibpqStatus.INERROR
    with pytest.raises(psycopg.errors.InFailedSqlTransaction):
        conn.execute("select 1")
    conn.execute("ROLLBACK")
    assert conn.info.transaction_status is LibpqStatus.IDLE
    conn.execute("BEGIN")
    conn.execute("COMMIT")
    assert conn.info.transaction_status is LibpqStatus.IDLE


def test_psycopg_implicit_transactions(server: DemoServer) -> None:
    with psycopg.connect(**conninfo(server)) as connection:  # autocommit off: psycopg BEGINs
        connection.execute("select %s::int", [1], prepare=True)
        assert connection.info.transaction_status is LibpqStatus.INTRANS
        connection.commit()
        assert connection.info.transaction_status is LibpqStatus.IDLE
        with pytest.raises(psycopg.errors.SyntaxError):
            connection.execute("selec")
        # With prepared statements, psycopg's rollback also sends DEALLOCATE ALL.
        connection.rollback()
        assert connection.info.transaction_status is LibpqStatus.IDLE
        assert connection.execute("select current_user").fetchone() == ("demo",)


def test_psycopg_notices_and_parameter_status(conn: psycopg.Connection[Any]) -> None:
    notices: list[tuple[str | None, str | None]] = []
    conn.add_notice_handler(lambda d: notices.append((d.sqlstate, d.message_primary)))
    conn.execute("begin")
    conn.execute("begin")
    conn.execute("commit")
    conn.execute("commit")
    assert notices == [("25001", "there is already a transaction in progress"),
                       ("25P01", "there is no transaction in progress")]
    conn.execute("set application_name = 'interop test'")
    assert conn.info.parameter_status("application_name") == "interop test"
    assert conn.execute("show application_name").fetchone() == ("interop test",)


def test_psycopg_pipeline(conn: psycopg.Connection[Any]) -> None:
    with conn.pipeline():
        first = conn.execute("select %s::int", [41])
        second = conn.execute("select name from users where id = %s", [3])
        third = conn.execute("select current_user")
    assert first.fetchall() == [(41,)]
    assert second.fetchall() == [("Ünal 宮本",)]
    assert third.fetchall() == [("demo",)]


def test_psycopg_cancel_is_accepted(server: DemoServer, conn: psycopg.Connection[Any]) -> None:
    before = len(server.cancel_requests)
    conn.cancel_safe()
    assert [r.process_id for r in server.cancel_requests[before:]] == [conn.info.backend_pid]
    assert conn.execute("select 1").fetchone() == (1,)


def test_psycopg_protocol_3_2(server: DemoServer) -> None:
    # libpq 18 can ask for protocol 3.2, whose cancel keys may be longer than 4 bytes.
    if psycopg.pq.version() < 180000:
        pytest.fail(f"libpq {psycopg.pq.version()} cannot ask for protocol 3.2; need 18+")
    info = conninfo(server, min_protocol_version="3.2", max_protocol_version="3.2")
    with psycopg.connect(**info, autocommit=True) as connection:
        assert connection.execute("select * from users").fetchall() == USERS
        before = len(server.cancel_requests)
        connection.cancel_safe()
        assert len(server.cancel_requests[before].secret_key) == 32


def test_psycopg_password_authentication(password_server: DemoServer) -> None:
    with psycopg.connect(**conninfo(password_server, password=PASSWORD)) as connection:
        assert connection.execute("select current_user").fetchone() == ("demo",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**conninfo(password_server, password="wrong"))


# ---------------------------------------------------------------------------
# asyncpg (binary results, Describe statement, row limits)
# ---------------------------------------------------------------------------


def run_async(server: DemoServer, body: Any, **connect: Any) -> Any:
    async def main() -> Any:
        connection = await asyncpg.connect(host="127.0.0.1", port=server.port, user="demo",
                                           database="demo", **connect)
        try:
            return await body(connection)
        finally:
            await connection.close()
    return asyncio.run(main())


def test_asyncpg_fetch(server: DemoServer) -> None:
    async def body(connection: asyncpg.Connection) -> None:
        records = await connection.fetch("select * from users")
        assert [tuple(r) for r in records] == USERS
        assert list(records[1].keys()) == ["id", "name", "email", "active"]
        assert await connection.fetchval("select version()") == VERSION_STRING
    run_async(server, body)


def test_asyncpg_parameters(server: DemoServer) -> None:
    async def body(connection: asyncpg.Connection) -> None:
        assert await connection.fetchval("select $1::int", 5) == 5
        assert await connection.fetchval("select $1::int8", -(2**40)) == -(2**40)
        assert await connection.fetchval("select $1::bool", False) is False
        assert await connection.fetchval("select $1", "héllo") == "héllo"
        row = await connection.fetchrow("select name, email from users where id = $1", 2)
        assert tuple(row) == ("Zoë", None)
        statement = await connection.prepare("select $1::int as n, $2::text as t")
        assert [t.name for t in statement.get_parameters()] == ["int4", "text"]
        assert [(a.name, a.type.name) for a in statement.get_attributes()] == [
            ("n", "int4"), ("t", "text")]
    run_async(server, body)


def test_asyncpg_errors(server: DemoServer) -> None:
    async def body(connection: asyncpg.Connection) -> None:
        with pytest.raises(asyncpg.PostgresSyntaxError) as syntax:
            await connection.fetch("selec 1")
        assert (syntax.value.sqlstate, syntax.value.position) == ("42601", "1")
        with pytest.raises(asyncpg.UndefinedTableError):
            await connection.fetchval("select id from nosuch")
        assert await connection.fetchval("select 1") == 1
    run_async(server, body)


def test_asyncpg_transaction_and_cursor(server: DemoServer) -> None:
    async def body(connection: asyncpg.Connection) -> None:
        async with connection.transaction():
            assert connection.is_in_transaction()
            # prefetch=1: one row per Execute, PortalSuspended in between.
            rows = [tuple(r) async for r in connection.cursor("select * from users",
                                                              prefetch=1)]
            assert rows == USERS
        assert not connection.is_in_transaction()
    run_async(server, body)


def test_asyncpg_password_authentication(password_server: DemoServer) -> None:
    async def body(connection: asyncpg.Connection) -> Any:
        return await connection.fetchval("select current_user")
    assert run_async(password_server, body, password=PASSWORD) == "demo"
    with pytest.raises(asyncpg.InvalidPasswordError):
        run_async(password_server, body, password="wrong")


# ---------------------------------------------------------------------------
# pg8000 (native API: text formats, Describe statement + Flush + Sync)
# ---------------------------------------------------------------------------


def pg8000_connect(server: DemoServer, password: str | None = None) -> pg8000.native.Connection:
    return pg8000.native.Connection("demo", host="127.0.0.1", port=server.port, database="demo",
                                    password=password, timeout=30)


def test_pg8000_run(server: DemoServer) -> None:
    connection = pg8000_connect(server)
    try:
        assert connection.run("select * from users") == [list(row) for row in USERS]
        assert connection.run("select name, email from users where id = :id", id=2) == [
            ["Zoë", None]]
        assert connection.run("select :v::int, :w", v=5, w="héllo") == [[5, "héllo"]]
        statement = connection.prepare("select name from users where id = :id")
        assert statement.run(id=1) == [["alice"]]
        assert statement.run(id=3) == [["Ünal 宮本"]]
        statement.close()
    finally:
        connection.close()


def test_pg8000_errors(server: DemoServer) -> None:
    connection = pg8000_connect(server)
    try:
        with pytest.raises(pg8000.native.DatabaseError) as syntax:
            connection.run("selec :v", v=1)
        assert syntax.value.args[0]["C"] == "42601"
        assert syntax.value.args[0]["P"] == "1"
        with pytest.raises(pg8000.native.DatabaseError) as table:
            connection.run("select * from nosuch")
        assert table.value.args[0]["C"] == "42P01"
        assert connection.run("select 1") == [[1]]
    finally:
        connection.close()


def test_pg8000_password_authentication(password_server: DemoServer) -> None:
    connection = pg8000_connect(password_server, PASSWORD)
    try:
        assert connection.run("select current_user") == [["demo"]]
    finally:
        connection.close()
    with pytest.raises(pg8000.native.DatabaseError) as failed:
        pg8000_connect(password_server, "wrong")
    assert failed.value.args[0]["C"] == "28P01"


# ---------------------------------------------------------------------------
# pgwire.Frontend: protocol details on demand
# ---------------------------------------------------------------------------


class WireClient:
    """A Frontend on a socket: send messages, collect events up to the last owed ReadyForQuery."""

    def __init__(self, server: DemoServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.frontend = pw.Frontend()

    def exchange(self, *messages: pw.Message) -> list[object]:
        self.sock.sendall(b"".join(self.frontend.send(m) for m in messages))
        events: list[object] = []
        while True:
            event = self.frontend.next_event()
            if event is pw.NEED_DATA:
                self.frontend.receive_data(self.sock.recv(65536))
                continue
            events.append(event)
            done = isinstance(event, pw.ReadyForQuery) and not self.frontend.busy
            if done or isinstance(event, pw.ConnectionClosed):
                return events

    def close(self) -> None:
        self.sock.sendall(self.frontend.send(pw.Terminate()))
        self.sock.close()


@pytest.fixture
def wire(server: DemoServer) -> Iterator[WireClient]:
    client = WireClient(server)
    client.exchange(pw.StartupMessage.from_dict({"user": "demo", "database": "demo"}))
    yield client
    client.close()


def kinds(events: list[object]) -> list[str]:
    return [type(event).__name__ for event in events]


def test_negotiates_down_from_a_newer_protocol(server: DemoServer) -> None:
    client = WireClient(server)
    startup = pw.StartupMessage(protocol_version=(3 << 16) | 5,
                                parameters=(("user", "demo"), ("_pq_.compression", "on")))
    events = client.exchange(startup)
    assert events[0] == pw.NegotiateProtocolVersion(
        newest_minor_version=2, unrecognized_options=("_pq_.compression",))
    assert client.frontend.protocol_version == (3 << 16) | 2
    keys = [e for e in events if isinstance(e, pw.BackendKeyData)]
    assert len(keys[0].secret_key) == 32  # protocol 3.2 allows long cancel keys
    client.close()


def raw_exchange(server: DemoServer, data: bytes) -> bytes:
    """Send ``data``, close our side, return everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


STARTUP = pw.StartupMessage.from_dict({"user": "demo"}).encode()


@pytest.mark.parametrize(("data", "code", "message"), [
    (pw.SSLRequest().encode() + STARTUP, "08P01", "received unencrypted data after SSL request"),
    (pw.StartupMessage.from_dict({"database": "x"}).encode(), "28000",
     "no PostgreSQL user name specified in startup packet"),
    (STARTUP + b"Z\0\0\0\x04", "08P01", "invalid frontend message type 90"),
])
def test_a_misbehaving_client_gets_a_fatal_error(server: DemoServer, data: bytes, code: str,
                                                 message: str) -> None:
    received = raw_exchange(server, data)
    assert received.endswith(pw.ErrorResponse(
        severity="FATAL", severity_nonlocalized="FATAL", code=code, message=message).encode())


def test_encryption_requests_are_declined(server: DemoServer) -> None:
    for request, answer in ((pw.SSLRequest(), b"N"), (pw.GSSENCRequest(), b"N")):
        client = WireClient(server)
        client.sock.sendall(client.frontend.send(request))
        assert client.sock.recv(1) == answer
        client.frontend.receive_data(answer)
        assert client.frontend.next_event() in (pw.SSLResponse(accepted=False),
                                                pw.GSSENCResponse(accepted=False))
        events = client.exchange(pw.StartupMessage.from_dict({"user": "demo"}))
        assert events[-1] == pw.ReadyForQuery()
        client.close()
    # A direct TLS ClientHello: this server has no certificate, so it hangs up.
    assert raw_exchange(server, b"\x16\x03\x01\x00\x05hello") == b""


def test_cancel_requests_are_recorded(server: DemoServer) -> None:
    cancel = pw.CancelRequest(process_id=77, secret_key=b"\x01\x02\x03\x04")
    assert raw_exchange(server, cancel.encode()) == b""
    assert cancel in server.cancel_requests


def test_describe_statement_and_portal(wire: WireClient) -> None:
    events = wire.exchange(
        pw.Parse(statement="s1", query="select name from users where id = $1"),
        pw.Describe(kind="S", name="s1"),
        pw.Bind(portal="p1", statement="s1", parameters=(b"\x00\x00\x00\x01",),
                parameter_formats=(1,), result_formats=(1,)),
        pw.Describe(kind="P", name="p1"),
        pw.Execute(portal="p1"),
        pw.Parse(statement="s2", query="set application_name = 'x'"),
        pw.Describe(kind="S", name="s2"),
        pw.Close(kind="S", name="s1"),
        pw.Sync(),
    )
    assert kinds(events) == [
        "ParseComplete", "ParameterDescription", "RowDescription", "BindComplete",
        "RowDescription", "DataRow", "CommandComplete", "ParseComplete",
        "ParameterDescription", "NoData", "CloseComplete", "ReadyForQuery"]
    assert events[1] == pw.ParameterDescription(parameter_types=(23,))
    assert isinstance(events[4], pw.RowDescription) and events[4].fields[0].format == 1
    assert events[5] == pw.DataRow(values=(b"alice",))


def test_execute_row_limit_suspends_the_portal(wire: WireClient) -> None:
    events = wire.exchange(
        pw.Parse(query="select id from users"), pw.Bind(),
        pw.Execute(max_rows=2), pw.Execute(max_rows=2), pw.Sync(),
    )
    assert kinds(events) == ["ParseComplete", "BindComplete", "DataRow", "DataRow",
                             "PortalSuspended", "DataRow", "CommandComplete", "ReadyForQuery"]
    assert events[6] == pw.CommandComplete(tag="SELECT 1")


def test_errors_skip_to_sync_and_keep_the_transaction_status(wire: WireClient) -> None:
    events = wire.exchange(pw.Query(query="begin"))
    assert events[-1] == pw.ReadyForQuery(status=pw.TransactionStatus.IN_TRANSACTION)
    events = wire.exchange(
        pw.Bind(statement="missing"), pw.Execute(), pw.Sync(),
        pw.Parse(query="select 1"), pw.Bind(), pw.Execute(portal="nope"), pw.Sync(),
    )
    assert kinds(events) == ["ErrorResponse", "ReadyForQuery", "ErrorResponse",
                             "ReadyForQuery"]
    first, second = events[0], events[2]
    assert isinstance(first, pw.ErrorResponse) and first.code == "26000"
    assert isinstance(second, pw.ErrorResponse) and second.code == "25P02"
    assert events[-1] == pw.ReadyForQuery(status=pw.TransactionStatus.FAILED)
    events = wire.exchange(pw.Query(query="rollback"))
    assert events[-2:] == [pw.CommandComplete(tag="ROLLBACK"), pw.ReadyForQuery()]


@pytest.mark.parametrize(("bind", "code"), [
    (pw.Bind(parameters=()), "08P01"),  # one parameter required
    (pw.Bind(parameters=(b"1", b"2")), "08P01"),
    (pw.Bind(parameters=(b"x",)), "22P02"),
    (pw.Bind(parameters=(b"\x00\x01",), parameter_formats=(1,)), "22P03"),
    (pw.Bind(parameters=(b"1",), result_formats=(0, 1)), "08P01"),
])
def test_bind_checks_parameters_like_postgresql(wire: WireClient, bind: pw.Bind,
                                                code: str) -> None:
    events = wire.exchange(pw.Parse(query="select $1::int"), bind, pw.Execute(), pw.Sync())
    assert kinds(events) == ["ParseComplete", "ErrorResponse", "ReadyForQuery"]
    error = events[1]
    assert isinstance(error, pw.ErrorResponse) and error.code == code


def test_empty_query_and_multiple_commands(wire: WireClient) -> None:
    assert kinds(wire.exchange(pw.Query(query=" ; "))) == ["EmptyQueryResponse",
                                                           "ReadyForQuery"]
    events = wire.exchange(pw.Parse(query="select 1; select 2"), pw.Sync())
    error = events[0]
    assert isinstance(error, pw.ErrorResponse) and error.code == "42601"
    assert error.message == "cannot insert multiple commands into a prepared statement"

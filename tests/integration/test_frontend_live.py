"""pgwire.Frontend against a real PostgreSQL server, over plain blocking sockets.

Each test sends typed messages through a `WireClient` and asserts the exact
events the Frontend returns, and the Frontend's state (phase, transaction
status, pending syncs) along the way. Every byte comes from the throwaway
cluster of the ``pg_cluster`` fixture; nothing is mocked.
"""

from __future__ import annotations

import codecs
import socket
import ssl
import struct
import time
from collections.abc import Iterator

import pytest

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster

from .wire import (
    SOCKET_TIMEOUT,
    WireClient,
    connect,
    is_ready,
    open_socket,
    startup_message,
    without_location,
)

IDLE = pw.TransactionStatus.IDLE
IN_TRANSACTION = pw.TransactionStatus.IN_TRANSACTION
FAILED = pw.TransactionStatus.FAILED
INT4 = 23
TEXT = 25
BYTEA = 17

# ParameterStatus names every server since PostgreSQL 14 reports at startup (GUC_REPORT
# settings); 15 sends exactly these, later versions add a few.
STARTUP_PARAMETERS = {
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
}


def ready(status: pw.TransactionStatus = IDLE) -> pw.ReadyForQuery:
    return pw.ReadyForQuery(status=status)


def column(name: str, type_oid: int, size: int, *, format: int = 0) -> pw.FieldDescription:
    """A RowDescription field for a computed column (no table behind it)."""
    return pw.FieldDescription(
        name=name, data_type_oid=type_oid, data_type_size=size, type_modifier=-1, format=format
    )


def rows_of(*fields: pw.FieldDescription) -> pw.RowDescription:
    return pw.RowDescription(fields=fields)


def row(*values: bytes | None) -> pw.DataRow:
    return pw.DataRow(values=values)


def error(
    code: str,
    message: str,
    severity: str = "ERROR",
    *,
    where: str | None = None,
    position: str | None = None,
) -> pw.ErrorResponse:
    """An ErrorResponse as PostgreSQL sends it, minus the source location."""
    return pw.ErrorResponse(
        severity=severity,
        severity_nonlocalized=severity,
        code=code,
        message=message,
        where=where,
        position=position,
    )


def notice(code: str, message: str, severity: str, *, where: str) -> pw.NoticeResponse:
    """A NoticeResponse as PostgreSQL sends it, minus the source location."""
    return pw.NoticeResponse(
        severity=severity, severity_nonlocalized=severity, code=code, message=message, where=where
    )


def phase(session: WireClient) -> pw.Phase:
    # A call, not an attribute: mypy must not narrow it between two sends.
    return session.frontend.phase


def normalized(events: list[pw.FrontendEvent]) -> list[pw.FrontendEvent]:
    return [without_location(event) for event in events]


def int4(value: int) -> bytes:
    return struct.pack("!i", value)


@pytest.fixture
def client(pg_cluster: PostgresCluster) -> Iterator[WireClient]:
    """A session of the superuser in database postgres, after its first ReadyForQuery."""
    with connect(pg_cluster) as session:
        yield session


# ---------------------------------------------------------------------------
# Startup


def test_startup_reports_parameters_and_a_four_byte_backend_key(
    pg_cluster: PostgresCluster,
) -> None:
    with connect(pg_cluster, application_name="pgwire-live") as session:
        events = session.startup_events
        frontend = session.frontend
        assert events[0] == pw.AuthenticationOk()
        statuses = events[1:-2]
        assert all(isinstance(event, pw.ParameterStatus) for event in statuses)
        reported = {event.name: event.value for event in statuses}  # type: ignore[union-attr]
        assert len(reported) == len(statuses)
        assert set(reported) >= STARTUP_PARAMETERS
        assert reported["application_name"] == "pgwire-live"
        assert reported["client_encoding"] == "UTF8"
        assert reported["server_encoding"] == "UTF8"
        assert reported["is_superuser"] == "on"
        assert reported["session_authorization"] == pg_cluster.superuser
        assert reported["integer_datetimes"] == "on"
        assert reported["standard_conforming_strings"] == "on"
        key = events[-2]
        assert isinstance(key, pw.BackendKeyData)
        assert len(key.secret_key) == 4
        assert events[-1] == ready(IDLE)

        assert frontend.parameters == reported
        assert frontend.backend_key == (key.process_id, key.secret_key)
        assert frontend.phase is pw.Phase.READY
        assert frontend.transaction_status == "I"
        assert frontend.protocol_version == pw.PROTOCOL_3_0
        assert frontend.pending_syncs == 0
        assert not frontend.busy
        assert frontend.encoding == "utf-8"
        # The key is this very backend's.
        assert session.rows("select pg_backend_pid()") == [(str(key.process_id).encode(),)]
        assert session.rows("show server_version") == [(reported["server_version"].encode(),)]


def test_feeding_one_byte_at_a_time_gives_the_same_events(pg_cluster: PostgresCluster) -> None:
    with connect(pg_cluster) as whole, connect(pg_cluster, recv_size=1) as trickle:
        assert [type(event) for event in trickle.startup_events] == [
            type(event) for event in whole.startup_events
        ]
        assert trickle.frontend.parameters == whole.frontend.parameters
        sql = "select g, repeat('x', g), null from generate_series(1, 20) g"
        assert trickle.query(sql) == whole.query(sql)


# ---------------------------------------------------------------------------
# Simple query


def test_simple_query_single_statement(client: WireClient) -> None:
    client.send(pw.Query(query="select 1"))
    assert client.frontend.pending_syncs == 1
    assert client.frontend.busy
    assert client.until_ready() == [
        rows_of(column("?column?", INT4, 4)),
        row(b"1"),
        pw.CommandComplete(tag="SELECT 1"),
        ready(IDLE),
    ]
    assert client.frontend.pending_syncs == 0
    assert not client.frontend.busy


def test_simple_query_several_statements(client: WireClient) -> None:
    events = client.query("select 1 as a; select 'x' as b, null as c union all select 'y', 'z'")
    assert events == [
        rows_of(column("a", INT4, 4)),
        row(b"1"),
        pw.CommandComplete(tag="SELECT 1"),
        rows_of(column("b", TEXT, -1), column("c", TEXT, -1)),
        row(b"x", None),
        row(b"y", b"z"),
        pw.CommandComplete(tag="SELECT 2"),
        ready(IDLE),
    ]


def test_empty_query(client: WireClient) -> None:
    assert client.query("") == [pw.EmptyQueryResponse(), ready(IDLE)]
    assert client.query(";") == [pw.EmptyQueryResponse(), ready(IDLE)]


def test_error_in_a_multi_statement_query_skips_the_rest(client: WireClient) -> None:
    events = client.query("select 1; select 1/0; select 3")
    assert normalized(events) == [
        rows_of(column("?column?", INT4, 4)),
        row(b"1"),
        pw.CommandComplete(tag="SELECT 1"),
        error("22012", "division by zero"),
        ready(IDLE),
    ]
    # The session goes on.
    assert client.rows("select 4") == [(b"4",)]


def test_transaction_status_idle_in_transaction_failed_idle(client: WireClient) -> None:
    frontend = client.frontend
    assert client.query("begin") == [pw.CommandComplete(tag="BEGIN"), ready(IN_TRANSACTION)]
    assert frontend.transaction_status == "T"
    assert normalized(client.query("select 1/0")) == [
        error("22012", "division by zero"),
        ready(FAILED),
    ]
    assert frontend.transaction_status == "E"
    assert normalized(client.query("select 1")) == [
        error(
            "25P02",
            "current transaction is aborted, commands ignored until end of transaction block",
        ),
        ready(FAILED),
    ]
    assert frontend.transaction_status == "E"
    assert client.query("rollback") == [pw.CommandComplete(tag="ROLLBACK"), ready(IDLE)]
    assert frontend.transaction_status == "I"


# ---------------------------------------------------------------------------
# Extended query


def test_extended_query_with_text_parameters_and_both_describes(client: WireClient) -> None:
    total = rows_of(column("total", INT4, 4))
    client.send(
        pw.Parse(statement="sum2", query="select $1::int4 + $2::int4 as total"),
        pw.Describe(kind="S", name="sum2"),
        pw.Sync(),
    )
    assert client.until_ready() == [
        pw.ParseComplete(),
        pw.ParameterDescription(parameter_types=(INT4, INT4)),
        total,
        ready(IDLE),
    ]
    client.send(
        pw.Bind(portal="p", statement="sum2", parameters=(b"2", b"40")),
        pw.Describe(kind="P", name="p"),
        pw.Execute(portal="p"),
        pw.Sync(),
    )
    assert client.frontend.busy
    assert client.until_ready() == [
        pw.BindComplete(),
        total,
        row(b"42"),
        pw.CommandComplete(tag="SELECT 1"),
        ready(IDLE),
    ]
    assert not client.frontend.busy


def test_extended_query_with_binary_parameters_and_results(client: WireClient) -> None:
    client.send(
        pw.Parse(query="select $1::int4 + 1 as n, $2::bytea as b"),
        pw.Bind(
            parameter_formats=(1,),
            parameters=(int4(41), b"\x00\xff\x00"),
            result_formats=(1,),
        ),
        pw.Describe(kind="P"),
        pw.Execute(),
        pw.Sync(),
    )
    assert client.until_ready() == [
        pw.ParseComplete(),
        pw.BindComplete(),
        rows_of(column("n", INT4, 4, format=1), column("b", BYTEA, -1, format=1)),
        row(int4(42), b"\x00\xff\x00"),
        pw.CommandComplete(tag="SELECT 1"),
        ready(IDLE),
    ]
    # Mixed formats: one text and one binary parameter, a NULL, text results.
    client.send(
        pw.Parse(query="select $1::int4 + $2::int4, $3::text"),
        pw.Bind(parameter_formats=(0, 1, 0), parameters=(b"40", int4(2), None)),
        pw.Execute(),
        pw.Sync(),
    )
    assert client.until_ready() == [
        pw.ParseComplete(),
        pw.BindComplete(),
        row(b"42", None),
        pw.CommandComplete(tag="SELECT 1"),
        ready(IDLE),
    ]


def test_describe_of_a_statement_without_rows_gives_no_data(client: WireClient) -> None:
    client.query("create temp table items (n int4)")
    client.send(
        pw.Parse(statement="add", query="insert into items values ($1)"),
        pw.Describe(kind="S", name="add"),
        pw.Bind(statement="add", parameters=(b"7",)),
        pw.Describe(kind="P"),
        pw.Execute(),
        pw.Sync(),
    )
    assert client.until_ready() == [
        pw.ParseComplete(),
        pw.ParameterDescription(parameter_types=(INT4,)),
        pw.NoData(),
        pw.BindComplete(),
        pw.NoData(),
        pw.CommandComplete(tag="INSERT 0 1"),
        ready(IDLE),
    ]
    assert client.rows("select n from items") == [(b"7",)]


def test_execute_with_max_rows_suspends_the_portal(client: WireClient) -> None:
    client.send(
        pw.Parse(query="select g from generate_series(1, 5) g"),
        pw.Bind(),
        pw.Execute(max_rows=2),
        pw.Execute(max_rows=2),
        pw.Execute(max_rows=2),
        pw.Sync(),
    )
    assert client.until_ready() == [
        pw.ParseComplete(),
        pw.BindComplete(),
        row(b"1"),
        row(b"2"),
        pw.PortalSuspended(),
        row(b"3"),
        row(b"4"),
        pw.PortalSuspended(),
        row(b"5"),
        pw.CommandComplete(tag="SELECT 1"),
        ready(IDLE),
    ]


def test_named_statement_is_reused_then_closed(client: WireClient) -> None:
    client.send(pw.Parse(statement="double", query="select $1::int4 * 2"), pw.Sync())
    assert client.until_ready() == [pw.ParseComplete(), ready(IDLE)]
    client.send(
        pw.Bind(statement="double", parameters=(b"3",)),
        pw.Execute(),
        pw.Bind(statement="double", parameters=(b"21",)),
        pw.Execute(),
        pw.Sync(),
    )
    assert client.until_ready() == [
        pw.BindComplete(),
        row(b"6"),
        pw.CommandComplete(tag="SELECT 1"),
        pw.BindComplete(),
        row(b"42"),
        pw.CommandComplete(tag="SELECT 1"),
        ready(IDLE),
    ]
    client.send(pw.Close(kind="S", name="double"), pw.Close(kind="P", name=""), pw.Sync())
    assert client.until_ready() == [pw.CloseComplete(), pw.CloseComplete(), ready(IDLE)]
    client.send(pw.Bind(statement="double", parameters=(b"1",)), pw.Execute(), pw.Sync())
    assert normalized(client.until_ready()) == [
        error("26000", 'prepared statement "double" does not exist'),
        ready(IDLE),
    ]


# ---------------------------------------------------------------------------
# Pipelining


def test_pipelined_batches_in_one_write(client: WireClient) -> None:
    client.send(
        pw.Parse(query="select $1::int4 * 2 as doubled"),
        pw.Bind(parameters=(b"21",)),
        pw.Describe(kind="P"),
        pw.Execute(),
        pw.Sync(),
        pw.Parse(statement="greet", query="select 'hello ' || $1::text as greeting"),
        pw.Bind(statement="greet", parameters=(b"world",)),
        pw.Describe(kind="P"),
        pw.Execute(),
        pw.Sync(),
        pw.Bind(statement="greet", parameters=(b"again",)),
        pw.Execute(),
        pw.Sync(),
        pw.Query(query="select 'simple' as kind"),
    )
    assert client.frontend.pending_syncs == 4
    greeting = rows_of(column("greeting", TEXT, -1))
    assert client.until_ready(4) == [
        pw.ParseComplete(),
        pw.BindComplete(),
        rows_of(column("doubled", INT4, 4)),
        row(b"42"),
        pw.CommandComplete(tag="SELECT 1"),
        ready(IDLE),
        pw.ParseComplete(),
        pw.BindComplete(),
        greeting,
        row(b"hello world"),
        pw.CommandComplete(tag="SELECT 1"),
        ready(IDLE),
        pw.BindComplete(),
        row(b"hello again"),
        pw.CommandComplete(tag="SELECT 1"),
        ready(IDLE),
        rows_of(column("kind", TEXT, -1)),
        row(b"simple"),
        pw.CommandComplete(tag="SELECT 1"),
        ready(IDLE),
    ]
    assert client.frontend.pending_syncs == 0
    assert not client.frontend.busy


def test_error_in_a_pipeline_skips_to_its_sync(client: WireClient) -> None:
    client.send(
        pw.Parse(query="select 1"),
        pw.Bind(),
        pw.Execute(),
        pw.Sync(),
        # Fails at Execute, after one row; everything after it up to the Sync is skipped.
        pw.Parse(query="select 2 / g from generate_series($1::int4, 0, -1) g"),
        pw.Bind(parameters=(b"1",)),
        pw.Execute(),
        pw.Parse(statement="never", query="select 'skipped'"),
        pw.Bind(statement="never"),
        pw.Execute(),
        pw.Sync(),
        pw.Parse(query="select 3"),
        pw.Bind(),
        pw.Execute(),
        pw.Sync(),
    )
    events = client.until_ready(3)
    assert normalized(events) == [
        pw.ParseComplete(),
        pw.BindComplete(),
        row(b"1"),
        pw.CommandComplete(tag="SELECT 1"),
        ready(IDLE),
        pw.ParseComplete(),
        pw.BindComplete(),
        row(b"2"),
        error("22012", "division by zero"),
        ready(IDLE),
        pw.ParseComplete(),
        pw.BindComplete(),
        row(b"3"),
        pw.CommandComplete(tag="SELECT 1"),
        ready(IDLE),
    ]
    # The statement after the error was never parsed.
    client.send(pw.Describe(kind="S", name="never"), pw.Sync())
    assert normalized(client.until_ready()) == [
        error("26000", 'prepared statement "never" does not exist'),
        ready(IDLE),
    ]


def test_flush_without_sync_returns_the_responses(client: WireClient) -> None:
    client.send(
        pw.Parse(query="select 'flushed' as word"),
        pw.Bind(),
        pw.Describe(kind="P"),
        pw.Execute(),
        pw.Flush(),
    )
    events = client.events_until(lambda event: isinstance(event, pw.CommandComplete))
    assert events == [
        pw.ParseComplete(),
        pw.BindComplete(),
        rows_of(column("word", TEXT, -1)),
        row(b"flushed"),
        pw.CommandComplete(tag="SELECT 1"),
    ]
    assert client.frontend.pending_syncs == 0
    assert client.frontend.busy
    client.send(pw.Sync())
    assert client.until_ready() == [ready(IDLE)]
    assert not client.frontend.busy


# ---------------------------------------------------------------------------
# COPY


def test_copy_from_stdin_with_a_simple_query(client: WireClient) -> None:
    client.query("create temp table pets (id int4, name text)")
    client.send(pw.Query(query="copy pets from stdin"))
    assert client.next_event() == pw.CopyInResponse(format=0, column_formats=(0, 0))
    assert phase(client) is pw.Phase.COPY_IN
    # Rows may be split across CopyData messages anywhere.
    client.send(
        pw.CopyData(data=b"1\tcat\n2\td"),
        pw.CopyData(data=b"og\n3\t"),
        pw.CopyData(data=b"\\N\n"),
        pw.CopyDone(),
    )
    assert phase(client) is pw.Phase.READY
    assert client.until_ready() == [pw.CommandComplete(tag="COPY 3"), ready(IDLE)]
    assert client.rows("select id, name from pets order by id") == [
        (b"1", b"cat"),
        (b"2", b"dog"),
        (b"3", None),
    ]


def test_copy_from_stdin_with_the_extended_protocol_like_libpq(client: WireClient) -> None:
    client.query("create temp table pets (id int4, name text)")
    # libpq sends Sync right after Execute; the server swallows it during COPY.
    client.send(pw.Parse(query="copy pets from stdin"), pw.Bind(), pw.Execute(), pw.Sync())
    assert client.frontend.pending_syncs == 1
    events = client.events_until(lambda event: isinstance(event, pw.CopyInResponse))
    assert events == [
        pw.ParseComplete(),
        pw.BindComplete(),
        pw.CopyInResponse(format=0, column_formats=(0, 0)),
    ]
    assert phase(client) is pw.Phase.COPY_IN
    assert client.frontend.pending_syncs == 0
    assert client.frontend.busy
    client.send(pw.CopyData(data=b"1\tcat\n2\tdog\n"), pw.CopyDone(), pw.Sync())
    assert client.frontend.pending_syncs == 1
    assert client.until_ready() == [pw.CommandComplete(tag="COPY 2"), ready(IDLE)]
    assert not client.frontend.busy
    assert client.rows("select count(*) from pets") == [(b"2",)]


def test_copy_fail_gives_an_error(client: WireClient) -> None:
    client.query("create temp table pets (id int4, name text)")
    client.send(pw.Query(query="copy pets from stdin"))
    assert client.next_event() == pw.CopyInResponse(format=0, column_formats=(0, 0))
    client.send(pw.CopyData(data=b"1\tcat\n"), pw.CopyFail(message="changed my mind"))
    assert phase(client) is pw.Phase.READY
    assert normalized(client.until_ready()) == [
        error("57014", "COPY from stdin failed: changed my mind", where="COPY pets, line 2"),
        ready(IDLE),
    ]
    assert client.rows("select count(*) from pets") == [(b"0",)]


def test_copy_to_stdout_with_many_rows(client: WireClient) -> None:
    count = 10000
    events = client.query(f"copy (select g, 'n' || g from generate_series(1, {count}) g) to stdout")
    assert events[0] == pw.CopyOutResponse(format=0, column_formats=(0, 0))
    assert events[-3:] == [pw.CopyDone(), pw.CommandComplete(tag=f"COPY {count}"), ready(IDLE)]
    chunks = events[1:-3]
    assert all(isinstance(chunk, pw.CopyData) for chunk in chunks)
    assert len(chunks) == count  # PostgreSQL sends one CopyData per row
    expected = b"".join(b"%d\tn%d\n" % (g, g) for g in range(1, count + 1))
    assert b"".join(chunk.data for chunk in chunks) == expected  # type: ignore[union-attr]
    assert phase(client) is pw.Phase.READY


def test_binary_copy_round_trip(client: WireClient) -> None:
    client.query("create temp table blobs (n int4, b bytea)")
    header = b"PGCOPY\n\xff\r\n\x00" + int4(0) + int4(0)

    def tuple_(*fields: bytes | None) -> bytes:
        parts = [struct.pack("!h", len(fields))]
        for value in fields:
            parts.append(int4(-1) if value is None else int4(len(value)) + value)
        return b"".join(parts)

    payload = (
        header
        + tuple_(int4(1), b"\x00\x01\xff")
        + tuple_(None, b"")
        + tuple_(int4(-7), None)
        + struct.pack("!h", -1)
    )
    client.send(pw.Query(query="copy blobs from stdin (format binary)"))
    assert client.next_event() == pw.CopyInResponse(format=1, column_formats=(1, 1))
    client.send(pw.CopyData(data=payload[:7]), pw.CopyData(data=payload[7:]), pw.CopyDone())
    assert client.until_ready() == [pw.CommandComplete(tag="COPY 3"), ready(IDLE)]
    assert client.rows("select n, encode(b, 'hex') from blobs") == [
        (b"1", b"0001ff"),
        (None, b""),
        (b"-7", None),
    ]
    events = client.query("copy blobs to stdout (format binary)")
    assert events[0] == pw.CopyOutResponse(format=1, column_formats=(1, 1))
    assert events[-3:] == [pw.CopyDone(), pw.CommandComplete(tag="COPY 3"), ready(IDLE)]
    data = b"".join(event.data for event in events[1:-3])  # type: ignore[union-attr]
    assert data == payload


# ---------------------------------------------------------------------------
# Asynchronous messages


def test_notification_to_the_same_session(client: WireClient) -> None:
    assert client.frontend.backend_key is not None
    own_pid = client.frontend.backend_key[0]
    assert client.query("listen self_channel") == [
        pw.CommandComplete(tag="LISTEN"),
        ready(IDLE),
    ]
    assert client.query("notify self_channel, 'to myself'") == [
        pw.CommandComplete(tag="NOTIFY"),
        pw.NotificationResponse(process_id=own_pid, channel="self_channel", payload="to myself"),
        ready(IDLE),
    ]


def test_notification_from_another_session_arrives_while_idle(
    pg_cluster: PostgresCluster,
) -> None:
    with connect(pg_cluster) as listener, connect(pg_cluster) as notifier:
        listener.query("listen idle_channel")
        assert notifier.frontend.backend_key is not None
        notifier_pid = notifier.frontend.backend_key[0]
        assert notifier.query("notify idle_channel, 'wake up'") == [
            pw.CommandComplete(tag="NOTIFY"),
            ready(IDLE),
        ]
        # The listener sent nothing: it only reads what arrives.
        assert not listener.frontend.busy
        assert listener.next_event() == pw.NotificationResponse(
            process_id=notifier_pid, channel="idle_channel", payload="wake up"
        )
        assert phase(listener) is pw.Phase.READY
        assert listener.frontend.pending_syncs == 0
        assert not listener.frontend.busy
        notifier.query("notify idle_channel")
        assert listener.next_event() == pw.NotificationResponse(
            process_id=notifier_pid, channel="idle_channel", payload=""
        )
        assert listener.rows("select 1") == [(b"1",)]


def test_notice_and_warning(client: WireClient) -> None:
    events = client.query("do $$ begin raise notice 'hi'; raise warning 'careful'; end $$")
    where = "PL/pgSQL function inline_code_block line 1 at RAISE"
    assert normalized(events) == [
        notice("00000", "hi", "NOTICE", where=where),
        notice("01000", "careful", "WARNING", where=where),
        pw.CommandComplete(tag="DO"),
        ready(IDLE),
    ]
    assert all(event.file for event in events if isinstance(event, pw.NoticeResponse))


def test_parameter_status_when_application_name_changes(client: WireClient) -> None:
    assert client.frontend.parameters["application_name"] == ""
    assert client.query("set application_name = 'renamed'") == [
        pw.CommandComplete(tag="SET"),
        pw.ParameterStatus(name="application_name", value="renamed"),
        ready(IDLE),
    ]
    assert client.frontend.parameters["application_name"] == "renamed"


def test_latin1_client_encoding_is_followed(client: WireClient) -> None:
    frontend = client.frontend
    assert client.query("set client_encoding to 'LATIN1'") == [
        pw.CommandComplete(tag="SET"),
        pw.ParameterStatus(name="client_encoding", value="LATIN1"),
        ready(IDLE),
    ]
    assert frontend.parameters["client_encoding"] == "LATIN1"
    assert codecs.lookup(frontend.encoding).name == codecs.lookup("latin-1").name
    # The query goes out in LATIN1 too: 'é' is one byte on the wire.
    data = frontend.send(pw.Query(query="é"))
    assert data == b"Q\x00\x00\x00\x06\xe9\x00"
    client.send_bytes(data)
    events = client.until_ready()
    assert isinstance(events[0], pw.ErrorResponse)
    assert events[0].message == 'syntax error at or near "é"'

    events = client.query("select 'café' as \"Größe\"")
    assert events == [
        rows_of(column("Größe", TEXT, -1)),
        row(b"caf\xe9"),
        pw.CommandComplete(tag="SELECT 1"),
        ready(IDLE),
    ]
    value = events[1].values[0]  # type: ignore[union-attr]
    assert value is not None
    assert value.decode(frontend.encoding) == "café"
    assert normalized(client.query("do $$ begin raise notice 'naïve'; end $$"))[0] == notice(
        "00000", "naïve", "NOTICE", where="PL/pgSQL function inline_code_block line 1 at RAISE"
    )
    assert normalized(client.query("select * from tablé"))[0] == error(
        "42P01", 'relation "tablé" does not exist', position="15"
    )


# ---------------------------------------------------------------------------
# Function call (fast path)


def test_function_call_int4pl(client: WireClient) -> None:
    [(oid,)] = client.rows("select 'int4pl'::regproc::oid")
    assert oid is not None
    function_oid = int(oid)
    client.send(
        pw.FunctionCall(
            function_oid=function_oid,
            argument_formats=(1,),
            arguments=(int4(2), int4(3)),
            result_format=1,
        )
    )
    assert client.frontend.pending_syncs == 1
    assert client.until_ready() == [pw.FunctionCallResponse(result=int4(5)), ready(IDLE)]
    client.send(
        pw.FunctionCall(function_oid=function_oid, arguments=(b"40", b"2"), result_format=0)
    )
    assert client.until_ready() == [pw.FunctionCallResponse(result=b"42"), ready(IDLE)]
    # int4pl is strict: a NULL argument gives a NULL result.
    client.send(pw.FunctionCall(function_oid=function_oid, arguments=(b"1", None)))
    assert client.until_ready() == [pw.FunctionCallResponse(result=None), ready(IDLE)]
    client.send(
        pw.FunctionCall(
            function_oid=function_oid,
            argument_formats=(1,),
            arguments=(int4(2**31 - 1), int4(1)),
        )
    )
    assert normalized(client.until_ready()) == [
        error("22003", "integer out of range"),
        ready(IDLE),
    ]


# ---------------------------------------------------------------------------
# Cancel


def test_cancel_request_from_a_second_connection(pg_cluster: PostgresCluster) -> None:
    with connect(pg_cluster) as sleeper, connect(pg_cluster) as watcher:
        assert sleeper.frontend.backend_key is not None
        process_id, secret_key = sleeper.frontend.backend_key
        sleeper.send(pw.Query(query="select pg_sleep(30)"))
        # Wait until the server is really sleeping: a cancel that arrives before the
        # query starts has nothing to cancel.
        probe = f"select wait_event from pg_stat_activity where pid = {process_id}"
        for _ in range(500):
            if watcher.rows(probe) == [(b"PgSleep",)]:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the server never started sleeping")

        with WireClient(open_socket(pg_cluster), pw.Frontend()) as canceller:
            canceller.send(pw.CancelRequest(process_id=process_id, secret_key=secret_key))
            assert phase(canceller) is pw.Phase.CANCEL
            assert canceller.next_event() == pw.ConnectionClosed()
            assert phase(canceller) is pw.Phase.CLOSED

        assert normalized(sleeper.until_ready()) == [
            rows_of(column("pg_sleep", 2278, 4)),
            error("57014", "canceling statement due to user request"),
            ready(IDLE),
        ]
        assert sleeper.rows("select 'still alive'") == [(b"still alive",)]


# ---------------------------------------------------------------------------
# Protocol negotiation


def test_protocol_3_2_is_negotiated_down_to_3_0(pg_cluster: PostgresCluster) -> None:
    with connect(pg_cluster, protocol_version=pw.PROTOCOL_3_2) as session:
        events = session.startup_events
        assert events[0] == pw.NegotiateProtocolVersion(
            newest_minor_version=0, unrecognized_options=()
        )
        assert events[1] == pw.AuthenticationOk()
        assert session.frontend.protocol_version == pw.PROTOCOL_3_0
        key = events[-2]
        assert isinstance(key, pw.BackendKeyData)
        assert len(key.secret_key) == 4
        assert session.frontend.backend_key == (key.process_id, key.secret_key)
        assert events[-1] == ready(IDLE)
        assert session.rows("select 'negotiated'") == [(b"negotiated",)]


@pytest.mark.parametrize("version", [pw.PROTOCOL_3_0, pw.PROTOCOL_3_2], ids=["3.0", "3.2"])
def test_unknown_protocol_option_is_listed_as_unrecognized(
    pg_cluster: PostgresCluster, version: int
) -> None:
    with WireClient(open_socket(pg_cluster)) as session:
        session.send(startup_message(pg_cluster, {"_pq_.something": "on"}, version))
        events = session.until_ready()
        assert events[0] == pw.NegotiateProtocolVersion(
            newest_minor_version=0, unrecognized_options=("_pq_.something",)
        )
        assert events[1] == pw.AuthenticationOk()
        assert session.frontend.protocol_version == pw.PROTOCOL_3_0
        assert session.rows("select 1") == [(b"1",)]


# ---------------------------------------------------------------------------
# Lazy decoding


def test_data_rows_stay_raw_unless_asked(pg_cluster: PostgresCluster) -> None:
    frontend = pw.Frontend(decode={b"Z", b"T", b"C", b"E"})
    with connect(pg_cluster, frontend=frontend) as session:
        startup = session.startup_events
        # Undecoded ParameterStatus and BackendKeyData still fill the state.
        assert set(frontend.parameters) >= STARTUP_PARAMETERS
        assert [event.type_code for event in startup if isinstance(event, pw.RawMessage)] == [
            b"R",
            *[b"S"] * len(frontend.parameters),
            b"K",
        ]
        assert is_ready(startup[-1])
        assert startup[-1] == ready(IDLE)
        assert frontend.decode(startup[0]) == pw.AuthenticationOk()  # type: ignore[arg-type]
        statuses = [frontend.decode(event) for event in startup[1:-2]]  # type: ignore[arg-type]
        assert statuses == [
            pw.ParameterStatus(name=name, value=value)
            for name, value in frontend.parameters.items()
        ]
        assert frontend.backend_key is not None
        assert frontend.decode(startup[-2]) == pw.BackendKeyData(  # type: ignore[arg-type]
            process_id=frontend.backend_key[0], secret_key=frontend.backend_key[1]
        )

        count = 100
        events = session.query(
            f"select g, 'row ' || g, null::text from generate_series(1, {count}) g"
        )
        assert isinstance(events[0], pw.RowDescription)
        assert events[-2:] == [pw.CommandComplete(tag=f"SELECT {count}"), ready(IDLE)]
        raws = events[1:-2]
        assert len(raws) == count
        for g, raw in enumerate(raws, start=1):
            assert isinstance(raw, pw.RawMessage)
            assert raw.type_code == b"D"
            expected = row(str(g).encode(), f"row {g}".encode(), None)
            assert bytes(raw) == expected.encode()
            assert len(raw) == len(bytes(raw))
            assert bytes(raw.frame) == bytes(raw)
            assert frontend.decode(raw) == expected

        assert normalized(session.query("select 1/0")) == [
            error("22012", "division by zero"),
            ready(IDLE),
        ]


# ---------------------------------------------------------------------------
# The end of a session


def test_server_fatal_error_closes_the_session(client: WireClient) -> None:
    client.send(pw.Query(query="select pg_terminate_backend(pg_backend_pid())"))
    events = client.events_until(lambda event: isinstance(event, pw.ErrorResponse))
    assert normalized(events) == [
        rows_of(column("pg_terminate_backend", 16, 1)),
        row(b"t"),
        error("57P01", "terminating connection due to administrator command", "FATAL"),
    ]
    assert phase(client) is pw.Phase.CLOSED
    assert client.next_event() == pw.ConnectionClosed()
    assert phase(client) is pw.Phase.CLOSED
    with pytest.raises(pw.LocalProtocolError):
        client.frontend.send(pw.Query(query="select 1"))


def test_terminate_closes_the_session(client: WireClient) -> None:
    client.send(pw.Terminate())
    assert phase(client) is pw.Phase.CLOSED
    assert client.next_event() == pw.ConnectionClosed()
    with pytest.raises(pw.LocalProtocolError):
        client.frontend.send(pw.Query(query="select 1"))


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"database": "no_such_database"},
            error("3D000", 'database "no_such_database" does not exist', "FATAL"),
        ),
        (
            {"user": "no_such_user"},
            error("28000", 'role "no_such_user" does not exist', "FATAL"),
        ),
    ],
    ids=["unknown-database", "unknown-user"],
)
def test_startup_refused(
    pg_cluster: PostgresCluster, params: dict[str, str], expected: pw.ErrorResponse
) -> None:
    with WireClient(open_socket(pg_cluster)) as session:
        session.send(startup_message(pg_cluster, params))
        events = session.events_until(lambda event: isinstance(event, pw.ErrorResponse))
        assert normalized(events) == [pw.AuthenticationOk(), expected]
        assert phase(session) is pw.Phase.CLOSED
        assert session.next_event() == pw.ConnectionClosed()


# ---------------------------------------------------------------------------
# Encryption negotiation


def _tls_context(cluster: PostgresCluster) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cluster.ca_cert))
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def test_ssl_request_then_startup_over_tls(pg_cluster: PostgresCluster) -> None:
    with WireClient(open_socket(pg_cluster)) as session:
        session.send(pw.SSLRequest())
        assert phase(session) is pw.Phase.SSL_NEGOTIATION
        assert session.next_event() == pw.SSLResponse(accepted=True)
        assert phase(session) is pw.Phase.STARTUP
        session.start_tls(_tls_context(pg_cluster), server_hostname="localhost")
        session.send(startup_message(pg_cluster, {}))
        events = session.until_ready()
        assert events[0] == pw.AuthenticationOk()
        assert events[-1] == ready(IDLE)
        assert isinstance(session.sock, ssl.SSLSocket)
        tls_version = session.sock.version()
        assert tls_version is not None
        probe = "select ssl, version from pg_stat_ssl where pid = pg_backend_pid()"
        assert session.rows(probe) == [(b"t", tls_version.encode())]
        # A second SSLRequest is no longer allowed.
        with pytest.raises(pw.LocalProtocolError):
            session.frontend.send(pw.SSLRequest())
        session.send(pw.Terminate())
        assert session.next_event() == pw.ConnectionClosed()


def test_gssenc_request_is_accepted_over_tcp(pg_cluster: PostgresCluster) -> None:
    """A server built with GSSAPI answers 'G' on TCP whatever pg_hba.conf says."""
    with WireClient(open_socket(pg_cluster)) as session:
        session.send(pw.GSSENCRequest())
        assert phase(session) is pw.Phase.GSSENC_NEGOTIATION
        assert session.next_event() == pw.GSSENCResponse(accepted=True)
        assert phase(session) is pw.Phase.STARTUP
        assert session.frontend.buffered == 0
        # GSSAPI encryption is now to be set up (we have no Kerberos to do it):
        # TLS on top of it is not allowed.
        with pytest.raises(pw.LocalProtocolError):
            session.frontend.send(pw.SSLRequest())


def test_gssenc_and_ssl_refused_on_a_unix_socket_then_plaintext_startup(
    pg_cluster: PostgresCluster,
) -> None:
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.settimeout(SOCKET_TIMEOUT)
    unix.connect(str(pg_cluster.socket_dir / f".s.PGSQL.{pg_cluster.port}"))
    with WireClient(unix) as session:
        session.send(pw.GSSENCRequest())
        assert phase(session) is pw.Phase.GSSENC_NEGOTIATION
        assert session.next_event() == pw.GSSENCResponse(accepted=False)
        assert phase(session) is pw.Phase.STARTUP
        session.send(pw.SSLRequest())
        assert session.next_event() == pw.SSLResponse(accepted=False)
        assert phase(session) is pw.Phase.STARTUP
        session.send(startup_message(pg_cluster, {}))
        events = session.until_ready()
        assert events[0] == pw.AuthenticationOk()
        assert is_ready(events[-1])
        assert session.rows(
            "select client_addr is null, ssl from pg_stat_activity join pg_stat_ssl using (pid)"
            " where pid = pg_backend_pid()"
        ) == [(b"t", b"f")]

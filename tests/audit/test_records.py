"""Records the Audit middleware builds, driven without a network.

A real proxy session sits between a Frontend (the client) and a Backend
(the server), both real state machines; the test plays the server's
answers, so every way an answer can be attributed to its request (errors
inside pipelined batches, skipped Executes, suspended portals, empty
queries, sessions cut short) is reached exactly.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

import pgwire as pw
from pgwire.audit import (
    EVENTS,
    AuditRecord,
    CompletionRecord,
    QueryRecord,
    rows_from_tag,
    utc_now,
)
from pgwire.middleware import Context, Middleware, Respond, Verdict
from pgwire.middleware.audit import REFUSED_SQLSTATE, Audit
from pgwire.proxy import Proxy, ProxyConfig
from pgwire.roles import RoleChange, RoleDecision

from .helpers import SERVER_PID, TIMEOUT, UPSTREAM, GateSink, ListSink, Wire, events

IDLE = pw.TransactionStatus.IDLE
REJECT_QUERY = re.compile(r"SELECT pg_catalog\.(pgwire_reject_[0-9a-f]+_\d+)\(\)")


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


@pytest.fixture
def audit(sink: ListSink) -> Iterator[Audit]:
    middleware = Audit(sink, track_roles=False)  # the scripted server answers no login query
    yield middleware
    middleware.close()


def logged_in(audit: Audit) -> Wire:
    wire = Wire(audit)
    assert isinstance(wire.login()[-1], pw.ReadyForQuery)
    return wire


def records(audit: Audit, sink: ListSink) -> list[dict[str, Any]]:
    assert audit.flush(TIMEOUT)
    return sink.dicts()


def completions(audit: Audit, sink: ListSink) -> list[dict[str, Any]]:
    return events(records(audit, sink), "complete")


def error(code: str, message: str = "failed") -> pw.ErrorResponse:
    return pw.ErrorResponse(severity="ERROR", severity_nonlocalized="ERROR", code=code,
                            message=message)


def ready(status: pw.TransactionStatus = IDLE) -> pw.ReadyForQuery:
    return pw.ReadyForQuery(status=status)


# -- the record types ---------------------------------------------------------------------


@pytest.mark.parametrize(("tag", "rows"), [
    ("INSERT 0 5", 5), ("SELECT 3", 3), ("UPDATE 2", 2), ("DELETE 0", 0), ("COPY 7", 7),
    ("MERGE 4", 4), ("FETCH 10", 10), ("MOVE 1", 1), ("CREATE TABLE", None), ("BEGIN", None),
    ("SET", None), ("", None), ("SELECT", None), ("INSERT 0 \uff15", None),
])
def test_rows_come_from_the_last_number_of_the_tag(tag: str, rows: int | None) -> None:
    assert rows_from_tag(tag) == rows


def test_time_is_utc_iso_8601_with_microseconds() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", utc_now())


def test_as_dict_names_the_event_first_and_lists_tuples() -> None:
    record = CompletionRecord(time="t", session_id=3, request=1, kind="execute", sql="select 1",
                              status="ok", duration=0.5, rows=1, command_tags=("SELECT 1",))
    data = record.as_dict()
    assert next(iter(data)) == "event"
    assert data["event"] == "complete"
    assert data["command_tags"] == ["SELECT 1"]
    common = ("time", "session_id", "client_address", "startup_user", "upstream_role",
              "effective_role", "backend_pid", "database", "application_name")
    assert all(name in data for name in common)


def test_every_event_has_its_own_record_type() -> None:
    assert len(EVENTS) == 14
    assert all(issubclass(cls, AuditRecord) and name == cls.event for name, cls in EVENTS.items())


# -- the session's life -------------------------------------------------------------------


def test_a_login_is_recorded_with_who_and_where(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(pw.Terminate())
    found = records(audit, sink)
    assert [r["event"] for r in found] == ["connect", "auth", "role_mapping", "disconnect"]
    connect, auth, mapping, end = found
    assert connect["client_address"] == "127.0.0.1:50000"
    assert connect["session_id"] == wire.session.session_id
    assert auth["ok"] is True and auth["method"] == "passthrough"
    for record in (auth, mapping, end):
        assert record["startup_user"] == "alice"
        assert record["upstream_role"] == "alice"
        assert record["database"] == "app"
        assert record["backend_pid"] == SERVER_PID
        assert record["application_name"] == "wire-test"
        assert record["effective_role"] is None  # track_roles=False: nobody tracks
    assert mapping["client_database"] == "app" and mapping["mapped"] is False
    assert end["reason"] == "client terminated the session"
    assert (end["statements"], end["errors"], end["rows"]) == (0, 0, 0)


def test_a_failed_login_is_recorded(audit: Audit, sink: ListSink) -> None:
    wire = Wire(audit)
    wire.feed(wire.session.start())
    wire.feed(wire.session.client_data(wire.client.send(
        pw.StartupMessage.from_dict({"user": "mallory", "database": "app"}))))
    wire.feed(wire.session.upstream_connected())
    wire.server_events()
    wire.server_sends(pw.ErrorResponse(severity="FATAL", severity_nonlocalized="FATAL",
                                       code="28P01", message="password authentication failed"))
    [auth] = events(records(audit, sink), "auth")
    assert auth["ok"] is False
    assert auth["sqlstate"] == "28P01"
    assert auth["message"] == "password authentication failed"
    assert auth["startup_user"] == "mallory"
    assert auth["upstream_role"] is None


# -- simple protocol ----------------------------------------------------------------------


def test_a_query_and_its_completion_share_a_request_number(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(pw.Query(query="insert into t values (1), (2); select 1"))
    wire.server_sends(pw.CommandComplete(tag="INSERT 0 2"), pw.CommandComplete(tag="SELECT 1"),
                      ready())
    found = records(audit, sink)
    [query] = events(found, "query")
    [done] = events(found, "complete")
    assert query["request"] == done["request"] == 1
    assert query["sql"] == done["sql"] == "insert into t values (1), (2); select 1"
    assert done["status"] == "ok" and done["kind"] == "query"
    assert done["command_tags"] == ["INSERT 0 2", "SELECT 1"]
    assert done["rows"] == 3
    assert isinstance(done["duration"], float) and done["duration"] >= 0
    assert done["sqlstate"] is None


def test_an_error_is_recorded_with_its_request(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(pw.Query(query="select 1/0"))
    wire.server_sends(error("22012", "division by zero"), ready())
    found = records(audit, sink)
    [failure] = events(found, "error")
    [done] = events(found, "complete")
    assert failure["request"] == 1 and failure["sql"] == "select 1/0"
    assert (failure["sqlstate"], failure["message"], failure["severity"]) == (
        "22012", "division by zero", "ERROR")
    assert (done["status"], done["sqlstate"], done["rows"]) == ("error", "22012", None)


def test_an_empty_query_completes_as_empty(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(pw.Query(query=""))
    wire.server_sends(pw.EmptyQueryResponse(), ready())
    [done] = completions(audit, sink)
    assert done["status"] == "empty" and done["rows"] is None


def test_pipelined_queries_are_answered_in_order(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(pw.Query(query="select 1"), pw.Query(query="select oops"),
                      pw.Query(query="select 3"))
    wire.server_sends(pw.CommandComplete(tag="SELECT 1"), ready(),
                      error("42703"), ready(),
                      pw.CommandComplete(tag="SELECT 3"), ready())
    done = completions(audit, sink)
    assert [(d["request"], d["sql"], d["status"], d["rows"]) for d in done] == [
        (1, "select 1", "ok", 1), (2, "select oops", "error", None), (3, "select 3", "ok", 3)]


class AnswersItself(Middleware[None]):
    """Answers one query itself, without the server (a cache, say)."""

    client_messages = frozenset({b"Q"})

    def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        assert isinstance(message, pw.Query)
        if message.query == "select 'from the proxy'":
            return Respond(pw.RowDescription(fields=()), pw.CommandComplete(tag="SELECT 0"),
                           ready())
        return None


def test_an_answer_an_inner_middleware_gives_is_attributed_to_its_query(
        audit: Audit, sink: ListSink) -> None:
    # Engine gap: a Respond's answer goes straight to the client, past the
    # on_server_message of the middleware before it in the chain, so Audit
    # never sees that request end and gives the next answer to it.
    proxy = Proxy(ProxyConfig(upstream=UPSTREAM, middleware=[audit, AnswersItself()]))
    wire = Wire(audit, proxy=proxy)
    wire.login()
    wire.client_sends(pw.Query(query="select 'from the proxy'"))
    assert isinstance(wire.client_events()[-1], pw.ReadyForQuery)
    wire.client_sends(pw.Query(query="select 2"))
    wire.server_sends(pw.CommandComplete(tag="SELECT 1"), ready())
    done = completions(audit, sink)
    assert [(d["sql"], d["command_tags"]) for d in done] == [
        ("select 'from the proxy'", ["SELECT 0"]), ("select 2", ["SELECT 1"])]


# -- extended protocol --------------------------------------------------------------------


def execute_batch(sql: str, portal: str = "", max_rows: int = 0) -> tuple[pw.Message, ...]:
    return (pw.Parse(statement="", query=sql, parameter_types=()),
            pw.Bind(portal=portal, statement="", parameter_formats=(), parameters=(),
                    result_formats=()),
            pw.Execute(portal=portal, max_rows=max_rows))


def test_parse_bind_execute_are_recorded_with_the_text_they_run(audit: Audit,
                                                                sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(pw.Parse(statement="s1", query="select $1::int", parameter_types=(23,)),
                      pw.Bind(portal="p1", statement="s1", parameter_formats=(),
                              parameters=(b"7",), result_formats=()),
                      pw.Execute(portal="p1", max_rows=0), pw.Sync())
    wire.server_sends(pw.ParseComplete(), pw.BindComplete(), pw.CommandComplete(tag="SELECT 1"),
                      ready())
    found = records(audit, sink)
    [parse] = events(found, "parse")
    [bind] = events(found, "bind")
    [execute] = events(found, "execute")
    [done] = events(found, "complete")
    assert (parse["statement_name"], parse["sql"], parse["parameter_types"]) == (
        "s1", "select $1::int", [23])
    assert (bind["portal"], bind["statement_name"], bind["sql"]) == ("p1", "s1", "select $1::int")
    assert (bind["parameter_count"], bind["parameter_types"], bind["parameter_formats"]) == (
        1, [23], ["text"])
    assert bind["parameters"] is None and bind["redaction"] == "all"
    assert (execute["portal"], execute["statement_name"], execute["sql"]) == (
        "p1", "s1", "select $1::int")
    assert (done["request"], done["kind"], done["sql"], done["rows"]) == (
        execute["request"], "execute", "select $1::int", 1)


def test_an_error_in_a_batch_skips_the_executes_after_it(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(*execute_batch("select 1"), *execute_batch("select 1/0"),
                      *execute_batch("select 3"), pw.Sync(),
                      *execute_batch("select 4"), pw.Sync())
    wire.server_sends(pw.ParseComplete(), pw.BindComplete(), pw.CommandComplete(tag="SELECT 1"),
                      pw.ParseComplete(), pw.BindComplete(), error("22012"), ready(),
                      pw.ParseComplete(), pw.BindComplete(), pw.CommandComplete(tag="SELECT 1"),
                      ready())
    found = records(audit, sink)
    done = events(found, "complete")
    assert [(d["request"], d["sql"], d["status"], d["sqlstate"]) for d in done] == [
        (1, "select 1", "ok", None), (2, "select 1/0", "error", "22012"),
        (3, "select 3", "skipped", None), (4, "select 4", "ok", None)]
    [failure] = events(found, "error")
    assert (failure["request"], failure["sql"]) == (2, "select 1/0")


def test_a_parse_error_falls_on_the_next_execute(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(*execute_batch("selec 1"), pw.Sync())
    wire.server_sends(error("42601", "syntax error"), ready())
    [done] = completions(audit, sink)
    assert (done["sql"], done["status"], done["sqlstate"]) == ("selec 1", "error", "42601")


def test_an_error_outside_any_execute_has_no_request(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(pw.Parse(statement="s", query="selec 1", parameter_types=()), pw.Sync())
    wire.server_sends(error("42601", "syntax error"), ready())
    found = records(audit, sink)
    [failure] = events(found, "error")
    assert failure["request"] is None and failure["sqlstate"] == "42601"
    assert events(found, "complete") == []


def test_a_suspended_portal_then_its_rest(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(*execute_batch("select generate_series(1, 3)", portal="c", max_rows=1),
                      pw.Execute(portal="c", max_rows=0), pw.Sync())
    wire.server_sends(pw.ParseComplete(), pw.BindComplete(), pw.PortalSuspended(),
                      pw.CommandComplete(tag="SELECT 2"), ready())
    done = completions(audit, sink)
    assert [(d["status"], d["rows"], d["sql"]) for d in done] == [
        ("suspended", None, "select generate_series(1, 3)"),
        ("ok", 2, "select generate_series(1, 3)")]


def test_an_empty_execute(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(*execute_batch(""), pw.Sync())
    wire.server_sends(pw.ParseComplete(), pw.BindComplete(), pw.EmptyQueryResponse(), ready())
    [done] = completions(audit, sink)
    assert done["status"] == "empty"


def test_closed_statements_are_forgotten(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(pw.Parse(statement="s", query="select 1", parameter_types=()),
                      pw.Close(kind="S", name="s"),
                      pw.Bind(portal="", statement="s", parameter_formats=(), parameters=(),
                              result_formats=()), pw.Sync())
    wire.server_sends(pw.ParseComplete(), pw.CloseComplete(),
                      error("26000", 'prepared statement "s" does not exist'), ready())
    [bind] = events(records(audit, sink), "bind")
    assert bind["sql"] is None and bind["statement_name"] == "s"


def test_a_simple_query_drops_the_unnamed_statement(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(pw.Parse(statement="", query="select 1", parameter_types=()), pw.Sync())
    wire.server_sends(pw.ParseComplete(), ready())
    wire.client_sends(pw.Query(query="select 2"))
    wire.server_sends(pw.CommandComplete(tag="SELECT 1"), ready())
    wire.client_sends(pw.Bind(portal="", statement="", parameter_formats=(), parameters=(),
                              result_formats=()), pw.Sync())
    wire.server_sends(error("26000"), ready())
    [bind] = events(records(audit, sink), "bind")
    assert bind["sql"] is None


def test_a_function_call_is_a_request(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(pw.FunctionCall(function_oid=1598, argument_formats=(),
                                      arguments=(b"x",), result_format=0))
    wire.server_sends(pw.FunctionCallResponse(result=b"y"), ready())
    found = records(audit, sink)
    [call] = events(found, "function_call")
    [done] = events(found, "complete")
    assert (call["function_oid"], call["argument_count"], call["arguments"]) == (1598, 1, None)
    assert (done["kind"], done["status"], done["request"]) == ("function_call", "ok", 1)


def test_requests_cut_short_by_the_session_end_are_unfinished(audit: Audit,
                                                              sink: ListSink) -> None:
    wire = logged_in(audit)
    wire.client_sends(pw.Query(query="select pg_sleep(60)"))
    wire.server_sends(pw.CommandComplete(tag="SELECT 1"), ready())
    wire.client_sends(pw.Query(query="select 2"), *execute_batch("select 3"))
    wire.feed(wire.session.client_data(b""))
    found = records(audit, sink)
    done = events(found, "complete")
    assert [(d["sql"], d["status"]) for d in done] == [
        ("select pg_sleep(60)", "ok"), ("select 2", "unfinished"), ("select 3", "unfinished")]
    [end] = events(found, "disconnect")
    assert (end["statements"], end["errors"], end["rows"]) == (3, 0, 1)
    assert end["reason"] == "client closed the connection"


# -- parameters ---------------------------------------------------------------------------


def bind_with_values(wire: Wire) -> None:
    wire.client_sends(
        pw.Parse(statement="", query="select $1, $2, $3, $4", parameter_types=(25, 23)),
        pw.Bind(portal="", statement="", parameter_formats=(0, 1, 0, 0),
                parameters=("héllo".encode(), b"\x00\x00\x00\x07", None, b"\xff\xfe"),
                result_formats=()),
        pw.Sync())
    wire.server_sends(pw.ParseComplete(), pw.BindComplete(), ready())


@pytest.mark.parametrize(("redact", "expected"), [
    ("all", None),
    ("none", ["héllo", "\\x00000007", None, "\\xfffe"]),
])
def test_bind_parameters_follow_the_redaction_policy(redact: str, expected: list[Any] | None
                                                     ) -> None:
    sink = ListSink()
    audit = Audit(sink, redact=redact, track_roles=False)
    try:
        bind_with_values(logged_in(audit))
        [bind] = events(records(audit, sink), "bind")
    finally:
        audit.close()
    assert bind["parameters"] == expected
    assert bind["redaction"] == redact
    assert bind["parameter_count"] == 4
    assert bind["parameter_types"] == [25, 23, 0, 0]
    assert bind["parameter_formats"] == ["text", "binary", "text", "text"]


def mask_second(sql: str | None, index: int, value: bytes | None) -> str | None:
    """A redaction function: the second value is secret, the rest are kept."""
    if index == 1:
        return "***"
    return None if value is None else value.hex()


@pytest.mark.parametrize("redact", [mask_second, f"{__name__}:mask_second"])
def test_a_redaction_function_decides_per_value(redact: Any) -> None:
    sink = ListSink()
    audit = Audit(sink, redact=redact, track_roles=False)
    try:
        bind_with_values(logged_in(audit))
        [bind] = events(records(audit, sink), "bind")
    finally:
        audit.close()
    assert bind["parameters"] == ["68c3a96c6c6f", "***", None, "fffe"]
    assert bind["redaction"] == "custom"


def test_an_unknown_redaction_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="redact must be"):
        Audit(ListSink(), redact="some")


# -- roles --------------------------------------------------------------------------------


def test_role_decisions_and_changes_are_recorded(audit: Audit, sink: ListSink) -> None:
    wire = logged_in(audit)
    roles = wire.session.roles
    roles.publish(RoleDecision(statement="set role admin", kind="set_role", target="admin",
                               allowed=False, reason="not in the allowlist",
                               policy="allowlist"))
    roles.publish(RoleDecision(statement="set role reader", kind="set_role", target="reader",
                               allowed=True, reason="in the allowlist", policy="allowlist"))
    roles.tracked = True
    roles.current_user = "reader"
    roles.publish(RoleChange(before_current="alice", after_current="reader",
                             before_session="alice", after_session="alice",
                             statement="set role reader"))
    wire.client_sends(pw.Query(query="select 1"))
    found = records(audit, sink)
    blocked, allowed = events(found, "role_decision")
    assert (blocked["allowed"], blocked["target"], blocked["reason"], blocked["sql"]) == (
        False, "admin", "not in the allowlist", "set role admin")
    assert (allowed["allowed"], allowed["kind"], allowed["policy"]) == (
        True, "set_role", "allowlist")
    [change] = events(found, "role_change")
    assert (change["before_current"], change["after_current"], change["sql"]) == (
        "alice", "reader", "set role reader")
    assert change["effective_role"] == "reader"
    [query] = events(found, "query")
    assert query["effective_role"] == "reader"


# -- a full queue that refuses ------------------------------------------------------------


def test_when_full_reject_refuses_statements_and_logins() -> None:
    sink = GateSink()
    audit = Audit(sink, queue_size=1, when_full="reject", track_roles=False)
    try:
        wire = logged_in(audit)
        assert sink.waiting.wait(TIMEOUT)  # the writer is stuck on a batch
        # One more record fills the queue (outcomes are never refused).
        wire.session.roles.publish(RoleDecision(statement="reset role", kind="reset_role",
                                                target=None, allowed=True, reason="reset",
                                                policy="deny"))
        assert audit.stats.queued >= 2
        wire.client_sends(pw.Query(query="select 'unaudited'"))
        [vehicle] = wire.server_events()
        assert isinstance(vehicle, pw.Query)
        token = REJECT_QUERY.fullmatch(vehicle.query)
        assert token is not None
        wire.server_sends(error("42883", f"function pg_catalog.{token.group(1)}() does not "
                                         "exist"), ready())
        failure, done = wire.client_events()
        assert isinstance(failure, pw.ErrorResponse) and failure.code == REFUSED_SQLSTATE
        assert isinstance(done, pw.ReadyForQuery)

        second = Wire(audit, proxy=wire.proxy)
        answer = second.login(user="bob")
        assert isinstance(answer[0], pw.ErrorResponse)
        assert (answer[0].severity, answer[0].code) == ("FATAL", REFUSED_SQLSTATE)
        assert audit.stats.refused == 2
    finally:
        sink.open()
        audit.close()
    written = sink.dicts()
    assert not [r for r in written if r.get("sql") == "select 'unaudited'"]
    assert [r["event"] for r in written if r["session_id"] == wire.session.session_id] == [
        "connect", "auth", "role_mapping", "role_decision"]
    # The refused login leaves no record: its connect record was the one refused.
    assert [r for r in written if r["session_id"] == second.session.session_id] == []


def test_records_are_built_from_the_query_message(audit: Audit, sink: ListSink) -> None:
    # The typed records are what custom sinks get.
    logged_in(audit).client_sends(pw.Query(query="select 42"))
    assert audit.flush(TIMEOUT)
    [query] = [r for r in sink.records if isinstance(r, QueryRecord)]
    assert query.sql == "select 42" and query.request == 1


def test_long_statement_texts_are_recorded_clipped_with_the_hash_of_the_whole() -> None:
    sink = ListSink()
    audit = Audit(sink, track_roles=False, max_sql_length=20)
    long_sql = "SELECT '" + "x" * 100 + "'"
    try:
        wire = logged_in(audit)
        wire.client_sends(pw.Query(query=long_sql))
        [query] = events(records(audit, sink), "query")
    finally:
        audit.close()
    digest = hashlib.sha256(long_sql.encode()).hexdigest()
    assert query["sql"] == f"{long_sql[:20]}... [{len(long_sql) - 20} more characters; " \
                           f"sha256 {digest}]"


def test_max_sql_length_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_sql_length"):
        Audit(ListSink(), max_sql_length=0)

"""The proxy Session driven by hand: no sockets, no threads, no clock.

A :class:`pgwire.Frontend` plays the client and a :class:`pgwire.Backend`
plays PostgreSQL. The test encodes what each of them says, feeds it to the
session (``client_data`` / ``upstream_data``) and routes the bytes of the
returned SendToClient / SendToUpstream actions back to them, so every byte
the session produces is checked by a real state machine on the other side.
The server trusts everyone: it answers the forwarded StartupMessage with
AuthenticationOk directly (a passthrough login without a password).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgwire as pw
from pgwire.client import ClientConnection
from pgwire.middleware import (
    AuthResult,
    Context,
    Inject,
    JobOutcome,
    Middleware,
    QueryResult,
    Reject,
    Replace,
    Respond,
    SessionInfo,
    StartupVerdict,
    Verdict,
)
from pgwire.proxy import (
    CANCEL_LINK,
    MAIN_LINK,
    Action,
    CancelTimer,
    CloseClient,
    CloseUpstream,
    OpenUpstream,
    Proxy,
    ProxyConfig,
    RunJob,
    SendToClient,
    SendToUpstream,
    StartTimer,
    instance_of,
)
from pgwire.testing import strategies as pst
from pgwire.testing.harness import SessionHarness, drain
from pgwire.testing.pki import CertificateAuthority
from pgwire.tls import server_context

UPSTREAM = ("127.0.0.1", 5432)  # never connected to: the test plays the server
PEER = ("127.0.0.1", 6002)
IDLE = pw.TransactionStatus.IDLE
IN_BLOCK = pw.TransactionStatus.IN_TRANSACTION
FAILED = pw.TransactionStatus.FAILED
SERVER_KEY = (4242, b"\x0a\x0b\x0c\x0d")
REJECT_QUERY = re.compile(r"SELECT pg_catalog\.(pgwire_reject_[0-9a-f]+_\d+)\(\)")


class Wire(SessionHarness):
    """One session, with a Frontend for the client and a Backend for the server.

    The public :class:`pgwire.testing.harness.SessionHarness`, whose login here
    also checks that the session opened its server link to UPSTREAM.
    """

    def login(self, **options: Any) -> list[object]:
        events = super().login(**options)
        assert OpenUpstream(MAIN_LINK, UPSTREAM, 10.0) in self.actions
        return events


def ready(status: pw.TransactionStatus = IDLE) -> pw.ReadyForQuery:
    return pw.ReadyForQuery(status=status)


def done(tag: str = "SELECT 1", status: pw.TransactionStatus = IDLE) -> tuple[pw.Message, ...]:
    return pw.CommandComplete(tag=tag), ready(status)


def undefined_function(query: str) -> pw.ErrorResponse:
    """What PostgreSQL answers to the statement a Reject sends in its place."""
    match = REJECT_QUERY.fullmatch(query)
    assert match is not None, query
    return pw.ErrorResponse(severity="ERROR", severity_nonlocalized="ERROR", code="42883",
                            message=f"function pg_catalog.{match.group(1)}() does not exist",
                            position="8")


def parse(sql: str, name: str = "") -> pw.Parse:
    return pw.Parse(statement=name, query=sql, parameter_types=())


def bind(statement: str = "") -> pw.Bind:
    return pw.Bind(portal="", statement=statement, parameter_formats=(), parameters=(),
                   result_formats=())


def execute() -> pw.Execute:
    return pw.Execute(portal="", max_rows=0)


def server_terminated(wire: Wire) -> bool:
    events = wire.server_events()
    return any(isinstance(e, pw.Terminate) for e in events) or wire.server_closed


# -- middleware written for these tests ------------------------------------------------


class QueryHook(Middleware[None]):
    """Calls ``hook(ctx, query)`` for each Query; its return value is the verdict."""

    client_messages = frozenset({b"Q"})

    def __init__(self, hook: Callable[[Context[None], pw.Query], Verdict]) -> None:
        self.hook = hook

    def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        assert isinstance(message, pw.Query)
        return self.hook(ctx, message)


def on_query(hook: Callable[[pw.Query], Verdict]) -> QueryHook:
    return QueryHook(lambda ctx, query: hook(query))


@dataclass
class Recorder(Middleware[None]):
    """Writes down every hook call as (name, what) in a shared list."""

    label: str
    journal: list[tuple[str, str]]
    client_messages = frozenset({b"Q", b"P"})
    server_messages = frozenset({b"C"})

    def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        text = message.query if isinstance(message, pw.Query | pw.Parse) else ""
        self.journal.append((self.label, f"client {type(message).__name__} {text}"))
        return None

    def on_server_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        assert isinstance(message, pw.CommandComplete)
        self.journal.append((self.label, f"server {message.tag}"))
        return None


# -- login and cancel keys -------------------------------------------------------------


def test_login_passes_through_and_the_client_gets_the_proxys_key() -> None:
    wire = Wire()
    events = wire.login(parameters=[("application_name", "app one")])
    assert [type(e).__name__ for e in events] == [
        "AuthenticationOk", "ParameterStatus", "ParameterStatus", "ParameterStatus",
        "BackendKeyData", "ReadyForQuery"]
    key = events[4]
    assert isinstance(key, pw.BackendKeyData)
    assert (key.process_id, key.secret_key) != SERVER_KEY
    assert len(key.secret_key) == 4
    assert instance_of(key.process_id) == 0
    assert wire.session.cancel_key == (key.process_id, key.secret_key)
    assert wire.client.backend_key == wire.session.cancel_key
    # The startup parameters reach the server; the proxy asks for protocol 3.0.
    assert wire.upstream_startup.protocol_version == pw.PROTOCOL_3_0
    assert dict(wire.upstream_startup.parameters) == {
        "user": "alice", "database": "app", "application_name": "app one"}
    assert CancelTimer("login") in wire.actions
    assert wire.proxy.stats.logins == 1


def test_a_client_on_protocol_3_2_gets_a_32_byte_key() -> None:
    wire = Wire()
    events = wire.login(protocol_version=pw.PROTOCOL_3_2)
    [key] = [e for e in events if isinstance(e, pw.BackendKeyData)]
    assert len(key.secret_key) == 32
    assert wire.client.protocol_version == pw.PROTOCOL_3_2
    assert wire.upstream_startup.protocol_version == pw.PROTOCOL_3_0


def test_a_server_without_backend_key_data_still_gives_the_client_a_key() -> None:
    wire = Wire()
    events = wire.login(server_key=None)
    assert [type(e).__name__ for e in events][-2:] == ["BackendKeyData", "ReadyForQuery"]
    # ... which cancels nothing.
    canceller = Wire(proxy=wire.proxy)
    assert wire.client.backend_key is not None
    actions = cancel(canceller, *wire.client.backend_key)
    assert actions == [CancelTimer("login"), CloseClient("cancel request matched no session")]


def test_the_server_refusing_the_login_ends_the_session_with_its_error() -> None:
    wire = Wire()
    wire.start()
    wire.client_sends(pw.StartupMessage.from_dict({"user": "mallory"}))
    wire.feed(wire.session.upstream_connected(MAIN_LINK))
    wire.server_events()
    wire.server_sends(pw.ErrorResponse(severity="FATAL", severity_nonlocalized="FATAL",
                                       code="28000", message='role "mallory" does not exist'))
    error = wire.fatal()
    assert (error.code, error.message) == ("28000", 'role "mallory" does not exist')
    assert wire.proxy.stats.login_failures == 1


def test_an_upstream_that_cannot_be_reached_is_reported_as_08006() -> None:
    wire = Wire()
    wire.start()
    wire.client_sends(pw.StartupMessage.from_dict({"user": "alice"}))
    wire.feed(wire.session.upstream_failed("connection refused"))
    error = wire.fatal()
    assert error.code == "08006"
    assert "127.0.0.1:5432" in error.message and "connection refused" in error.message


def cancel(wire: Wire, process_id: int, secret: bytes) -> list[Action]:
    """Open a new session and send a CancelRequest on it."""
    wire.start()
    request = pw.CancelRequest(process_id=process_id, secret_key=secret)
    return wire.feed(wire.session.client_data(request.encode()))


def received_cancel(data: bytes) -> pw.CancelRequest:
    backend = pw.Backend()
    backend.receive_data(data)
    request = backend.next_event()
    assert isinstance(request, pw.CancelRequest)
    return request


@pytest.mark.parametrize("protocol_version", [pw.PROTOCOL_3_0, pw.PROTOCOL_3_2])
def test_a_cancel_request_with_the_right_key_reaches_the_server_with_its_key(
    protocol_version: int,
) -> None:
    wire = Wire().logged_in(protocol_version=protocol_version)
    assert wire.client.backend_key is not None
    canceller = Wire(proxy=wire.proxy)
    actions = cancel(canceller, *wire.client.backend_key)
    assert actions == [OpenUpstream(CANCEL_LINK, UPSTREAM, 10.0)]
    actions = canceller.feed(canceller.session.upstream_connected(CANCEL_LINK))
    assert [type(a) for a in actions] == [SendToUpstream] and actions[0].link == CANCEL_LINK
    sent = received_cancel(bytes(canceller.other_links[CANCEL_LINK]))
    assert (sent.process_id, sent.secret_key) == SERVER_KEY
    # The client's connection stays open until the server closes its end, which
    # PostgreSQL does once it has signalled the backend (both times: the process,
    # then its group). A client that waits for our close, as libpq does, so never
    # sends its next statement while a late signal could still cancel it.
    assert canceller.feed(canceller.session.upstream_data(b"x", CANCEL_LINK)) == []
    actions = canceller.feed(canceller.session.upstream_data(b"", CANCEL_LINK))
    assert actions == [CloseUpstream(CANCEL_LINK), CancelTimer("login"),
                       CloseClient("cancel request delivered")]
    # The client is told nothing (PostgreSQL tells it nothing either).
    assert not any(isinstance(a, SendToClient) for a in canceller.actions)
    assert wire.proxy.stats.cancel_requests == 1


def test_the_client_may_close_before_its_cancel_is_delivered() -> None:
    wire = Wire().logged_in()
    assert wire.client.backend_key is not None
    canceller = Wire(proxy=wire.proxy)
    cancel(canceller, *wire.client.backend_key)
    assert canceller.feed(canceller.session.client_data(b"")) == []
    canceller.feed(canceller.session.upstream_connected(CANCEL_LINK))
    assert received_cancel(bytes(canceller.other_links[CANCEL_LINK])).process_id == 4242


def test_a_cancel_the_server_link_could_not_take_ends_quietly() -> None:
    wire = Wire().logged_in()
    assert wire.client.backend_key is not None
    canceller = Wire(proxy=wire.proxy)
    cancel(canceller, *wire.client.backend_key)
    actions = canceller.feed(canceller.session.upstream_failed("timed out", CANCEL_LINK))
    assert isinstance(actions[-1], CloseClient)
    assert CANCEL_LINK not in canceller.other_links
    assert not any(isinstance(a, SendToClient) for a in actions)


def wrong_keys(process_id: int, secret: bytes) -> list[tuple[int, bytes]]:
    flipped = bytes([secret[0] ^ 1]) + secret[1:]
    return [
        (process_id, flipped),                      # wrong secret
        (process_id + 1, secret),                   # unknown process id of this instance
        (process_id, secret + b"\x00" * 4),         # right prefix, wrong length
        ((5 << 24) | (process_id & 0xFFFFFF), secret),  # another instance, no peer
    ]


@pytest.mark.parametrize("case", range(4))
def test_a_cancel_request_with_a_wrong_key_sends_nothing(case: int) -> None:
    wire = Wire().logged_in()
    assert wire.client.backend_key is not None
    process_id, secret = wrong_keys(*wire.client.backend_key)[case]
    canceller = Wire(proxy=wire.proxy)
    actions = cancel(canceller, process_id, secret)
    assert actions == [CancelTimer("login"), CloseClient("cancel request matched no session")]
    assert canceller.other_links == {}


def test_a_key_of_an_ended_session_cancels_nothing() -> None:
    wire = Wire().logged_in()
    key = wire.client.backend_key
    assert key is not None
    wire.client_sends(pw.Terminate())
    assert wire.session.is_closed
    assert pw.Terminate() in wire.server_events()
    canceller = Wire(proxy=wire.proxy)
    assert isinstance(cancel(canceller, *key)[-1], CloseClient)
    assert canceller.other_links == {}


def test_a_key_of_a_peer_instance_is_forwarded_untouched() -> None:
    proxy = Proxy(ProxyConfig(upstream=UPSTREAM, instance_id=1, peers={2: PEER}))
    canceller = Wire(proxy=proxy)
    process_id = (2 << 24) | 777
    secret = bytes(range(32))
    assert cancel(canceller, process_id, secret) == [OpenUpstream(CANCEL_LINK, PEER, 10.0)]
    canceller.feed(canceller.session.upstream_connected(CANCEL_LINK))
    sent = received_cancel(bytes(canceller.other_links[CANCEL_LINK]))
    assert (sent.process_id, sent.secret_key) == (process_id, secret)
    actions = canceller.feed(canceller.session.upstream_data(b"", CANCEL_LINK))
    assert actions == [CloseUpstream(CANCEL_LINK), CancelTimer("login"),
                       CloseClient("cancel request forwarded")]


def test_a_cancel_the_server_never_closes_ends_at_the_login_timeout() -> None:
    wire = Wire().logged_in()
    assert wire.client.backend_key is not None
    canceller = Wire(proxy=wire.proxy)
    cancel(canceller, *wire.client.backend_key)
    canceller.feed(canceller.session.upstream_connected(CANCEL_LINK))
    actions = canceller.feed(canceller.session.timer_fired("login"))
    assert actions == [CancelTimer("login"), CloseClient(
        "cancel request sent, but the server did not close within 60 s")]
    assert canceller.session.is_closed and wire.proxy.stats.login_timeouts == 0


def test_keys_carry_the_instance_id() -> None:
    proxy = Proxy(ProxyConfig(upstream=UPSTREAM, instance_id=9))
    wire = Wire(proxy=proxy).logged_in()
    assert wire.client.backend_key is not None
    assert instance_of(wire.client.backend_key[0]) == 9


# -- the middleware chain -----------------------------------------------------------------


def test_client_messages_go_in_list_order_and_server_messages_in_reverse() -> None:
    journal: list[tuple[str, str]] = []
    wire = Wire(Recorder("first", journal), Recorder("second", journal)).logged_in()
    wire.query("select 1", *done())
    assert journal == [("first", "client Query select 1"), ("second", "client Query select 1"),
                       ("second", "server SELECT 1"), ("first", "server SELECT 1")]


def test_a_hook_sees_only_the_types_it_declared() -> None:
    journal: list[tuple[str, str]] = []

    class Parses(Recorder):
        client_messages = frozenset({b"P"})
        server_messages = frozenset()

    wire = Wire(Parses("parses", journal), on_query(lambda q: None)).logged_in()
    wire.query("select 1", *done())
    assert journal == []
    wire.client_sends(parse("select 2"), bind(), execute(), pw.Sync())
    assert journal == [("parses", "client Parse select 2")]
    assert [type(e).__name__ for e in wire.server_events()] == [
        "Parse", "Bind", "Execute", "Sync"]


def test_frames_nobody_declared_reach_the_server_byte_for_byte() -> None:
    wire = Wire(on_query(lambda q: None)).logged_in()
    messages = [parse("select $1", "s1"), pw.Bind(portal="p", statement="s1",
                                                  parameter_formats=(1,), parameters=(b"\x00",),
                                                  result_formats=(1,)),
                pw.Describe(kind="P", name="p"), pw.Execute(portal="p", max_rows=5), pw.Sync()]
    data = b"".join(m.encode() for m in messages)
    actions = wire.feed(wire.session.client_data(data))
    assert b"".join(a.data for a in actions if isinstance(a, SendToUpstream)) == data


def test_replace_sends_another_client_message_through_the_rest_of_the_chain() -> None:
    journal: list[tuple[str, str]] = []
    rewrite = on_query(lambda q: Replace(pw.Query(query=q.query.replace("old", "new"))))
    wire = Wire(Recorder("before", journal), rewrite, Recorder("after", journal)).logged_in()
    wire.client_sends(pw.Query(query="select old"))
    assert wire.server_events() == [pw.Query(query="select new")]
    assert journal == [("before", "client Query select old"),
                       ("after", "client Query select new")]


def test_replace_rewrites_server_messages() -> None:
    class Mask(Middleware[None]):
        server_messages = frozenset({b"D"})

        def on_server_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
            assert isinstance(message, pw.DataRow)
            return Replace(pw.DataRow(values=tuple(None if v is None else b"***"
                                                   for v in message.values)))

    wire = Wire(Mask()).logged_in()
    events = wire.query("select secret, null",
                        pw.RowDescription(fields=(pw.FieldDescription(name="secret"),
                                                  pw.FieldDescription(name="n"))),
                        pw.DataRow(values=(b"hunter2", None)), *done())
    assert pw.DataRow(values=(b"***", None)) in events
    assert not any(e == pw.DataRow(values=(b"hunter2", None)) for e in events)


def test_an_empty_replace_drops_a_server_message() -> None:
    class Quiet(Middleware[None]):
        server_messages = frozenset({b"N"})

        def on_server_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
            return Replace()

    wire = Wire(Quiet()).logged_in()
    notice = pw.NoticeResponse(severity="NOTICE", code="00000", message="chatty")
    events = wire.query("select 1", notice, *done())
    assert events == [*done()]


def test_inject_to_client_comes_before_the_answer() -> None:
    notice = pw.NoticeResponse(severity="NOTICE", code="01000", message="watched")
    wire = Wire(on_query(lambda q: Inject(to_client=(notice,)))).logged_in()
    wire.client_sends(pw.Query(query="select 1"))
    assert wire.client_events() == [notice]
    assert wire.server_events() == [pw.Query(query="select 1")]
    wire.server_sends(*done())
    assert wire.client_events() == [*done()]


def test_inject_to_server_answers_are_consumed_by_the_proxy() -> None:
    side = (pw.Query(query="set application_name = 'x'"), parse("select 'side'"), bind(),
            execute(), pw.Sync())
    wire = Wire(on_query(lambda q: Inject(to_server=side))).logged_in()
    wire.client_sends(pw.Query(query="select 1"))
    assert wire.server_events() == [*side, pw.Query(query="select 1")]
    assert wire.client_events() == []
    wire.server_sends(pw.ParameterStatus(name="application_name", value="x"), *done("SET"))
    wire.server_sends(pw.ErrorResponse(severity="ERROR", severity_nonlocalized="ERROR",
                                       code="42601", message="side effect failed"), ready())
    # The results are the proxy's; the setting the injected SET changed is the client's.
    assert wire.client_events() == [pw.ParameterStatus(name="application_name", value="x")]
    wire.server_sends(*done())
    assert wire.client_events() == [*done()]


def test_inject_to_server_from_a_server_hook_is_answered_after_the_current_request() -> None:
    class AfterEach(Middleware[None]):
        server_messages = frozenset({b"C"})

        def on_server_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
            assert isinstance(message, pw.CommandComplete)
            if message.tag == "SELECT 1":
                return Inject(to_server=(pw.Query(query="select 'audit'"),))
            return None

    wire = Wire(AfterEach()).logged_in()
    events = wire.query("select 1", pw.CommandComplete(tag="SELECT 1"))
    assert events == [pw.CommandComplete(tag="SELECT 1")]
    assert wire.server_events() == [pw.Query(query="select 'audit'")]
    wire.server_sends(ready())
    assert wire.client_events() == [ready()]
    wire.server_sends(pw.CommandComplete(tag="AUDIT"), ready())
    assert wire.client_events() == []
    # The session is back to plain forwarding.
    assert wire.query("select 2", *done("SELECT 2")) == [*done("SELECT 2")]


def test_inject_to_server_inside_an_open_batch_never_eats_the_clients_answers() -> None:
    class SideOnBind(Middleware[None]):
        client_messages = frozenset({b"B"})

        def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
            return Inject(to_server=(parse("select 'side'"), bind(), execute(), pw.Sync()))

    wire = Wire(SideOnBind()).logged_in()
    wire.client_sends(parse("select 1"), bind(), execute(), pw.Sync())
    sent = [type(e).__name__ for e in wire.server_events()]
    if not wire.session.is_closed:
        # The server answers each message in the order it got them.
        answers = {"Parse": pw.ParseComplete(), "Bind": pw.BindComplete(),
                   "Execute": pw.CommandComplete(tag="SELECT 1"), "Sync": ready()}
        wire.server_sends(*(answers[name] for name in sent))
    events = wire.client_events()
    assert events in (
        [pw.ParseComplete(), pw.BindComplete(), pw.CommandComplete(tag="SELECT 1"), ready()],
    ) or (wire.session.is_closed and isinstance(events[-1], pw.ConnectionClosed)), events


def test_respond_answers_a_query_without_the_server() -> None:
    answer = (pw.RowDescription(fields=(pw.FieldDescription(name="clients"),)),
              pw.DataRow(values=(b"1",)), pw.CommandComplete(tag="SHOW"), ready())
    wire = Wire(on_query(lambda q: Respond(*answer) if q.query == "SHOW CLIENTS" else None))
    wire.logged_in()
    wire.client_sends(pw.Query(query="SHOW CLIENTS"))
    assert wire.server_events() == []
    assert wire.client_events() == list(answer)
    assert wire.query("select 1", *done()) == [*done()]


def test_respond_is_ordered_after_answers_in_flight() -> None:
    answer = (pw.CommandComplete(tag="SHOW"), ready())
    wire = Wire(on_query(lambda q: Respond(*answer) if q.query == "SHOW CLIENTS" else None))
    wire.logged_in()
    wire.client_sends(pw.Query(query="select 1"), pw.Query(query="SHOW CLIENTS"))
    assert wire.server_events() == [pw.Query(query="select 1")]
    assert wire.client_events() == []
    wire.server_sends(*done())
    assert wire.client_events() == [*done(), *answer]


def side_query(query: pw.Query) -> Verdict:
    return Inject(to_server=(pw.Query(query="select 'side'"),)) if query.query == "a" else None


def respond_to(*queries: str) -> QueryHook:
    answer = (pw.CommandComplete(tag="RESPONDED"), ready())
    return on_query(lambda q: Respond(*answer) if q.query in queries else None)


def test_respond_after_an_injected_request_of_the_same_message() -> None:
    wire = Wire(on_query(side_query), respond_to("a")).logged_in()
    wire.client_sends(pw.Query(query="a"))
    assert wire.server_events() == [pw.Query(query="select 'side'")]
    wire.server_sends(pw.CommandComplete(tag="SELECT 1"), ready())
    assert wire.client_events() == [pw.CommandComplete(tag="RESPONDED"), ready()]


def test_respond_after_an_injected_request_still_in_flight() -> None:
    wire = Wire(on_query(side_query), respond_to("b")).logged_in()
    wire.client_sends(pw.Query(query="a"), pw.Query(query="b"))
    assert wire.server_events() == [pw.Query(query="select 'side'"), pw.Query(query="a")]
    wire.server_sends(pw.CommandComplete(tag="SIDE"), ready())
    wire.server_sends(pw.CommandComplete(tag="A"), ready())
    assert wire.client_events() == [pw.CommandComplete(tag="A"), ready(),
                                    pw.CommandComplete(tag="RESPONDED"), ready()]


@pytest.mark.parametrize(("message", "verdict"), [
    (parse("select 1"), Respond(pw.CommandComplete(tag="X"), ready())),  # not a Query
    (pw.Query(query="select 1"), Respond(pw.CommandComplete(tag="X"))),  # no ReadyForQuery
], ids=["respond-to-parse", "respond-without-ready"])
def test_a_respond_the_protocol_cannot_take_is_an_internal_error(
    message: pw.Message, verdict: Respond,
) -> None:
    class Answer(Middleware[None]):
        client_messages = frozenset({b"Q", b"P"})

        def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
            return verdict

    wire = Wire(Answer()).logged_in()
    wire.client_sends(message)
    assert wire.fatal().code == "XX000"
    assert server_terminated(wire)


# -- Reject --------------------------------------------------------------------------------


def refuse_writes(query: pw.Query) -> Verdict:
    if query.query.startswith("insert"):
        return Reject("25006", "cannot execute INSERT in a read-only transaction",
                      hint="this proxy is read-only")
    return None


def test_reject_a_query_outside_a_transaction() -> None:
    wire = Wire(on_query(refuse_writes)).logged_in()
    wire.client_sends(pw.Query(query="insert into t values (1)"))
    [sent] = wire.server_events()
    assert isinstance(sent, pw.Query) and REJECT_QUERY.fullmatch(sent.query)
    wire.server_sends(undefined_function(sent.query), ready())
    error, status = wire.client_events()
    assert isinstance(error, pw.ErrorResponse)
    assert (error.severity, error.code, error.message, error.hint, error.position) == (
        "ERROR", "25006", "cannot execute INSERT in a read-only transaction",
        "this proxy is read-only", None)
    assert status == ready()
    assert wire.proxy.stats.rejected == 1
    assert wire.query("select 1", *done()) == [*done()]


def test_reject_inside_a_transaction_fails_it_on_both_sides() -> None:
    wire = Wire(on_query(refuse_writes)).logged_in()
    assert wire.query("begin", *done("BEGIN", IN_BLOCK)) == [*done("BEGIN", IN_BLOCK)]
    wire.client_sends(pw.Query(query="insert into t values (1)"))
    [sent] = wire.server_events()
    assert isinstance(sent, pw.Query)
    # The server fails the statement put in its place, so its block fails too.
    wire.server_sends(undefined_function(sent.query), ready(FAILED))
    error, status = wire.client_events()
    assert isinstance(error, pw.ErrorResponse) and error.code == "25006"
    assert status == ready(FAILED)
    assert wire.session.transaction_status == "E"
    aborted = pw.ErrorResponse(severity="ERROR", severity_nonlocalized="ERROR", code="25P02",
                               message="current transaction is aborted, commands ignored "
                                       "until end of transaction block")
    assert wire.query("select 1", aborted, ready(FAILED)) == [aborted, ready(FAILED)]
    assert wire.query("rollback", *done("ROLLBACK")) == [*done("ROLLBACK")]


def test_reject_in_an_already_failed_transaction_gets_the_servers_25P02() -> None:
    wire = Wire(on_query(refuse_writes)).logged_in()
    aborted = pw.ErrorResponse(severity="ERROR", severity_nonlocalized="ERROR", code="25P02",
                               message="current transaction is aborted")
    wire.client_sends(pw.Query(query="insert into t values (1)"))
    wire.server_events()
    wire.server_sends(aborted, ready(FAILED))
    assert wire.client_events() == [aborted, ready(FAILED)]
    # A later rejection still gets its own error.
    wire.client_sends(pw.Query(query="insert into t values (2)"))
    [sent] = wire.server_events()
    assert isinstance(sent, pw.Query)
    wire.server_sends(undefined_function(sent.query), ready())
    error = wire.client_events()[0]
    assert isinstance(error, pw.ErrorResponse) and error.code == "25006"


def test_pipelined_rejections_each_get_their_own_error() -> None:
    def refuse_all(query: pw.Query) -> Verdict:
        return Reject("25006", f"refused {query.query}")

    wire = Wire(on_query(refuse_all)).logged_in()
    wire.client_sends(pw.Query(query="A"), pw.Query(query="B"))
    sent_a, sent_b = wire.server_events()
    assert isinstance(sent_a, pw.Query) and isinstance(sent_b, pw.Query)
    wire.server_sends(undefined_function(sent_a.query), ready())
    wire.client_sends(pw.Query(query="C"))   # after A's answer, before B's
    [sent_c] = wire.server_events()
    assert isinstance(sent_c, pw.Query)
    wire.server_sends(undefined_function(sent_b.query), ready())
    wire.server_sends(undefined_function(sent_c.query), ready())
    errors = [(e.code, e.message) for e in wire.client_events()
              if isinstance(e, pw.ErrorResponse)]
    assert errors == [("25006", "refused A"), ("25006", "refused B"), ("25006", "refused C")]


class RejectExtended(Middleware[None]):
    """Rejects messages of the types in ``codes`` whose text mentions insert."""

    def __init__(self, *codes: bytes) -> None:
        self.client_messages = frozenset(codes)  # type: ignore[misc]

    def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        if isinstance(message, pw.Parse) and "insert" not in message.query:
            return None
        return Reject("25006", "cannot execute INSERT in a read-only transaction")


def test_reject_a_parse_skips_the_extended_protocol_to_sync() -> None:
    wire = Wire(RejectExtended(b"P")).logged_in()
    wire.client_sends(parse("insert into t values ($1)"), bind(),
                      pw.Describe(kind="P", name=""), execute(), pw.Sync())
    sent = wire.server_events()
    replaced = sent[0]
    assert isinstance(replaced, pw.Parse)
    match = REJECT_QUERY.fullmatch(replaced.query)
    assert match is not None and replaced.statement == match.group(1)
    assert sent[1:] == [bind(), pw.Describe(kind="P", name=""), execute(), pw.Sync()]
    # PostgreSQL fails the Parse and skips everything up to Sync.
    wire.server_sends(undefined_function(replaced.query), ready())
    error, status = wire.client_events()
    assert isinstance(error, pw.ErrorResponse) and error.code == "25006"
    assert status == ready()


def test_reject_a_bind_answers_the_parse_before_it() -> None:
    wire = Wire(RejectExtended(b"B")).logged_in()
    wire.client_sends(parse("select 1"), bind(), execute(), pw.Sync())
    sent = wire.server_events()
    assert sent[0] == parse("select 1")
    assert isinstance(sent[1], pw.Parse) and REJECT_QUERY.fullmatch(sent[1].query)
    assert sent[2:] == [execute(), pw.Sync()]
    wire.server_sends(pw.ParseComplete(), undefined_function(sent[1].query), ready())
    events = wire.client_events()
    assert events[0] == pw.ParseComplete()
    assert isinstance(events[1], pw.ErrorResponse) and events[1].code == "25006"
    assert events[2] == ready()


def test_reject_a_message_without_an_answer_of_its_own_ends_the_session() -> None:
    wire = Wire(RejectExtended(b"S")).logged_in()
    wire.client_sends(parse("select 1"), bind(), execute(), pw.Sync())
    error = wire.fatal()
    assert (error.code, error.message) == (
        "25006", "cannot execute INSERT in a read-only transaction")
    assert server_terminated(wire)


def test_reject_a_server_message_ends_the_session() -> None:
    class NoNotices(Middleware[None]):
        server_messages = frozenset({b"N"})

        def on_server_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
            return Reject("XX001", "no notices allowed")

    wire = Wire(NoNotices()).logged_in()
    wire.client_sends(pw.Query(query="select 1"))
    wire.server_events()
    wire.server_sends(pw.NoticeResponse(severity="NOTICE", code="00000", message="hi"))
    assert wire.fatal().code == "XX001"
    assert server_terminated(wire)


# -- startup, authentication, state, session end -------------------------------------------


class Lifecycle(Middleware[list[str]]):
    """Keeps its own journal per session in ``ctx.state``; shares them in ``seen``."""

    client_messages = frozenset({b"Q"})

    def __init__(self, seen: list[list[str]], startup: StartupVerdict = None,
                 after_login: Reject | None = None) -> None:
        self.seen = seen
        self.startup = startup
        self.after_login = after_login

    def create_state(self, info: SessionInfo) -> list[str]:
        state = [f"session {info.session_id} from {info.client_address}"]
        self.seen.append(state)
        return state

    def on_startup(self, ctx: Context[list[str]],
                   startup: pw.StartupMessage) -> StartupVerdict:
        ctx.state.append(f"startup {startup.get('user')}")
        return self.startup

    def on_authenticated(self, ctx: Context[list[str]], result: AuthResult) -> Reject | None:
        ctx.state.append(f"authenticated ok={result.ok} user={result.user} "
                         f"db={result.database} as={result.upstream_user} by={result.method} "
                         f"server_version={result.parameters.get('server_version')}")
        return self.after_login

    def on_client_message(self, ctx: Context[list[str]], message: pw.Message) -> Verdict:
        assert isinstance(message, pw.Query)
        ctx.state.append(f"query {message.query} in {ctx.transaction_status} "
                         f"as {ctx.user}")
        return None

    def on_session_end(self, ctx: Context[list[str]], reason: str) -> None:
        ctx.state.append(f"end: {reason}")


def test_each_session_has_its_own_state_and_sees_its_whole_life() -> None:
    seen: list[list[str]] = []
    proxy = Proxy(ProxyConfig(upstream=UPSTREAM, middleware=[Lifecycle(seen)]))
    first, second = Wire(proxy=proxy).logged_in(), Wire(proxy=proxy).logged_in()
    first.query("select 1", *done())
    second.client_sends(pw.Terminate())
    first.client_sends(pw.Terminate())
    one, two = seen
    assert one == [
        f"session {first.session.session_id} from ('127.0.0.1', 50000)",
        "startup alice",
        "authenticated ok=True user=alice db=app as=alice by=passthrough server_version=15.0",
        "query select 1 in I as alice",
        "end: client terminated the session",
    ]
    assert two[1:] == [one[1], one[2], one[4]]


def test_on_startup_may_rewrite_the_startup_message() -> None:
    seen: list[list[str]] = []
    rewritten = pw.StartupMessage.from_dict({"user": "alice", "database": "app",
                                             "default_transaction_read_only": "on"})
    wire = Wire(Lifecycle(seen, startup=rewritten)).logged_in()
    assert dict(wire.upstream_startup.parameters)["default_transaction_read_only"] == "on"
    assert wire.session.startup == rewritten


def test_on_startup_may_reject_the_client() -> None:
    seen: list[list[str]] = []
    wire = Wire(Lifecycle(seen, startup=Reject("28000", "not you")))
    wire.start()
    wire.client_sends(pw.StartupMessage.from_dict({"user": "alice"}))
    error = wire.fatal()
    assert (error.code, error.message) == ("28000", "not you")
    assert not any(isinstance(a, OpenUpstream) for a in wire.actions)


def test_on_authenticated_may_end_the_session() -> None:
    seen: list[list[str]] = []
    wire = Wire(Lifecycle(seen, after_login=Reject("28000", "not today")))
    events = wire.login()
    assert isinstance(events[-1], pw.ConnectionClosed)
    error = [e for e in events if isinstance(e, pw.ErrorResponse)][-1]
    assert (error.severity, error.code, error.message) == ("FATAL", "28000", "not today")
    assert server_terminated(wire)


def test_ctx_info_tells_whether_the_client_uses_tls(tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path)
    certificate, key = authority.issue_server_certificate()
    seen: list[tuple[str, bool]] = []

    class Watch(Middleware[None]):
        client_messages = frozenset({b"Q"})

        def on_startup(self, ctx: Context[None],
                       startup: pw.StartupMessage) -> StartupVerdict:
            seen.append(("startup", ctx.info.tls))
            return None

        def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
            seen.append(("query", ctx.info.tls))
            return None

    proxy = Proxy(ProxyConfig(upstream=UPSTREAM, middleware=[Watch()],
                              client_tls=server_context(certificate, key)))
    session = proxy.new_session(("127.0.0.1", 50001))
    client = ClientConnection(user="alice", database="app", sslmode="require")
    server = pw.Backend()
    actions = session.start()
    client.start()

    def pump() -> None:
        """Move bytes both ways until neither side has anything to say."""
        while True:
            data = client.data_to_send()
            for action in actions:
                if isinstance(action, SendToClient):
                    client.receive_data(action.data)
                elif isinstance(action, SendToUpstream):
                    server.receive_data(action.data)
                elif isinstance(action, OpenUpstream):
                    actions.extend(session.upstream_connected(MAIN_LINK))
            actions.clear()
            while client.next_event() is not pw.NEED_DATA:
                pass
            data += client.data_to_send()
            if not data:
                return
            actions.extend(session.client_data(data))

    pump()
    assert isinstance(drain(server)[0], pw.StartupMessage)
    actions.extend(session.upstream_data(b"".join(server.send(m) for m in (
        pw.AuthenticationOk(), pw.BackendKeyData(process_id=1, secret_key=b"abcd"), ready()))))
    pump()
    assert session.info.tls
    client.send(pw.Query(query="select 1"))
    pump()
    assert seen == [("startup", True), ("query", True)]


class Boom(Middleware[None]):
    """Raises in the hook named ``where``."""

    client_messages = frozenset({b"Q"})
    server_messages = frozenset({b"C"})

    def __init__(self, where: str) -> None:
        self.where = where

    def _maybe(self, where: str) -> None:
        if where == self.where:
            raise RuntimeError(f"boom in {where}")

    def on_startup(self, ctx: Context[None], startup: pw.StartupMessage) -> StartupVerdict:
        self._maybe("startup")
        return None

    def on_authenticated(self, ctx: Context[None], result: AuthResult) -> Reject | None:
        self._maybe("authenticated")
        return None

    def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        self._maybe("client")
        if self.where == "then":
            ctx.submit(lambda: None, lambda outcome: self._maybe("then"))
        return None

    def on_server_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        self._maybe("server")
        return None

    def on_session_end(self, ctx: Context[None], reason: str) -> None:
        self._maybe("end")


@pytest.mark.parametrize("where", ["startup", "authenticated", "client", "server", "then"])
def test_an_exception_in_a_hook_ends_the_session_with_XX000(where: str) -> None:
    wire = Wire(Boom(where))
    if where == "startup":
        wire.start()
        wire.client_sends(pw.StartupMessage.from_dict({"user": "alice"}))
        events = wire.client_events()
    else:
        events = wire.login()
    if where not in ("startup", "authenticated"):
        assert isinstance(events[-1], pw.ReadyForQuery)
        wire.client_sends(pw.Query(query="select 1"))
        if where == "then":
            [job] = [a for a in wire.actions if isinstance(a, RunJob)]
            wire.feed(wire.session.job_done(job.job_id, JobOutcome(job.job())))
        elif where == "server":
            wire.server_events()
            wire.server_sends(*done())
        events = wire.client_events()
    assert isinstance(events[-1], pw.ConnectionClosed)
    error = events[-2]
    assert isinstance(error, pw.ErrorResponse) and error.severity == "FATAL"
    assert isinstance(wire.actions[-1], CloseClient)
    assert error.code == "XX000"
    assert error.message == f"internal error in the proxy: RuntimeError: boom in {where}"
    assert wire.proxy.stats.internal_errors == 1
    if where != "startup":
        assert server_terminated(wire)


def test_an_exception_in_create_state_closes_the_client() -> None:
    class BrokenState(Middleware[None]):
        def create_state(self, info: SessionInfo) -> None:
            raise RuntimeError("no state today")

    proxy = Proxy(ProxyConfig(upstream=UPSTREAM, middleware=[BrokenState]))
    # An exception escaping new_session() leaves the adapter holding a client
    # socket with no session and no login timer: the client waits forever.
    session = proxy.new_session(("127.0.0.1", 50002))
    assert not any(isinstance(a, CloseClient) for a in session.start())
    client = pw.Frontend()
    actions = session.client_data(client.send(pw.StartupMessage.from_dict({"user": "u"})))
    assert isinstance(actions[-1], CloseClient)
    assert proxy.stats.internal_errors == 1
    client.receive_data(b"".join(a.data for a in actions if isinstance(a, SendToClient)))
    error = client.next_event()
    assert isinstance(error, pw.ErrorResponse)
    assert (error.severity, error.code) == ("FATAL", "XX000")


def test_an_exception_in_on_session_end_is_only_logged() -> None:
    wire = Wire(Boom("end")).logged_in()
    actions = wire.client_sends(pw.Terminate())
    assert actions[-1] == CloseClient("client terminated the session")
    assert not any(isinstance(a, SendToClient) for a in actions)


# -- background jobs --------------------------------------------------------------------------


@dataclass
class Audit(Middleware[list[JobOutcome]]):
    """Hands each query to a job; refuses the query when the job queue is full."""

    records: list[str] = field(default_factory=list)
    fail_job: bool = False
    client_messages = frozenset({b"Q"})

    def create_state(self, info: SessionInfo) -> list[JobOutcome]:
        return []

    def on_client_message(self, ctx: Context[list[JobOutcome]], message: pw.Message) -> Verdict:
        assert isinstance(message, pw.Query)
        text = message.query

        def job() -> str:
            if self.fail_job:
                raise OSError("audit sink is down")
            self.records.append(text)
            return text

        def then(outcome: JobOutcome) -> None:
            ctx.state.append(outcome)
            if not outcome.ok:
                ctx.send_to_client(pw.NoticeResponse(severity="WARNING", code="01000",
                                                     message=f"audit failed: {outcome.error}"))

        if not ctx.submit(job, then):
            return Reject("53400", "audit queue full: statement refused")
        return None


def run_jobs(wire: Wire, actions: Iterable[Action]) -> None:
    """Play the adapter's worker pool: run each job, report its outcome."""
    for action in list(actions):
        if isinstance(action, RunJob):
            try:
                outcome = JobOutcome(action.job())
            except Exception as exc:
                outcome = JobOutcome(error=exc)
            wire.feed(wire.session.job_done(action.job_id, outcome))


def test_a_job_runs_outside_the_session_and_then_reports_back() -> None:
    audit = Audit()
    wire = Wire(audit).logged_in()
    actions = wire.client_sends(pw.Query(query="select 1"))
    jobs = [a for a in actions if isinstance(a, RunJob)]
    assert len(jobs) == 1
    assert audit.records == []          # the session never runs it itself
    assert wire.server_events() == [pw.Query(query="select 1")]  # nor waits for it
    run_jobs(wire, jobs)
    assert audit.records == ["select 1"]


def test_a_failed_job_is_reported_to_then() -> None:
    wire = Wire(Audit(fail_job=True)).logged_in()
    run_jobs(wire, wire.client_sends(pw.Query(query="select 1")))
    [notice] = wire.client_events()
    assert isinstance(notice, pw.NoticeResponse)
    assert notice.message == "audit failed: audit sink is down"


def test_submit_is_refused_beyond_max_pending_jobs() -> None:
    wire = Wire(Audit(), max_pending_jobs=2).logged_in()
    waiting = wire.client_sends(pw.Query(query="q1"), pw.Query(query="q2"))
    assert len([a for a in waiting if isinstance(a, RunJob)]) == 2
    wire.client_sends(pw.Query(query="q3"))
    sent = wire.server_events()
    assert sent[:2] == [pw.Query(query="q1"), pw.Query(query="q2")]
    assert isinstance(sent[2], pw.Query) and REJECT_QUERY.fullmatch(sent[2].query)
    assert wire.proxy.stats.jobs_refused == 1
    run_jobs(wire, waiting)
    assert any(isinstance(a, RunJob) for a in wire.client_sends(pw.Query(query="q4")))


def test_a_job_ending_after_the_session_is_ignored() -> None:
    audit = Audit()
    wire = Wire(audit).logged_in()
    jobs = [a for a in wire.client_sends(pw.Query(query="q")) if isinstance(a, RunJob)]
    wire.client_sends(pw.Terminate())
    [job] = jobs
    assert wire.session.job_done(job.job_id, JobOutcome(job.job())) == []


# -- timers, limits, shutdown ------------------------------------------------------------------


def test_start_arms_the_login_timer() -> None:
    wire = Wire(login_timeout=7.5)
    assert wire.start() == [StartTimer("login", 7.5)]


def test_the_login_timer_closes_a_silent_client_without_a_word() -> None:
    wire = Wire()
    wire.start()
    actions = wire.feed(wire.session.timer_fired("login"))
    assert isinstance(actions[-1], CloseClient)
    assert not any(isinstance(a, SendToClient) for a in actions)
    assert wire.proxy.stats.login_timeouts == 1


def test_the_login_timer_ends_a_login_that_does_not_finish() -> None:
    wire = Wire(login_timeout=3)
    wire.start()
    wire.client_sends(pw.StartupMessage.from_dict({"user": "alice"}))
    wire.feed(wire.session.upstream_connected(MAIN_LINK))
    wire.server_events()
    wire.server_sends(pw.AuthenticationCleartextPassword())
    assert wire.client_events() == [pw.AuthenticationCleartextPassword()]
    wire.feed(wire.session.timer_fired("login"))
    error = wire.fatal()
    assert error.code == "08006" and "3 s" in error.message
    assert CloseUpstream(MAIN_LINK) in wire.actions


def test_the_login_timer_is_cancelled_once_logged_in() -> None:
    wire = Wire().logged_in()
    assert CancelTimer("login") in wire.actions
    assert wire.session.timer_fired("login") == []


def test_the_idle_timer_is_armed_when_ready_and_ignored_while_a_request_runs() -> None:
    wire = Wire(idle_timeout=5)
    wire.login()
    assert StartTimer("idle", 5) in wire.actions
    wire.client_sends(pw.Query(query="select 1"))
    # The timer firing while the query runs ends nothing; the next
    # ReadyForQuery starts it again.
    assert wire.session.timer_fired("idle") == []
    wire.server_events()
    assert StartTimer("idle", 5) in wire.server_sends(*done())
    wire.client_events()
    wire.feed(wire.session.timer_fired("idle"))
    error = wire.fatal()
    assert (error.code, error.message) == (
        "57P05", "terminating connection due to idle-session timeout")
    assert server_terminated(wire)


@pytest.mark.parametrize("mode", ["relay", "checked"])
def test_half_a_message_does_not_stop_the_idle_timer(mode: str) -> None:
    # PostgreSQL's idle_session_timeout runs while it waits for a whole message;
    # a client that sends one byte and stops must not hold the session forever.
    wire = Wire(idle_timeout=5, check_protocol=mode == "checked").logged_in()
    wire.feed(wire.session.client_data(pw.Query(query="select 1").encode()[:3]))
    actions = wire.feed(wire.session.timer_fired("idle"))
    assert actions and isinstance(actions[-1], CloseClient), actions
    assert wire.fatal().code == "57P05"


def test_idle_in_transaction_has_its_own_timer() -> None:
    wire = Wire(idle_in_transaction_timeout=2).logged_in()
    assert not any(isinstance(a, StartTimer) and a.name == "idle" for a in wire.actions)
    wire.client_sends(pw.Query(query="begin"))
    wire.server_events()
    assert StartTimer("idle", 2) in wire.server_sends(*done("BEGIN", IN_BLOCK))
    wire.client_events()
    wire.feed(wire.session.timer_fired("idle"))
    assert wire.fatal().code == "25P03"


def test_max_clients_refuses_the_next_login_with_53300() -> None:
    proxy = Proxy(ProxyConfig(upstream=UPSTREAM, max_clients=1))
    first = Wire(proxy=proxy).logged_in()
    second = Wire(proxy=proxy)
    second.start()
    second.client_sends(pw.StartupMessage.from_dict({"user": "bob"}))
    error = second.fatal()
    assert (error.code, error.message) == ("53300", "sorry, too many clients already")
    assert not any(isinstance(a, OpenUpstream) for a in second.actions)
    assert proxy.stats.refused_max_clients == 1
    second.session.closed()
    first.client_sends(pw.Terminate())
    first.session.closed()
    assert len(proxy) == 0
    Wire(proxy=proxy).logged_in()


def test_shutdown_ends_an_idle_session_at_once() -> None:
    wire = Wire().logged_in()
    wire.feed(wire.session.shutdown())
    error = wire.fatal()
    assert (error.code, error.message) == (
        "57P01", "terminating connection due to administrator command")
    assert server_terminated(wire)


def test_shutdown_lets_a_running_query_and_transaction_finish() -> None:
    wire = Wire().logged_in()
    wire.client_sends(pw.Query(query="begin"))
    assert not any(isinstance(a, CloseClient) for a in wire.session.shutdown())
    wire.server_events()
    wire.server_sends(*done("BEGIN", IN_BLOCK))
    assert wire.client_events() == [*done("BEGIN", IN_BLOCK)]
    assert wire.query("select 1", *done("SELECT 1", IN_BLOCK)) == [*done("SELECT 1", IN_BLOCK)]
    wire.client_sends(pw.Query(query="commit"))
    wire.server_events()
    wire.server_sends(*done("COMMIT"))
    assert wire.fatal().code == "57P01"
    assert [type(e).__name__ for e in wire.actions if isinstance(e, CloseClient)] == [
        "CloseClient"]


def test_immediate_shutdown_does_not_wait() -> None:
    wire = Wire().logged_in()
    wire.client_sends(pw.Query(query="select pg_sleep(60)"))
    wire.feed(wire.session.shutdown(immediate=True))
    assert wire.fatal().code == "57P01"


def test_a_login_after_shutdown_began_is_refused_with_57P03() -> None:
    wire = Wire()
    wire.proxy.begin_shutdown()
    wire.start()
    wire.client_sends(pw.StartupMessage.from_dict({"user": "alice"}))
    assert wire.fatal().code == "57P03"


# -- whatever the client sends -------------------------------------------------------------


class DecodeAll(Middleware[None]):
    """Asks for every client message type decoded, and forwards them."""

    client_messages = frozenset(b"QPBDECSHFXdcf"[i:i + 1] for i in range(13))


def feed_client_chunks(wire: Wire, chunks: list[bytes], *, eof: bool,
                       route: bool = True) -> None:
    """Feed the chunks one by one, checking the actions of each call."""
    for chunk in [*chunks, *([b""] if eof else [])]:
        if wire.session.is_closed:
            assert wire.session.client_data(chunk) == []
            continue
        actions = wire.session.client_data(chunk)
        closes = [i for i, a in enumerate(actions) if isinstance(a, CloseClient)]
        assert closes in ([], [len(actions) - 1]), actions
        if route:
            wire.feed(actions)
        else:
            wire.actions.extend(actions)
    assert wire.proxy.stats.internal_errors == 0


def frames(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a stream of typed frames into (type, body) pairs."""
    found = []
    offset = 0
    while offset + 5 <= len(data):
        length = int.from_bytes(data[offset + 1:offset + 5], "big")
        found.append((data[offset:offset + 1], data[offset + 5:offset + 1 + length]))
        offset += 1 + length
    return found


FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LONG_FUZZ = settings(max_examples=1500, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def startup_streams() -> st.SearchStrategy[bytes]:
    valid = st.one_of(
        pst.startup_packets().map(lambda m: m.encode()),
        pst.cancel_requests().map(lambda m: m.encode()),
        st.tuples(pst.startup_messages(), st.lists(pst.frontend_messages(), max_size=3)).map(
            lambda pair: pair[0].encode() + b"".join(m.encode() for m in pair[1])),
    )
    return st.one_of(st.binary(max_size=200), valid,
                     valid.flatmap(pst.mutations))


def check_before_login(data: st.DataObject, eof: bool) -> None:
    stream = data.draw(startup_streams(), label="stream")
    chunks = data.draw(pst.chunkings(stream), label="chunks")
    wire = Wire(DecodeAll())
    wire.start()
    feed_client_chunks(wire, chunks, eof=eof, route=False)
    sent = b"".join(a.data for a in wire.actions if isinstance(a, SendToClient))
    # Single-byte 'N' answers to SSLRequest/GSSENCRequest, a NegotiateProtocolVersion
    # for a newer minor version, then at most a FATAL error.
    for code, body in frames(sent.lstrip(b"N")):
        assert code in (b"v", b"E")
        if code == b"E":
            assert pw.ErrorResponse.decode(body).severity == "FATAL"
            assert wire.session.is_closed
    wire.session.closed()
    assert len(wire.proxy) == 0


@FUZZ
@given(data=st.data(), eof=st.booleans())
def test_any_bytes_before_login_give_actions_or_an_ending(data: st.DataObject,
                                                          eof: bool) -> None:
    check_before_login(data, eof)


def ready_streams() -> st.SearchStrategy[bytes]:
    valid = st.lists(pst.frontend_messages(), max_size=6).map(
        lambda messages: b"".join(m.encode() for m in messages))
    return st.one_of(st.binary(max_size=200), valid,
                     valid.flatmap(pst.mutations))


#: How a session carries messages after login: cut-through (no middleware reads
#: any), both state machines (check_protocol), or every client type decoded.
MODES = ("relay", "checked", "decode_all")


def wire_for(mode: str) -> Wire:
    if mode == "relay":
        return Wire(server_decode=set())
    if mode == "checked":
        return Wire(server_decode=set(), check_protocol=True)
    return Wire(DecodeAll(), server_decode=set())


def check_after_login(data: st.DataObject, eof: bool, mode: str) -> None:
    stream = data.draw(ready_streams(), label="stream")
    chunks = data.draw(pst.chunkings(stream), label="chunks")
    wire = wire_for(mode).logged_in()
    wire.actions.clear()
    feed_client_chunks(wire, chunks, eof=eof)
    upstream = b"".join(a.data for a in wire.actions if isinstance(a, SendToUpstream))
    # Whole frames of client types only (cut-through checks no more than that) ...
    split = frames(upstream)
    assert sum(5 + len(body) for _, body in split) == len(upstream)
    assert all(code in b"QPBDECSHFXdcfp" for code, _ in split)
    if mode != "relay":
        # ... and with the state machines on the path, in an order the protocol
        # allows (the Backend playing the server raises otherwise).
        wire.server_events()
    # The client hears nothing but, at the end, a FATAL error.
    events = wire.client_events()
    for event in events:
        assert isinstance(event, pw.ErrorResponse | pw.ConnectionClosed), events
        if isinstance(event, pw.ErrorResponse):
            assert event.severity == "FATAL"
            assert wire.session.is_closed


@FUZZ
@given(data=st.data(), eof=st.booleans(), mode=st.sampled_from(MODES))
def test_any_bytes_after_login_give_actions_or_a_fatal_error(
    data: st.DataObject, eof: bool, mode: str,
) -> None:
    check_after_login(data, eof, mode)


def requests() -> st.SearchStrategy[list[pw.Message]]:
    """One request: a Query, or an extended-protocol batch ending with Sync."""
    batch = st.lists(st.one_of(pst.parses(), pst.binds(), pst.describes(), pst.executes(),
                               pst.closes(), pst.flushes()), max_size=5)
    return st.one_of(pst.queries().map(lambda q: [q]), batch.map(lambda b: [*b, pw.Sync()]))


@FUZZ
@given(data=st.data(), mode=st.sampled_from(MODES))
def test_a_valid_stream_reaches_the_server_unchanged_in_any_chunking(
    data: st.DataObject, mode: str,
) -> None:
    batches = data.draw(st.lists(requests(), max_size=5), label="requests")
    stream = b"".join(m.encode() for batch in batches for m in batch)
    chunks = data.draw(pst.chunkings(stream), label="chunks")
    wire = wire_for(mode).logged_in()
    wire.actions.clear()
    feed_client_chunks(wire, chunks, eof=False)
    assert not wire.session.is_closed
    upstream = b"".join(a.data for a in wire.actions if isinstance(a, SendToUpstream))
    assert upstream == stream


@pytest.mark.slow
@LONG_FUZZ
@given(data=st.data(), eof=st.booleans())
def test_any_bytes_before_login_long_run(data: st.DataObject, eof: bool) -> None:
    check_before_login(data, eof)


@pytest.mark.slow
@LONG_FUZZ
@given(data=st.data(), eof=st.booleans(), mode=st.sampled_from(MODES))
def test_any_bytes_after_login_long_run(data: st.DataObject, eof: bool, mode: str) -> None:
    check_after_login(data, eof, mode)


# -- ctx.query: the proxy's own questions on the session's connection -------------------


class AsksAtEveryReady(Middleware[list[QueryResult]]):
    """Asks the server a question at each ReadyForQuery; refuses Parse of 'bad'."""

    client_messages = frozenset({b"P"})
    server_messages = frozenset({b"Z"})

    def create_state(self, info: SessionInfo) -> list[QueryResult]:
        return []

    def on_client_message(self, ctx: Context[list[QueryResult]], message: pw.Message) -> Any:
        assert isinstance(message, pw.Parse)
        return Reject("42501", "refused") if message.query == "bad" else None

    def on_server_message(self, ctx: Context[list[QueryResult]], message: pw.Message) -> Any:
        ctx.query("SELECT 1", ctx.state.append)
        return None


def answer_hidden(wire: Wire) -> None:
    """The server answers the proxy's own SELECT 1."""
    wire.server_sends(pw.RowDescription(fields=(pw.FieldDescription(name="x"),)),
                      pw.DataRow(values=(b"1",)), pw.CommandComplete(tag="SELECT 1"), ready())


def test_a_query_asked_at_ready_for_query_is_answered_to_the_proxy_not_the_client() -> None:
    middleware = AsksAtEveryReady()
    wire = Wire(middleware).logged_in()
    wire.query("SELECT 2", pw.CommandComplete(tag="SELECT 0"), ready())
    [asked] = wire.server_events()
    assert asked == pw.Query(query="SELECT 1")
    answer_hidden(wire)
    assert wire.client_events() == []  # the answer is the proxy's own
    [state] = [c.state for c in wire.session._chain.contexts]
    assert [r.rows for r in state] == [(("1",),)]


def test_a_rejection_in_a_batch_outlives_the_end_of_the_proxy_s_own_query() -> None:
    """The batch with the rejected Parse is still open (no Sync yet) when the
    answer to the proxy's own query ends: the rejection's error must still be
    swapped for the client's 42501 when it comes."""
    wire = Wire(AsksAtEveryReady()).logged_in()
    wire.query("SELECT 2", pw.CommandComplete(tag="SELECT 0"), ready())
    wire.server_events()  # the proxy's SELECT 1
    wire.client_sends(pw.Parse(query="bad"), pw.Bind(), pw.Execute())
    [vehicle] = [e for e in wire.server_events() if isinstance(e, pw.Parse)]
    answer_hidden(wire)  # ends while the client's batch is open
    wire.client_sends(pw.Sync())
    wire.server_events()
    wire.server_sends(pw.ErrorResponse(severity="ERROR", code="42883",
                                       message=f"function {vehicle.query[7:]} does not exist"),
                      ready())
    errors = [e for e in wire.client_events() if isinstance(e, pw.ErrorResponse)]
    assert [(e.code, e.message) for e in errors] == [("42501", "refused")]

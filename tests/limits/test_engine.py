"""Limits the sans-IO session enforces itself, driven by SessionHarness.

The adapters' share (timers firing, sockets not read) is in test_live.py;
here the session's decisions: what a limit of exactly N lets through, what
the client sees past it, and when a timeout's timer is only a reminder to
look. Timers never fire on their own here: the tests fire them.
"""

from __future__ import annotations

import pytest

import pgwire as pw
from pgwire.middleware import Context, Middleware, Respond
from pgwire.middleware.base import Verdict
from pgwire.proxy import (
    MAIN_LINK,
    CancelTimer,
    CloseClient,
    CloseUpstream,
    OpenUpstream,
    Proxy,
    ProxyConfig,
    StartTimer,
)
from pgwire.testing.harness import DEFAULT_UPSTREAM, SessionHarness

READ_TIMER = "upstream read"
IDLE = pw.TransactionStatus.IDLE


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def harness(clock: Clock | None = None, *, check_protocol: bool = False,
            **limits: object) -> SessionHarness:
    config = ProxyConfig(upstream=DEFAULT_UPSTREAM, check_protocol=check_protocol,
                         **limits)  # type: ignore[arg-type]
    proxy = Proxy(config, clock=clock) if clock is not None else Proxy(config)
    return SessionHarness(proxy=proxy).logged_in()


def answered(tag: str = "SELECT 1") -> tuple[pw.Message, ...]:
    return (pw.RowDescription(fields=(pw.FieldDescription(name="x"),)),
            pw.DataRow(values=(b"1",)), pw.CommandComplete(tag=tag),
            pw.ReadyForQuery(status=IDLE))


def timers(actions: list[object], name: str) -> list[StartTimer]:
    return [a for a in actions if isinstance(a, StartTimer) and a.name == name]


# -- upstream_read_timeout ---------------------------------------------------------------


MODES = pytest.mark.parametrize("check_protocol", [False, True], ids=["relay", "checked"])


@MODES
def test_read_timeout_is_off_by_default(check_protocol: bool) -> None:
    wire = harness(check_protocol=check_protocol)
    actions = wire.client_sends(pw.Query(query="select pg_sleep(3600)"))
    assert timers(actions, READ_TIMER) == []


@MODES
def test_read_timeout_arms_with_a_request_and_ends_a_silent_server_with_08006(
        check_protocol: bool) -> None:
    clock = Clock()
    wire = harness(clock, check_protocol=check_protocol, upstream_read_timeout=5)
    assert timers(wire.actions, READ_TIMER) == []  # nothing owed after login
    actions = wire.client_sends(pw.Query(query="select pg_sleep(3600)"))
    assert timers(actions, READ_TIMER) == [StartTimer(READ_TIMER, 5)]
    clock.now += 5
    actions = wire.feed(wire.session.timer_fired(READ_TIMER))
    error = wire.fatal()
    assert (error.severity, error.code) == ("FATAL", "08006")
    assert "5 s" in error.message and "upstream_read_timeout" in error.message
    assert CloseUpstream(MAIN_LINK) in actions
    assert wire.proxy.stats.upstream_read_timeouts == 1


@MODES
def test_server_bytes_restart_the_wait(check_protocol: bool) -> None:
    clock = Clock()
    wire = harness(clock, check_protocol=check_protocol, upstream_read_timeout=5)
    wire.client_sends(pw.Query(query="select g from generate_series(1, 3) g"))
    wire.server_events()
    clock.now += 4
    wire.server_sends(*answered()[:2])
    clock.now += 1  # the timer fires 5 s after it started, 1 s after the row
    actions = wire.feed(wire.session.timer_fired(READ_TIMER))
    assert timers(actions, READ_TIMER) == [StartTimer(READ_TIMER, 4)]
    assert not wire.session.is_closed
    clock.now += 4  # now silent for the whole timeout
    wire.feed(wire.session.timer_fired(READ_TIMER))
    assert wire.fatal().code == "08006"


@MODES
def test_nothing_owed_when_the_timer_fires_ends_nothing(check_protocol: bool) -> None:
    clock = Clock()
    wire = harness(clock, check_protocol=check_protocol, upstream_read_timeout=5)
    wire.client_sends(pw.Query(query="select 1"))
    wire.server_events()
    wire.server_sends(*answered())
    clock.now += 60
    assert wire.feed(wire.session.timer_fired(READ_TIMER)) == []
    assert not wire.session.is_closed
    # The next request starts the timer again.
    actions = wire.client_sends(pw.Query(query="select 2"))
    assert timers(actions, READ_TIMER) == [StartTimer(READ_TIMER, 5)]


@MODES
def test_copy_from_stdin_waits_for_the_client_not_the_server(check_protocol: bool) -> None:
    clock = Clock()
    wire = harness(clock, check_protocol=check_protocol, upstream_read_timeout=5)
    wire.client_sends(pw.Query(query="copy t from stdin"))
    wire.server_events()
    wire.server_sends(pw.CopyInResponse(format=0, column_formats=()))
    clock.now += 60  # the client takes its time sending the data: not the server's fault
    wire.feed(wire.session.timer_fired(READ_TIMER))
    assert not wire.session.is_closed
    # CopyDone: the server owes the answer again, and the wait starts over.
    actions = wire.client_sends(pw.CopyData(data=b"1\n"), pw.CopyDone())
    assert timers(actions, READ_TIMER) == [StartTimer(READ_TIMER, 5)]
    clock.now += 5
    wire.feed(wire.session.timer_fired(READ_TIMER))
    assert wire.fatal().code == "08006"


def test_a_server_the_adapter_is_not_reading_is_not_silent() -> None:
    # Back-pressure: the client's queue is full, so the adapter stopped reading
    # the server; the server's silence meanwhile does not count.
    clock = Clock()
    wire = harness(clock, upstream_read_timeout=5)
    wire.client_sends(pw.Query(query="select * from big"))
    wire.server_events()
    wire.session.upstream_held(True)
    clock.now += 60
    actions = wire.feed(wire.session.timer_fired(READ_TIMER))
    assert timers(actions, READ_TIMER) == [StartTimer(READ_TIMER, 5)]
    assert not wire.session.is_closed
    clock.now += 2
    wire.session.upstream_held(False)  # read again: the wait starts now
    clock.now += 3
    actions = wire.feed(wire.session.timer_fired(READ_TIMER))
    assert timers(actions, READ_TIMER) == [StartTimer(READ_TIMER, 2)]
    clock.now += 2
    wire.feed(wire.session.timer_fired(READ_TIMER))
    assert wire.fatal().code == "08006"


def test_the_read_timer_is_cancelled_when_the_session_ends() -> None:
    wire = harness(Clock(), upstream_read_timeout=5)
    wire.client_sends(pw.Query(query="select pg_sleep(10)"))
    actions = wire.client_sends(pw.Terminate())
    assert CancelTimer(READ_TIMER) in actions and isinstance(actions[-1], CloseClient)


# -- max_pipeline ----------------------------------------------------------------------------


@MODES
def test_max_pipeline_lets_exactly_n_requests_in_flight(check_protocol: bool) -> None:
    wire = harness(check_protocol=check_protocol, max_pipeline=3)
    assert wire.session.accepts_client_data
    wire.client_sends(pw.Query(query="select 1"), pw.Query(query="select 2"))
    assert wire.session.accepts_client_data  # 2 of 3
    wire.client_sends(pw.Parse(statement="", query="select 3", parameter_types=()),
                      pw.Bind(portal="", statement="", parameter_formats=(), parameters=(),
                              result_formats=()),
                      pw.Execute(portal="", max_rows=0))
    assert wire.session.accepts_client_data  # an open batch is not a request yet
    wire.client_sends(pw.Sync())
    assert not wire.session.accepts_client_data  # 3 of 3: the adapter stops reading
    # Nothing was refused: every request went upstream.
    assert [type(m).__name__ for m in wire.server_events()] == [
        "Query", "Query", "Parse", "Bind", "Execute", "Sync"]
    wire.server_sends(*answered())
    assert wire.session.accepts_client_data  # an answer came back: read on
    assert not wire.session.is_closed


class AnswersLocal(Middleware[None]):
    """Answers ``local`` itself (after the server's earlier answers)."""

    client_messages = frozenset({b"Q"})

    def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        if isinstance(message, pw.Query) and message.query == "local":
            return Respond(pw.EmptyQueryResponse(), pw.ReadyForQuery(status=IDLE))
        return None


def test_max_pipeline_counts_answers_a_middleware_holds_back() -> None:
    config = ProxyConfig(upstream=DEFAULT_UPSTREAM, middleware=[AnswersLocal],
                         max_pipeline=2)
    wire = SessionHarness(proxy=Proxy(config)).logged_in()
    wire.client_sends(pw.Query(query="select pg_sleep(1)"))
    assert wire.session.accepts_client_data
    # Answered by the middleware, but only after the server's answer: held.
    wire.client_sends(pw.Query(query="local"))
    assert not wire.session.accepts_client_data
    wire.server_events()
    wire.server_sends(*answered())
    assert wire.session.accepts_client_data
    assert [type(e).__name__ for e in wire.client_events()] == [
        "RowDescription", "DataRow", "CommandComplete", "ReadyForQuery",
        "EmptyQueryResponse", "ReadyForQuery"]


# -- max_clients ------------------------------------------------------------------------


def test_max_clients_lets_exactly_n_log_in() -> None:
    proxy = Proxy(ProxyConfig(upstream=DEFAULT_UPSTREAM, max_clients=3))
    first = [SessionHarness(proxy=proxy).logged_in() for _ in range(3)]
    assert all(h.session.state == "ready" for h in first)
    extra = SessionHarness(proxy=proxy)
    extra.start()
    actions = extra.client_sends(pw.StartupMessage.from_dict({"user": "bob"}))
    assert not any(isinstance(a, OpenUpstream) for a in actions)
    error = extra.fatal()
    assert (error.severity, error.code, error.message) == (
        "FATAL", "53300", "sorry, too many clients already")


# -- max_message_size ---------------------------------------------------------------------


@MODES
def test_max_message_size_lets_exactly_the_limit_through(check_protocol: bool) -> None:
    limit = 1000
    wire = harness(check_protocol=check_protocol, max_message_size=limit)
    sql = "select '" + "x" * (limit - 10) + "'"  # body: sql + its NUL = limit bytes
    assert len(pw.Query(query=sql).encode()) - 5 == limit
    wire.client_sends(pw.Query(query=sql))
    assert wire.server_events() == [pw.Query(query=sql)]
    wire.server_sends(*answered())
    wire.client_events()
    wire.client_sends(pw.Query(query=sql + "x"))
    error = wire.fatal()
    assert (error.severity, error.code) == ("FATAL", "54000")
    assert f"{limit + 1} bytes" in error.message and str(limit) in error.message
    assert wire.server_events()[-1:] == [pw.ConnectionClosed()] or wire.server_closed

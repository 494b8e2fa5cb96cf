"""Plain reproductions of what the interleaving machine found, and proof that
its new checks can fail.

The findings:

- the answer to a query the proxy sends itself (``ctx.query``: the role
  guard's and the audit's role tracking after login) is hidden from the
  client whole, so a NotificationResponse or ParameterStatus the server sends
  among it is lost: a LISTENing client misses notifications;
- a FATAL error whose localized severity is translated (``ВАЖНО`` from a
  server with ``lc_messages=ru_RU``; the untranslated ``FATAL`` is in field
  V) is taken for an ordinary error of that hidden query: the client gets no
  error at all, only the end of the connection;
- with ``check_protocol``, a client's request that crosses the server's
  FATAL error on the wire (sent before the client could read it) is counted
  as a client protocol error, and the session ends as "client error: client
  sent data after the connection closed": the client did nothing wrong;
- once the server's FATAL error has gone to the client, what the client
  still sends is dropped, its Terminate too: the session stays open, holding
  both connections, until the server's end of stream (which a black-holed
  server never sends), though the client has left;
- Audit keeps a mark per Sync and ends an extended batch's records at the
  ReadyForQuery of that Sync, but the server ignores a Sync read during COPY
  FROM STDIN (the client sends another after CopyDone): after a COPY by
  Execute one mark too many is left, so the next request's ReadyForQuery
  pops it and that request never gets its outcome record, and every later
  outcome is one request late. The role tracker keeps Sync entries the same
  way, so after such a COPY it sees a SET ROLE one request late: the next
  statement, run as the new role, is recorded as run by the old one, and the
  role guard decides on the old role.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

import pgwire as pw
from pgwire.middleware import Context, Middleware, Replace, Verdict
from pgwire.middleware.audit import Audit
from pgwire.middleware.roles import RoleGuard
from pgwire.roles import RoleGraph
from pgwire.roles._tracker import LOGIN_SQL
from pgwire.testing.harness import SessionHarness
from pgwire.testing.stateful import InterleavingMachine, MiddlewareCheckFailed
from tests.audit.helpers import ListSink

GRAPH = RoleGraph.from_rows(roles=[("alice", "LOGIN"), ("readers", "")],
                            memberships=[("readers", "alice")])
IDLE = pw.ReadyForQuery(status=pw.TransactionStatus.IDLE)
#: Finding a planted bug: no shrinking, fixed seed, so the test is quick and stable.
FIND = settings(max_examples=100, stateful_step_count=40, deadline=None, database=None,
                derandomize=True, phases=[Phase.generate], report_multiple_bugs=False,
                suppress_health_check=list(HealthCheck))


def guarded_session() -> SessionHarness:
    """A session behind the role guard, its login query sent and not answered yet."""
    wire = SessionHarness(RoleGuard("deny", graph=GRAPH)).logged_in()
    assert wire.server_events() == [pw.Query(query=LOGIN_SQL)]
    return wire


def login_answer() -> tuple[pw.Message, ...]:
    """The rows of the guard's login query, without ReadyForQuery."""
    return (pw.RowDescription(fields=tuple(pw.FieldDescription(name=f"c{i}")
                                           for i in range(3))),
            pw.DataRow(values=(b"alice", b"alice", b"none")),
            pw.CommandComplete(tag="SELECT 1"))


# -- findings ----------------------------------------------------------------------------


@pytest.mark.parametrize("session_message", [
    pw.NotificationResponse(process_id=77, channel="jobs", payload="go"),
    pw.ParameterStatus(name="application_name", value="batch"),
], ids=["notification", "parameter-status"])
def test_a_session_message_among_the_proxys_own_answer_reaches_the_client(
    session_message: pw.Message,
) -> None:
    wire = guarded_session()
    wire.server_sends(*login_answer(), session_message, IDLE)
    assert wire.client_events() == [session_message]


def test_a_translated_fatal_among_the_proxys_own_answer_reaches_the_client() -> None:
    wire = guarded_session()
    fatal = pw.ErrorResponse(severity="ВАЖНО", severity_nonlocalized="FATAL", code="57P01",
                             message="terminating connection due to administrator command")
    wire.server_sends(fatal)
    wire.feed(wire.session.upstream_data(b""))
    assert wire.client_events() == [fatal, pw.ConnectionClosed()]


def test_a_request_crossing_the_servers_fatal_is_not_the_clients_fault() -> None:
    wire = SessionHarness(check_protocol=True).logged_in()
    fatal = pw.ErrorResponse(severity="FATAL", severity_nonlocalized="FATAL", code="57P01",
                             message="terminating connection due to administrator command")
    wire.server_sends(fatal)
    assert wire.client_events() == [fatal]
    wire.feed(wire.session.client_data(pw.Query(query="SELECT 1").encode()))  # already sent
    wire.feed(wire.session.upstream_data(b""))
    assert wire.session.is_closed
    assert wire.proxy.stats.client_protocol_errors == 0, wire.session.close_reason
    assert not (wire.session.close_reason or "").startswith("client error"), (
        wire.session.close_reason)


class ReadsQueries(Middleware[None]):
    """Reads Query and ReadyForQuery, changes nothing: the selective path."""

    client_messages = frozenset({b"Q"})
    server_messages = frozenset({b"Z"})


@pytest.mark.parametrize(("middleware", "proxy_settings"), [
    ((), {}), ((), {"check_protocol": True}), ((ReadsQueries(),), {}),
], ids=["cut-through", "checked", "selective"])
def test_the_clients_terminate_after_the_servers_fatal_ends_the_session(
    middleware: tuple[Middleware[None], ...], proxy_settings: dict[str, bool],
) -> None:
    wire = SessionHarness(*middleware, **proxy_settings).logged_in()
    fatal = pw.ErrorResponse(severity="FATAL", severity_nonlocalized="FATAL", code="57P01",
                             message="terminating connection due to administrator command")
    wire.server_sends(fatal)
    assert wire.client_events() == [fatal]
    # Sent before the client read the FATAL; the server's end of stream is late.
    wire.feed(wire.session.client_data(pw.Query(query="SELECT 1").encode()
                                       + pw.Terminate().encode()))
    assert wire.session.is_closed, "the session waits for the server though the client left"
    assert wire.server_closed and wire.client_closed


def test_a_copy_by_execute_leaves_the_audit_outcomes_in_step() -> None:
    sink = ListSink()
    audit = Audit(sink, track_roles=False)
    wire = SessionHarness(audit).logged_in()
    copy_by_execute(wire)
    wire.query("SELECT 1", pw.CommandComplete(tag="SELECT 0"), IDLE)
    assert audit.queue.flush(timeout=10)
    outcomes = [(r.as_dict()["request"], r.as_dict()["status"]) for r in sink.records
                if r.event == "complete"]
    assert outcomes == [(1, "ok"), (2, "ok")]


def copy_by_execute(wire: SessionHarness) -> None:
    """A COPY FROM STDIN by Execute, ended by CopyDone and the client's second Sync."""
    wire.client_sends(pw.Parse(statement="", query="COPY t FROM STDIN", parameter_types=()),
                      pw.Bind(portal="", statement="", parameter_formats=(), parameters=(),
                              result_formats=()),
                      pw.Execute(portal="", max_rows=0), pw.Sync())
    wire.server_events()
    wire.server_sends(pw.ParseComplete(), pw.BindComplete(),
                      pw.CopyInResponse(format=0, column_formats=(0,)))
    wire.client_events()
    wire.client_sends(pw.CopyData(data=b"1\n"), pw.CopyDone(), pw.Sync())
    wire.server_events()
    wire.server_sends(pw.CommandComplete(tag="COPY 1"), IDLE)
    wire.client_events()


def test_after_a_copy_by_execute_the_role_tracker_sees_set_role_in_time() -> None:
    sink = ListSink()
    audit = Audit(sink)  # tracks roles, as the guard does
    wire = SessionHarness(audit).logged_in()
    wire.server_events()
    wire.server_sends(*login_answer(), IDLE)
    copy_by_execute(wire)
    wire.client_sends(pw.Query(query="SET ROLE readers"))
    asked = wire.server_events()
    wire.server_sends(pw.CommandComplete(tag="SET"), IDLE)
    asked += wire.server_events()
    for query in asked[1:]:  # the tracker's check of the new role
        assert isinstance(query, pw.Query)
        wire.server_sends(pw.RowDescription(fields=(pw.FieldDescription(name="current_user"),
                                                    pw.FieldDescription(name="session_user"))),
                          pw.DataRow(values=(b"readers", b"alice")),
                          pw.CommandComplete(tag="SELECT 1"), IDLE)
    wire.client_events()
    wire.client_sends(pw.Query(query="SELECT 1"))
    assert wire.server_events()[-1] == pw.Query(query="SELECT 1")
    assert audit.queue.flush(timeout=10)
    [select] = [r for r in sink.records if r.event == "query" and r.as_dict()["sql"] == "SELECT 1"]
    assert select.effective_role == "readers"


# -- the checks can fail -----------------------------------------------------------------



class LosesNotifications(Middleware[None]):
    """Broken: swallows every NotificationResponse."""

    server_messages = frozenset({b"A"})

    def on_server_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        return Replace()


class RepeatsNotices(Middleware[None]):
    """Broken: sends every NoticeResponse twice."""

    server_messages = frozenset({b"N"})

    def on_server_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        return Replace(message, message)


@pytest.mark.parametrize(("middleware", "exact"), [
    (LosesNotifications, True), (LosesNotifications, False),
    (RepeatsNotices, True), (RepeatsNotices, False),
])
def test_a_lost_or_repeated_server_message_is_caught(middleware: type, exact: bool) -> None:
    machine = type("Broken", (InterleavingMachine,), {"middleware": (middleware,),
                                                       "exact": exact})
    with pytest.raises(MiddlewareCheckFailed, match=r"the server sent the client|exactly"):
        run_state_machine_as_test(machine, settings=FIND)

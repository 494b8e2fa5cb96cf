"""The role chain (Audit, RoleRewrite, RoleGuard) in a proxy session fed hostile input.

Any bytes from the client after login, and any backend messages from the
server after a valid request, must give actions or a FATAL ending: never an
exception escaping a middleware (``internal_errors`` stays 0), and the audit
keeps working. The sessions are sans-IO: a Backend plays the server.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import pgwire as pw
import pgwire.testing.strategies as pst
from pgwire.middleware.audit import Audit
from pgwire.middleware.rewrite import RoleRewrite
from pgwire.middleware.roles import RoleGuard
from pgwire.proxy import SendToUpstream
from pgwire.roles import RoleGraph
from tests.audit.helpers import ListSink
from tests.proxy.test_session import Wire, feed_client_chunks, ready_streams

FUZZ = settings(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
GRAPH = RoleGraph.from_rows(
    roles=[("alice", "LOGIN"), ("readers", ""), ("admins", "SUPERUSER")],
    memberships=[("readers", "alice"), ("admins", "alice")],
)
POLICIES = ("deny", "allowlist", "drop_only")


def guard(policy: str) -> RoleGuard:
    if policy == "deny":
        return RoleGuard("deny")
    if policy == "allowlist":
        return RoleGuard("allowlist", allow={"alice": ["readers"]})
    return RoleGuard("drop_only", graph=GRAPH)


def guarded(policy: str) -> Wire:
    """A logged-in session through the whole chain, its login query answered."""
    wire = Wire(Audit(ListSink()), RoleRewrite(), guard(policy)).logged_in()
    [login_query] = wire.server_events()
    assert isinstance(login_query, pw.Query) and "current_user" in login_query.query
    fields = tuple(pw.FieldDescription(name=name) for name in ("u", "s", "r"))
    wire.server_sends(pw.RowDescription(fields=fields),
                      pw.DataRow(values=(b"alice", b"alice", b"none")),
                      pw.CommandComplete(tag="SELECT 1"),
                      pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))
    assert wire.client_events() == []  # the answer is the proxy's own
    wire.actions.clear()
    return wire


def role_requests() -> st.SearchStrategy[bytes]:
    """Requests in the guard's own territory, well formed or cut and bent."""
    statements = st.sampled_from([
        "SET ROLE readers", "SET ROLE admins", "RESET ROLE", "SET ROLE NONE",
        "SELECT set_config('role', 'admins', false)", "SELECT set_config($1, 'x', false)",
        "DISCARD ALL", "DO $$BEGIN END$$", "BEGIN", "COMMIT", "ROLLBACK",
        "SELECT 'a\\', ' AS b", "SELECT 1; SET ROLE admins", "selec", "",
    ])
    query = statements.map(lambda sql: pw.Query(query=sql).encode())
    extended = st.tuples(statements, st.sampled_from(["", "s1"])).map(
        lambda pair: b"".join(m.encode() for m in (
            pw.Parse(statement=pair[1], query=pair[0], parameter_types=()),
            pw.Bind(portal="", statement=pair[1], parameter_formats=(),
                    parameters=(b"role",), result_formats=()),
            pw.Execute(portal="", max_rows=0), pw.Sync())))
    call = st.just(pw.FunctionCall(function_oid=2078, argument_formats=(),
                                   arguments=(b"role", b"admins", b"f"),
                                   result_format=0).encode())
    valid = st.lists(st.one_of(query, extended, call), max_size=4).map(b"".join)
    return st.one_of(valid, valid.flatmap(pst.mutations), ready_streams())


@pytest.mark.parametrize("policy", POLICIES)
@FUZZ
@given(data=st.data(), eof=st.booleans())
def test_any_client_bytes_give_actions_or_a_fatal_error(
    policy: str, data: st.DataObject, eof: bool,
) -> None:
    stream = data.draw(role_requests(), label="stream")
    chunks = data.draw(pst.chunkings(stream), label="chunks")
    wire = guarded(policy)
    try:
        feed_client_chunks(wire, chunks, eof=eof)  # asserts internal_errors == 0
        for event in wire.client_events():
            assert isinstance(event, pw.ErrorResponse | pw.ConnectionClosed), event
            if isinstance(event, pw.ErrorResponse):
                assert event.severity == "FATAL"
    finally:
        wire.proxy.close()  # the audit's writer thread ends


@pytest.mark.parametrize("policy", POLICIES)
@FUZZ
@given(answers=st.lists(pst.backend_messages(), max_size=8), data=st.data())
def test_any_server_answer_gives_actions_or_a_fatal_error(
    policy: str, answers: list[pw.Message], data: st.DataObject,
) -> None:
    wire = guarded(policy)
    try:
        wire.client_sends(pw.Query(query="SET ROLE readers; SELECT 1"))
        stream = b"".join(message.encode() for message in answers)
        for chunk in data.draw(pst.chunkings(stream), label="chunks"):
            if wire.session.is_closed:
                break
            wire.feed(wire.session.upstream_data(chunk))
        assert wire.proxy.stats.internal_errors == 0
    finally:
        wire.proxy.close()


def test_a_refused_role_change_reaches_the_server_as_a_failing_statement() -> None:
    wire = guarded("deny")
    wire.client_sends(pw.Query(query="SET ROLE admins"))
    [sent] = wire.server_events()
    assert isinstance(sent, pw.Query) and "pgwire_reject_" in sent.query
    assert "admins" not in b"".join(
        a.data for a in wire.actions if isinstance(a, SendToUpstream)).decode()
    wire.proxy.close()

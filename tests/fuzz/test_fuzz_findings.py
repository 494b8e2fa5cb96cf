"""What the fuzz harnesses found, as plain regression tests (no atheris).

Each test is the minimized input of a harness failure, replayed through the
public API it broke, so the fix stays (both were fixed in commit 0b0f883).
"""

from __future__ import annotations

import pytest

import pgwire as pw
from pgwire.middleware.rewrite import RoleRewrite
from pgwire.middleware.roles import RoleGuard
from pgwire.roles import (
    InvalidOptions,
    RoleGraph,
    StartupRefused,
    parse_options,
    sanitize_startup,
)
from pgwire.testing.harness import SessionHarness


@pytest.mark.parametrize("value", ["-c a=\x00", "-c search_path=\x00x", "--x=\x00"])
def test_parse_options_refuses_a_nul_with_invalid_options(value: str) -> None:
    # Harness fuzz/startup.py, entry 2: parse_options documents InvalidOptions as the
    # only error ("nothing else is ever raised"), but a NUL in an argument reaches
    # OptionSetting.__post_init__, which raises ValueError.
    with pytest.raises(InvalidOptions):
        parse_options(value)


def test_sanitize_startup_refuses_options_with_a_nul_with_startup_refused() -> None:
    # The same through sanitize_startup: a packet built in code (a middleware's
    # Replace, a test) can hold a NUL that no wire packet can.
    startup = pw.StartupMessage(parameters=(("user", "alice"), ("options", "-c a=\x00")))
    with pytest.raises(StartupRefused):
        sanitize_startup(startup)


# -- the role chain's own queries, answered in an unexpected shape -----------------------------

GRAPH = RoleGraph.from_rows(
    roles=[("alice", "LOGIN"), ("readers", ""), ("admins", "SUPERUSER")],
    memberships=[("readers", "alice"), ("admins", "alice")],
)
IDLE = pw.TransactionStatus.IDLE


def one_column_answer() -> tuple[pw.Message, ...]:
    return (pw.RowDescription(fields=(pw.FieldDescription(name="x"),)),
            pw.DataRow(values=(b"alice",)), pw.CommandComplete(tag="SELECT 1"),
            pw.ReadyForQuery(status=IDLE))


def guarded() -> SessionHarness:
    return SessionHarness(RoleRewrite(), RoleGuard("drop_only", graph=GRAPH)).logged_in()


def test_a_login_query_answer_with_one_column_is_not_an_internal_error() -> None:
    # Harness fuzz/session.py, mode "roles", phase 0 (a captured psql conversation
    # replayed: the server's next answer had one column). start_tracking's
    # logged_in callback (pgwire/middleware/roles.py, ``current, session, setting
    # = ... answer.rows[0][:3]``) raises ValueError, and the session ends with
    # XX000 "internal error in the proxy".
    wire = guarded()
    [login_query] = wire.server_events()
    assert isinstance(login_query, pw.Query)
    wire.server_sends(*one_column_answer())
    assert wire.proxy.stats.internal_errors == 0, wire.session.close_reason


def test_a_verify_query_answer_with_one_column_is_not_an_internal_error() -> None:
    # The same in _verify's callback (``current, session = answer.rows[0][:2]``),
    # asked after a role change.
    wire = guarded()
    wire.server_events()
    fields = tuple(pw.FieldDescription(name=name) for name in ("u", "s", "r"))
    wire.server_sends(pw.RowDescription(fields=fields),
                      pw.DataRow(values=(b"alice", b"alice", b"none")),
                      pw.CommandComplete(tag="SELECT 1"), pw.ReadyForQuery(status=IDLE))
    wire.client_sends(pw.Query(query="SET ROLE readers"))
    assert [type(e) for e in wire.server_events()] == [pw.Query]
    wire.server_sends(pw.CommandComplete(tag="SET"), pw.ReadyForQuery(status=IDLE))
    verify = wire.server_events()
    assert verify and isinstance(verify[-1], pw.Query), verify
    wire.server_sends(*one_column_answer())
    assert wire.proxy.stats.internal_errors == 0, wire.session.close_reason

"""RoleGuard decisions in a sans-IO proxy session (a Backend plays the server)."""

from __future__ import annotations

import pytest

import pgwire as pw
from pgwire.middleware.roles import RoleGuard
from pgwire.roles import RoleGraph
from tests.proxy.test_session import Wire

GRAPH = RoleGraph.from_rows(
    roles=[("alice", "LOGIN"), ("readers", ""), ("files", ""),
           ("pg_write_server_files", "")],
    memberships=[("readers", "alice"), ("files", "alice"),
                 ("pg_write_server_files", "files")],
)


def session(guard: RoleGuard) -> Wire:
    wire = Wire(guard).logged_in()
    [login_query] = wire.server_events()
    fields = tuple(pw.FieldDescription(name=name) for name in ("u", "s", "r"))
    wire.server_sends(pw.RowDescription(fields=fields),
                      pw.DataRow(values=(b"alice", b"alice", b"none")),
                      pw.CommandComplete(tag="SELECT 1"),
                      pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))
    assert isinstance(login_query, pw.Query)
    return wire


def refused(wire: Wire, sql: str) -> bool:
    """Whether the statement went upstream as the guard's failing vehicle."""
    wire.client_sends(pw.Query(query=sql))
    [sent] = wire.server_events()
    assert isinstance(sent, pw.Query)
    return "pgwire_reject_" in sent.query


@pytest.mark.parametrize(("target", "expected"), [
    ("readers", False),
    ("files", True),                  # belongs to pg_write_server_files
    ("pg_write_server_files", True),
])
def test_drop_only_treats_file_and_program_roles_as_privileges(target: str,
                                                               expected: bool) -> None:
    wire = session(RoleGuard("drop_only", graph=GRAPH))
    assert refused(wire, f"SET ROLE {target}") is expected


def test_privileged_roles_can_be_emptied() -> None:
    wire = session(RoleGuard("drop_only", graph=GRAPH, privileged_roles=()))
    assert refused(wire, "SET ROLE files") is False


def test_privileged_roles_must_be_a_list() -> None:
    with pytest.raises(ValueError, match="list of role names"):
        RoleGuard("drop_only", graph=GRAPH, privileged_roles="pg_read_server_files")

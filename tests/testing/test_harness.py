"""SessionHarness and the stateful middleware checks (pgwire.testing.harness / .stateful).

The machine runs on pgwire's own middleware with few examples (the default
run's budget), and on middleware broken on purpose, which it must catch: a
checker that cannot fail would prove nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import invariant, run_state_machine_as_test

import pgwire as pw
from pgwire.audit import AuditRecord
from pgwire.middleware import Context, JobOutcome, Middleware, Replace, Verdict
from pgwire.middleware.audit import Audit
from pgwire.middleware.rewrite import RoleRewrite
from pgwire.middleware.roles import RoleGuard
from pgwire.proxy import CloseClient, Proxy, ProxyConfig, RunJob
from pgwire.roles import RoleGraph
from pgwire.testing.harness import (
    DEFAULT_UPSTREAM,
    HarnessError,
    MiddlewareMachine,
    SessionHarness,
    check_middleware,
)
from pgwire.testing.stateful import DEFAULT_STATEMENTS, MiddlewareCheckFailed

IDLE = pw.ReadyForQuery(status=pw.TransactionStatus.IDLE)
GRAPH = RoleGraph.from_rows(roles=[("alice", "LOGIN"), ("readers", "")],
                            memberships=[("readers", "alice")])
#: Finding a planted bug: no shrinking, fixed seed, so the test is quick and stable.
FIND = settings(max_examples=60, stateful_step_count=25, deadline=None, database=None,
                derandomize=True, phases=[Phase.generate], report_multiple_bugs=False,
                suppress_health_check=list(HealthCheck))


class ListSink:
    """An in-memory audit sink."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def write(self, records: Sequence[AuditRecord]) -> None:
        self.records.extend(records)

    def close(self) -> None:
        pass


class Nothing(Middleware[None]):
    """Reads Query and ReadyForQuery, changes nothing: the session leaves cut-through."""

    client_messages = frozenset({b"Q"})
    server_messages = frozenset({b"Z"})


class DropsReady(Middleware[None]):
    """Broken: swallows every ReadyForQuery after login."""

    server_messages = frozenset({b"Z"})

    def on_server_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        return Replace()


class SwallowsExecute(Middleware[None]):
    """Broken: drops every Execute; the batch still gets its ReadyForQuery."""

    client_messages = frozenset({b"E"})

    def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        return Replace()


class Crashes(Middleware[None]):
    """Broken: raises on a DELETE."""

    client_messages = frozenset({b"Q"})

    def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        assert isinstance(message, pw.Query)
        if message.query.startswith("DELETE"):
            raise KeyError("no such table")
        return None


# -- SessionHarness ------------------------------------------------------------------------


def test_the_harness_logs_in_and_relays_a_query() -> None:
    wire = SessionHarness(Nothing()).logged_in(user="bob", database="db",
                                               parameters=[("application_name", "x")])
    assert wire.upstream_startup is not None
    assert dict(wire.upstream_startup.parameters) == {
        "user": "bob", "database": "db", "application_name": "x"}
    assert wire.client.parameters["server_version"] == "15.0"
    events = wire.query("SELECT 1", pw.CommandComplete(tag="SELECT 0"), IDLE)
    assert events == [pw.CommandComplete(tag="SELECT 0"), IDLE]
    wire.client_sends(pw.Terminate())
    assert wire.server_events()[0] == pw.Terminate()
    assert isinstance(wire.actions[-1], CloseClient) and wire.client_closed
    wire.close()
    assert len(wire.proxy) == 0


def test_the_harness_carries_an_audited_session() -> None:
    sink = ListSink()
    wire = SessionHarness(Audit(sink, track_roles=False)).logged_in()
    wire.query("SELECT 1", pw.CommandComplete(tag="SELECT 0"), IDLE)
    wire.client_sends(pw.Terminate())
    wire.close()
    wire.run_jobs()
    assert not wire.jobs
    wire.proxy.close()  # flushes the audit queue
    assert {r.as_dict()["event"] for r in sink.records} >= {"connect", "query", "disconnect"}


def test_the_harness_reports_a_fatal_ending() -> None:
    wire = SessionHarness(max_clients=1)
    wire.logged_in()
    second = SessionHarness(proxy=wire.proxy)
    second.start()
    second.client_sends(pw.StartupMessage.from_dict({"user": "bob"}))
    assert second.fatal().code == "53300"
    events = SessionHarness(proxy=wire.proxy).login()  # a refused login returns its ending
    assert [type(e).__name__ for e in events] == ["ErrorResponse", "ConnectionClosed"]
    with pytest.raises(HarnessError, match="still open"):
        wire.fatal()


def test_the_harness_takes_one_way_of_configuring() -> None:
    config = ProxyConfig(upstream=DEFAULT_UPSTREAM)
    with pytest.raises(TypeError):
        SessionHarness(Nothing(), config=config)
    with pytest.raises(TypeError):
        SessionHarness(proxy=Proxy(config), idle_timeout=3)
    assert SessionHarness(config=config).proxy.config is config


def test_jobs_wait_until_run() -> None:
    outcomes: list[JobOutcome] = []

    class Submits(Middleware[None]):
        client_messages = frozenset({b"Q"})

        def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
            ctx.submit(lambda: 6 * 7, outcomes.append)
            return None

    wire = SessionHarness(Submits()).logged_in()
    wire.client_sends(pw.Query(query="select 1"))
    assert [type(job) for job in wire.jobs] == [RunJob]
    assert outcomes == []
    wire.run_jobs()
    assert [o.value for o in outcomes] == [42]
    assert wire.jobs == []


# -- the machine on pgwire's own middleware ---------------------------------------------------


def test_a_middleware_that_changes_nothing_passes() -> None:
    check_middleware(Nothing, max_examples=15)


def test_the_audit_middleware_passes_and_records() -> None:
    sinks: list[ListSink] = []

    def audit() -> Audit:
        sinks.append(ListSink())
        return Audit(sinks[-1])

    check_middleware(audit, max_examples=15)
    assert any(r.as_dict()["event"] == "query" for sink in sinks for r in sink.records)


class GuardMachine(MiddlewareMachine):
    """RoleGuard's deny policy, with a user invariant: no switch to readers gets through."""

    middleware = (lambda: RoleGuard("deny", graph=GRAPH),)

    @invariant()
    def no_role_change_reaches_the_server(self) -> None:
        assert "set role readers" not in {sql.strip().lower() for sql in self.server_queries()}


GuardMachine.TestCase.settings = settings(
    max_examples=15, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestRoleGuardDeny = GuardMachine.TestCase


def test_the_guard_machine_does_refuse_role_changes() -> None:
    """The invariant above is not vacuous: without the guard it fails."""

    class Unguarded(GuardMachine):
        middleware = (Nothing,)

    with pytest.raises(AssertionError):
        run_state_machine_as_test(Unguarded, settings=FIND)


# -- the machine catches broken middleware ---------------------------------------------------


@pytest.mark.parametrize(("middleware", "message"), [
    (DropsReady, "still waits for .* ReadyForQuery"),
    (SwallowsExecute, "owed a completion"),
    (Crashes, "internal error"),
])
def test_broken_middleware_is_caught(middleware: Any, message: str) -> None:
    with pytest.raises(MiddlewareCheckFailed, match=message):
        check_middleware(middleware, hypothesis_settings=FIND)


def test_a_session_ended_on_purpose_is_allowed_when_declared() -> None:
    class RefusesSync(Middleware[None]):
        client_messages = frozenset({b"S"})

        def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
            from pgwire.middleware import Reject  # noqa: PLC0415

            return Reject("57000", "no syncs today")  # no answer of its own: FATAL

    with pytest.raises(MiddlewareCheckFailed, match="FATAL 57000"):
        check_middleware(RefusesSync, hypothesis_settings=FIND)
    check_middleware(RefusesSync, allowed_fatal={"57000"}, max_examples=10)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["deny", "allowlist", "drop_only"])
def test_the_whole_role_chain_keeps_the_protocol_long_run(policy: str) -> None:
    graph = RoleGraph.from_rows(
        roles=[("alice", "LOGIN"), ("readers", ""), ("admins", "SUPERUSER")],
        memberships=[("readers", "alice"), ("admins", "alice")])
    options: dict[str, Any] = {"deny": {}, "allowlist": {"allow": {"alice": ["readers"]}},
                               "drop_only": {"graph": graph}}[policy]
    check_middleware(
        [lambda: Audit(ListSink()), RoleRewrite, lambda: RoleGuard(policy, **options)],
        max_examples=60, steps=40,
        statements=(*DEFAULT_STATEMENTS, "SET ROLE admins", "RESET ROLE",
                    "SELECT set_config('role', 'admins', false)", "SET SESSION AUTHORIZATION x"))

"""The proxy Session under random interleavings of client and server bytes.

`pgwire.testing.stateful.InterleavingMachine` drives one session at a time
through a `SessionHarness`: what each peer sends waits on a wire and reaches
the session in chunks of any size, in any order relative to the other side;
the server errors in the middle of pipelines and COPY (both ways), sends
notices, notifications and parameter reports anywhere, ends the connection
with or without a FATAL error; the client pipelines, aborts COPY with
CopyFail or Terminate, hangs up, and cancels from another connection.

It runs on every data path the session has: cut-through (no middleware),
``check_protocol`` (both state machines), selective (a middleware that reads
the role guard's message types and changes nothing) and the whole role chain
(Audit, RoleRewrite, RoleGuard) with the audit records checked. The pooled
path is not here: `SessionHarness` plays one server connection per client
(tests/pool/test_pool_engine.py drives the pool by hand).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import invariant, run_state_machine_as_test

from pgwire.middleware import Middleware
from pgwire.middleware.audit import Audit
from pgwire.middleware.rewrite import RoleRewrite
from pgwire.middleware.roles import RoleGuard
from pgwire.protocol import Execute, FunctionCall, Query
from pgwire.roles import RoleGraph
from pgwire.testing.stateful import DEFAULT_STATEMENTS, InterleavingMachine, check_middleware
from tests.audit.helpers import ListSink

GRAPH = RoleGraph.from_rows(roles=[("alice", "LOGIN"), ("readers", ""), ("admins", "SUPERUSER")],
                            memberships=[("readers", "alice"), ("admins", "alice")])


def fast(examples: int, steps: int = 40) -> settings:
    """The default run's budget, with a fixed seed: the same conversations
    every run (the long runs below draw new ones). No shrinking: shrinking a
    long conversation can outlast the test timeout, and a failure then reads
    as flaky; the long runs shrink."""
    return settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


class ReadsWhatTheGuardReads(Middleware[None]):
    """Reads every type the role guard reads and lets each through: the selective path."""

    client_messages = frozenset({b"Q", b"P", b"B", b"E", b"C", b"S", b"F"})
    server_messages = frozenset({b"C", b"E", b"Z", b"I", b"s"})


class CutThrough(InterleavingMachine):
    """No middleware: frames are delimited and counted, never decoded."""

    exact = True


class Checked(InterleavingMachine):
    """check_protocol: every frame through both state machines."""

    exact = True
    proxy_settings: ClassVar[Mapping[str, Any]] = {"check_protocol": True}


class Selective(InterleavingMachine):
    """A middleware reads some types: those frames are decoded, the rest go on as bytes."""

    exact = True
    middleware = (ReadsWhatTheGuardReads,)


class RoleChain(InterleavingMachine):
    """Audit, RoleRewrite and RoleGuard, the audit going to a list."""

    statements = (*DEFAULT_STATEMENTS, "SET ROLE admins",
                  "SELECT set_config('role', 'admins', false)")

    def make_middleware(self) -> list[Middleware[Any]]:
        self.sink = ListSink()
        self.audit = Audit(self.sink)
        return [self.audit, RoleRewrite(), RoleGuard("deny", graph=GRAPH)]

    @invariant()
    def one_audit_record_per_statement(self) -> None:
        """At rest: every statement the client sent (Query, Execute,
        FunctionCall) has one request record and one outcome record, and no
        statement ran on the server without one."""
        if not self.quiet:
            return
        assert self.audit.queue.flush(timeout=10), "the audit queue did not drain"
        session_id = self.harness.session.session_id
        events = Counter(r.event for r in self.sink.records if r.session_id == session_id)
        sent = sum(isinstance(m, Query | Execute | FunctionCall) for m in self.client_delivered)
        requests = events["query"] + events["execute"] + events["function_call"]
        assert requests == sent, (events, sent)
        assert events["complete"] == requests, (events, sent)
        executed = self.server_executed
        assert len(executed) <= requests, (events, executed)


TestCutThrough = CutThrough.TestCase
TestCutThrough.settings = fast(25)
TestChecked = Checked.TestCase
TestChecked.settings = fast(20)
TestSelective = Selective.TestCase
TestSelective.settings = fast(20)
TestRoleChain = RoleChain.TestCase
TestRoleChain.settings = fast(20)


def test_check_middleware_runs_the_interleaving_machine() -> None:
    check_middleware(ReadsWhatTheGuardReads, interleaved=True, max_examples=10)


# -- long runs -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("machine", [CutThrough, Checked, Selective, RoleChain],
                         ids=["cut-through", "checked", "selective", "role-chain"])
def test_interleavings_long_run(machine: type[InterleavingMachine]) -> None:
    run_state_machine_as_test(machine, settings=settings(
        max_examples=150, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))

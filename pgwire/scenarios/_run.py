"""Running scenarios through a real proxy with a real client, and judging them."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from ..proxy import Proxy
from ..roles import RoleGraphSource
from ..testing.proxy import ADAPTERS, AdapterName, RunningProxy, running_proxy
from ._clients import CLIENTS, ClientName, LoginFailed, Outcome, client_problem, run_client
from ._clients import unobservable as _unobservable
from ._database import Database
from ._load import ScenarioError
from ._model import ClientStep, Scenario, ScenarioFile, StatementCheck

__all__ = ["ClientUnavailable", "Failure", "Result", "check_client", "run_scenarios",
           "select_scenarios"]

#: What the runner asks to learn who a session is, and which backend serves it.
WHO_QUERY: Final = "SELECT session_user, current_user"
PID_QUERY: Final = "SELECT pg_catalog.pg_backend_pid()"
#: How long the runner waits for the pool to take a connection back.
POOL_SETTLE_SECONDS: Final = 10.0
_POLL_SECONDS: Final = 0.005
_SHOW_LIMIT: Final = 200


class ClientUnavailable(RuntimeError):
    """The chosen client cannot run on this machine; the message says what to install."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """The first expectation a scenario did not meet: its dotted key in the
    file, what the file expected, and what happened."""

    key: str
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.key}: expected {self.expected}, got {self.actual}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """One scenario run once, with one adapter and one client."""

    scenario: str
    #: The scenario's table in the file, e.g. ``scenario[2]``.
    key: str
    adapter: str
    client: str
    #: Wall-clock time of the run, for the progress line.
    seconds: float
    #: None when every expectation held.
    failure: Failure | None = None

    @property
    def passed(self) -> bool:
        """Whether every expectation of the scenario held."""
        return self.failure is None


def select_scenarios(spec: ScenarioFile, pattern: str | None) -> tuple[Scenario, ...]:
    """The scenarios whose name contains ``pattern`` (ignoring case); all for None."""
    if not pattern:
        return spec.scenarios
    wanted = pattern.casefold()
    return tuple(s for s in spec.scenarios if wanted in s.name.casefold())


def check_client(spec: ScenarioFile, client: str, pattern: str | None = None) -> None:
    """Fail early when ``client`` cannot run the (selected) scenarios of ``spec``.

    Raises:
        ValueError: ``client`` is not one of ``pgwire``, ``psycopg``, ``psql``.
        ClientUnavailable: the client is not installed.
        ScenarioError: a scenario expects something this client cannot observe
            (the SQLSTATE of a refused login through libpq, say).
    """
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {', '.join(CLIENTS)}, not {client!r}")
    problem = client_problem(client)
    if problem is not None:
        raise ClientUnavailable(problem)
    for scenario in select_scenarios(spec, pattern):
        for position, step in enumerate(scenario.clients):
            for key, why in _unobservable(client, step):
                raise ScenarioError(spec.source, f"{_step_key(scenario, position)}.{key}", why)


def run_scenarios(spec: ScenarioFile, db: Database, *, adapter: AdapterName = "asyncio",
                  client: ClientName = "pgwire",
                  progress: Callable[[Result], object] | None = None,
                  pattern: str | None = None) -> list[Result]:
    """Run the scenarios of ``spec`` through a proxy in front of ``db``.

    Starts the ``[proxy]`` of the file with ``adapter`` on a free loopback
    port, waits for any role graph its middleware loads, then runs each
    scenario (those whose name contains ``pattern``) with ``client``, in file
    order, and calls ``progress`` with each :class:`Result` as it is known.
    A failed expectation is a result, not an exception.

    Raises:
        ScenarioError: a mistake under ``[proxy]``, a role graph that cannot
            load, or an expectation ``client`` cannot observe.
        ClientUnavailable: the client is not installed.
    """
    if adapter not in ADAPTERS:
        raise ValueError(f"adapter must be one of {', '.join(ADAPTERS)}, not {adapter!r}")
    check_client(spec, client, pattern)
    scenarios = select_scenarios(spec, pattern)
    proxy_file = spec.proxy_file(db)
    _load_role_graphs(spec, proxy_file.config.middleware)
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        try:
            running = stack.enter_context(running_proxy(proxy_file.config, adapter=adapter))
        except (OSError, RuntimeError, ValueError, ImportError) as exc:
            raise ScenarioError(spec.source, "proxy", f"the proxy did not start with the "
                                                      f"{adapter} adapter: {exc}") from None
        for scenario in scenarios:
            started = time.monotonic()
            try:
                failure = _Run(running, client, spec.pooled).scenario(scenario)
            except Exception as exc:
                failure = Failure(key=scenario.key, expected="the scenario to run",
                                  actual=f"{type(exc).__name__}: {exc}")
            result = Result(scenario=scenario.name, key=scenario.key, adapter=adapter,
                            client=client, seconds=time.monotonic() - started,
                            failure=failure)
            results.append(result)
            if progress is not None:
                progress(result)
    return results


def _load_role_graphs(spec: ScenarioFile, middleware: Sequence[object]) -> None:
    """Load each middleware's role graph now: a guard without one refuses
    (fails closed), which would fail the first scenarios for no reason of theirs."""
    for index, item in enumerate(middleware):
        source = getattr(item, "graph", None)
        if isinstance(source, RoleGraphSource):
            try:
                source.load()
            except Exception as exc:
                raise ScenarioError(spec.source, f"proxy.middleware[{index}].graph",
                                    f"cannot load the role graph: {exc}") from None


def _step_key(scenario: Scenario, position: int) -> str:
    return scenario.key + ".next" * position


def _show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _SHOW_LIMIT else text[:_SHOW_LIMIT] + "..."


def _error(outcome: Outcome) -> str:
    if outcome.lost:
        return f"the connection was lost ({outcome.message})"
    return f"{outcome.sqlstate}: {outcome.message}" if outcome.message else str(
        outcome.sqlstate)


class _Run:
    """One scenario: its clients one after another, each judged in turn."""

    def __init__(self, running: RunningProxy, client: ClientName, pooled: bool) -> None:
        self.running = running
        self.client = client
        self.pooled = pooled

    def scenario(self, scenario: Scenario) -> Failure | None:
        previous_pid: str | None = None
        for position, step in enumerate(scenario.clients):
            key = _step_key(scenario, position)
            following = scenario.clients[position + 1] if position + 1 < len(
                scenario.clients) else None
            busy = ""
            if position and self.pooled:
                busy = _wait_for_pool(self.running.proxy)
            failure, previous_pid = self._step(key, step, following, previous_pid, busy)
            if failure is not None:
                return failure
        return None

    def _step(self, key: str, step: ClientStep, following: ClientStep | None,
              previous_pid: str | None, busy: str) -> tuple[Failure | None, str | None]:
        plan: list[tuple[str, int]] = []
        queries: list[str] = []

        def ask(sql: str, purpose: str, index: int = -1) -> None:
            queries.append(sql)
            plan.append((purpose, index))

        if step.login == "ok":
            if step.same_connection is not None:
                ask(PID_QUERY, "pid")
            if step.session_user is not None or step.current_user is not None:
                ask(WHO_QUERY, "who")
            for index, statement in enumerate(step.statements):
                ask(statement.sql, "statement", index)
                if statement.session_user is not None or statement.current_user is not None:
                    ask(WHO_QUERY, "who", index)
            if following is not None and following.same_connection is not None:
                ask(PID_QUERY, "pid_end")
        refused, outcomes = run_client(self.client, self.running.address, step, queries)
        failure = self._login(key, step, refused)
        if failure is not None or refused is not None:
            return failure, None
        pid_end: str | None = None
        for (purpose, index), outcome in zip(plan, outcomes, strict=True):
            if purpose == "pid":
                failure = self._same_connection(key, step, outcome, previous_pid, busy)
            elif purpose == "who":
                where = key if index < 0 else f"{key}.statements[{index}]"
                who: ClientStep | StatementCheck = step if index < 0 else step.statements[index]
                failure = self._who(where, "expect." if index < 0 else "", who, outcome)
            elif purpose == "statement":
                failure = self._statement(f"{key}.statements[{index}]",
                                          step.statements[index], outcome)
            elif purpose == "pid_end":
                if outcome.failed:
                    failure = Failure(key=f"{key}.next.expect.same_connection",
                                      expected=f"{PID_QUERY} to answer on the client before",
                                      actual=_error(outcome))
                else:
                    pid_end = _first_value(outcome)
            if failure is not None:
                return failure, None
        return None, pid_end

    @staticmethod
    def _login(key: str, step: ClientStep, refused: LoginFailed | None) -> Failure | None:
        if step.login == "ok" and refused is not None:
            state = f"{refused.sqlstate}: " if refused.sqlstate else ""
            return Failure(key=f"{key}.expect.login", expected="login ok",
                           actual=f"login refused ({state}{refused.message})")
        if step.login == "refused" and refused is None:
            return Failure(key=f"{key}.expect.login", expected="login refused",
                           actual="login ok")
        if refused is not None and step.sqlstate is not None and (
                refused.sqlstate != step.sqlstate):
            return Failure(key=f"{key}.expect.sqlstate", expected=step.sqlstate,
                           actual=f"{refused.sqlstate or 'no SQLSTATE'}: {refused.message}")
        return None

    @staticmethod
    def _who(key: str, prefix: str, expected: ClientStep | StatementCheck,
             outcome: Outcome) -> Failure | None:
        name = "session_user" if expected.session_user is not None else "current_user"
        if outcome.failed:
            return Failure(key=f"{key}.{prefix}{name}",
                           expected=f'the check query "{WHO_QUERY}" to answer (the proxy '
                                    "must allow it)",
                           actual=_error(outcome))
        row = outcome.rows[0] if outcome.rows else (None, None)
        for column, name in enumerate(("session_user", "current_user")):
            want = getattr(expected, name)
            if want is not None and row[column] != want:
                return Failure(key=f"{key}.{prefix}{name}", expected=f"{name} {_show(want)}",
                               actual=f"{name} {_show(row[column])}")
        return None

    @staticmethod
    def _statement(key: str, statement: StatementCheck, outcome: Outcome) -> Failure | None:
        if outcome.lost:
            return Failure(key=f"{key}.expect", expected=statement.expect,
                           actual=_error(outcome))
        if statement.expect == "allowed":
            if outcome.sqlstate is not None:
                return Failure(key=f"{key}.expect", expected="allowed",
                               actual=f"blocked ({_error(outcome)})")
            if statement.rows is not None:
                actual = [list(row) for row in outcome.rows]
                if actual != [list(row) for row in statement.rows]:
                    return Failure(key=f"{key}.rows",
                                   expected=_show([list(r) for r in statement.rows]),
                                   actual=_show(actual))
            return None
        if outcome.sqlstate is None:
            return Failure(key=f"{key}.expect", expected="blocked",
                           actual=f"allowed ({len(outcome.rows)} rows)")
        if statement.sqlstate is not None and outcome.sqlstate != statement.sqlstate:
            return Failure(key=f"{key}.sqlstate", expected=statement.sqlstate,
                           actual=_error(outcome))
        return None

    def _same_connection(self, key: str, step: ClientStep, outcome: Outcome,
                         previous_pid: str | None, busy: str) -> Failure | None:
        where = f"{key}.expect.same_connection"
        if outcome.failed:
            return Failure(key=where, expected=f"{PID_QUERY} to answer",
                           actual=_error(outcome))
        pid = _first_value(outcome)
        if step.same_connection and pid != previous_pid:
            note = busy or ("the pool had another connection idle for it: set "
                            "[proxy.pool] max_size = 1 to make reuse certain, and give "
                            "both clients the same user, database and parameters (the "
                            "pool key)")
            return Failure(key=where,
                           expected=f"the backend of the client before (pid {previous_pid})",
                           actual=f"backend pid {pid}; {note}")
        if step.same_connection is False and pid == previous_pid:
            return Failure(key=where, expected=f"another backend than pid {previous_pid}",
                           actual=f"the same backend (pid {pid})")
        return None


def _first_value(outcome: Outcome) -> str | None:
    return outcome.rows[0][0] if outcome.rows and outcome.rows[0] else None


def _wait_for_pool(proxy: Proxy) -> str:
    """Wait until the client before has left and the pool has its connection
    back (reset and idle). Returns "" then, or what was still busy."""
    deadline = time.monotonic() + POOL_SETTLE_SECONDS
    while True:
        state = _pool_state(proxy)
        if state is not None and not state:
            return ""
        if time.monotonic() >= deadline:
            return (f"the pool was still busy {POOL_SETTLE_SECONDS:g} s after the client "
                    f"before left ({state or 'state unreadable'})")
        time.sleep(_POLL_SECONDS)


def _pool_state(proxy: Proxy) -> str | None:
    """What keeps the pool from being settled ("" when nothing does), read
    from another thread: None when a concurrent change got in the way."""
    pool = proxy.pool
    try:
        sessions = len(proxy)
        servers = pool.servers() if pool is not None else []
        busy = [s.state for s in servers if s.state != "idle"]
    except RuntimeError:  # a dict changed while we read it; look again
        return None
    parts = []
    if sessions:
        parts.append(f"{sessions} session(s) open")
    if busy:
        parts.append(f"server connections {', '.join(busy)}")
    return "; ".join(parts)

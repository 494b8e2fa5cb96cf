"""Stateful property tests of a middleware: `MiddlewareMachine` and `check_middleware`.

A `MiddlewareMachine` is a hypothesis `RuleBasedStateMachine` that puts your
middleware in a real proxy session (`pgwire.testing.harness.SessionHarness`)
and drives conversations through it: a client sends simple queries, extended
batches, pipelines of both, COPY and Terminate; a small fake PostgreSQL
answers with rows, command tags, errors (in the middle of pipelines too),
COPY data and, at any moment, NoticeResponse, NotificationResponse and
ParameterStatus. After every step it checks the built-in invariants:

- the session raised nothing and counted no internal error (an exception in a
  hook ends the session with XX000: that is a failure here);
- the client's `pgwire.Frontend` and the server's `pgwire.Backend` accept
  everything they receive (the protocol order is kept on both sides);
- the session never ends on its own with a FATAL error, unless its SQLSTATE
  is in `MiddlewareMachine.allowed_fatal`;
- every request the client sent is answered or refused: once the server has
  answered everything, the client got one ReadyForQuery per Query and Sync,
  and each extended batch without an error got one ParseComplete per Parse,
  BindComplete per Bind, completion (CommandComplete, EmptyQueryResponse,
  PortalSuspended) per Execute, description per Describe and CloseComplete
  per Close;
- client and server agree on the transaction status whenever nothing is in
  flight.

Subclass it, name your middleware, and add rules and invariants of your own::

    class CheckNoDrop(MiddlewareMachine):
        middleware = (NoDrop,)             # classes, factories or instances

        @invariant()
        def no_drop_reaches_the_server(self) -> None:
            assert not any("drop" in sql.lower() for sql in self.server_queries())

    TestNoDrop = CheckNoDrop.TestCase      # collected by pytest

or call `check_middleware(NoDrop)` from a plain test. This module needs
hypothesis (the ``dev`` extra).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ..middleware.base import Middleware
from ..protocol import (
    Bind,
    BindComplete,
    Close,
    CloseComplete,
    CommandComplete,
    ConnectionClosed,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    FunctionCall,
    FunctionCallResponse,
    Message,
    NoData,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    Phase,
    PortalSuspended,
    ProtocolError,
    Query,
    ReadyForQuery,
    RowDescription,
    Sync,
    Terminate,
    TransactionStatus,
)
from ..proxy import Proxy, ProxyConfig
from ..roles._tracker import LOGIN_SQL, VERIFY_SQL
from . import strategies as pst
from .harness import DEFAULT_UPSTREAM, SessionHarness

__all__ = [
    "DEFAULT_STATEMENTS",
    "MiddlewareCheckFailed",
    "MiddlewareMachine",
    "check_middleware",
]

#: What the client says by default: reads, writes, transaction control, role
#: changes, settings, COPY both ways, an empty query and two statements in one.
DEFAULT_STATEMENTS: tuple[str, ...] = (
    "SELECT 1",
    "SELECT * FROM t",
    "INSERT INTO t VALUES (1)",
    "UPDATE t SET x = 2",
    "DELETE FROM t",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SET application_name = 'machine'",
    "SHOW search_path",
    "SET ROLE readers",
    "RESET ROLE",
    "COPY t FROM STDIN",
    "COPY t TO STDOUT",
    "",
    "SELECT 1; SELECT 2",
)
_REJECT_VEHICLE = re.compile(r"SELECT pg_catalog\.(pgwire_reject_[0-9a-f]+_\d+)\(\)")
_ROW_COMMANDS = frozenset({"SELECT", "SHOW", "VALUES", "TABLE", "WITH"})
_ENDS_BLOCK = frozenset({"COMMIT", "END", "ROLLBACK", "ABORT"})
_ASYNC_PARAMETERS = ("application_name", "TimeZone", "DateStyle", "IntervalStyle")
_MAX_SETTLE_ROUNDS = 200
_IDLE = TransactionStatus.IDLE
_IN_BLOCK = TransactionStatus.IN_TRANSACTION
_FAILED = TransactionStatus.FAILED


class MiddlewareCheckFailed(AssertionError):
    """A built-in invariant of `MiddlewareMachine` does not hold; the message says which."""


def _first_word(sql: str) -> str:
    words = sql.strip().split(None, 1)
    return words[0].rstrip(";").upper() if words else ""


def _is_copy_from_stdin(sql: str) -> bool:
    text = " ".join(sql.upper().split())
    return text.startswith("COPY ") and "FROM STDIN" in text


def _is_copy_to_stdout(sql: str) -> bool:
    text = " ".join(sql.upper().split())
    return text.startswith("COPY ") and "TO STDOUT" in text


def _error(code: str, message: str) -> ErrorResponse:
    return ErrorResponse(severity="ERROR", severity_nonlocalized="ERROR", code=code,
                         message=message)


@dataclass
class _Request:
    """One request of the client awaiting its ReadyForQuery, and what came back."""

    kind: str  # "query" or "batch"
    sql: str = ""
    parses: int = 0
    binds: int = 0
    describes: int = 0
    executes: int = 0
    closes: int = 0
    parse_completes: int = 0
    bind_completes: int = 0
    descriptions: int = 0
    completions: int = 0
    close_completes: int = 0
    errors: int = 0

    def check(self) -> str | None:
        """Why the answer is incomplete, or None."""
        if self.kind == "query":
            if self.completions + self.errors == 0:
                return f"the Query {self.sql!r} got ReadyForQuery without any result or error"
            return None
        expected = (("ParseComplete", self.parses, self.parse_completes),
                    ("BindComplete", self.binds, self.bind_completes),
                    ("description (RowDescription/NoData)", self.describes, self.descriptions),
                    ("completion (CommandComplete/EmptyQueryResponse/PortalSuspended)",
                     self.executes, self.completions),
                    ("CloseComplete", self.closes, self.close_completes))
        for name, sent, got in expected:
            if got > sent or (got < sent and not self.errors):
                return (f"an extended batch with {sent} message(s) owed a {name} got {got} "
                        f"(errors: {self.errors})")
        return None


class _FakeServer:
    """Just enough PostgreSQL to answer what a proxy sends: a transaction status,
    prepared statements and portals, COPY, and the proxy's own questions."""

    def __init__(self, machine: MiddlewareMachine) -> None:
        self.machine = machine
        self.inbox: deque[Message] = deque()
        self.status = _IDLE
        self.statements: dict[str, str] = {}
        self.portals: dict[str, str] = {}
        self.skipping = False
        self.copy_in = False
        self.terminated = False

    @property
    def owes(self) -> bool:
        """Messages received and not processed yet."""
        return bool(self.inbox)

    # -- answering -----------------------------------------------------------------

    def answer_next(self, data: st.DataObject) -> list[Message]:
        """Process the inbox up to the next point where the server would send."""
        out: list[Message] = []
        while self.inbox:
            message = self.inbox.popleft()
            done = self._process(message, data, out)
            if done:
                break
        return out

    def _process(self, message: Message, data: st.DataObject, out: list[Message]) -> bool:
        """Append the answer to ``message``; True at a point where output is flushed."""
        if isinstance(message, Terminate):
            self.terminated = True
            return True
        if isinstance(message, Query):
            self.skipping = False
            results = self.run(message.query, data, extended=False)
            out += results
            if self.copy_in:
                return True
            out.append(ReadyForQuery(status=self.status))
            return True
        if isinstance(message, CopyData):
            return False
        if isinstance(message, CopyDone | CopyFail):
            if not self.copy_in:
                return False
            self.copy_in = False
            if isinstance(message, CopyFail):
                out.append(self.fail(_error("57014", f"COPY from stdin failed: "
                                                     f"{message.message}")))
            else:
                out.append(CommandComplete(tag="COPY 1"))
            out.append(ReadyForQuery(status=self.status))
            return True
        if isinstance(message, FunctionCall):
            if self.status is _FAILED:
                out.append(self.fail(_error("25P02", "current transaction is aborted")))
            else:
                out.append(FunctionCallResponse(result=None))
            out.append(ReadyForQuery(status=self.status))
            return True
        if isinstance(message, Sync):
            self.skipping = False
            self.portals.pop("", None)
            out.append(ReadyForQuery(status=self.status))
            return True
        if isinstance(message, Flush):
            return True
        if self.skipping:
            return False
        self._extended(message, data, out)
        return False

    def _extended(self, message: Message, data: st.DataObject, out: list[Message]) -> None:
        if isinstance(message, Parse):
            if self.status is _FAILED and _first_word(message.query) not in _ENDS_BLOCK:
                out.append(self.fail_batch(_error("25P02", "current transaction is aborted")))
            elif _REJECT_VEHICLE.fullmatch(message.query):
                out.append(self.fail_batch(self.vehicle_error(message.query)))
            else:
                self.statements[message.statement] = message.query
                out.append(ParseComplete())
        elif isinstance(message, Bind):
            sql = self.statements.get(message.statement)
            if sql is None:
                out.append(self.fail_batch(_error(
                    "26000", f'prepared statement "{message.statement}" does not exist')))
            else:
                self.portals[message.portal] = sql
                out.append(BindComplete())
        elif isinstance(message, Describe):
            names = self.statements if message.kind == "S" else self.portals
            sql = names.get(message.name)
            if sql is None:
                what = "prepared statement" if message.kind == "S" else "portal"
                code = "26000" if message.kind == "S" else "34000"
                out.append(self.fail_batch(_error(code, f'{what} "{message.name}" does not '
                                                        f"exist")))
                return
            if message.kind == "S":
                out.append(ParameterDescription(parameter_types=()))
            out.append(_row_description(1) if _returns_rows(sql) else NoData())
        elif isinstance(message, Execute):
            sql = self.portals.get(message.portal)
            if sql is None:
                out.append(self.fail_batch(_error("34000", f'portal "{message.portal}" does '
                                                           f"not exist")))
                return
            results = self.run(sql, data, extended=True)
            out += results
            if any(isinstance(m, ErrorResponse) for m in results):
                self.skipping = True
        elif isinstance(message, Close):
            (self.statements if message.kind == "S" else self.portals).pop(message.name, None)
            out.append(CloseComplete())

    def fail(self, error: ErrorResponse) -> ErrorResponse:
        """An error: a transaction block fails with it."""
        if self.status is _IN_BLOCK:
            self.status = _FAILED
        return error

    def fail_batch(self, error: ErrorResponse) -> ErrorResponse:
        self.skipping = True
        return self.fail(error)

    @staticmethod
    def vehicle_error(sql: str) -> ErrorResponse:
        match = _REJECT_VEHICLE.fullmatch(sql)
        assert match is not None
        return _error("42883", f"function pg_catalog.{match.group(1)}() does not exist")

    def run(self, sql: str, data: st.DataObject, *, extended: bool) -> list[Message]:
        """The results of one statement (text), without ReadyForQuery."""
        word = _first_word(sql)
        if self.status is _FAILED and word not in _ENDS_BLOCK:
            return [self.fail(_error("25P02", "current transaction is aborted, commands "
                                              "ignored until end of transaction block"))]
        if _REJECT_VEHICLE.fullmatch(sql):
            return [self.fail(self.vehicle_error(sql))]
        own = self.machine.answer_query(sql)
        if own is not None:
            for message in own:
                if isinstance(message, ErrorResponse):
                    self.fail(message)
            return list(own)
        user = self.machine.user
        if sql == LOGIN_SQL:
            return _rows(3, [(user, user, "none")], extended)
        if sql == VERIFY_SQL:
            return _rows(2, [(user, user)], extended)
        if not sql.strip():
            return [EmptyQueryResponse()]
        if word in ("BEGIN", "START"):
            if self.status is _IDLE:
                self.status = _IN_BLOCK
            return [CommandComplete(tag="BEGIN")]
        if word in _ENDS_BLOCK:
            tag = "ROLLBACK" if word in ("ROLLBACK", "ABORT") or self.status is _FAILED else (
                "COMMIT")
            self.status = _IDLE
            return [CommandComplete(tag=tag)]
        if data.draw(st.integers(0, 9), label="server fails the statement") == 0:
            return [self.fail(data.draw(pst.error_responses(fatal=False), label="error"))]
        if _is_copy_from_stdin(sql) and not extended:
            self.copy_in = True
            return [CopyInResponse(format=0, column_formats=(0,))]
        if _is_copy_to_stdout(sql):
            count = data.draw(st.integers(0, 2), label="copy rows")
            return [CopyOutResponse(format=0, column_formats=(0,)),
                    *(CopyData(data=b"%d\n" % i) for i in range(count)),
                    CopyDone(), CommandComplete(tag=f"COPY {count}")]
        if word in _ROW_COMMANDS:
            count = data.draw(st.integers(0, 3), label="rows")
            return _rows(1, [(str(i),) for i in range(count)], extended)
        tag = {"INSERT": "INSERT 0 1", "UPDATE": "UPDATE 1", "DELETE": "DELETE 1"}.get(
            word, word or "SELECT 0")
        return [CommandComplete(tag=tag)]


def _returns_rows(sql: str) -> bool:
    return _first_word(sql) in _ROW_COMMANDS


def _row_description(columns: int) -> RowDescription:
    return RowDescription(fields=tuple(FieldDescription(name=f"c{i}") for i in range(columns)))


def _rows(columns: int, rows: Sequence[tuple[str, ...]], extended: bool) -> list[Message]:
    out: list[Message] = [] if extended else [_row_description(columns)]
    out += [DataRow(values=tuple(value.encode() for value in row)) for row in rows]
    out.append(CommandComplete(tag=f"SELECT {len(rows)}"))
    return out


def _as_middleware(item: Any) -> Any:
    return item if isinstance(item, Middleware) else item()


class MiddlewareMachine(RuleBasedStateMachine):
    """Drive middleware through generated conversations (see the module docstring).

    Class attributes to set in a subclass:

    - ``middleware``: the chain, as in `ProxyConfig.middleware`. Classes and
      factories are called once per example, so each example gets fresh
      instances, shared by the sessions of that example (the client
      reconnects after a Terminate) and closed at the end. Or override
      `make_middleware`.
    - ``proxy_settings``: other `ProxyConfig` fields (``check_protocol=True``...).
    - ``statements``: the SQL the client picks from (default
      `DEFAULT_STATEMENTS`); arbitrary text from
      `pgwire.testing.strategies.queries` is mixed in.
    - ``allowed_fatal``: SQLSTATEs with which the session may end
      (your middleware ends sessions on purpose); the client then reconnects.
    - ``user`` / ``database``: the client's login.

    Attributes to read in your own invariants: ``harness`` (the current
    `SessionHarness`), ``proxy``, ``server_received`` (every message the
    server got, all sessions), ``client_received`` (every event of the
    client), ``sessions`` (how many have started). Rules of your own send
    with `send_query`, `send_batch` or `send`, guarded by ``can_send``.
    """

    middleware: ClassVar[Sequence[Any]] = ()
    proxy_settings: ClassVar[Mapping[str, Any]] = {}
    statements: ClassVar[Sequence[str]] = DEFAULT_STATEMENTS
    allowed_fatal: ClassVar[frozenset[str]] = frozenset()
    user: ClassVar[str] = "alice"
    database: ClassVar[str] = "app"

    def __init__(self) -> None:
        super().__init__()
        self.instances = list(self.make_middleware())
        config = ProxyConfig(**{"upstream": DEFAULT_UPSTREAM, **self.proxy_settings,
                                "middleware": self.instances})
        self.proxy = Proxy(config)
        self.server_received: list[Message] = []
        self.client_received: list[object] = []
        self.sessions = 0
        self.harness = self._connect()

    # -- overridable -------------------------------------------------------------------

    def make_middleware(self) -> Iterable[Middleware[Any]]:
        """The chain for one example; default: `middleware`, factories called."""
        return [_as_middleware(item) for item in self.middleware]

    def answer_query(self, sql: str) -> Sequence[Message] | None:
        """Answer a statement your middleware sends the server itself (``ctx.query``,
        ``Inject``): its results without ReadyForQuery, or None for the default
        answer. Called for every statement the fake server runs."""
        return None

    # -- helpers for rules -------------------------------------------------------------

    @property
    def can_send(self) -> bool:
        """The client may start a request now (not while a COPY FROM is pending)."""
        return not self.harness.session.is_closed and not self._copy_pending and (
            self.harness.client.phase is Phase.READY)

    def server_queries(self) -> list[str]:
        """The SQL of every Query and Parse the server received so far."""
        return [m.query for m in self.server_received if isinstance(m, Query | Parse)]

    def send_query(self, sql: str) -> None:
        """The client sends a simple Query."""
        self._requests.append(_Request("query", sql=sql))
        self._copy_pending = _is_copy_from_stdin(sql)
        self.send(Query(query=sql))

    def send_batch(self, *statements: str, describe: bool = False, close: bool = False,
                   name: str = "") -> None:
        """The client sends Parse/Bind/(Describe)/Execute/(Close) per statement, then Sync."""
        request = _Request("batch", sql="; ".join(statements))
        messages: list[Message] = []
        for sql in statements:
            messages += [Parse(statement=name, query=sql, parameter_types=()),
                         Bind(portal="", statement=name, parameter_formats=(), parameters=(),
                              result_formats=())]
            request.parses += 1
            request.binds += 1
            if describe:
                messages.append(Describe(kind="P", name=""))
                request.describes += 1
            messages.append(Execute(portal="", max_rows=0))
            request.executes += 1
            if close and name:
                messages.append(Close(kind="S", name=name))
                request.closes += 1
        messages.append(Sync())
        self._requests.append(request)
        self.send(*messages)

    def send(self, *messages: Message) -> None:
        """The client sends raw messages (no request bookkeeping: use `send_query`
        and `send_batch` for requests), then everything is delivered."""
        self._check(lambda: self.harness.client_sends(*messages), "the session")
        self._pump()

    # -- rules -------------------------------------------------------------------------

    def _sql(self) -> st.SearchStrategy[str]:
        return st.one_of(st.sampled_from(list(self.statements)),
                         pst.queries().map(lambda q: q.query))

    @precondition(lambda self: self.can_send)
    @rule(data=st.data())
    def client_sends_a_query(self, data: st.DataObject) -> None:
        self.send_query(data.draw(self._sql(), label="query"))

    @precondition(lambda self: self.can_send)
    @rule(data=st.data())
    def client_sends_an_extended_batch(self, data: st.DataObject) -> None:
        sql = self._sql().filter(lambda s: not _is_copy_from_stdin(s))
        statements = data.draw(st.lists(sql, min_size=1, max_size=2), label="statements")
        self.send_batch(*statements, describe=data.draw(st.booleans(), label="describe"),
                        close=data.draw(st.booleans(), label="close"),
                        name=data.draw(st.sampled_from(("", "s1")), label="statement name"))

    @precondition(lambda self: self.can_send)
    @rule(data=st.data())
    def client_pipelines(self, data: st.DataObject) -> None:
        """Several requests before any answer (a COPY FROM STDIN only last)."""
        count = data.draw(st.integers(2, 4), label="pipelined requests")
        for index in range(count):
            sql = data.draw(self._sql(), label="statement")
            if _is_copy_from_stdin(sql) and index < count - 1:
                sql = "SELECT 1"
            if data.draw(st.booleans(), label="extended"):
                if _is_copy_from_stdin(sql):
                    sql = "SELECT 1"
                self.send_batch(sql)
            else:
                self.send_query(sql)

    @precondition(lambda self: not self.harness.session.is_closed
                  and self.harness.client.phase is Phase.COPY_IN)
    @rule(data=st.data())
    def client_copies_data(self, data: st.DataObject) -> None:
        rows = data.draw(st.lists(pst.copy_data(16), max_size=3), label="copy data")
        end: Message = data.draw(st.one_of(st.just(CopyDone()), pst.copy_fails()),
                                 label="copy end")
        self.send(*rows, end)

    @precondition(lambda self: not self.harness.session.is_closed)
    @rule()
    def client_terminates(self) -> None:
        """Terminate, check the session ended cleanly, and connect again."""
        harness = self.harness
        self._check(lambda: harness.client_sends(Terminate()), "the session")
        self._pump()
        if not harness.session.is_closed:
            raise MiddlewareCheckFailed("the session stayed open after the client's Terminate")
        if not (self._server.terminated or harness.server_closed):
            raise MiddlewareCheckFailed("the server link was neither told Terminate nor "
                                        "closed after the client's Terminate")
        self._reconnect()

    @precondition(lambda self: self._server.owes)
    @rule(data=st.data())
    def server_answers(self, data: st.DataObject) -> None:
        """The server answers the next request, in one or two pieces."""
        answer = self._server.answer_next(data)
        with_asyncs: list[Message] = []
        for message in answer:
            if data.draw(st.integers(0, 9), label="async before") == 0:
                with_asyncs.append(data.draw(self._asyncs(), label="async message"))
            with_asyncs.append(message)
        cut = data.draw(st.integers(0, len(with_asyncs)), label="split at")
        for piece in (with_asyncs[:cut], with_asyncs[cut:]):
            if piece and not self.harness.server_closed:
                self._server_sends(piece)

    @precondition(lambda self: not self.harness.server_closed
                  and not self.harness.session.is_closed)
    @rule(data=st.data())
    def server_sends_async(self, data: st.DataObject) -> None:
        """A notice, a notification or a ParameterStatus, whenever."""
        self._server_sends([data.draw(self._asyncs(), label="async message")])

    @rule(data=st.data())
    def everything_is_answered(self, data: st.DataObject) -> None:
        """The server answers all it owes; the invariants then see a quiet session."""
        for _ in range(_MAX_SETTLE_ROUNDS):
            if not self._server.owes or self.harness.server_closed:
                return
            self._server_sends(self._server.answer_next(data))
        raise MiddlewareCheckFailed(f"the server kept getting requests after "
                                    f"{_MAX_SETTLE_ROUNDS} answers")

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def no_internal_errors(self) -> None:
        errors = self.proxy.stats.internal_errors
        if errors:
            raise MiddlewareCheckFailed(f"{errors} internal error(s) in the proxy: an "
                                        "exception in a hook or a verdict the protocol cannot "
                                        "take (see the pgwire.proxy log)")

    @invariant()
    def quiet_sessions_are_answered_and_agree(self) -> None:
        harness = self.harness
        if (harness.session.is_closed or self._server.owes or self._server.copy_in
                or harness.client.phase is not Phase.READY):
            return
        if self._requests or harness.client.pending_syncs:
            raise MiddlewareCheckFailed(
                f"the server answered everything it got, but the client still waits for "
                f"{harness.client.pending_syncs} ReadyForQuery: unanswered "
                f"{[r.sql for r in self._requests]}")
        client, server = harness.client.transaction_status, harness.server.transaction_status
        if client != server:
            raise MiddlewareCheckFailed(f"nothing is in flight, but the client's transaction "
                                        f"status is {client!r} and the server's {server!r}")

    def teardown(self) -> None:
        self.harness.close()
        self.proxy.close()

    # -- internals ---------------------------------------------------------------------

    def _asyncs(self) -> st.SearchStrategy[Message]:
        return st.one_of(pst.notice_responses(), pst.notification_responses(),
                         st.builds(ParameterStatus, name=st.sampled_from(_ASYNC_PARAMETERS),
                                   value=pst.texts(max_size=12)))

    def _connect(self) -> SessionHarness:
        self.sessions += 1
        harness = SessionHarness(proxy=self.proxy)
        self._server = _FakeServer(self)
        self._requests: deque[_Request] = deque()
        self._copy_pending = False
        self.harness = harness
        self._logging_in = True
        try:
            events = self._check(lambda: harness.login(user=self.user, database=self.database),
                                 "the login")
            self._take_client(events)
        finally:
            self._logging_in = False
        if harness.session.is_closed or not any(isinstance(e, ReadyForQuery) for e in events):
            raise MiddlewareCheckFailed(f"the login failed: {events}")
        self._pump()
        return harness

    def _reconnect(self) -> None:
        self.harness.close()
        self.harness = self._connect()

    def _check(self, action: Callable[[], Any], who: str) -> Any:
        try:
            return action()
        except ProtocolError as exc:
            raise MiddlewareCheckFailed(f"{who} raised {type(exc).__name__} "
                                        f"{exc.sqlstate}: {exc.message}") from exc

    def _server_sends(self, messages: Sequence[Message]) -> None:
        self._check(lambda: self.harness.server_sends(*messages), "the session")
        self._pump()

    def _pump(self) -> None:
        """Run jobs, then deliver: the server reads what came, the client too."""
        harness = self.harness
        self._check(harness.run_jobs, "a job's report")
        try:
            received = harness.server_events()
        except ProtocolError as exc:
            raise MiddlewareCheckFailed(
                f"the server's Backend refused what the proxy sent upstream: "
                f"{exc.sqlstate} {exc.message}") from exc
        for message in received:
            if isinstance(message, ConnectionClosed):
                continue
            assert isinstance(message, Message)
            self.server_received.append(message)
            self._server.inbox.append(message)
        try:
            events = harness.client_events()
        except ProtocolError as exc:
            raise MiddlewareCheckFailed(
                f"the client's Frontend refused what the proxy sent it: "
                f"{exc.sqlstate} {exc.message}") from exc
        self._take_client(events)

    def _take_client(self, events: list[object]) -> None:
        requests = self._requests
        for event in events:
            self.client_received.append(event)
            current = requests[0] if requests else None
            if isinstance(event, ErrorResponse):
                if event.severity in ("FATAL", "PANIC"):
                    if event.code not in self.allowed_fatal:
                        raise MiddlewareCheckFailed(
                            f"the session ended with {event.severity} {event.code}: "
                            f"{event.message}")
                    continue
                if current is not None:
                    current.errors += 1
            elif isinstance(event, ReadyForQuery):
                if current is None:
                    continue  # the login's; the Frontend refuses any other extra one
                requests.popleft()
                problem = current.check()
                if problem:
                    raise MiddlewareCheckFailed(problem)
                if _is_copy_from_stdin(current.sql):
                    self._copy_pending = False
            elif current is None:
                continue
            elif isinstance(event, ParseComplete):
                current.parse_completes += 1
            elif isinstance(event, BindComplete):
                current.bind_completes += 1
            elif isinstance(event, CloseComplete):
                current.close_completes += 1
            elif isinstance(event, NoData) or (
                isinstance(event, RowDescription) and current.kind == "batch"
            ):
                current.descriptions += 1
            elif isinstance(event, CommandComplete | EmptyQueryResponse | PortalSuspended):
                current.completions += 1
        if not self._logging_in and self.harness.session.is_closed and any(
            isinstance(e, ErrorResponse) and e.severity in ("FATAL", "PANIC") for e in events
        ):
            self._reconnect()  # an allowed FATAL ending: the client connects again


def check_middleware(middleware: Any, *, max_examples: int = 25, steps: int = 30,
                     statements: Sequence[str] | None = None,
                     allowed_fatal: Iterable[str] = (),
                     proxy_settings: Mapping[str, Any] | None = None,
                     hypothesis_settings: settings | None = None) -> None:
    """Run `MiddlewareMachine` on ``middleware`` as a plain test; raise on a failure.

    ``middleware`` is one middleware (instance, class or factory) or a list of
    them, as in `ProxyConfig.middleware`. ``max_examples`` conversations of up
    to ``steps`` steps each are tried; a failure is shrunk to a short one and
    raised (a `MiddlewareCheckFailed` for the built-in invariants). The other
    arguments set the machine's class attributes of the same names;
    ``hypothesis_settings`` replaces the settings whole.
    """
    chain = list(middleware) if isinstance(middleware, list | tuple) else [middleware]
    attributes: dict[str, Any] = {"middleware": chain, "allowed_fatal": frozenset(allowed_fatal)}
    if statements is not None:
        attributes["statements"] = tuple(statements)
    if proxy_settings is not None:
        attributes["proxy_settings"] = dict(proxy_settings)
    machine = type("CheckedMiddleware", (MiddlewareMachine,), attributes)
    run_state_machine_as_test(machine, settings=hypothesis_settings or settings(
        max_examples=max_examples, stateful_step_count=steps, deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ))

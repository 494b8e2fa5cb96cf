"""Stateful property tests of a middleware and of the proxy session:
`MiddlewareMachine`, `InterleavingMachine` and `check_middleware`.

A `MiddlewareMachine` is a hypothesis `RuleBasedStateMachine` that puts your
middleware in a real proxy session (`pgwire.testing.harness.SessionHarness`)
and drives conversations through it: a client sends simple queries, extended
batches, pipelines of both, COPY (by Query, or by Execute at the end of a
batch) and Terminate; a small fake PostgreSQL
answers with rows, command tags, errors (in the middle of pipelines too),
COPY data (a COPY fails on the server either way now and then) and, at any
moment, NoticeResponse, NotificationResponse and ParameterStatus. After
every step it checks the built-in invariants:

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

or call `check_middleware(NoDrop)` from a plain test.

`InterleavingMachine` is the same with a network in the middle: what each
peer sends reaches the session in chunks of any size, the two directions
interleaved in any order, and either peer may leave at any moment (the
server with or without a FATAL error); another client may cancel. It adds
checks that the session never hangs, says why it ended, and loses or
repeats nothing the server sent (``check_middleware(..., interleaved=True)``).

This module needs hypothesis (the ``dev`` extra).
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

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
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
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
from ..proxy import CANCEL_LINK, OpenUpstream, Proxy, ProxyConfig
from ..roles._tracker import LOGIN_SQL, VERIFY_SQL
from . import strategies as pst
from .harness import DEFAULT_SERVER_KEY, DEFAULT_UPSTREAM, SessionHarness

__all__ = [
    "DEFAULT_STATEMENTS",
    "InterleavingMachine",
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
_CAN_TERMINATE: Final = frozenset({Phase.READY, Phase.COPY_IN, Phase.COPY_OUT})
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
    copy_in: bool = False  # ends with COPY FROM STDIN
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
        #: The COPY FROM STDIN came by Execute: a Sync after it ends it.
        self.copy_extended = False
        self.terminated = False
        #: Requests (Query, Sync, FunctionCall) not answered yet, oldest first:
        #: True for a statement the proxy sent itself (its answer is hidden).
        self.requests: deque[bool] = deque()
        #: Per message of the last `answer_next`: does it answer a hidden request?
        self.labels: list[bool] = []
        #: A CancelRequest reached the server: the next statement it runs fails.
        self.cancel_pending = False
        #: Statements it ran for the client (not the proxy's hidden queries).
        self.executed: list[str] = []

    @property
    def owes(self) -> bool:
        """Messages received and not processed yet."""
        return bool(self.inbox)

    @property
    def in_hidden_window(self) -> bool:
        """The oldest unanswered request is one the proxy sent itself: a message
        sent now lands inside the answer the proxy hides from its client."""
        return bool(self.requests) and self.requests[0]

    def receive(self, message: Message) -> None:
        """``message`` arrived from the proxy."""
        self.inbox.append(message)
        if isinstance(message, Query | Sync | FunctionCall):
            hidden = isinstance(message, Query) and message.query in self.machine.hidden_queries
            self.requests.append(hidden)

    def _label(self, out: list[Message]) -> list[Message]:
        """Set `labels` for ``out``, answers in order of the requests."""
        labels = []
        for message in out:
            labels.append(self.in_hidden_window)
            if isinstance(message, ReadyForQuery) and self.requests:
                self.requests.popleft()
        self.labels = labels
        return out

    def fail_copy(self, error: ErrorResponse) -> list[Message]:
        """The server fails the COPY FROM STDIN in progress (bad data, a
        constraint): the error and ReadyForQuery now; what the client still
        sends for the COPY is dropped, as PostgreSQL does."""
        self.copy_in = False
        if self.copy_extended:  # skipped to the client's next Sync
            return self._label([self.fail_batch(error)])
        return self._label([self.fail(error), ReadyForQuery(status=self.status)])

    # -- answering -----------------------------------------------------------------

    def answer_next(self, data: st.DataObject) -> list[Message]:
        """Process the inbox up to the next point where the server would send."""
        out: list[Message] = []
        while self.inbox:
            message = self.inbox.popleft()
            done = self._process(message, data, out)
            if done:
                break
        return self._label(out)

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
                error = _error("57014", f"COPY from stdin failed: {message.message}")
                out.append(self.fail_batch(error) if self.copy_extended else self.fail(error))
            else:
                out.append(CommandComplete(tag="COPY 1"))
            if not self.copy_extended:  # else the client's next Sync ends it
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
            if self.copy_in:
                # PostgreSQL ignores a Sync read during COPY FROM STDIN: its
                # ReadyForQuery never comes (the client sends another after).
                if self.requests:
                    self.requests.popleft()
                return False
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
        if sql not in self.machine.hidden_queries:
            self.executed.append(sql)
        if self.status is _FAILED and word not in _ENDS_BLOCK:
            return [self.fail(_error("25P02", "current transaction is aborted, commands "
                                              "ignored until end of transaction block"))]
        if _REJECT_VEHICLE.fullmatch(sql):
            return [self.fail(self.vehicle_error(sql))]
        if self.cancel_pending:
            self.cancel_pending = False
            return [self.fail(_error("57014", "canceling statement due to user request"))]
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
        if _is_copy_from_stdin(sql):
            self.copy_in = True
            self.copy_extended = extended
            return [CopyInResponse(format=0, column_formats=(0,))]
        if _is_copy_to_stdout(sql):
            count = data.draw(st.integers(0, 2), label="copy rows")
            rows: list[Message] = [CopyOutResponse(format=0, column_formats=(0,)),
                                   *(CopyData(data=b"%d\n" % i) for i in range(count))]
            if data.draw(st.integers(0, 4), label="copy out fails midway") == 0:
                # An error ends COPY OUT without CopyDone (the query failed).
                return [*rows, self.fail(data.draw(pst.error_responses(fatal=False),
                                                   label="copy out error"))]
            return [*rows, CopyDone(), CommandComplete(tag=f"COPY {count}")]
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
    - ``hidden_queries``: statements your middleware sends the server itself
      and whose answers the client never sees (default: the role
      middleware's own queries).

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
    hidden_queries: ClassVar[frozenset[str]] = frozenset({LOGIN_SQL, VERIFY_SQL})
    # Set per session by _connect.
    _copy_pending: bool
    _copy_sync_owed: bool
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

    @property
    def server_executed(self) -> list[str]:
        """The statements the server ran for the current session's client (a
        Query, or an Execute not skipped; the statement a rejection sends in
        place of the refused one too; not `hidden_queries`)."""
        return self._server.executed

    def server_queries(self) -> list[str]:
        """The SQL of every Query and Parse the server received so far."""
        return [m.query for m in self.server_received if isinstance(m, Query | Parse)]

    def send_query(self, sql: str) -> None:
        """The client sends a simple Query."""
        copy_in = _is_copy_from_stdin(sql)
        self._requests.append(_Request("query", sql=sql, copy_in=copy_in))
        self._copy_pending = copy_in
        self.send(Query(query=sql))

    def send_batch(self, *statements: str, describe: bool = False, close: bool = False,
                   name: str = "") -> None:
        """The client sends Parse/Bind/(Describe)/Execute/(Close) per statement, then Sync.

        A COPY FROM STDIN may come last (without Close: nothing but Sync may
        follow it); the client sends another Sync after the COPY, as the
        server ignores the batch's own.
        """
        copy_in = _is_copy_from_stdin(statements[-1])
        if any(_is_copy_from_stdin(sql) for sql in statements[:-1]):
            raise ValueError("a COPY FROM STDIN can only be the last statement of a batch")
        request = _Request("batch", sql="; ".join(statements), copy_in=copy_in)
        self._copy_pending = copy_in
        messages: list[Message] = []
        for index, sql in enumerate(statements):
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
            if close and name and not (copy_in and index == len(statements) - 1):
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
        if data.draw(st.integers(0, 5), label="ends with COPY FROM STDIN") == 0:
            statements[-1] = "COPY t FROM STDIN"
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
                self.send_batch(sql)
            else:
                self.send_query(sql)

    @precondition(lambda self: not self.harness.session.is_closed and self.client_active
                  and self.harness.client.phase is Phase.COPY_IN)
    @rule(data=st.data())
    def client_copies_data(self, data: st.DataObject) -> None:
        rows = data.draw(st.lists(pst.copy_data(16), max_size=3), label="copy data")
        end: Message = data.draw(st.one_of(st.just(CopyDone()), pst.copy_fails()),
                                 label="copy end")
        if self._copy_sync_owed:  # a COPY by Execute: the batch's Sync was ignored
            self._copy_sync_owed = False
            self.send(*rows, end, Sync())
        else:
            self.send(*rows, end)

    @precondition(lambda self: self._copy_sync_owed and self.client_active
                  and not self.harness.session.is_closed
                  and self.harness.client.phase is Phase.READY)
    @rule()
    def client_syncs_after_a_failed_copy(self) -> None:
        """The server failed a COPY that came by Execute: the client's Sync ends it."""
        self._copy_sync_owed = False
        self.send(Sync())

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

    @precondition(lambda self: self._server.owes and self.server_active)
    @rule(data=st.data())
    def server_answers(self, data: st.DataObject) -> None:
        """The server answers the next request, in one or two pieces."""
        server = self._server
        answer = server.answer_next(data)
        with_asyncs: list[Message] = []
        hidden: list[bool] = []
        for message, label in zip(answer, server.labels, strict=True):
            if data.draw(st.integers(0, 9), label="async before") == 0:
                with_asyncs.append(data.draw(self._asyncs(), label="async message"))
                hidden.append(label)  # inside the answer it comes before
            with_asyncs.append(message)
            hidden.append(label)
        cut = data.draw(st.integers(0, len(with_asyncs)), label="split at")
        for start, end in ((0, cut), (cut, len(with_asyncs))):
            if end > start and self.server_active:
                self._server_sends(with_asyncs[start:end], hidden[start:end])

    @precondition(lambda self: self.server_active and not self.harness.session.is_closed)
    @rule(data=st.data())
    def server_sends_async(self, data: st.DataObject) -> None:
        """A notice, a notification or a ParameterStatus, whenever."""
        self._server_sends([data.draw(self._asyncs(), label="async message")],
                           [self._server.in_hidden_window])

    @precondition(lambda self: self._server.copy_in and self.server_active
                  and not self.harness.session.is_closed)
    @rule(data=st.data())
    def server_fails_the_copy(self, data: st.DataObject) -> None:
        """COPY FROM STDIN fails on the server while the client still sends."""
        server = self._server
        answer = server.fail_copy(data.draw(pst.error_responses(fatal=False),
                                            label="copy error"))
        self._server_sends(answer, server.labels)

    @rule(data=st.data())
    def everything_is_answered(self, data: st.DataObject) -> None:
        """The server answers all it owes; the invariants then see a quiet session."""
        for _ in range(_MAX_SETTLE_ROUNDS):
            if not self._server.owes or not self.server_active:
                return
            answer = self._server.answer_next(data)
            self._server_sends(answer, self._server.labels)
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

    @property
    def quiet(self) -> bool:
        """The session is open and nothing is in flight: the server has answered
        all it got, no COPY is open, no bytes are on their way."""
        harness = self.harness
        return not (harness.session.is_closed or self._server.owes or self._server.copy_in
                    or harness.client.phase is not Phase.READY or self._copy_sync_owed
                    or self._in_flight())

    @invariant()
    def quiet_sessions_are_answered_and_agree(self) -> None:
        harness = self.harness
        if not self.quiet:
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
        self._copy_sync_owed = False
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

    @property
    def client_active(self) -> bool:
        """The client still talks (it has not said Terminate nor hung up)."""
        return True

    @property
    def server_active(self) -> bool:
        """The server still answers (it has not ended the connection)."""
        return not self.harness.server_closed

    def _in_flight(self) -> bool:
        """Bytes on their way to the session (none: every send is delivered at once)."""
        return False

    def _allowed_fatal_now(self) -> frozenset[str]:
        return self.allowed_fatal

    def _server_sends(self, messages: Sequence[Message],
                      hidden: Sequence[bool] | None = None) -> None:
        """The server sends ``messages`` (``hidden``: which answer a request the
        proxy sent itself)."""
        self._check(lambda: self.harness.server_sends(*messages), "the session")
        self._pump()

    def _pump(self) -> None:
        """Run jobs, then deliver: the server reads what came, the client too."""
        self._check(self.harness.run_jobs, "a job's report")
        self._pump_server()
        self._pump_client()

    def _pump_server(self) -> None:
        """The server reads what the proxy sent it."""
        try:
            received = self.harness.server_events()
        except ProtocolError as exc:
            raise MiddlewareCheckFailed(
                f"the server's Backend refused what the proxy sent upstream: "
                f"{exc.sqlstate} {exc.message}") from exc
        for message in received:
            if isinstance(message, Message):  # not the ConnectionClosed of a close
                self.server_received.append(message)
                self._server.receive(message)

    def _pump_client(self) -> None:
        """The client reads what the proxy sent it."""
        try:
            events = self.harness.client_events()
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
                if event.ends_session:
                    if (event.code or "") not in self._allowed_fatal_now():
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
                if current.copy_in:
                    self._copy_pending = False
            elif current is None:
                continue
            elif isinstance(event, CopyInResponse):
                self._copy_sync_owed = current.kind == "batch"
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
            isinstance(e, ErrorResponse) and e.ends_session for e in events
        ):
            self._ended_by_fatal()

    def _ended_by_fatal(self) -> None:
        """The session ended with an allowed FATAL error: the client connects again."""
        self._reconnect()


class _Wire:
    """Bytes on their way from one peer to the session, with the messages they carry.

    The session gets them in chunks of any size, so frames split anywhere;
    a message counts as delivered once its last byte has been.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self._messages: deque[list[Any]] = deque()  # [bytes left, message, hidden]
        #: The peer hung up behind these bytes.
        self.eof = False
        self.eof_delivered = False

    @property
    def pending(self) -> bool:
        """Bytes, or the end of the stream, not delivered yet."""
        return bool(self.data) or (self.eof and not self.eof_delivered)

    def put(self, data: bytes, message: Message, hidden: bool = False) -> None:
        self.data += data
        self._messages.append([len(data), message, hidden])

    def take(self, size: int) -> tuple[bytes, list[tuple[Message, bool]]]:
        """The next ``size`` bytes, and the messages they complete."""
        chunk = bytes(self.data[:size])
        del self.data[:size]
        done: list[tuple[Message, bool]] = []
        left = len(chunk)
        messages = self._messages
        while messages and left:
            entry = messages[0]
            used = min(entry[0], left)
            entry[0] -= used
            left -= used
            if entry[0] == 0:
                messages.popleft()
                done.append((entry[1], entry[2]))
        return chunk, done


class InterleavingMachine(MiddlewareMachine):
    """`MiddlewareMachine` with the network in the middle: bytes travel on wires.

    What the client and the server send does not reach the session at once:
    it waits on a wire, one per direction, and rules deliver it in chunks of
    any size (frames split anywhere), so the session sees the two streams
    interleaved in every order: a notice arriving while the client is half
    way through a pipeline or a COPY, the client's next pipeline before the
    server answered the last, the server's error while CopyData is still on
    its way. The client only acts on what it has received. On top of the
    conversations of `MiddlewareMachine` (and its COPY failures on either
    side), either peer may leave at any moment: the server with or without a
    FATAL error before its end of stream, the client with Terminate (mid-COPY
    too) or by hanging up; and another client may send a CancelRequest with
    the session's key (or a wrong one), which reaches the server on a link of
    its own and fails the statement running there.

    Invariants, beyond `MiddlewareMachine`'s:

    - the session never hangs: once the client's Terminate or end of stream,
      or the server's end of stream, has been delivered, the session has
      ended, the server was told (Terminate or close) and the client closed;
    - an ending says why: after the server's end of stream the client's last
      error is the server's FATAL or the proxy's 08006; a session that ends
      with neither peer leaving ends with a FATAL error in ``allowed_fatal``;
    - nothing the server says is lost or duplicated: what the client got
      since login is, type by type, what the server sent it (answers to the
      ``hidden_queries`` aside; their notices too, but not notifications or
      parameter reports that came among them), plus at most the proxy's own
      FATAL at the end. With ``exact = True`` (a chain that changes nothing
      the server sends) the client's messages must be the server's, one for
      one and in order;
    - a cancel with the session's key reaches the server's key on a cancel
      link; one with a wrong key reaches nothing; either way that connection
      ends and the session goes on;
    - the proxy counts no protocol error of either peer (``stats``): both
      keep the protocol, their bytes only cross.

    Class attributes, beyond `MiddlewareMachine`'s: ``exact``,
    ``check_relayed`` and ``session_wide`` (the message types that must reach the client even among
    hidden answers; default NotificationResponse and ParameterStatus). For
    your own invariants: ``client_delivered`` (the client's messages that
    reached the current session whole), and `quiet` also waits for the wires.
    A session that ends is checked, then the client connects again.
    """

    #: The chain changes nothing the server sends: compare message for message.
    exact: ClassVar[bool] = False
    _last_close_reason: str | None = None
    #: False for a chain that adds, removes or answers messages on purpose
    #: (``Respond``, ``Replace``): the server's messages are not counted then.
    check_relayed: ClassVar[bool] = True
    #: Message types about the session, not about a request (notifications,
    #: parameter reports): they reach the client even when they come among
    #: the answers to the proxy's own queries.
    session_wide: ClassVar[frozenset[bytes]] = frozenset({b"A", b"S"})

    # -- per session ------------------------------------------------------------------

    def _connect(self) -> SessionHarness:
        self._client_wire = _Wire()
        self._server_wire = _Wire()
        self._client_left_ = False
        self._server_gone = False
        self._server_fatal: ErrorResponse | None = None
        self._server_fatal_delivered = False
        self._terminate_delivered = False
        self._delivered: list[tuple[Message, bool]] = []
        #: Every message of the client that reached the current session whole.
        self.client_delivered: list[Message] = []
        self._client_mark = len(self.client_received)
        harness = super()._connect()
        self._client_mark = len(self.client_received)
        return harness

    @property
    def can_send(self) -> bool:
        """The client may start a request now (and has not left)."""
        return self.client_active and super().can_send

    @property
    def client_active(self) -> bool:
        return not self._client_left_

    @property
    def server_active(self) -> bool:
        return not self._server_gone and not self.harness.server_closed

    def _in_flight(self) -> bool:
        return self._client_wire.pending or self._server_wire.pending

    def _allowed_fatal_now(self) -> frozenset[str]:
        allowed = set(self.allowed_fatal)
        if self._server_wire.eof_delivered:
            allowed.add("08006")
        if self._server_fatal_delivered and self._server_fatal is not None:
            allowed.add(self._server_fatal.code or "")
        return frozenset(allowed)

    def _ended_by_fatal(self) -> None:
        pass  # the delivery that ended the session checks the ending, then reconnects

    # -- sending: onto the wires --------------------------------------------------------

    def send(self, *messages: Message) -> None:
        """The client sends ``messages``: onto its wire, delivered by later steps."""
        client = self.harness.client
        for message in messages:
            self._client_wire.put(client.send(message), message)

    def _server_sends(self, messages: Sequence[Message],
                      hidden: Sequence[bool] | None = None) -> None:
        if not self.server_active:
            return
        server = self.harness.server
        labels = hidden if hidden is not None else [False] * len(messages)
        for message, label in zip(messages, labels, strict=True):
            self._server_wire.put(server.send(message), message, label)

    def _pump(self) -> None:
        """As `MiddlewareMachine._pump`, but a server that left reads nothing
        more, and a client that left reads nothing more."""
        self._check(self.harness.run_jobs, "a job's report")
        if self.server_active:
            self._pump_server()
        if self.client_active:
            self._pump_client()

    # -- delivering -----------------------------------------------------------------------

    def _deliver_client(self, size: int | None) -> None:
        wire = self._client_wire
        harness = self.harness
        if wire.data:
            chunk, done = wire.take(len(wire.data) if size is None else size)
            self.client_delivered += [message for message, _ in done]
            self._check(lambda: harness.feed(harness.session.client_data(chunk)), "the session")
            if any(isinstance(message, Terminate) for message, _ in done):
                self._terminate_delivered = True
        else:
            wire.eof_delivered = True
            self._check(lambda: harness.feed(harness.session.client_data(b"")), "the session")
        self._pump()
        self._after_delivery()

    def _deliver_server(self, size: int | None) -> None:
        wire = self._server_wire
        harness = self.harness
        if wire.data:
            chunk, done = wire.take(len(wire.data) if size is None else size)
            self._delivered += done
            if any(message is self._server_fatal for message, _ in done):
                self._server_fatal_delivered = True
            self._check(lambda: harness.feed(harness.session.upstream_data(chunk)),
                        "the session")
        else:
            wire.eof_delivered = True
            self._check(lambda: harness.feed(harness.session.upstream_data(b"")), "the session")
        self._pump()
        self._after_delivery()

    def _after_delivery(self) -> None:
        """A session must end once a peer's departure reached it; an ended one
        is checked, and the client connects again."""
        harness = self.harness
        if not harness.session.is_closed:
            if self._terminate_delivered or self._client_wire.eof_delivered:
                raise MiddlewareCheckFailed("the session stayed open after the client's "
                                            "Terminate or end of stream reached it")
            if self._server_wire.eof_delivered:
                raise MiddlewareCheckFailed("the session stayed open after the server's end "
                                            "of stream reached it")
            return
        self._last_close_reason = harness.session.close_reason
        self._check_ending()
        self._reconnect()

    def _client_messages(self) -> list[Message]:
        return [e for e in self.client_received[self._client_mark:] if isinstance(e, Message)]

    def _check_ending(self) -> None:
        harness = self.harness
        client_left = self._terminate_delivered or self._client_wire.eof_delivered
        if client_left:
            if not (self._server.terminated or harness.server_closed):
                raise MiddlewareCheckFailed("the client left, but the server link was neither "
                                            "told Terminate nor closed")
            return
        if not harness.client_closed:
            raise MiddlewareCheckFailed("the session ended without closing the client")
        if not self.client_active:
            return  # it is leaving: it reads nothing more
        errors = [m for m in self._client_messages() if isinstance(m, ErrorResponse)]
        last = errors[-1] if errors else None
        if self._server_wire.eof_delivered:
            if self._server_fatal_delivered:
                if last != self._server_fatal:
                    raise MiddlewareCheckFailed(
                        f"the server ended with {self._server_fatal}, but the client's last "
                        f"error is {last}")
            elif last is None or not last.ends_session or last.code != "08006":
                raise MiddlewareCheckFailed(f"the server hung up, but the client's last error "
                                            f"is {last}, not the proxy's FATAL 08006")
        elif last is None or not last.ends_session:
            raise MiddlewareCheckFailed(f"the session ended with neither peer leaving, and "
                                        f"without a FATAL error (the client's last error: "
                                        f"{last})")
        if not self.harness.server_closed and self.server_active and not self._server.terminated:
            raise MiddlewareCheckFailed("the session ended, but the server link was neither "
                                        "told Terminate nor closed")
        self._check_relayed(ended=True)

    def _check_relayed(self, *, ended: bool = False) -> None:
        """What the client got since login is what the server sent it."""
        if not self.check_relayed or not self.client_active:
            return  # a client that left reads nothing more
        received = self._client_messages()
        if ended and received and isinstance(received[-1], ErrorResponse) and (
            received[-1].ends_session
            and not (self._server_fatal_delivered and received[-1] == self._server_fatal)
        ):
            received = received[:-1]  # the proxy's own ending
        if self.exact:
            expected = [message for message, _ in self._delivered]
            if received != expected:
                raise MiddlewareCheckFailed(
                    f"the client did not get exactly what the server sent: server "
                    f"{_names(expected)}, client {_names(received)}")
            return
        counted = Counter(m.type_code for m, hidden in self._delivered
                          if not hidden or m.type_code in self.session_wide
                          or (isinstance(m, ErrorResponse) and m.ends_session))
        got = Counter(m.type_code for m in received)
        for code in sorted(counted.keys() | got.keys()):
            if counted[code] != got[code]:
                raise MiddlewareCheckFailed(
                    f"the server sent the client {counted[code]} message(s) of type {code!r}, "
                    f"the client got {got[code]}: server {_names(m for m, _ in self._delivered)}"
                    f", client {_names(received)}")

    @invariant()
    def nobody_is_blamed_for_a_protocol_error(self) -> None:
        """Both peers keep the protocol (their bytes merely cross on the
        wires): the proxy must count no protocol error of either."""
        stats = self.proxy.stats
        if stats.client_protocol_errors or stats.upstream_errors:
            raise MiddlewareCheckFailed(
                f"the proxy counted {stats.client_protocol_errors} client protocol error(s) "
                f"and {stats.upstream_errors} upstream one(s), but neither peer broke the "
                f"protocol (last session ended: {self._last_close_reason!r})")

    @invariant()
    def the_client_gets_what_the_server_sent(self) -> None:
        if not self.harness.session.is_closed:
            self._check_relayed()

    # -- rules -----------------------------------------------------------------------------

    @precondition(lambda self: not self.harness.session.is_closed and self._client_wire.pending)
    @rule(data=st.data())
    def deliver_client_bytes(self, data: st.DataObject) -> None:
        """Some of what the client sent reaches the session."""
        size = len(self._client_wire.data)
        self._deliver_client(data.draw(st.integers(1, size), label="client chunk")
                             if size else None)

    @precondition(lambda self: not self.harness.session.is_closed and self._server_wire.pending)
    @rule(data=st.data())
    def deliver_server_bytes(self, data: st.DataObject) -> None:
        """Some of what the server sent reaches the session."""
        size = len(self._server_wire.data)
        self._deliver_server(data.draw(st.integers(1, size), label="server chunk")
                             if size else None)

    @precondition(lambda self: not self.harness.session.is_closed and self.client_active)
    @rule(terminate=st.booleans())
    def client_leaves(self, terminate: bool) -> None:
        """The client leaves, behind what it sent: with Terminate (mid-pipeline,
        mid-COPY: whenever), or its connection just ends."""
        if terminate and self.harness.client.phase in _CAN_TERMINATE:
            self.send(Terminate())
        else:
            self._client_wire.eof = True
        self._client_left_ = True

    # The base rule expects Terminate to end the session at once; here it travels.
    client_terminates = None  # type: ignore[assignment]

    @precondition(lambda self: not self.harness.session.is_closed and self.server_active)
    @rule(data=st.data())
    def server_hangs_up(self, data: st.DataObject) -> None:
        """The server's connection ends, behind what it sent: after a FATAL
        error (shutdown, a crash, a terminated backend) or without a word."""
        fatal = data.draw(st.one_of(st.none(), pst.error_responses(fatal=True)),
                          label="FATAL before the end")
        if fatal is not None:
            self._server_fatal = fatal
            self._server_sends([fatal])
        self._server_wire.eof = True
        self._server_gone = True

    @precondition(lambda self: not self.harness.session.is_closed
                  and self.harness.session.cancel_key is not None)
    @rule(right=st.booleans())
    def another_client_cancels(self, right: bool) -> None:
        """A CancelRequest with the session's key (or a wrong one) on a new connection."""
        key = self.harness.session.cancel_key
        assert key is not None
        process_id, secret = key
        if not right:
            secret = bytes(byte ^ 0xFF for byte in secret)
        canceller = SessionHarness(proxy=self.proxy)
        self._check(canceller.start, "the cancel session")
        actions = self._check(lambda: canceller.client_sends(
            CancelRequest(process_id=process_id, secret_key=secret)), "the cancel session")
        opened = [a for a in actions if isinstance(a, OpenUpstream)]
        if not right:
            if opened or not canceller.session.is_closed:
                raise MiddlewareCheckFailed(f"a cancel with a wrong key was not refused: "
                                            f"{actions}")
            canceller.close()
            return
        if [(a.link, a.address) for a in opened] != [(CANCEL_LINK, DEFAULT_UPSTREAM)]:
            raise MiddlewareCheckFailed(f"a cancel with the session's key opened {opened}")
        self._check(lambda: canceller.feed(canceller.session.upstream_connected(CANCEL_LINK)),
                    "the cancel session")
        sent = bytes(canceller.other_links.get(CANCEL_LINK, b""))
        server_key = CancelRequest(process_id=DEFAULT_SERVER_KEY[0],
                                   secret_key=DEFAULT_SERVER_KEY[1]).encode()
        if sent != server_key or canceller.session.is_closed:
            raise MiddlewareCheckFailed(f"the cancel link got {sent!r}, not the server's key "
                                        f"{server_key!r}, or the cancel session closed before "
                                        f"the server did (closed: "
                                        f"{canceller.session.is_closed})")
        self._check(lambda: canceller.feed(canceller.session.upstream_data(b"", CANCEL_LINK)),
                    "the cancel session")
        if not canceller.session.is_closed:
            raise MiddlewareCheckFailed("the cancel session stayed open after the server "
                                        "closed the cancel link")
        canceller.close()
        if self.server_active and self._server.owes:
            self._server.cancel_pending = True  # it cancels what runs, if anything does

    @precondition(lambda self: not self.harness.session.is_closed and (
        self._in_flight() or (self._server.owes and self.server_active)))
    @rule(data=st.data())
    def everything_is_answered(self, data: st.DataObject) -> None:
        """Every wire delivered and every request answered, in whole pieces."""
        session = self.harness.session
        for _ in range(_MAX_SETTLE_ROUNDS):
            if session.is_closed or self.harness.session is not session:
                return
            if self._client_wire.pending:
                self._deliver_client(None)
            elif self._server_wire.pending:
                self._deliver_server(None)
            elif self._server.owes and self.server_active:
                answer = self._server.answer_next(data)
                self._server_sends(answer, self._server.labels)
            else:
                return
        raise MiddlewareCheckFailed(f"the conversation did not settle after "
                                    f"{_MAX_SETTLE_ROUNDS} rounds")



def _names(messages: Iterable[Message]) -> str:
    return " ".join(type(m).__name__ for m in messages)


def check_middleware(middleware: Any, *, max_examples: int = 25, steps: int = 30,
                     statements: Sequence[str] | None = None,
                     allowed_fatal: Iterable[str] = (),
                     proxy_settings: Mapping[str, Any] | None = None,
                     hypothesis_settings: settings | None = None,
                     interleaved: bool = False) -> None:
    """Run `MiddlewareMachine` on ``middleware`` as a plain test; raise on a failure.

    ``middleware`` is one middleware (instance, class or factory) or a list of
    them, as in `ProxyConfig.middleware`. ``max_examples`` conversations of up
    to ``steps`` steps each are tried; a failure is shrunk to a short one and
    raised (a `MiddlewareCheckFailed` for the built-in invariants). The other
    arguments set the machine's class attributes of the same names;
    ``hypothesis_settings`` replaces the settings whole. ``interleaved`` runs
    `InterleavingMachine` instead (bytes in chunks, both directions
    interleaved, peers leaving at any moment).
    """
    chain = list(middleware) if isinstance(middleware, list | tuple) else [middleware]
    attributes: dict[str, Any] = {"middleware": chain, "allowed_fatal": frozenset(allowed_fatal)}
    if statements is not None:
        attributes["statements"] = tuple(statements)
    if proxy_settings is not None:
        attributes["proxy_settings"] = dict(proxy_settings)
    base = InterleavingMachine if interleaved else MiddlewareMachine
    machine = type("CheckedMiddleware", (base,), attributes)
    run_state_machine_as_test(machine, settings=hypothesis_settings or settings(
        max_examples=max_examples, stateful_step_count=steps, deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ))

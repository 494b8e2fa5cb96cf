"""``pgwire demo``: the proxy in front of a real PostgreSQL, doing its job.

:func:`run_demo` starts a throwaway PostgreSQL
(:class:`pgwire.testing.cluster.PostgresCluster`), puts the asyncio proxy in
front of it with two middleware — :class:`QueryLog` (every statement with the
session's user and how long it took) and :class:`ReadOnly` (writes refused
with SQLSTATE 25006) — and plays a short session through it with pgwire's
own :class:`~pgwire.client.ClientConnection` on a socket: a login relayed to
the server, a query, a prepared statement, a refused write, a cancel. Then it
prints the ``psql`` command to try the proxy yourself and waits for Ctrl-C
(``--no-wait``: it exits at once), deleting the cluster on the way out.

The two middleware classes are small, real examples of the middleware API;
a configuration file can name them too
(``class = "pgwire.demo_proxy:QueryLog"``).
"""

from __future__ import annotations

import logging
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Final, TextIO

from .client import ClientConnection
from .demo_fake import describe
from .middleware import Context, Middleware, Reject, SessionInfo, Verdict
from .protocol import (
    NEED_DATA,
    Bind,
    CancelRequest,
    Close,
    ConnectionClosed,
    DataRow,
    ErrorResponse,
    Execute,
    FrontendEvent,
    FunctionCall,
    Message,
    ParameterStatus,
    Parse,
    Phase,
    Query,
    RawMessage,
    ReadyForQuery,
    StartupMessage,
    Sync,
    Terminate,
)
from .proxy import ProxyConfig, format_address, instance_of

__all__ = ["DemoClient", "QueryLog", "ReadOnly", "errors", "rows", "run_demo"]

_DEMO_USER: Final = "demo"
_SOCKET_TIMEOUT: Final = 30.0


# -- middleware ---------------------------------------------------------------------------


class _LogState:
    """What one session's QueryLog remembers: statements, and requests in flight."""

    __slots__ = ("batch", "batch_started", "pending", "statements")

    def __init__(self) -> None:
        self.statements: dict[str, str] = {}
        self.batch: list[str] = []
        self.batch_started: float | None = None
        self.pending: deque[tuple[str, float]] = deque()


def _one_line(sql: str, limit: int = 160) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class QueryLog(Middleware[_LogState]):
    """Log each statement with the session's user and the time to its answer.

    A simple Query is one entry; an extended-protocol batch (up to its Sync)
    is one entry naming the statements it prepared and executed. The time
    runs from the client's message to the server's ReadyForQuery, so it
    includes the proxy's own work. Lines go to ``sink`` when given (it runs
    inside the session: keep it quick), else to the ``pgwire.querylog``
    logger at INFO. Put it first in the chain so it sees every request,
    including those a later middleware rejects.
    """

    client_messages = frozenset({b"Q", b"P", b"B", b"S", b"F", b"C"})
    server_messages = frozenset({b"Z"})

    def __init__(self, sink: Callable[[str], None] | None = None) -> None:
        self.sink = sink
        self._logger = logging.getLogger("pgwire.querylog")

    def create_state(self, info: SessionInfo) -> _LogState:
        return _LogState()

    def on_client_message(self, ctx: Context[_LogState], message: Message) -> Verdict:
        state = ctx.state
        now = time.perf_counter()
        if isinstance(message, Query):
            state.pending.append((_one_line(message.query), now))
            return None
        if isinstance(message, FunctionCall):
            state.pending.append((f"function call (oid {message.function_oid})", now))
            return None
        if isinstance(message, Sync):
            text = "; ".join(state.batch) or "sync"
            state.pending.append((text, state.batch_started or now))
            state.batch.clear()
            state.batch_started = None
            return None
        if state.batch_started is None:
            state.batch_started = now
        if isinstance(message, Parse):
            state.statements[message.statement] = message.query
            if message.statement:
                state.batch.append(f"prepare {message.statement}: {_one_line(message.query)}")
        elif isinstance(message, Bind):
            query = _one_line(state.statements.get(message.statement, "?"))
            state.batch.append(f"execute {message.statement}: {query}" if message.statement
                               else query)
        elif isinstance(message, Close) and message.kind == "S":
            state.statements.pop(message.name, None)
        return None

    def on_server_message(self, ctx: Context[_LogState], message: Message) -> Verdict:
        pending = ctx.state.pending
        if isinstance(message, ReadyForQuery) and pending:
            text, started = pending.popleft()
            milliseconds = (time.perf_counter() - started) * 1000
            if self.sink is not None:
                self.sink(f"[query-log] {ctx.user} {milliseconds:.1f} ms  {text}")
            else:
                self._logger.info("%s %.1f ms  %s", ctx.user, milliseconds, text)
        return None


_COMMENTS: Final = re.compile(r"\s*(?:--[^\n]*\n?|/\*.*?\*/)", re.DOTALL)
_WORD: Final = re.compile(r"[A-Za-z_]+")
_WRITES: Final = frozenset({
    "insert", "update", "delete", "merge", "create", "drop", "alter", "truncate", "grant",
    "revoke", "comment", "reindex", "vacuum", "cluster", "refresh", "lock", "import",
    "call", "do", "security", "reassign",
})
_DML: Final = frozenset({"insert", "update", "delete", "merge"})


def _write_verb(sql: str) -> str | None:
    """The verb of the first writing statement in ``sql``, or None."""
    for statement in sql.split(";"):
        text = statement
        while match := _COMMENTS.match(text):
            if not match.group(0):
                break
            text = text[match.end():]
        words: list[str] = [w.lower() for w in _WORD.findall(text)]
        if not words:
            continue
        verb = words[0]
        if verb == "explain" and {"analyze", "analyse"} & set(words[1:3]):
            verb = next((w for w in words[1:] if w in _WRITES), "select")
        if verb == "with":
            verb = next((w for w in words if w in _DML), "select")
        if verb == "copy" and "from" in words:
            return "COPY FROM"
        if verb in _WRITES:
            return verb.upper()
    return None


class ReadOnly(Middleware[None]):
    """Refuse statements that write, with SQLSTATE 25006, for ``users`` (all if None).

    A demonstration of :class:`~pgwire.middleware.Reject`, not a security
    boundary: it reads the first word of each statement (and looks inside
    ``WITH`` and ``EXPLAIN ANALYZE``), so a function that writes, called
    from a SELECT, passes. For a real guarantee give the role only SELECT
    privileges, or set ``default_transaction_read_only`` on it and refuse
    ``SET`` of it; a SQL parser (the ``sql`` extra) classifies statements
    properly. The server's transaction state follows the rejection, so a
    transaction block fails on both sides.
    """

    client_messages = frozenset({b"Q", b"P"})

    def __init__(self, users: Collection[str] | None = None) -> None:
        self.users = None if users is None else frozenset(users)

    def on_client_message(self, ctx: Context[None], message: Message) -> Verdict:
        if self.users is not None and ctx.user not in self.users:
            return None
        assert isinstance(message, Query | Parse)
        verb = _write_verb(message.query)
        if verb is None:
            return None
        return Reject("25006", f"cannot execute {verb}: this proxy is read-only",
                      hint="Writes go to PostgreSQL directly, not through this proxy.")


# -- a client on a socket -------------------------------------------------------------------


class DemoClient:
    """pgwire's :class:`~pgwire.client.ClientConnection` on a blocking socket.

    Prints every message it sends and receives to ``out`` (when given), as
    ``client>`` and ``server>`` lines. Each wait for the server is bounded by
    ``timeout`` seconds (:class:`TimeoutError` when exceeded).
    """

    def __init__(self, address: tuple[str, int], *, user: str, password: str | None,
                 database: str = "postgres", application_name: str = "pgwire demo",
                 out: TextIO | None = None, print_lock: threading.Lock | None = None,
                 timeout: float = _SOCKET_TIMEOUT) -> None:
        self.address = address
        self.out = out
        self.lock = print_lock or threading.Lock()
        self.timeout = timeout
        self.startup = StartupMessage.from_dict(
            {"user": user, "database": database, "application_name": application_name})
        self.conn = ClientConnection(user=user, database=database, password=password,
                                     parameters={"application_name": application_name},
                                     sslmode="disable")
        self.sock: socket.socket | None = None

    @property
    def backend_key(self) -> tuple[int, bytes] | None:
        """The (process id, secret key) the server — here, the proxy — gave us."""
        return self.conn.frontend.backend_key

    def _print(self, text: str) -> None:
        if self.out is not None:
            with self.lock:
                self.out.write(text + "\n")
                self.out.flush()

    def connect(self) -> list[FrontendEvent]:
        """Connect and log in; the login's events (ParameterStatus summarised)."""
        self.sock = socket.create_connection(self.address, timeout=self.timeout)
        self.conn.start()
        self._print(f"  client> {describe(self.startup)}")
        self._flush()
        return self.receive(summarise_parameters=True)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            assert self.sock is not None
            self.sock.sendall(data)

    def send(self, *messages: Message) -> None:
        """Send ``messages`` in one write (several make a pipeline)."""
        for message in messages:
            self._print(f"  client> {describe(message)}")
            self.conn.send(message)
        self._flush()

    def receive(self, *, timeout: float | None = None,
                summarise_parameters: bool = False) -> list[FrontendEvent]:
        """Events until every request sent so far is answered (ReadyForQuery and
        nothing pending) or the server closes."""
        assert self.sock is not None
        self.sock.settimeout(timeout or self.timeout)
        events: list[FrontendEvent] = []
        parameters: list[ParameterStatus] = []
        while True:
            event = self.conn.next_event()
            self._flush()
            if event is NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
                continue
            events.append(event)
            if isinstance(event, ParameterStatus) and summarise_parameters:
                parameters.append(event)
                continue
            if parameters and isinstance(event, ReadyForQuery | ConnectionClosed):
                shown = ", ".join(f"{p.name}={p.value}" for p in parameters
                                  if p.name in ("server_version", "client_encoding"))
                self._print(f"  server> ParameterStatus x {len(parameters)} ({shown}, ...)")
                parameters = []
            if isinstance(event, ConnectionClosed):
                self._print("  server closed the connection")
                return events
            if isinstance(event, Message | RawMessage):
                self._print(f"  server> {describe(event)}")
            if isinstance(event, ReadyForQuery) and not self.conn.frontend.busy:
                return events

    def exchange(self, *messages: Message) -> list[FrontendEvent]:
        """Send ``messages``, then receive every answer."""
        self.send(*messages)
        return self.receive()

    def query(self, sql: str) -> list[FrontendEvent]:
        """One simple Query and its answer."""
        return self.exchange(Query(query=sql))

    def send_cancel(self, address: tuple[str, int] | None = None) -> None:
        """Send a CancelRequest with our key on a new connection (to ``address``,
        default the one we are connected to), as libpq does."""
        key = self.backend_key
        if key is None:
            raise RuntimeError("no BackendKeyData yet: log in first")
        request = CancelRequest(process_id=key[0], secret_key=key[1])
        with socket.create_connection(address or self.address, timeout=self.timeout) as sock:
            sock.sendall(request.encode())
            # The server closes without answering once it has the request.
            sock.recv(1)

    def close(self) -> None:
        """Send Terminate and close the socket."""
        if self.sock is None:
            return
        try:
            if self.conn.frontend.phase is Phase.READY:
                self.conn.send(Terminate())
                self._flush()
        except OSError:
            pass
        finally:
            self.sock.close()
            self.sock = None


def rows(events: Sequence[FrontendEvent]) -> list[tuple[str | None, ...]]:
    """The DataRows among ``events`` as text values."""
    return [tuple(None if v is None else bytes(v).decode() for v in e.values)
            for e in events if isinstance(e, DataRow)]


def errors(events: Sequence[FrontendEvent]) -> list[ErrorResponse]:
    """The ErrorResponses among ``events``."""
    return [e for e in events if isinstance(e, ErrorResponse)]


# -- the demo -------------------------------------------------------------------------------

_SETUP_SQL: Final = """
create role {user} login password '{password}';
create table notes (id int generated always as identity primary key, body text not null);
insert into notes (body) values ('hello from PostgreSQL'), ('Zoë'), ('宮本');
grant select, insert on notes to {user};
"""


class _Printer:
    """Lines to ``out`` from the demo and from the proxy's thread, never interleaved."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()

    def __call__(self, text: str = "") -> None:
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()

    def proxy_line(self, text: str) -> None:
        self(f"  proxy>  {text}")

    def heading(self, text: str) -> None:
        self(f"\n== {text}")


def _cancel_until_answered(client: DemoClient, say: _Printer) -> list[FrontendEvent]:
    """Cancel the running query. A cancel that arrives before the server
    started the query is lost (PostgreSQL ignores it), so send another if
    no answer comes within a second."""
    for attempt in range(1, 31):
        time.sleep(0.2 if attempt == 1 else 0)
        key = client.backend_key
        assert key is not None
        say(f"  client> CancelRequest(process_id={key[0]}, secret_key=…) on a new "
            f"connection to the proxy")
        client.send_cancel()
        try:
            return client.receive(timeout=1.0)
        except TimeoutError:
            say("  (no answer yet: the query had not started; cancelling again)")
    raise TimeoutError("the query was not cancelled")


def _script(client: DemoClient, say: _Printer) -> bool:
    """The scripted session; True when everything went as the demo expects."""
    ok = True
    say.heading(f"Log in through the proxy as {_DEMO_USER!r}: the server's SCRAM "
                "exchange is relayed (passthrough)")
    client.connect()
    key = client.backend_key
    assert key is not None

    say.heading("A query")
    found = rows(client.query("select id, body from notes order by id"))
    ok &= len(found) == 3

    say.heading("Cancel keys: the client holds the proxy's key, never the server's")
    server_pid = rows(client.query("select pg_backend_pid()"))[0][0]
    say(f"  The client's BackendKeyData says process_id={key[0]} (proxy instance "
        f"{instance_of(key[0])}); the server process is pid {server_pid}. A CancelRequest "
        "with the proxy's key is mapped to the server's key and sent on.")

    say.heading("A prepared statement: Parse once, then Bind and Execute it twice")
    client.exchange(Parse(statement="note_by_id", query="select body from notes where id = $1",
                          parameter_types=(23,)), Sync())
    for note_id in (b"2", b"3"):
        client.exchange(Bind(statement="note_by_id", parameters=(note_id,)), Execute(), Sync())

    say.heading("A write: the ReadOnly middleware refuses it (25006), and the server's "
                "transaction fails with it")
    client.query("begin")
    refused = errors(client.query("insert into notes (body) values ('through the proxy')"))
    ok &= [e.code for e in refused] == ["25006"]
    ok &= client.conn.frontend.transaction_status == "E"
    client.query("rollback")
    count = rows(client.query("select count(*) from notes"))
    ok &= count == [("3",)]

    say.heading("A cancel: a long query, then a CancelRequest to the proxy")
    client.send(Query(query="select pg_sleep(60)"))
    cancelled = errors(_cancel_until_answered(client, say))
    ok &= [e.code for e in cancelled] == ["57014"]
    ok &= rows(client.query("select 'still connected'")) == [("still connected",)]

    say.heading("Terminate")
    say("  client> Terminate()")
    client.close()
    return ok


def run_demo(*, wait: bool = True, out: TextIO | None = None) -> int:
    """Run ``pgwire demo``; return the exit status (1 without PostgreSQL).

    SIGTERM stops it as Ctrl-C does (KeyboardInterrupt), after deleting the
    cluster: it must not outlive the demo.
    """
    say = _Printer(out or sys.stdout)
    if threading.current_thread() is not threading.main_thread():
        return _run_demo(wait, say)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return _run_demo(wait, say)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_demo(wait: bool, say: _Printer) -> int:
    from .testing.cluster import ClusterError, ClusterUnavailable, PostgresCluster  # noqa: PLC0415
    from .testing.proxy import running_proxy  # noqa: PLC0415

    cluster = PostgresCluster(ssl=False, auth="scram-sha-256")
    say("pgwire demo: starting a throwaway PostgreSQL ...")
    try:
        cluster.start()
    except ClusterUnavailable as exc:
        sys.stderr.write(
            f"pgwire demo puts the proxy in front of a real PostgreSQL, and none was found.\n"
            f"{exc}\n\nOr run `pgwire demo --fake-server` for the in-memory server instead.\n")
        return 1
    except ClusterError as exc:
        sys.stderr.write(f"pgwire demo: PostgreSQL did not start: {exc}\n")
        return 1
    try:
        password = secrets.token_urlsafe(12)
        cluster.sql(_SETUP_SQL.format(user=_DEMO_USER, password=password))
        say(f"PostgreSQL ({cluster.bindir}) listening on {cluster.host}:{cluster.port}")
        config = ProxyConfig(
            upstream=(cluster.host, cluster.port),
            middleware=[lambda: QueryLog(sink=say.proxy_line), ReadOnly],
            login_timeout=30,
            shutdown_timeout=5,
        )
        with running_proxy(config) as proxy:
            address = (proxy.host, proxy.port)
            say(f"pgwire proxy listening on {format_address(address)}, upstream "
                f"{format_address(config.upstream)} (passthrough auth, asyncio)")
            say("middleware: QueryLog (each statement, its user and time), "
                "ReadOnly (refuses writes)")
            client = DemoClient(address, user=_DEMO_USER, password=password,
                                out=say.out, print_lock=say.lock)
            try:
                ok = _script(client, say)
            finally:
                client.close()
            stats = {k: v for k, v in proxy.proxy.stats.as_dict().items() if v}
            say(f"\nproxy counters: {', '.join(f'{k}={v}' for k, v in stats.items())}")
            if not ok:
                say("pgwire demo: something did not go as expected (see above)")
                return 1
            say("\nTry it yourself (writes are refused by the demo's ReadOnly rule):")
            say(f'  PGPASSWORD={password} psql "host={proxy.host} port={proxy.port} '
                f'user={_DEMO_USER} dbname=postgres"')
            if wait:
                _wait_for_interrupt(say)
    finally:
        cluster.stop()
    say("stopped; the throwaway PostgreSQL is gone")
    return 0


def _wait_for_interrupt(say: _Printer) -> None:
    say("Press Ctrl-C to stop.")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        say("")

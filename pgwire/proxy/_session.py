"""One client's trip through the proxy, without I/O.

A :class:`Session` pairs a :class:`~pgwire.server.ServerConnection` facing the
client with a :class:`~pgwire.client.ClientConnection` facing the server. The
adapter feeds it what happens (bytes, connects, timers, job results) and does
what the returned :mod:`actions <pgwire.proxy._actions>` say.

After login the data path is one of three (see ``_relay.py``): cut-through
(no middleware reads messages: frames are delimited and counted), selective
(middleware reads some types: those frames are decoded and go through the
chain, the rest, and every message the hooks leave unchanged, go on as the
bytes received), or checked (``check_protocol``: every frame passes both
state machines). Frames are cut by the same headers the server reads, so a
client cannot smuggle a message the server would take differently from how
the proxy saw it.
"""

from __future__ import annotations

import contextlib
import secrets
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._interning import shared
from ..auth import ScramKeys, password_type
from ..client import ClientConnection
from ..login import Authenticated, LoginFailed, LoginRefused
from ..middleware.base import (
    AuthResult,
    Context,
    Forward,
    Inject,
    JobOutcome,
    Middleware,
    QueryResult,
    Reject,
    Replace,
    Respond,
    SessionInfo,
)
from ..protocol import (
    BACKEND_TYPED_CLASSES,
    FRONTEND_TYPED_CLASSES,
    NEED_DATA,
    PROTOCOL_3_0,
    Authentication,
    AuthenticationSASL,
    BackendKeyData,
    Bind,
    CancelRequest,
    Close,
    ConnectionClosed,
    DataRow,
    Describe,
    DirectTLSHandshake,
    ErrorResponse,
    Execute,
    FunctionCall,
    GSSENCRequest,
    GSSENCResponse,
    Message,
    NegotiateProtocolVersion,
    ParameterStatus,
    Parse,
    PasswordMessage,
    Phase,
    ProtocolError,
    Query,
    RawMessage,
    ReadyForQuery,
    RemoteProtocolError,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    Sync,
    Terminate,
    TransactionStatus,
)
from ..roles._state import SessionRoles
from ..server import ServerConnection
from ..tls import TLSError
from ._actions import (
    AUTH_LINK,
    CANCEL_LINK,
    MAIN_LINK,
    Action,
    CancelTimer,
    CloseClient,
    CloseUpstream,
    OpenUpstream,
    RunJob,
    SendToClient,
    SendToUpstream,
    StartTimer,
    format_address,
)
from ._cancel import CancelRoute, UpstreamKey
from ._config import AuthQuery, ProxyAuth
from ._pool import PooledServer, PoolKey
from ._relay import Outbound, Relay

if TYPE_CHECKING:
    from ._proxy import Proxy

__all__ = ["Session", "SessionState"]

_SCRAM_PLUS: Final = "SCRAM-SHA-256-PLUS"
# Startup keys the proxy never forwards: the protocol's own and libpq-internal ones.
_NOT_FORWARDED: Final = ("user", "database")
LOGIN_TIMER: Final = "login"
IDLE_TIMER: Final = "idle"
CHECKOUT_TIMER: Final = "checkout"
UPSTREAM_READ_TIMER: Final = "upstream read"
# Messages a Reject can answer with an error in place (they get one response).
_REJECTABLE: Final = (Query, Parse, Bind, Describe, Execute, Close, FunctionCall)
# Selective forwarding: what the session reads whatever middleware asks for.
# Client: Terminate. Server: ReadyForQuery, ErrorResponse, CopyInResponse and
# ParameterStatus (what the session tracks), so frames between them change nothing.
_CLIENT_STOPS: Final = frozenset(b"X")
_SERVER_STOPS: Final = frozenset(b"ZEGS")
_EVERY_TYPE: Final = frozenset(range(256))
_TYPE_CODES: Final = tuple(bytes([code]) for code in range(256))


class SessionState:
    """Where a session is (a namespace of strings, for logs and tests)."""

    STARTUP: Final = "startup"            # waiting for the client's startup packet
    AUTH_LOOKUP: Final = "auth lookup"    # the auth query runs
    CLIENT_AUTH: Final = "client auth"    # the proxy checks the client's password
    CONNECTING: Final = "connecting"      # opening the upstream link
    UPSTREAM_LOGIN: Final = "upstream login"
    READY: Final = "ready"                # the data path
    CANCEL: Final = "cancel"              # delivering a CancelRequest
    CLOSED: Final = "closed"


def _error(code: str, message: str, severity: str = "FATAL", **extra: str | None
           ) -> ErrorResponse:
    return ErrorResponse(severity=severity, severity_nonlocalized=severity, code=code,
                         message=message, **extra)  # type: ignore[arg-type]


#: The empty queue a session's rarely used queues point at until their first entry.
#: Never appended to: ``maxlen=0`` would drop the entry silently, so the sites that
#: add an entry replace it with a deque of their own first.
_NO_ENTRIES: Final[deque[Any]] = deque(maxlen=0)



class _Chain:
    """The middleware of one session, with their contexts and interests."""

    __slots__ = ("client_codes", "contexts", "middleware", "server_codes")

    def __init__(self, middleware: list[Middleware[Any]], contexts: list[Context[Any]]) -> None:
        self.middleware = middleware
        self.contexts = contexts
        self.client_codes: frozenset[bytes] = shared(frozenset().union(
            *(m.client_messages for m in middleware)))
        self.server_codes: frozenset[bytes] = shared(frozenset().union(
            *(m.server_messages for m in middleware)))


class Session:
    """The sans-IO state of one client connection through the proxy.

    Create sessions with :meth:`Proxy.new_session`. Call :meth:`start` first,
    then report what happens:

    - :meth:`client_data` / :meth:`upstream_data` with bytes read (``b""`` at
      end of stream);
    - :meth:`upstream_connected` / :meth:`upstream_failed` after an
      :class:`~pgwire.proxy.OpenUpstream`;
    - :meth:`timer_fired`, :meth:`job_done`, :meth:`shutdown`.

    Each returns the actions to carry out, in order. After
    :class:`~pgwire.proxy.CloseClient` nothing more is returned; call
    :meth:`closed` once the sockets are gone so the proxy forgets the session.
    """

    __slots__ = (
        "_attachments",
        "_auth_lookup",
        "_broken",
        "_cancel_key",
        "_cancel_route",
        "_chain",
        "_checkout_armed",
        "_client_auth_method",
        "_client_out",
        "_deferred",
        "_draining",
        "_fatal_from_upstream",
        "_held",
        "_hidden",
        "_idle_armed",
        "_jobs",
        "_leaving",
        "_looked_up",
        "_next_job",
        "_out",
        "_params_view",
        "_pool",
        "_pool_dirty",
        "_pool_key",
        "_pool_pins",
        "_proxy",
        "_query_backlog",
        "_read_armed",
        "_read_held",
        "_read_seen",
        "_reject_count",
        "_reject_token",
        "_rejects",
        "_relay",
        "_server",
        "_upstream_failed",
        "_upstream_out",
        "_upstream_user",
        "_z_arriving",
        "_z_seen",
        "auth_link",
        "client",
        "close_reason",
        "driver",
        "info",
        "roles",
        "session_id",
        "startup",
        "state",
        "upstream",
    )

    def __init__(self, proxy: Proxy, session_id: int,
                 client_address: tuple[str, int] | str | None) -> None:
        config = proxy.config
        self._proxy = proxy
        self.session_id = session_id
        self.state: str = SessionState.STARTUP
        self.info = SessionInfo(session_id=session_id, client_address=client_address,
                                tls=False)
        self._broken: Exception | None = None
        #: The session's roles, shared by its middleware as ``ctx.roles``.
        self.roles = SessionRoles()
        try:
            middleware = proxy._instantiate_middleware()
            if proxy._pool_middleware is not None:
                middleware.append(proxy._pool_middleware)
            contexts = [Context(self, i, self.info, m.create_state(self.info))
                        for i, m in enumerate(middleware)]
        except Exception as exc:  # a middleware bug: this client is refused below
            self._broken = exc
            middleware, contexts = [], []
        self._chain = _Chain(middleware, contexts)
        self.client = ServerConnection(
            ssl_context=config.client_tls,
            server_certificate=config.client_tls_certificate,
            require_tls=config.require_client_tls,
            max_message_size=config.max_message_size,
            decode={b"p", *self._chain.client_codes},
            mock_key=proxy._mock_key,
        )
        #: The link to the server that carries the session, once opened.
        self.upstream: ClientConnection | None = None
        #: The link an auth query runs on, while it does.
        self.auth_link: ClientConnection | None = None
        #: The StartupMessage as sent upstream (after middleware rewrites).
        self.startup: StartupMessage | None = None
        #: Why the session ended, once it has.
        self.close_reason: str | None = None
        self._out: list[Action] = []
        self._cancel_key: tuple[int, bytes] | None = None
        self._cancel_route: CancelRoute | None = None
        self._client_auth_method = "passthrough"
        self._upstream_user: str | None = None
        self._auth_lookup: _AuthLookup | None = None
        self._looked_up: str | None = None
        self._fatal_from_upstream = False
        #: The server broke the protocol (a pooled connection is not reused).
        self._upstream_failed = False
        self._draining = False
        self._idle_armed = False
        # The upstream read timeout: whether its timer runs, and when the server
        # last sent bytes (or the timer started), by the proxy's clock.
        self._read_armed = False
        self._read_held = False
        self._read_seen = 0.0
        # Ordering of answers the proxy makes itself with those of the server:
        # _z_seen counts the server's ReadyForQuery; _deferred holds answers to
        # send once it reaches a mark; _hidden marks whose whole answer is eaten.
        self._z_seen = 0
        self._z_arriving = 0
        # Both stay the shared empty deque until their first entry (most sessions
        # never defer or hide anything): 760 bytes each otherwise.
        self._deferred: deque[tuple[int, tuple[Message, ...], int]] = _NO_ENTRIES
        self._hidden: deque[tuple[int, _Collector | None]] = _NO_ENTRIES
        self._query_backlog: list[_Collector] = []
        self._rejects: dict[str, Reject] = {}
        self._reject_token = secrets.token_hex(8)
        self._reject_count = 0
        self._jobs: dict[int, Callable[[JobOutcome], None] | None] = {}
        self._relay: Relay | None = None
        # Selective forwarding: what goes to each peer while a chunk is read.
        self._client_out: Outbound | None = None
        self._upstream_out: Outbound | None = None
        self._next_job = 0
        #: The adapter's handle for whatever performs this session's actions.
        self.driver: object = None
        # Pooling: the connection held now (None between transactions), its
        # key, how many times one was attached, a client event waiting for
        # one, the parameters the client saw at login, and the session state
        # kinds that pin the connection or must be reset when it goes back.
        self._pool = proxy.pool
        self._server: PooledServer | None = None
        self._pool_key: PoolKey | None = None
        self._attachments = 0
        self._checkout_armed = False
        #: Why the client left while its requests still ran (pooled sessions).
        self._leaving: str | None = None
        self._held: object = None
        self._params_view: dict[str, str] = {}
        self._pool_pins: set[str] = set()
        self._pool_dirty: set[str] = set()

    # -- public state ------------------------------------------------------------------

    @property
    def server_parameters(self) -> dict[str, str]:
        """ParameterStatus values the server reported (empty before login)."""
        if self.upstream is not None:
            return self.upstream.frontend.parameters
        return self._params_view

    @property
    def transaction_status(self) -> str:
        """The client's transaction status from the last ReadyForQuery it got."""
        relay = self._relay
        if relay is None:
            return self.client.backend.transaction_status
        return relay.status if relay.client_stop is None else relay.client_status

    @property
    def cancel_key(self) -> tuple[int, bytes] | None:
        """The (process id, secret) this session's client got from the proxy."""
        return self._cancel_key

    @property
    def is_closed(self) -> bool:
        """True once the session returned CloseClient."""
        return self.state == SessionState.CLOSED

    @property
    def accepts_client_data(self) -> bool:
        """False while the client has ``max_pipeline`` requests awaiting an answer:
        the adapter stops reading it until answers come back (then this turns
        True again after an upstream read), so a client that pipelines without
        reading cannot make the proxy hold more and more."""
        relay = self._relay
        if relay is not None:
            owed = len(relay.pending)
        elif self.upstream is not None:
            owed = self.upstream.frontend.pending_syncs
        else:
            return True
        return owed + len(self._deferred) < self._proxy.config.max_pipeline

    @property
    def pooled_link(self) -> int | None:
        """The pool's link number of the server connection this session holds now
        (None: not pooled, or between transactions). Adapters use it to apply
        back-pressure across the session's client and that pooled link."""
        server = self._server
        return server.id if server is not None else None

    def _awaiting_server(self) -> bool:
        """The server owes an answer and has what it needs to give it: a request
        went upstream and its ReadyForQuery has not come back, and no COPY FROM
        STDIN waits for the client."""
        upstream = self.upstream
        if upstream is None or self.state is not SessionState.READY:
            return False
        relay = self._relay
        if relay is not None:
            return bool(relay.pending) and not relay.copy_in
        frontend = upstream.frontend
        return bool(frontend.pending_syncs) and frontend.phase is not Phase.COPY_IN

    # -- inputs ------------------------------------------------------------------------

    def start(self) -> list[Action]:
        """The client connected: arm the login timer."""
        self._out.append(StartTimer(LOGIN_TIMER, self._proxy.config.login_timeout))
        return self._take()

    def _refuse_broken(self) -> bool:
        """A middleware failed to set up this session: end it at the startup packet."""
        if self._broken is None:
            return False
        self._internal_error(self._broken)
        return True

    def client_data(self, data: bytes) -> list[Action]:
        """Bytes read from the client (``b""``: it closed)."""
        if self.is_closed:
            return []
        if self._leaving is not None:
            return self._take()  # it said goodbye: nothing after that counts
        if data and self._fatal_from_upstream:
            # Sent after the server's FATAL (crossing it on the wire, or a Terminate
            # once the client read it): nobody will answer it, and the client broke
            # nothing. The session is over; do not wait for the server's close.
            self._close("the server ended the session")
            return self._take()
        if self._relay is not None:
            try:
                self._relay_client_data(data)
            except Exception as exc:
                self._internal_error(exc)
            return self._take()
        client = self.client
        try:
            client.receive_data(data)
            if self.state is SessionState.READY and not self._chain.client_codes:
                self._forward_client_frames()
                return self._take()
            self._client_events()
        except ProtocolError as exc:
            self._client_broke(exc)
        except Exception as exc:  # a middleware bug, or ours: fail closed
            self._internal_error(exc)
        return self._take()

    def _client_events(self) -> None:
        """Take the client's events (buffered by its connection) and act on them."""
        client = self.client
        relay = self._relay
        if relay is not None and relay.client_stop is not None:
            # Selective forwarding: the held bytes go now.
            if self.upstream is not None:
                self._held = None
                self._selective_client_bytes(b"")
                if relay.client_closed and not self.is_closed and self._leaving is None:
                    self._client_left("client closed the connection")
            return
        if self._held is not None:
            if self.upstream is None:
                return  # still waiting for a pooled connection
            event, self._held = self._held, None
            self._client_event_ready(event)
        while not self.is_closed:
            event = client.next_event()
            if event is NEED_DATA:
                break
            if self._pool is not None and self.upstream is None and (
                self.state is SessionState.READY
            ):
                if isinstance(event, ConnectionClosed) or (
                    isinstance(event, RawMessage | Terminate) and event.type_code == b"X"
                ):
                    self._close("client terminated the session")
                    break
                # A request between transactions: it waits for a connection.
                self._held = event
                self._pool_checkout()
                break
            if not self._client_event_ready(event):
                break

    def _client_event_ready(self, event: object) -> bool:
        """One client event; False when the loop must stop."""
        if type(event) is RawMessage and self.state is SessionState.READY:
            upstream = self.upstream
            assert upstream is not None
            if event.type_code == b"X":
                self._client_left("client terminated the session")
                return False
            upstream.send(event)
            return True
        self._client_event(event)
        # A cancel client that left early: its closed end repeats forever.
        return not isinstance(event, ConnectionClosed)

    def upstream_data(self, data: bytes, link: int = MAIN_LINK) -> list[Action]:
        """Bytes read from upstream link ``link`` (``b""``: it closed)."""
        if self.is_closed:
            return []
        if self._read_armed and link == MAIN_LINK:
            self._read_seen = self._proxy.clock()
        try:
            if link == MAIN_LINK:
                self._main_link_data(data)
            elif link == AUTH_LINK:
                self._auth_link_data(data)
            elif link == CANCEL_LINK and not data and self.state is SessionState.CANCEL:
                self._out.append(CloseUpstream(CANCEL_LINK))
                route = self._cancel_route
                assert route is not None
                self._close("cancel request forwarded" if route.forwarded
                            else "cancel request delivered")
            # Otherwise the cancel link never answers.
        except ProtocolError as exc:
            self._upstream_broke(exc)
        except Exception as exc:
            self._internal_error(exc)
        return self._take()

    def upstream_connected(self, link: int = MAIN_LINK) -> list[Action]:
        """The connection of an :class:`OpenUpstream` for ``link`` is up."""
        if self.is_closed:
            return []
        try:
            if link == CANCEL_LINK:
                route = self._cancel_route
                assert route is not None
                self._out.append(SendToUpstream(route.request.encode(), CANCEL_LINK))
                # Wait, as libpq does, until the server (or the peer proxy) closes:
                # it does so once it has acted on the request. Our client waits on
                # us the same way, so it sends its next statement only after the
                # cancel is done with. PostgreSQL signals the backend twice (the
                # process, then its process group); closing early would let a
                # late second signal cancel the client's next statement. Nobody
                # leaves early either, so no adapter drops the delivery halfway.
            elif link == AUTH_LINK and self.auth_link is not None:
                self.auth_link.start()
                self._flush_link(self.auth_link, AUTH_LINK)
            elif link == MAIN_LINK and self.upstream is not None:
                self.state = SessionState.UPSTREAM_LOGIN
                self.upstream.start()
                self._flush_link(self.upstream, MAIN_LINK)
        except ProtocolError as exc:
            self._upstream_broke(exc)
        return self._take()

    def upstream_failed(self, error: str, link: int = MAIN_LINK) -> list[Action]:
        """The connection for ``link`` could not be opened (or timed out): ``error`` says why."""
        if self.is_closed:
            return []
        if link == CANCEL_LINK:
            self._close(f"cancel request not delivered: {error}")
        else:
            self._proxy.stats.upstream_connect_failures += 1
            self._fatal("08006", f"could not connect to the upstream server at "
                        f"{format_address(self._proxy.config.upstream)}: {error}")
        return self._take()

    def timer_fired(self, name: str) -> list[Action]:
        """Timer ``name`` (from a :class:`StartTimer`) ran out."""
        if self.is_closed:
            return []
        if name == CHECKOUT_TIMER:
            self._checkout_armed = False
            self._checkout_timed_out()
            return self._take()
        if name == UPSTREAM_READ_TIMER:
            self._read_timer_fired()
            return self._take()
        if name == LOGIN_TIMER and self.state is SessionState.CANCEL:
            self._close("cancel request sent, but the server did not close within "
                        f"{self._proxy.config.login_timeout:g} s")
        elif name == LOGIN_TIMER and self.state is not SessionState.READY:
            self._proxy.stats.login_timeouts += 1
            self._fatal("08006", "terminating connection: the login did not finish within "
                        f"{self._proxy.config.login_timeout:g} s")
        elif name == IDLE_TIMER and self.state is SessionState.READY and self._idle_armed:
            self._idle_armed = False
            if self._requests_open():
                # A whole request came in since the timer started: the session is
                # not idle; the next ReadyForQuery starts the timer again. Half a
                # message does not count, as in PostgreSQL.
                return self._take()
            if self.transaction_status == "I":
                self._fatal("57P05", "terminating connection due to idle-session timeout")
            else:
                self._fatal("25P03",
                            "terminating connection due to idle-in-transaction timeout")
        return self._take()

    def upstream_held(self, held: bool) -> None:
        """The adapter stopped (``True``) or went back to (``False``) reading this
        session's server link, because a socket on the client's side is full:
        the server's silence meanwhile is not the server's doing, so the
        upstream read timeout does not count it."""
        self._read_held = held
        if not held and self._read_armed:
            self._read_seen = self._proxy.clock()

    def _read_timer_fired(self) -> None:
        """The upstream read timer ran out: if the server still owes an answer and
        sent nothing for the whole timeout, end the session (the timer only says
        when to look; bytes that came meanwhile start the wait again)."""
        self._read_armed = False
        seconds = self._proxy.config.upstream_read_timeout
        if seconds is None or not self._awaiting_server():
            return  # nothing owed now: the next request starts the timer again
        silent = 0.0 if self._read_held else self._proxy.clock() - self._read_seen
        if silent < seconds:
            self._read_armed = True
            self._out.append(StartTimer(UPSTREAM_READ_TIMER, seconds - silent))
            return
        self._proxy.stats.upstream_read_timeouts += 1
        self._upstream_failed = True  # a pooled connection is not reused
        self._fatal("08006", f"terminating connection: the upstream server sent nothing for "
                    f"{seconds:g} s while a request was in flight "
                    "(limits.upstream_read_timeout)")

    def _arm_read_timer(self, seconds: float) -> None:
        """A request went upstream and the read timer does not run: start it."""
        if self._awaiting_server():
            self._read_armed = True
            self._read_seen = self._proxy.clock()
            self._out.append(StartTimer(UPSTREAM_READ_TIMER, seconds))

    def job_done(self, job_id: int, outcome: JobOutcome) -> list[Action]:
        """A :class:`RunJob` finished; ``outcome`` holds its value or exception."""
        then = self._jobs.pop(job_id, None)
        if then is not None and not self.is_closed:
            try:
                then(outcome)
                self._flush_client()
            except Exception as exc:
                self._internal_error(exc)
        return self._take()

    def shutdown(self, *, immediate: bool = False) -> list[Action]:
        """The proxy stops: end the session now if it is idle (or ``immediate``),
        else when its current transaction ends, with FATAL 57P01."""
        if self.is_closed:
            return []
        self._draining = True
        if immediate or self._at_rest():
            self._fatal("57P01", "terminating connection due to administrator command")
        return self._take()

    def closed(self) -> None:
        """The adapter closed every socket of this session: forget it."""
        if not self.is_closed:
            self._close("closed by the adapter")
        self._proxy._forget(self)

    # -- client side -------------------------------------------------------------------

    def _forward_client_frames(self) -> None:
        """The data path toward the server: no middleware wants client messages."""
        client = self.client
        if client._channel.error is not None:
            raise client._channel.error
        upstream = self.upstream
        assert upstream is not None
        backend = client.backend
        frontend = upstream.frontend
        chunks: list[bytes] = []
        try:
            while True:
                event = backend.next_event()
                if type(event) is RawMessage:
                    if event.type_code == b"X":
                        break
                    chunks.append(frontend.send(event))
                    continue
                break
        finally:
            if chunks:
                upstream._channel.write(b"".join(chunks))
        if type(event) is RawMessage:
            self._client_left("client terminated the session")
        elif event is not NEED_DATA:
            self._client_event(event)
            if not self.is_closed:
                self._forward_client_frames()

    def _client_event(self, event: object) -> None:
        state = self.state
        if isinstance(event, StartupMessage):
            if self._refuse_broken():
                return
            self.info = SessionInfo(session_id=self.session_id,
                                    client_address=self.info.client_address,
                                    tls=self.client.tls)
            for context in self._chain.contexts:  # they hold the info they were made with
                context.info = self.info
            self._startup(event)
        elif isinstance(event, CancelRequest):
            self._cancel(event)
        elif isinstance(event, SSLRequest | GSSENCRequest | DirectTLSHandshake):
            pass  # answered by the ServerConnection
        elif isinstance(event, ConnectionClosed):
            if state is SessionState.CANCEL:
                return  # the client need not wait for the cancel to be delivered
            self._client_left("client closed the connection")
        elif isinstance(event, Authenticated):
            self._client_authenticated(event)
        elif isinstance(event, LoginFailed):
            self._report_auth(False, sqlstate=event.sqlstate, message=event.message)
            self._close(f"login failed: {event.message}")
        elif state is SessionState.READY:
            if isinstance(event, Message):
                self._from_client(event, 0)
        elif state is SessionState.CLIENT_AUTH and isinstance(
            event, PasswordMessage | SASLInitialResponse | SASLResponse
        ):
            pass  # checked by the ServerConnection; Authenticated or LoginFailed follows
        elif state is SessionState.UPSTREAM_LOGIN and isinstance(event, Message) and (
            not isinstance(self._proxy.config.auth, ProxyAuth)
        ):
            # Passthrough: the client's answer to the server's authentication request.
            assert self.upstream is not None
            self.upstream.send(event)
            self._flush_link(self.upstream, MAIN_LINK)
        elif isinstance(event, Message | RawMessage):
            # A message before login finished (the Backend allows only login ones).
            name = type(event).__name__ if isinstance(event, Message) else repr(event)
            self._fatal("08P01", f"unexpected {name} before the login finished")

    def _startup(self, startup: StartupMessage) -> None:
        proxy = self._proxy
        config = proxy.config
        if proxy.shutting_down:
            self._fatal("57P03", "the database system is shutting down")
            return
        if proxy.logins_in_use() > config.max_clients:
            proxy.stats.refused_max_clients += 1
            self._fatal("53300", "sorry, too many clients already")
            return
        for index, middleware in enumerate(self._chain.middleware):
            verdict = middleware.on_startup(self._chain.contexts[index], startup)
            if isinstance(verdict, Reject):
                self._send_client(verdict.error("FATAL"))
                self._close(f"startup rejected by {middleware!r}: {verdict.message}")
                return
            if verdict is not None:
                if not isinstance(verdict, StartupMessage):
                    raise TypeError(f"{middleware!r}.on_startup returned {verdict!r}")
                startup = verdict
        self.startup = startup
        user = startup.get("user")
        if not user:
            self._fatal("28000", "no PostgreSQL user name specified in startup packet")
            return
        roles = self.roles
        roles.client_user = self._client_user()
        roles.database = startup.get("database") or user
        auth = config.auth
        if isinstance(auth, ProxyAuth):
            # The client proves who it is; a middleware's rewrite only says
            # which role the proxy logs in as upstream.
            client_user = roles.client_user
            self._client_auth_method = auth.method
            if auth.auth_query is not None:
                self._start_auth_query(auth.auth_query, client_user)
            else:
                self._looked_up = auth.users.get(client_user)
                self._check_client(self._looked_up)
        else:
            self._open_upstream(user, None, relay=True)

    def _client_user(self) -> str:
        """The user the client named in its own StartupMessage (before rewrites)."""
        startup = self.client.backend.startup
        return (startup.get("user") or "") if startup is not None else ""

    def _check_client(self, secret: str | None) -> None:
        auth = self._proxy.config.auth
        assert isinstance(auth, ProxyAuth) and self.startup is not None
        self.state = SessionState.CLIENT_AUTH
        self.client.authenticate(auth.method, secret)
        self._flush_client()
        self._drain_client_events()

    def _drain_client_events(self) -> None:
        # authenticate() may have finished at once (trust, cert): take its events.
        while not self.is_closed:
            event = self.client.next_event()
            if event is NEED_DATA:
                break
            self._client_event(event)

    def _client_authenticated(self, event: Authenticated) -> None:
        auth = self._proxy.config.auth
        assert isinstance(auth, ProxyAuth) and self.startup is not None
        self._client_auth_method = event.method
        scram = self.client._scram
        keys = scram.keys if scram is not None else None
        rewritten = self.startup.get("user") or event.user
        user = auth.upstream_user or rewritten
        password: str | ScramKeys | None = auth.upstream_password
        if password is None and auth.upstream_user is None:
            if user == event.user:
                secret = self._looked_up
                if secret is not None and password_type(secret) == "plaintext":
                    password = secret
                elif keys is not None:
                    password = keys
            else:
                # Mapped to another role: its own plaintext password, if listed.
                stored = auth.users.get(user)
                if stored is not None and password_type(stored) == "plaintext":
                    password = stored
        self._open_upstream(user, password, relay=False)

    def _open_upstream(self, user: str, password: str | ScramKeys | None, *,
                       relay: bool) -> None:
        config = self._proxy.config
        startup = self.startup
        assert startup is not None
        parameters = {k: v for k, v in startup.parameters
                      if k not in _NOT_FORWARDED and not k.startswith("_pq_.")}
        tls = config.upstream_tls
        self._upstream_user = user
        pool = self._pool
        if pool is not None:
            self.state = SessionState.CONNECTING
            self._pool_key = pool.key_for(user, startup.get("database") or user, parameters)
            self._pool_checkout(password)
            return
        self.upstream = ClientConnection(
            user=user,
            database=startup.get("database"),
            password=password,
            parameters=parameters,
            sslmode=tls.sslmode,
            sslrootcert=tls.sslrootcert,
            sslcert=tls.sslcert,
            sslkey=tls.sslkey,
            ssl_context=tls.context,
            server_hostname=tls.server_hostname,
            # The proxy relays what clients send; a login it makes itself over
            # plaintext is the operator's configured choice.
            allow_plaintext_password=True,
            channel_binding="prefer",
            protocol_version=PROTOCOL_3_0,
            max_message_size=config.max_message_size,
            decode={b"E", *self._chain.server_codes},
            relay_authentication=relay,
        )
        self.state = SessionState.CONNECTING
        self._out.append(OpenUpstream(MAIN_LINK, config.upstream, config.connect_timeout))

    # -- auth query --------------------------------------------------------------------

    def _start_auth_query(self, query: AuthQuery, user: str) -> None:
        config = self._proxy.config
        tls = config.upstream_tls
        self.state = SessionState.AUTH_LOOKUP
        self._auth_lookup = _AuthLookup(query, user, ClientConnection(
            user=query.user, database=query.database, password=query.password,
            sslmode=tls.sslmode, sslrootcert=tls.sslrootcert, sslcert=tls.sslcert,
            sslkey=tls.sslkey, ssl_context=tls.context, server_hostname=tls.server_hostname,
            allow_plaintext_password=True,
        ))
        self.auth_link = self._auth_lookup.link
        self._out.append(OpenUpstream(AUTH_LINK, config.upstream, config.connect_timeout))

    def _auth_link_data(self, data: bytes) -> None:
        lookup = self._auth_lookup
        if lookup is None:
            return
        try:
            done = lookup.receive(data)
        except (ProtocolError, _LookupError) as exc:
            self._proxy.stats.auth_query_failures += 1
            self._end_auth_link()
            message = exc.message if isinstance(exc, ProtocolError) else str(exc)
            self._fatal("08006", f"the proxy could not look up the user's secret: {message}")
            return
        self._flush_link(lookup.link, AUTH_LINK)
        if done:
            self._end_auth_link()
            self._looked_up = lookup.secret
            self._check_client(lookup.secret)

    def _end_auth_link(self) -> None:
        lookup = self._auth_lookup
        if lookup is not None and lookup.link.frontend.phase is Phase.READY:
            lookup.link.send(Terminate())
            self._flush_link(lookup.link, AUTH_LINK)
        self._out.append(CloseUpstream(AUTH_LINK))
        self._auth_lookup = None
        self.auth_link = None

    # -- the server side ---------------------------------------------------------------

    def _main_link_data(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None:
            return
        if self._relay is not None:
            self._relay_server_data(data)
            return
        upstream.receive_data(data)
        client = self.client
        if self.state is SessionState.READY and not self._chain.server_codes and (
            not self._rejects and not self._hidden
        ):
            # The data path: frames go through both state machines untouched.
            if upstream._channel.error is not None:
                raise upstream._channel.error
            frontend = upstream.frontend
            backend = client.backend
            chunks: list[bytes] = []
            try:
                while True:
                    event = frontend.next_event()
                    if type(event) is RawMessage:
                        chunks.append(backend.send(event))
                        if event.type_code == b"Z":
                            client._channel.write(b"".join(chunks))
                            chunks.clear()
                            self._after_ready_for_query()
                            if self.is_closed:
                                break
                        continue
                    if chunks:
                        client._channel.write(b"".join(chunks))
                        chunks.clear()
                    if event is NEED_DATA:
                        break
                    self._server_event(event)
                    if self.is_closed:
                        break
            finally:
                if chunks:  # what came before a protocol error still reaches the client
                    client._channel.write(b"".join(chunks))
        else:
            while not self.is_closed and self.upstream is upstream:
                event = upstream.next_event()
                if event is NEED_DATA:
                    break
                self._server_event(event)
                if self._relay is not None:
                    self._start_relay()
                    return
        self._flush_link(upstream, MAIN_LINK)
        self._flush_client()

    # -- cut-through -------------------------------------------------------------------

    def _start_relay(self) -> None:
        """Login is done and no middleware reads messages: from here on frames are
        delimited and counted (see ``_relay.py``), not run through the machines."""
        upstream = self.upstream
        assert upstream is not None
        if self.is_closed:
            return
        self._flush_link(upstream, MAIN_LINK)
        self._flush_client()
        # Bytes that arrived behind the login's last message.
        client_rest = self.client.backend._buffer.take_all()
        server_rest = upstream.frontend._buffer.take_all()
        if client_rest:
            self._relay_client_bytes(client_rest)
        if server_rest and not self.is_closed:
            self._relay_server_bytes(server_rest)

    def _relay_client_data(self, data: bytes) -> None:
        tls = self.client._channel.tls
        try:
            if tls is not None:
                tls.receive_encrypted(data)
                plaintext = tls.read()
                if plaintext:
                    self._relay_client_bytes(plaintext)
            elif data:
                self._relay_client_bytes(data)
        except ProtocolError as exc:
            self._client_broke(exc)
            return
        if (not data or (tls is not None and tls.peer_closed)) and not self.is_closed:
            # The client closed (TCP, or TLS close_notify with TCP still open).
            if self._pool is not None and self.upstream is None:
                if self._held is None:
                    self._close("client terminated the session")
                else:  # after the request waiting for a connection has run
                    relay = self._relay
                    assert relay is not None
                    relay.client_closed = True
            else:
                self._client_left("client closed the connection")

    def _relay_client_bytes(self, data: bytes) -> None:
        relay = self._relay
        assert relay is not None
        if relay.client_stop is not None:
            self._selective_client_bytes(data)
            return
        upstream = self.upstream
        assert upstream is not None
        out = relay.from_client(data)
        if out:
            if upstream._channel.tls is None:
                self._out.append(SendToUpstream(out, MAIN_LINK))
            else:
                upstream._channel.write(out)
        if relay.terminated:
            self._close("client terminated the session")

    def _relay_server_data(self, data: bytes) -> None:
        tls = self.upstream._channel.tls if self.upstream is not None else None
        if tls is not None:
            tls.receive_encrypted(data)
            plaintext = tls.read()
            if plaintext:
                self._relay_server_bytes(plaintext)
        elif data:
            self._relay_server_bytes(data)
        if (not data or (tls is not None and tls.peer_closed)) and not self.is_closed:
            self._upstream_failed = True  # a pooled connection it closed is not reused
            relay = self._relay
            assert relay is not None
            if relay.fatal:
                self._close("the server ended the session")
            else:
                self._fatal("08006", "the upstream server closed the connection unexpectedly")

    def _relay_server_bytes(self, data: bytes) -> None:
        relay = self._relay
        assert relay is not None
        if relay.server_stop is not None:
            self._selective_server_bytes(data)
            return
        out = relay.from_server(data)
        if out:
            if self.client._channel.tls is None:
                self._out.append(SendToClient(out))
            else:
                self.client._channel.write(out)
        if relay.parameters:
            upstream = self.upstream
            assert upstream is not None
            for status in relay.parameters:
                upstream.frontend.parameters[status.name] = status.value
                if status.name == "client_encoding":
                    upstream.frontend._set_client_encoding(status.value)
                    self.client.backend._set_client_encoding(status.value)
            relay.parameters.clear()
        if relay.fatal:
            self._fatal_from_upstream = True
        if relay.ready_seen:
            relay.ready_seen = 0
            if not relay.pending:
                self._after_ready_for_query(count=False)

    # -- selective forwarding ----------------------------------------------------------

    def _selective_client_bytes(self, data: bytes) -> None:
        """Client frames: runs nobody reads go upstream as they came; a frame of
        a type some middleware reads is decoded and goes through the chain."""
        relay = self._relay
        out = self._upstream_out
        assert relay is not None and out is not None and relay.client_stop is not None
        data = relay.take_client(data)
        if self.upstream is None:
            self._hold_client_bytes(data, 0)
            return
        stop = relay.client_stop
        backend = self.client.backend
        decode = self._proxy._client_frames.decode
        out.begin(data)
        pos = 0
        held = False
        try:
            while True:
                run_end, frame_end = relay.client_run(data, pos, stop)
                if run_end > pos:
                    out.run(pos, run_end)
                pos = run_end
                if frame_end == run_end:
                    break
                message = decode(backend, data, run_end, frame_end)
                pos = frame_end
                out.message = message
                out.frame_start = run_end
                out.frame_end = frame_end
                self._from_client(message, 0)
                if self.is_closed or self._leaving is not None:
                    return
                if pos == len(data):
                    break
                if self.upstream is None:
                    # The connection went back (a Respond ended the transaction):
                    # the rest waits for the next one.
                    held = True
                    break
        finally:
            out.finish()
            relay.keep_client(data, pos)
        error = relay.client_error
        if error is not None:
            relay.client_error = None
            raise error
        if held:
            self._hold_client_bytes(relay.take_client(b""), 0)

    def _hold_client_bytes(self, data: bytes, pos: int) -> None:
        """A pooled session between transactions: client bytes wait for a
        connection; a whole request asks the pool for one (Terminate ends the
        session instead)."""
        relay = self._relay
        assert relay is not None
        relay.keep_client(data, pos)
        if self._held is not None:
            return
        run_end, frame_end = relay.client_run(data, pos, _EVERY_TYPE)  # checks the frame
        if frame_end == run_end:
            return  # not a whole message yet
        if data[pos] == 0x58:  # X
            self._close("client terminated the session")
            return
        self._held = True
        self._pool_checkout()

    def _selective_server_bytes(self, data: bytes) -> None:
        """Server frames, as :meth:`_selective_client_bytes`. While the proxy's
        own query is answered every frame is read, and while nothing is owed
        every frame is checked (only notices, notifications, parameter
        reports and errors may come). A query the hooks send now is answered
        in a later chunk: the server has not seen it yet."""
        relay = self._relay
        upstream = self.upstream
        out = self._client_out
        assert relay is not None and upstream is not None and out is not None
        server_stop = relay.server_stop
        assert server_stop is not None
        data = relay.take_server(data)
        frontend = upstream.frontend
        decode = self._proxy._server_frames.decode
        out.begin(data)
        pos = 0
        try:
            walk = True
            while walk:
                walk = False
                idle = relay.idle
                stops, complete, error = relay.server_stops(
                    data, pos, server_stop if not (self._hidden or idle) else _EVERY_TYPE)
                for start in stops:
                    if start > pos and self._leaving is None:
                        out.run(pos, start)
                    code = data[start]
                    if idle:
                        relay.check_idle(code)
                    pos = start + 1 + int.from_bytes(data[start + 1:start + 5])
                    relay.server_seen(code, data, start, pos)
                    message = decode(frontend, data, start, pos)
                    if relay.fatal:
                        self._fatal_from_upstream = True
                    if code == 0x53:  # S
                        assert isinstance(message, ParameterStatus)
                        self._parameter_reported(message)
                    out.message = message
                    out.frame_start = start
                    out.frame_end = pos
                    self._selective_server_event(message, code)
                    if self.is_closed or self.upstream is not upstream:
                        pos = len(data)  # the rest went with the connection (_hand_back)
                        return
                    if code == 0x5A and not idle and relay.idle and pos < complete:
                        walk = True  # the rest comes while nothing is owed: check it
                        break
                else:
                    if complete > pos and self._leaving is None:
                        out.run(pos, complete)
                    pos = complete
                    if error is not None:
                        raise error
        finally:
            out.finish()
            relay.keep_server(data, pos)

    def _selective_server_event(self, message: Message, code: int) -> None:
        """:meth:`_server_event` for a frame read by selective forwarding."""
        hidden = self._hidden
        if hidden and hidden[0][0] == self._z_seen:
            self._hidden_answer(message)
            return
        if code == 0x5A:  # Z: hooks run before it is counted (see _server_event)
            self._z_arriving = 1
            try:
                self._from_server(message, len(self._chain.middleware) - 1)
            finally:
                self._z_arriving = 0
            return
        if code == 0x45 and self._rejects:
            rewritten = self._rewrite_reject_error(message)
            assert isinstance(rewritten, Message)
            message = rewritten
        self._from_server(message, len(self._chain.middleware) - 1)

    def _parameter_reported(self, status: ParameterStatus) -> None:
        upstream = self.upstream
        assert upstream is not None
        upstream.frontend.parameters[status.name] = status.value
        if status.name == "client_encoding":
            upstream.frontend._set_client_encoding(status.value)
            self.client.backend._set_client_encoding(status.value)

    def _selective_to_client(self, message: Message | RawMessage) -> None:
        """A message for the client, selective forwarding: the frame as it came
        when no hook changed it, else encoded here."""
        relay = self._relay
        out = self._client_out
        assert relay is not None and out is not None
        if out.original(message):
            if message.type_code == b"Z":
                relay.client_status = chr(out._data[out.frame_end - 1])
            return
        if isinstance(message, RawMessage):
            data = bytes(message)
        else:
            if type(message) not in BACKEND_TYPED_CLASSES:
                raise TypeError(f"{type(message).__name__} is not a server message: it "
                                "cannot be sent to the client")
            data = message.encode(self.client.backend.encoding)
            if isinstance(message, ParameterStatus) and message.name == "client_encoding":
                self.client.backend._set_client_encoding(message.value)
        if data[0] == 0x5A and len(data) == 6:  # Z
            relay.client_status = chr(data[5])
        out.write(data)

    def _selective_to_upstream(self, message: Message | RawMessage) -> None:
        """A message for the server, selective forwarding (as :meth:`_selective_to_client`)."""
        relay = self._relay
        upstream = self.upstream
        out = self._upstream_out
        assert relay is not None and upstream is not None and out is not None
        if message is out.message:
            relay.client_sent(out._data[out.frame_start])
            out.original(message)
            return
        if isinstance(message, RawMessage):
            data = bytes(message)
        else:
            if type(message) not in FRONTEND_TYPED_CLASSES:
                raise TypeError(f"{type(message).__name__} is not a client message: it "
                                "cannot be sent to the server")
            data = message.encode(upstream.frontend.encoding)
        relay.client_sent(data[0])
        out.write(data)

    def _hand_back(self, upstream: ClientConnection) -> None:
        """Selective forwarding gives a pooled connection back: server bytes it
        holds (after the frame being read, or an incomplete frame) go back to
        the connection, for the pool to read."""
        relay = self._relay
        out = self._client_out
        if relay is None or out is None:
            return
        self._flush_selective()
        rest = relay.take_server(b"")
        if out.message is not None:  # inside the server walk: what follows the frame
            rest = out._data[out.frame_end:]
        if rest:
            upstream.frontend.receive_data(rest)

    def _flush_selective(self) -> None:
        """Write what selective forwarding holds, before anything written past it."""
        if self._client_out is not None:
            self._client_out.flush()
        if self._upstream_out is not None:
            self._upstream_out.flush()

    def _selective(self) -> bool:
        relay = self._relay
        return relay is not None and relay.client_stop is not None

    def _pending_syncs(self) -> int:
        """ReadyForQuery messages the server still owes."""
        relay = self._relay
        if relay is not None:
            return len(relay.pending)
        upstream = self.upstream
        assert upstream is not None
        return upstream.frontend.pending_syncs

    def _unsynced(self) -> bool:
        """An extended-protocol batch was sent upstream and its Sync not yet."""
        relay = self._relay
        if relay is not None:
            return relay.unsynced
        upstream = self.upstream
        assert upstream is not None
        return upstream.frontend._conversation._unsynced

    def _server_event(self, event: object) -> None:
        state = self.state
        if isinstance(event, ConnectionClosed):
            if self._fatal_from_upstream:
                self._close("the server ended the session")
            else:
                self._fatal("08006", "the upstream server closed the connection unexpectedly")
            return
        if state is SessionState.READY:
            if self._hidden and self._hidden[0][0] == self._z_seen:
                self._hidden_answer(event)
                return
            if self._rejects and isinstance(event, Message | RawMessage) and (
                event.type_code == b"E"
            ):
                # Before any middleware: they see the rejection, not its vehicle.
                event = self._rewrite_reject_error(event)
            if isinstance(event, RawMessage):
                self._to_client(event)
            elif isinstance(event, Message):
                if event.type_code == b"Z":
                    # Hooks run before this ReadyForQuery is counted: what they
                    # send upstream is answered after it.
                    self._z_arriving = 1
                    try:
                        self._from_server(event, len(self._chain.middleware) - 1)
                    finally:
                        self._z_arriving = 0
                else:
                    self._from_server(event, len(self._chain.middleware) - 1)
            return
        self._login_event(event)

    def _login_event(self, event: object) -> None:
        upstream = self.upstream
        assert upstream is not None
        relay = not isinstance(self._proxy.config.auth, ProxyAuth)
        if isinstance(event, RawMessage):
            code = event.type_code
            if code == b"K":
                self._issue_cancel_key()
            elif code == b"Z":
                self._login_complete(event)
            elif code == b"v":
                pass  # we asked for 3.0 without options: nothing to negotiate for the client
            else:
                self._send_client(event)
            return
        if isinstance(event, ErrorResponse):
            self._fatal_from_upstream = event.ends_session
            self._send_client(event)
            if self._fatal_from_upstream:
                self._report_auth(False, sqlstate=event.code, message=event.message)
                self._close(f"the server refused the login: {event.message}")
            return
        if isinstance(event, BackendKeyData):
            self._issue_cancel_key()
        elif isinstance(event, ReadyForQuery):
            self._login_complete(event)
        elif isinstance(event, NegotiateProtocolVersion | SSLResponse | GSSENCResponse):
            pass  # the ClientConnection's own business (encryption, 3.0 asked)
        elif relay and isinstance(event, AuthenticationSASL):
            # Channel binding cannot cross the proxy: the client's TLS ends here.
            mechanisms = tuple(m for m in event.mechanisms if m != _SCRAM_PLUS)
            self._send_client(AuthenticationSASL(mechanisms=mechanisms))
        elif isinstance(event, Authentication):
            if relay:
                self._send_client(event)
            # else: the proxy's own login; the client had its AuthenticationOk from us.
        elif isinstance(event, Message):
            self._send_client(event)

    def _issue_cancel_key(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        keys = self._proxy.cancel_keys
        if self._cancel_key is None:
            self._cancel_key = keys.issue(self.client.backend.protocol_version)
        process_id, secret = self._cancel_key
        server_key = upstream.frontend.backend_key
        if server_key is not None:
            keys.bind(process_id, UpstreamKey(self._proxy.config.upstream, *server_key))
        self._send_client(BackendKeyData(process_id=process_id, secret_key=secret))

    def _login_complete(self, ready: Message | RawMessage) -> None:
        if self._cancel_key is None:
            # A server that sent no BackendKeyData: the client still gets a key
            # (cancels then reach nothing), as clients expect one.
            self._cancel_key = self._proxy.cancel_keys.issue(self.client.backend.protocol_version)
            process_id, secret = self._cancel_key
            self._send_client(BackendKeyData(process_id=process_id, secret_key=secret))
        self._send_client(ready)
        self.state = SessionState.READY
        self._proxy.stats.logins += 1
        self._out.append(CancelTimer(LOGIN_TIMER))
        roles = self.roles
        roles.login_role = self._upstream_user
        roles.session_user = self.server_parameters.get("session_authorization",
                                                        self._upstream_user)
        config = self._proxy.config
        chain = self._chain
        if not config.check_protocol and self._relay is None and (
            chain.client_codes or chain.server_codes
        ):
            # Before the hooks: a query they send goes by the relay's books.
            self._start_forwarding(selective=True)
        self._report_auth(True)
        if self.state is SessionState.READY:
            if not config.check_protocol and self._relay is None:
                self._start_forwarding(selective=bool(self._hidden))
            self._after_ready_for_query(count=False)

    def _start_forwarding(self, *, selective: bool) -> None:
        """Login is over: from here frames are delimited and counted (``_relay.py``),
        not run through both state machines. Selective: frames stop where some
        middleware (or the session) reads them; everything between goes as it came."""
        upstream = self.upstream
        assert upstream is not None
        conversation = upstream.frontend._conversation
        chain = self._chain
        relay = Relay(limit=self._proxy.config.max_message_size,
                      pending=deque(conversation._pending),
                      unsynced=conversation._unsynced,
                      status=self.client.backend.transaction_status)
        if selective:
            relay.client_stop = shared(
                _CLIENT_STOPS.union(code[0] for code in chain.client_codes))
            relay.server_stop = shared(
                _SERVER_STOPS.union(code[0] for code in chain.server_codes))
            self._client_out = Outbound(self.client._channel)
            self._upstream_out = Outbound(upstream._channel)
        self._relay = relay

    def _report_auth(self, ok: bool, *, sqlstate: str | None = None,
                     message: str | None = None) -> None:
        startup = self.startup or self.client.backend.startup
        user = self._client_user()
        upstream_user = (startup.get("user") or "") if startup is not None else ""
        database = (startup.get("database") or upstream_user) if startup is not None else ""
        result = AuthResult(ok=ok, user=user, database=database,
                            upstream_user=self._upstream_user if ok else None,
                            method=self._client_auth_method,
                            parameters=dict(self.server_parameters),
                            sqlstate=sqlstate, message=message)
        if not ok:
            self._proxy.stats.login_failures += 1
        for index, middleware in enumerate(self._chain.middleware):
            verdict = middleware.on_authenticated(self._chain.contexts[index], result)
            if ok and isinstance(verdict, Reject):
                self._send_client(verdict.error("FATAL"))
                self._finish_with_terminate(f"login rejected by {middleware!r}")
                return

    def _after_ready_for_query(self, *, count: bool = True) -> None:
        if count:
            self._z_seen += 1
            deferred = self._deferred
            while deferred and deferred[0][0] <= self._z_seen:
                _, messages, outer = deferred.popleft()
                self._send_response(messages, outer)
        upstream = self.upstream
        if upstream is None:
            return
        relay = self._relay
        if (relay.pending if relay is not None else upstream.frontend.pending_syncs) or (
            self._deferred
        ):
            return
        if self._leaving is not None and not self._requests_open():
            self._close(self._leaving)
            return
        if self._rejects and not self._requests_open():
            # Nothing is in flight: a rejection whose error never came (the server
            # skipped it after an earlier error) will not come now. (An open
            # extended batch is in flight too: its Sync may not have come yet
            # when the answer to an earlier request, or to the proxy's own
            # query, ends.)
            self._rejects.clear()
        if self._draining and self._at_rest():
            self._fatal("57P01", "terminating connection due to administrator command")
            return
        if self._server is not None and (
            self._pool is not None and self._pool.config.mode == "transaction"
        ) and self._releasable():
            if self._pool_pins:
                self._pool_note("pinned_transactions")
            else:
                self._detach()
        config = self._proxy.config
        seconds = config.idle_timeout if self.transaction_status == "I" else (
            config.idle_in_transaction_timeout)
        if seconds is not None:
            self._idle_armed = True
            self._out.append(StartTimer(IDLE_TIMER, seconds))

    def _requests_open(self) -> bool:
        """Requests sent upstream and not yet answered, or an open extended batch."""
        relay = self._relay
        if relay is not None:
            return bool(relay.pending) or relay.unsynced or self._held is not None
        upstream = self.upstream
        if upstream is None:
            return self._held is not None
        return upstream.frontend.busy

    def _at_rest(self) -> bool:
        """No request in flight and no transaction open: safe to end the session."""
        if self.state is not SessionState.READY:
            return True
        relay = self._relay
        if relay is not None:
            if relay.client_stop is None:
                return relay.at_rest
            return relay.at_rest and not self._deferred and relay.client_status == "I"
        upstream = self.upstream
        if upstream is None and self._pool is not None:
            return self._held is None and self.transaction_status == "I"
        return (upstream is not None and upstream.frontend.phase is Phase.READY
                and not upstream.frontend.pending_syncs and not self._deferred
                and self.transaction_status == "I")

    def _hidden_answer(self, event: object) -> None:
        """A message answering a request the proxy injected: eat it (or collect
        it for the middleware that asked with ``ctx.query``)."""
        collector = self._hidden[0][1]
        if (isinstance(event, RawMessage) and event.type_code == b"Z") or isinstance(
            event, ReadyForQuery
        ):
            self._hidden.popleft()
            if collector is not None:
                collector.finish()
            # Counts it, and sends Respond answers that were waiting for it.
            self._after_ready_for_query()
        elif isinstance(event, ErrorResponse):
            if event.ends_session:
                self._fatal_from_upstream = True
                self._send_client(event)
            elif collector is not None and collector.error is None:
                collector.error = event
        elif isinstance(event, Message | RawMessage) and event.type_code in b"AS":
            # Not part of the answer: a notification or a setting report the server
            # sends whenever it likes. They are the client's, as between its own
            # statements (a LISTENing client would miss one otherwise).
            if isinstance(event, Message):
                self._from_server(event, len(self._chain.middleware) - 1)
            else:
                self._to_client(event)
        elif collector is not None and isinstance(event, Message | RawMessage) and (
            event.type_code == b"D"
        ):
            upstream = self.upstream
            assert upstream is not None
            row = upstream.frontend.decode(event) if isinstance(event, RawMessage) else event
            assert isinstance(row, DataRow)
            encoding = upstream.frontend.encoding
            collector.rows.append(tuple(None if v is None else bytes(v).decode(encoding)
                                        for v in row.values))

    # -- middleware chains -------------------------------------------------------------

    def _from_client(self, message: Message, start: int) -> None:
        chain = self._chain
        code = message.type_code
        for index in range(start, len(chain.middleware)):
            middleware = chain.middleware[index]
            if code not in middleware.client_messages:
                continue
            verdict = middleware.on_client_message(chain.contexts[index], message)
            if verdict is None or type(verdict) is Forward:
                continue
            if isinstance(verdict, Replace):
                for replacement in verdict.messages:
                    self._from_client(replacement, index + 1)
                return
            if isinstance(verdict, Inject):
                self._inject(verdict)
                continue
            if isinstance(verdict, Respond):
                self._respond(message, verdict, middleware, index - 1)
                return
            if isinstance(verdict, Reject):
                self._reject(message, verdict, middleware)
                return
            raise TypeError(f"{middleware!r}.on_client_message returned {verdict!r}")
        self._to_upstream(message)

    def _from_server(self, message: Message, start: int,
                     deliver: Callable[[Message], None] | None = None) -> None:
        chain = self._chain
        code = message.type_code
        for index in range(start, -1, -1):
            middleware = chain.middleware[index]
            if code not in middleware.server_messages:
                continue
            verdict = middleware.on_server_message(chain.contexts[index], message)
            if verdict is None or type(verdict) is Forward:
                continue
            if isinstance(verdict, Replace):
                for replacement in verdict.messages:
                    self._from_server(replacement, index - 1, deliver)
                return
            if isinstance(verdict, Inject):
                self._inject(verdict)
                continue
            if isinstance(verdict, Reject):
                self._send_client(verdict.error("FATAL"))
                self._finish_with_terminate(f"server message rejected by {middleware!r}: "
                                            f"{verdict.message}")
                return
            raise TypeError(f"{middleware!r}.on_server_message returned {verdict!r}")
        if deliver is None:
            self._to_client(message)
        else:
            deliver(message)

    def _to_upstream(self, message: Message | RawMessage) -> None:
        out = self._upstream_out
        if out is not None and message is out.message and message.type_code != b"X":
            # Selective forwarding, a frame every hook let through: its bytes.
            relay = self._relay
            assert relay is not None
            relay.client_sent(out._data[out.frame_start])
            out.run(out.frame_start, out.frame_end)
            if self._query_backlog:
                self._send_query_backlog()
            return
        upstream = self.upstream
        assert upstream is not None
        if isinstance(message, Terminate):
            self._client_left("client terminated the session")
            return
        if self._selective():
            self._selective_to_upstream(message)
        else:
            upstream.send(message)
        if self._query_backlog:
            self._send_query_backlog()

    def _to_client(self, message: Message | RawMessage) -> None:
        code = message.type_code
        if code == b"E" and isinstance(message, ErrorResponse) and (
            message.ends_session
        ):
            self._fatal_from_upstream = True
        out = self._client_out
        if out is not None and message is out.message and self._leaving is None:
            # Selective forwarding, a frame every hook let through: its bytes.
            out.run(out.frame_start, out.frame_end)
            if code == b"Z":
                relay = self._relay
                assert relay is not None
                relay.client_status = chr(out._data[out.frame_end - 1])
        else:
            self._send_client(message)
        if code == b"Z":
            self._after_ready_for_query()

    def _inject(self, verdict: Inject) -> None:
        for injected in verdict.to_client:
            self._send_client(injected)
        self._inject_to_server(verdict.to_server)

    def _inject_to_server(self, messages: tuple[Message, ...]) -> None:
        if messages and self._unsynced():
            # Its answers would land inside the client's batch, and with no Sync
            # of its own a failure would swallow the client's messages.
            raise TypeError("Inject(to_server=...) while the client's extended-protocol "
                            "batch is open: inject at a Query, or at the first message "
                            "after a Sync")
        for message in messages:
            self._send_hidden(message, None)

    def _send_hidden(self, message: Message, collector: _Collector | None) -> None:
        upstream = self.upstream
        assert upstream is not None
        before = self._pending_syncs()
        if self._selective():
            self._selective_to_upstream(message)
        else:
            upstream.send(message)
        if self._pending_syncs() > before:
            # The answer to this unit comes after every answer owed before it.
            if self._hidden is _NO_ENTRIES:
                self._hidden = deque()
            self._hidden.append((self._z_seen + self._z_arriving + before, collector))

    def _query(self, sql: str, then: Callable[[QueryResult], None]) -> None:
        if self.state is not SessionState.READY or self.upstream is None or (
            self._relay is not None and self._relay.client_stop is None
        ):
            raise RuntimeError("ctx.query() needs a logged-in session whose middleware "
                               "reads messages and that holds its server connection "
                               "(call it from on_authenticated or a message hook)")
        collector = _Collector(sql, then)
        if self._unsynced():
            # Behind the client's open batch: sent once its Sync has gone.
            self._query_backlog.append(collector)
        else:
            self._send_hidden(Query(query=sql), collector)

    def _send_query_backlog(self) -> None:
        if self._unsynced():
            return
        backlog, self._query_backlog = self._query_backlog, []
        for collector in backlog:
            self._send_hidden(Query(query=collector.sql), collector)

    def _respond(self, message: Message, verdict: Respond, middleware: Middleware[Any],
                 outer: int) -> None:
        if not isinstance(message, Query | FunctionCall):
            raise TypeError(f"{middleware!r} answered a {type(message).__name__} with "
                            "Respond: only a Query or FunctionCall can be answered so")
        if not verdict.messages or not isinstance(verdict.messages[-1], ReadyForQuery):
            raise TypeError(f"{middleware!r}: a Respond must end with ReadyForQuery")
        # Requests the proxy injected are in pending_syncs already.
        owed = self._pending_syncs()
        if owed == 0 and not self._deferred:
            self._send_response(verdict.messages, outer)
            self._after_ready_for_query(count=False)
        else:
            if self._deferred is _NO_ENTRIES:
                self._deferred = deque()
            self._deferred.append((self._z_seen + owed, verdict.messages, outer))

    def _send_response(self, messages: tuple[Message, ...], outer: int) -> None:
        """A Respond's answer goes through the server hooks of the middleware
        listed before the responder (as the server's answer would), then to
        the client."""
        for message in messages:
            self._from_server(message, outer, self._send_client)

    def _reject(self, message: Message, verdict: Reject, middleware: Middleware[Any]) -> None:
        self._proxy.stats.rejected += 1
        if not isinstance(message, _REJECTABLE):
            self._send_client(verdict.error("FATAL"))
            self._finish_with_terminate(f"{type(message).__name__} rejected by "
                                        f"{middleware!r}: {verdict.message}")
            return
        # The server raises an error in the statement's place, so both sides agree
        # on what follows (failed transaction, skip to Sync); the proxy swaps the
        # server's error for the rejection's when it comes back.
        # A new number each time: a pending rejection's name must never be reused.
        self._reject_count += 1
        token = f"pgwire_reject_{self._reject_token}_{self._reject_count}"
        self._rejects[token] = verdict
        statement = f"SELECT pg_catalog.{token}()"
        if isinstance(message, Query | FunctionCall):
            self._to_upstream(Query(query=statement))
        else:
            self._to_upstream(Parse(statement=token, query=statement, parameter_types=()))

    def _rewrite_reject_error(self, message: Message | RawMessage) -> Message | RawMessage:
        error = message if isinstance(message, ErrorResponse) else None
        if error is None:
            upstream = self.upstream
            assert upstream is not None and isinstance(message, RawMessage)
            decoded = upstream.frontend.decode(message)
            assert isinstance(decoded, ErrorResponse)
            error = decoded
        if error.code == "42883":
            for token, verdict in self._rejects.items():
                if f"{token}(" in (error.message or ""):
                    del self._rejects[token]
                    return verdict.error()
        if error.ends_session:
            self._fatal_from_upstream = True
        return message

    # -- pooling -----------------------------------------------------------------------

    def take(self) -> list[Action]:
        """Actions produced outside a call of this session (by the pool handing it
        a connection, or bytes of its connection): the adapter takes them when
        the proxy reports the session in :meth:`Proxy.take_woken`."""
        if self.is_closed:
            out, self._out = self._out, []
            return out
        return self._take()

    def _pool_checkout(self, password: str | ScramKeys | None = None) -> None:
        pool = self._pool
        key = self._pool_key
        assert pool is not None and key is not None
        pool.checkout(self, key, password)
        if self._server is None and not self.is_closed:
            # Not handed a connection at once: wait, but not forever.
            self._checkout_armed = True
            self._out.append(StartTimer(CHECKOUT_TIMER, pool.config.checkout_timeout))

    def _attach(self, server: PooledServer) -> None:
        """The pool hands this session ``server`` (checked, idle, verified)."""
        if self.is_closed:
            raise RuntimeError("a pooled connection was handed to a closed session")
        if self._checkout_armed:
            self._checkout_armed = False
            self._out.append(CancelTimer(CHECKOUT_TIMER))
        self._server = server
        self.upstream = server.conn
        self._read_held = False  # a connection of its own now
        self._attachments += 1
        relay = self._relay
        if relay is not None:
            # Selective forwarding continues on this connection (idle, verified).
            relay.status = "I"
            relay.keep_server(server.conn.frontend._buffer.take_all(), 0)
            if self._upstream_out is not None:
                self._upstream_out.channel = server.conn._channel
        try:
            if self.state is SessionState.CONNECTING:
                self._pool_login(server)
            else:
                self._bind_cancel_key()
                self._report_parameters(server)
                self._client_events()
        except ProtocolError as exc:
            self._client_broke(exc)
        except Exception as exc:
            self._internal_error(exc)
        self._proxy._wake(self)

    def _pool_login(self, server: PooledServer) -> None:
        """The client's login ends on a pooled connection: it sees what a fresh
        login reported (the key holds every startup parameter it sent)."""
        pool = self._pool
        assert pool is not None and self._pool_key is not None
        self._params_view = dict(server.conn.frontend.parameters)
        for name, value in self._params_view.items():
            self._send_client(ParameterStatus(name=name, value=value))
        pool.client_joined(self._pool_key)
        self._issue_cancel_key()
        self._login_complete(ReadyForQuery(status=TransactionStatus.IDLE))
        if self._relay is not None and not self.is_closed:
            # What the client sent behind its login.
            rest = self.client.backend._buffer.take_all()
            if rest:
                self._relay_client_bytes(rest)

    def _report_parameters(self, server: PooledServer) -> None:
        """Parameters that differ on this connection from what the client was told
        (a setting reset at the end of its last transaction): tell it, as a
        server reports a change."""
        view = self._params_view
        parameters = server.conn.frontend.parameters
        if parameters == view:
            return
        for name, value in parameters.items():
            if view.get(name) != value:
                view[name] = value
                self._send_client(ParameterStatus(name=name, value=value))

    def _bind_cancel_key(self) -> None:
        key = self._cancel_key
        upstream = self.upstream
        if key is None:
            return
        server_key = upstream.frontend.backend_key if upstream is not None else None
        self._proxy.cancel_keys.bind(key[0], None if server_key is None else UpstreamKey(
            self._proxy.config.upstream, *server_key))

    def _releasable(self) -> bool:
        """Between transactions with nothing in flight: the connection may go back."""
        upstream = self.upstream
        relay = self._relay
        if relay is not None:
            busy = bool(relay.pending) or relay.unsynced or relay.status != "I"
        else:
            busy = upstream is not None and (upstream.frontend.busy
                                             or upstream.frontend.transaction_status != "I")
        return (upstream is not None and self.state is SessionState.READY
                and not busy and not self._deferred and not self._hidden
                and not self._query_backlog and self._held is None
                and self.transaction_status == "I")

    def _detach(self) -> None:
        """Give the connection back at the end of a transaction."""
        server = self._server
        pool = self._pool
        assert server is not None and pool is not None and self.upstream is not None
        self._hand_back(self.upstream)
        self._flush_link(self.upstream, MAIN_LINK)
        self._server = None
        self.upstream = None
        self._bind_cancel_key()
        reset, self._pool_dirty = self._pool_dirty, set()
        pool.release(server, ending=False, healthy=True, reset=reset)

    def _pool_leave(self) -> None:
        """The session ends: its connection goes back (reset) or is closed."""
        pool = self._pool
        assert pool is not None
        if self._checkout_armed:
            self._checkout_armed = False
            self._out.append(CancelTimer(CHECKOUT_TIMER))
        if self._chain.contexts:
            # The statements this client prepared (transaction mode: the pool's
            # middleware, last in the chain, named them) go with it, from
            # every connection.
            pool.orphan(self._chain.contexts[-1].state.parses)
        server = self._server
        key = self._pool_key
        if server is None:
            if key is not None:
                pool.cancel_wait(self)
                if self.state is not SessionState.CONNECTING:
                    pool.client_left(key)
            return
        upstream = self.upstream
        assert upstream is not None and key is not None
        relay = self._relay
        healthy = (not self._fatal_from_upstream and upstream._channel.error is None
                   and not self._hidden and not self._deferred and self._held is None
                   and (relay is None or (not relay.pending and not relay.unsynced
                                          and relay.status == "I"
                                          and not self._upstream_failed)))
        self._hand_back(upstream)
        with contextlib.suppress(ProtocolError):
            self._flush_link(upstream, MAIN_LINK)
        self._server = None
        self.upstream = None
        if self.state is not SessionState.CONNECTING:
            pool.client_left(key)
        reset = self._pool_dirty | self._pool_pins
        pool.release(server, ending=True, healthy=healthy, reset=reset)

    def _pool_failed(self, code: str, message: str, error: ErrorResponse | None = None) -> None:
        """No connection for this session: the server refused the login, or the
        pool could not open one."""
        if self.is_closed:
            return
        if error is not None and error.ends_session:
            self._send_client(error)
            self._report_auth(False, sqlstate=error.code, message=error.message)
            self._close(f"the server refused the login: {error.message}")
        else:
            self._fatal(code, message)
        self._proxy._wake(self)

    def _checkout_timed_out(self) -> None:
        pool = self._pool
        if pool is None or self._server is not None or self._pool_key is None:
            return
        pool.checkout_timed_out(self, self._pool_key)
        self._fatal("53300", f"no server connection became free within "
                    f"{pool.config.checkout_timeout:g} s (pool of "
                    f"{pool.config.max_size} for {self._pool_key.label()})")

    def _pool_note(self, counter: str) -> None:
        if self._pool is not None and self._pool_key is not None:
            self._pool.note(self._pool_key, counter)

    # -- helpers -----------------------------------------------------------------------

    def _inject_to_client(self, message: Message) -> None:
        if not self.is_closed:
            self._send_client(message)
            self._flush_client()

    def _submit(self, job: Callable[[], object],
                then: Callable[[JobOutcome], None] | None) -> bool:
        if len(self._jobs) >= self._proxy.config.max_pending_jobs:
            self._proxy.stats.jobs_refused += 1
            return False
        self._next_job += 1
        self._jobs[self._next_job] = then
        self._out.append(RunJob(self._next_job, job))
        return True

    def _send_client(self, message: Message | RawMessage) -> None:
        if self._leaving is None:  # else nobody is there to read it
            relay = self._relay
            if relay is not None and relay.client_stop is not None:
                self._selective_to_client(message)
            else:
                self.client.send(message)

    def _flush_client(self) -> None:
        data = self.client.data_to_send()
        if data:
            self._out.append(SendToClient(data))

    def _flush_link(self, link: ClientConnection, number: int) -> None:
        data = link.data_to_send()
        if data:
            if number == MAIN_LINK and self._pool is not None:
                self._pool.write(link, data)
            else:
                self._out.append(SendToUpstream(data, number))

    def _take(self) -> list[Action]:
        if not self._read_armed:
            seconds = self._proxy.config.upstream_read_timeout
            if seconds is not None:
                self._arm_read_timer(seconds)
        if self.state != SessionState.CLOSED:
            channel = self.client._channel
            if channel._outgoing or channel.tls is not None:
                self._flush_client()
            upstream = self.upstream
            if upstream is not None:
                channel = upstream._channel
                if channel._outgoing or channel.tls is not None:
                    self._flush_link(upstream, MAIN_LINK)
        out = self._out
        self._out = []
        return out

    def _cancel(self, request: CancelRequest) -> None:
        route = self._proxy.cancel_keys.route(request)
        self._proxy.stats.cancel_requests += 1
        if route is None:
            self._close("cancel request matched no session")
            return
        self._cancel_route = route
        self.state = SessionState.CANCEL
        self._out.append(OpenUpstream(CANCEL_LINK, route.address,
                                      self._proxy.config.connect_timeout))

    def _client_broke(self, exc: ProtocolError) -> None:
        self._proxy.stats.client_protocol_errors += 1
        if isinstance(exc, TLSError | LoginRefused) or self.client.backend.phase is Phase.CLOSED:
            self._close(f"client error: {exc.message}")
            return
        self._fatal(exc.sqlstate or "08P01", exc.message)

    def _upstream_broke(self, exc: ProtocolError) -> None:
        self._proxy.stats.upstream_errors += 1
        self._upstream_failed = True
        if isinstance(exc, TLSError):
            # The server broke no protocol: the proxy could not set up (or keep) TLS with
            # it, as libpq fails a connection whose certificate does not verify.
            if self.state is SessionState.READY:
                self._fatal("08006", f"TLS with the upstream server failed: {exc.message}")
            else:
                self._fatal("08001", f"could not establish TLS with the upstream server: "
                                     f"{exc.message}")
        elif self.state is not SessionState.READY and isinstance(exc, RemoteProtocolError) and (
            exc.sqlstate not in (None, "08P01")
        ):
            # LoginRefused, SCRAM failures: the proxy's own login upstream.
            self._fatal(exc.sqlstate, f"the proxy could not log in upstream: {exc.message}")
        elif exc.sqlstate not in (None, "08P01"):
            self._fatal(exc.sqlstate, f"upstream error: {exc.message}")
        else:
            self._fatal("08P01", f"upstream protocol error: {exc.message}")

    def _internal_error(self, exc: Exception) -> None:
        self._proxy.stats.internal_errors += 1
        self._proxy._log_exception(self, exc)
        self._fatal("XX000", f"internal error in the proxy: {type(exc).__name__}: {exc}")

    def _fatal(self, code: str, message: str) -> None:
        """End the session with a FATAL error the client sees as PostgreSQL's."""
        if self.is_closed:
            return
        try:
            if self.client.backend.phase not in (Phase.CLOSED, Phase.CANCEL) and (
                self.client.backend.startup is not None
            ):
                self._send_client(_error(code, message))
        except ProtocolError:
            pass  # the client's side is past receiving anything
        self._finish_with_terminate(message)

    def _client_left(self, reason: str) -> None:
        """The client said Terminate or closed its end. A pooled session whose
        requests are still running waits for their answers first (as a server
        runs a query that came before Terminate), so the connection goes back
        to the pool at rest instead of being closed mid-request."""
        if self._pool is not None and self._server is not None and self._requests_open() and (
            not self._fatal_from_upstream
        ):
            self._leaving = reason
            return
        self._finish_with_terminate(reason)

    def _finish_with_terminate(self, reason: str) -> None:
        self._flush_selective()
        upstream = self.upstream
        if upstream is not None and self._pool is None:
            try:
                if upstream.frontend.phase not in (Phase.CLOSED, Phase.STARTUP,
                                                   Phase.SSL_NEGOTIATION):
                    upstream.send(Terminate())
                self._flush_link(upstream, MAIN_LINK)
            except ProtocolError:
                pass
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.is_closed:
            return
        self._flush_selective()
        tls = self.client._channel.tls
        if tls is not None and tls.handshake_complete:
            tls.close()  # close_notify: libpq treats a TLS end without it as an error
        with contextlib.suppress(ProtocolError):
            self._flush_client()
        if self._pool is not None:
            self._pool_leave()
        for link, conn in ((MAIN_LINK, self.upstream), (AUTH_LINK, self.auth_link)):
            if conn is not None and (link != MAIN_LINK or self._pool is None):
                self._out.append(CloseUpstream(link))
        self._out.append(CancelTimer(LOGIN_TIMER))
        if self._idle_armed:
            self._out.append(CancelTimer(IDLE_TIMER))
        if self._read_armed:
            self._read_armed = False
            self._out.append(CancelTimer(UPSTREAM_READ_TIMER))
        self.state = SessionState.CLOSED
        self.close_reason = reason
        self._out.append(CloseClient(reason))
        if self._cancel_key is not None:
            self._proxy.cancel_keys.release(self._cancel_key[0])
        for index, middleware in enumerate(self._chain.middleware):
            try:
                middleware.on_session_end(self._chain.contexts[index], reason)
            except Exception as exc:
                self._proxy._log_exception(self, exc)


class _Collector:
    """The answer to one ``ctx.query``, gathered for its callback."""

    __slots__ = ("error", "rows", "sql", "then")

    def __init__(self, sql: str, then: Callable[[QueryResult], None]) -> None:
        self.sql = sql
        self.then = then
        self.rows: list[tuple[str | None, ...]] = []
        self.error: ErrorResponse | None = None

    def finish(self) -> None:
        # Like any hook, an exception here ends the session with XX000.
        self.then(QueryResult(rows=tuple(self.rows), error=self.error))


class _LookupError(Exception):
    """The auth query failed or answered in an unusable shape."""


class _AuthLookup:
    """The auth query's own connection: log in, ask, read one row, done."""

    __slots__ = ("asked", "link", "query", "rows", "secret", "user")

    def __init__(self, query: AuthQuery, user: str, link: ClientConnection) -> None:
        self.query = query
        self.user = user
        self.link = link
        self.asked = False
        self.rows: list[DataRow] = []
        self.secret: str | None = None

    def receive(self, data: bytes) -> bool:
        """Feed bytes; True once the secret (or its absence) is known."""
        link = self.link
        link.receive_data(data)
        while True:
            event = link.next_event()
            if event is NEED_DATA:
                return False
            if isinstance(event, ConnectionClosed):
                raise _LookupError("the server closed the auth query's connection")
            if isinstance(event, ErrorResponse):
                raise _LookupError(f"{event.code}: {event.message}")
            if isinstance(event, DataRow):
                self.rows.append(event)
            elif isinstance(event, ReadyForQuery):
                if not self.asked:
                    self.asked = True
                    link.send(Parse(statement="", query=self.query.query, parameter_types=()))
                    link.send(Bind(portal="", statement="", parameter_formats=(),
                                   parameters=(self.user.encode(link.frontend.encoding),),
                                   result_formats=()))
                    link.send(Execute(portal="", max_rows=2))
                    link.send(Sync())
                    continue
                return self._result()

    def _result(self) -> bool:
        if len(self.rows) > 1:
            raise _LookupError(f"the auth query returned more than one row for "
                               f"{self.user!r}")
        if self.rows:
            values = self.rows[0].values
            if len(values) != 2:
                raise _LookupError(f"the auth query must return 2 columns, not {len(values)}")
            value = values[1]
            self.secret = None if value is None else bytes(value).decode(
                self.link.frontend.encoding)
        return True


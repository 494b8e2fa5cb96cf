"""The middleware API: hooks, verdicts and the per-session context.

A middleware is a class with hooks that the proxy :class:`~pgwire.proxy.Session`
calls in chain order. It names the message types it wants to see in
:attr:`Middleware.client_messages` and :attr:`Middleware.server_messages`;
everything else passes by as undecoded frames and costs it nothing.

Every hook runs inside the sans-IO session: it must not block. Work that needs
I/O (writing audit records, loading data) goes through :meth:`Context.submit`,
which hands a function to the adapter's bounded worker pool and calls back
into the session with its result.

See ``docs/middleware.md`` for the guide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, TypeVar

from ..protocol import ErrorResponse, Message, StartupMessage
from ..roles._state import SessionRoles

if TYPE_CHECKING:
    from ..proxy._session import Session
    from ..tls import TLSInfo

__all__ = [
    "FORWARD",
    "AuthResult",
    "Context",
    "Forward",
    "Inject",
    "JobOutcome",
    "Middleware",
    "QueryResult",
    "Reject",
    "Replace",
    "Respond",
    "SessionInfo",
    "StartupVerdict",
    "Verdict",
]

StateT = TypeVar("StateT")


# -- verdicts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forward:
    """Pass the message on unchanged (to the next middleware, then the peer)."""


#: The verdict a hook returns when it has nothing to change; ``None`` means the same.
FORWARD: Final = Forward()


@dataclass(frozen=True, slots=True, init=False)
class Replace:
    """Send these messages instead of the one the hook was given.

    For a client message they go toward the server, for a server message toward
    the client, each through the rest of the chain. ``Replace()`` drops the
    message: the peer never sees it, so keep the protocol whole (dropping a
    Query means the client waits for an answer that never comes).
    """

    messages: tuple[Message, ...]

    def __init__(self, *messages: Message) -> None:
        object.__setattr__(self, "messages", messages)


@dataclass(frozen=True, slots=True, kw_only=True)
class Inject:
    """Forward the message, and also send others toward either side.

    ``to_client`` messages are sent to the client just before the forwarded
    message, when the protocol allows them there (NoticeResponse,
    ParameterStatus and NotificationResponse always are). ``to_server`` must
    be whole requests (a Query, or extended-protocol messages ending with
    Sync); they go to the server before the forwarded message and their
    results, errors included, are consumed by the proxy, never shown to the
    client. A FATAL error, a ParameterStatus and a NotificationResponse among
    them are not results: those reach the client.
    """

    to_client: tuple[Message, ...] = ()
    to_server: tuple[Message, ...] = ()


@dataclass(frozen=True, slots=True, init=False)
class Respond:
    """Answer a client's Query (or FunctionCall) here, without the server.

    The messages go to the client in place of the server's answer, in order
    with the answers to requests already in flight; they must end with
    ReadyForQuery. Only a Query or FunctionCall can be answered this way: the
    extended protocol's answers are tied to the server's state.
    """

    messages: tuple[Message, ...]

    def __init__(self, *messages: Message) -> None:
        object.__setattr__(self, "messages", messages)


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the message with an error the client sees as PostgreSQL's.

    For a Query or an extended-protocol request the client gets an
    ErrorResponse with this SQLSTATE, and the server's transaction state
    follows: the proxy makes the server raise the very same error in the
    rejected statement's place, so a transaction block ends up failed on
    both sides and the extended protocol skips to Sync on both sides. In
    startup, for other messages, and for server messages, the session ends
    with a FATAL error instead.
    """

    sqlstate: str
    message: str
    detail: str | None = None
    hint: str | None = None

    def error(self, severity: str = "ERROR") -> ErrorResponse:
        """The ErrorResponse this rejection is reported with."""
        return ErrorResponse(severity=severity, severity_nonlocalized=severity,
                             code=self.sqlstate, message=self.message, detail=self.detail,
                             hint=self.hint)


Verdict = Forward | Replace | Inject | Respond | Reject | None
StartupVerdict = StartupMessage | Reject | None


# -- what hooks are told ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionInfo:
    """Facts about a session, fixed when it starts."""

    session_id: int
    client_address: tuple[str, int] | str | None
    tls: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResult:
    """How the login ended: ``ok``, who logged in, and how.

    ``user`` and ``database`` are the client's (after any startup rewrite);
    ``upstream_user`` is the role the proxy logged in as upstream;
    ``method`` the client's authentication method as the proxy saw it
    (``passthrough`` when the server's exchange was relayed). On failure
    ``sqlstate`` and ``message`` say why.
    """

    ok: bool
    user: str
    database: str
    upstream_user: str | None
    method: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    sqlstate: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What a job handed to :meth:`Context.submit` came back with."""

    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """True when the job returned instead of raising."""
        return self.error is None


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The answer to :meth:`Context.query`: the rows as text, or the server's error."""

    rows: tuple[tuple[str | None, ...], ...] = ()
    error: ErrorResponse | None = None

    @property
    def ok(self) -> bool:
        """True when the server ran the query without error."""
        return self.error is None


class Context(Generic[StateT]):
    """What a hook gets: its own per-session ``state``, facts about the
    session, and ways to send messages or start background work.

    One context exists per middleware per session; the proxy creates it with
    the state from :meth:`Middleware.create_state`.
    """

    __slots__ = ("_index", "_session", "info", "state")

    def __init__(self, session: Session, index: int, info: SessionInfo, state: StateT) -> None:
        self._session = session
        self._index = index
        #: Facts fixed at the start of the session.
        self.info = info
        #: This middleware's own per-session state.
        self.state = state

    @property
    def startup(self) -> StartupMessage | None:
        """The StartupMessage as forwarded upstream (after rewrites), once known."""
        return self._session.startup

    @property
    def parameters(self) -> Mapping[str, str]:
        """ParameterStatus values the server reported to this session."""
        return self._session.server_parameters

    @property
    def transaction_status(self) -> str:
        """'I', 'T' or 'E': the client's view, from the last ReadyForQuery."""
        return self._session.transaction_status

    @property
    def user(self) -> str:
        """The startup user (the client's, after any rewrite)."""
        startup = self._session.startup
        return (startup.get("user") or "") if startup is not None else ""

    @property
    def roles(self) -> SessionRoles:
        """The session's roles, shared by every middleware of this session.

        The proxy fills ``client_user``, ``database``, ``login_role`` and
        ``session_user``; a role tracker (the :class:`~pgwire.middleware.roles.RoleGuard`'s)
        keeps ``current_user`` current. See :class:`~pgwire.roles.SessionRoles`.
        """
        return self._session.roles

    @property
    def backend_pid(self) -> int | None:
        """The process id of the upstream server backend, once logged in."""
        upstream = self._session.upstream
        key = upstream.frontend.backend_key if upstream is not None else None
        return key[0] if key is not None else None

    @property
    def tls_info(self) -> TLSInfo | None:
        """What the client's TLS handshake established, when it used TLS."""
        return self._session.client.tls_info

    def query(self, sql: str, then: Callable[[QueryResult], None]) -> None:
        """Run ``sql`` (a simple query) on the session's own upstream connection.

        It goes to the server after the requests already sent, and before the
        client's next one (after the client's Sync when an extended batch is
        open). Its answer never reaches the client: ``then`` gets the rows
        (as text) or the error, inside the session, when the answer is
        complete. The query runs in the client's session, so it sees (and can
        change) the session's settings, role and transaction; keep it to
        reads such as ``SELECT current_user``. In a failed transaction block
        it fails too (25P02). Callable once the login is complete and only
        when some middleware of the chain reads messages (the session then
        stays on the checked path).
        """
        self._session._query(sql, then)

    def send_to_client(self, message: Message) -> None:
        """Queue an asynchronous message (NoticeResponse, ParameterStatus,
        NotificationResponse) for the client, outside any verdict."""
        self._session._inject_to_client(message)

    def submit(self, job: Callable[[], object],
               then: Callable[[JobOutcome], None] | None = None) -> bool:
        """Run ``job`` outside the data path, in the adapter's worker pool.

        Returns False, and runs nothing, when this session already has
        :attr:`~pgwire.proxy.ProxyConfig.max_pending_jobs` jobs waiting: the
        bound that keeps a slow sink from growing memory without limit. The
        caller decides what a refusal means (an audit middleware should
        :class:`Reject` the statement rather than lose its record). ``then``
        runs inside the session, with the outcome, when the job ends; it may
        call :meth:`send_to_client`.
        """
        return self._session._submit(job, then)


class Middleware(Generic[StateT]):
    """Base class for middleware: override the hooks you need.

    - :attr:`client_messages` / :attr:`server_messages`: type bytes (such as
      ``b"Q"``, ``b"P"``, ``b"T"``) whose messages this middleware sees,
      decoded. Only these types are decoded for it; the rest pass by as frames.
    - :meth:`create_state`: a fresh per-session state object, reached as
      ``ctx.state`` in every hook.
    - Hooks return a verdict: :data:`FORWARD` (or ``None``), :class:`Replace`,
      :class:`Inject`, :class:`Respond` or :class:`Reject`.

    Middleware runs in list order for client messages (the first sees the
    client's message first) and in reverse order for server messages, as
    nested ASGI/WSGI middleware do.
    """

    client_messages: ClassVar[frozenset[bytes]] = frozenset()
    server_messages: ClassVar[frozenset[bytes]] = frozenset()

    #: Name used in logs and errors; the class name unless set.
    name: str = ""

    def create_state(self, info: SessionInfo) -> StateT:
        """The state one session keeps for this middleware (default: ``None``)."""
        return None  # type: ignore[return-value]

    def on_startup(self, ctx: Context[StateT], startup: StartupMessage) -> StartupVerdict:
        """The client's StartupMessage: return a rewritten one, :class:`Reject`, or None."""
        return None

    def on_authenticated(self, ctx: Context[StateT], result: AuthResult) -> Reject | None:
        """The login ended (``result.ok`` says how); a :class:`Reject` ends the session."""
        return None

    def on_client_message(self, ctx: Context[StateT], message: Message) -> Verdict:
        """A client message of a type in :attr:`client_messages`."""
        return None

    def on_server_message(self, ctx: Context[StateT], message: Message) -> Verdict:
        """A server message of a type in :attr:`server_messages`."""
        return None

    def on_session_end(self, ctx: Context[StateT], reason: str) -> None:
        """The session is over; ``reason`` says why (``client closed``, an error text...)."""

    def close(self) -> None:
        """The proxy is shutting down and every session has ended: flush and release.

        Called once per middleware *instance* listed in the proxy's
        configuration (shared by all sessions); middleware made per session
        by a class or factory gets :meth:`on_session_end` only.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name or type(self).__name__}>"


def message_types(messages: Iterable[bytes]) -> frozenset[bytes]:
    """Check and freeze a set of one-byte type codes."""
    codes = frozenset(messages)
    for code in codes:
        if not isinstance(code, bytes) or len(code) != 1:
            raise ValueError(f"message types are one-byte codes such as b'Q', not {code!r}")
    return codes

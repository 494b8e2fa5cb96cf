"""Drive a real proxy session by hand: no sockets, no threads, no clock.

`SessionHarness` puts a real `pgwire.proxy.Session` (with your middleware)
between a `pgwire.Frontend` playing the client and a `pgwire.Backend` playing
PostgreSQL. You say what each side sends; the harness feeds it to the session
and routes the bytes of the actions the session returns to the other side, so
every byte your middleware produces is checked by a real protocol state
machine. Everything is deterministic and in memory::

    from pgwire.testing.harness import SessionHarness
    import pgwire as pw

    wire = SessionHarness(NoDrop()).logged_in()
    events = wire.query("select 1",
                        pw.CommandComplete(tag="SELECT 0"),
                        pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))

`MiddlewareMachine`, `InterleavingMachine` and `check_middleware`
(property-based, stateful testing of a middleware and of the session with
hypothesis) live in `pgwire.testing.stateful`; they can also be imported from
here, and only then is hypothesis imported.

The harness covers one session whose proxy opens one server connection per
client (no pool). Timers never fire on their own: call
``harness.session.timer_fired(name)`` and ``harness.feed(...)`` the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

from ..middleware.base import JobOutcome, Middleware
from ..protocol import (
    NEED_DATA,
    PROTOCOL_3_0,
    AuthenticationOk,
    Backend,
    BackendKeyData,
    ConnectionClosed,
    ErrorResponse,
    Frontend,
    Message,
    ParameterStatus,
    Query,
    ReadyForQuery,
    StartupMessage,
    TransactionStatus,
)
from ..proxy import (
    MAIN_LINK,
    Action,
    Address,
    CloseClient,
    CloseUpstream,
    OpenUpstream,
    Proxy,
    ProxyConfig,
    RunJob,
    SendToClient,
    SendToUpstream,
    Session,
)

if TYPE_CHECKING:
    from .stateful import InterleavingMachine, MiddlewareMachine, check_middleware

__all__ = [
    "DEFAULT_SERVER_KEY",
    "DEFAULT_UPSTREAM",
    "HarnessError",
    "InterleavingMachine",
    "MiddlewareMachine",
    "SessionHarness",
    "check_middleware",
    "drain",
]

#: The upstream address written into the configuration; never connected to.
DEFAULT_UPSTREAM: Address = ("127.0.0.1", 5432)
#: The (process id, secret) the played server gives in BackendKeyData.
DEFAULT_SERVER_KEY: tuple[int, bytes] = (4242, b"\x0a\x0b\x0c\x0d")
#: What the played server reports during login, as PostgreSQL 15 would.
DEFAULT_SERVER_PARAMETERS: tuple[tuple[str, str], ...] = (
    ("server_version", "15.0"),
    ("client_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
)
_CLIENT_ADDRESS = ("127.0.0.1", 50000)


class HarnessError(AssertionError):
    """The session did something the harness cannot route, or a login went wrong.

    An AssertionError, so test runners report it as a failed check.
    """


def drain(connection: Frontend | Backend) -> list[object]:
    """Events of ``connection`` up to NEED_DATA, or up to and including ConnectionClosed.

    A `pgwire.ProtocolError` (the peer broke the protocol) propagates.
    """
    events: list[object] = []
    while True:
        event = connection.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, ConnectionClosed):
            return events


class SessionHarness:
    """One proxy session, with a Frontend for the client and a Backend for the server.

    Build it from middleware (instances, classes or factories, as in
    `ProxyConfig.middleware`) plus any other `ProxyConfig` field as a keyword
    (``SessionHarness(guard, check_protocol=True)``), or from a whole
    ``config=``, or join an existing ``proxy=`` (sessions of one proxy share
    cancel keys, limits and middleware instances).

    Attributes:
        proxy: the `pgwire.proxy.Proxy` the session belongs to.
        session: the `pgwire.proxy.Session` under test.
        client: the `pgwire.Frontend` playing the client.
        server: the `pgwire.Backend` playing PostgreSQL (``server_decode``
            narrows which messages it decodes).
        actions: every action the session returned, in order.
        other_links: bytes the session sent on links other than the main
            one (a cancel request's link), by link.
        jobs: `RunJob` actions not run yet (see `run_jobs`).
        client_closed / server_closed: the session closed that side.
        upstream_startup: the StartupMessage the server got at `login`.
    """

    def __init__(self, *middleware: Middleware[Any] | Any, config: ProxyConfig | None = None,
                 proxy: Proxy | None = None, server_decode: set[bytes] | None = None,
                 client_address: tuple[str, int] | str | None = _CLIENT_ADDRESS,
                 **settings: Any) -> None:
        if proxy is None:
            if config is None:
                settings.setdefault("upstream", DEFAULT_UPSTREAM)
                config = ProxyConfig(middleware=list(middleware), **settings)
            elif middleware or settings:
                raise TypeError("pass middleware and settings, or config=, not both")
            proxy = Proxy(config)
        elif middleware or settings or config is not None:
            raise TypeError("with proxy=, the proxy's own configuration applies")
        self.proxy = proxy
        self.session: Session = proxy.new_session(client_address)
        self.client = Frontend()
        self.server = Backend(decode=server_decode)
        self.actions: list[Action] = []
        self.other_links: dict[int, bytearray] = {}
        self.jobs: list[RunJob] = []
        self.client_closed = False
        self.server_closed = False
        self.upstream_startup: StartupMessage | None = None

    def __repr__(self) -> str:
        return f"<SessionHarness session {self.session.session_id} {self.session.state}>"

    # -- routing ---------------------------------------------------------------------

    def feed(self, actions: list[Action]) -> list[Action]:
        """Carry out what the session asked for; return the actions for assertions.

        Bytes go to the client's Frontend or the server's Backend (they are
        checked when you take their events), closes end their streams, and
        `RunJob` actions wait in `jobs`. CloseClient must be the last action.
        """
        if any(isinstance(a, CloseClient) for a in actions) and not isinstance(
            actions[-1], CloseClient
        ):
            raise HarnessError(f"CloseClient is not the last action: {actions}")
        for action in actions:
            if isinstance(action, SendToClient):
                if self.client_closed:
                    raise HarnessError(f"bytes for a closed client: {action}")
                self.client.receive_data(action.data)
            elif isinstance(action, SendToUpstream):
                if action.link == MAIN_LINK:
                    if self.server_closed:
                        raise HarnessError(f"bytes for a closed server link: {action}")
                    self.server.receive_data(action.data)
                else:
                    self.other_links.setdefault(action.link, bytearray()).extend(action.data)
            elif isinstance(action, CloseClient):
                self.client_closed = True
                self.client.receive_data(b"")
            elif isinstance(action, CloseUpstream) and action.link == MAIN_LINK and (
                not self.server_closed
            ):
                self.server_closed = True
                self.server.receive_data(b"")
            elif isinstance(action, RunJob):
                self.jobs.append(action)
        self.actions.extend(actions)
        return actions

    def run_jobs(self) -> list[Action]:
        """Play the adapter's worker pool: run each waiting job now, report its outcome.

        Jobs started by the reports run too. Returns the actions of the reports.
        """
        done: list[Action] = []
        while self.jobs:
            job = self.jobs.pop(0)
            try:
                outcome = JobOutcome(job.job())
            except Exception as exc:
                outcome = JobOutcome(error=exc)
            done += self.feed(self.session.job_done(job.job_id, outcome))
        return done

    def start(self) -> list[Action]:
        """The client connected (`Session.start`)."""
        return self.feed(self.session.start())

    def client_sends(self, *messages: Message) -> list[Action]:
        """The client's Frontend sends ``messages``; the session gets the bytes.

        With no messages nothing happens: the end of the client's stream is
        ``feed(session.client_data(b""))``, never an empty send.
        """
        data = b"".join(self.client.send(message) for message in messages)
        return self.feed(self.session.client_data(data)) if data else []

    def server_sends(self, *messages: Message) -> list[Action]:
        """The server's Backend sends ``messages``; the session gets the bytes.

        With no messages nothing happens (a server with nothing to say sends
        nothing); the end of its stream is ``feed(session.upstream_data(b""))``.
        """
        data = b"".join(self.server.send(message) for message in messages)
        return self.feed(self.session.upstream_data(data)) if data else []

    def client_events(self) -> list[object]:
        """What the client received since last asked (see `drain`)."""
        return drain(self.client)

    def server_events(self) -> list[object]:
        """What the server received since last asked (see `drain`)."""
        return drain(self.server)

    def close(self) -> None:
        """The adapter closed both sockets (`Session.closed`): the session ends."""
        self.session.closed()

    # -- conversations ---------------------------------------------------------------

    def login(self, *, user: str = "alice", database: str = "app",
              parameters: Sequence[tuple[str, str]] = (),
              protocol_version: int = PROTOCOL_3_0,
              server_key: tuple[int, bytes] | None = DEFAULT_SERVER_KEY,
              server_parameters: Sequence[tuple[str, str]] = DEFAULT_SERVER_PARAMETERS,
              ) -> list[object]:
        """A passthrough login the server accepts without a password.

        The client sends its StartupMessage, the session opens the server
        link, the server answers AuthenticationOk, ``server_parameters`` as
        ParameterStatus, BackendKeyData (unless ``server_key`` is None) and
        ReadyForQuery. Returns the client's events; what the server received
        (after the StartupMessage, kept in `upstream_startup`) stays unread,
        so queries a middleware asks right after login are in
        `server_events`.
        """
        self.start()
        startup = StartupMessage(protocol_version=protocol_version,
                                 parameters=(("user", user), ("database", database),
                                             *parameters))
        opened = [a for a in self.client_sends(startup) if isinstance(a, OpenUpstream)]
        if self.session.is_closed:
            return self.client_events()
        if len(opened) != 1 or opened[0].link != MAIN_LINK:
            raise HarnessError(f"expected the session to open its main server link, got "
                               f"{opened} (pooled sessions are not supported)")
        self.feed(self.session.upstream_connected(MAIN_LINK))
        received = self.server_events()
        if not received or not isinstance(received[0], StartupMessage):
            raise HarnessError(f"the server expected a StartupMessage, got {received}")
        self.upstream_startup = received[0]
        answer: list[Message] = [AuthenticationOk()]
        answer += [ParameterStatus(name=name, value=value) for name, value in server_parameters]
        if server_key is not None:
            answer.append(BackendKeyData(process_id=server_key[0], secret_key=server_key[1]))
        answer.append(ReadyForQuery(status=TransactionStatus.IDLE))
        self.server_sends(*answer)
        return self.client_events()

    def logged_in(self, **options: Any) -> Self:
        """`login`, check that the client got ReadyForQuery, and return ``self``."""
        events = self.login(**options)
        if not events or not isinstance(events[-1], ReadyForQuery):
            raise HarnessError(f"the login did not end with ReadyForQuery: {events}")
        return self

    def query(self, sql: str, *answer: Message) -> list[object]:
        """The client sends a Query, the server checks it got exactly that and
        sends ``answer``; return the client's events."""
        self.client_sends(Query(query=sql))
        received = self.server_events()
        if received != [Query(query=sql)]:
            raise HarnessError(f"the server expected Query({sql!r}), got {received}")
        self.server_sends(*answer)
        return self.client_events()

    def fatal(self) -> ErrorResponse:
        """The session ended: the FATAL error the client got, and nothing after it."""
        events = self.client_events()
        if not events or not isinstance(events[-1], ConnectionClosed):
            raise HarnessError(f"the client's connection is still open: {events}")
        errors = [e for e in events if isinstance(e, ErrorResponse)]
        if not errors or errors[-1].severity != "FATAL":
            raise HarnessError(f"no FATAL error before the end: {events}")
        if not isinstance(self.actions[-1], CloseClient) or not self.session.is_closed:
            raise HarnessError(f"the session did not close the client: {self.actions[-1:]}")
        return errors[-1]


def __getattr__(name: str) -> Any:
    # MiddlewareMachine needs hypothesis at class creation: import it only on demand.
    if name in ("InterleavingMachine", "MiddlewareMachine", "check_middleware"):
        from . import stateful  # noqa: PLC0415 - hypothesis only when asked for

        return getattr(stateful, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

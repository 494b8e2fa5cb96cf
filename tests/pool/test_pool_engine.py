"""The pool engine driven by hand: no sockets, no threads, no real clock.

The test plays the adapter. It drives the sessions of a :class:`Proxy` and
its :class:`Pool` as ``pgwire.adapters`` do (``start``, ``client_data``,
``upstream_connected`` / ``upstream_data`` / ``upstream_failed`` /
``timer_fired`` on the pool's own links, ``take_woken`` after every call and
``take()`` for each woken target) and routes every byte it gets back to a
:class:`pgwire.Frontend` playing the client or to a :class:`pgwire.Backend`
playing the PostgreSQL server of one pool link, so a real state machine
checks each byte the engine produces. Clients log in with ``trust``: the
proxy accepts them itself, and the fake servers accept the pool's own login
without a password.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgwire as pw
from pgwire.protocol import RemoteProtocolError
from pgwire.proxy import (
    POOL_LINK_BASE,
    Action,
    CancelTimer,
    CloseClient,
    CloseUpstream,
    OpenUpstream,
    Pool,
    PoolConfig,
    PooledServer,
    Proxy,
    ProxyAuth,
    ProxyConfig,
    RunJob,
    SendToClient,
    SendToUpstream,
    ServerState,
    Session,
    StartTimer,
)
from pgwire.proxy._pool import MAINTENANCE_TIMER, VERIFY_SQL
from pgwire.testing import strategies as pst

UPSTREAM = ("127.0.0.1", 5432)  # never connected to: the test plays every server
CHECKOUT = "checkout"
#: A rejected statement travels under a name with a per-session random part.
REJECT_TOKEN = re.compile(r"pgwire_reject_[0-9a-f]+_")
IDLE = pw.TransactionStatus.IDLE
IN_BLOCK = pw.TransactionStatus.IN_TRANSACTION
FAILED = pw.TransactionStatus.FAILED
SERVER_PARAMETERS = (("server_version", "15.0"), ("client_encoding", "UTF8"),
                     ("standard_conforming_strings", "on"), ("DateStyle", "ISO, MDY"))


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- the servers -----------------------------------------------------------------------


@dataclass
class Server:
    """The PostgreSQL end of one pool link: a Backend, fed what the pool sends."""

    link: int
    backend: pw.Backend = field(default_factory=pw.Backend)
    connected: bool = False
    #: The pool sent CloseUpstream for this link.
    closed: bool = False
    #: The server side hung up (EOF given to the pool).
    hung_up: bool = False
    #: Every event the backend returned, in order.
    received: list[object] = field(default_factory=list)
    #: Transaction status the fake server reports next (its own model).
    status: pw.TransactionStatus = IDLE

    def events(self) -> list[object]:
        """What arrived since the last call (up to NEED_DATA or ConnectionClosed)."""
        events = drain(self.backend)
        self.received.extend(events)
        return events


@dataclass
class Client:
    """One client: its session and the Frontend that plays the application."""

    net: Net
    session: Session
    frontend: pw.Frontend = field(default_factory=pw.Frontend)
    timers: dict[str, float] = field(default_factory=dict)
    closed: bool = False
    received: list[object] = field(default_factory=list)
    #: Every byte the proxy sent this client.
    raw: bytearray = field(default_factory=bytearray)
    #: The client's own state machine refused what it got (see Net.lenient).
    judged: RemoteProtocolError | None = None

    def send(self, *messages: pw.Message) -> None:
        data = b"".join(self.frontend.send(m) for m in messages)
        self.send_bytes(data)

    def send_bytes(self, data: bytes) -> None:
        self.net.run(self.session, self.session.client_data(data))

    def hang_up(self) -> None:
        """The client's socket ends (EOF), as an adapter reports it."""
        self.net.run(self.session, self.session.client_data(b""))

    def fire(self, name: str) -> None:
        assert name in self.timers, (name, self.timers)
        del self.timers[name]
        self.net.run(self.session, self.session.timer_fired(name))

    def events(self) -> list[object]:
        if self.judged is not None:
            return []
        try:
            events = drain(self.frontend)
        except RemoteProtocolError as exc:
            if not self.net.lenient:
                raise
            # The selective path forwards server bytes as they came, as a direct
            # connection would: only the client can judge them (engine.md).
            self.judged = exc
            return []
        self.received.extend(events)
        return events

    def fatal(self) -> pw.ErrorResponse:
        """The session ended with a FATAL error, and the client's socket closed."""
        events = self.events()
        assert self.closed and self.session.is_closed, events
        assert isinstance(events[-1], pw.ConnectionClosed), events
        errors = [e for e in events if isinstance(e, pw.ErrorResponse)]
        assert errors and errors[-1].severity == "FATAL", events
        return errors[-1]


class Net:
    """A proxy with a pool, its clients and the fake servers of its pool links."""

    #: The user every client logs in as (one pool key).
    user = "alice"

    def __init__(self, *, clock: FakeClock | None = None,
                 client_decode: set[bytes] | None = None, check_protocol: bool = False,
                 lenient: bool = False, **pool_settings: Any) -> None:
        self.clock = clock or FakeClock()
        #: What the clients' Frontends decode (None: everything).
        self.client_decode = client_decode
        #: A client's state machine may refuse server bytes the proxy passed on
        #: unchecked (the selective path); without it that fails the test.
        self.lenient = lenient
        pool_settings.setdefault("mode", "transaction")
        config = ProxyConfig(upstream=UPSTREAM, auth=ProxyAuth(method="trust"),
                             check_protocol=check_protocol, pool=PoolConfig(**pool_settings))
        self.proxy = Proxy(config, clock=self.clock)
        pool = self.proxy.pool
        assert pool is not None
        self.pool: Pool = pool
        self.pool.driver = self
        self.servers: dict[int, Server] = {}
        self.clients: list[Client] = []
        #: Every action the pool returned, in order.
        self.pool_actions: list[Action] = []
        self.pool_timers: dict[str, float] = {}
        self.run(self.pool, self.pool.start())

    # -- the adapter's part ----------------------------------------------------------------

    def run(self, target: Session | Pool, actions: list[Action]) -> None:
        """Carry out ``actions`` of ``target``, then of every target woken meanwhile."""
        self._perform(target, actions)
        while woken := self.proxy.take_woken():
            for other in woken:
                self._perform(other, other.take())

    def _perform(self, target: Session | Pool, actions: list[Action]) -> None:
        if isinstance(target, Pool):
            self.pool_actions.extend(actions)
            for action in actions:
                self._pool_action(action)
            return
        client = target.driver
        assert isinstance(client, Client)
        if any(isinstance(a, CloseClient) for a in actions):
            assert isinstance(actions[-1], CloseClient), actions
        for action in actions:
            match action:
                case SendToClient(data=data):
                    assert not client.closed
                    client.raw.extend(data)
                    client.frontend.receive_data(data)
                case StartTimer(name=name, seconds=seconds):
                    client.timers[name] = seconds
                case CancelTimer(name=name):
                    client.timers.pop(name, None)
                case CloseClient():
                    assert not client.closed
                    client.closed = True
                    client.frontend.receive_data(b"")
                    client.timers.clear()
                case _:
                    # A pooled session's server bytes go through the pool's links.
                    raise AssertionError(f"unexpected session action {action!r}")
        if client.closed and target.is_closed:
            target.closed()  # the adapter closed the socket: the proxy forgets it

    def _pool_action(self, action: Action) -> None:
        match action:
            case OpenUpstream(link=link, address=address):
                assert link >= POOL_LINK_BASE and link not in self.servers
                assert address == UPSTREAM
                self.servers[link] = Server(link)
            case SendToUpstream(data=data, link=link):
                server = self.servers[link]
                assert not server.closed, f"bytes for link {link} after CloseUpstream"
                if not server.hung_up:
                    server.backend.receive_data(data)
            case CloseUpstream(link=link):
                server = self.servers[link]
                assert not server.closed, f"link {link} closed twice"
                server.closed = True
                if not server.hung_up:
                    server.backend.receive_data(b"")
            case StartTimer(name=name, seconds=seconds):
                self.pool_timers[name] = seconds
            case CancelTimer(name=name):
                self.pool_timers.pop(name, None)
            case SendToClient() | CloseClient() | RunJob():
                raise AssertionError(f"the pool has no client: {action!r}")

    # -- clients ---------------------------------------------------------------------------

    def client(self, **parameters: str) -> Client:
        """A client that connected and sent its StartupMessage (trust: no password)."""
        session = self.proxy.new_session(("127.0.0.1", 40000 + len(self.clients)))
        client = Client(self, session, pw.Frontend(decode=self.client_decode))
        session.driver = client
        self.clients.append(client)
        self.run(session, session.start())
        client.send(pw.StartupMessage.from_dict(
            {"user": self.user, "database": "app", **parameters}))
        return client

    # -- servers ---------------------------------------------------------------------------

    def opened(self) -> list[int]:
        """Links the pool asked to open that are not connected yet."""
        return [link for link, s in self.servers.items() if not s.connected and not s.closed]

    def link_up(self, link: int) -> Server:
        server = self.servers[link]
        server.connected = True
        self.run(self.pool, self.pool.upstream_connected(link))
        return server

    def link_failed(self, link: int, error: str = "Connection refused") -> None:
        self.run(self.pool, self.pool.upstream_failed(error, link))

    def server_sends(self, link: int, *messages: pw.Message) -> None:
        backend = self.servers[link].backend
        self.server_bytes(link, b"".join(backend.send(m) for m in messages))

    def server_bytes(self, link: int, data: bytes) -> None:
        self.run(self.pool, self.pool.upstream_data(data, link))

    def server_hangs_up(self, link: int) -> None:
        server = self.servers[link]
        server.hung_up = True
        self.run(self.pool, self.pool.upstream_data(b"", link))

    def accept_login(self, link: int) -> None:
        """The server accepts the pool's StartupMessage without a password."""
        server = self.servers[link]
        server.events()
        assert len(server.received) == 1, server.received
        assert isinstance(server.received[0], pw.StartupMessage), server.received
        self.server_sends(link, *login_answer(link))

    def answer_check(self, link: int, current: str | None = None,
                     session_user: str | None = None) -> None:
        """Answer the pool's verification query (or its baseline query after login)."""
        server = self.servers[link]
        events = server.events()
        assert events == [pw.Query(query=VERIFY_SQL)], events
        self.server_sends(link, *verify_answer(current or self.user,
                                               session_user or self.user))

    def settle(self) -> None:
        """Do the pool's own work as a healthy server would: connect opened
        links, accept logins, answer baseline, verification and reset queries.
        Requests of clients are left unanswered."""
        progress = True
        while progress:
            progress = self._connect_opened()
            for link, server in self._live_servers():
                pooled = self.server(link)
                if pooled.state == ServerState.LOGIN and not server.received:
                    self.accept_login(link)
                    progress = True
                elif pooled.state == ServerState.CHECKING:
                    for event in server.events():
                        assert isinstance(event, pw.Query), event
                        if event.query == VERIFY_SQL:
                            self.server_sends(link, *verify_answer(self.user, self.user))
                        else:
                            self.server_sends(link, *done("RESET"))
                        progress = True

    def serve(self) -> None:
        """Play healthy servers until nothing moves: the pool's own work as in
        :meth:`settle`, and every client request answered (BEGIN opens a
        transaction, COMMIT and ROLLBACK end it, anything else succeeds)."""
        progress = True
        while progress:
            progress = self._connect_opened()
            for link, server in self._live_servers():
                for event in server.events():
                    answer = self._answer(server, event)
                    if answer and not server.closed:
                        self.server_sends(link, *answer)
                    progress = True

    def _connect_opened(self) -> bool:
        """Connect every link the pool asked for; whether there was any."""
        opened = self.opened()
        for link in opened:
            self.link_up(link)
        return bool(opened)

    def _live_servers(self) -> list[tuple[int, Server]]:
        return [(link, server) for link, server in self.servers.items()
                if not (server.closed or server.hung_up or not server.connected)]

    def _answer(self, server: Server, event: object) -> tuple[pw.Message, ...]:
        if isinstance(event, pw.StartupMessage):
            return login_answer(server.link)
        if isinstance(event, pw.Query):
            if event.query == VERIFY_SQL:
                return verify_answer(self.user, self.user, server.status)
            pooled = [s for s in self.pool.servers() if s.id == server.link]
            if pooled and pooled[0].state == ServerState.CHECKING:
                return done("RESET", server.status)  # the pool's reset
            word = event.query.split(None, 1)[0].upper() if event.query.strip() else ""
            if word == "BEGIN":
                server.status = IN_BLOCK
            elif word in ("COMMIT", "ROLLBACK"):
                server.status = IDLE
            else:
                word = "SELECT 1"
            return done(word, server.status)
        if isinstance(event, pw.Parse):
            return (pw.ParseComplete(),)
        if isinstance(event, pw.Bind):
            return (pw.BindComplete(),)
        if isinstance(event, pw.Describe):
            return (pw.NoData(),)
        if isinstance(event, pw.Execute):
            return (pw.CommandComplete(tag="SELECT 0"),)
        if isinstance(event, pw.Close):
            return (pw.CloseComplete(),)
        if isinstance(event, pw.Sync):
            return (pw.ReadyForQuery(status=server.status),)
        return ()

    def fire_pool(self) -> None:
        """The maintenance timer runs out (it must be armed); it is armed again."""
        assert MAINTENANCE_TIMER in self.pool_timers
        seconds = self.pool_timers.pop(MAINTENANCE_TIMER)
        self.run(self.pool, self.pool.timer_fired(MAINTENANCE_TIMER))
        assert self.pool_timers.get(MAINTENANCE_TIMER) == seconds

    def login(self, **parameters: str) -> Client:
        """A client logged in through the pool (with whatever pool work that takes)."""
        client = self.client(**parameters)
        self.settle()
        client.events()
        last = client.received[-1] if client.received else None
        assert isinstance(last, pw.Message | pw.RawMessage) and last.type_code == b"Z", (
            client.received)
        return client

    # -- the pool's state --------------------------------------------------------------------

    def row(self) -> dict[str, Any]:
        """The pool's stats row of the one key."""
        rows = [r for r in self.pool.stats() if r["user"] == self.user]
        assert len(rows) == 1, self.pool.stats()
        return rows[0]

    def server(self, link: int) -> PooledServer:
        [server] = [s for s in self.pool.servers() if s.id == link]
        return server

    def states(self) -> dict[int, str]:
        return {s.id: s.state for s in self.pool.servers()}

    def check_books(self) -> None:
        """What the pool says about its links agrees with what it asked the adapter."""
        open_links = {link for link, s in self.servers.items() if not s.closed}
        assert {s.id for s in self.pool.servers()} <= open_links
        for server in self.pool.servers():
            assert server.state != ServerState.CLOSED
        for link in open_links - {s.id for s in self.pool.servers()}:
            raise AssertionError(f"link {link} is forgotten by the pool but was never closed")
        for row in self.pool.stats():
            assert row["servers_opened"] - row["servers_closed"] == sum(
                1 for s in self.pool.servers() if s.key.user == row["user"])


def drain(connection: pw.Frontend | pw.Backend) -> list[object]:
    """Events up to NEED_DATA, or up to and including ConnectionClosed."""
    events: list[object] = []
    while (event := connection.next_event()) is not pw.NEED_DATA:
        events.append(event)
        if isinstance(event, pw.ConnectionClosed):
            break
    return events


def verify_answer(current: str, session_user: str,
                  status: pw.TransactionStatus = IDLE) -> tuple[pw.Message, ...]:
    return (
        pw.RowDescription(fields=(pw.FieldDescription(name="current_user", data_type_oid=19),
                                  pw.FieldDescription(name="session_user", data_type_oid=19))),
        pw.DataRow(values=(current.encode(), session_user.encode())),
        pw.CommandComplete(tag="SELECT 1"),
        pw.ReadyForQuery(status=status),
    )


def login_answer(link: int) -> tuple[pw.Message, ...]:
    """A server's answer to a StartupMessage it trusts (its key tells the link)."""
    return (pw.AuthenticationOk(),
            *(pw.ParameterStatus(name=n, value=v) for n, v in SERVER_PARAMETERS),
            pw.BackendKeyData(process_id=7000 + link, secret_key=link.to_bytes(4, "big")),
            pw.ReadyForQuery(status=IDLE))


def done(tag: str = "SELECT 1", status: pw.TransactionStatus = IDLE) -> tuple[pw.Message, ...]:
    return pw.CommandComplete(tag=tag), pw.ReadyForQuery(status=status)


def fatal_error(code: str, message: str) -> pw.ErrorResponse:
    return pw.ErrorResponse(severity="FATAL", severity_nonlocalized="FATAL", code=code,
                            message=message)


def in_transaction(net: Net, client: Client) -> int:
    """``client`` runs BEGIN and keeps its connection; the link it holds."""
    client.send(pw.Query(query="BEGIN"))
    net.settle()
    [link] = [s.id for s in net.pool.servers() if s.session is client.session]
    assert net.servers[link].events() == [pw.Query(query="BEGIN")]
    net.server_sends(link, *done("BEGIN", IN_BLOCK))
    assert client.events() == [*done("BEGIN", IN_BLOCK)]
    return link


def commit(net: Net, client: Client, link: int) -> None:
    client.send(pw.Query(query="COMMIT"))
    assert net.servers[link].events() == [pw.Query(query="COMMIT")]
    net.server_sends(link, *done("COMMIT"))
    assert client.events() == [*done("COMMIT")]


def pool_actions_since(net: Net, mark: int) -> list[Action]:
    return net.pool_actions[mark:]


# -- checkout ------------------------------------------------------------------------------


def test_first_login_opens_a_connection_logs_in_and_returns_it_to_the_pool() -> None:
    net = Net(max_size=2)
    client = net.client(application_name="app1")
    # The proxy accepted the client (trust) and waits for a server connection.
    assert client.events() == [pw.AuthenticationOk()]
    assert net.opened() == [POOL_LINK_BASE]
    assert client.timers[CHECKOUT] == net.pool.config.checkout_timeout
    assert net.row()["servers_connecting"] == 1
    server = net.link_up(POOL_LINK_BASE)
    [startup] = server.events()
    assert isinstance(startup, pw.StartupMessage)
    # The key holds every startup parameter: the server sees what the client sent.
    assert startup.get("user") == "alice" and startup.get("database") == "app"
    assert startup.get("application_name") == "app1"
    net.accept_login(POOL_LINK_BASE)
    assert client.events() == []  # not before the pool's own baseline query
    assert net.states() == {POOL_LINK_BASE: ServerState.CHECKING}
    net.answer_check(POOL_LINK_BASE)
    events = client.events()
    assert [e for e in events if isinstance(e, pw.ParameterStatus)] == [
        pw.ParameterStatus(name=n, value=v) for n, v in SERVER_PARAMETERS]
    [key] = [e for e in events if isinstance(e, pw.BackendKeyData)]
    # The client's cancel key is the proxy's, never the server's.
    assert key.process_id != 7000 + POOL_LINK_BASE
    assert events[-1] == pw.ReadyForQuery(status=IDLE)
    assert CHECKOUT not in client.timers
    # Transaction mode: the connection goes back at the login's ReadyForQuery.
    pooled = net.server(POOL_LINK_BASE)
    assert pooled.state == ServerState.IDLE and pooled.session is None
    assert pooled.baseline == ("alice", "alice")
    row = net.row()
    assert (row["clients"], row["servers_idle"], row["checkouts"], row["servers_opened"]) == (
        1, 1, 1, 1)
    net.check_books()


def test_the_last_session_takes_its_idle_connection_back_without_verification() -> None:
    net = Net(max_size=2)
    client = net.login()
    client.send(pw.Query(query="SELECT 1"))
    server = net.servers[POOL_LINK_BASE]
    assert server.events() == [pw.Query(query="SELECT 1")]
    assert net.server(POOL_LINK_BASE).state == ServerState.ACTIVE
    net.server_sends(POOL_LINK_BASE, *done())
    assert client.events() == [*done()]
    assert net.server(POOL_LINK_BASE).state == ServerState.IDLE
    assert net.row()["verifications"] == 0 and net.row()["checkouts"] == 2
    assert net.opened() == []


def test_another_session_gets_the_idle_connection_after_a_verification() -> None:
    net = Net(max_size=1)
    net.login()
    other = net.client()
    assert other.events() == [pw.AuthenticationOk()]
    assert net.server(POOL_LINK_BASE).state == ServerState.CHECKING
    net.answer_check(POOL_LINK_BASE)
    assert isinstance(other.events()[-1], pw.ReadyForQuery)
    assert net.row()["verifications"] == 1
    assert net.opened() == []


def test_a_connection_idle_longer_than_health_check_after_is_verified_first() -> None:
    clock = FakeClock()
    net = Net(clock=clock, max_size=1, health_check_after=30.0)
    client = net.login()
    clock.advance(31)
    client.send(pw.Query(query="SELECT 1"))
    # Even its own last session gets it only after a verification.
    net.answer_check(POOL_LINK_BASE)
    assert net.servers[POOL_LINK_BASE].events() == [pw.Query(query="SELECT 1")]
    net.server_sends(POOL_LINK_BASE, *done())
    assert client.events() == [*done()]
    assert net.row()["verifications"] == 1


def test_full_pool_the_second_session_waits_until_the_first_transaction_ends() -> None:
    net = Net(max_size=1)
    first = net.login()
    second = net.login()
    link = in_transaction(net, first)
    waits = net.row()["waits"]
    second.send(pw.Query(query="SELECT 2"))
    # Held by the proxy: the server sees nothing, the client nothing either.
    assert net.servers[link].events() == []
    assert second.events() == []
    assert CHECKOUT in second.timers
    row = net.row()
    assert (row["clients_waiting"], row["servers_active"], row["waits"]) == (1, 1, waits + 1)
    assert net.opened() == []
    first.send(pw.Query(query="SELECT 1"))
    assert net.servers[link].events() == [pw.Query(query="SELECT 1")]
    net.server_sends(link, *done("SELECT 1", IN_BLOCK))
    assert first.events() == [*done("SELECT 1", IN_BLOCK)]
    assert net.row()["clients_waiting"] == 1  # still inside the transaction
    commit(net, first, link)
    # The connection changes hands: verified, then the held query goes out.
    net.answer_check(link)
    assert net.servers[link].events() == [pw.Query(query="SELECT 2")]
    assert CHECKOUT not in second.timers
    net.server_sends(link, *done("SELECT 2"))
    assert second.events() == [*done("SELECT 2")]
    row = net.row()
    assert (row["clients_waiting"], row["servers_idle"], row["servers_opened"]) == (0, 1, 1)
    net.check_books()


def test_waiters_are_served_oldest_first() -> None:
    net = Net(max_size=1)
    first = net.login()
    second = net.login()
    third = net.login()
    link = in_transaction(net, first)
    third.send(pw.Query(query="SELECT 3"))
    second.send(pw.Query(query="SELECT 2"))
    commit(net, first, link)
    net.answer_check(link)
    assert net.servers[link].events() == [pw.Query(query="SELECT 3")]
    net.server_sends(link, *done("SELECT 3"))
    assert third.events() == [*done("SELECT 3")]
    net.answer_check(link)
    assert net.servers[link].events() == [pw.Query(query="SELECT 2")]
    net.server_sends(link, *done("SELECT 2"))
    assert second.events() == [*done("SELECT 2")]


def test_the_checkout_timer_ends_a_waiting_session_with_53300() -> None:
    net = Net(max_size=1, checkout_timeout=5.0)
    first = net.login()
    second = net.login()
    link = in_transaction(net, first)
    second.send(pw.Query(query="SELECT 2"))
    assert second.timers[CHECKOUT] == 5.0
    second.fire(CHECKOUT)
    error = second.fatal()
    assert error.code == "53300"
    row = net.row()
    assert (row["checkout_timeouts"], row["clients_waiting"], row["clients"]) == (1, 0, 1)
    commit(net, first, link)
    # Nobody waits any more: no verification, no held query reaches the server.
    assert net.servers[link].events() == []
    assert net.server(link).state == ServerState.IDLE
    assert second.session not in list(net.proxy.sessions)
    net.check_books()


def test_the_checkout_timer_during_login_ends_the_client_and_the_login_goes_on() -> None:
    net = Net(max_size=1)
    client = net.client()
    client.fire(CHECKOUT)
    assert client.fatal().code == "53300"
    assert net.row()["clients_waiting"] == 0
    # The connection the pool was opening is not wasted: it joins the pool.
    net.settle()
    assert net.states() == {POOL_LINK_BASE: ServerState.IDLE}
    later = net.login()
    assert net.server(POOL_LINK_BASE).state == ServerState.IDLE
    assert later.events() == []


def test_a_client_waiting_for_its_login_connection_that_hangs_up_is_forgotten() -> None:
    net = Net(max_size=1)
    first = net.login()
    link = in_transaction(net, first)
    second = net.client()
    assert net.row()["clients_waiting"] == 1
    second.hang_up()
    assert second.closed and second.session.is_closed
    assert net.row()["clients_waiting"] == 0
    assert second.session not in list(net.proxy.sessions)
    commit(net, first, link)
    assert net.servers[link].events() == []
    assert net.server(link).state == ServerState.IDLE


@pytest.mark.parametrize("goodbye", ["eof", "terminate"])
def test_a_waiting_client_that_hangs_up_behind_a_request_has_it_run_first(goodbye: str) -> None:
    # A server runs a query that came before Terminate (or EOF): so does the
    # pool, and the connection then goes back at rest instead of being closed
    # with the request in flight.
    net = Net(max_size=1)
    first = net.login()
    second = net.login()
    link = in_transaction(net, first)
    second.send(pw.Query(query="INSERT 2"))
    assert net.row()["clients_waiting"] == 1
    if goodbye == "eof":
        second.hang_up()
    else:
        second.send(pw.Terminate())
    assert not second.session.is_closed
    commit(net, first, link)
    net.answer_check(link)
    assert net.servers[link].events() == [pw.Query(query="INSERT 2")]
    assert not second.session.is_closed  # its answer is not in yet
    net.server_sends(link, *done("INSERT 0 1"))
    assert second.session.is_closed
    row = net.row()
    assert (row["clients_waiting"], row["servers_idle"], row["servers_closed"]) == (0, 1, 0)
    assert net.server(link).state == ServerState.IDLE
    net.check_books()


# -- failures of server connections -------------------------------------------------------


def test_connect_failure_ends_the_waiting_login_with_08006() -> None:
    net = Net(max_size=1)
    client = net.client()
    net.link_failed(POOL_LINK_BASE, "Connection refused")
    error = client.fatal()
    assert error.code == "08006" and "Connection refused" in (error.message or "")
    assert net.proxy.stats.upstream_connect_failures == 1
    assert net.pool.servers() == []
    net.check_books()


def test_the_server_refusing_the_login_reaches_the_waiting_client_as_it_is() -> None:
    net = Net(max_size=1)
    client = net.client()
    net.link_up(POOL_LINK_BASE)
    refusal = fatal_error("28P01", 'password authentication failed for user "alice"')
    net.server_sends(POOL_LINK_BASE, refusal)
    error = client.fatal()
    assert (error.code, error.message) == (refusal.code, refusal.message)
    assert net.row()["login_failures"] == 1
    assert net.servers[POOL_LINK_BASE].closed
    assert net.pool.servers() == []
    net.check_books()


def test_a_failed_login_fails_its_own_client_and_opens_again_for_the_next() -> None:
    net = Net(max_size=1)
    first = net.client()
    second = net.client()
    assert net.opened() == [POOL_LINK_BASE]  # one login at a time
    net.link_up(POOL_LINK_BASE)
    net.server_sends(POOL_LINK_BASE, fatal_error("53300", "too many connections"))
    assert first.fatal().code == "53300"
    assert not second.closed
    assert net.opened() == [POOL_LINK_BASE + 1]
    net.settle()
    assert isinstance(second.events()[-1], pw.ReadyForQuery)


@pytest.mark.parametrize("when", ["after startup", "after AuthenticationOk", "during baseline"])
def test_the_server_closing_during_login_ends_the_waiting_client_with_08006(when: str) -> None:
    net = Net(max_size=1)
    client = net.client()
    net.link_up(POOL_LINK_BASE)
    if when == "after AuthenticationOk":
        net.servers[POOL_LINK_BASE].events()
        net.server_sends(POOL_LINK_BASE, pw.AuthenticationOk())
    elif when == "during baseline":
        net.accept_login(POOL_LINK_BASE)
    net.server_hangs_up(POOL_LINK_BASE)
    assert client.fatal().code == "08006"
    assert net.pool.servers() == []
    net.check_books()


def test_a_baseline_naming_another_session_user_fails_the_login() -> None:
    net = Net(max_size=1)
    client = net.client()
    net.link_up(POOL_LINK_BASE)
    net.accept_login(POOL_LINK_BASE)
    net.answer_check(POOL_LINK_BASE, current="alice", session_user="mallory")
    assert client.fatal().code == "28000"
    assert net.servers[POOL_LINK_BASE].closed
    assert net.row()["login_failures"] == 1


@pytest.mark.parametrize("how", ["eof", "fatal"])
def test_a_server_ending_an_idle_connection_is_replaced_unseen(how: str) -> None:
    net = Net(max_size=1)
    client = net.login()
    mark = len(net.pool_actions)
    if how == "fatal":
        net.server_sends(POOL_LINK_BASE, fatal_error(
            "57P01", "terminating connection due to administrator command"))
    else:
        net.server_hangs_up(POOL_LINK_BASE)
    assert CloseUpstream(POOL_LINK_BASE) in pool_actions_since(net, mark)
    assert net.pool.servers() == []
    assert net.proxy.stats.upstream_errors == 1
    assert client.events() == [] and not client.closed
    client.send(pw.Query(query="SELECT 1"))
    [link] = net.opened()
    assert link == POOL_LINK_BASE + 1
    net.settle()
    assert net.servers[link].events() == [pw.Query(query="SELECT 1")]
    net.server_sends(link, *done())
    assert client.events() == [*done()]
    net.check_books()


def test_a_notice_on_an_idle_connection_is_ignored() -> None:
    net = Net(max_size=1)
    net.login()
    net.server_sends(POOL_LINK_BASE, pw.NoticeResponse(severity="NOTICE", code="00000",
                                                       message="hello"),
                     pw.ParameterStatus(name="TimeZone", value="UTC"))
    assert net.states() == {POOL_LINK_BASE: ServerState.IDLE}


@pytest.mark.parametrize("how", ["eof", "fatal"])
def test_a_server_failing_its_verification_is_replaced_for_the_waiting_session(
        how: str) -> None:
    net = Net(max_size=1)
    net.login()
    second = net.client()
    assert net.server(POOL_LINK_BASE).state == ServerState.CHECKING
    mark = len(net.pool_actions)
    if how == "fatal":
        net.server_sends(POOL_LINK_BASE, fatal_error("57P01", "terminating connection"))
    net.server_hangs_up(POOL_LINK_BASE)
    assert CloseUpstream(POOL_LINK_BASE) in pool_actions_since(net, mark)
    assert not second.closed
    # The pool has room again: the waiting session needs a new connection.
    assert net.opened() == [POOL_LINK_BASE + 1], "the waiting session was left without one"
    net.settle()
    assert isinstance(second.events()[-1], pw.ReadyForQuery)


@pytest.mark.parametrize(("current", "session_user", "status"), [
    ("mallory", "alice", IDLE), ("alice", "mallory", IDLE), ("alice", "alice", IN_BLOCK),
    ("alice", "alice", FAILED)])
def test_a_verification_with_another_answer_closes_the_connection_and_opens_a_new_one(
        current: str, session_user: str, status: pw.TransactionStatus) -> None:
    net = Net(max_size=1)
    net.login()
    second = net.client()
    assert second.events() == [pw.AuthenticationOk()]
    mark = len(net.pool_actions)
    assert net.servers[POOL_LINK_BASE].events() == [pw.Query(query=VERIFY_SQL)]
    net.server_sends(POOL_LINK_BASE, *verify_answer(current, session_user, status))
    assert CloseUpstream(POOL_LINK_BASE) in pool_actions_since(net, mark)
    assert net.servers[POOL_LINK_BASE].events()[-2:] == [pw.Terminate(), pw.ConnectionClosed()]
    assert net.row()["failed_verifications"] == 1, "a failed verification was not counted"
    assert not second.closed and second.events() == []
    assert net.opened() == [POOL_LINK_BASE + 1], "the waiting session got no new connection"
    net.settle()
    assert isinstance(second.events()[-1], pw.ReadyForQuery)
    assert {s.id for s in net.pool.servers()} == {POOL_LINK_BASE + 1}


def test_a_baseline_row_of_another_shape_fails_the_login() -> None:
    net = Net(max_size=1)
    client = net.client()
    net.link_up(POOL_LINK_BASE)
    net.accept_login(POOL_LINK_BASE)
    assert net.servers[POOL_LINK_BASE].events() == [pw.Query(query=VERIFY_SQL)]
    net.server_sends(POOL_LINK_BASE, pw.DataRow(values=(b"alice", b"alice", b"extra")),
                     *done("SELECT 1"))
    assert client.fatal().code == "08006"
    assert net.servers[POOL_LINK_BASE].closed
    net.check_books()


@pytest.mark.parametrize("state", ["baseline", "verify"])
def test_a_check_answer_that_is_not_utf8_closes_the_connection(state: str) -> None:
    net = Net(max_size=1)
    if state == "verify":
        net.login()
    client = net.client()
    if state == "baseline":
        net.link_up(POOL_LINK_BASE)
        net.accept_login(POOL_LINK_BASE)
    assert net.servers[POOL_LINK_BASE].events() == [pw.Query(query=VERIFY_SQL)]
    net.server_sends(POOL_LINK_BASE, pw.DataRow(values=(b"\xff", b"alice")), *done("SELECT 1"))
    assert net.servers[POOL_LINK_BASE].closed
    assert net.proxy.stats.internal_errors == 0
    if state == "baseline":
        assert client.fatal().code == "08006"
    else:
        net.settle()
        assert isinstance(client.events()[-1], pw.ReadyForQuery)
    net.check_books()


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_a_server_breaking_the_protocol_on_a_held_idle_connection_ends_only_its_client(
        mode: str) -> None:
    net = Net(max_size=1, mode=mode)
    first = net.login()
    if mode == "transaction":
        first.send(pw.Query(query="SET search_path = private"))  # pins the connection
        assert net.servers[POOL_LINK_BASE].events() == [
            pw.Query(query="SET search_path = private")]
        net.server_sends(POOL_LINK_BASE, *done("SET"))
        assert first.events() == [*done("SET")]
    assert net.server(POOL_LINK_BASE).session is first.session
    second = net.client()  # waits for the only connection
    # A message out of turn: nothing is in flight on this connection.
    net.server_bytes(POOL_LINK_BASE, pw.CommandComplete(tag="SELECT 1").encode())
    assert first.fatal().code == "08P01"
    assert net.servers[POOL_LINK_BASE].closed, "a connection that broke the protocol is reused"
    net.settle()
    assert isinstance(second.events()[-1], pw.ReadyForQuery)
    assert net.proxy.stats.internal_errors == 0
    net.check_books()


# -- resets --------------------------------------------------------------------------------


def pinned_by_a_setting(net: Net) -> tuple[Client, int]:
    """A client that ran a session-level SET: it keeps its connection (pin)."""
    client = net.login()
    client.send(pw.Query(query="SET search_path = private"))
    [link] = [s.id for s in net.pool.servers() if s.session is client.session]
    assert net.servers[link].events() == [pw.Query(query="SET search_path = private")]
    net.server_sends(link, *done("SET"))
    assert client.events() == [*done("SET")]
    assert net.server(link).session is client.session
    assert net.row()["pinned_transactions"] == 1
    return client, link


def test_a_client_leaving_session_state_behind_gets_it_reset_and_verified() -> None:
    net = Net(max_size=1)
    client, link = pinned_by_a_setting(net)
    client.send(pw.Terminate())
    assert client.closed
    reset, verify = net.servers[link].events()
    assert isinstance(reset, pw.Query) and "RESET ALL" in reset.query
    assert verify == pw.Query(query=VERIFY_SQL)
    assert net.server(link).state == ServerState.CHECKING
    net.server_sends(link, *done("RESET"), *verify_answer("alice", "alice"))
    assert net.server(link).state == ServerState.IDLE
    row = net.row()
    assert (row["resets"], row["verifications"], row["failed_resets"]) == (1, 1, 0)


def test_a_reset_the_server_refuses_closes_the_connection() -> None:
    net = Net(max_size=1)
    client, link = pinned_by_a_setting(net)
    client.hang_up()
    net.servers[link].events()
    mark = len(net.pool_actions)
    net.server_sends(link, pw.ErrorResponse(severity="ERROR", code="XX000", message="no"),
                     pw.ReadyForQuery(status=IDLE), *verify_answer("alice", "alice"))
    assert CloseUpstream(link) in pool_actions_since(net, mark)
    assert net.row()["failed_resets"] == 1
    assert net.pool.servers() == []
    net.check_books()


# -- maintenance ---------------------------------------------------------------------------


def two_idle_connections(net: Net) -> tuple[Client, Client]:
    """Two clients, two connections, both idle again (the second opened while
    the first client held the first connection in a transaction)."""
    first = net.login()
    link = in_transaction(net, first)
    second = net.login()
    commit(net, first, link)
    assert net.states() == {POOL_LINK_BASE: ServerState.IDLE,
                            POOL_LINK_BASE + 1: ServerState.IDLE}
    return first, second


def closed_links(net: Net, mark: int) -> set[int]:
    return {a.link for a in pool_actions_since(net, mark) if isinstance(a, CloseUpstream)}


def test_the_maintenance_timer_is_armed_at_start_and_after_every_run() -> None:
    net = Net(maintenance_interval=2.5)
    assert net.pool_timers == {MAINTENANCE_TIMER: 2.5}
    net.fire_pool()
    net.fire_pool()


def test_idle_connections_close_after_server_idle_timeout() -> None:
    clock = FakeClock()
    net = Net(clock=clock, max_size=2, server_idle_timeout=60.0)
    two_idle_connections(net)
    clock.advance(59)
    mark = len(net.pool_actions)
    net.fire_pool()
    assert closed_links(net, mark) == set()
    clock.advance(2)
    net.fire_pool()
    assert closed_links(net, mark) == {POOL_LINK_BASE, POOL_LINK_BASE + 1}
    for link in (POOL_LINK_BASE, POOL_LINK_BASE + 1):
        assert net.servers[link].events() == [pw.Terminate(), pw.ConnectionClosed()]
    row = net.row()
    assert (row["servers_closed"], row["servers_idle"]) == (2, 0)
    net.check_books()


def test_the_idle_timeout_counts_from_the_last_use() -> None:
    clock = FakeClock()
    net = Net(clock=clock, max_size=1, server_idle_timeout=60.0)
    client = net.login()
    clock.advance(50)
    client.send(pw.Query(query="SELECT 1"))
    net.serve()
    clock.advance(50)
    mark = len(net.pool_actions)
    net.fire_pool()
    assert closed_links(net, mark) == set()
    clock.advance(11)
    net.fire_pool()
    assert closed_links(net, mark) == {POOL_LINK_BASE}


def test_the_idle_timeout_keeps_min_idle_connections() -> None:
    clock = FakeClock()
    net = Net(clock=clock, max_size=2, min_idle=1, server_idle_timeout=60.0)
    two_idle_connections(net)
    clock.advance(61)
    mark = len(net.pool_actions)
    net.fire_pool()
    assert len(closed_links(net, mark)) == 1
    assert list(net.states().values()) == [ServerState.IDLE]
    assert net.opened() == []  # min_idle is met: nothing to open
    clock.advance(1000)
    net.fire_pool()
    assert len(closed_links(net, mark)) == 1


def test_min_idle_opens_connections_once_the_key_was_used() -> None:
    net = Net(max_size=3, min_idle=2)
    client = net.client()
    net.fire_pool()
    assert net.opened() == [POOL_LINK_BASE]  # the login's own: the key is not used yet
    net.settle()
    assert isinstance(client.events()[-1], pw.ReadyForQuery)
    net.fire_pool()
    assert net.opened() == [POOL_LINK_BASE + 1]
    net.fire_pool()  # one is opening already: no more
    assert net.opened() == [POOL_LINK_BASE + 1]
    net.settle()
    assert net.states() == {POOL_LINK_BASE: ServerState.IDLE,
                            POOL_LINK_BASE + 1: ServerState.IDLE}
    # Opened for nobody: the client never saw it.
    assert client.events() == []
    net.fire_pool()
    assert net.opened() == []
    assert net.row()["servers_opened"] == 2


def test_min_idle_replaces_a_connection_whose_maintenance_login_fails() -> None:
    net = Net(max_size=2, min_idle=2)
    client = net.login()
    net.fire_pool()
    [link] = net.opened()
    net.link_up(link)
    net.server_sends(link, fatal_error("53300", "too many connections"))
    assert not client.closed  # nobody waited for it
    assert net.row()["login_failures"] == 1
    net.check_books()
    net.fire_pool()
    assert net.opened() == [link + 1]


def test_server_lifetime_closes_a_connection_when_it_comes_back() -> None:
    clock = FakeClock()
    net = Net(clock=clock, max_size=1, server_lifetime=100.0, server_idle_timeout=None)
    client = net.login()
    clock.advance(50)
    link = in_transaction(net, client)
    clock.advance(60)
    mark = len(net.pool_actions)
    net.fire_pool()  # in use: maintenance leaves it alone
    assert closed_links(net, mark) == set()
    commit(net, client, link)
    assert closed_links(net, mark) == {link}
    assert net.servers[link].events() == [pw.Terminate(), pw.ConnectionClosed()]
    client.send(pw.Query(query="SELECT 1"))
    assert net.opened() == [link + 1]
    net.serve()
    assert client.events() == [*done("SELECT 1")]


def test_server_lifetime_closes_an_idle_connection_and_min_idle_replaces_it() -> None:
    clock = FakeClock()
    net = Net(clock=clock, max_size=2, min_idle=1, server_lifetime=100.0,
              server_idle_timeout=None)
    net.login()
    clock.advance(99)
    mark = len(net.pool_actions)
    net.fire_pool()
    assert closed_links(net, mark) == set()
    clock.advance(2)
    net.fire_pool()
    assert closed_links(net, mark) == {POOL_LINK_BASE}
    assert net.opened() == [POOL_LINK_BASE + 1]
    net.settle()
    assert net.states() == {POOL_LINK_BASE + 1: ServerState.IDLE}


# -- hypothesis: any bytes on a pool link ---------------------------------------------------

#: Where a pool link can be when bytes arrive, and what else is going on then.
LINK_STATES = ("login", "authenticated", "baseline", "idle", "verify", "active", "busy",
               "pinned", "reset", "session mode")


def reach(state: str, *, check_protocol: bool = True) -> tuple[Net, int]:
    """A pool whose link ``POOL_LINK_BASE`` is in ``state``, with a client
    waiting for a connection wherever one can.

    The clients read frames without decoding them: what the server sends in a
    transaction goes to its client untouched, and only the client can judge it.
    """
    net = Net(max_size=1, mode="session" if state == "session mode" else "transaction",
              client_decode=set(), check_protocol=check_protocol,
              lenient=not check_protocol)
    link = POOL_LINK_BASE
    if state in ("login", "authenticated", "baseline"):
        net.client()
        net.link_up(link)
        if state == "authenticated":
            net.servers[link].events()
            net.server_sends(link, pw.AuthenticationOk(),
                             pw.ParameterStatus(name="client_encoding", value="UTF8"))
        elif state == "baseline":
            net.accept_login(link)
        net.client()  # another one waits behind the login
        return net, link
    first = net.login()
    if state in ("active", "busy"):
        first.send(pw.Query(query="BEGIN"))
        net.servers[link].events()
        net.server_sends(link, *done("BEGIN", IN_BLOCK))
        if state == "busy":
            first.send(pw.Query(query="SELECT 1"))
    elif state in ("pinned", "reset"):
        first.send(pw.Query(query="SET search_path = private"))
        net.servers[link].events()
        net.server_sends(link, *done("SET"))
        if state == "reset":
            first.hang_up()
            assert net.server(link).state == ServerState.CHECKING
    if state != "idle":  # idle: nobody waits, or the connection would not stay idle
        waiting = net.client()
        assert len(waiting.events()) == 1  # AuthenticationOk, and it waits
    if state in ("idle", "verify"):
        assert net.server(link).state == (
            ServerState.IDLE if state == "idle" else ServerState.CHECKING)
    net.servers[link].events()
    return net, link


def _answers() -> st.SearchStrategy[bytes]:
    """Plausible answers to the pool's own queries: rows of any shape and bytes,
    errors, odd transaction states."""
    message = st.one_of(
        pst.row_descriptions(max_fields=3, allow_max_count=False),
        pst.data_rows(allow_max_count=False),
        st.tuples(st.binary(max_size=8), st.binary(max_size=8)).map(
            lambda v: pw.DataRow(values=v)),
        st.just(pw.DataRow(values=(b"alice", b"alice"))),
        pst.command_completes(), pst.ready_for_query(), pst.error_responses(),
        pst.notice_responses(), pst.parameter_statuses(), pst.notification_responses(),
        pst.backend_key_data(), pst.authentications(),
    )
    return st.lists(message, max_size=6).map(lambda ms: b"".join(m.encode() for m in ms))


def fuzz_bytes() -> st.SearchStrategy[bytes]:
    """Noise, valid server messages out of turn, answers of every shape, and
    those answers mutated or followed by noise."""
    valid = st.lists(pst.backend_messages(), max_size=4).map(
        lambda ms: b"".join(m.encode() for m in ms))
    return st.one_of(
        st.binary(max_size=64), _answers(), valid,
        _answers().flatmap(lambda data: pst.mutations(data) if data else st.just(data)),
        st.builds(lambda a, b: a + b, _answers(), st.binary(max_size=16)),
    )


def check_outputs(net: Net) -> None:
    """Everything the engine sent is valid protocol for the state machine that
    reads it, and its books add up."""
    for client in net.clients:
        client.events()
    for server in net.servers.values():
        if not server.hung_up:
            server.events()
    net.check_books()
    assert net.proxy.stats.internal_errors == 0


def fuzz_link(state: str, chunks: Sequence[bytes], *, check_protocol: bool) -> None:
    """Feed ``chunks`` to the link in ``state``; then it hangs up and healthy
    servers answer the rest: nobody is left waiting.

    With ``check_protocol`` the engine must pass on only valid protocol; without
    it (the selective path) a client may get the server's bytes as they came,
    and its own state machine refusing them counts as the client's judgement."""
    net, link = reach(state, check_protocol=check_protocol)
    server = net.servers[link]
    for chunk in chunks:
        net.server_bytes(link, chunk)
        check_outputs(net)
    if not server.closed:
        net.server_hangs_up(link)
        check_outputs(net)
    assert link not in net.states()
    net.serve()
    check_outputs(net)
    assert net.row()["clients_waiting"] == 0
    for client in net.clients:
        if client.judged is not None:
            continue
        last = client.received[-1]
        assert client.closed or (isinstance(last, pw.RawMessage) and last.type_code == b"Z"), (
            client.received)


FUZZ_SETTINGS = settings(deadline=None, report_multiple_bugs=False, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.mark.parametrize("check_protocol", [True, False], ids=["checked", "selective"])
@settings(FUZZ_SETTINGS, max_examples=120)
@given(state=st.sampled_from(LINK_STATES), data=st.data(), payload=fuzz_bytes())
def test_any_bytes_on_a_pool_link_are_handled_or_close_the_link(
        check_protocol: bool, state: str, data: st.DataObject, payload: bytes) -> None:
    fuzz_link(state, data.draw(pst.chunkings(payload), label="chunks"),
              check_protocol=check_protocol)


@pytest.mark.slow
@settings(FUZZ_SETTINGS, max_examples=1200)
@given(state=st.sampled_from(LINK_STATES), data=st.data(), payload=fuzz_bytes())
def test_any_bytes_on_a_pool_link_long_run(
        state: str, data: st.DataObject, payload: bytes) -> None:
    fuzz_link(state, data.draw(pst.chunkings(payload), label="chunks"),
              check_protocol=data.draw(st.booleans(), label="check_protocol"))


# -- hypothesis: client bytes between transactions ------------------------------------------


def _client_parts() -> st.SearchStrategy[bytes]:
    """Pieces of what a client sends between transactions: requests, a
    goodbye, and bytes that break the protocol."""
    def encoded(*messages: pw.Message) -> bytes:
        return b"".join(m.encode() for m in messages)

    queries = st.sampled_from(["SELECT 1", "BEGIN", "COMMIT", "SET search_path = x", ""]).map(
        lambda sql: encoded(pw.Query(query=sql)))
    extended = st.sampled_from(["", "s1"]).map(lambda name: encoded(
        pw.Parse(statement=name, query="SELECT 1"), pw.Bind(statement=name),
        pw.Execute(), pw.Sync()))
    return st.one_of(
        queries, queries, extended,
        st.just(encoded(pw.Terminate())),
        st.binary(min_size=1, max_size=6),
        st.just(b"Q\x00\x00\x00\x04"),  # a Query without its text
    )


@dataclass
class Transcript:
    """What one run of a client's bytes led to, from the point it started."""

    to_client: bytes
    to_servers: dict[int, list[str]]
    client_closed: bool
    close_reason: str | None
    pool: list[dict[str, Any]]
    proxy: dict[str, int]


def run_client_bytes(chunks: Iterable[bytes], *, eof: bool, busy: bool) -> Transcript:
    """A logged-in client between transactions sends ``chunks``; healthy servers
    answer everything afterwards. ``busy``: another client holds the only
    connection in a transaction meanwhile, so the first request is held."""
    net = Net(max_size=1)
    client = net.login()
    other = net.login() if busy else None
    if other is not None:
        in_transaction(net, other)
    raw_mark = len(client.raw)
    server_marks = {link: len(s.received) for link, s in net.servers.items()}
    for chunk in chunks:
        client.send_bytes(chunk)
    if eof and not client.closed:
        client.hang_up()
    if other is not None:
        other.send(pw.Query(query="COMMIT"))
    net.serve()
    for server in net.servers.values():  # what reached links the pool closed, too
        if not server.hung_up:
            server.events()
    assert net.proxy.stats.internal_errors == 0
    net.check_books()
    return Transcript(
        to_client=bytes(client.raw[raw_mark:]),
        to_servers={link: [REJECT_TOKEN.sub("pgwire_reject_", repr(event))
                           for event in s.received[server_marks.get(link, 0):]]
                    for link, s in net.servers.items()},
        client_closed=client.closed, close_reason=client.session.close_reason,
        pool=[{k: v for k, v in row.items() if k != "wait_seconds"} for row in net.pool.stats()],
        proxy=net.proxy.stats.as_dict())


def check_chunking(parts: list[bytes], sizes: list[int], eof: bool, busy: bool) -> None:
    stream = b"".join(parts)
    whole = run_client_bytes([stream] if stream else [], eof=eof, busy=busy)
    chunked = run_client_bytes(pst.split(stream, sizes), eof=eof, busy=busy)
    assert chunked == whole


CHUNKING_SETTINGS = settings(deadline=None, report_multiple_bugs=False,
                             suppress_health_check=[HealthCheck.too_slow])


@settings(CHUNKING_SETTINGS, max_examples=100)
@given(parts=st.lists(_client_parts(), max_size=6), sizes=st.lists(st.integers(1, 12)),
       eof=st.booleans(), busy=st.booleans())
def test_client_bytes_between_transactions_behave_alike_in_any_chunking(
        parts: list[bytes], sizes: list[int], eof: bool, busy: bool) -> None:
    check_chunking(parts, sizes, eof, busy)


@pytest.mark.slow
@settings(CHUNKING_SETTINGS, max_examples=1000)
@given(parts=st.lists(_client_parts(), max_size=10), sizes=st.lists(st.integers(1, 12)),
       eof=st.booleans(), busy=st.booleans())
def test_client_bytes_in_any_chunking_long_run(
        parts: list[bytes], sizes: list[int], eof: bool, busy: bool) -> None:
    check_chunking(parts, sizes, eof, busy)

"""Server connections shared by sessions, without I/O.

A :class:`Pool` owns every pooled server connection of one proxy process.
Its links are numbered from :data:`POOL_LINK_BASE` up; the adapter drives the
pool like a session (``upstream_data``, ``upstream_connected``,
``upstream_failed``, ``timer_fired``) and carries out the actions it returns.
Sessions check connections out and give them back; while a session holds
one, the pool passes that connection's bytes to the session.

What happens between two clients is the pool's own work, on the connection
and out of every client's sight:

- a *reset* undoes the session state the last client created (only what it
  created, from the kinds the session tracked; DISCARD ALL when it cannot
  tell, or always with ``reset="discard_all"``);
- a *verification* asks ``current_user, session_user`` and compares them
  with what the connection had right after its login; with the transaction
  status of the answer's ReadyForQuery this proves the next client starts
  where a fresh login would. It runs right after a reset, and before a
  connection goes to a client other than the one that used it last. A
  connection that fails either is closed, never reused, and counted.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final

from ..auth import ScramKeys
from ..client import ClientConnection
from ..protocol import (
    NEED_DATA,
    PROTOCOL_3_0,
    ConnectionClosed,
    DataRow,
    ErrorResponse,
    Message,
    Phase,
    ProtocolError,
    Query,
    RawMessage,
    Terminate,
)
from ._actions import Action, CloseUpstream, OpenUpstream, SendToUpstream, StartTimer
from ._pool_config import PoolConfig

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["POOL_LINK_BASE", "Pool", "PoolKey", "PoolKeyStats", "PooledServer", "ServerState"]

#: Pool links are numbered from here (a session's own links are below).
POOL_LINK_BASE: Final = 16
MAINTENANCE_TIMER: Final = "pool maintenance"
VERIFY_SQL: Final = "SELECT pg_catalog.current_user(), pg_catalog.session_user()"
# What undoes each kind of session state (in this order; DISCARD ALL covers all).
_RESET_SQL: Final = (
    ("role", "SET SESSION AUTHORIZATION DEFAULT; RESET ROLE"),
    ("settings", "RESET ALL"),
    ("prepare", "DEALLOCATE ALL"),
    ("cursor", "CLOSE ALL"),
    ("listen", "UNLISTEN *"),
    ("advisory", "SELECT pg_catalog.pg_advisory_unlock_all()"),
    ("temp", "DISCARD TEMP"),
    ("sequence", "DISCARD SEQUENCES"),
)
_KNOWN_KINDS: Final = frozenset(kind for kind, _ in _RESET_SQL)


def _broken(conn: ClientConnection) -> bool:
    """The connection holds a protocol or TLS error: it can never be used again."""
    return (conn._error is not None or conn.frontend._error is not None
            or conn._channel.error is not None)


class ServerState:
    """Where a pooled server connection is (strings, for stats and logs)."""

    CONNECTING: Final = "connecting"
    LOGIN: Final = "login"
    CHECKING: Final = "checking"      # the pool's own queries: baseline, reset, verification
    IDLE: Final = "idle"
    ACTIVE: Final = "active"
    CLOSED: Final = "closed"


@dataclass(frozen=True, slots=True)
class PoolKey:
    """What makes two server connections interchangeable."""

    user: str
    database: str
    parameters: tuple[tuple[str, str], ...]

    def label(self) -> str:
        """``user@database`` (for stats and metrics)."""
        return f"{self.user}@{self.database}"


@dataclass(slots=True)
class PoolKeyStats:
    """Counters of one key since the proxy started."""

    checkouts: int = 0
    waits: int = 0
    wait_seconds: float = 0.0
    checkout_timeouts: int = 0
    servers_opened: int = 0
    servers_closed: int = 0
    login_failures: int = 0
    resets: int = 0
    discard_alls: int = 0
    verifications: int = 0
    failed_verifications: int = 0
    failed_resets: int = 0
    pinned_transactions: int = 0
    refused_statements: int = 0
    reprepared: int = 0

    def as_dict(self) -> dict[str, int | float]:
        """The counters by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _Task:
    """Queries the pool runs on a connection of its own, then ``then(ok)``."""

    __slots__ = ("error", "expect", "fatal", "queries", "reset", "rows", "then")

    def __init__(self, queries: list[str], expect: tuple[str, str] | None,
                 then: Callable[[bool], None]) -> None:
        self.queries = len(queries)
        self.reset = len(queries) > 1
        self.expect = expect
        self.then = then
        self.rows: list[tuple[str | None, ...]] = []
        self.error: str | None = None
        self.fatal = False


class PooledServer:
    """One server connection of the pool."""

    __slots__ = ("baseline", "checked", "conn", "created", "dirty", "for_session", "id",
                 "idle_since", "key", "last_session", "prepared", "session", "state",
                 "task", "task_since")

    def __init__(self, link: int, key: PoolKey, conn: ClientConnection, now: float) -> None:
        self.id = link
        self.key = key
        self.conn = conn
        self.state: str = ServerState.CONNECTING
        #: The session holding the connection (ACTIVE only).
        self.session: Session | None = None
        #: The session that held it last, and whether it was verified since.
        self.last_session: int | None = None
        self.checked = False
        self.created = now
        self.idle_since = now
        #: (current_user, session_user) right after login.
        self.baseline: tuple[str, str] | None = None
        #: Session state kinds a client left on this connection.
        self.dirty: set[str] = set()
        #: Names of the pool's own prepared statements on this connection.
        self.prepared: set[str] = set()
        self.task: _Task | None = None
        #: When the pool sent its current task's queries (CHECKING only).
        self.task_since = now
        #: The session whose checkout opened this connection (to tell a failed login).
        self.for_session: Session | None = None

    def __repr__(self) -> str:
        return f"<PooledServer {self.id} {self.key.label()} {self.state}>"


@dataclass(slots=True)
class _KeyPool:
    key: PoolKey
    password: str | ScramKeys | None
    idle: list[PooledServer] = field(default_factory=list)
    waiters: deque[tuple[Session, float]] = field(default_factory=deque)
    servers: set[PooledServer] = field(default_factory=set)
    stats: PoolKeyStats = field(default_factory=PoolKeyStats)
    clients: int = 0


class Pool:
    """Every pooled server connection of one proxy process (sans-IO)."""

    __slots__ = ("_by_conn", "_by_link", "_clock", "_keys", "_links", "_orphans", "_out",
                 "_proxy", "_timer_armed", "config", "driver", "shutting_down")

    def __init__(self, proxy: Any, config: PoolConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._proxy = proxy
        self.config = config
        self._clock = clock
        self._keys: dict[PoolKey, _KeyPool] = {}
        self._by_link: dict[int, PooledServer] = {}
        self._by_conn: dict[int, PooledServer] = {}
        self._links = itertools.count(POOL_LINK_BASE)
        self._out: list[Action] = []
        self._timer_armed = False
        self._orphans: set[str] = set()
        self.shutting_down = False
        #: The adapter's handle for whatever performs this pool's actions.
        self.driver: object = None

    # -- the adapter's side ------------------------------------------------------------

    def start(self) -> list[Action]:
        """The adapter is ready: arm the maintenance timer."""
        self._arm()
        return self.take()

    def take(self) -> list[Action]:
        """Actions for the pool's own links and timers, in order."""
        out = self._out
        self._out = []
        return out

    def upstream_connected(self, link: int) -> list[Action]:
        server = self._by_link.get(link)
        if server is not None and server.state == ServerState.CONNECTING:
            server.state = ServerState.LOGIN
            try:
                server.conn.start()
            except ProtocolError as exc:
                self._login_failed(server, "08006", exc.message)
                return self.take()
            self._flush(server)
        return self.take()

    def upstream_failed(self, error: str, link: int) -> list[Action]:
        server = self._by_link.get(link)
        if server is not None:
            self._proxy.stats.upstream_connect_failures += 1
            self._login_failed(server, "08006", "could not connect to the upstream server: "
                               + error, connect=True)
        return self.take()

    def upstream_data(self, data: bytes, link: int) -> list[Action]:
        server = self._by_link.get(link)
        if server is None:
            return self.take()
        session = server.session
        if session is not None:
            self._proxy._route(session, session.upstream_data(data))
            return self.take()
        try:
            server.conn.receive_data(data)
            self._events(server)
        except ProtocolError as exc:
            self._broken(server, exc.message)
        return self.take()

    def timer_fired(self, name: str) -> list[Action]:
        if name == MAINTENANCE_TIMER:
            self._timer_armed = False
            self._maintain()
            self._arm()
        return self.take()

    def job_done(self, job_id: int, outcome: object) -> list[Action]:
        return self.take()

    def shutdown(self) -> list[Action]:
        """The proxy stops: close idle connections; the rest close as their sessions end."""
        self.shutting_down = True
        for server in list(self._by_link.values()):
            if server.session is None:
                self._close(server)
        return self.take()

    def closed(self) -> None:
        """The adapter closed every pool link."""
        for server in list(self._by_link.values()):
            self._forget(server)

    # -- sessions' side ----------------------------------------------------------------

    def key_for(self, user: str, database: str, parameters: dict[str, str]) -> PoolKey:
        return PoolKey(user, database, tuple(sorted(parameters.items())))

    def checkout(self, session: Session, key: PoolKey,
                 password: str | ScramKeys | None) -> None:
        """Find ``session`` a connection for ``key``: now (``session._attach``),
        or later; the session arms its own checkout timer."""
        pool = self._keys.get(key)
        if pool is None:
            pool = self._keys[key] = _KeyPool(key, password)
        elif password is not None:
            pool.password = password
        if self.shutting_down:
            session._pool_failed("57P03", "the database system is shutting down")
            return
        pool.waiters.append((session, self._clock()))
        self._serve(pool)
        if any(w is session for w, _ in pool.waiters) and not self._grow(pool):
            pool.stats.waits += 1

    def cancel_wait(self, session: Session) -> None:
        """``session`` gave up waiting (it closed, or its checkout timer ran out)."""
        for pool in self._keys.values():
            for index, (waiter, _) in enumerate(pool.waiters):
                if waiter is session:
                    del pool.waiters[index]
                    return

    def checkout_timed_out(self, session: Session, key: PoolKey) -> None:
        pool = self._keys.get(key)
        if pool is not None:
            pool.stats.checkout_timeouts += 1
        self.cancel_wait(session)

    def client_joined(self, key: PoolKey) -> None:
        pool = self._keys.get(key)
        if pool is not None:
            pool.clients += 1

    def client_left(self, key: PoolKey) -> None:
        pool = self._keys.get(key)
        if pool is not None and pool.clients > 0:
            pool.clients -= 1

    def release(self, server: PooledServer, *, ending: bool, healthy: bool,
                reset: set[str]) -> None:
        """The session holding ``server`` is done with it: ``ending`` (the
        client left) or at the end of a transaction; ``reset``: the state kinds
        to undo before anyone else uses it."""
        server.session = None
        pool = self._keys[server.key]
        conn = server.conn
        if not healthy or _broken(conn) or conn.frontend.phase is not Phase.READY or (
            conn.frontend.busy
        ) or (
            conn.frontend.transaction_status != "I"
        ) or self.shutting_down or self._expired(server):
            self._close(server)
            self._serve(pool)
            return
        server.dirty |= reset
        everything = self.config.reset == "discard_all" and (
            ending or self.config.mode == "transaction")
        if server.dirty or everything or self._stale(server):
            self._reset(server, everything or not server.dirty <= _KNOWN_KINDS)
            return
        self._idle(server)

    def orphan(self, names: Iterable[str]) -> None:
        """Statements of the pool's naming that nobody may use or see any more (a
        client closed them, or left): each connection drops them before it
        next goes to a client."""
        self._orphans.update(names)

    def _stale(self, server: PooledServer) -> set[str]:
        return server.prepared & self._orphans if self._orphans else set()

    def write(self, conn: ClientConnection, data: bytes) -> None:
        """Bytes a session sent on a pooled connection: for the adapter to write."""
        server = self._by_conn.get(id(conn))
        if server is not None:
            self._emit(SendToUpstream(data, server.id))

    def note(self, key: PoolKey, counter: str, amount: int = 1) -> None:
        """Count an event of ``key`` (see :class:`PoolKeyStats`)."""
        pool = self._keys.get(key)
        if pool is not None:
            setattr(pool.stats, counter, getattr(pool.stats, counter) + amount)

    # -- observability -----------------------------------------------------------------

    def stats(self) -> list[dict[str, Any]]:
        """One row per key: gauges (clients, servers by state, waiting clients)
        and the counters of :class:`PoolKeyStats`."""
        rows: list[dict[str, Any]] = []
        for key, pool in sorted(self._keys.items(), key=lambda kv: kv[0].label()):
            states = [s.state for s in pool.servers]
            row: dict[str, Any] = {
                "user": key.user, "database": key.database, "mode": self.config.mode,
                "clients": pool.clients, "clients_waiting": len(pool.waiters),
                "servers_active": states.count(ServerState.ACTIVE),
                "servers_idle": states.count(ServerState.IDLE),
                "servers_checking": states.count(ServerState.CHECKING),
                "servers_connecting": states.count(ServerState.CONNECTING)
                + states.count(ServerState.LOGIN),
            }
            row.update(pool.stats.as_dict())
            rows.append(row)
        return rows

    def servers(self) -> list[PooledServer]:
        """Every open pooled connection."""
        return list(self._by_link.values())

    # -- inside ------------------------------------------------------------------------

    def _opening(self, pool: _KeyPool) -> int:
        return sum(1 for s in pool.servers
                   if s.state in (ServerState.CONNECTING, ServerState.LOGIN)
                   or (s.state == ServerState.CHECKING and s.baseline is None))

    def _open(self, pool: _KeyPool, session: Session | None) -> None:
        config = self._proxy.config
        tls = config.upstream_tls
        key = pool.key
        conn = ClientConnection(
            user=key.user, database=key.database, password=pool.password,
            parameters=dict(key.parameters), sslmode=tls.sslmode,
            sslrootcert=tls.sslrootcert, sslcert=tls.sslcert, sslkey=tls.sslkey,
            ssl_context=tls.context, server_hostname=tls.server_hostname,
            allow_plaintext_password=True, channel_binding="prefer",
            protocol_version=PROTOCOL_3_0, max_message_size=config.max_message_size,
            decode=self._proxy._pool_decode, relay_authentication=False,
        )
        server = PooledServer(next(self._links), key, conn, self._clock())
        server.for_session = session
        pool.servers.add(server)
        pool.stats.servers_opened += 1
        self._by_link[server.id] = server
        self._by_conn[id(conn)] = server
        self._emit(OpenUpstream(server.id, config.upstream, config.connect_timeout))

    def _grow(self, pool: _KeyPool) -> bool:
        """Open connections for waiters no opening one will serve (within
        ``max_size``); False if some waiter must wait for a busy one."""
        # Connections logging in, being reset or verified will serve waiters soon.
        coming = sum(1 for s in pool.servers if s.state in (
            ServerState.CONNECTING, ServerState.LOGIN, ServerState.CHECKING))
        waiting = len(pool.waiters) - coming
        while waiting > 0 and len(pool.servers) < self.config.max_size and (
            not self.shutting_down
        ):
            self._open(pool, pool.waiters[-waiting][0])
            waiting -= 1
        return waiting <= 0

    def _serve(self, pool: _KeyPool) -> None:
        """Hand idle connections to waiting sessions, oldest waiter first; open
        more for the rest while ``max_size`` allows."""
        self._hand_out(pool)
        if pool.waiters:
            self._grow(pool)

    def _hand_out(self, pool: _KeyPool) -> None:
        while pool.waiters:
            session, since = pool.waiters[0]
            server = self._pick(pool, session)
            if server is None:
                return
            pool.waiters.popleft()
            pool.idle.remove(server)
            if self._stale(server):
                # Statements of a client that left or closed them: dropped first.
                pool.waiters.appendleft((session, since))
                self._reset(server, False)
                return
            needs_check = not server.checked and server.last_session != session.session_id
            if needs_check or self._clock() - server.idle_since > (
                self.config.health_check_after
            ):
                # Verify first; the session stays first in line for it.
                pool.waiters.appendleft((session, since))
                self._verify(server)
                return
            self._give(pool, server, session, since)

    def _pick(self, pool: _KeyPool, session: Session) -> PooledServer | None:
        if not pool.idle:
            return None
        for server in reversed(pool.idle):
            if server.last_session == session.session_id:
                return server
        for server in reversed(pool.idle):
            if server.checked:
                return server
        return pool.idle[-1]

    def _give(self, pool: _KeyPool, server: PooledServer, session: Session,
              since: float) -> None:
        server.state = ServerState.ACTIVE
        server.session = session
        # Whatever the session does now is unverified, whoever it is.
        server.checked = False
        server.last_session = session.session_id
        pool.stats.checkouts += 1
        waited = self._clock() - since
        if waited > 0:
            pool.stats.wait_seconds += waited
        session._attach(server)

    def _idle(self, server: PooledServer) -> None:
        pool = self._keys[server.key]
        server.state = ServerState.IDLE
        server.idle_since = self._clock()
        pool.idle.append(server)
        self._serve(pool)
        # Anything that came in behind the last answer (a notice, a FATAL).
        if server.state == ServerState.IDLE:
            try:
                self._events(server)
            except ProtocolError as exc:
                self._broken(server, exc.message)

    def _run(self, server: PooledServer, queries: list[str], expect: tuple[str, str] | None,
             then: Callable[[bool], None]) -> None:
        server.state = ServerState.CHECKING
        server.task = _Task(queries, expect, then)
        server.task_since = self._clock()
        try:
            for sql in queries:
                server.conn.send(Query(query=sql))
        except ProtocolError as exc:  # the connection broke while nobody looked
            self._broken(server, exc.message)
            return
        self._flush(server)

    def _reset(self, server: PooledServer, everything: bool) -> None:
        pool = self._keys[server.key]
        if everything:
            pool.stats.discard_alls += 1
            queries = ["DISCARD ALL"]
            server.prepared.clear()
        else:
            pool.stats.resets += 1
            statements = [sql for kind, sql in _RESET_SQL if kind in server.dirty]
            if server.dirty & {"prepare", "settings", "temp"}:
                # Statements planned under the client's settings or over its
                # temporary tables go too.
                if "prepare" not in server.dirty:
                    statements.append("DEALLOCATE ALL")
                server.prepared.clear()
            else:
                stale = sorted(self._stale(server))
                statements += [f'DEALLOCATE "{name}"' for name in stale]
                server.prepared.difference_update(stale)
            queries = ["; ".join(statements)] if statements else []
        self._forget_orphans()
        server.dirty.clear()
        self._check(server, queries, "failed_resets")

    def _forget_orphans(self) -> None:
        """Orphaned names no connection has any more."""
        orphans = self._orphans
        if orphans:
            left: set[str] = set()
            for other in self._by_link.values():
                left |= other.prepared & orphans
            orphans.intersection_update(left)

    def _verify(self, server: PooledServer) -> None:
        self._check(server, [], "failed_verifications")

    def _check(self, server: PooledServer, reset: list[str], failure: str) -> None:
        """Run ``reset`` (if any) and the verification in one round trip: the
        connection goes idle verified, or is closed and ``failure`` counted."""
        pool = self._keys[server.key]
        pool.stats.verifications += 1

        def done(ok: bool) -> None:
            if ok:
                server.checked = True
                self._idle(server)
            else:
                setattr(pool.stats, failure, getattr(pool.stats, failure) + 1)
                self._close(server)
                self._serve(pool)

        self._run(server, [*reset, VERIFY_SQL], server.baseline, done)

    def _logged_in(self, server: PooledServer) -> None:
        def done(ok: bool) -> None:
            task_rows = rows
            if not ok or len(task_rows) != 1 or len(task_rows[0]) != 2 or (
                None in task_rows[0]
            ):
                self._login_failed(server, "08006", "the new server connection did not "
                                   "answer the pool's baseline query")
                return
            current, session = task_rows[0]
            assert current is not None and session is not None
            if session != server.key.user:
                self._login_failed(server, "28000", f"the server connection logged in as "
                                   f"{server.key.user!r} reports session_user {session!r}")
                return
            server.baseline = (current, session)
            server.checked = True
            server.for_session = None
            self._idle(server)

        self._run(server, [VERIFY_SQL], None, done)
        assert server.task is not None
        rows = server.task.rows

    def _events(self, server: PooledServer) -> None:
        conn = server.conn
        while server.state not in (ServerState.CLOSED, ServerState.ACTIVE):
            event = conn.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, ConnectionClosed):
                self._broken(server, "the server closed the connection")
                return
            if not isinstance(event, Message | RawMessage):
                continue
            code = event.type_code
            if server.state == ServerState.LOGIN:
                if code == b"E":
                    error = conn.frontend.decode(event) if isinstance(event, RawMessage) \
                        else event
                    assert isinstance(error, ErrorResponse)
                    self._login_failed(server, error.code or "08006",
                                       error.message or "login failed", error=error)
                    return
                if code == b"Z":
                    self._logged_in(server)
                continue
            task = server.task
            if task is None:
                if code == b"E":  # a FATAL while idle (terminated, shut down)
                    self._broken(server, "the server sent an error while idle")
                    return
                continue  # notices and parameter reports of an idle connection
            if code == b"D":
                row = conn.frontend.decode(event) if isinstance(event, RawMessage) else event
                assert isinstance(row, DataRow)
                encoding = conn.frontend.encoding
                try:
                    task.rows.append(tuple(None if v is None else bytes(v).decode(encoding)
                                           for v in row.values))
                except UnicodeDecodeError:
                    task.error = f"an answer not in the {encoding} encoding"
            elif code == b"E":
                error = conn.frontend.decode(event) if isinstance(event, RawMessage) else event
                assert isinstance(error, ErrorResponse)
                task.error = f"{error.code}: {error.message}"
                task.fatal = error.ends_session
            elif code == b"Z":
                task.queries -= 1
                if task.queries:
                    task.rows.clear()  # only the last query's rows are compared
                    continue
                server.task = None
                ok = task.error is None and conn.frontend.transaction_status == "I"
                if ok and task.expect is not None:
                    ok = len(task.rows) == 1 and task.rows[-1] == task.expect
                task.then(ok)
        self._flush(server)

    def _login_failed(self, server: PooledServer, code: str, message: str, *,
                      error: ErrorResponse | None = None, connect: bool = False) -> None:
        pool = self._keys[server.key]
        if not connect:
            pool.stats.login_failures += 1
        waiter = server.for_session
        self._close(server)
        if waiter is not None and any(w is waiter for w, _ in pool.waiters):
            self.cancel_wait(waiter)
            waiter._pool_failed(code, message, error)
        if pool.waiters:
            self._grow(pool)

    def _broken(self, server: PooledServer, why: str) -> None:
        if server.state in (ServerState.CONNECTING, ServerState.LOGIN) or (
            server.baseline is None
        ):
            self._login_failed(server, "08006", why)
            return
        self._proxy.stats.upstream_errors += 1
        pool = self._keys[server.key]
        task = server.task
        if task is not None:  # the connection died under a reset or a verification
            if task.reset:
                pool.stats.failed_resets += 1
            else:
                pool.stats.failed_verifications += 1
        self._close(server)
        self._serve(pool)

    def _expired(self, server: PooledServer) -> bool:
        lifetime = self.config.server_lifetime
        return lifetime is not None and self._clock() - server.created > lifetime

    def _close(self, server: PooledServer) -> None:
        if server.state == ServerState.CLOSED:
            return
        conn = server.conn
        try:
            if conn.frontend.phase not in (Phase.CLOSED, Phase.STARTUP, Phase.SSL_NEGOTIATION):
                conn.send(Terminate())
            self._flush(server)
        except ProtocolError:
            pass
        server.state = ServerState.CLOSED
        server.task = None
        self._emit(CloseUpstream(server.id))
        self._forget(server)

    def _forget(self, server: PooledServer) -> None:
        server.state = ServerState.CLOSED
        self._by_link.pop(server.id, None)
        self._by_conn.pop(id(server.conn), None)
        pool = self._keys.get(server.key)
        if pool is not None and server in pool.servers:
            pool.servers.discard(server)
            pool.stats.servers_closed += 1
            if server in pool.idle:
                pool.idle.remove(server)

    def _flush(self, server: PooledServer) -> None:
        data = server.conn.data_to_send()
        if data:
            self._emit(SendToUpstream(data, server.id))

    def _emit(self, action: Action) -> None:
        self._out.append(action)
        self._proxy._wake(self)

    def _arm(self) -> None:
        if not self._timer_armed and not self.shutting_down:
            self._timer_armed = True
            self._emit(StartTimer(MAINTENANCE_TIMER, self.config.maintenance_interval))

    def _give_up_stuck(self, pool: _KeyPool, now: float) -> None:
        """Close connections whose server stopped answering the pool itself.

        A login gets ``login_timeout`` from the moment the connection was
        opened, as a client's login does (its connect is also bounded by
        ``connect_timeout``);
        the pool's own round trip (reset, verification, baseline query) gets
        ``upstream_read_timeout``, or ``connect_timeout`` when that is off.
        Without this a black-holed server connection would stay "connecting"
        or "checking" for good, and with ``max_size`` reached the key would
        serve nobody again (clients would get 53300 until a restart).
        """
        limits = self._proxy.config
        login_limit = limits.login_timeout
        check_limit = limits.upstream_read_timeout or limits.connect_timeout
        for server in list(pool.servers):
            state = server.state
            if state in (ServerState.CONNECTING, ServerState.LOGIN):
                if now - server.created > login_limit:
                    self._login_failed(server, "08006", f"the server connection did not "
                                       f"finish its login within {login_limit:g} s")
            elif state == ServerState.CHECKING and now - server.task_since > check_limit:
                if server.baseline is None:  # the baseline query right after login
                    self._login_failed(server, "08006", f"the server did not answer the "
                                       f"pool's baseline query within {check_limit:g} s")
                else:
                    self._broken(server, f"the server did not answer the pool's check "
                                 f"within {check_limit:g} s")

    def _maintain(self) -> None:
        now = self._clock()
        config = self.config
        for pool in list(self._keys.values()):
            self._give_up_stuck(pool, now)
            keep = config.min_idle
            for server in list(pool.idle):
                idle_for = now - server.idle_since
                surplus = len(pool.idle) > keep
                if self._expired(server) or (
                    surplus and config.server_idle_timeout is not None
                    and idle_for > config.server_idle_timeout
                ):
                    self._close(server)
            missing = min(config.min_idle - len(pool.idle) - self._opening(pool),
                          config.max_size - len(pool.servers))
            if pool.stats.checkouts and not self.shutting_down:
                for _ in range(max(0, missing)):
                    self._open(pool, None)

"""The state every session of one proxy process shares."""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

from ..middleware.base import Middleware
from ._actions import Action
from ._cancel import CancelKeys
from ._config import ProxyConfig
from ._pool import Pool
from ._pooling import PoolMiddleware
from ._relay import DecodedFrames
from ._session import Session, SessionState

__all__ = ["Proxy", "ProxyStats"]

logger = logging.getLogger("pgwire.proxy")


@dataclass(slots=True)
class ProxyStats:
    """Counters since the proxy started (read them; the proxy writes them)."""

    sessions_started: int = 0
    logins: int = 0
    login_failures: int = 0
    login_timeouts: int = 0
    upstream_read_timeouts: int = 0
    refused_max_clients: int = 0
    cancel_requests: int = 0
    upstream_connect_failures: int = 0
    upstream_errors: int = 0
    auth_query_failures: int = 0
    client_protocol_errors: int = 0
    internal_errors: int = 0
    rejected: int = 0
    jobs_refused: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Proxy:
    """Sessions, cancel keys, counters and shutdown state of one proxy process.

    Sans-IO like the sessions it makes: an adapter accepts a connection,
    calls :meth:`new_session`, and drives the session. ``shutting_down``
    refuses new logins (57P03); :meth:`begin_shutdown` returns the sessions
    to tell.
    """

    __slots__ = ("_client_frames", "_closed", "_ids", "_mock_key", "_pool_decode",
                 "_pool_middleware", "_server_frames", "_sessions", "_woken", "cancel_keys",
                 "clock", "config", "pool", "shutting_down", "stats")

    def __init__(self, config: ProxyConfig, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.config = config
        #: Seconds, for the timeouts sessions measure themselves (the upstream
        #: read timeout); the adapters' timers only say when to look.
        self.clock = clock
        self.cancel_keys = CancelKeys(config.instance_id, config.peers)
        self.stats = ProxyStats()
        self.shutting_down = False
        self._closed = False
        self._sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        # One mock key for the process: an unknown user's fake SCRAM salt stays
        # the same across attempts, as in PostgreSQL.
        self._mock_key = secrets.token_bytes(32)
        # Small frames the sessions decoded, by their bytes (one per direction).
        self._client_frames = DecodedFrames()
        self._server_frames = DecodedFrames()
        # Fail at start, not at the first client, if a factory is broken.
        chain = self._instantiate_middleware()
        # Targets (sessions, the pool) with actions made outside their own calls.
        self._woken: dict[int, Session | Pool] = {}
        #: The pool of server connections, when ``config.pool`` is set.
        self.pool: Pool | None = None
        self._pool_middleware: PoolMiddleware | None = None
        self._pool_decode: frozenset[bytes] = frozenset()
        if config.pool is not None:
            self.pool = Pool(self, config.pool, clock)
            self._pool_middleware = PoolMiddleware(config.pool)
            chain.append(self._pool_middleware)
            self._pool_decode = frozenset({b"E"}).union(*(m.server_messages for m in chain))

    def take_woken(self) -> list[Session | Pool]:
        """Sessions and the pool that have actions made outside their own calls
        (a connection handed over, bytes for a pooled link): perform each one's
        ``take()`` with its driver. Call this after performing any actions."""
        if not self._woken:
            return []
        woken = list(self._woken.values())
        self._woken.clear()
        return woken

    def _wake(self, target: Session | Pool) -> None:
        self._woken[id(target)] = target

    def _route(self, target: Session, actions: list[Action]) -> None:
        """Actions a session returned to the pool's call: its driver performs them."""
        if actions:
            target._out[:0] = actions
            self._wake(target)

    def new_session(self, client_address: tuple[str, int] | str | None = None) -> Session:
        """A session for a client that just connected; call its ``start()``."""
        session = Session(self, next(self._ids), client_address)
        self._sessions[session.session_id] = session
        self.stats.sessions_started += 1
        return session

    @property
    def sessions(self) -> Iterator[Session]:
        """The sessions not yet forgotten."""
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def session_on_link(self, link: int) -> Session | None:
        """The session holding the pool's server connection on ``link``, if any
        (adapters apply back-pressure across the two)."""
        pool = self.pool
        if pool is None:
            return None
        server = pool._by_link.get(link)
        return server.session if server is not None else None

    def logins_in_use(self) -> int:
        """Sessions counted against ``max_clients`` (cancel connections excluded)."""
        return sum(1 for s in self._sessions.values()
                   if s.state not in (SessionState.CANCEL, SessionState.CLOSED))

    def begin_shutdown(self) -> list[Session]:
        """Refuse new logins from now on; the sessions still running."""
        self.shutting_down = True
        if self.pool is not None:
            self.pool.shutting_down = True
        return list(self._sessions.values())

    def close(self) -> None:
        """The adapter finished shutting down: call :meth:`Middleware.close` on each
        middleware instance of the configuration (once; errors are logged)."""
        if self._closed:
            return
        self._closed = True
        for item in self.config.middleware:
            if isinstance(item, Middleware):
                try:
                    item.close()
                except Exception as exc:  # one bad middleware must not stop the rest
                    logger.error("%r.close() failed: %s", item, exc, exc_info=exc)

    def _forget(self, session: Session) -> None:
        self._sessions.pop(session.session_id, None)

    def _instantiate_middleware(self) -> list[Middleware[Any]]:
        chain: list[Middleware[Any]] = []
        for item in self.config.middleware:
            instance = item if isinstance(item, Middleware) else item()
            if not isinstance(instance, Middleware):
                raise TypeError(f"middleware factory {item!r} returned {instance!r}, "
                                "not a Middleware")
            chain.append(instance)
        return chain

    def _log_exception(self, session: Session, exc: BaseException) -> None:
        logger.error("session %d: %s", session.session_id, exc, exc_info=exc)

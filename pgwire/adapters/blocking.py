"""Run the proxy with plain sockets and threads: no event-loop library needed.

One thread accepts clients; each session then runs in a thread of its own
that waits on the session's sockets with :mod:`selectors` (non-blocking
sockets, so one slow peer never stalls the others), runs its timers as
deadlines of that wait, and hands middleware jobs to a thread pool. While one
socket has more than :data:`WRITE_LIMIT` bytes queued, the session's other
sockets are not read, so a slow client cannot make the proxy hold a fast
server's whole result; the client is not read either while its own queue is
that full (it does not read its answers) or while it has ``max_pipeline``
requests in flight. A pooled session counts the pool's socket of the server
connection it holds as one of its own.

The sans-IO :class:`~pgwire.proxy.Proxy` state (sessions, cancel keys,
counters) is shared by every session, so one lock lets one thread at a time
into the engine; sockets are read and written outside it.

Usage::

    proxy = start_proxy(ProxyConfig(upstream=("127.0.0.1", 5432)), [("127.0.0.1", 6432)])
    proxy.serve_forever()          # until proxy.shutdown() from another thread
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import functools
import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from ..middleware.base import JobOutcome
from ..proxy import (
    MAIN_LINK,
    Action,
    Address,
    Pool,
    Proxy,
    ProxyConfig,
    Session,
    format_address,
)
from ._base import SessionDriver, run_job
from ._sockets import LINGER as _LINGER
from ._sockets import READ_SIZE as _READ_SIZE
from ._sockets import WRITE_LIMIT, bind_listeners, peer_address, reason

if TYPE_CHECKING:
    from ..testing.proxy import RunningProxy

__all__ = ["WRITE_LIMIT", "BlockingProxy", "running_in_thread", "serve_forever", "start_proxy"]

logger = logging.getLogger("pgwire.proxy")

_CONNECTING: Final = (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK)


def _is_tcp(sock: socket.socket) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6)


class _Side:
    """One socket of a session (the client's, or an upstream link) and its write queue."""

    __slots__ = ("closing", "eof", "link", "mask", "open", "out", "sock")

    def __init__(self, sock: socket.socket, link: int | None) -> None:
        self.sock = sock
        self.link = link  # None: the client
        self.out = bytearray()
        self.closing = False  # close once ``out`` is written
        self.eof = False  # nothing more to read
        self.mask = 0  # the events the selector watches
        self.open = True


class _Connect:
    """An OpenUpstream in progress: the addresses left to try, within a deadline."""

    __slots__ = ("address", "deadline", "error", "infos", "link", "sock", "started", "timeout")

    def __init__(self, link: int, address: Address, timeout: float) -> None:
        self.link = link
        self.address = address
        self.timeout = timeout
        self.deadline = 0.0
        self.started = False
        self.infos: list[tuple[int, int, int, object]] | None = None
        self.sock: socket.socket | None = None
        self.error = "no address to connect to"


class _Timer:
    __slots__ = ("deadline",)

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline


def _nothing() -> None:
    """A call posted only to wake a driver's thread (it looks at its sockets again)."""


class _Driver(SessionDriver):
    __slots__ = ("aborted", "client", "connects", "finished", "inbox", "linger_until", "links",
                 "post_lock", "selector", "server", "sides", "thread", "timers", "waker",
                 "waker_out")

    def __init__(self, server: BlockingProxy, session: Session | Pool,
                 sock: socket.socket | None) -> None:
        super().__init__(session, server.proxy)
        self.server = server
        #: None for the pool's driver (its links belong to many clients).
        self.client = _Side(sock, None) if sock is not None else None
        # Every open socket, closing ones too.
        self.sides: list[_Side] = [self.client] if self.client is not None else []
        self.links: dict[int, _Side] = {}
        self.connects: dict[int, _Connect] = {}
        self.timers: dict[str, _Timer] = {}
        self.inbox: deque[Callable[[], None]] = deque()
        self.post_lock = threading.Lock()
        self.finished = False
        self.aborted = False
        self.linger_until: float | None = None
        self.waker, self.waker_out = socket.socketpair()
        try:
            self.waker.setblocking(False)
            self.waker_out.setblocking(False)
            self.selector = selectors.DefaultSelector()
            self.selector.register(self.waker, selectors.EVENT_READ, None)
        except BaseException:
            self.waker.close()
            self.waker_out.close()
            raise
        name = (f"pgwire-session-{session.session_id}" if isinstance(session, Session)
                else "pgwire-pool")
        self.thread = threading.Thread(target=self.run, daemon=True, name=name)

    # -- calling the engine ------------------------------------------------------------

    def drive(self, method: Callable[..., list[Action]], *args: object) -> None:
        """Call a Session method and carry out its actions, holding the engine lock."""
        with self.server.lock:
            self.perform(method(*args))

    def deliver(self, target: Any) -> None:
        """Actions made for ``target`` elsewhere: its own thread performs them."""
        if threading.current_thread() is self.thread:
            self.perform(target.take())  # the engine lock is held: we are in drive()
        else:
            self.post(functools.partial(self.drive, target.take))

    def post(self, call: Callable[[], None]) -> bool:
        """Have the session's thread run ``call`` (from any thread); False once it ended."""
        with self.post_lock:
            if self.finished:
                return False
            self.inbox.append(call)
            with contextlib.suppress(OSError):  # a full pipe already wakes it
                self.waker_out.send(b"\0")
        return True

    def abort(self) -> None:
        """End the session now, closing every socket unwritten (from the session thread)."""
        self.aborted = True

    # -- primitives ---------------------------------------------------------------------

    def send_client(self, data: bytes) -> None:
        client = self.client
        if client is not None and client.open and not client.closing:
            client.out += data

    def send_upstream(self, link: int, data: bytes) -> None:
        side = self.links.get(link)
        if side is not None and not side.closing:
            side.out += data

    def open_upstream(self, link: int, address: Address, timeout: float) -> None:
        self.connects[link] = _Connect(link, address, timeout)  # started by the loop

    def close_upstream(self, link: int) -> None:
        attempt = self.connects.pop(link, None)
        if attempt is not None:
            self._drop_attempt(attempt)
        side = self.links.pop(link, None)
        if side is not None:
            side.closing = side.eof = True

    def close_client(self) -> None:
        self.timers.clear()
        for link in list(self.links) + list(self.connects):
            self.close_upstream(link)
        if self.client is not None:
            self.client.closing = self.client.eof = True
        else:
            self.closed_client = True

    def start_timer(self, name: str, seconds: float) -> None:
        self.timers[name] = _Timer(time.monotonic() + seconds)

    def cancel_timer(self, name: str) -> None:
        self.timers.pop(name, None)

    def run_job(self, job_id: int, job: Callable[[], object]) -> None:
        try:
            future = self.server.executor.submit(run_job, job)
        except RuntimeError as exc:  # the pool is shut down: the proxy is stopping
            self.post(functools.partial(self.drive, self.session.job_done, job_id,
                                        JobOutcome(error=exc)))
            return

        def done(finished: concurrent.futures.Future[JobOutcome]) -> None:
            if not finished.cancelled():
                self.post(functools.partial(self.drive, self.session.job_done, job_id,
                                            finished.result()))

        future.add_done_callback(done)

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.drive(self.session.start)
            while self._step():
                pass
        except Exception as exc:  # an adapter or engine bug: this session ends, not the proxy
            self.server.proxy._log_exception(self.session, exc)
        finally:
            self._finish()

    def _step(self) -> bool:
        """One wait for sockets, timers and posted calls; False when the session is over."""
        for attempt in list(self.connects.values()):
            if not attempt.started:
                attempt.started = True
                attempt.deadline = time.monotonic() + attempt.timeout
                self._attempt(attempt)
        for side in list(self.sides):
            if side.out or side.closing:
                self._write(side)
        if self.aborted:
            return False
        if self.client is None:
            if self.closed_client:  # the pool's driver, told to stop
                if self.linger_until is None:
                    self.linger_until = time.monotonic() + _LINGER
                if not self.sides or time.monotonic() >= self.linger_until:
                    return False
        elif not self.client.open:
            if self.linger_until is None:
                self.close_client()
                self.linger_until = time.monotonic() + _LINGER
            if not self.sides or time.monotonic() >= self.linger_until:
                return False
        self._watch()
        for key, events in self.selector.select(self._wait_time()):
            target = key.data
            if target is None:
                with contextlib.suppress(OSError):
                    self.waker.recv(4096)
            elif isinstance(target, _Connect):
                self._connect_ready(target)
            elif isinstance(target, _Side):
                if events & selectors.EVENT_WRITE and target.open:
                    self._write(target)
                if events & selectors.EVENT_READ and target.open and not target.eof:
                    self._read(target)
        self._run_due()
        while self.inbox:
            self.inbox.popleft()()
        return True

    def _watch(self) -> None:
        """Register each socket for what it needs: reading unless held back, writing
        while it has a queue."""
        client = self.client
        for side in self.sides:
            mask = 0
            if not side.eof and (self._link_readable(side) if client is None else (not any(
                other is not side and len(other.out) > WRITE_LIMIT for other in self.sides
            ) and (side is not client or self._client_readable()))):
                mask |= selectors.EVENT_READ
            if side.out:
                mask |= selectors.EVENT_WRITE
            server_link = side.link == MAIN_LINK if client is not None else True
            if server_link and (mask ^ side.mask) & selectors.EVENT_READ and not side.eof:
                self._hold_upstream(side, not mask & selectors.EVENT_READ)
            if mask != side.mask:
                if side.mask == 0:
                    self.selector.register(side.sock, mask, side)
                elif mask == 0:
                    self.selector.unregister(side.sock)
                else:
                    self.selector.modify(side.sock, mask, side)
                side.mask = mask

    def _client_readable(self) -> bool:
        """Whether to read the client: not while what it was sent is not read (as
        PostgreSQL, which reads no more while its answers wait), nor while it
        has the most requests in flight the session takes (``max_pipeline``)."""
        client = self.client
        assert client is not None
        if len(client.out) > WRITE_LIMIT or not self.session.accepts_client_data:
            return False
        link = self.session.pooled_link
        pool_driver = self.server._pool_driver
        if link is None or pool_driver is None:
            return True
        side = pool_driver.links.get(link)  # the pool's thread owns it: only a peek
        return side is None or len(side.out) <= WRITE_LIMIT

    def _hold_upstream(self, side: _Side, held: bool) -> None:
        """The server link ``side`` (a session's own, or a pooled one) is read no
        more, or again: tell its session (see Session.upstream_held)."""
        if side.mask == 0 and not held:
            return  # registered for the first time: it was never held
        if self.client is not None:
            session: Any = self.session
        else:
            session = self.proxy.session_on_link(side.link) if side.link is not None else None
        if session is not None:
            with self.server.lock:
                session.upstream_held(held)

    def _link_readable(self, side: _Side) -> bool:
        """The pool's driver: whether to read a pooled link, not while the client of
        the session that holds it has a full queue (it does not read its answers)."""
        session = self.proxy.session_on_link(side.link) if side.link is not None else None
        driver = session.driver if session is not None else None
        if not isinstance(driver, _Driver) or driver.client is None:
            return True
        return len(driver.client.out) <= WRITE_LIMIT  # its thread owns it: only a peek

    def _drained(self, side: _Side) -> None:
        """``side``'s queue fell to the limit: the driver on the other end of a
        pooled connection may read again, so wake it to look."""
        if self.client is None:
            session = self.proxy.session_on_link(side.link) if side.link is not None else None
            driver = session.driver if session is not None else None
        else:
            driver = self.server._pool_driver if side is self.client else None
        if isinstance(driver, _Driver) and driver is not self:
            driver.post(_nothing)

    def _wait_time(self) -> float | None:
        deadlines = [timer.deadline for timer in self.timers.values()]
        deadlines += [a.deadline for a in self.connects.values() if a.started]
        if self.linger_until is not None:
            deadlines.append(self.linger_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _run_due(self) -> None:
        now = time.monotonic()
        for attempt in list(self.connects.values()):
            if attempt.started and attempt.deadline <= now and (
                self.connects.get(attempt.link) is attempt
            ):
                self._drop_attempt(attempt)
                self._connect_failed(attempt, f"timed out after {attempt.timeout:g} s")
        due = sorted((timer.deadline, name, timer) for name, timer in self.timers.items()
                     if timer.deadline <= now)
        for _, name, timer in due:
            if self.timers.get(name) is timer:  # not cancelled or restarted meanwhile
                del self.timers[name]
                self.drive(self.session.timer_fired, name)

    # -- reading and writing -----------------------------------------------------------

    def _read(self, side: _Side) -> None:
        try:
            data = side.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost(side)
            return
        if not data:
            side.eof = True
        if side.link is None:
            self.drive(self.session.client_data, data)
        elif self.links.get(side.link) is side:
            if data:
                self.drive(self.session.upstream_data, data, side.link)
            else:
                self._link_gone(side)

    def _write(self, side: _Side) -> None:
        if side.out:
            try:
                sent = side.sock.send(side.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._lost(side)
                return
            full = len(side.out) > WRITE_LIMIT
            del side.out[:sent]
            if full and len(side.out) <= WRITE_LIMIT and self.proxy.pool is not None:
                self._drained(side)
        if side.closing and not side.out:
            self._close_side(side)

    def _close_side(self, side: _Side) -> None:
        if side.open:
            side.open = False
            if side.mask:
                self.selector.unregister(side.sock)
                side.mask = 0
            side.sock.close()
            side.out.clear()
            self.sides.remove(side)

    def _lost(self, side: _Side) -> None:
        """The socket failed (reset, broken pipe): drop it and tell the session."""
        self._close_side(side)
        if side.link is None:
            if not self.closed_client:
                self.drive(self.session.client_data, b"")
            self.close_client()
        else:
            self._link_gone(side)

    def _link_gone(self, side: _Side) -> None:
        assert side.link is not None
        if self.links.get(side.link) is side:
            del self.links[side.link]
            self.drive(self.session.upstream_data, b"", side.link)
        side.closing = side.eof = True

    # -- connecting --------------------------------------------------------------------

    def _attempt(self, attempt: _Connect) -> None:
        """Start connecting to the next address of ``attempt`` (or report failure)."""
        address = attempt.address
        if attempt.infos is None:
            if isinstance(address, str):
                attempt.infos = [(socket.AF_UNIX, socket.SOCK_STREAM, 0, address)]
            else:
                try:
                    found = socket.getaddrinfo(address[0], address[1],
                                               type=socket.SOCK_STREAM)
                except OSError as exc:
                    self.connects.pop(attempt.link, None)
                    self._connect_failed(attempt, reason(exc))
                    return
                attempt.infos = [(family, kind, proto, sockaddr)
                                 for family, kind, proto, _, sockaddr in found]
        while attempt.infos:
            family, kind, proto, sockaddr = attempt.infos.pop(0)
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                attempt.error = reason(exc)
                continue
            sock.setblocking(False)
            code = sock.connect_ex(sockaddr)  # type: ignore[arg-type]
            if code == 0:
                self._connected(attempt, sock)
                return
            if code in _CONNECTING:
                attempt.sock = sock
                self.selector.register(sock, selectors.EVENT_WRITE, attempt)
                return
            attempt.error = os.strerror(code)
            sock.close()
        self.connects.pop(attempt.link, None)
        self._connect_failed(attempt, attempt.error)

    def _connect_ready(self, attempt: _Connect) -> None:
        sock = attempt.sock
        if sock is None or self.connects.get(attempt.link) is not attempt:
            return
        self.selector.unregister(sock)
        attempt.sock = None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == 0:
            self._connected(attempt, sock)
        else:
            attempt.error = os.strerror(code)
            sock.close()
            self._attempt(attempt)

    def _connected(self, attempt: _Connect, sock: socket.socket) -> None:
        self.connects.pop(attempt.link, None)
        if _is_tcp(sock):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        side = _Side(sock, attempt.link)
        self.sides.append(side)
        self.links[attempt.link] = side
        self.drive(self.session.upstream_connected, attempt.link)

    def _connect_failed(self, attempt: _Connect, why: str) -> None:
        self.drive(self.session.upstream_failed, why, attempt.link)

    def _drop_attempt(self, attempt: _Connect) -> None:
        sock = attempt.sock
        if sock is not None:
            attempt.sock = None
            self.selector.unregister(sock)
            sock.close()

    # -- the end -----------------------------------------------------------------------

    def _finish(self) -> None:
        with self.post_lock:
            self.finished = True
        for side in list(self.sides):
            self._close_side(side)
        for attempt in self.connects.values():
            self._drop_attempt(attempt)
        self.connects.clear()
        self.timers.clear()
        self.inbox.clear()
        self._close_own()
        with self.server.lock:
            self.session.closed()
        self.server._forget(self)

    def _close_own(self) -> None:
        self.selector.close()
        self.waker.close()
        self.waker_out.close()


class BlockingProxy:
    """A proxy on threads: its listening sockets, session threads and job pool."""

    def __init__(self, proxy: Proxy, *, job_threads: int = 4) -> None:
        self.proxy = proxy
        #: Lets one thread at a time into the sans-IO engine (sessions share the Proxy).
        self.lock = threading.Lock()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=job_threads, thread_name_prefix="pgwire-job")
        self._listeners: list[socket.socket] = []
        self._drivers: set[_Driver] = set()
        self._pool_driver: _Driver | None = None
        if proxy.pool is not None:
            self._pool_driver = _Driver(self, proxy.pool, None)
        self._changed = threading.Condition(self.lock)
        self._accept_thread: threading.Thread | None = None
        self._waker, self._waker_out = socket.socketpair()
        self._stopping = False
        self._hurried = False
        self._stopped = threading.Event()

    @property
    def addresses(self) -> list[Address]:
        """Where the proxy listens (ports resolved when 0 was asked)."""
        found: list[Address] = []
        for sock in self._listeners:
            name = sock.getsockname()
            found.append(name if isinstance(name, str) else (name[0], name[1]))
        return found

    def listen(self, address: Address, *, reuse_port: bool = False, backlog: int = 1024
               ) -> None:
        """Accept clients on ``address`` (``reuse_port``: SO_REUSEPORT, for workers)."""
        for sock in bind_listeners(address, reuse_port, backlog):
            sock.setblocking(False)
            self._listeners.append(sock)
        with contextlib.suppress(OSError):
            self._waker_out.send(b"\0")  # a running accept thread picks it up

    def start(self) -> None:
        """Start accepting clients in a thread of its own."""
        if self._pool_driver is not None and not self._pool_driver.thread.is_alive() and (
            not self._pool_driver.finished
        ):
            self._pool_driver.thread.start()
        if self._accept_thread is None:
            self._accept_thread = threading.Thread(target=self._accept_loop,
                                                   name="pgwire-accept", daemon=True)
            self._accept_thread.start()

    def serve_forever(self) -> None:
        """Accept clients until :meth:`shutdown` (from another thread or a signal
        handler) is done."""
        self.start()
        self._stopped.wait()

    def _accept_loop(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._waker, selectors.EVENT_READ, None)
        watched: set[socket.socket] = set()
        try:
            while not self._stopping:
                for sock in self._listeners:
                    if sock not in watched:
                        selector.register(sock, selectors.EVENT_READ, sock)
                        watched.add(sock)
                for key, _ in selector.select():
                    listener = key.data
                    if listener is None:
                        with contextlib.suppress(OSError):
                            self._waker.recv(4096)
                        continue
                    try:
                        client, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:  # out of file descriptors, say: try again soon
                        logger.error("cannot accept a client: %s", exc)
                        time.sleep(0.1)
                        continue
                    self._start_session(client)
        finally:
            selector.close()
            for sock in self._listeners:
                sock.close()

    def _start_session(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            if _is_tcp(sock):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer: object = sock.getpeername()
        except OSError:
            sock.close()
            return
        with self.lock:
            session = self.proxy.new_session(peer_address(peer))
            try:
                driver = _Driver(self, session, sock)
            except OSError as exc:
                logger.error("cannot start a session: %s", exc)
                sock.close()
                session.closed()
                return
            self._drivers.add(driver)
        driver.thread.start()

    def _forget(self, driver: _Driver) -> None:
        with self._changed:
            self._drivers.discard(driver)
            self._changed.notify_all()

    def _wait_sessions(self, timeout: float, *, hurry: bool) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._drivers and not (hurry and self._hurried):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)

    def _tell_all(self, make: Callable[[_Driver], Callable[[], None]]) -> None:
        with self.lock:
            drivers = list(self._drivers)
        for driver in drivers:
            driver.post(make(driver))

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting; end idle sessions with 57P01 at once and busy ones when
        their transaction ends, or after ``timeout`` (default: the config's
        ``shutdown_timeout``) at the latest. Returns when every session thread ended."""
        if timeout is None:
            timeout = self.proxy.config.shutdown_timeout
        self._stopping = True
        with contextlib.suppress(OSError):
            self._waker_out.send(b"\0")
        if self._accept_thread is not None:
            self._accept_thread.join()
        else:
            for sock in self._listeners:
                sock.close()
        with self.lock:
            self.proxy.begin_shutdown()
            threads = [driver.thread for driver in self._drivers]
        self._tell_all(lambda d: functools.partial(d.drive, d.session.shutdown))
        self._wait_sessions(timeout, hurry=True)
        if self._drivers:
            self._tell_all(lambda d: functools.partial(
                d.drive, functools.partial(d.session.shutdown, immediate=True)))
            self._wait_sessions(5, hurry=False)
        if self._drivers:  # sockets that never closed: drop them
            self._tell_all(lambda d: d.abort)
            self._wait_sessions(5, hurry=False)
        for thread in threads:
            thread.join(5)
        pool_driver = self._pool_driver
        if pool_driver is not None and pool_driver.thread.is_alive():
            pool = pool_driver.session

            def stop() -> None:
                pool_driver.drive(pool.shutdown)
                with self.lock:
                    pool_driver.close_client()

            pool_driver.post(stop)
            pool_driver.thread.join(_LINGER + 5)
        self.proxy.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._waker.close()
        self._waker_out.close()
        self._stopped.set()

    def hurry(self) -> None:
        """Make a running (or the next) :meth:`shutdown` end busy sessions now,
        without waiting for their transactions (a second Ctrl-C)."""
        with self._changed:
            self._hurried = True
            self._changed.notify_all()

    def snapshot(self) -> dict[str, Any]:
        """The proxy's state now as plain data (:func:`pgwire.proxy.snapshot`),
        from any thread, taken under the engine lock (so never call it from
        engine code, such as a middleware hook, which already holds it)."""
        from ..proxy._metrics import snapshot  # noqa: PLC0415 - observability only

        with self.lock:
            return snapshot(self.proxy)


def start_proxy(config: ProxyConfig, listen: Sequence[Address], *, reuse_port: bool = False,
                job_threads: int = 4) -> BlockingProxy:
    """A proxy listening on every address in ``listen``, accepting in a background thread."""
    server = BlockingProxy(Proxy(config), job_threads=job_threads)
    address: Address | None = None
    try:
        for address in listen:
            server.listen(address, reuse_port=reuse_port)
    except OSError as exc:
        server.shutdown(0)
        assert address is not None
        raise OSError(exc.errno, f"cannot listen on {format_address(address)}: "
                      f"{exc.strerror}") from exc
    server.start()
    return server


def serve_forever(config: ProxyConfig, listen: Sequence[Address], *,
                  ready: Callable[[Sequence[Address]], None] | None = None,
                  started: Callable[[BlockingProxy], None] | None = None,
                  reuse_port: bool = False, job_threads: int = 4) -> None:
    """Run a proxy until SIGINT or SIGTERM (call it from the main thread).

    The first signal shuts down gracefully, a second one ends busy sessions
    at once. ``ready`` gets the bound addresses once the proxy accepts;
    ``started`` gets the running proxy before that (to start what watches it).
    """
    server = start_proxy(config, listen, reuse_port=reuse_port, job_threads=job_threads)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            logger.info("signal %d: ending every session now", signum)
            server.hurry()
        else:
            logger.info("signal %d: shutting down", signum)
            stopping.set()
            threading.Thread(target=server.shutdown, name="pgwire-shutdown",
                             daemon=True).start()

    previous = {signum: signal.signal(signum, on_signal)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        if started is not None:
            started(server)
        if ready is not None:
            ready(server.addresses)
        server.serve_forever()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if not stopping.is_set():
            server.shutdown(0)


@contextlib.contextmanager
def running_in_thread(config: ProxyConfig, host: str = "127.0.0.1",
                      shutdown_timeout: float = 5.0) -> Iterator[RunningProxy]:
    """A proxy on ``host`` and a free port, accepting in a background thread (for
    tests); leaving the block shuts it down gracefully and waits for its threads."""
    from ..testing.proxy import RunningProxy  # noqa: PLC0415 - testing is not a dependency

    server = start_proxy(config, [(host, 0)])
    try:
        bound = server.addresses[0]
        assert not isinstance(bound, str)
        yield RunningProxy(bound[0], bound[1], server.proxy, "blocking")
    finally:
        server.shutdown(shutdown_timeout)

"""Run the proxy on Trio (the ``trio`` extra).

Each session is a task with a nursery of its own: per socket one task reads
and one writes, plus a task per running timer, pending connect and job. The
session's actions come synchronously, so writes are queued per socket and its
writer task sends them; while one socket has more than :data:`WRITE_LIMIT`
bytes queued, the session's other sockets are not read, so a slow client
cannot make the proxy hold a fast server's whole result; the client is not
read either while its own queue is that full (it does not read its answers) or
while it has ``max_pipeline`` requests in flight. A pooled session counts the
pool's socket of the server connection it holds as one of its own.

Usage::

    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(serve, ProxyConfig(upstream=("127.0.0.1", 5432)),
                                    [("127.0.0.1", 6432)])
        ...
        await proxy.shutdown()          # serve() returns once it is done
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import trio

from ..middleware.base import JobOutcome
from ..proxy import MAIN_LINK, Address, Pool, Proxy, ProxyConfig, Session, format_address
from ._base import SessionDriver, run_job
from ._sockets import LINGER as _LINGER
from ._sockets import READ_SIZE as _READ_SIZE
from ._sockets import WRITE_LIMIT, bind_listeners, peer_address, reason

if TYPE_CHECKING:
    from ..testing.proxy import RunningProxy

__all__ = ["WRITE_LIMIT", "TrioProxy", "running_in_thread", "serve", "serve_forever"]

logger = logging.getLogger("pgwire.proxy")

_START_TIMEOUT: Final = 30.0


class _Side:
    """One socket of a session (the client's, or an upstream link) and its write queue."""

    __slots__ = ("broken", "chunks", "closing", "link", "queued", "stream", "wakeup")

    def __init__(self, stream: trio.SocketStream, link: int | None) -> None:
        self.stream = stream
        self.link = link  # None: the client
        self.chunks: list[bytes] = []
        self.queued = 0  # bytes queued or being sent
        self.closing = False  # close once the queue is written
        self.broken = False  # the socket failed: drop the queue
        self.wakeup = trio.lowlevel.ParkingLot()

    def write(self, data: bytes) -> None:
        if not (self.closing or self.broken):
            self.chunks.append(data)
            self.queued += len(data)
            self.wakeup.unpark_all()

    def close(self) -> None:
        self.closing = True
        self.wakeup.unpark_all()

    def abort(self) -> None:
        self.broken = True
        self.chunks.clear()
        self.wakeup.unpark_all()


class _Driver(SessionDriver):
    __slots__ = ("client", "client_gone", "flow", "links", "nursery", "pending", "server",
                 "side_gone", "sides", "timers")

    def __init__(self, server: TrioProxy, session: Session | Pool,
                 stream: trio.SocketStream | None, nursery: trio.Nursery) -> None:
        super().__init__(session, server.proxy)
        self.server = server
        self.nursery = nursery
        #: None for the pool's driver (its links belong to many clients).
        self.client = _Side(stream, None) if stream is not None else None
        self.client_gone = trio.Event()
        self.links: dict[int, _Side] = {}
        self.sides: set[_Side] = set()  # every socket still open, closing ones too
        self.side_gone = trio.lowlevel.ParkingLot()
        self.pending: dict[int, trio.CancelScope] = {}
        self.timers: dict[str, trio.CancelScope] = {}
        self.flow = trio.lowlevel.ParkingLot()  # readers waiting for a queue to drain

    # -- primitives ---------------------------------------------------------------------

    def send_client(self, data: bytes) -> None:
        if self.client is not None:
            self.client.write(data)

    def send_upstream(self, link: int, data: bytes) -> None:
        side = self.links.get(link)
        if side is not None:
            side.write(data)

    def open_upstream(self, link: int, address: Address, timeout: float) -> None:
        scope = trio.CancelScope()
        self.pending[link] = scope
        self.nursery.start_soon(self._connect, link, address, timeout, scope)

    async def _connect(self, link: int, address: Address, timeout: float,
                       scope: trio.CancelScope) -> None:
        stream: trio.SocketStream | None = None
        error = "cancelled"
        with scope:
            try:
                with trio.fail_after(timeout):
                    if isinstance(address, str):
                        stream = await trio.open_unix_socket(address)
                    else:
                        stream = await trio.open_tcp_stream(address[0], address[1])
            except trio.TooSlowError:
                error = f"timed out after {timeout:g} s"
            except OSError as exc:
                error = reason(exc)
        if self.pending.get(link) is not scope:  # closed meanwhile
            if stream is not None:
                stream.socket.close()
            return
        del self.pending[link]
        if stream is None:
            self.perform(self.session.upstream_failed(error, link))
            return
        side = _Side(stream, link)
        self.links[link] = side
        self.start_side(side)
        self.perform(self.session.upstream_connected(link))

    def close_upstream(self, link: int) -> None:
        scope = self.pending.pop(link, None)
        if scope is not None:
            scope.cancel()
        side = self.links.pop(link, None)
        if side is not None:
            side.close()

    def close_client(self) -> None:
        for name in list(self.timers):
            self.cancel_timer(name)
        for link in list(self.links) + list(self.pending):
            self.close_upstream(link)
        if self.client is not None:
            self.client.close()

    def start_timer(self, name: str, seconds: float) -> None:
        self.cancel_timer(name)
        scope = trio.CancelScope()
        self.timers[name] = scope
        self.nursery.start_soon(self._timer, name, seconds, scope)

    async def _timer(self, name: str, seconds: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(seconds)
        if self.timers.get(name) is scope:
            del self.timers[name]
            self.perform(self.session.timer_fired(name))

    def cancel_timer(self, name: str) -> None:
        scope = self.timers.pop(name, None)
        if scope is not None:
            scope.cancel()

    def run_job(self, job_id: int, job: Callable[[], object]) -> None:
        self.nursery.start_soon(self._job, job_id, job)

    async def _job(self, job_id: int, job: Callable[[], object]) -> None:
        # An ended session stops waiting; the thread finishes on its own.
        outcome: JobOutcome = await trio.to_thread.run_sync(
            run_job, job, abandon_on_cancel=True, limiter=self.server.limiter)
        self.perform(self.session.job_done(job_id, outcome))

    def deliver(self, target: Any) -> None:
        """Actions made for ``target`` elsewhere (a pooled link's answers): perform
        them, then let a held-back client reader look again."""
        super().deliver(target)
        if self.flow:
            self.flow.unpark_all()

    # -- the sockets -------------------------------------------------------------------

    def start_side(self, side: _Side) -> None:
        self.sides.add(side)
        self.nursery.start_soon(self._run_side, side)

    async def _run_side(self, side: _Side) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, side)
                await self._write(side)
                nursery.cancel_scope.cancel()
        finally:
            side.stream.socket.close()
            self.sides.discard(side)
            self.side_gone.unpark_all()
            self.flow.unpark_all()
            if side is self.client:
                self.client_gone.set()

    async def _write(self, side: _Side) -> None:
        while not side.broken:
            if side.chunks:
                data = side.chunks[0] if len(side.chunks) == 1 else b"".join(side.chunks)
                side.chunks.clear()
                try:
                    await side.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._lost(side)
                    return
                side.queued -= len(data)
                self._drained(side)
            elif side.closing:
                return
            else:
                await side.wakeup.park()

    async def _read(self, side: _Side) -> None:
        while True:
            if self._held_back(side):
                held = self._session_of_link(side)
                if held is not None:
                    held.upstream_held(True)
                while self._held_back(side):
                    await self.flow.park()
                if held is not None:
                    held.upstream_held(False)
            try:
                data = await side.stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._lost(side)
                return
            if side.link is None:
                if self.closed_client:
                    return
                self.perform(self.session.client_data(data))
                if not data:
                    return  # go on writing until the session closes the client
            elif self.links.get(side.link) is side:
                if data:
                    self.perform(self.session.upstream_data(data, side.link))
                    if self.flow:  # answers came back: a held-back client may go on
                        self.flow.unpark_all()
                else:
                    self._link_gone(side)
                    return
            else:
                return  # the session closed this link: stop reading it

    def _held_back(self, reader: _Side) -> bool:
        """Whether another socket of the session has too much queued to read more;
        the client is not read either while its own queue is full (as
        PostgreSQL reads no more while its answers wait) or while it has the
        most requests in flight the session takes (``max_pipeline``)."""
        client = self.client
        if client is None:
            # The pool: its links belong to different clients; a link is not read
            # while the client of the session holding it has a full queue.
            other = self._other_end(reader)
            return other is not None and other.queued > WRITE_LIMIT
        if reader is client and (client.queued > WRITE_LIMIT
                                 or not self.session.accepts_client_data):
            return True
        if reader is client and self.proxy.pool is not None:
            link = self._other_end(client)  # its pooled server connection
            if link is not None and link.queued > WRITE_LIMIT:
                return True
        return any(side is not reader and not side.broken and side.queued > WRITE_LIMIT
                   for side in self.sides)

    def _session_of_link(self, side: _Side) -> Session | None:
        """The session whose server link ``side`` is (None for other sockets)."""
        if self.client is None:
            return self.proxy.session_on_link(side.link) if side.link is not None else None
        session = self.session
        return session if side.link == MAIN_LINK and isinstance(session, Session) else None

    def _other_end(self, side: _Side) -> _Side | None:
        """Across a pooled connection: a session's client, or the pool's link the
        session holds now (the socket the other driver owns)."""
        if self.client is None:
            session = self.proxy.session_on_link(side.link) if side.link is not None else None
            driver = session.driver if session is not None else None
            return driver.client if isinstance(driver, _Driver) else None
        pool_driver = self.server._pool_driver
        link = self.session.pooled_link if side is self.client else None
        if pool_driver is None or link is None:
            return None
        return pool_driver.links.get(link)

    def _drained(self, side: _Side) -> None:
        """``side``'s queue was written: readers of this driver, and of the driver
        on the other end of a pooled connection, may go on."""
        self.flow.unpark_all()
        if self.proxy.pool is None:
            return
        if self.client is None:
            session = self.proxy.session_on_link(side.link) if side.link is not None else None
            driver = session.driver if session is not None else None
        else:
            driver = self.server._pool_driver if side is self.client else None
        if isinstance(driver, _Driver) and driver is not self:
            driver.flow.unpark_all()

    def _lost(self, side: _Side) -> None:
        """The socket failed (reset, broken pipe): drop it and tell the session."""
        side.abort()
        if side.link is None:
            if not self.closed_client:
                self.perform(self.session.client_data(b""))
            self.close_client()
        else:
            self._link_gone(side)

    def _link_gone(self, side: _Side) -> None:
        assert side.link is not None
        if self.links.get(side.link) is side:
            del self.links[side.link]
            self.perform(self.session.upstream_data(b"", side.link))
        side.close()

    async def linger(self) -> None:
        """Wait until every upstream link has written its queue and closed."""
        while self.sides - {self.client} if self.client is not None else self.sides:
            await self.side_gone.park()


class TrioProxy:
    """A proxy on Trio: its listening sockets, sessions and job threads.

    :meth:`serve` runs it (the sessions are its tasks); :meth:`shutdown` ends it.
    """

    def __init__(self, proxy: Proxy, *, job_threads: int = 4) -> None:
        self.proxy = proxy
        #: Bounds the worker threads middleware jobs run in.
        self.limiter = trio.CapacityLimiter(job_threads)
        self._listeners: list[trio.SocketListener] = []
        self._nursery: trio.Nursery | None = None
        self._accepting: trio.CancelScope | None = None
        self._accept_nursery: trio.Nursery | None = None
        self._accept_done = trio.Event()
        self._drivers: set[_Driver] = set()
        self._driver_gone = trio.lowlevel.ParkingLot()
        self._stopped = trio.Event()
        self._grace: trio.CancelScope | None = None
        self._hurried = False
        self._pool_stop = trio.Event()
        self._pool_done = trio.Event()
        #: The pool's driver, while it runs (sessions apply back-pressure across it).
        self._pool_driver: _Driver | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None  # for snapshot()

    @property
    def addresses(self) -> list[Address]:
        """Where the proxy listens (ports resolved when 0 was asked)."""
        found: list[Address] = []
        for listener in self._listeners:
            name = listener.socket.getsockname()
            found.append(name if isinstance(name, str) else (name[0], name[1]))
        return found

    async def listen(self, address: Address, *, reuse_port: bool = False,
                     backlog: int = 1024) -> None:
        """Accept clients on ``address`` (``reuse_port``: SO_REUSEPORT, for workers)."""
        sockets = await trio.to_thread.run_sync(
            functools.partial(bind_listeners, address, reuse_port, backlog))
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                     for sock in sockets]
        self._listeners.extend(listeners)
        if self._accept_nursery is not None:
            for listener in listeners:
                self._accept_nursery.start_soon(self._accept, listener)

    async def serve(self, *, task_status: trio.TaskStatus[TrioProxy] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Accept clients and run their sessions until :meth:`shutdown` is done.

        ``await nursery.start(proxy.serve)`` returns once it accepts.
        """
        self._trio_token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.proxy.pool is not None:
                await nursery.start(self._run_pool, self.proxy.pool)
            else:
                self._pool_done.set()
            self._accepting = trio.CancelScope()
            nursery.start_soon(self._accept_all, self._accepting)
            task_status.started(self)
            await self._stopped.wait()
            nursery.cancel_scope.cancel()

    async def _accept_all(self, accepting: trio.CancelScope) -> None:
        try:
            with accepting:
                async with trio.open_nursery() as nursery:
                    self._accept_nursery = nursery
                    for listener in self._listeners:
                        nursery.start_soon(self._accept, listener)
                    await trio.sleep_forever()
        finally:
            self._accept_nursery = None
            for listener in self._listeners:
                listener.socket.close()
            self._accept_done.set()

    async def _accept(self, listener: trio.SocketListener) -> None:
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:  # out of file descriptors, say: try again soon
                logger.error("cannot accept a client: %s", exc)
                await trio.sleep(0.1)
                continue
            assert self._nursery is not None
            self._nursery.start_soon(self._run_session, stream)

    async def _run_pool(self, pool: Pool, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The pool's links and timers, until the sessions are gone."""
        try:
            async with trio.open_nursery() as nursery:
                driver = _Driver(self, pool, None, nursery)
                self._pool_driver = driver
                driver.perform(pool.start())
                task_status.started()
                await self._pool_stop.wait()
                driver.perform(pool.shutdown())
                driver.close_client()
                with trio.move_on_after(_LINGER):
                    await driver.linger()
                nursery.cancel_scope.cancel()
        finally:
            self._pool_driver = None
            pool.closed()
            self._pool_done.set()

    async def _run_session(self, stream: trio.SocketStream) -> None:
        try:
            peer: object = stream.socket.getpeername()
        except OSError:
            peer = None
        session = self.proxy.new_session(peer_address(peer))
        driver: _Driver | None = None
        try:
            async with trio.open_nursery() as nursery:
                driver = _Driver(self, session, stream, nursery)
                self._drivers.add(driver)
                assert driver.client is not None
                driver.start_side(driver.client)
                driver.perform(session.start())
                await driver.client_gone.wait()
                driver.close_client()
                with trio.move_on_after(_LINGER):
                    await driver.linger()
                nursery.cancel_scope.cancel()  # timers, connects, jobs, stuck links
        except Exception as exc:  # an adapter or engine bug: this session ends, not the proxy
            self.proxy._log_exception(session, exc)
        finally:
            stream.socket.close()
            if driver is not None:
                self._drivers.discard(driver)
            session.closed()
            self._driver_gone.unpark_all()

    async def _all_done(self) -> None:
        while self._drivers:
            await self._driver_gone.park()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting; end idle sessions with 57P01 at once and busy ones when
        their transaction ends, or after ``timeout`` (default: the config's
        ``shutdown_timeout``) at the latest."""
        if timeout is None:
            timeout = self.proxy.config.shutdown_timeout
        if self._accepting is not None:
            self._accepting.cancel()
            await self._accept_done.wait()
        else:
            for listener in self._listeners:
                listener.socket.close()
        self.proxy.begin_shutdown()
        for driver in list(self._drivers):
            driver.perform(driver.session.shutdown())
        with trio.move_on_after(timeout) as self._grace:
            if self._hurried:
                self._grace.cancel()
            await self._all_done()
        if self._drivers:
            for driver in list(self._drivers):
                driver.perform(driver.session.shutdown(immediate=True))
            with trio.move_on_after(5):
                await self._all_done()
        for driver in list(self._drivers):  # sockets that never closed: drop them
            driver.nursery.cancel_scope.cancel()
        with trio.move_on_after(5):
            await self._all_done()
        self._pool_stop.set()
        with trio.move_on_after(_LINGER + 1):
            await self._pool_done.wait()
        # Middleware may flush to files or servers: not on the event loop.
        await trio.to_thread.run_sync(self.proxy.close)
        self._stopped.set()

    def hurry(self) -> None:
        """Make a running (or the next) :meth:`shutdown` end busy sessions now,
        without waiting for their transactions (a second Ctrl-C)."""
        self._hurried = True
        if self._grace is not None:
            self._grace.cancel()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`shutdown` is done."""
        await self._stopped.wait()

    def snapshot(self) -> dict[str, Any]:
        """The proxy's state now as plain data (:func:`pgwire.proxy.snapshot`),
        from any thread: taken in the Trio run that :meth:`serve` runs in (at
        once when called there). Raises RuntimeError before :meth:`serve`
        started, ``trio.RunFinishedError`` after the run ended."""
        from ..proxy._metrics import snapshot  # noqa: PLC0415 - observability only

        token = self._trio_token
        if token is None:
            raise RuntimeError("the proxy is not serving yet: snapshot() needs serve() "
                               "to be running")
        try:
            in_run = trio.lowlevel.current_trio_token() is token
        except RuntimeError:
            in_run = False
        if in_run:
            return snapshot(self.proxy)
        return trio.from_thread.run_sync(snapshot, self.proxy, trio_token=token)


async def serve(config: ProxyConfig, listen: Sequence[Address], *, reuse_port: bool = False,
                job_threads: int = 4,
                task_status: trio.TaskStatus[TrioProxy] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a proxy listening on every address in ``listen`` until its
    :meth:`~TrioProxy.shutdown` is done; ``nursery.start(serve, ...)`` gives the
    :class:`TrioProxy`."""
    server = TrioProxy(Proxy(config), job_threads=job_threads)
    address: Address | None = None
    try:
        for address in listen:
            await server.listen(address, reuse_port=reuse_port)
    except OSError as exc:
        for listener in server._listeners:
            listener.socket.close()
        assert address is not None
        raise OSError(exc.errno, f"cannot listen on {format_address(address)}: "
                      f"{exc.strerror}") from exc
    await server.serve(task_status=task_status)


def serve_forever(config: ProxyConfig, listen: Sequence[Address], *,
                  ready: Callable[[Sequence[Address]], None] | None = None,
                  reuse_port: bool = False, job_threads: int = 4) -> None:
    """Run a proxy in this (main) thread until SIGINT or SIGTERM.

    The first signal shuts down gracefully, a second one ends busy sessions
    at once. ``ready`` gets the bound addresses once the proxy accepts.
    """
    trio.run(functools.partial(_serve_forever, config, listen, ready=ready,
                               reuse_port=reuse_port, job_threads=job_threads))


async def _serve_forever(config: ProxyConfig, listen: Sequence[Address], *,
                         ready: Callable[[Sequence[Address]], None] | None,
                         reuse_port: bool, job_threads: int) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server: TrioProxy = await nursery.start(functools.partial(
                serve, config, listen, reuse_port=reuse_port, job_threads=job_threads))
            if ready is not None:
                ready(server.addresses)
            nursery.start_soon(_stop_on_signals, signals, server, nursery)
            await server.wait_stopped()
            nursery.cancel_scope.cancel()


async def _stop_on_signals(signals: AsyncIterator[int], server: TrioProxy,
                           nursery: trio.Nursery) -> None:
    async for signum in signals:
        if server.proxy.shutting_down:
            logger.info("signal %d: ending every session now", signum)
            server.hurry()
        else:
            logger.info("signal %d: shutting down", signum)
            nursery.start_soon(server.shutdown)


@contextlib.contextmanager
def running_in_thread(config: ProxyConfig, host: str = "127.0.0.1",
                      shutdown_timeout: float = 5.0) -> Iterator[RunningProxy]:
    """A proxy on ``host`` and a free port, in a thread of its own (for tests);
    leaving the block shuts it down gracefully and waits for the thread."""
    from ..testing.proxy import RunningProxy  # noqa: PLC0415 - testing is not a dependency

    started = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        try:
            server = TrioProxy(Proxy(config))
            await server.listen((host, 0))
        except BaseException as exc:
            box["error"] = exc
            started.set()
            return
        box["server"] = server
        box["token"] = trio.lowlevel.current_trio_token()
        started.set()  # clients wait in the listen backlog until serve() accepts
        await server.serve()

    thread = threading.Thread(target=trio.run, args=(main,), name="pgwire-trio-proxy",
                              daemon=True)
    thread.start()
    try:
        if not started.wait(_START_TIMEOUT):
            raise RuntimeError("the trio proxy did not start")
        error = box.get("error")
        if isinstance(error, BaseException):
            raise error
        server = box["server"]
        assert isinstance(server, TrioProxy)
        bound = server.addresses[0]
        assert not isinstance(bound, str)
        yield RunningProxy(bound[0], bound[1], server.proxy, "trio")
    finally:
        if "server" in box:
            server = box["server"]
            token = box["token"]
            assert isinstance(server, TrioProxy) and isinstance(token, trio.lowlevel.TrioToken)
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run(server.shutdown, shutdown_timeout, trio_token=token)
        thread.join(shutdown_timeout + 15)


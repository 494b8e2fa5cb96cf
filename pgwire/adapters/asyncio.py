"""Run the proxy on asyncio (with uvloop when it is installed).

Transports and protocols, not streams: bytes go from ``data_received`` into the
sans-IO session and its actions go straight to ``transport.write``. When one
side's write buffer fills, the other side stops reading until it drains, so a
slow client cannot make the proxy hold a fast server's whole result; the
client is not read either while its own buffer is full (it does not read its
answers) or while it has ``max_pipeline`` requests in flight. A pooled
session counts the pool's socket of the server connection it holds as one of
its own.

Usage::

    proxy = await start_proxy(ProxyConfig(upstream=("127.0.0.1", 5432)),
                              [("127.0.0.1", 6432)])
    await proxy.serve_until_shutdown()      # or: await proxy.shutdown()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import os
import socket
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, cast

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

__all__ = ["AsyncioProxy", "new_event_loop", "run", "start_proxy"]


class _Side(asyncio.Protocol):
    """One socket of a session: the client's, or an upstream link."""

    __slots__ = ("driver", "full", "link", "reading", "transport")

    def __init__(self, driver: _Driver, link: int | None) -> None:
        self.driver = driver
        self.link = link  # None: the client
        self.transport: asyncio.Transport | None = None
        self.full = False  # its write buffer is above the high-water mark
        self.reading = True  # not paused by us

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        driver = self.driver
        if self.link is None:
            driver.perform(driver.session.client_data(data))
        else:
            driver.perform(driver.session.upstream_data(data, self.link))

    def eof_received(self) -> bool:
        self.data_received(b"")
        # A client may hang up right after a CancelRequest: keep its transport
        # until the session says CloseClient (once the cancel went out).
        return self.link is None and not self.driver.closed_client

    def connection_lost(self, exc: Exception | None) -> None:
        driver = self.driver
        if self.link is None:
            driver.client_lost()
        else:
            driver.link_lost(self.link)

    def pause_writing(self) -> None:
        self.full = True
        self.driver.full_changed(self)

    def resume_writing(self) -> None:
        self.full = False
        self.driver.full_changed(self)

    def set_reading(self, reading: bool, session: Session | None = None) -> None:
        """Pause or resume reading this socket (if it changes and is still open);
        ``session``: the session whose server link it is, told of the change."""
        transport = self.transport
        if reading is self.reading or transport is None or transport.is_closing():
            return
        self.reading = reading
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()
        if session is not None:
            session.upstream_held(not reading)


class _Driver(SessionDriver):
    __slots__ = ("accepting", "client", "done", "held_link", "held_link_id", "links", "loop",
                 "pending", "server", "timers")

    def __init__(self, server: AsyncioProxy, session: Session | Pool,
                 client: _Side | None) -> None:
        super().__init__(session, server.proxy)
        self.server = server
        self.loop = server.loop
        self.client = client
        self.links: dict[int, _Side] = {}
        self.pending: dict[int, asyncio.Task[None]] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        #: The session takes more client requests (see Session.accepts_client_data).
        self.accepting = True
        #: The pool's socket this session stopped reading (its client's buffer is
        #: full), and the link number it last held.
        self.held_link: _Side | None = None
        self.held_link_id: int | None = None
        # Made only when shutdown() waits for the session (see finished()).
        self.done: asyncio.Future[None] | None = None

    def finished(self) -> asyncio.Future[None]:
        """A future set once the client's side has closed."""
        if self.done is None:
            self.done = self.loop.create_future()
        return self.done

    # -- primitives ---------------------------------------------------------------------

    def send_client(self, data: bytes) -> None:
        transport = self.client.transport if self.client is not None else None
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def send_upstream(self, link: int, data: bytes) -> None:
        side = self.links.get(link)
        if side is not None and side.transport is not None and not side.transport.is_closing():
            side.transport.write(data)

    def open_upstream(self, link: int, address: Address, timeout: float) -> None:
        self.pending[link] = self.loop.create_task(self._connect(link, address, timeout))

    async def _connect(self, link: int, address: Address, timeout: float) -> None:
        side = _Side(self, link)
        try:
            async with asyncio.timeout(timeout):
                if isinstance(address, str):
                    await self.loop.create_unix_connection(lambda: side, address)
                else:
                    await self.loop.create_connection(lambda: side, address[0], address[1])
        except (OSError, TimeoutError) as exc:
            self.pending.pop(link, None)
            reason = f"timed out after {timeout:g} s" if isinstance(exc, TimeoutError) else (
                exc.strerror or str(exc))
            self.perform(self.session.upstream_failed(reason, link))
            return
        self.pending.pop(link, None)
        if self.closed_client:
            assert side.transport is not None
            side.transport.abort()
            return
        self.links[link] = side
        self.perform(self.session.upstream_connected(link))

    def close_upstream(self, link: int) -> None:
        task = self.pending.pop(link, None)
        if task is not None:
            task.cancel()
        side = self.links.pop(link, None)
        if side is not None and side.transport is not None:
            side.transport.close()

    def close_client(self) -> None:
        self.release_link()
        for name in list(self.timers):
            self.cancel_timer(name)
        for link in list(self.links) + list(self.pending):
            self.close_upstream(link)
        transport = self.client.transport if self.client is not None else None
        if transport is not None:
            transport.close()

    def start_timer(self, name: str, seconds: float) -> None:
        self.cancel_timer(name)
        self.timers[name] = self.loop.call_later(seconds, self._fire, name)

    def _fire(self, name: str) -> None:
        self.timers.pop(name, None)
        self.perform(self.session.timer_fired(name))

    def cancel_timer(self, name: str) -> None:
        handle = self.timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def run_job(self, job_id: int, job: Callable[[], object]) -> None:
        future = self.loop.run_in_executor(self.server.executor, run_job, job)

        def done(f: asyncio.Future[JobOutcome]) -> None:
            if not f.cancelled():
                self.perform(self.session.job_done(job_id, f.result()))

        future.add_done_callback(done)

    # -- events from the sockets -----------------------------------------------------------

    def client_lost(self) -> None:
        if not self.closed_client:
            self.perform(self.session.client_data(b""))
        self.close_client()
        self.session.closed()
        self.server._drivers.discard(self)
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def link_lost(self, link: int) -> None:
        if self.links.get(link) is not None:
            self.links.pop(link)
            self.perform(self.session.upstream_data(b"", link))

    def perform(self, actions: Iterable[Action]) -> None:
        super().perform(actions)
        if self.client is not None:
            session = self.session
            accepting: bool = session.accepts_client_data
            link = session.pooled_link if self.server.proxy.pool is not None else None
            if accepting is not self.accepting or link != self.held_link_id:
                self.accepting = accepting
                self.held_link_id = link
                self.update_reading()

    def full_changed(self, side: _Side) -> None:
        """A socket's write buffer filled or drained: decide again what to read
        (for a pooled link, the session holding it decides)."""
        if self.client is not None:
            self.update_reading()
            return
        session = self.proxy.session_on_link(side.link) if side.link is not None else None
        driver = session.driver if session is not None else None
        if isinstance(driver, _Driver):
            driver.update_reading()

    def _pooled_side(self) -> _Side | None:
        """The pool's socket of the server connection this session holds now."""
        link = self.session.pooled_link if self.server.proxy.pool is not None else None
        pool_driver = self.server._pool_driver
        if link is None or pool_driver is None:
            return None
        return pool_driver.links.get(link)

    def update_reading(self) -> None:
        """Read each socket unless another one's write buffer is full; the client
        also not while its own is (as PostgreSQL reads no more while its answers
        wait) nor while it has the most requests in flight the session takes
        (``max_pipeline``). A pooled session treats the pool's socket of the
        server connection it holds as one of its own."""
        client = self.client
        if client is None:
            return  # the pool: each link's session decides (see full_changed)
        pooled = self._pooled_side()
        sides = [client, *self.links.values()]
        full = [side for side in sides if side.full]
        session = self.session
        for side in sides:
            reading = not any(other is not side for other in full)
            if side is client:
                reading = reading and not side.full and self.accepting and not (
                    pooled is not None and pooled.full)
            side.set_reading(reading, session if side.link == MAIN_LINK else None)
        held = self.held_link
        if held is not None and held is not pooled:
            held.set_reading(True)  # handed back: the pool reads it as it likes
        if pooled is not None:
            pooled.set_reading(not client.full, session)
        self.held_link = pooled if pooled is not None and not pooled.reading else None

    def release_link(self) -> None:
        """The session ends: a pooled link it stopped reading is read again."""
        held = self.held_link
        if held is not None:
            self.held_link = None
            held.set_reading(True)


class AsyncioProxy:
    """A running proxy: its listening sockets, sessions and worker pool."""

    def __init__(self, proxy: Proxy, *, job_threads: int = 4) -> None:
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=job_threads, thread_name_prefix="pgwire-job")
        self._servers: list[asyncio.Server] = []
        self._drivers: set[_Driver] = set()
        self._stopped = self.loop.create_future()
        self._pool_driver: _Driver | None = None
        if proxy.pool is not None:
            self._pool_driver = _Driver(self, proxy.pool, None)
            self._pool_driver.perform(proxy.pool.start())

    @property
    def addresses(self) -> list[Address]:
        """Where the proxy listens (ports resolved when 0 was asked)."""
        found: list[Address] = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                found.append(name if isinstance(name, str) else (name[0], name[1]))
        return found

    async def listen(self, address: Address, *, reuse_port: bool = False,
                     backlog: int = 1024) -> None:
        """Accept clients on ``address`` (``reuse_port``: SO_REUSEPORT, for workers)."""
        if isinstance(address, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)
            server = await self.loop.create_unix_server(self._accept, address, backlog=backlog)
        else:
            server = await self.loop.create_server(
                self._accept, address[0], address[1], backlog=backlog,
                reuse_port=reuse_port or None, reuse_address=True)
        self._servers.append(server)

    def _accept(self) -> asyncio.Protocol:
        return _Accepted(self)

    def _start_session(self, side: _Accepted) -> _Driver:
        assert side.transport is not None
        peer = side.transport.get_extra_info("peername")
        address = peer if isinstance(peer, str) else (
            (peer[0], peer[1]) if isinstance(peer, tuple) else None)
        session = self.proxy.new_session(address)
        driver = _Driver(self, session, side)
        self._drivers.add(driver)
        return driver

    async def serve_until_shutdown(self) -> None:
        """Wait until :meth:`shutdown` finishes (from a signal handler, say)."""
        await self._stopped

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting; end idle sessions with 57P01 at once and busy ones when
        their transaction ends, or after ``timeout`` (default: the config's
        ``shutdown_timeout``) at the latest."""
        if timeout is None:
            timeout = self.proxy.config.shutdown_timeout
        for server in self._servers:
            server.close()
        self.proxy.begin_shutdown()
        for driver in list(self._drivers):
            driver.perform(driver.session.shutdown())
        waiting = [d.finished() for d in self._drivers]
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=timeout)
            if pending:
                for driver in list(self._drivers):
                    driver.perform(driver.session.shutdown(immediate=True))
                await asyncio.wait([d.finished() for d in self._drivers], timeout=5)
        for driver in list(self._drivers):  # sockets that never closed: drop them
            transport = driver.client.transport if driver.client is not None else None
            if transport is not None:
                transport.abort()
        for server in self._servers:
            await server.wait_closed()
        pool_driver = self._pool_driver
        if pool_driver is not None and self.proxy.pool is not None:
            pool_driver.perform(self.proxy.pool.shutdown())
            await asyncio.sleep(0)  # let the Terminate messages go out
            pool_driver.close_client()
            self.proxy.pool.closed()
        # Middleware may flush to files or servers: not on the event loop.
        await asyncio.to_thread(self.proxy.close)
        self.executor.shutdown(wait=False, cancel_futures=True)
        if not self._stopped.done():
            self._stopped.set_result(None)

    def snapshot(self, timeout: float = 10.0) -> dict[str, Any]:
        """The proxy's state now as plain data (:func:`pgwire.proxy.snapshot`),
        from any thread: taken on the event loop, waiting at most ``timeout``
        seconds for it (TimeoutError). On the loop's own thread it is taken
        at once."""
        from ..proxy._metrics import snapshot  # noqa: PLC0415 - observability only

        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            return snapshot(self.proxy)
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def take() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(snapshot(self.proxy))
                except Exception as exc:
                    future.set_exception(exc)

        self.loop.call_soon_threadsafe(take)
        try:
            return future.result(timeout)
        finally:
            future.cancel()


class _Accepted(_Side):
    """The client's side: the session starts when the connection is made."""

    __slots__ = ("server",)

    def __init__(self, server: AsyncioProxy) -> None:
        self.server = server
        self.link = None
        self.transport = None
        self.full = False
        self.reading = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.driver = self.server._start_session(self)
        self.driver.perform(self.driver.session.start())


async def start_proxy(config: ProxyConfig, listen: Sequence[Address], *,
                      reuse_port: bool = False, job_threads: int = 4) -> AsyncioProxy:
    """Start a proxy listening on every address in ``listen``."""
    server = AsyncioProxy(Proxy(config), job_threads=job_threads)
    try:
        for address in listen:
            await server.listen(address, reuse_port=reuse_port)
    except OSError as exc:
        await server.shutdown(0)
        raise OSError(exc.errno, f"cannot listen on {format_address(address)}: "
                      f"{exc.strerror}") from exc
    return server


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when uvloop is installed, else asyncio's."""
    try:
        uvloop = importlib.import_module("uvloop")  # optional speed-up
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``main()`` on :func:`new_event_loop`'s loop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main())



"""Run a proxy in a background thread, for tests and examples.

::

    with running_proxy(ProxyConfig(upstream=(cluster.host, cluster.port))) as proxy:
        psycopg.connect(host=proxy.host, port=proxy.port, ...)

``adapter`` picks the I/O library: ``asyncio`` (default), ``trio`` or
``blocking``. The proxy listens on a free loopback port; leaving the block
shuts it down gracefully and waits for its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Literal

from ..proxy import Proxy, ProxyConfig

__all__ = ["ADAPTERS", "AdapterName", "RunningProxy", "running_proxy"]

AdapterName = Literal["asyncio", "trio", "blocking"]
#: Every adapter, for parametrizing tests.
ADAPTERS: tuple[AdapterName, ...] = ("asyncio", "trio", "blocking")
_START_TIMEOUT = 30.0


class RunningProxy:
    """A proxy running in a thread: where it listens, and its sans-IO state."""

    def __init__(self, host: str, port: int, proxy: Proxy, adapter: str) -> None:
        self.host = host
        self.port = port
        #: The shared :class:`~pgwire.proxy.Proxy` (stats, cancel keys, sessions).
        self.proxy = proxy
        self.adapter = adapter

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``."""
        return self.host, self.port

    def __repr__(self) -> str:
        return f"<RunningProxy {self.adapter} {self.host}:{self.port}>"


@contextlib.contextmanager
def running_proxy(config: ProxyConfig, *, adapter: AdapterName = "asyncio",
                  host: str = "127.0.0.1", shutdown_timeout: float = 5.0
                  ) -> Iterator[RunningProxy]:
    """Start a proxy for ``config`` on ``host`` and a free port; stop it on exit.

    As ``pgwire proxy`` does, it first gives middleware that loads something
    at start (RoleGuard's role graph) the connect timeout to be ready.
    """
    from ..adapters.serve import wait_for_middleware  # noqa: PLC0415 - imports every adapter

    wait_for_middleware(config)
    if adapter == "asyncio":
        with _asyncio_proxy(config, host, shutdown_timeout) as running:
            yield running
    elif adapter == "trio":
        from ..adapters import trio as trio_adapter  # noqa: PLC0415 - optional dependency

        with trio_adapter.running_in_thread(config, host, shutdown_timeout) as running:
            yield running
    elif adapter == "blocking":
        from ..adapters import blocking  # noqa: PLC0415 - imported on demand, like trio

        with blocking.running_in_thread(config, host, shutdown_timeout) as running:
            yield running
    else:
        raise ValueError(f"adapter must be one of {', '.join(ADAPTERS)}, not {adapter!r}")


@contextlib.contextmanager
def _asyncio_proxy(config: ProxyConfig, host: str, shutdown_timeout: float
                   ) -> Iterator[RunningProxy]:
    from ..adapters.asyncio import AsyncioProxy, new_event_loop, start_proxy  # noqa: PLC0415

    loop = new_event_loop()
    started = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        try:
            server = await start_proxy(config, [(host, 0)])
        except BaseException as exc:
            box["error"] = exc
            started.set()
            return
        box["server"] = server
        started.set()
        await server.serve_until_shutdown()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),),
                              name="pgwire-asyncio-proxy", daemon=True)
    thread.start()
    try:
        if not started.wait(_START_TIMEOUT):
            raise RuntimeError("the asyncio proxy did not start")
        error = box.get("error")
        if isinstance(error, BaseException):
            raise error
        server = box["server"]
        assert isinstance(server, AsyncioProxy)
        bound = server.addresses[0]
        assert not isinstance(bound, str)
        yield RunningProxy(bound[0], bound[1], server.proxy, "asyncio")
    finally:
        if "server" in box:
            server = box["server"]
            assert isinstance(server, AsyncioProxy)
            future = asyncio.run_coroutine_threadsafe(server.shutdown(shutdown_timeout), loop)
            future.result(shutdown_timeout + 15)
        thread.join(shutdown_timeout + 15)
        if not thread.is_alive():
            loop.close()

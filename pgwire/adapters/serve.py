"""Run a configured proxy as a process until it is told to stop: ``pgwire proxy``.

:func:`serve` loads the configuration, starts the adapter it names, prints
one line when the proxy listens, and runs until SIGINT or SIGTERM. The first
signal shuts down gracefully (idle sessions end at once with 57P01, busy ones
when their transaction ends, all of them after ``shutdown_timeout``); a
second one ends every session at once. With ``[admin]`` or ``[metrics]`` in
the configuration it also runs the admin console and the Prometheus endpoint
(:mod:`pgwire.adapters.admin`) beside the proxy, printing one more line for
each, and closes them once the proxy has stopped.

With ``workers > 1`` (asyncio only) the process becomes a parent of that many
worker processes. They share the listen ports through ``SO_REUSEPORT``, so
the kernel spreads connections over them. Worker ``i`` gets instance id
``cancel.instance_id + i`` and listens on a loopback port of its own for
CancelRequests the other workers forward: a client's CancelRequest lands on
whichever worker the kernel picks, and that worker sends it on to the owner
of the key (see :mod:`pgwire.proxy._cancel`). The parent forwards signals to
the workers and waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from queue import Empty
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, TextIO

from ..proxy import Address, ProxyConfig, format_address
from ..proxy.config_file import ConfigError, Override, ProxyFile, describe_listen, load_config
from ..proxy.config_file import parse_config as parse_config_data
from .asyncio import AsyncioProxy, start_proxy
from .asyncio import run as run_on_loop

if TYPE_CHECKING:
    from .admin import AdminServer, MetricsServer

__all__ = ["ConfigSource", "configure_logging", "listening_message", "serve", "wait_for_middleware"]

logger = logging.getLogger("pgwire.proxy")

_WORKER_START_TIMEOUT: Final = 60.0
_CANCEL_HOST: Final = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where the configuration comes from: a file (or none) and command-line
    overrides. Plain data, so worker processes can load it again themselves."""

    path: str | None = None
    overrides: tuple[Override, ...] = ()

    def load(self) -> ProxyFile:
        """Read and check the configuration (raises :class:`ConfigError`)."""
        if self.path is None:
            return parse_config_data({}, overrides=self.overrides)
        return load_config(self.path, overrides=self.overrides)


def configure_logging(level: str, prefix: str = "") -> None:
    """Log to stderr at ``level`` (debug, info, warning, error)."""
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, force=True,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")


def listening_message(settings: ProxyFile, addresses: Sequence[Address]) -> str:
    """The line ``pgwire proxy`` prints once it accepts clients."""
    how = f"{settings.auth_summary}, {settings.adapter}"
    if settings.workers > 1:
        how += f", {settings.workers} workers"
    return (f"pgwire proxy listening on {describe_listen(addresses)}, "
            f"upstream {format_address(settings.config.upstream)} ({how})")


def serve(source: ConfigSource, *, out: TextIO | None = None) -> int:
    """Load ``source`` and run the proxy until a signal stops it; the exit status.

    Raises:
        ConfigError: the configuration is wrong (nothing was started).
    """
    settings = source.load()
    out = out or sys.stdout
    configure_logging(settings.log_level)
    if settings.workers > 1:
        return _Workers(source, settings, out).run()
    wait_for_middleware(settings.config)
    if settings.adapter == "asyncio":
        status: int = run_on_loop(lambda: _serve_asyncio(settings, out))
        return status
    return _serve_other_adapter(settings, out)


def wait_for_middleware(config: ProxyConfig) -> None:
    """Give middleware that loads something at start (RoleGuard's role graph) up
    to the connect timeout to be ready, before any client is accepted; log a
    warning naming what is still missing (the proxy starts anyway)."""
    for middleware in config.middleware:
        if isinstance(middleware, type):
            continue  # a class is made per session: nothing loaded yet
        wait_ready = getattr(middleware, "wait_ready", None)
        if callable(wait_ready):
            problem = wait_ready(config.connect_timeout)
            if problem:
                logger.warning("%s: %s", type(middleware).__name__, problem)


def _say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def _fail(message: str) -> int:
    sys.stderr.write(f"pgwire proxy: {message}\n")
    sys.stderr.flush()
    return 1


class _Consoles:
    """The admin console and the metrics endpoint, when the configuration has them."""

    def __init__(self, settings: ProxyFile, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Start them (raises OSError naming the address that cannot be listened on)."""
        self.admin: AdminServer | None = None
        self.metrics: MetricsServer | None = None
        if settings.admin is None and settings.metrics_listen is None:
            return
        from .admin import serve_admin, serve_metrics  # noqa: PLC0415 - only when configured

        try:
            if settings.admin is not None:
                address: Address = settings.admin.listen
                self.admin = serve_admin(snapshot, address, users=settings.admin.users)
            if settings.metrics_listen is not None:
                address = settings.metrics_listen
                self.metrics = serve_metrics(snapshot, address)
        except OSError as exc:
            self.close()
            raise OSError(exc.errno, f"cannot listen on {format_address(address)}: "
                          f"{exc.strerror or exc}") from exc

    def announce(self, out: TextIO) -> None:
        if self.admin is not None:
            _say(out, f"pgwire admin console listening on "
                      f"{format_address(self.admin.address)}")
        if self.metrics is not None:
            _say(out, f"pgwire metrics listening on {self.metrics.url}")

    def close(self) -> None:
        if self.admin is not None:
            self.admin.close()
        if self.metrics is not None:
            self.metrics.close()


# -- one process, asyncio -----------------------------------------------------------------


def _stop_on_signals(server: AsyncioProxy, signals: Sequence[signal.Signals]) -> None:
    """First signal: graceful shutdown; any later one: end every session now."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    timeout = server.proxy.config.shutdown_timeout

    def on_signal(signum: signal.Signals) -> None:
        if not tasks:
            logger.info("%s: shutting down; sessions get up to %g s to finish their "
                        "transactions (signal again to end them now)", signum.name, timeout)
            task = loop.create_task(server.shutdown())
        else:
            logger.warning("%s: ending every session now", signum.name)
            task = loop.create_task(server.shutdown(0))
        tasks.add(task)

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)


async def _serve_asyncio(settings: ProxyFile, out: TextIO) -> int:
    try:
        server = await start_proxy(settings.config, settings.listen)
    except OSError as exc:
        return _fail(exc.strerror or str(exc))
    try:
        consoles = _Consoles(settings, server.snapshot)
    except OSError as exc:
        await server.shutdown(0)
        return _fail(exc.strerror or str(exc))
    _stop_on_signals(server, (signal.SIGINT, signal.SIGTERM))
    _say(out, listening_message(settings, server.addresses))
    consoles.announce(out)
    await server.serve_until_shutdown()
    # Off the loop: a console thread may be waiting for a snapshot the loop takes.
    await asyncio.to_thread(consoles.close)
    logger.info("stopped")
    return 0


# -- trio and blocking --------------------------------------------------------------------


def _serve_other_adapter(settings: ProxyFile, out: TextIO) -> int:
    """Run the trio or blocking adapter in this thread until a signal.

    As the adapters' own ``serve_forever`` does, plus the consoles, which
    need the running proxy's ``snapshot`` method."""
    try:
        if settings.adapter == "trio":
            try:
                import trio  # noqa: PLC0415 - the optional trio extra
            except ImportError as exc:
                return _fail(f"the trio adapter cannot be loaded ({exc}); install "
                             "pgwire[trio] for trio")
            status: int = trio.run(_serve_trio, settings, out)
        else:
            status = _serve_blocking(settings, out)
    except OSError as exc:
        return _fail(exc.strerror or str(exc))
    if status == 0:
        logger.info("stopped")
    return status


async def _serve_trio(settings: ProxyFile, out: TextIO) -> int:
    """Trio's ``serve_forever``, with the consoles."""
    import trio  # noqa: PLC0415 - the optional trio extra

    from .trio import TrioProxy, _stop_on_signals, serve  # noqa: PLC0415

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                server: TrioProxy = await nursery.start(serve, settings.config,
                                                        settings.listen)
            except OSError as exc:  # raised here, not wrapped in an ExceptionGroup
                return _fail(exc.strerror or str(exc))
            try:
                consoles = _Consoles(settings, server.snapshot)
            except OSError as exc:
                await server.shutdown(0)
                nursery.cancel_scope.cancel()
                return _fail(exc.strerror or str(exc))
            _say(out, listening_message(settings, server.addresses))
            consoles.announce(out)
            nursery.start_soon(_stop_on_signals, signals, server, nursery)
            await server.wait_stopped()
            # Off the run: a console thread may be waiting for a snapshot taken in it.
            await trio.to_thread.run_sync(consoles.close)
            nursery.cancel_scope.cancel()
    return 0


def _serve_blocking(settings: ProxyFile, out: TextIO) -> int:
    """The blocking adapter's ``serve_forever``, with the consoles."""
    from .blocking import BlockingProxy  # noqa: PLC0415
    from .blocking import serve_forever as serve_blocking  # noqa: PLC0415

    consoles: list[_Consoles] = []

    def started(server: BlockingProxy) -> None:
        consoles.append(_Consoles(settings, server.snapshot))
        _say(out, listening_message(settings, server.addresses))
        consoles[0].announce(out)

    try:
        serve_blocking(settings.config, settings.listen, started=started)
    finally:
        for console in consoles:
            console.close()
    return 0


# -- worker processes ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _WorkerJob:
    """What one worker process needs (plain data: it crosses to a new process)."""

    source: ConfigSource
    index: int
    instance_id: int
    peers: Mapping[int, Address]
    listen: tuple[tuple[str, int], ...]
    cancel_address: tuple[str, int]
    log_level: str


def _reserve(host: str, port: int, held: list[socket.socket]) -> list[tuple[str, int]]:
    """Bind (not listen) ``SO_REUSEPORT`` sockets for ``host:port`` and keep them in
    ``held``: the port is ours (a port 0 becomes a real one) until the workers
    bind it too. Returns the numeric addresses."""
    found: list[tuple[str, int]] = []
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for family, kind, proto, _, sockaddr in infos:
        address = (str(sockaddr[0]), port or (found[0][1] if found else 0))
        if address in found:
            continue
        sock = socket.socket(family, kind, proto)
        held.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        found.append((address[0], sock.getsockname()[1]))
    return found


class _Workers:
    """The parent of ``workers`` asyncio worker processes."""

    def __init__(self, source: ConfigSource, settings: ProxyFile, out: TextIO) -> None:
        self.source = source
        self.settings = settings
        self.out = out
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.stopping = False
        self.signals_seen = 0

    def run(self) -> int:
        if not hasattr(socket, "SO_REUSEPORT"):
            return _fail("worker processes need SO_REUSEPORT, which this system lacks; "
                         "run one process (workers = 1)")
        held: list[socket.socket] = []
        try:
            return self._run(held)
        finally:
            for sock in held:
                sock.close()

    def _run(self, held: list[socket.socket]) -> int:
        settings = self.settings
        count = settings.workers
        listen: list[tuple[str, int]] = []
        try:
            for address in settings.listen:
                assert not isinstance(address, str)  # config_file refuses Unix sockets here
                listen += _reserve(address[0], address[1], held)
            cancel_ports = [_reserve(_CANCEL_HOST, 0, held)[0] for _ in range(count)]
        except OSError as exc:
            return _fail(f"cannot listen on {describe_listen(settings.listen)}: "
                         f"{exc.strerror or exc}")
        base = settings.config.instance_id
        context = multiprocessing.get_context("spawn")
        ready: Any = context.Queue()
        previous = {signum: signal.signal(signum, self._on_signal)
                    for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            # Workers start with SIGINT ignored (inherited through exec): a Ctrl-C
            # reaches the whole terminal group, and only the parent should act on it.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                for index in range(count):
                    if self.stopping:
                        break
                    peers: dict[int, Address] = dict(settings.config.peers)
                    peers.update({base + other: cancel_ports[other]
                                  for other in range(count) if other != index})
                    job = _WorkerJob(self.source, index, base + index, peers, tuple(listen),
                                     cancel_ports[index], settings.log_level)
                    worker = context.Process(target=_worker_main, args=(job, ready),
                                             name=f"pgwire-worker-{index}")
                    worker.start()
                    self.processes.append(worker)
            finally:
                signal.signal(signal.SIGINT, self._on_signal)
            if not self.stopping and not self._wait_ready(ready, count):
                self._forward(signal.SIGTERM)
            elif not self.stopping:
                _say(self.out, listening_message(settings, listen))
                for index, process in enumerate(self.processes):
                    _say(self.out, f"  worker {index}: pid {process.pid}, instance "
                                   f"{base + index}, forwarded cancel requests on "
                                   f"{format_address(cancel_ports[index])}")
            return self._wait_all()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals_seen += 1
        if not self.stopping:
            logger.info("%s: stopping the workers", signal.Signals(signum).name)
        self.stopping = True
        self._forward(signal.SIGTERM)

    def _forward(self, signum: signal.Signals) -> None:
        self.stopping = True
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    def _wait_ready(self, ready: Any, count: int) -> bool:
        started: set[int] = set()
        deadline = time.monotonic() + _WORKER_START_TIMEOUT
        while len(started) < count and not self.stopping:
            try:
                index, error = ready.get(timeout=0.2)
            except Empty:
                dead = [p for p in self.processes if p.exitcode is not None]
                if dead:
                    _fail(f"worker process {dead[0].name} exited with status "
                          f"{dead[0].exitcode} while starting")
                    return False
                if time.monotonic() > deadline:
                    _fail(f"the workers did not start within {_WORKER_START_TIMEOUT:g} s")
                    return False
                continue
            if error is not None:
                _fail(f"worker {index}: {error}")
                return False
            started.add(index)
        return not self.stopping

    def _wait_all(self) -> int:
        running = {p.sentinel: p for p in self.processes}
        failed = False
        while running:
            for sentinel in multiprocessing.connection.wait(list(running), timeout=1.0):
                assert isinstance(sentinel, int)
                process = running.pop(sentinel)
                process.join()
                if process.exitcode != 0:
                    failed = True
                if not self.stopping:
                    logger.error("%s exited with status %s; stopping the others",
                                 process.name, process.exitcode)
                    failed = True
                    self._forward(signal.SIGTERM)
        logger.info("every worker has stopped")
        return 1 if failed else 0


def _worker_main(job: _WorkerJob, ready: Any) -> None:
    """A worker process: one asyncio proxy on the shared ports and its cancel port."""
    configure_logging(job.log_level, prefix=f"[worker {job.index}] ")
    try:
        settings = job.source.load()
        config = dataclasses.replace(settings.config, instance_id=job.instance_id,
                                     peers=job.peers)
    except (ConfigError, ValueError) as exc:
        ready.put((job.index, str(exc)))
        sys.exit(1)
    wait_for_middleware(config)
    sys.exit(run_on_loop(lambda: _worker_loop(config, job, lambda e: ready.put((job.index, e)))))


async def _worker_loop(config: ProxyConfig, job: _WorkerJob,
                       report: Callable[[str | None], None]) -> int:
    try:
        server = await start_proxy(config, job.listen, reuse_port=True)
    except OSError as exc:
        report(exc.strerror or str(exc))
        return 1
    try:
        await server.listen(job.cancel_address, reuse_port=True)
    except OSError as exc:
        await server.shutdown(0)
        report(f"cannot listen on {format_address(job.cancel_address)} for forwarded "
               f"cancel requests: {exc.strerror}")
        return 1
    _stop_on_signals(server, (signal.SIGTERM,))
    parent = multiprocessing.parent_process()
    if parent is not None:
        # The parent died without telling us (SIGKILL): stop as if told.
        loop = asyncio.get_running_loop()

        def parent_gone() -> None:
            loop.remove_reader(parent.sentinel)
            logger.warning("the parent process is gone; shutting down")
            os.kill(os.getpid(), signal.SIGTERM)

        loop.add_reader(parent.sentinel, parent_gone)
    report(None)
    await server.serve_until_shutdown()
    logger.info("stopped")
    return 0

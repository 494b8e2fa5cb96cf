"""What every adapter shares: carrying out a session's actions in order.

An adapter subclasses :class:`SessionDriver` and supplies the eight
primitives (write, connect, close, timers, jobs) for its I/O library; the
dispatch, and so the behaviour, is the same for all of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

from ..middleware.base import JobOutcome
from ..proxy import (
    Action,
    Address,
    CancelTimer,
    CloseClient,
    CloseUpstream,
    OpenUpstream,
    Proxy,
    RunJob,
    SendToClient,
    SendToUpstream,
    StartTimer,
)

__all__ = ["SessionDriver", "parse_address", "run_job"]


def run_job(job: Callable[[], object]) -> JobOutcome:
    """Run a middleware job, catching what it raises (in a worker thread)."""
    try:
        return JobOutcome(job())
    except BaseException as exc:  # reported to the session, never lost
        return JobOutcome(error=exc)


def parse_address(text: str, default_port: int = 5432) -> Address:
    """``host:port``, ``[v6]:port``, ``host`` or a Unix socket path (``/...``)."""
    if text.startswith("/"):
        return text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in address {text!r}")
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"port must be a number in address {text!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in address {text!r}")
    return host, number


class SessionDriver(ABC):
    """Drives one :class:`~pgwire.proxy.Session` (or the proxy's
    :class:`~pgwire.proxy.Pool`, which has no client): feeds it events,
    performs actions."""

    __slots__ = ("closed_client", "proxy", "session")

    def __init__(self, session: Any, proxy: Proxy) -> None:
        #: The session, or the pool (same event methods; no client side).
        self.session = session
        self.proxy = proxy
        self.closed_client = False
        session.driver = self

    def perform(self, actions: Iterable[Action]) -> None:
        """Carry out ``actions`` in order, then what other sessions (or the pool)
        were handed meanwhile."""
        self._perform(actions)
        if self.proxy._woken:
            for target in self.proxy.take_woken():
                driver = target.driver
                if isinstance(driver, SessionDriver):
                    driver.deliver(target)

    def deliver(self, target: Any) -> None:
        """Perform ``target.take()`` (an adapter whose drivers run in threads
        of their own hands this to the driver's thread)."""
        self.perform(target.take())

    def _perform(self, actions: Iterable[Action]) -> None:
        for action in actions:
            match action:
                case SendToUpstream(data=data, link=link):
                    self.send_upstream(link, data)
                case SendToClient(data=data):
                    self.send_client(data)
                case StartTimer(name=name, seconds=seconds):
                    self.start_timer(name, seconds)
                case CancelTimer(name=name):
                    self.cancel_timer(name)
                case OpenUpstream(link=link, address=address, timeout=timeout):
                    self.open_upstream(link, address, timeout)
                case CloseUpstream(link=link):
                    self.close_upstream(link)
                case RunJob(job_id=job_id, job=job):
                    self.run_job(job_id, job)
                case CloseClient():
                    self.closed_client = True
                    self.close_client()
                case _:
                    raise TypeError(f"unknown action {action!r}")

    @abstractmethod
    def send_client(self, data: bytes) -> None:
        """Write to the client."""

    @abstractmethod
    def send_upstream(self, link: int, data: bytes) -> None:
        """Write to an upstream link."""

    @abstractmethod
    def open_upstream(self, link: int, address: Address, timeout: float) -> None:
        """Start connecting; report to the session when done or failed."""

    @abstractmethod
    def close_upstream(self, link: int) -> None:
        """Close an upstream link after writing what is queued."""

    @abstractmethod
    def close_client(self) -> None:
        """Close the client (after writing what is queued) and every link."""

    @abstractmethod
    def start_timer(self, name: str, seconds: float) -> None:
        """Call ``session.timer_fired(name)`` later (replacing a timer of that name)."""

    @abstractmethod
    def cancel_timer(self, name: str) -> None:
        """Stop a timer."""

    @abstractmethod
    def run_job(self, job_id: int, job: Callable[[], object]) -> None:
        """Run ``job`` in a worker thread; then ``session.job_done``."""

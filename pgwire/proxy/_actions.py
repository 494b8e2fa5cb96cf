"""What a :class:`~pgwire.proxy.Session` asks its adapter to do.

Every Session method returns a list of these; the adapter carries them out in
order. They are the whole contract between the sans-IO engine and the code
that owns sockets, clocks and threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "CANCEL_LINK",
    "MAIN_LINK",
    "Action",
    "Address",
    "CancelTimer",
    "CloseClient",
    "CloseUpstream",
    "OpenUpstream",
    "RunJob",
    "SendToClient",
    "SendToUpstream",
    "StartTimer",
    "format_address",
]

#: A TCP ``(host, port)`` pair, or the path of a Unix-domain socket.
Address = tuple[str, int] | str

#: The upstream link that carries the session itself.
MAIN_LINK: Final = 0
#: The link a CancelRequest is delivered on (a connection of its own, as libpq does).
CANCEL_LINK: Final = 1
#: The link an auth query runs on (the proxy's own login, never the client's settings).
AUTH_LINK: Final = 2


def format_address(address: Address) -> str:
    """``host:port`` (``[v6]:port``) or the socket path, for messages and logs."""
    if isinstance(address, str):
        return address
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class SendToClient:
    """Write these bytes to the client."""

    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SendToUpstream:
    """Write these bytes to upstream link ``link``."""

    data: bytes = field(repr=False)
    link: int = MAIN_LINK


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Open a connection to ``address`` as link ``link``, within ``timeout`` seconds.

    Report the outcome with :meth:`Session.upstream_connected` or
    :meth:`Session.upstream_failed`.
    """

    link: int
    address: Address
    timeout: float


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    """Close upstream link ``link`` (after writing what was sent to it)."""

    link: int = MAIN_LINK


@dataclass(frozen=True, slots=True)
class CloseClient:
    """Close the client connection, after writing everything sent to it.

    It is always the last action of a session: close every open upstream link
    too, and call :meth:`Session.closed` once both are gone.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Call :meth:`Session.timer_fired` with ``name`` after ``seconds``;
    replaces a running timer of the same name."""

    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Stop the timer ``name`` if it runs."""

    name: str


@dataclass(frozen=True, slots=True)
class RunJob:
    """Run ``job()`` off the data path (a worker thread) and report its result
    or exception with :meth:`Session.job_done` under ``job_id``."""

    job_id: int
    job: Callable[[], object] = field(repr=False)


Action = (SendToClient | SendToUpstream | OpenUpstream | CloseUpstream | CloseClient
          | StartTimer | CancelTimer | RunJob)

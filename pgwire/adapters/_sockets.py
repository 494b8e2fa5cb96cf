"""Listening sockets for the adapters that do not get them from their I/O library."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Final

from ..proxy import Address

__all__ = ["LINGER", "READ_SIZE", "WRITE_LIMIT", "bind_listeners", "peer_address", "reason"]

#: Bytes queued for one socket beyond which the session's other sockets are not read.
WRITE_LIMIT: Final = 1 << 20
#: Bytes asked for per read.
READ_SIZE: Final = 65536
#: Seconds the upstream links of an ended session may take to write their Terminate.
LINGER: Final = 5.0


def bind_listeners(address: Address, reuse_port: bool = False,
                   backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets for ``address``: one per resolved TCP address, or a Unix socket.

    TCP sockets get SO_REUSEADDR, and SO_REUSEPORT when ``reuse_port`` (several
    worker processes on one port); a stale Unix socket file is replaced.
    """
    if isinstance(address, str):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return [sock]
    host, port = address
    seen: set[tuple[int, object]] = set()
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def peer_address(name: object) -> tuple[str, int] | str | None:
    """A session's client address from ``getpeername()``: (host, port), a path, or None."""
    if isinstance(name, str):
        return name
    if isinstance(name, tuple) and len(name) >= 2:
        return str(name[0]), int(name[1])
    return None


def reason(exc: BaseException) -> str:
    """Why a connect failed, in the operating system's words when it gave some."""
    queue: list[BaseException] = [exc]
    while queue:
        current = queue.pop(0)
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        if isinstance(current, BaseExceptionGroup):
            queue.extend(current.exceptions)
        if current.__cause__ is not None:
            queue.append(current.__cause__)
    return str(exc) or type(exc).__name__

"""Events that are not protocol messages: NEED_DATA, ConnectionClosed, DirectTLSHandshake."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["NEED_DATA", "ConnectionClosed", "DirectTLSHandshake", "NeedData"]


class _SentinelMeta(type):
    def __repr__(cls) -> str:
        return cls.__name__


class NeedData(metaclass=_SentinelMeta):
    """Type of :data:`NEED_DATA` (a sentinel whose type is itself, as in h11)."""

    def __init__(self) -> None:
        raise TypeError("NEED_DATA is a sentinel; compare with `is NEED_DATA`")


#: Returned by ``next_event()`` when no complete event is buffered: feed more
#: bytes with ``receive_data()``.
NEED_DATA: Final = NeedData


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """The peer closed the stream (``receive_data(b"")``) at a message boundary."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectTLSHandshake:
    """The client started TLS at once (PostgreSQL 17 ``sslnegotiation=direct``).

    ``data`` holds every byte received so far — the start of the TLS
    ClientHello — for the caller to hand to its TLS layer. After the handshake,
    feed the decrypted stream to the same Backend; it expects a StartupMessage
    (or CancelRequest) next.
    """

    data: bytes

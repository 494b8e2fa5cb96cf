"""A tiny blocking-socket driver for integration tests of :class:`pgwire.Frontend`.

`WireClient` moves bytes between one socket and one Frontend and nothing else:
the tests send typed messages and look at exactly the events the Frontend
returns. Every socket has a timeout of a few seconds, so a test that waits for
something the server never sends fails instead of hanging.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster

__all__ = [
    "SOCKET_TIMEOUT",
    "WireClient",
    "connect",
    "is_ready",
    "open_socket",
    "startup_message",
    "without_location",
]

#: Seconds any one socket operation may block.
SOCKET_TIMEOUT = 5.0

Event = pw.FrontendEvent


def is_ready(event: Event) -> bool:
    """Whether ``event`` is a ReadyForQuery, decoded or raw."""
    if isinstance(event, pw.RawMessage):
        return event.type_code == b"Z"
    return isinstance(event, pw.ReadyForQuery)


def without_location(event: Event) -> Event:
    """``event`` with the server's source location (file, line, routine) blanked.

    Those fields of ErrorResponse and NoticeResponse name lines of PostgreSQL's C
    code; tests compare every other field exactly.
    """
    if isinstance(event, pw.ErrorResponse | pw.NoticeResponse):
        return dataclasses.replace(event, file=None, line=None, routine=None)
    return event


class SocketOwner:
    """Closes ``self.sock`` on close() and at the end of a ``with`` block."""

    sock: socket.socket

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class WireClient(SocketOwner):
    """One socket and one :class:`pgwire.Frontend` that speaks over it.

    ``recv_size`` is the most bytes read per ``recv`` call; 1 feeds the Frontend
    one byte at a time.
    """

    def __init__(
        self,
        sock: socket.socket,
        frontend: pw.Frontend | None = None,
        *,
        recv_size: int = 65536,
    ) -> None:
        sock.settimeout(SOCKET_TIMEOUT)
        self.sock = sock
        self.frontend = frontend if frontend is not None else pw.Frontend()
        self.recv_size = recv_size
        #: Events from the StartupMessage to the first ReadyForQuery (see `connect`).
        self.startup_events: list[Event] = []

    # -- writing ---------------------------------------------------------------

    def send(self, *messages: pw.Message | pw.RawMessage) -> None:
        """Encode ``messages`` with the Frontend and write them in one ``sendall``."""
        self.sock.sendall(b"".join(self.frontend.send(message) for message in messages))

    def send_bytes(self, data: bytes) -> None:
        """Write ``data`` untouched (the Frontend does not see it)."""
        self.sock.sendall(data)

    # -- reading ---------------------------------------------------------------

    def next_event(self) -> Event:
        """The Frontend's next event, reading from the socket while it needs data."""
        while True:
            event = self.frontend.next_event()
            if event is not pw.NEED_DATA:
                return event
            self.frontend.receive_data(self.sock.recv(self.recv_size))

    def events_until(self, predicate: Callable[[Event], bool]) -> list[Event]:
        """Events up to and including the first one for which ``predicate`` is true.

        Raises AssertionError if the connection closes first.
        """
        events: list[Event] = []
        while True:
            event = self.next_event()
            events.append(event)
            if predicate(event):
                return events
            if isinstance(event, pw.ConnectionClosed):
                raise AssertionError(f"connection closed before the awaited event: {events!r}")

    def until_ready(self, n: int = 1) -> list[Event]:
        """Events up to and including the ``n``-th ReadyForQuery."""
        events: list[Event] = []
        for _ in range(n):
            events += self.events_until(is_ready)
        return events

    def query(self, sql: str) -> list[Event]:
        """Send a simple Query; return its events up to ReadyForQuery."""
        self.send(pw.Query(query=sql))
        return self.until_ready()

    def rows(self, sql: str) -> list[tuple[bytes | None, ...]]:
        """The values of every DataRow a simple Query returns (it must not fail)."""
        events = self.query(sql)
        errors = [event for event in events if isinstance(event, pw.ErrorResponse)]
        assert not errors, errors
        rows = []
        for event in events:
            row = event
            if isinstance(row, pw.RawMessage) and row.type_code == b"D":
                row = self.frontend.decode(row)
            if isinstance(row, pw.DataRow):
                rows.append(row.values)
        return rows

    # -- TLS and closing -------------------------------------------------------

    def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """Wrap the socket in TLS (after the server answered SSLRequest with 'S')."""
        assert self.frontend.buffered == 0, "bytes arrived with the SSLResponse"
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)



def open_socket(cluster: PostgresCluster) -> socket.socket:
    """A TCP connection to ``cluster``, with the tests' timeout."""
    return socket.create_connection((cluster.host, cluster.port), timeout=SOCKET_TIMEOUT)


def startup_message(
    cluster: PostgresCluster,
    params: Mapping[str, str],
    protocol_version: int = pw.PROTOCOL_3_0,
) -> pw.StartupMessage:
    """A StartupMessage for the superuser and database ``postgres``, plus ``params``."""
    parameters = {"user": cluster.superuser, "database": "postgres", **params}
    return pw.StartupMessage.from_dict(parameters, protocol_version=protocol_version)


def connect(
    cluster: PostgresCluster,
    *,
    frontend: pw.Frontend | None = None,
    protocol_version: int = pw.PROTOCOL_3_0,
    recv_size: int = 65536,
    **params: str,
) -> WireClient:
    """Open a session with trust authentication; return it after the first ReadyForQuery.

    ``params`` are extra startup parameters (``application_name=...``); ``user``
    and ``database`` default to the superuser and ``postgres``. The events of the
    startup are kept in ``client.startup_events``. Raises AssertionError if the
    server refuses the session.
    """
    client = WireClient(open_socket(cluster), frontend, recv_size=recv_size)
    try:
        client.send(startup_message(cluster, params, protocol_version))
        client.startup_events = client.until_ready()
    except BaseException:
        client.close()
        raise
    return client


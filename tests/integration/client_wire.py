"""A tiny blocking-socket driver for :class:`pgwire.client.ClientConnection`.

`ClientSession` moves bytes between one socket and one ClientConnection and
does nothing else: it writes what ``data_to_send()`` holds after every event
and before every ``recv``, so the login answers and TLS records the
connection produces reach the server. Errors are the connection's own: they
propagate unchanged, and whatever the connection queued before failing stays
queued, so a test can check that a refused login wrote nothing more (no
password, no StartupMessage in the clear). ``sent`` keeps every byte written.
Every socket operation has a timeout of a few seconds, so a test that waits
for something the server never sends fails instead of hanging.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pgwire as pw
from pgwire.client import ClientConnection
from pgwire.testing.cluster import PostgresCluster

from .wire import SocketOwner

__all__ = ["SOCKET_TIMEOUT", "ClientSession", "data_rows", "is_ready", "open_session"]

#: Seconds any one socket operation may block.
SOCKET_TIMEOUT = 5.0

Event = pw.FrontendEvent


def is_ready(event: Event) -> bool:
    """Whether ``event`` is a ReadyForQuery."""
    return isinstance(event, pw.ReadyForQuery)


def data_rows(events: list[Event]) -> list[tuple[bytes | None, ...]]:
    """The values of every DataRow among ``events``."""
    return [event.values for event in events if isinstance(event, pw.DataRow)]


class ClientSession(SocketOwner):
    """One socket and one ClientConnection that speaks over it."""

    def __init__(self, sock: socket.socket, conn: ClientConnection) -> None:
        sock.settimeout(SOCKET_TIMEOUT)
        self.sock = sock
        self.conn = conn
        #: Events of the login, up to the first ReadyForQuery or ConnectionClosed.
        self.startup_events: list[Event] = []
        #: Every byte written to the socket (TLS records once TLS is on).
        self.sent = bytearray()

    def flush(self) -> None:
        """Write whatever the connection has queued."""
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)
            self.sent += data

    def next_event(self) -> Event:
        """The connection's next event, writing its output and reading while it needs data.

        The connection's errors propagate as they are, without a flush.
        """
        while True:
            event = self.conn.next_event()
            self.flush()
            if event is not pw.NEED_DATA:
                return event
            self.conn.receive_data(self.sock.recv(65536))

    def events_until(self, predicate: Callable[[Event], bool]) -> list[Event]:
        """Events up to and including the first one matching ``predicate``, or
        up to the ConnectionClosed that comes first."""
        events: list[Event] = []
        while True:
            event = self.next_event()
            events.append(event)
            if predicate(event) or isinstance(event, pw.ConnectionClosed):
                return events

    def login(self) -> list[Event]:
        """Start the connection; return its events up to ReadyForQuery or ConnectionClosed."""
        self.conn.start()
        self.flush()
        self.startup_events = self.events_until(is_ready)
        return self.startup_events

    def query(self, sql: str) -> list[Event]:
        """Send a simple Query; return its events up to ReadyForQuery."""
        self.conn.send(pw.Query(query=sql))
        self.flush()
        events = self.events_until(is_ready)
        assert is_ready(events[-1]), events
        return events

    def rows(self, sql: str) -> list[tuple[bytes | None, ...]]:
        """The DataRow values of a simple Query, which must not fail."""
        events = self.query(sql)
        errors = [event for event in events if isinstance(event, pw.ErrorResponse)]
        assert not errors, errors
        return data_rows(events)



def open_session(cluster: PostgresCluster, conn: ClientConnection) -> ClientSession:
    """A ClientSession on a fresh TCP connection to ``cluster`` (not started yet)."""
    sock = socket.create_connection((cluster.host, cluster.port), timeout=SOCKET_TIMEOUT)
    return ClientSession(sock, conn)

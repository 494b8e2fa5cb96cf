"""A logged-in blocking client that shows its `pgwire.Frontend`, for tests.

`FrontendClient` is a `pgwire.sqlclient.SQLConnection` (same login: TLS,
SCRAM, MD5, cleartext) that also lets a test speak the protocol itself: send
any message, read the events that come back. It is what the ``pgwire_frontend``
fixture of the pytest plugin yields::

    client = FrontendClient.connect(("127.0.0.1", 6432), user="app", password="secret")
    client.send(pw.Parse(query="select 1"), pw.Bind(), pw.Execute(), pw.Sync())
    events = client.receive_until_ready()    # ParseComplete ... ReadyForQuery
    rows = client.execute("select 2")        # [("2",)]
"""

from __future__ import annotations

from ..client import ClientConnection
from ..protocol import NEED_DATA, ConnectionClosed, Frontend, Message, RawMessage, ReadyForQuery
from ..sqlclient import SQLConnection

__all__ = ["FrontendClient"]

_RECEIVE_SIZE = 65536


class FrontendClient(SQLConnection):
    """A `SQLConnection` whose protocol state machine tests can drive by hand.

    Besides `query` (extended protocol, returns rows) and `execute` (simple
    query, returns rows) it has `send` and `receive_until_ready`; mixing
    them is fine as long as every request's answer is read before the next
    `query`/`execute`. Blocking reads use the socket timeout given to
    `connect` (default 10 s) and raise `TimeoutError` when nothing comes.
    """

    @property
    def connection(self) -> ClientConnection:
        """The sans-IO `pgwire.client.ClientConnection` (TLS and login state)."""
        return self._link

    @property
    def frontend(self) -> Frontend:
        """The real `pgwire.Frontend`: ``phase``, ``transaction_status``, ``pending_syncs``..."""
        return self._link.frontend

    def send(self, *messages: Message | RawMessage) -> None:
        """Send messages to the server now (through TLS when the connection uses it)."""
        if self.closed:
            raise ConnectionError("the connection is closed")
        for message in messages:
            self._link.send(message)
        self._flush()

    def receive_until_ready(self) -> list[object]:
        """Events up to and including the next ReadyForQuery (or ConnectionClosed).

        Errors are returned as ErrorResponse events, not raised. A protocol
        error of the server (`pgwire.RemoteProtocolError`) is raised.
        """
        events: list[object] = []
        while True:
            event = self.next_event()
            events.append(event)
            if isinstance(event, ReadyForQuery | ConnectionClosed):
                return events

    def next_event(self) -> object:
        """The next event from the server, reading from the socket as needed."""
        link = self._link
        while True:
            self._flush()
            event = link.next_event()
            if event is not NEED_DATA:
                return event
            link.receive_data(self._sock.recv(_RECEIVE_SIZE))

    def _flush(self) -> None:
        outgoing = self._link.data_to_send()
        if outgoing:
            self._sock.sendall(outgoing)

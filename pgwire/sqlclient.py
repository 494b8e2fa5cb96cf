"""A small blocking SQL connection, for the proxy's own side work.

The role graph loader and the PostgreSQL audit sink need a few queries of
their own (load ``pg_roles``, insert a batch of records). They run in worker
threads, off the data path, so a blocking socket is the simplest honest
tool: :class:`SQLConnection` is a :class:`~pgwire.client.ClientConnection`
on a socket, with TLS and every authentication method it supports.

    with SQLConnection.connect(("127.0.0.1", 5432), user="app", password="...") as conn:
        rows = conn.query("SELECT rolname FROM pg_roles WHERE rolcanlogin = $1", ["t"])

Parameters and values travel as text; ``None`` is NULL. A query that fails
raises :class:`QueryError` with the server's SQLSTATE; the connection stays
usable. Everything else (refused login, broken protocol, socket errors)
raises and leaves the connection closed.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Sequence
from types import TracebackType

from .client import ClientConnection
from .protocol import (
    NEED_DATA,
    Bind,
    CommandComplete,
    ConnectionClosed,
    DataRow,
    ErrorResponse,
    Execute,
    Parse,
    Query,
    ReadyForQuery,
    Sync,
    Terminate,
)
from .tls import SSLMode

__all__ = ["QueryError", "SQLConnection", "quote_identifier", "quote_literal"]

#: NAMEDATALEN - 1: PostgreSQL cuts longer identifiers short.
MAX_IDENTIFIER_BYTES = 63


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier, whatever it holds: ``a"b`` -> ``"a""b"``.

    Raises ``ValueError`` for an empty name, a NUL, or more than 63 bytes
    (PostgreSQL would cut the name short and act on another object).
    """
    if not name or "\x00" in name:
        raise ValueError(f"not a usable identifier: {name!r}")
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise ValueError(f"identifier longer than {MAX_IDENTIFIER_BYTES} bytes "
                         f"(PostgreSQL would cut it): {name!r}")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as an ``E''`` string constant: the same text whatever
    ``standard_conforming_strings`` says. Raises ``ValueError`` for a NUL."""
    if "\x00" in value:
        raise ValueError("a string constant cannot hold NUL")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"

Address = tuple[str, int] | str
Row = tuple[str | None, ...]


class QueryError(Exception):
    """The server refused a statement; ``sqlstate`` and ``message`` say why."""

    def __init__(self, error: ErrorResponse) -> None:
        self.sqlstate = error.code or "XX000"
        self.message = error.message or ""
        self.error = error
        super().__init__(f"{self.sqlstate}: {self.message}")


class SQLConnection:
    """One logged-in, blocking connection: :meth:`query` and :meth:`execute`.

    Make one with :meth:`connect`. Not thread-safe: one thread at a time.
    """

    def __init__(self, sock: socket.socket, link: ClientConnection) -> None:
        self._sock = sock
        self._link = link
        self.closed = False

    @classmethod
    def connect(cls, address: Address, *, user: str, password: str | None = None,
                database: str | None = None, sslmode: SSLMode = "disable",
                ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                parameters: dict[str, str] | None = None,
                timeout: float = 10.0) -> SQLConnection:
        """Connect to ``address`` (``(host, port)`` or a Unix socket path) and log in."""
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(address, timeout=timeout)
        link = ClientConnection(user=user, database=database, password=password,
                                sslmode=sslmode, ssl_context=ssl_context,
                                server_hostname=server_hostname,
                                parameters={"application_name": "pgwire", **(parameters or {})},
                                allow_plaintext_password=True)
        conn = cls(sock, link)
        try:
            link.start()
            conn._run()
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def parameters(self) -> dict[str, str]:
        """ParameterStatus values the server reported."""
        return self._link.frontend.parameters

    def query(self, sql: str, parameters: Sequence[str | None] = ()) -> list[Row]:
        """Run one statement (extended protocol, text values) and return its rows."""
        encoding = self._link.frontend.encoding
        values = tuple(None if p is None else p.encode(encoding) for p in parameters)
        return self._request(Parse(statement="", query=sql, parameter_types=()),
                             Bind(portal="", statement="", parameter_formats=(),
                                  parameters=values, result_formats=()),
                             Execute(portal="", max_rows=0), Sync())

    def execute(self, sql: str) -> list[Row]:
        """Run a simple query (any number of statements); the rows of all of them."""
        return self._request(Query(query=sql))

    def close(self) -> None:
        """Say goodbye and close the socket (safe to call twice)."""
        if self.closed:
            return
        self.closed = True
        try:
            with contextlib.suppress(Exception):  # closing anyway
                self._link.send(Terminate())
                self._sock.sendall(self._link.data_to_send())
        finally:
            self._sock.close()

    def __enter__(self) -> SQLConnection:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------

    def _request(self, *messages: Parse | Bind | Execute | Sync | Query) -> list[Row]:
        if self.closed:
            raise ConnectionError("the connection is closed")
        try:
            for message in messages:
                self._link.send(message)
            return self._run()
        except QueryError:
            raise
        except BaseException:
            self.close()
            raise

    def _run(self) -> list[Row]:
        """Send what is queued and read until ReadyForQuery."""
        link = self._link
        encoding = link.frontend.encoding
        rows: list[Row] = []
        error: ErrorResponse | None = None
        while True:
            outgoing = link.data_to_send()
            if outgoing:
                self._sock.sendall(outgoing)
            event = link.next_event()
            if event is NEED_DATA:
                # next_event may have queued bytes of its own (the TLS handshake's
                # last flight, then the StartupMessage): send them before waiting.
                outgoing = link.data_to_send()
                if outgoing:
                    self._sock.sendall(outgoing)
                link.receive_data(self._sock.recv(65536))
                continue
            if isinstance(event, DataRow):
                rows.append(tuple(None if v is None else bytes(v).decode(encoding)
                                  for v in event.values))
            elif isinstance(event, ErrorResponse):
                if event.ends_session:
                    raise ConnectionError(f"{event.code}: {event.message}")
                error = event
            elif isinstance(event, ReadyForQuery):
                if error is not None:
                    raise QueryError(error)
                return rows
            elif isinstance(event, ConnectionClosed):
                raise ConnectionError("the server closed the connection")
            elif isinstance(event, CommandComplete):
                continue

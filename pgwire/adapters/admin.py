"""Watch a running proxy: a PostgreSQL admin console and a Prometheus endpoint.

Both run in threads of their own, beside any adapter, and read the proxy
through a ``snapshot`` callable that may be called from any thread: the
running proxy's ``snapshot`` method (``AsyncioProxy``, ``TrioProxy`` or
``BlockingProxy``)::

    server = await start_proxy(config, [("127.0.0.1", 6432)])
    admin = serve_admin(server.snapshot, ("127.0.0.1", 6433), users={"ops": "secret"})
    metrics = serve_metrics(server.snapshot, ("127.0.0.1", 9127))
    ...
    admin.close(); metrics.close()

- :func:`serve_admin`: ``psql -h 127.0.0.1 -p 6433 -U ops -c 'SHOW POOLS'``.
  Clients log in with SCRAM-SHA-256 against ``users`` (plaintext passwords
  or PostgreSQL's ``SCRAM-SHA-256$...`` secrets) and send simple-protocol
  queries: ``SHOW POOLS``, ``SHOW SERVERS``, ``SHOW CLIENTS``, ``SHOW STATS``
  and ``SHOW HELP`` (see :func:`pgwire.proxy._metrics.admin_rows`). Anything
  else gets ERROR 0A000 naming the commands.
- :func:`serve_metrics`: ``GET /metrics`` in the Prometheus text format
  (:func:`pgwire.proxy._metrics.prometheus_text`); every other path is 404.

Neither offers TLS: listen on loopback or a Unix socket (the console), or
behind something that adds it.
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import logging
import secrets
import selectors
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

from .. import __version__
from ..auth import is_md5_secret
from ..login import Authenticated, LoginFailed
from ..protocol import (
    NEED_DATA,
    BackendKeyData,
    Bind,
    CancelRequest,
    Close,
    CommandComplete,
    ConnectionClosed,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    FunctionCall,
    ParameterStatus,
    Parse,
    ProtocolError,
    Query,
    ReadyForQuery,
    RowDescription,
    StartupMessage,
    Sync,
    Terminate,
    TransactionStatus,
)
from ..proxy import Address, format_address
from ..proxy._metrics import ADMIN_COMMANDS, admin_command, admin_rows, prometheus_text
from ..server import ServerConnection
from ._sockets import bind_listeners, peer_address

__all__ = ["LOGIN_TIMEOUT", "MAX_ADMIN_CLIENTS", "PROMETHEUS_CONTENT_TYPE", "AdminConversation",
           "AdminServer", "MetricsServer", "serve_admin", "serve_metrics"]

logger = logging.getLogger("pgwire.admin")

Snapshot = Callable[[], Mapping[str, Any]]

#: Admin connections at once; more are refused with FATAL 53300.
MAX_ADMIN_CLIENTS: Final = 16
#: Seconds a client has to log in.
LOGIN_TIMEOUT: Final = 30.0
_MAX_MESSAGE_SIZE: Final = 1 << 16
_CLOSE_TIMEOUT: Final = 5.0
_COMMANDS: Final = ", ".join(ADMIN_COMMANDS)
_OID_BOOL: Final = 16
_OID_INT8: Final = 20
_OID_TEXT: Final = 25
_OID_FLOAT8: Final = 701
_TYPE_SIZES: Final = {_OID_BOOL: 1, _OID_INT8: 8, _OID_TEXT: -1, _OID_FLOAT8: 8}
#: Media type of the Prometheus text format 0.0.4.
PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def _error(code: str, message: str, severity: str = "ERROR", hint: str | None = None
           ) -> ErrorResponse:
    return ErrorResponse(severity=severity, severity_nonlocalized=severity, code=code,
                         message=message, hint=hint)


def _column_type(values: list[object]) -> int:
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return _OID_TEXT
    if kinds <= {bool}:
        return _OID_BOOL
    if kinds <= {int}:
        return _OID_INT8
    if kinds <= {int, float}:
        return _OID_FLOAT8
    return _OID_TEXT


def _text(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, float):
        return repr(value).encode()
    return str(value).encode("utf-8")


# -- the console's conversation (no I/O) -------------------------------------------------


class AdminConversation:
    """One admin client, without I/O: bytes in, bytes out.

    :meth:`receive` takes what the client sent (``b""`` when it closed) and
    returns what to write back; stop once :attr:`closed`. ``refuse`` makes
    the conversation answer the startup packet with FATAL 53300 (too many
    admin clients).
    """

    def __init__(self, snapshot: Snapshot, users: Mapping[str, str], *, process_id: int,
                 refuse: bool = False) -> None:
        self.snapshot = snapshot
        self.users = users
        self.process_id = process_id
        self.refuse = refuse
        self.connection = ServerConnection(max_message_size=_MAX_MESSAGE_SIZE)
        #: The user who logged in, once one has.
        self.user: str | None = None
        self.closed = False
        self._skipping = False  # an extended-protocol batch was refused: wait for Sync

    def receive(self, data: bytes) -> bytes:
        """Process bytes from the client; the bytes to send back."""
        connection = self.connection
        if self.closed:
            return b""
        connection.receive_data(data)
        while not self.closed:
            try:
                event = connection.next_event()
            except ProtocolError as exc:
                logger.info("admin client %d broke the protocol: %s", self.process_id, exc)
                with contextlib.suppress(ProtocolError):
                    connection.send(_error(exc.sqlstate, exc.message, "FATAL"))
                self.closed = True
                break
            if event is NEED_DATA:
                break
            self._event(event)
        return connection.data_to_send()

    def _send(self, *messages: ErrorResponse | ParameterStatus | BackendKeyData
              | ReadyForQuery | RowDescription | DataRow | CommandComplete
              | EmptyQueryResponse) -> None:
        for message in messages:
            self.connection.send(message)

    def _event(self, event: object) -> None:
        if isinstance(event, StartupMessage):
            if self.refuse:
                self._send(_error("53300", "sorry, too many admin clients already", "FATAL"))
                self.closed = True
                return
            user = event.get("user") or ""
            secret = self.users.get(user)
            # An MD5 secret cannot do SCRAM: such a user fails like a wrong password.
            if secret is not None and is_md5_secret(secret):
                secret = None
            self.connection.authenticate("scram-sha-256", secret)
        elif isinstance(event, Authenticated):
            self._logged_in(event.user)
        elif isinstance(event, LoginFailed):
            logger.info("admin login refused: %s", event.message)
            self.closed = True
        elif isinstance(event, Query):
            self._query(event.query)
        elif isinstance(event, Parse | Bind | Describe | Execute | Close):
            if not self._skipping:
                self._skipping = True
                self._send(_error("0A000", "the admin console answers the simple query "
                                  f"protocol only; send one of: {_COMMANDS}",
                                  hint="psql does; with psycopg use a ClientCursor"))
        elif isinstance(event, Sync):
            self._skipping = False
            self._send(ReadyForQuery(status=TransactionStatus.IDLE))
        elif isinstance(event, FunctionCall):
            self._send(_error("0A000", "the admin console has no functions to call"),
                       ReadyForQuery(status=TransactionStatus.IDLE))
        elif isinstance(event, Terminate | ConnectionClosed | CancelRequest):
            self.closed = True
        # Anything else needs no answer: SSLRequest and GSSENCRequest were
        # answered 'N' for us, Flush has nothing to flush, COPY messages
        # outside COPY are ignored (as PostgreSQL does).

    def _logged_in(self, user: str) -> None:
        self.user = user
        startup = self.connection.backend.startup
        application = startup.get("application_name") if startup is not None else None
        for name, value in (("server_version", f"{__version__} (pgwire admin console)"),
                            ("server_encoding", "UTF8"), ("client_encoding", "UTF8"),
                            ("DateStyle", "ISO, MDY"), ("integer_datetimes", "on"),
                            ("standard_conforming_strings", "on"), ("TimeZone", "UTC"),
                            ("IntervalStyle", "postgres"), ("is_superuser", "off"),
                            ("session_authorization", user),
                            ("application_name", application or "")):
            self._send(ParameterStatus(name=name, value=value))
        self._send(BackendKeyData(process_id=self.process_id,
                                  secret_key=secrets.token_bytes(4)),
                   ReadyForQuery(status=TransactionStatus.IDLE))
        logger.info("admin client %d logged in as %r", self.process_id, user)

    def _query(self, sql: str) -> None:
        statements = [part for part in sql.split(";") if part.strip()]
        if not statements:
            self._send(EmptyQueryResponse())
        snap: Mapping[str, Any] | None = None
        for statement in statements:
            try:
                command = admin_command(statement)
            except ValueError as exc:
                self._send(_error("0A000", str(exc)))
                break
            if snap is None and command != "SHOW HELP":
                try:
                    snap = self.snapshot()
                except Exception as exc:
                    logger.warning("admin client %d: no snapshot of the proxy: %r",
                                   self.process_id, exc)
                    self._send(_error("57P03", "cannot read the proxy's state now (it may "
                                               f"be shutting down): {exc!r}"))
                    break
            columns, rows = admin_rows(snap or {}, command)
            types = [_column_type([row[i] for row in rows]) for i in range(len(columns))]
            self._send(RowDescription(fields=tuple(
                FieldDescription(name=name, data_type_oid=oid,
                                 data_type_size=_TYPE_SIZES[oid])
                for name, oid in zip(columns, types, strict=True))))
            for row in rows:
                self._send(DataRow(values=tuple(_text(value) for value in row)))
            self._send(CommandComplete(tag="SHOW"))
        self._send(ReadyForQuery(status=TransactionStatus.IDLE))


# -- the console's sockets and threads ------------------------------------------------------


class AdminServer:
    """The admin console: listening sockets, an accept thread and a thread per client.

    Made by :func:`serve_admin`; :meth:`close` stops it.
    """

    def __init__(self, snapshot: Snapshot, listeners: list[socket.socket],
                 users: Mapping[str, str], max_clients: int = MAX_ADMIN_CLIENTS) -> None:
        self.snapshot = snapshot
        self.users = dict(users)
        self.max_clients = max_clients
        self._listeners = listeners
        self._wakeup_receive, self._wakeup_send = socket.socketpair()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._clients: dict[socket.socket, threading.Thread] = {}
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._accept_loop, name="pgwire-admin",
                                        daemon=True)
        self._thread.start()

    @property
    def address(self) -> Address:
        """Where the console listens (the first address; port 0 resolved)."""
        name = self._listeners[0].getsockname()
        return name if isinstance(name, str) else (name[0], name[1])

    def close(self) -> None:
        """Stop accepting, end every admin connection, wait for the threads."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wakeup_send.send(b"\0")
        self._thread.join(_CLOSE_TIMEOUT)
        with self._lock:
            clients = list(self._clients.items())
        for sock, _ in clients:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in clients:
            thread.join(_CLOSE_TIMEOUT)
        self._wakeup_receive.close()
        self._wakeup_send.close()

    def __enter__(self) -> AdminServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._wakeup_receive, selectors.EVENT_READ)
                for listener in self._listeners:
                    selector.register(listener, selectors.EVENT_READ)
                while not self._stopping.is_set():
                    for key, _ in selector.select():
                        if key.fileobj is self._wakeup_receive:
                            return
                        ready = key.fileobj
                        assert isinstance(ready, socket.socket)
                        try:
                            sock, _ = ready.accept()
                        except OSError:
                            continue
                        self._start_client(sock)
        finally:
            for listener in self._listeners:
                listener.close()

    def _start_client(self, sock: socket.socket) -> None:
        with self._lock:
            if self._stopping.is_set():
                sock.close()
                return
            refuse = len(self._clients) >= self.max_clients
            thread = threading.Thread(target=self._serve_client, args=(sock, refuse),
                                      name="pgwire-admin-client", daemon=True)
            self._clients[sock] = thread
        thread.start()

    def _serve_client(self, sock: socket.socket, refuse: bool) -> None:
        process_id = next(self._ids)
        try:
            peer: object = sock.getpeername()
        except OSError:
            peer = None
        where = peer_address(peer)
        logger.debug("admin client %d connected from %s", process_id,
                     format_address(where) if where is not None else "?")
        conversation = AdminConversation(self.snapshot, self.users, process_id=process_id,
                                         refuse=refuse)
        try:
            with sock:
                sock.settimeout(LOGIN_TIMEOUT)
                while not conversation.closed:
                    data = sock.recv(65536)
                    reply = conversation.receive(data)
                    if reply:
                        sock.sendall(reply)
                    if conversation.user is not None:
                        sock.settimeout(None)
                    if not data:
                        break
        except OSError:
            pass  # the client vanished, timed out, or close() shut the socket down
        except Exception as exc:  # a bug: this client ends, not the console
            logger.error("admin client %d: %s", process_id, exc, exc_info=exc)
        finally:
            with self._lock:
                self._clients.pop(sock, None)


def serve_admin(snapshot: Snapshot, address: Address, *, users: Mapping[str, str],
                max_clients: int = MAX_ADMIN_CLIENTS) -> AdminServer:
    """Start the admin console on ``address`` (``host:port`` or a Unix socket path).

    ``snapshot`` is called from the console's threads, once per query;
    ``users`` maps each admin user to a plaintext password or a SCRAM
    secret (MD5 secrets cannot do SCRAM and are refused).

    Raises:
        ValueError: no users, or an MD5 secret among them.
        OSError: the address cannot be listened on.
    """
    if not users:
        raise ValueError("the admin console needs at least one user to log in as")
    for user, secret in users.items():
        if is_md5_secret(secret):
            raise ValueError(f"admin user {user!r} has an MD5 secret; the console uses "
                             "SCRAM-SHA-256: give a password or a SCRAM secret")
    listeners = bind_listeners(address, backlog=64)
    try:
        return AdminServer(snapshot, listeners, users, max_clients)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise


# -- Prometheus ----------------------------------------------------------------------------


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    server: _MetricsHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = 30.0  # a connection that sends nothing does not keep its thread

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        path = self.path.partition("?")[0]
        if path != "/metrics":
            self._reply(404, "text/plain; charset=utf-8",
                        b"not found: the metrics are at /metrics\n", body)
            return
        try:
            text = prometheus_text(self.server.snapshot())
        except Exception as exc:
            logger.warning("metrics: no snapshot of the proxy: %r", exc)
            self._reply(503, "text/plain; charset=utf-8",
                        f"cannot read the proxy's state now: {exc!r}\n".encode(), body)
            return
        self._reply(200, PROMETHEUS_CONTENT_TYPE, text.encode("utf-8"), body)

    def _reply(self, status: int, content_type: str, data: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("metrics: %s %s", self.address_string(), format % args)


class _MetricsHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], snapshot: Snapshot, family: int) -> None:
        self.address_family = family
        self.snapshot = snapshot
        super().__init__(address, _MetricsHandler)

    def server_bind(self) -> None:
        # HTTPServer's own looks the host's name up in the DNS, which can hang.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class MetricsServer:
    """The Prometheus endpoint: an HTTP server in a thread. Made by
    :func:`serve_metrics`; :meth:`close` stops it."""

    def __init__(self, server: _MetricsHTTPServer) -> None:
        self._server = server
        self._closed = False
        self._thread = threading.Thread(target=server.serve_forever, kwargs={
            "poll_interval": 0.2}, name="pgwire-metrics", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """Where the endpoint listens (port 0 resolved)."""
        name = self._server.server_address
        return str(name[0]), int(name[1])

    @property
    def url(self) -> str:
        """``http://host:port/metrics``."""
        return f"http://{format_address(self.address)}/metrics"

    def close(self) -> None:
        """Stop serving and close the socket."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(_CLOSE_TIMEOUT)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve_metrics(snapshot: Snapshot, address: tuple[str, int]) -> MetricsServer:
    """Serve ``GET /metrics`` (Prometheus text format 0.0.4) on ``address``.

    ``snapshot`` is called from the server's threads, once per scrape.

    Raises:
        OSError: the address cannot be listened on.
    """
    host, port = address
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family = infos[0][0] if infos else socket.AF_INET
    return MetricsServer(_MetricsHTTPServer((host, port), snapshot, family))

"""A small threaded PostgreSQL server on ServerConnection, for login tests with real clients.

:class:`AuthServer` listens on a free loopback port and authenticates every
client the way its user table says (method and stored secret per user; users
not in the table get SCRAM with no secret, i.e. PostgreSQL's failure for an
unknown role). After login it answers any query, simple or extended, with one
fixed text row. Everything that happens on each connection is recorded in a
:class:`Session` — the StartupMessage, the TLS facts, the Authenticated or
LoginFailed event, and any exception — so a test can assert what the *server*
saw, not just what the client reported.

:class:`TestPKI` is a throwaway CA from :mod:`pgwire.testing.pki` with a server
certificate for ``localhost``, ``127.0.0.1`` and ``::1``.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pgwire as pw
from pgwire.login import Authenticated, LoginFailed
from pgwire.server import AuthMethod, ServerConnection
from pgwire.testing.pki import CertificateAuthority
from pgwire.tls import TLSError, TLSInfo

__all__ = ["ANSWER", "AuthServer", "Session", "TestPKI", "User"]

#: The value of the one row every query gets.
ANSWER = "1"
_TEXT_OID = 25
_RECV_TIMEOUT = 30.0


# ---------------------------------------------------------------------------
# certificates


@dataclass(frozen=True)
class TestPKI:
    """A throwaway CA with a server certificate for localhost, 127.0.0.1 and ::1."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    ca: CertificateAuthority
    server_cert: Path
    server_key: Path

    @property
    def directory(self) -> Path:
        return self.ca.directory

    @property
    def ca_cert(self) -> Path:
        return self.ca.certificate

    @classmethod
    def create(cls, directory: Path) -> TestPKI:
        ca = CertificateAuthority.create(directory, "pgwire auth test CA")
        return cls(ca, *ca.issue_server_certificate())

    def make_client_cert(self, cn: str) -> tuple[Path, Path]:
        """A client certificate with common name ``cn``: (cert, key), key mode 0600."""
        return self.ca.issue_client_certificate(cn)


# ---------------------------------------------------------------------------
# the server


@dataclass(frozen=True)
class User:
    """How one user logs in: ``method`` and the stored ``secret`` (None: no password)."""

    method: AuthMethod
    secret: str | None = None


@dataclass
class Session:
    """What the server saw on one connection."""

    startup: pw.StartupMessage | None = None
    tls: TLSInfo | None = None
    authenticated: Authenticated | None = None
    failed: LoginFailed | None = None
    #: The exception the connection raised (a RemoteProtocolError from a
    #: hostile or disappointed client, or a bug), and its traceback.
    error: BaseException | None = None
    error_traceback: str = ""
    queries: list[str] = field(default_factory=list)
    terminated: bool = False

    @property
    def user(self) -> str | None:
        return self.startup.get("user") if self.startup is not None else None


class AuthServer:
    """A threaded login server on ServerConnection; see the module docstring.

    ``users`` maps user names to :class:`User`. ``ssl_context`` (with
    ``server_certificate``, the DER, for SCRAM-SHA-256-PLUS) turns TLS on;
    ``require_tls`` refuses unencrypted logins with FATAL 28000.

    Use as a context manager or with :meth:`start`/:meth:`stop`; ``port`` is
    the listening port on 127.0.0.1. After a client is done, :meth:`take_sessions`
    waits for the server side of its connections to finish and returns them.
    """

    def __init__(
        self,
        users: Mapping[str, User],
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_certificate: bytes | None = None,
        require_tls: bool = False,
    ) -> None:
        self.users = dict(users)
        self.ssl_context = ssl_context
        self.server_certificate = server_certificate
        self.require_tls = require_tls
        self._listener: socket.socket | None = None
        self._accepter: threading.Thread | None = None
        self._lock = threading.Lock()
        self._handlers: list[threading.Thread] = []
        self._sessions: list[Session] = []
        self._stopping = threading.Event()

    # -- lifecycle --------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the server is not started")
        port: int = self._listener.getsockname()[1]
        return port

    def start(self) -> AuthServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self._listener = listener
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"auth-server-{self.port}")
        self._accepter.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        if self._accepter is not None:
            self._accepter.join(timeout=10)
        self._join_handlers()

    def __enter__(self) -> AuthServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what happened -------------------------------------------------------------------

    def take_sessions(self) -> list[Session]:
        """Wait until every connection so far has ended; return their sessions and forget them."""
        self._join_handlers()
        with self._lock:
            sessions, self._sessions = self._sessions, []
        return sessions

    def _join_handlers(self) -> None:
        with self._lock:
            handlers, self._handlers = self._handlers, []
        for handler in handlers:
            handler.join(timeout=_RECV_TIMEOUT + 5)
            if handler.is_alive():
                raise RuntimeError(f"{handler.name} did not finish: a client left it hanging")

    # -- serving --------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            session = Session()
            handler = threading.Thread(target=self._serve, args=(sock, session), daemon=True,
                                       name=f"auth-connection-{sock.getpeername()[1]}")
            with self._lock:
                self._sessions.append(session)
                self._handlers.append(handler)
            handler.start()

    def _serve(self, sock: socket.socket, session: Session) -> None:
        sock.settimeout(_RECV_TIMEOUT)
        conn = ServerConnection(ssl_context=self.ssl_context,
                                server_certificate=self.server_certificate,
                                require_tls=self.require_tls)
        try:
            _Handler(conn, sock, session, self.users).run()
        except Exception as exc:
            session.error = exc
            session.error_traceback = traceback.format_exc()
            if isinstance(exc, (pw.RemoteProtocolError, pw.LocalProtocolError)) and not isinstance(
                exc, TLSError
            ):
                # Tell the client, as PostgreSQL would (best effort: the state
                # machine may not allow an ErrorResponse any more).
                with contextlib.suppress(pw.ProtocolError):
                    conn.send(pw.error_response(exc))
            with contextlib.suppress(OSError, pw.ProtocolError):
                sock.sendall(conn.data_to_send())
        finally:
            with contextlib.suppress(OSError):
                sock.close()


class _Handler:
    """One connection: login by the user table, then one fixed row per query."""

    def __init__(self, conn: ServerConnection, sock: socket.socket, session: Session,
                 users: Mapping[str, User]) -> None:
        self.conn = conn
        self.sock = sock
        self.session = session
        self.users = users
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def run(self) -> None:
        conn = self.conn
        while not self.closed:
            event = conn.next_event()
            self.flush()
            if event is pw.NEED_DATA:
                try:
                    data = self.sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                conn.receive_data(data)
                continue
            self.handle(event)
            self.flush()

    def handle(self, event: object) -> None:
        conn = self.conn
        session = self.session
        if isinstance(event, pw.StartupMessage):
            session.startup = event
            session.tls = conn.tls_info
            user = self.users.get(event.get("user") or "", User("scram-sha-256", None))
            conn.authenticate(user.method, user.secret)
        elif isinstance(event, Authenticated):
            session.authenticated = event
            self.welcome(event)
        elif isinstance(event, LoginFailed):
            session.failed = event
            self.closed = True
        elif isinstance(event, pw.Query):
            session.queries.append(event.query)
            conn.send(self.row_description())
            conn.send(pw.DataRow(values=(ANSWER.encode(),)))
            conn.send(pw.CommandComplete(tag="SELECT 1"))
            conn.send(pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))
        elif isinstance(event, pw.Parse):
            session.queries.append(event.query)
            conn.send(pw.ParseComplete())
        elif isinstance(event, pw.Bind):
            conn.send(pw.BindComplete())
        elif isinstance(event, pw.Describe):
            if event.kind == "S":
                conn.send(pw.ParameterDescription(parameter_types=()))
            conn.send(self.row_description())
        elif isinstance(event, pw.Execute):
            conn.send(pw.DataRow(values=(ANSWER.encode(),)))
            conn.send(pw.CommandComplete(tag="SELECT 1"))
        elif isinstance(event, pw.Close):
            conn.send(pw.CloseComplete())
        elif isinstance(event, pw.Sync):
            conn.send(pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))
        elif isinstance(event, pw.Terminate):
            session.terminated = True
            self.closed = True
        elif isinstance(event, (pw.ConnectionClosed, pw.CancelRequest)):
            self.closed = True
        # SSLRequest, GSSENCRequest, DirectTLSHandshake (answered by ServerConnection),
        # the client's password messages (checked by it) and Flush: nothing to do.

    def welcome(self, login: Authenticated) -> None:
        conn = self.conn
        settings = {
            "server_version": "16.4", "server_encoding": "UTF8", "client_encoding": "UTF8",
            "DateStyle": "ISO, MDY", "integer_datetimes": "on", "IntervalStyle": "postgres",
            "standard_conforming_strings": "on", "TimeZone": "UTC", "is_superuser": "off",
            "session_authorization": login.user, "application_name": "",
        }
        for name, value in settings.items():
            conn.send(pw.ParameterStatus(name=name, value=value))
        key_length = 32 if conn.backend.protocol_version & 0xFFFF >= 2 else 4
        conn.send(pw.BackendKeyData(process_id=4242, secret_key=b"k" * key_length))
        conn.send(pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))

    @staticmethod
    def row_description() -> pw.RowDescription:
        return pw.RowDescription(fields=(pw.FieldDescription(name="answer",
                                                             data_type_oid=_TEXT_OID),))

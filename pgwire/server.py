"""A server connection with TLS and authentication built in, still sans-IO.

:class:`ServerConnection` wraps a :class:`~pgwire.Backend` with what a
PostgreSQL server does before the first query: answering SSLRequest and
GSSENCRequest, TLS through memory buffers (also PostgreSQL 17's direct TLS,
which needs ALPN ``postgresql``), and the authentication exchange for
``trust``, ``password``, ``md5``, ``scram-sha-256`` (PLUS over TLS) and
``cert``, checked against stored secrets in PostgreSQL's own formats, so the
password itself never has to be known.
"""

from __future__ import annotations

import hmac
import secrets
import ssl
from collections import deque
from collections.abc import Collection
from typing import Final, Literal

from .auth import (
    AuthenticationFailed,
    ScramServer,
    is_md5_secret,
    mock_scram_secret,
    password_type,
    verify_md5_response,
    verify_password,
)
from .login import Authenticated, LoginFailed
from .protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    NEED_DATA,
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    Backend,
    BackendEvent,
    ConnectionClosed,
    DirectTLSHandshake,
    ErrorResponse,
    GSSENCRequest,
    GSSENCResponse,
    LocalProtocolError,
    Message,
    PasswordMessage,
    Phase,
    ProtocolError,
    RawMessage,
    RemoteProtocolError,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    SSLResponse,
    StartupMessage,
)
from .protocol._messages import MAX_STARTUP_PACKET_LENGTH
from .tls import SecureChannel, TLSError, TLSInfo, TLSSession

__all__ = ["AuthMethod", "ServerConnection"]

AuthMethod = Literal["trust", "password", "md5", "scram-sha-256", "cert"]
_AUTH_METHODS: Final = ("trust", "password", "md5", "scram-sha-256", "cert")
_SQLSTATE_INVALID_PASSWORD: Final = "28P01"
_SQLSTATE_INVALID_AUTHORIZATION: Final = "28000"

ServerEvent = BackendEvent | Authenticated | LoginFailed


class ServerConnection:
    """A PostgreSQL server session: encryption and login handled for you.

    - ``ssl_context`` (see :func:`pgwire.tls.server_context`): with it,
      SSLRequest is answered 'S' and direct TLS is accepted; without it, 'N'.
      ``server_certificate`` is the DER of the context's certificate
      (:func:`pgwire.tls.load_certificate_der`), needed to offer
      SCRAM-SHA-256-PLUS. GSSENCRequest is always answered 'N'.
    - ``require_tls``: refuse a StartupMessage that arrives unencrypted with
      FATAL 28000, as a ``hostssl``-only pg_hba.conf does.

    Flow: ``receive_data()`` bytes from the client, write ``data_to_send()``
    after every event, and take events from ``next_event()``. When it returns
    the client's :class:`~pgwire.StartupMessage`, decide how to authenticate
    and call :meth:`authenticate`. Events then end with
    :class:`~pgwire.login.Authenticated` (send ParameterStatus messages,
    BackendKeyData and ReadyForQuery with :meth:`send`) or
    :class:`~pgwire.login.LoginFailed` (the FATAL error is queued; close after
    writing it). SSLRequest, GSSENCRequest and DirectTLSHandshake events are
    answered for you and also returned, for logging.

    Relaying instead (a proxy passing the client's login to a server): do not
    call :meth:`authenticate`; :meth:`send` the server's authentication
    requests, and the client's answers come back as plain events.
    """

    __slots__ = ("_auth_method", "_channel", "_error", "_events", "_md5_salt", "_mock_key",
                 "_sasl_mechanism", "_scram", "_secret", "backend", "require_tls",
                 "server_certificate", "ssl_context", "tls_info")

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_certificate: bytes | None = None,
        require_tls: bool = False,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        max_startup_size: int = MAX_STARTUP_PACKET_LENGTH,
        decode: Collection[bytes] | None = None,
        mock_key: bytes | None = None,
    ) -> None:
        if require_tls and ssl_context is None:
            raise ValueError("require_tls needs an ssl_context")
        self.backend = Backend(max_message_size=max_message_size, decode=decode,
                               max_startup_size=max_startup_size)
        self.ssl_context = ssl_context
        self.server_certificate = server_certificate
        self.require_tls = require_tls
        #: What the TLS handshake established, once it has.
        self.tls_info: TLSInfo | None = None
        self._channel = SecureChannel(self.backend)
        self._error: ProtocolError | None = None
        self._events: deque[ServerEvent] = deque()
        self._auth_method: str | None = None
        self._secret: str | None = None
        self._scram: ScramServer | None = None
        self._md5_salt = b""
        self._sasl_mechanism = ""
        # Unknown users get a SCRAM exchange that fails like a wrong password,
        # with a salt that stays the same per user (PostgreSQL's mock secret).
        self._mock_key = mock_key if mock_key is not None else secrets.token_bytes(32)

    # -- bytes in and out -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the client; ``b""`` when it closed."""
        self._channel.receive(data)

    def data_to_send(self) -> bytes:
        """Bytes to write to the client now (encrypted when TLS is on)."""
        return self._channel.data_to_send()

    def send(self, message: Message | RawMessage) -> None:
        """Queue a message for the client (checked by the Backend's state machine)."""
        self._channel.write(self.backend.send(message))

    @property
    def tls(self) -> bool:
        """True when the connection is encrypted."""
        return self._channel.encrypted

    # -- events ------------------------------------------------------------------------

    def next_event(self) -> ServerEvent:
        """The next event from the client, after doing what encryption and login need.

        A protocol or TLS error latches: every later call raises it again.
        """
        if self._error is None:
            self._error = self._channel.error
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except ProtocolError as exc:
            self._error = exc
            raise

    def _next_event(self) -> ServerEvent:
        if self._events:
            return self._events.popleft()
        tls = self._channel.tls
        if tls is not None and not tls.handshake_complete and not self._handshake():
            return NEED_DATA
        event = self.backend.next_event()
        if isinstance(event, SSLRequest):
            self.send(SSLResponse(accepted=self.ssl_context is not None))
            if self.ssl_context is not None:
                self._begin_tls(b"", require_alpn=False)
        elif isinstance(event, GSSENCRequest):
            self.send(GSSENCResponse(accepted=False))
        elif isinstance(event, DirectTLSHandshake):
            if self.ssl_context is None:
                raise RemoteProtocolError(
                    "direct TLS connection attempted, but this server has no TLS configured"
                )
            self._begin_tls(event.data, require_alpn=True)
        elif isinstance(event, StartupMessage):
            if self.require_tls and not self.tls:
                return self._fail(
                    _SQLSTATE_INVALID_AUTHORIZATION,
                    f'connection for user "{event.get("user")}" requires TLS: reconnect with '
                    "sslmode=require or stronger",
                )
            negotiation = self.backend.protocol_negotiation
            if negotiation is not None:
                self.send(negotiation)
        elif isinstance(event, (PasswordMessage, SASLInitialResponse, SASLResponse)) and (
            self._auth_method is not None
        ):
            return self._password_message(event)
        elif isinstance(event, ConnectionClosed) and tls is not None and (
            not tls.handshake_complete
        ):
            raise TLSError("client closed the connection during the TLS handshake")
        return event

    # -- TLS ---------------------------------------------------------------------------

    def _begin_tls(self, initial: bytes, *, require_alpn: bool) -> None:
        assert self.ssl_context is not None
        session = TLSSession(self.ssl_context, server_side=True,
                             server_certificate=self.server_certificate,
                             require_alpn=require_alpn)
        self._channel.start_tls(session, initial)
        self._handshake()

    def _handshake(self) -> bool:
        if not self._channel.handshake():
            return False
        assert self._channel.tls is not None
        self.tls_info = self._channel.tls.info()
        self._channel.pump()
        return True

    # -- authentication ----------------------------------------------------------------

    def authenticate(self, method: AuthMethod, secret: str | None = None) -> None:
        """Start authenticating the client whose StartupMessage was just returned.

        ``secret`` is what PostgreSQL would store for the user: a SCRAM secret
        (``SCRAM-SHA-256$...``), an MD5 secret (``md5...``) or a plaintext
        password; ``None`` for a user that does not exist (the exchange then
        fails like a wrong password, without saying which it was).

        - ``trust``: accept at once.
        - ``password``: ask for the cleartext password (refused by clients
          without TLS unless they allow it).
        - ``md5``: MD5 challenge; with a SCRAM secret, SCRAM instead, as
          PostgreSQL does.
        - ``scram-sha-256``: SCRAM, with SCRAM-SHA-256-PLUS offered over TLS
          when ``server_certificate`` is known.
        - ``cert``: the client certificate, verified by the TLS context, must
          have the user name as its common name.
        """
        if method not in _AUTH_METHODS:
            raise ValueError(f"method must be one of {', '.join(_AUTH_METHODS)}, not {method!r}")
        startup = self.backend.startup
        if startup is None or self.backend.phase is not Phase.AUTHENTICATION:
            raise LocalProtocolError("authenticate() answers a StartupMessage: wait for it")
        if self._auth_method is not None:
            raise LocalProtocolError("authenticate() was already called for this client")
        user = startup.get("user") or ""
        self._secret = secret
        if method == "md5" and secret is not None and password_type(secret) == "scram-sha-256":
            method = "scram-sha-256"
        self._auth_method = method
        if method == "trust":
            self._succeed(False)
        elif method == "cert":
            self._check_certificate(user)
        elif method == "password":
            self.send(AuthenticationCleartextPassword())
        elif method == "md5":
            self._md5_salt = secrets.token_bytes(4)
            self.send(AuthenticationMD5Password(salt=self._md5_salt))
        else:
            binding = None
            if self.tls_info is not None:
                binding = self.tls_info.channel_binding
            usable = secret if secret is not None and not is_md5_secret(secret) else None
            self._scram = ScramServer(
                usable if usable else mock_scram_secret(user, self._mock_key),
                channel_binding=binding,
                user=user,
            )
            self.send(AuthenticationSASL(mechanisms=self._scram.mechanisms))

    def _password_message(
        self, message: PasswordMessage | SASLInitialResponse | SASLResponse
    ) -> ServerEvent:
        """Check one authentication message; the client's message is returned as
        the event, and the outcome (Authenticated or LoginFailed) follows it."""
        startup = self.backend.startup
        assert startup is not None
        user = startup.get("user") or ""
        try:
            if isinstance(message, PasswordMessage):
                self._check_password(user, message.password)
            else:
                self._scram_step(message)
        except RemoteProtocolError as exc:
            self._events.append(self._fail(exc.sqlstate, exc.message))
        return message

    def _check_password(self, user: str, password: bytes) -> None:
        secret = self._secret
        if self._auth_method == "password":
            accepted = secret is not None and bool(password) and verify_password(
                secret, password, user=user
            )
        else:
            # verify_md5_response takes plaintext or md5 secrets and refuses empty ones.
            accepted = secret is not None and verify_md5_response(
                secret, user, self._md5_salt, password
            )
        if not accepted:
            raise AuthenticationFailed(f'password authentication failed for user "{user}"')
        self._succeed(False)

    def _scram_step(self, message: SASLInitialResponse | SASLResponse) -> None:
        scram = self._scram
        assert scram is not None
        if isinstance(message, SASLInitialResponse):
            if message.data is None:
                # As PostgreSQL: ask for the client-first message with an empty challenge.
                self._sasl_mechanism = message.mechanism
                self.send(AuthenticationSASLContinue(data=b""))
                return
            first = scram.receive_client_first(message.mechanism, message.data)
            self.send(AuthenticationSASLContinue(data=first))
        elif scram.mechanism is None:
            first = scram.receive_client_first(self._sasl_mechanism, message.data)
            self.send(AuthenticationSASLContinue(data=first))
        else:
            self.send(AuthenticationSASLFinal(data=scram.receive_client_final(message.data)))
            self._succeed(scram.channel_bound)

    def _check_certificate(self, user: str) -> None:
        info = self.tls_info
        common_name = info.peer_common_name if info is not None else None
        if common_name is None or not hmac.compare_digest(common_name.encode(), user.encode()):
            self._events.append(self._fail(
                _SQLSTATE_INVALID_AUTHORIZATION,
                f'certificate authentication failed for user "{user}"',
            ))
            return
        self._succeed(False)

    def _succeed(self, channel_bound: bool) -> None:
        startup = self.backend.startup
        assert startup is not None
        self.send(AuthenticationOk())
        method = self._auth_method or "trust"
        if method == "scram-sha-256" and channel_bound:
            method = "scram-sha-256-plus"
        self._events.append(Authenticated(
            user=startup.get("user") or "",
            database=startup.get("database") or startup.get("user") or "",
            method=method,
            channel_bound=channel_bound,
        ))

    def _fail(self, sqlstate: str, message: str) -> LoginFailed:
        self.send(ErrorResponse(severity="FATAL", severity_nonlocalized="FATAL",
                                code=sqlstate, message=message))
        return LoginFailed(sqlstate=sqlstate, message=message)


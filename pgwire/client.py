"""A client connection with TLS and authentication built in, still sans-IO.

:class:`ClientConnection` wraps a :class:`~pgwire.Frontend` with what libpq
does around it: ``sslmode`` and ``sslnegotiation`` (TLS through memory
buffers, :mod:`pgwire.tls`), and answering the server's authentication
requests — cleartext, MD5, SCRAM-SHA-256 and SCRAM-SHA-256-PLUS — under a
policy that refuses downgrades. You move bytes: ``receive_data()`` what the
socket read, write what ``data_to_send()`` returns, and take events from
``next_event()``.
"""

from __future__ import annotations

import ssl
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Final, Literal

from .auth import ScramClient, ScramError, ScramKeys, md5_password_response
from .auth.scram import DEFAULT_MAX_ITERATIONS, SCRAM_SHA_256_PLUS
from .login import LoginRefused
from .protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    NEED_DATA,
    PROTOCOL_3_0,
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationKerberosV5,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSSPI,
    ConnectionClosed,
    Frontend,
    FrontendEvent,
    LocalProtocolError,
    Message,
    PasswordMessage,
    ProtocolError,
    RawMessage,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    SSLResponse,
    StartupMessage,
)
from .tls import SSLMODES, SecureChannel, SSLMode, TLSError, TLSInfo, TLSSession, client_context

__all__ = ["ChannelBindingMode", "ClientConnection", "SSLNegotiation"]

ChannelBindingMode = Literal["disable", "prefer", "require"]
SSLNegotiation = Literal["postgres", "direct"]
_ENCRYPTED_MODES: Final = ("require", "verify-ca", "verify-full")
_SQLSTATE_CANNOT_CONNECT: Final = "08001"
_SQLSTATE_AUTHORIZATION: Final = "28000"
_SQLSTATE_UNSUPPORTED: Final = "0A000"


class ClientConnection:
    """A PostgreSQL client session: TLS negotiation and login handled for you.

    Parameters follow libpq's connection keywords:

    - ``sslmode``: ``disable`` (never TLS), ``allow`` (plaintext; this sans-IO
      object cannot reconnect, so it never upgrades), ``prefer`` (ask, accept
      'N'), ``require`` (ask, refuse 'N'), ``verify-ca`` (and check the chain
      against ``sslrootcert``), ``verify-full`` (and the host name
      ``server_hostname``). ``ssl_context`` replaces the context built from
      ``sslmode``/``sslrootcert``/``sslcert``/``sslkey``.
    - ``sslnegotiation``: ``postgres`` (SSLRequest first) or ``direct`` (TLS
      at once with ALPN ``postgresql``, PostgreSQL 17+; needs ``sslmode``
      ``require`` or stronger).
    - ``channel_binding``: ``prefer`` (SCRAM-SHA-256-PLUS when offered over
      TLS), ``require`` (refuse any login not bound to the TLS channel:
      cleartext, MD5, trust, plain SCRAM), ``disable``.
    - ``allow_plaintext_password``: send a cleartext or MD5 password over an
      unencrypted connection (refused by default).
    - ``password`` may also be the :class:`~pgwire.auth.ScramKeys` a
      :class:`~pgwire.auth.ScramServer` recovered (SCRAM logins only).
    - ``relay_authentication``: answer nothing; authentication requests come
      back as events for someone else (a proxy's client) to answer, and the
      answers go in with :meth:`send`.

    Usage with any transport::

        conn = ClientConnection(user="app", database="app", password="secret",
                                sslmode="verify-full", sslrootcert="ca.pem",
                                server_hostname="db.example.com")
        conn.start()
        write(conn.data_to_send())
        while (event := conn.next_event()) is not NEED_DATA or read_more():
            ...

    After every ``next_event()`` that returns ``NEED_DATA``, write
    ``data_to_send()`` before reading: login answers are produced as events
    are processed. Events are the Frontend's (every message, including the
    authentication requests this object answered). Refusals raise
    :class:`~pgwire.login.LoginRefused`; TLS failures
    :class:`~pgwire.tls.TLSError`; SCRAM failures
    :class:`~pgwire.auth.ScramError` / :class:`~pgwire.auth.AuthenticationFailed`.
    Any of them latches: later calls raise it again.

    ``decode`` narrows which messages come back decoded (see
    :class:`~pgwire.Frontend`); authentication requests are always decoded,
    since the login answers them. ``authentication_method`` is ``trust``
    also for certificate logins: the server's AuthenticationOk does not say
    which method it applied.
    """

    __slots__ = (
        "_channel", "_error", "_password", "_password_method", "_scram", "_started",
        "_startup", "allow_plaintext_password", "authentication_method",
        "channel_binding", "frontend", "max_scram_iterations", "relay_authentication",
        "server_hostname", "ssl_context", "sslmode", "sslnegotiation", "tls_info",
    )

    def __init__(
        self,
        *,
        user: str,
        database: str | None = None,
        password: str | bytes | ScramKeys | None = None,
        parameters: Mapping[str, str] | None = None,
        sslmode: SSLMode = "prefer",
        sslnegotiation: SSLNegotiation = "postgres",
        sslrootcert: str | Path | None = None,
        sslcert: str | Path | None = None,
        sslkey: str | Path | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        channel_binding: ChannelBindingMode = "prefer",
        allow_plaintext_password: bool = False,
        protocol_version: int = PROTOCOL_3_0,
        max_scram_iterations: int = DEFAULT_MAX_ITERATIONS,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        decode: Collection[bytes] | None = None,
        relay_authentication: bool = False,
    ) -> None:
        if sslmode not in SSLMODES:
            raise ValueError(f"sslmode must be one of {', '.join(SSLMODES)}, not {sslmode!r}")
        if sslnegotiation not in ("postgres", "direct"):
            raise ValueError(
                f"sslnegotiation must be 'postgres' or 'direct', not {sslnegotiation!r}"
            )
        if sslnegotiation == "direct" and sslmode not in _ENCRYPTED_MODES:
            raise ValueError("sslnegotiation='direct' needs sslmode 'require' or stronger")
        if channel_binding not in ("disable", "prefer", "require"):
            raise ValueError(f"channel_binding must be disable, prefer or require, not "
                             f"{channel_binding!r}")
        if channel_binding == "require" and sslmode in ("disable", "allow"):
            raise ValueError("channel_binding='require' needs TLS: use sslmode 'prefer' or "
                             "stronger")
        if sslmode == "verify-full" and server_hostname is None and ssl_context is None:
            raise ValueError("sslmode='verify-full' needs server_hostname to check")
        settings = {"user": user}
        if database is not None:
            settings["database"] = database
        settings.update(parameters or {})
        self._startup = StartupMessage.from_dict(settings, protocol_version)
        if decode is not None:
            # The login needs its authentication requests decoded, whatever else is.
            decode = {*decode, b"R"}
        self.frontend = Frontend(max_message_size=max_message_size, decode=decode)
        self.sslmode: SSLMode = sslmode
        self.sslnegotiation: SSLNegotiation = sslnegotiation
        self.channel_binding: ChannelBindingMode = channel_binding
        self.allow_plaintext_password = allow_plaintext_password
        self.max_scram_iterations = max_scram_iterations
        self.server_hostname = server_hostname
        if ssl_context is None and sslmode != "disable":
            ssl_context = client_context(sslmode, sslrootcert=sslrootcert, sslcert=sslcert,
                                         sslkey=sslkey)
        self.ssl_context = ssl_context
        self._password = password
        #: Return authentication requests as events without answering them
        #: (a proxy relaying its client's own login); TLS is still handled.
        self.relay_authentication = relay_authentication
        self._channel = SecureChannel(self.frontend)
        #: What the TLS handshake established, once it has.
        self.tls_info: TLSInfo | None = None
        #: How the server authenticated us, once AuthenticationOk arrived.
        self.authentication_method: str | None = None
        self._scram: ScramClient | None = None
        self._password_method: str | None = None
        self._error: ProtocolError | None = None
        self._started = False

    # -- bytes in and out -------------------------------------------------------------

    def start(self) -> None:
        """Queue the first bytes: SSLRequest, a TLS ClientHello, or the StartupMessage."""
        if self._started:
            raise LocalProtocolError("start() was already called")
        self._started = True
        if self.sslmode in ("disable", "allow"):
            self._send(self._startup)
        elif self.sslnegotiation == "direct":
            self._begin_tls()
        else:
            self._send(SSLRequest())

    def data_to_send(self) -> bytes:
        """Bytes to write to the server now (encrypted when TLS is on)."""
        return self._channel.data_to_send()

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the server; ``b""`` when it closed."""
        self._channel.receive(data)

    def send(self, message: Message | RawMessage) -> None:
        """Queue a message for the server (after login: queries and the rest)."""
        if self._error is not None:
            raise self._error
        self._send(message)

    def _send(self, message: Message | RawMessage) -> None:
        self._channel.write(self.frontend.send(message))

    # -- events ---------------------------------------------------------------------------

    def next_event(self) -> FrontendEvent:
        """The next event from the server, after answering anything the login needs."""
        if self._error is None:
            self._error = self._channel.error
        if self._error is not None:
            raise self._error
        if not self._started:
            raise LocalProtocolError("call start() first")
        try:
            return self._next_event()
        except ProtocolError as exc:
            self._error = exc
            raise

    def _next_event(self) -> FrontendEvent:
        tls = self._channel.tls
        if tls is not None and not tls.handshake_complete and not self._handshake():
            return NEED_DATA
        event = self.frontend.next_event()
        if isinstance(event, SSLResponse):
            if event.accepted:
                self._begin_tls()
            elif self.sslmode in _ENCRYPTED_MODES:
                raise LoginRefused(
                    f"server does not support SSL, but sslmode={self.sslmode} requires it",
                    _SQLSTATE_CANNOT_CONNECT,
                )
            else:
                self._send(self._startup)
        elif isinstance(event, (AuthenticationSASL, AuthenticationSASLContinue,
                                AuthenticationSASLFinal, AuthenticationOk,
                                AuthenticationCleartextPassword, AuthenticationMD5Password,
                                AuthenticationGSS, AuthenticationSSPI,
                                AuthenticationKerberosV5)) and not self.relay_authentication:
            self._authenticate(event)
        elif isinstance(event, ConnectionClosed) and tls is not None and (
            not tls.handshake_complete
        ):
            raise TLSError("server closed the connection during the TLS handshake")
        return event

    # -- TLS ------------------------------------------------------------------------------

    def _begin_tls(self) -> None:
        assert self.ssl_context is not None
        self._channel.start_tls(TLSSession(self.ssl_context, server_side=False,
                                           server_hostname=self.server_hostname))
        self._handshake()

    def _handshake(self) -> bool:
        if not self._channel.handshake():
            return False
        assert self._channel.tls is not None
        self.tls_info = self._channel.tls.info()
        self._send(self._startup)
        self._channel.pump()
        return True

    # -- authentication --------------------------------------------------------------------

    def _password_bytes(self, what: str) -> bytes:
        if self._password is None:
            raise LoginRefused(f"the server asks for a {what} and no password was given",
                               _SQLSTATE_AUTHORIZATION)
        password = self._password
        if isinstance(password, ScramKeys):
            raise LoginRefused(f"the server asks for a {what}, but only SCRAM keys are known "
                               "for this user", _SQLSTATE_AUTHORIZATION)
        return password.encode() if isinstance(password, str) else bytes(password)

    def _refuse_plaintext(self, what: str) -> None:
        if self.channel_binding == "require":
            raise LoginRefused(
                f"channel binding is required, but the server asks for a {what}, which "
                "cannot be bound to the TLS channel",
                _SQLSTATE_AUTHORIZATION,
            )
        if not self._channel.encrypted and not self.allow_plaintext_password:
            raise LoginRefused(
                f"the server asks for a {what} over an unencrypted connection; use TLS "
                "(sslmode=require or stronger) or pass allow_plaintext_password=True",
                _SQLSTATE_AUTHORIZATION,
            )

    def _authenticate(self, event: Message) -> None:
        if isinstance(event, AuthenticationCleartextPassword):
            self._refuse_plaintext("cleartext password")
            self._send(PasswordMessage(password=self._password_bytes("cleartext password")))
            self._password_method = "password"
        elif isinstance(event, AuthenticationMD5Password):
            self._refuse_plaintext("MD5 password")
            user = self._startup.get("user") or ""
            response = md5_password_response(user, self._password_bytes("MD5 password"),
                                              event.salt)
            self._send(PasswordMessage(password=response))
            self._password_method = "md5"
        elif isinstance(event, AuthenticationSASL):
            self._start_scram(event)
        elif isinstance(event, (AuthenticationSASLContinue, AuthenticationSASLFinal)):
            self._scram_step(event)
        elif isinstance(event, AuthenticationOk):
            self._authenticated()
        else:
            raise LoginRefused(
                f"the server asks for {type(event).__name__}, which pgwire does not support",
                _SQLSTATE_UNSUPPORTED,
            )

    def _scram_step(self, event: AuthenticationSASLContinue | AuthenticationSASLFinal) -> None:
        scram = self._scram
        assert scram is not None  # the state machine allows these only after SASL
        # The state machine is not SCRAM-specific (SASL allows any number of
        # steps); SCRAM has exactly one challenge, then the final message.
        expected = AuthenticationSASLContinue if scram.state == "first-sent" else (
            AuthenticationSASLFinal if scram.state == "final-sent" else None)
        if not isinstance(event, expected or ()):
            raise ScramError(
                f"the server sent {type(event).__name__} out of order in the SCRAM exchange"
            )
        if isinstance(event, AuthenticationSASLContinue):
            self._send(SASLResponse(data=scram.receive_server_first(event.data)))
        else:
            scram.receive_server_final(event.data)

    def _start_scram(self, event: AuthenticationSASL) -> None:
        if SCRAM_SHA_256_PLUS in event.mechanisms and not self._channel.encrypted:
            raise LoginRefused(
                f"the server offered {SCRAM_SHA_256_PLUS} over a connection without TLS",
                _SQLSTATE_AUTHORIZATION,
            )
        binding = None
        if self.channel_binding != "disable" and self.tls_info is not None:
            binding = self.tls_info.channel_binding
        if self._password is None:
            raise LoginRefused("the server asks for SCRAM authentication and no password "
                               "was given", _SQLSTATE_AUTHORIZATION)
        scram = ScramClient(
            self._password,
            channel_binding=binding,
            mechanisms=event.mechanisms,
            require_channel_binding=self.channel_binding == "require" and binding is not None,
            max_iterations=self.max_scram_iterations,
        )
        if self.channel_binding == "require" and binding is None:
            reason = (
                "the connection is not encrypted" if self.tls_info is None
                else "the server certificate gives no tls-server-end-point data"
            )
            raise LoginRefused(f"channel binding is required, but {reason}",
                               _SQLSTATE_AUTHORIZATION)
        self._scram = scram
        self._send(SASLInitialResponse(mechanism=scram.mechanism, data=scram.client_first()))

    def _authenticated(self) -> None:
        scram = self._scram
        if scram is not None:
            if not scram.authenticated:
                raise LoginRefused("AuthenticationOk before the server proved it knows the "
                                   "password", _SQLSTATE_AUTHORIZATION)
            method = "scram-sha-256-plus" if scram.channel_bound else "scram-sha-256"
        else:
            method = self._password_method or "trust"
        if self.channel_binding == "require" and method != "scram-sha-256-plus":
            raise LoginRefused(
                "channel binding is required, but the server authenticated the client "
                "without channel binding",
                _SQLSTATE_AUTHORIZATION,
            )
        self.authentication_method = method

    @property
    def tls(self) -> bool:
        """True when the connection is encrypted."""
        return self._channel.encrypted

"""TLS over memory buffers, so every adapter gets the same TLS for free.

:class:`TLSSession` wraps :class:`ssl.SSLObject` with two
:class:`ssl.MemoryBIO` buffers: encrypted bytes go in with
:meth:`~TLSSession.receive_encrypted` and out with
:meth:`~TLSSession.outgoing`; plaintext comes out of :meth:`~TLSSession.read`
and goes in through :meth:`~TLSSession.write`. No socket is involved, so the
client and server connections (:mod:`pgwire.client`, :mod:`pgwire.server`)
stay sans-IO with TLS inside.

Also here: the context builders for libpq's ``sslmode`` values and for a
server, and :class:`TLSInfo`, what the handshake established (version,
cipher, ALPN, the peer certificate, channel-binding data).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from .auth.channel_binding import ChannelBinding, UnsupportedCertificate
from .protocol import Backend, Frontend, RemoteProtocolError

__all__ = [
    "ALPN_POSTGRESQL",
    "SSLMODES",
    "SSLMode",
    "SecureChannel",
    "TLSError",
    "TLSInfo",
    "TLSSession",
    "client_context",
    "load_certificate_der",
    "server_context",
]

#: The ALPN protocol name PostgreSQL 17 requires for direct TLS.
ALPN_POSTGRESQL: Final = "postgresql"
#: SQLSTATE for a TLS failure: PostgreSQL reports handshake failures as 08P01.
_SQLSTATE_TLS: Final = "08P01"

SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
#: libpq's sslmode values, weakest first.
SSLMODES: Final[tuple[SSLMode, ...]] = (
    "disable", "allow", "prefer", "require", "verify-ca", "verify-full",
)


class TLSError(RemoteProtocolError):
    """The TLS handshake or record layer failed (bad certificate, protocol
    error, no common ALPN...). ``reason`` is OpenSSL's short reason, if any."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message, _SQLSTATE_TLS)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSInfo:
    """What a completed TLS handshake established.

    ``peer_certificate`` is the peer's certificate in DER (None if it sent
    none); ``peer_certificate_fields`` is the parsed form the ssl module gives
    for a *verified* certificate (empty otherwise). ``channel_binding`` is the
    ``tls-server-end-point`` data for SCRAM-SHA-256-PLUS: the hash of the
    *server's* certificate, whichever side we are (None if it cannot be
    computed, e.g. an Ed25519 certificate).
    """

    version: str | None
    cipher: str | None
    alpn_protocol: str | None
    server_hostname: str | None
    peer_certificate: bytes | None
    peer_certificate_fields: Mapping[str, object]
    channel_binding: ChannelBinding | None

    @property
    def peer_common_name(self) -> str | None:
        """The commonName of the peer's verified certificate (what pg_hba's
        ``cert`` method compares with the user name), or None."""
        subject = self.peer_certificate_fields.get("subject", ())
        if not isinstance(subject, tuple):
            return None
        for rdn in subject:
            for attribute in rdn:
                if attribute[0] == "commonName":
                    return str(attribute[1])
        return None


def _channel_binding(certificate: bytes | None) -> ChannelBinding | None:
    if certificate is None:
        return None
    try:
        return ChannelBinding.from_certificate(certificate)
    except UnsupportedCertificate:
        return None


class TLSSession:
    """One TLS connection, driven through memory buffers (sans-IO).

    ``server_certificate`` is needed on the server side only, for channel
    binding: the ssl module does not expose a server's own certificate, so
    pass the DER (see :func:`load_certificate_der`). ``require_alpn`` makes
    the handshake fail unless the peer agreed on ALPN ``"postgresql"`` (direct
    TLS, as PostgreSQL 17 requires).
    """

    __slots__ = ("_incoming", "_object", "_outgoing", "_require_alpn", "_server_certificate",
                 "_server_side", "handshake_complete", "peer_closed")

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        server_certificate: bytes | None = None,
        require_alpn: bool = False,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=None if server_side else server_hostname,
        )
        self._server_side = server_side
        self._server_certificate = server_certificate
        self._require_alpn = require_alpn
        #: True once the handshake finished.
        self.handshake_complete = False
        #: The peer sent close_notify: its side of the stream has ended, as at EOF.
        self.peer_closed = False

    def receive_encrypted(self, data: bytes) -> None:
        """Bytes read from the network; ``b""`` means the peer closed."""
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def outgoing(self) -> bytes:
        """Encrypted bytes to write to the network (possibly ``b""``)."""
        return self._outgoing.read()

    def do_handshake(self) -> bool:
        """Advance the handshake; True once it is complete.

        Raises :class:`TLSError` if it failed (check :meth:`outgoing` first:
        an alert to the peer may be waiting).
        """
        if self.handshake_complete:
            return True
        try:
            self._object.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise TLSError(f"TLS handshake failed: {exc}", exc.reason) from None
        if self._require_alpn and self._object.selected_alpn_protocol() != ALPN_POSTGRESQL:
            raise TLSError(
                "direct TLS connection without ALPN protocol negotiation: the peer must "
                f"offer ALPN {ALPN_POSTGRESQL!r}"
            )
        self.handshake_complete = True
        return True

    def read(self) -> bytes:
        """Plaintext received so far (``b""`` if none); raises TLSError on
        corrupt records. A clean close_notify reads as ``b""`` too, and sets
        :attr:`peer_closed`: treat it as the end of the stream (PostgreSQL
        does), even while the TCP connection stays open."""
        chunks = []
        while True:
            try:
                chunk = self._object.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True  # close_notify: nothing more will come
                break
            except ssl.SSLEOFError:
                # The peer closed the TCP stream without close_notify. The protocol's
                # own framing still detects a stream cut mid-message.
                break
            except ssl.SSLError as exc:
                raise TLSError(f"TLS error: {exc}", exc.reason) from None
            if not chunk:
                # CPython reads a received close_notify as b"" (it raises
                # SSLZeroReturnError only for a shutdown it did not expect).
                self.peer_closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def write(self, data: bytes) -> None:
        """Encrypt plaintext; the records appear in :meth:`outgoing`."""
        view = memoryview(data)
        while view:
            written = self._object.write(view)
            view = view[written:]

    def close(self) -> None:
        """Queue a close_notify alert (best effort)."""
        with contextlib.suppress(ssl.SSLError):
            self._object.unwrap()

    def info(self) -> TLSInfo:
        """Facts about the established session (call after the handshake)."""
        obj = self._object
        cipher = obj.cipher()
        peer = obj.getpeercert(binary_form=True)
        try:
            fields: Mapping[str, object] = dict(obj.getpeercert() or {})
        except ValueError:
            fields = {}
        server_certificate = self._server_certificate if self._server_side else peer
        return TLSInfo(
            version=obj.version(),
            cipher=cipher[0] if cipher else None,
            alpn_protocol=obj.selected_alpn_protocol(),
            server_hostname=obj.server_hostname,
            peer_certificate=peer,
            peer_certificate_fields=fields,
            channel_binding=_channel_binding(server_certificate),
        )


class SecureChannel:
    """The bytes between the network and a Frontend or Backend: plaintext
    until :meth:`start_tls`, TLS records after.

    Shared plumbing of :class:`~pgwire.client.ClientConnection` and
    :class:`~pgwire.server.ServerConnection`. A TLS error met while bytes
    arrive is kept in :attr:`error` for the owner to raise from its next
    ``next_event()``, since ``receive_data()`` must not lose it.
    """

    __slots__ = ("_connection", "_ended", "_outgoing", "error", "tls")

    def __init__(self, connection: Frontend | Backend) -> None:
        self._connection = connection
        self._ended = False
        self._outgoing: list[bytes] = []
        #: The TLS session, once started.
        self.tls: TLSSession | None = None
        #: A TLS error met in :meth:`receive`, for the owner to raise.
        self.error: TLSError | None = None

    @property
    def encrypted(self) -> bool:
        """True once the TLS handshake is complete."""
        return self.tls is not None and self.tls.handshake_complete

    def receive(self, data: bytes) -> None:
        """Network bytes in (``b""``: the peer closed); plaintext goes on to the
        connection as soon as TLS has decrypted it."""
        tls = self.tls
        if tls is None:
            self._connection.receive_data(data)
            return
        tls.receive_encrypted(data)
        if tls.handshake_complete:
            try:
                self.pump()
            except TLSError as exc:
                self.error = exc
                return
            if not data:
                self._end_of_stream()

    def pump(self) -> None:
        """Hand decrypted bytes to the connection, and the end of the stream
        once the peer's close_notify has come."""
        tls = self.tls
        assert tls is not None
        plaintext = tls.read()
        if plaintext:
            self._connection.receive_data(plaintext)
        if tls.peer_closed:
            self._end_of_stream()

    def _end_of_stream(self) -> None:
        if not self._ended:
            self._ended = True
            self._connection.receive_data(b"")

    def write(self, data: bytes) -> None:
        """Queue bytes from the connection, encrypted if TLS has started."""
        if self.tls is not None:
            self.tls.write(data)
        else:
            self._outgoing.append(data)

    def data_to_send(self) -> bytes:
        """Everything to write to the network now, in order."""
        if self.tls is not None:
            self._outgoing.append(self.tls.outgoing())
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    def start_tls(self, session: TLSSession, initial: bytes = b"") -> None:
        """Switch to TLS; ``initial`` holds bytes already received for it."""
        self.tls = session
        if initial:
            session.receive_encrypted(initial)

    def handshake(self) -> bool:
        """Advance the handshake; True once complete. On failure the alert for
        the peer is queued and :class:`TLSError` raised."""
        tls = self.tls
        assert tls is not None
        try:
            done = tls.do_handshake()
        except TLSError:
            self._outgoing.append(tls.outgoing())
            raise
        return done


def load_certificate_der(path: str | Path) -> bytes:
    """The first certificate of a PEM file, as DER (for channel binding)."""
    text = Path(path).read_text()
    start = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        raise ValueError(f"{path} holds no PEM certificate")
    return ssl.PEM_cert_to_DER_cert(text[start : end + len("-----END CERTIFICATE-----")])


def client_context(
    sslmode: SSLMode,
    *,
    sslrootcert: str | Path | None = None,
    sslcert: str | Path | None = None,
    sslkey: str | Path | None = None,
    direct: bool = False,
) -> ssl.SSLContext:
    """A client SSLContext that behaves as libpq's ``sslmode``.

    ``require`` (and ``allow``/``prefer``) encrypt without checking the server;
    ``verify-ca`` checks the chain against ``sslrootcert`` (the system store
    if None); ``verify-full`` checks the host name as well. ``sslcert`` and
    ``sslkey`` present a client certificate. ALPN ``"postgresql"`` is always
    offered, as libpq 17 does; ``direct`` is accepted for symmetry (ALPN is
    what direct TLS needs).
    """
    if sslmode not in SSLMODES:
        raise ValueError(f"sslmode must be one of {', '.join(SSLMODES)}, not {sslmode!r}")
    if sslmode == "disable":
        raise ValueError("sslmode 'disable' uses no TLS context")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if sslmode in ("verify-ca", "verify-full"):
        context.check_hostname = sslmode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED
        if sslrootcert is not None:
            context.load_verify_locations(cafile=str(sslrootcert))
        else:
            context.load_default_certs()
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if sslcert is not None:
        context.load_cert_chain(str(sslcert), None if sslkey is None else str(sslkey))
    context.set_alpn_protocols([ALPN_POSTGRESQL])
    del direct
    return context


def server_context(
    certfile: str | Path,
    keyfile: str | Path | None = None,
    *,
    client_ca: str | Path | None = None,
    require_client_certificate: bool = False,
) -> ssl.SSLContext:
    """A server SSLContext: TLS 1.2+, ALPN ``"postgresql"``, and client
    certificates checked against ``client_ca`` when given (required with
    ``require_client_certificate``, as for pg_hba's ``cert`` method)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certfile), None if keyfile is None else str(keyfile))
    context.set_alpn_protocols([ALPN_POSTGRESQL])
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    elif require_client_certificate:
        raise ValueError("require_client_certificate needs client_ca to check them against")
    return context

"""The server side of the protocol: clients send requests, you answer."""

from __future__ import annotations

from collections.abc import Collection
from typing import ClassVar, Final

from ._codec import Reader, unpack_int32
from ._connection import DEFAULT_MAX_MESSAGE_SIZE, Connection
from ._errors import (
    SQLSTATE_INVALID_AUTHORIZATION_SPECIFICATION,
    LocalProtocolError,
    RemoteProtocolError,
)
from ._events import ConnectionClosed, DirectTLSHandshake, NeedData
from ._framing import RawMessage
from ._messages import (
    BACKEND_TYPED_CLASSES,
    CANCEL_REQUEST_CODE,
    FRONTEND_MESSAGES,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET_LENGTH,
    PROTOCOL_3_2,
    SSL_REQUEST_CODE,
    CancelRequest,
    Decoder,
    ErrorResponse,
    GSSENCRequest,
    GSSENCResponse,
    GSSResponse,
    Message,
    NegotiateProtocolVersion,
    ParameterStatus,
    PasswordMessage,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    SSLResponse,
    StartupMessage,
)
from ._states import Phase, Violation

__all__ = ["Backend", "BackendEvent"]

# PostgreSQL reads these with PQ_SMALL_MESSAGE_LIMIT (10,000 bytes with the
# length word) and password packets with PG_MAX_AUTH_TOKEN_LENGTH (65,535).
_SMALL_LIMIT: Final = 10000 - 4
_LIMITS: Final = {b"S": _SMALL_LIMIT, b"H": _SMALL_LIMIT, b"c": _SMALL_LIMIT,
                  b"f": _SMALL_LIMIT, b"X": _SMALL_LIMIT, b"p": 65535 - 4}
_KNOWN_TYPES: Final = frozenset(b"QPBDECSHFXdcfp")
_PASSWORD_DECODERS: Final[dict[str, Decoder]] = {
    "PasswordMessage": PasswordMessage._decode,
    "SASLInitialResponse": SASLInitialResponse._decode,
    "SASLResponse": SASLResponse._decode,
    "GSSResponse": GSSResponse._decode,
}
#: The newest protocol version this library speaks.
LATEST_MINOR: Final = PROTOCOL_3_2 & 0xFFFF

BackendEvent = Message | RawMessage | DirectTLSHandshake | ConnectionClosed | type[NeedData]


class Backend(Connection):
    """A sans-IO PostgreSQL server connection (you are the server).

    Feed bytes from the client with :meth:`receive_data`, take events with
    :meth:`next_event`, answer with :meth:`send`. The backend checks the
    client's messages the way PostgreSQL does (length limits, message order,
    the 'p' message's meaning from the authentication request it answers)
    and checks your answers too: a ReadyForQuery nobody asked for, or a
    DataRow outside a query, raises :class:`~pgwire.LocalProtocolError`.

    ``max_startup_size`` caps the startup packet (PostgreSQL: 10,000 bytes).
    """

    _DECODERS: ClassVar[dict[bytes, Decoder]] = FRONTEND_MESSAGES
    _PEER: ClassVar[str] = "client"

    __slots__ = ("_negotiation", "max_startup_size", "startup")

    def __init__(
        self,
        *,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        decode: Collection[bytes] | None = None,
        max_startup_size: int = MAX_STARTUP_PACKET_LENGTH,
    ) -> None:
        super().__init__(max_message_size=max_message_size, decode=decode, limits=_LIMITS)
        self.max_startup_size = max_startup_size
        #: The client's StartupMessage, once received.
        self.startup: StartupMessage | None = None
        self._negotiation: NegotiateProtocolVersion | None = None

    @property
    def protocol_negotiation(self) -> NegotiateProtocolVersion | None:
        """The NegotiateProtocolVersion the client must get before anything else.

        Set when the StartupMessage asked for a newer minor version than 3.2
        or carried ``_pq_.`` options (none are supported); send it first.
        """
        return self._negotiation

    # -- receiving -------------------------------------------------------------------

    def next_event(self) -> BackendEvent:
        """The next event from the client: a message (decoded, or a
        :class:`~pgwire.RawMessage` for types not in ``decode``),
        :class:`~pgwire.DirectTLSHandshake`, :data:`~pgwire.NEED_DATA`, or
        :class:`~pgwire.ConnectionClosed`."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except (RemoteProtocolError, Violation) as exc:
            raise self._remote(exc) from None

    def _next_event(self) -> BackendEvent:
        conversation = self._conversation
        phase = conversation.phase
        buffer = self._buffer
        if phase is Phase.STARTUP:
            return self._startup_packet()
        if phase in (Phase.CANCEL, Phase.CLOSED, Phase.SSL_NEGOTIATION, Phase.GSSENC_NEGOTIATION):
            if len(buffer):
                if phase is Phase.SSL_NEGOTIATION or phase is Phase.GSSENC_NEGOTIATION:
                    raise RemoteProtocolError("received unencrypted data after SSL request")
                after = "a CancelRequest" if phase is Phase.CANCEL else "the connection closed"
                raise RemoteProtocolError(f"client sent data after {after}")
            return self._end_of_stream()
        code_int = buffer.peek_byte()
        if code_int is None:
            return self._end_of_stream()
        if code_int not in _KNOWN_TYPES:
            raise RemoteProtocolError(f"invalid frontend message type {code_int}")
        expected_password = conversation.expected_password_message
        frame = buffer.next_frame()
        if frame is None:
            return self._end_of_stream()
        code = frame.type_code
        conversation.frontend_message(code_int)
        if code == b"p":
            assert expected_password is not None
            reader = Reader(frame._buf, frame._start, frame._end, self.encoding)
            message = _PASSWORD_DECODERS[expected_password](reader)
            reader.finish()
            return message
        if self._wants_decoded(code):
            return self._decode_frame(code, frame._buf, frame._start, frame._end)
        return frame

    def _startup_packet(self) -> BackendEvent:
        conversation = self._conversation
        buffer = self._buffer
        first = buffer.peek_byte()
        if first is None:
            return self._end_of_stream()
        if first == 0x16:  # a TLS record: ClientHello of a direct TLS connection
            conversation.frontend_packet("DirectTLS")
            return DirectTLSHandshake(data=buffer.take_all())
        packet = buffer.next_untyped(self.max_startup_size)
        if packet is None:
            return self._end_of_stream()
        buf, start, end = packet
        code = unpack_int32(buf, start)[0]
        if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
            if end - start != 4:
                raise RemoteProtocolError("invalid length of encryption request packet")
            name = "SSLRequest" if code == SSL_REQUEST_CODE else "GSSENCRequest"
            conversation.frontend_packet(name)
            if len(buffer):
                # CVE-2021-23214: anything sent before our answer is unencrypted and
                # could have been injected by a man in the middle.
                raise RemoteProtocolError("received unencrypted data after SSL request")
            return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
        if code == CANCEL_REQUEST_CODE:
            reader = Reader(buf, start, end, "utf-8")
            cancel = CancelRequest._decode(reader)
            conversation.frontend_packet("CancelRequest")
            return cancel
        reader = Reader(buf, start, end, self.encoding)
        startup = StartupMessage._decode(reader)
        reader.finish()
        options = tuple(k for k, _ in startup.parameters if k.startswith("_pq_."))
        conversation.frontend_packet("StartupMessage", startup.protocol_version, options)
        if not startup.get("user"):
            raise RemoteProtocolError(
                "no PostgreSQL user name specified in startup packet",
                SQLSTATE_INVALID_AUTHORIZATION_SPECIFICATION,
            )
        encoding = startup.get("client_encoding")
        if encoding:
            self._set_client_encoding(encoding)
        if startup.minor_version > LATEST_MINOR or options:
            self._negotiation = NegotiateProtocolVersion(
                newest_minor_version=min(startup.minor_version, LATEST_MINOR),
                unrecognized_options=options,
            )
        self.startup = startup
        return startup

    # -- sending ---------------------------------------------------------------------

    def send(self, message: Message | RawMessage) -> bytes:
        """The bytes to write for ``message``, after checking it is allowed now.

        Accepts any backend message, or a :class:`~pgwire.RawMessage`
        received from a server (a proxy forwarding it). Raises
        :class:`~pgwire.LocalProtocolError` — changing nothing — when the
        message is a client message, cannot be encoded, or is out of order.

        Answering SSLRequest/GSSENCRequest raises
        :class:`~pgwire.RemoteProtocolError` if the client already sent more
        bytes (CVE-2021-23214): close the connection.
        """
        conversation = self._conversation
        if type(message) is RawMessage and self._negotiation is None:
            # A proxy's data path: a frame from the server, forwarded as it is.
            data = bytes(message)
            code = data[0]
            try:
                conversation.backend_message(code, data, 5, len(data))
            except Violation as exc:
                raise LocalProtocolError(exc.message, exc.sqlstate) from None
            if code == 0x53:  # 'S'
                self._parameter_status(data)
            return data
        try:
            if isinstance(message, (SSLResponse, GSSENCResponse)):
                conversation.negotiation_answer(type(message).__name__, message.accepted)
                if len(self._buffer):
                    raise self._remote(
                        RemoteProtocolError("received unencrypted data after SSL request")
                    )
                return message.encode()
            if isinstance(message, RawMessage):
                data = bytes(message)
            else:
                if type(message) not in BACKEND_TYPED_CLASSES:
                    raise LocalProtocolError(
                        f"{type(message).__name__} is a client message; a Backend cannot send it"
                    )
                data = message.encode(self.encoding)
            if self._negotiation is not None and data[:1] not in (b"v", b"E"):
                raise LocalProtocolError(
                    "send backend.protocol_negotiation (NegotiateProtocolVersion) first: the "
                    "client asked for a protocol version or options this server lacks"
                )
            conversation.backend_message(data[0], data, 5, len(data))
            if data[:1] == b"v":
                self._negotiation = None
            elif data[:1] == b"S":
                self._parameter_status(data)
            return data
        except Violation as exc:
            raise LocalProtocolError(exc.message, exc.sqlstate) from None


    def _parameter_status(self, data: bytes) -> None:
        status = ParameterStatus.decode(data[5:], self.encoding)
        if status.name == "client_encoding":
            self._set_client_encoding(status.value)


def error_response(error: RemoteProtocolError | LocalProtocolError,
                   severity: str = "FATAL") -> ErrorResponse:
    """An ErrorResponse reporting a protocol error to the peer."""
    return ErrorResponse(
        severity=severity,
        severity_nonlocalized=severity,
        code=error.sqlstate,
        message=error.message,
    )

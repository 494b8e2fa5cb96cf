"""What Frontend and Backend share: buffering, error latching, raw decoding."""

from __future__ import annotations

from collections.abc import Collection
from typing import ClassVar, Final

from .._interning import shared
from ._codec import MAX_PROTOCOL_MESSAGE_LENGTH, Reader, python_encoding
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._events import NEED_DATA, ConnectionClosed, NeedData
from ._framing import RawMessage, ReceiveBuffer
from ._messages import Decoder, Message
from ._states import Conversation, Phase, Violation

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "Connection"]

#: Default cap on a message body: 64 MiB. PostgreSQL's own ceiling is 1 GiB
#: (0x3fffffff), which lets one connection pin a gigabyte of a proxy's memory.
DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024



class Connection:
    """Shared machinery of :class:`~pgwire.Frontend` and :class:`~pgwire.Backend`.

    ``max_message_size`` caps the body of any message received (``None``: the
    protocol's own 1 GiB ceiling). ``decode`` is the set of type bytes to
    deliver as decoded messages; every other message comes as a
    :class:`~pgwire.RawMessage` that can be forwarded untouched or decoded
    later with :meth:`decode`. ``None`` (the default) decodes everything.
    """

    _DECODERS: ClassVar[dict[bytes, Decoder]] = {}
    _PEER: ClassVar[str] = "peer"

    __slots__ = ("_buffer", "_conversation", "_decode_all", "_decode_set", "_eof", "_error",
                 "encoding", "server_encoding_name")

    def __init__(
        self,
        *,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        decode: Collection[bytes] | None = None,
        limits: dict[bytes, int] | None = None,
    ) -> None:
        size = MAX_PROTOCOL_MESSAGE_LENGTH - 4 if max_message_size is None else max_message_size
        self._buffer = ReceiveBuffer(size, limits)
        self._conversation = Conversation()
        self._decode_all = decode is None
        codes = frozenset(decode or ())
        for code in codes:
            if not isinstance(code, bytes) or len(code) != 1:
                raise ValueError(f"decode takes one-byte type codes such as b'D', not {code!r}")
        self._decode_set = shared(codes)
        self._error: RemoteProtocolError | None = None
        self._eof = False
        #: Python codec of the session's client_encoding (from ParameterStatus).
        self.encoding = "utf-8"
        self.server_encoding_name = "UTF8"

    # -- public state ----------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """Where the connection is: startup, authentication, ready, COPY, closed…"""
        return self._conversation.phase

    @property
    def transaction_status(self) -> str:
        """'I' idle, 'T' in a transaction block, 'E' in a failed one (from ReadyForQuery)."""
        return self._conversation.transaction_status

    @property
    def protocol_version(self) -> int:
        """The protocol version in force: requested, or as negotiated down."""
        return self._conversation.protocol_version

    @property
    def pending_syncs(self) -> int:
        """ReadyForQuery messages the server still owes (one per Query, Sync, FunctionCall)."""
        return self._conversation.pending_syncs

    @property
    def busy(self) -> bool:
        """True while requests are in flight."""
        return self._conversation.busy

    @property
    def buffered(self) -> int:
        """Received bytes not yet returned as events."""
        return len(self._buffer)

    # -- input -----------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the peer; ``b""`` means the peer closed.

        Raises :class:`LocalProtocolError` if called after end of stream.
        """
        if self._eof:
            raise LocalProtocolError("receive_data() called after end of stream (b'')")
        if not data:
            self._eof = True
        else:
            self._buffer.feed(data)

    def _remote(self, exc: ProtocolError | Violation) -> RemoteProtocolError:
        error = exc if isinstance(exc, RemoteProtocolError) else RemoteProtocolError(
            exc.message, exc.sqlstate
        )
        self._error = error
        return error

    def _set_client_encoding(self, name: str) -> None:
        self.server_encoding_name = name
        self.encoding = python_encoding(name)

    def _end_of_stream(self) -> ConnectionClosed | type[NeedData]:
        """NEED_DATA, or ConnectionClosed once the peer closed at a message boundary."""
        if not self._eof:
            return NEED_DATA
        if len(self._buffer):
            raise RemoteProtocolError(
                f"{self._PEER} closed the connection in the middle of a message "
                f"({len(self._buffer)} bytes of it received)"
            )
        self._conversation.end_of_stream()
        return ConnectionClosed()

    # -- decoding ----------------------------------------------------------------

    def decode(self, raw: RawMessage) -> Message:
        """Decode a :class:`RawMessage` this connection returned earlier."""
        return self._decode_frame(raw.type_code, raw._buf, raw._start, raw._end)

    def _decode_frame(self, code: bytes, buf: bytes, start: int, end: int) -> Message:
        decoder = self._DECODERS.get(code)
        if decoder is None:
            raise RemoteProtocolError(f"invalid message type {code!r}")
        reader = Reader(buf, start, end, self.encoding)
        message = decoder(reader)
        reader.finish()
        return message

    def _wants_decoded(self, code: bytes) -> bool:
        return self._decode_all or code in self._decode_set

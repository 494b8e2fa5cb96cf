"""The client side of the protocol: you send requests, the server answers."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from sys import intern
from typing import ClassVar, Final

from ._connection import DEFAULT_MAX_MESSAGE_SIZE, Connection
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import ConnectionClosed, NeedData
from ._framing import RawMessage
from ._messages import (
    BACKEND_MESSAGES,
    FRONTEND_TYPED_CLASSES,
    BackendKeyData,
    CancelRequest,
    DataRow,
    Decoder,
    GSSENCRequest,
    GSSENCResponse,
    Message,
    ParameterStatus,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    decode_data_row,
)
from ._states import Phase, Violation

__all__ = ["Frontend", "FrontendEvent"]

# libpq treats a length over 30,000 bytes on any other type as a lost sync
# (VALID_LONG_MESSAGE_TYPE in fe-protocol3.c); we refuse it the same way, except
# ParameterDescription: PostgreSQL sends one of 40 KB for a statement with
# 10,000 parameters, and a proxy must pass it.
_LONG_TYPES: Final = b"DTdVENAt"
_SHORT_LIMIT: Final = 30000 - 4
_FRONTEND_TYPED: Final = frozenset(b"QPBDECSHFXdcfp")
_READY: Final = Phase.READY
_ROW_BATCH: Final = 1024
# Built once: every Frontend's ReceiveBuffer is given the same caps.
_LIMITS: Final = {bytes([c]): _SHORT_LIMIT for c in range(256) if c not in _LONG_TYPES}
#: ``_rows`` while no decoded batch is pending: shared by every Frontend (an
#: empty deque costs 760 bytes), and ``maxlen=0`` drops anything added to it.
_NO_ROWS: Final[deque[DataRow]] = deque(maxlen=0)

FrontendEvent = Message | RawMessage | ConnectionClosed | type[NeedData]


class Frontend(Connection):
    """A sans-IO PostgreSQL client connection (you are the client).

    Feed bytes from the server with :meth:`receive_data`, take events with
    :meth:`next_event`, and turn messages into bytes with :meth:`send`. The
    frontend enforces the protocol's order for both sides: sending something
    the protocol does not allow now raises :class:`~pgwire.LocalProtocolError`
    before any byte is produced; a server breaking the protocol raises
    :class:`~pgwire.RemoteProtocolError`, and every later ``next_event()``
    raises it again.
    """

    _DECODERS: ClassVar[dict[bytes, Decoder]] = BACKEND_MESSAGES
    _PEER: ClassVar[str] = "server"

    __slots__ = ("_decode_rows", "_rows", "backend_key", "parameters")

    def __init__(
        self,
        *,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        decode: Collection[bytes] | None = None,
    ) -> None:
        super().__init__(max_message_size=max_message_size, decode=decode, limits=_LIMITS)
        #: Server parameters reported with ParameterStatus (latest value of each).
        self.parameters: dict[str, str] = {}
        #: (process_id, secret_key) from BackendKeyData, once received.
        self.backend_key: tuple[int, bytes] | None = None
        # DataRows decoded in a batch and not yet returned (see _next_event).
        self._rows = _NO_ROWS
        self._decode_rows = self._wants_decoded(b"D")

    # -- sending -------------------------------------------------------------------

    def send(self, message: Message | RawMessage) -> bytes:
        """The bytes to write for ``message``, after checking it is allowed now.

        Accepts any frontend message, or a :class:`~pgwire.RawMessage` received
        from a client (a proxy forwarding it). Raises
        :class:`~pgwire.LocalProtocolError` — and changes nothing — if the
        message is a server message, cannot be encoded, or is out of order.
        """
        conversation = self._conversation
        try:
            if isinstance(message, RawMessage):
                code = message.type_code[0]
                if code not in _FRONTEND_TYPED:
                    raise LocalProtocolError(f"{message!r} is not a frontend message")
                conversation.frontend_message(code)
                return bytes(message)
            if isinstance(message, (SSLRequest, GSSENCRequest, CancelRequest)):
                data = message.encode()
                conversation.frontend_packet(type(message).__name__)
                return data
            if isinstance(message, StartupMessage):
                data = message.encode(self.encoding)
                options = tuple(k for k, _ in message.parameters if k.startswith("_pq_."))
                conversation.frontend_packet(
                    "StartupMessage", message.protocol_version, options
                )
                return data
            if type(message) not in FRONTEND_TYPED_CLASSES:
                raise LocalProtocolError(
                    f"{type(message).__name__} is a server message; a Frontend cannot send it"
                )
            data = message.encode(self.encoding)
            conversation.frontend_message(data[0], type(message).__name__)
            return data
        except Violation as exc:
            raise LocalProtocolError(exc.message, exc.sqlstate) from None

    # -- receiving -------------------------------------------------------------------

    def next_event(self) -> FrontendEvent:
        """The next event from the server: a message (decoded, or a
        :class:`~pgwire.RawMessage` for types not in ``decode``),
        :data:`~pgwire.NEED_DATA`, or :class:`~pgwire.ConnectionClosed`."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except (RemoteProtocolError, Violation) as exc:
            raise self._remote(exc) from None

    def _next_event(self) -> FrontendEvent:
        conversation = self._conversation
        if self._rows:
            if conversation.phase is _READY and conversation.rows_allowed():
                return self._rows.popleft()
            self._rows.clear()  # what the per-message path would do with them:
            conversation.backend_message(0x44, b"", 0, 0)
        phase = conversation.phase
        buffer = self._buffer
        if phase is Phase.SSL_NEGOTIATION or phase is Phase.GSSENC_NEGOTIATION:
            return self._negotiation_answer(phase)
        if phase is Phase.STARTUP or phase is Phase.CANCEL:
            if len(buffer):
                raise RemoteProtocolError(
                    "server sent data before the client's startup packet"
                    if phase is Phase.STARTUP else "server sent data after a CancelRequest"
                )
            return self._end_of_stream()
        if self._decode_rows and conversation.phase is _READY and conversation.rows_allowed():
            # Result sets are the hot path: decode a whole run of rows in one
            # call and hand them out one by one (same events, fewer dispatches).
            batch = buffer.data_rows(conversation.row_columns, _ROW_BATCH)
            if batch:
                self._rows = rows = deque(batch)
                return rows.popleft()
        frame = buffer.next_frame()
        if frame is None:
            return self._end_of_stream()
        code = frame.type_code
        buf, start, end = frame._buf, frame._start, frame._end
        if code == b"D" and conversation.phase is _READY and conversation.rows_allowed():
            if self._decode_rows:
                # A row the batch decoder left: it spans chunks, or it is malformed.
                row = decode_data_row(buf, start, end)
                columns = conversation.row_columns
                if columns >= 0 and len(row.values) != columns:
                    raise RemoteProtocolError(
                        f"DataRow has {len(row.values)} columns but RowDescription "
                        f"announced {columns}"
                    )
                return row
            return frame
        conversation.backend_message(code[0], buf, start, end)
        if code == b"S":
            status = self._decode_frame(code, buf, start, end)
            assert isinstance(status, ParameterStatus)
            # Interned: a proxy's thousands of sessions mostly hold the same
            # dozen names and values.
            self.parameters[intern(status.name)] = intern(status.value)
            if status.name == "client_encoding":
                self._set_client_encoding(status.value)
            return status if self._wants_decoded(code) else frame
        if code == b"K":
            key = self._decode_frame(code, buf, start, end)
            assert isinstance(key, BackendKeyData)
            self.backend_key = (key.process_id, key.secret_key)
            return key if self._wants_decoded(code) else frame
        if self._decode_all or code in self._decode_set:
            return self._decode_frame(code, buf, start, end)
        return frame

    def _negotiation_answer(self, phase: Phase) -> FrontendEvent:
        answer = self._buffer.next_byte()
        if answer is None:
            return self._end_of_stream()
        if answer == b"E":
            raise RemoteProtocolError(
                "the server answered the encryption request with an error; its text is not "
                "shown because the server is not authenticated yet"
            )
        if phase is Phase.SSL_NEGOTIATION:
            if answer not in (b"S", b"N"):
                raise RemoteProtocolError(f"invalid response to SSL negotiation: {answer!r}")
            response: Message = SSLResponse(accepted=answer == b"S")
            self._conversation.negotiation_answer("SSLResponse", answer == b"S")
        else:
            if answer not in (b"G", b"N"):
                raise RemoteProtocolError(f"invalid response to GSSAPI negotiation: {answer!r}")
            response = GSSENCResponse(accepted=answer == b"G")
            self._conversation.negotiation_answer("GSSENCResponse", answer == b"G")
        if len(self._buffer):
            # CVE-2021-23222: bytes that arrived with the answer were not protected
            # by the encryption about to start; a man in the middle can inject them.
            raise RemoteProtocolError(
                "received unencrypted data after the server's answer to the encryption request"
            )
        return response

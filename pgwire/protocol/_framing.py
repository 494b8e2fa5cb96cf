"""Incremental framing: cut a byte stream into messages without copying.

:class:`ReceiveBuffer` accepts chunks of any size and hands back frames as
(type byte, buffer, start, end) so callers can decode in place or forward the
frame untouched. Feeding a stream one byte at a time yields exactly the
frames that feeding it whole does. Nothing is allocated in proportion to a
length word until that many bytes have actually arrived: a partial message is
kept as the list of chunks received so far and joined once, when complete.
"""

from __future__ import annotations

from typing import Final

from ._codec import HEADER, MAX_PROTOCOL_MESSAGE_LENGTH, unpack_int32
from ._errors import SQLSTATE_PROGRAM_LIMIT_EXCEEDED, RemoteProtocolError
from ._messages import DataRow, decode_data_rows

__all__ = ["RawMessage", "ReceiveBuffer"]

_EMPTY: Final = b""
_new = object.__new__
unpack_header = HEADER.unpack_from


class RawMessage:
    """A message that was framed but not decoded.

    ``type_code`` is the one-byte type; :attr:`body` and :attr:`frame` are
    zero-copy views of the received bytes, so a proxy can forward a frame
    without decoding it. Connections decode it on request
    (``connection.decode(raw)``).
    """

    __slots__ = ("_buf", "_end", "_start", "type_code")

    type_code: bytes

    def __init__(self, type_code: bytes, buf: bytes, start: int, end: int) -> None:
        self.type_code = type_code
        self._buf = buf
        self._start = start
        self._end = end

    @property
    def body(self) -> memoryview:
        """The message body (after the length word)."""
        return memoryview(self._buf)[self._start : self._end]

    @property
    def frame(self) -> memoryview:
        """The whole message: type byte, length word and body."""
        return memoryview(self._buf)[self._start - 5 : self._end]

    def __bytes__(self) -> bytes:
        return self._buf[self._start - 5 : self._end]

    def __len__(self) -> int:
        return self._end - self._start + 5

    def __repr__(self) -> str:
        return f"RawMessage(type_code={self.type_code!r}, body_length={self._end - self._start})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RawMessage):
            return NotImplemented
        return bytes(self) == bytes(other)

    def __hash__(self) -> int:
        return hash(bytes(self))


#: Per-type caps as lowered by a max_message_size (see _lowered), by the id of
#: the caller's table and that size: (a copy of the table, caps, unchecked length).
_LOWERED: dict[tuple[int, int], tuple[dict[bytes, int], dict[bytes, int], int]] = {}
#: Callers pass a few constant tables; the cache stays this small whatever they do.
_MAX_LOWERED: Final = 32
_NO_LIMITS: Final[dict[bytes, int]] = {}


def _lowered(limits: dict[bytes, int], max_message_size: int) -> tuple[dict[bytes, int], int]:
    """The caps a buffer applies, and the length words that need no check at all.

    A per-type cap only ever lowers the general one. Buffers built from an
    equal table and size share one read-only result: a Frontend's table has
    248 entries (9 KB), and a proxy makes a Frontend for every session. The
    caller's table is compared with a copy, so changing it later is noticed.
    """
    key = (id(limits), max_message_size)
    found = _LOWERED.get(key)
    if found is not None and found[0] == limits:
        return found[1], found[2]
    caps = {code: min(limit, max_message_size) for code, limit in limits.items()}
    unchecked = min([max_message_size, *caps.values()]) + 4
    if found is not None or len(_LOWERED) < _MAX_LOWERED:
        _LOWERED[key] = (dict(limits), caps, unchecked)
    return caps, unchecked


class ReceiveBuffer:
    """Bytes received from a peer and not yet consumed.

    ``max_message_size`` caps the body of any typed message; ``limits``
    lowers the cap for particular type bytes (as PostgreSQL caps Sync,
    Terminate and friends at 10,000 bytes).
    """

    __slots__ = (
        "_chunks",
        "_chunks_size",
        "_data",
        "_limits",
        "_pos",
        "_unchecked_length",
        "max_message_size",
    )

    def __init__(
        self,
        max_message_size: int = MAX_PROTOCOL_MESSAGE_LENGTH - 4,
        limits: dict[bytes, int] | None = None,
    ) -> None:
        self._data = _EMPTY
        self._pos = 0
        self._chunks: list[bytes] = []
        self._chunks_size = 0
        if max_message_size < 0:
            raise ValueError("max_message_size must not be negative")
        self.max_message_size = max_message_size
        self._limits, self._unchecked_length = _lowered(limits or _NO_LIMITS, max_message_size)

    def __len__(self) -> int:
        return len(self._data) - self._pos + self._chunks_size

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (copied only if mutable)."""
        if not data:
            return
        chunk = data if type(data) is bytes else bytes(data)
        if self._pos >= len(self._data) and not self._chunks:
            self._data = chunk
            self._pos = 0
        else:
            self._chunks.append(chunk)
            self._chunks_size += len(chunk)

    def _ensure(self, size: int) -> bool:
        """Make ``size`` bytes contiguous at ``_pos`` if that many have arrived."""
        if len(self._data) - self._pos >= size:
            return True
        if len(self._data) - self._pos + self._chunks_size < size:
            return False
        self._chunks.insert(0, self._data[self._pos :])
        self._data = _EMPTY.join(self._chunks)
        self._pos = 0
        self._chunks.clear()
        self._chunks_size = 0
        return True

    def peek_byte(self) -> int | None:
        """The next unread byte, or None if nothing is buffered."""
        if not self._ensure(1):
            return None
        return self._data[self._pos]

    def next_frame(self) -> RawMessage | None:
        """The next complete typed message, or None until more bytes arrive.

        Raises :class:`RemoteProtocolError` as soon as a length word is
        invalid or over the limit, before waiting for the body.
        """
        data = self._data
        pos = self._pos
        if len(data) - pos >= 5:
            type_code, length = unpack_header(data, pos)
            end = pos + 1 + length
            if end <= len(data) and 4 <= length <= self._unchecked_length:
                self._pos = end
                # RawMessage(...) without the call to __init__: 30 % cheaper.
                frame = _new(RawMessage)
                frame.type_code = type_code
                frame._buf = data
                frame._start = pos + 5
                frame._end = end
                return frame
        return self._next_frame_slow()

    def _next_frame_slow(self) -> RawMessage | None:
        if not self._ensure(5):
            return None
        type_code, length = unpack_header(self._data, self._pos)
        self._check_length(type_code, length)
        if not self._ensure(1 + length):
            return None
        pos = self._pos
        end = pos + 1 + length
        self._pos = end
        return RawMessage(type_code, self._data, pos + 5, end)

    def data_rows(self, columns: int, max_rows: int) -> list[DataRow]:
        """Consume and decode a run of complete, well-formed DataRow frames.

        Returns ``[]`` when the next frame is anything else (or incomplete or
        malformed): :meth:`next_frame` then takes it and reports errors.
        ``columns`` (``-1``: unknown) is the column count every row must have.
        """
        rows, self._pos = decode_data_rows(
            self._data, self._pos, len(self._data), self.max_message_size, columns, max_rows,
            DataRow,
        )
        return rows

    def _check_length(self, type_code: bytes, length: int) -> None:
        if length < 4:
            raise RemoteProtocolError(
                f"invalid message length {length} for message type {type_code!r}"
            )
        body = length - 4
        limit = self._limits.get(type_code, self.max_message_size)
        if body > limit:
            if limit < self.max_message_size:  # a protocol cap, not the configured size
                raise RemoteProtocolError(
                    f"invalid message length {length} for message type {type_code!r}"
                )
            raise RemoteProtocolError(
                f"message of type {type_code!r} with {body} bytes exceeds the maximum "
                f"message size of {limit} bytes",
                SQLSTATE_PROGRAM_LIMIT_EXCEEDED,
            )

    def next_untyped(self, max_body: int) -> tuple[bytes, int, int] | None:
        """The next length-prefixed packet without a type byte (startup phase).

        Returns ``(buffer, body_start, body_end)``. A length word below 8 or a
        body over ``max_body`` raises :class:`RemoteProtocolError` at once.
        """
        if not self._ensure(4):
            return None
        length = unpack_int32(self._data, self._pos)[0]
        if length < 8 or length - 4 > max_body:
            raise RemoteProtocolError(f"invalid length of startup packet: {length}")
        if not self._ensure(length):
            return None
        start = self._pos
        self._pos = start + length
        return self._data, start + 4, start + length

    def next_byte(self) -> bytes | None:
        """Consume one unframed byte (the answer to SSLRequest/GSSENCRequest)."""
        if not self._ensure(1):
            return None
        pos = self._pos
        self._pos = pos + 1
        return self._data[pos : pos + 1]

    def take_all(self) -> bytes:
        """Remove and return everything buffered (e.g. to hand it to a TLS layer)."""
        self._ensure(len(self))
        rest = self._data[self._pos :]
        self._data = _EMPTY
        self._pos = 0
        return rest

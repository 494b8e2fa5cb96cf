"""Low-level readers and writers for the wire format, and encoding names.

Everything here raises :class:`RemoteProtocolError` on malformed input (the
bytes came from a peer) and :class:`LocalProtocolError` on values that cannot
be encoded (the caller built them). Error texts follow PostgreSQL's own
(``pqformat.c``) so logs read the same whichever side reported them.
"""

from __future__ import annotations

import struct
from typing import Final

from ._errors import (
    SQLSTATE_CHARACTER_NOT_IN_REPERTOIRE,
    SQLSTATE_INVALID_PARAMETER_VALUE,
    LocalProtocolError,
    RemoteProtocolError,
)

INT16: Final = struct.Struct("!h")
UINT16: Final = struct.Struct("!H")
INT32: Final = struct.Struct("!i")
UINT32: Final = struct.Struct("!I")
INT64: Final = struct.Struct("!q")
UINT64: Final = struct.Struct("!Q")
HEADER: Final = struct.Struct("!ci")

unpack_int16 = INT16.unpack_from
unpack_uint16 = UINT16.unpack_from
unpack_int32 = INT32.unpack_from
unpack_uint32 = UINT32.unpack_from
unpack_int64 = INT64.unpack_from
unpack_uint64 = UINT64.unpack_from


def insufficient_data() -> RemoteProtocolError:
    return RemoteProtocolError("insufficient data left in message")


def invalid_format(detail: str = "") -> RemoteProtocolError:
    text = "invalid message format"
    return RemoteProtocolError(f"{text}: {detail}" if detail else text)


class Reader:
    """A cursor over one message body ``buf[start:end]``.

    Each ``read_*`` method checks bounds first, so a truncated body raises
    :class:`RemoteProtocolError` and never ``IndexError`` or ``struct.error``.
    """

    __slots__ = ("buf", "encoding", "end", "pos")

    def __init__(self, buf: bytes, start: int, end: int, encoding: str) -> None:
        self.buf = buf
        self.pos = start
        self.end = end
        self.encoding = encoding

    def _need(self, size: int) -> int:
        pos = self.pos
        if pos + size > self.end:
            raise insufficient_data()
        self.pos = pos + size
        return pos

    def byte(self) -> int:
        return self.buf[self._need(1)]

    def int16(self) -> int:
        result: int = unpack_int16(self.buf, self._need(2))[0]
        return result

    def uint16(self) -> int:
        result: int = unpack_uint16(self.buf, self._need(2))[0]
        return result

    def int32(self) -> int:
        result: int = unpack_int32(self.buf, self._need(4))[0]
        return result

    def uint32(self) -> int:
        result: int = unpack_uint32(self.buf, self._need(4))[0]
        return result

    def int64(self) -> int:
        result: int = unpack_int64(self.buf, self._need(8))[0]
        return result

    def uint64(self) -> int:
        result: int = unpack_uint64(self.buf, self._need(8))[0]
        return result

    def count(self) -> int:
        """An Int16 element count; PostgreSQL reads these as unsigned."""
        return self.uint16()

    def raw(self, size: int) -> bytes:
        if size < 0:
            raise invalid_format(f"negative length {size}")
        pos = self._need(size)
        return bytes(self.buf[pos : pos + size])

    def rest(self) -> bytes:
        pos, self.pos = self.pos, self.end
        return bytes(self.buf[pos : self.end])

    def cstring_bytes(self) -> bytes:
        nul = self.buf.find(b"\0", self.pos, self.end)
        if nul < 0:
            raise RemoteProtocolError("invalid string in message")
        value = bytes(self.buf[self.pos : nul])
        self.pos = nul + 1
        return value

    def cstring(self) -> str:
        return decode_text(self.cstring_bytes(), self.encoding)

    def nullable(self) -> bytes | None:
        """An Int32 length (-1 for NULL) followed by that many bytes."""
        size = self.int32()
        if size == -1:
            return None
        if size < -1:
            raise RemoteProtocolError(f"invalid argument length {size} in message")
        return self.raw(size)

    def finish(self) -> None:
        if self.pos != self.end:
            raise invalid_format(f"{self.end - self.pos} unexpected trailing bytes")

    @property
    def remaining(self) -> int:
        return self.end - self.pos


def decode_text(data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 4].hex(" ")
        raise RemoteProtocolError(
            f"invalid byte sequence for encoding {encoding!r}: 0x{bad}",
            SQLSTATE_CHARACTER_NOT_IN_REPERTOIRE,
        ) from None


def encode_cstring(value: str, encoding: str) -> bytes:
    """Encode a NUL-terminated string, refusing embedded NULs (they would
    silently truncate the field and desynchronise the peer's parser)."""
    if "\0" in value:
        raise LocalProtocolError(
            f"string {value[:40]!r} contains a NUL character, which the protocol cannot carry",
            SQLSTATE_INVALID_PARAMETER_VALUE,
        )
    try:
        return value.encode(encoding) + b"\0"
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(
            f"character {value[exc.start : exc.end]!r} has no equivalent in encoding {encoding!r}",
            SQLSTATE_CHARACTER_NOT_IN_REPERTOIRE,
        ) from None


def encode_cbytes(value: bytes) -> bytes:
    if b"\0" in value:
        raise LocalProtocolError(
            "value contains a NUL byte, which a protocol string cannot carry",
            SQLSTATE_INVALID_PARAMETER_VALUE,
        )
    return value + b"\0"


def pack_checked(packer: struct.Struct, what: str, *values: int) -> bytes:
    try:
        return packer.pack(*values)
    except struct.error:
        raise LocalProtocolError(
            f"{what} {values!r} does not fit the protocol's field size",
            SQLSTATE_INVALID_PARAMETER_VALUE,
        ) from None


def frame(type_code: bytes, body: bytes) -> bytes:
    """Prefix a body with its type byte and length word."""
    size = len(body) + 4
    if size > MAX_PROTOCOL_MESSAGE_LENGTH:
        raise LocalProtocolError(
            f"message of {size} bytes exceeds the protocol maximum of "
            f"{MAX_PROTOCOL_MESSAGE_LENGTH}",
            "54000",
        )
    return type_code + INT32.pack(size) + body


#: PostgreSQL refuses any message whose length word exceeds this (PQ_LARGE_MESSAGE_LIMIT).
MAX_PROTOCOL_MESSAGE_LENGTH: Final = 0x3FFFFFFF

# PostgreSQL encoding names (as reported in the client_encoding ParameterStatus)
# mapped to Python codecs. SQL_ASCII and unknown names map to latin-1, which is
# lossless byte-for-byte, so a proxy never corrupts what it re-encodes.
_ENCODINGS: Final[dict[str, str]] = {
    "UTF8": "utf-8",
    "UNICODE": "utf-8",
    "SQL_ASCII": "latin-1",
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5",
    "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "EUC_JP": "euc_jp",
    "EUC_KR": "euc_kr",
    "EUC_CN": "gb2312",
    "EUC_JIS_2004": "euc_jis_2004",
    "SJIS": "shift_jis",
    "SHIFT_JIS_2004": "shift_jis_2004",
    "BIG5": "big5",
    "GBK": "gbk",
    "GB18030": "gb18030",
    "UHC": "cp949",
    "JOHAB": "johab",
}


def python_encoding(pg_encoding: str) -> str:
    """The Python codec for a PostgreSQL encoding name (``client_encoding``).

    Names are matched case-insensitively, ignoring ``-`` and ``_`` as
    PostgreSQL does; unknown names give ``latin-1`` (lossless for bytes).
    """
    key = pg_encoding.upper().replace("-", "").replace("_", "")
    for name, codec in _ENCODINGS.items():
        if name.replace("_", "") == key:
            return codec
    return "latin-1"

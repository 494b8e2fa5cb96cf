"""Every message of the PostgreSQL frontend/backend protocol 3.0 and 3.2.

One frozen, slotted, keyword-only dataclass per message, named and with field
names as in the PostgreSQL documentation ("Message Formats"). Each has
``encode(encoding="utf-8") -> bytes`` (the whole frame, type byte and length
included) and ``decode(body, encoding="utf-8")`` (the body only, after the
length word). Decoding is strict: truncation, a missing string terminator,
trailing bytes, negative counts or lengths below -1 raise
:class:`~pgwire.RemoteProtocolError` with PostgreSQL's SQLSTATE.

The same type byte means different messages in each direction ('C', 'D',
'E', 'H', 'S'), so the decoder tables are per direction:
:data:`FRONTEND_MESSAGES` (sent by clients) and :data:`BACKEND_MESSAGES`
(sent by servers). 'p' is absent from both: whether it is a PasswordMessage,
a SASLInitialResponse, a SASLResponse or a GSSResponse depends on the
authentication request it answers, which only a connection knows.
"""

from __future__ import annotations

import enum
import os
import struct as _struct
from collections import deque as _deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import repeat as _repeat
from typing import ClassVar, Final, Literal, Self, TypeVar, dataclass_transform

from ._codec import (
    INT16,
    INT32,
    UINT16,
    Reader,
    decode_text,
    encode_cbytes,
    encode_cstring,
    frame,
    insufficient_data,
    invalid_format,
    pack_checked,
    unpack_int32,
)
from ._codec import (
    UINT32 as _UINT32,
)
from ._errors import (
    SQLSTATE_FEATURE_NOT_SUPPORTED,
    SQLSTATE_INVALID_PARAMETER_VALUE,
    LocalProtocolError,
    RemoteProtocolError,
)

__all__ = [
    "BACKEND_MESSAGES",
    "BACKEND_TYPED_CLASSES",
    "FRONTEND_MESSAGES",
    "FRONTEND_TYPED_CLASSES",
    "PROTOCOL_3_0",
    "PROTOCOL_3_2",
    "Authentication",
    "AuthenticationCleartextPassword",
    "AuthenticationGSS",
    "AuthenticationGSSContinue",
    "AuthenticationKerberosV5",
    "AuthenticationMD5Password",
    "AuthenticationOk",
    "AuthenticationSASL",
    "AuthenticationSASLContinue",
    "AuthenticationSASLFinal",
    "AuthenticationSSPI",
    "BackendKeyData",
    "Bind",
    "BindComplete",
    "CancelRequest",
    "Close",
    "CloseComplete",
    "CommandComplete",
    "CopyBothResponse",
    "CopyData",
    "CopyDone",
    "CopyFail",
    "CopyInResponse",
    "CopyOutResponse",
    "DataRow",
    "Describe",
    "EmptyQueryResponse",
    "ErrorResponse",
    "Execute",
    "FieldDescription",
    "Flush",
    "FunctionCall",
    "FunctionCallResponse",
    "GSSENCRequest",
    "GSSENCResponse",
    "GSSResponse",
    "Message",
    "NegotiateProtocolVersion",
    "NoData",
    "NoticeResponse",
    "NotificationResponse",
    "ParameterDescription",
    "ParameterStatus",
    "Parse",
    "ParseComplete",
    "PasswordMessage",
    "PortalSuspended",
    "Query",
    "ReadyForQuery",
    "RowDescription",
    "SASLInitialResponse",
    "SASLResponse",
    "SSLRequest",
    "SSLResponse",
    "StartupMessage",
    "Sync",
    "Terminate",
    "TransactionStatus",
]

#: Protocol version numbers as sent in StartupMessage (major << 16 | minor).
PROTOCOL_3_0: Final = 3 << 16
PROTOCOL_3_2: Final = (3 << 16) | 2
SSL_REQUEST_CODE: Final = (1234 << 16) | 5679
GSSENC_REQUEST_CODE: Final = (1234 << 16) | 5680
CANCEL_REQUEST_CODE: Final = (1234 << 16) | 5678
#: Largest startup packet PostgreSQL reads (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET_LENGTH: Final = 10000
#: Cancel keys: exactly 4 bytes on 3.0; 4..256 bytes on 3.2.
MAX_CANCEL_KEY_LENGTH: Final = 256

_M = TypeVar("_M", bound="Message")
_FIELD: Final = _struct.Struct("!IhIhih")
_BYTE: Final = _struct.Struct("!b")
_new = object.__new__
_set = object.__setattr__
_map = map
_consume = _deque
_NULL: Final = 0xFFFFFFFF  # a NULL value's length word, read unsigned
_ROW_HEAD: Final = _struct.Struct("!BiHI")  # type, length, column count, first length
_unpack_uint32 = _UINT32.unpack_from


class Message:
    """Base class of every protocol message.

    ``type_code`` is the one-byte message type (``b""`` for the untyped
    packets of the startup phase and for the single-byte SSL/GSS answers).
    """

    __slots__ = ()
    type_code: ClassVar[bytes] = b""

    def encode(self, encoding: str = "utf-8") -> bytes:
        """The complete frame for this message, ready to write to a socket.

        ``encoding`` is the Python codec of the connection's
        ``client_encoding``. Raises :class:`~pgwire.LocalProtocolError` if a
        field cannot be represented (a NUL inside a string, a count over
        65535, a number out of range).
        """
        return frame(self.type_code, self._encode_body(encoding))

    def _encode_body(self, encoding: str) -> bytes:
        return b""

    @classmethod
    def decode(cls: type[_M], body: bytes, encoding: str = "utf-8") -> _M:
        """Decode a message body (the bytes after the length word).

        Raises :class:`~pgwire.RemoteProtocolError` on any malformation.
        """
        buf = bytes(body)
        reader = Reader(buf, 0, len(buf), encoding)
        message = cls._decode(reader)
        reader.finish()
        return message

    @classmethod
    def _decode(cls: type[_M], reader: Reader) -> _M:
        return cls()


_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, kw_only_default=True)
def _message(cls: type[_T]) -> type[_T]:
    """Frozen, slotted, keyword-only dataclass."""
    return dataclass(frozen=True, slots=True, kw_only=True)(cls)


# ---------------------------------------------------------------------------
# Untyped packets of the startup phase (frontend -> backend)
# ---------------------------------------------------------------------------


@_message
class StartupMessage(Message):
    """The first packet of a session: protocol version and parameters.

    ``parameters`` keeps the pairs in wire order, duplicates included, because
    PostgreSQL lets the *last* duplicate win and a proxy that rewrites roles
    must see them all. :meth:`get` and :meth:`as_dict` apply that rule.
    """

    protocol_version: int = PROTOCOL_3_0
    parameters: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_dict(
        cls, parameters: Mapping[str, str], protocol_version: int = PROTOCOL_3_0
    ) -> StartupMessage:
        """Build a StartupMessage from a mapping (``{"user": ..., "database": ...}``)."""
        return cls(protocol_version=protocol_version, parameters=tuple(parameters.items()))

    @property
    def major_version(self) -> int:
        """The requested major protocol version (3)."""
        return self.protocol_version >> 16

    @property
    def minor_version(self) -> int:
        """The requested minor protocol version (0 or 2)."""
        return self.protocol_version & 0xFFFF

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value PostgreSQL would use for ``name``: the last one given."""
        for key, value in reversed(self.parameters):
            if key == name:
                return value
        return default

    def as_dict(self) -> dict[str, str]:
        """The parameters as PostgreSQL applies them (last duplicate wins)."""
        return dict(self.parameters)

    def encode(self, encoding: str = "utf-8") -> bytes:
        parts = [INT32.pack(0), pack_checked(INT32, "protocol version", self.protocol_version)]
        for key, value in self.parameters:
            if not key:
                raise LocalProtocolError(
                    "startup parameter names must not be empty (an empty name ends the list)",
                    SQLSTATE_INVALID_PARAMETER_VALUE,
                )
            parts.append(encode_cstring(key, encoding))
            parts.append(encode_cstring(value, encoding))
        parts.append(b"\0")
        packet = b"".join(parts)
        if len(packet) - 4 > MAX_STARTUP_PACKET_LENGTH:
            raise LocalProtocolError(
                f"startup packet body of {len(packet) - 4} bytes exceeds PostgreSQL's limit "
                f"of {MAX_STARTUP_PACKET_LENGTH}; send fewer or shorter parameters",
                "54000",
            )
        return INT32.pack(len(packet)) + packet[4:]

    @classmethod
    def _decode(cls, reader: Reader) -> StartupMessage:
        version = reader.int32()
        pairs: list[tuple[str, str]] = []
        while True:
            if reader.remaining == 0:
                raise RemoteProtocolError(
                    "invalid startup packet layout: expected terminator as last byte"
                )
            name = reader.cstring()
            if not name:
                break
            if reader.buf.find(b"\0", reader.pos, reader.end) < 0:
                raise RemoteProtocolError(
                    "invalid startup packet layout: expected terminator as last byte"
                )
            pairs.append((name, reader.cstring()))
        return cls(protocol_version=version, parameters=tuple(pairs))


@_message
class SSLRequest(Message):
    """Ask the server to switch to TLS; answered by a single byte (:class:`SSLResponse`)."""

    def encode(self, encoding: str = "utf-8") -> bytes:
        return INT32.pack(8) + INT32.pack(SSL_REQUEST_CODE)

    @classmethod
    def _decode(cls, reader: Reader) -> SSLRequest:
        if reader.int32() != SSL_REQUEST_CODE:
            raise invalid_format("not an SSLRequest")
        return cls()


@_message
class GSSENCRequest(Message):
    """Ask the server for GSSAPI encryption; answered by :class:`GSSENCResponse`."""

    def encode(self, encoding: str = "utf-8") -> bytes:
        return INT32.pack(8) + INT32.pack(GSSENC_REQUEST_CODE)

    @classmethod
    def _decode(cls, reader: Reader) -> GSSENCRequest:
        if reader.int32() != GSSENC_REQUEST_CODE:
            raise invalid_format("not a GSSENCRequest")
        return cls()


def _check_cancel_key(
    secret_key: bytes, error: type[LocalProtocolError | RemoteProtocolError]
) -> None:
    if not 4 <= len(secret_key) <= MAX_CANCEL_KEY_LENGTH:
        raise error(
            f"cancel key of {len(secret_key)} bytes: keys are 4 bytes on protocol 3.0 "
            f"and 4 to {MAX_CANCEL_KEY_LENGTH} bytes on 3.2"
        )


@_message
class CancelRequest(Message):
    """Sent on a new connection to cancel the query of ``process_id``.

    ``secret_key`` is 4 bytes on protocol 3.0 and 4..256 bytes on 3.2.
    """

    process_id: int
    secret_key: bytes

    def encode(self, encoding: str = "utf-8") -> bytes:
        _check_cancel_key(self.secret_key, LocalProtocolError)
        body = INT32.pack(CANCEL_REQUEST_CODE) + pack_checked(
            INT32, "process id", self.process_id
        ) + self.secret_key
        return INT32.pack(len(body) + 4) + body

    @classmethod
    def _decode(cls, reader: Reader) -> CancelRequest:
        if reader.int32() != CANCEL_REQUEST_CODE:
            raise invalid_format("not a CancelRequest")
        process_id = reader.int32()
        key = reader.rest()
        _check_cancel_key(key, RemoteProtocolError)
        return cls(process_id=process_id, secret_key=key)


# ---------------------------------------------------------------------------
# Single-byte answers (backend -> frontend)
# ---------------------------------------------------------------------------


@_message
class SSLResponse(Message):
    """The server's one-byte answer to SSLRequest: ``b"S"`` (accepted) or ``b"N"``."""

    accepted: bool

    def encode(self, encoding: str = "utf-8") -> bytes:
        return b"S" if self.accepted else b"N"

    @classmethod
    def _decode(cls, reader: Reader) -> SSLResponse:
        return cls(accepted=_answer_byte(reader, b"S", "SSL"))


@_message
class GSSENCResponse(Message):
    """The server's one-byte answer to GSSENCRequest: ``b"G"`` (accepted) or ``b"N"``."""

    accepted: bool

    def encode(self, encoding: str = "utf-8") -> bytes:
        return b"G" if self.accepted else b"N"

    @classmethod
    def _decode(cls, reader: Reader) -> GSSENCResponse:
        return cls(accepted=_answer_byte(reader, b"G", "GSSAPI"))


def _answer_byte(reader: Reader, yes: bytes, what: str) -> bool:
    """Decode the one-byte answer to an encryption request (``decode(b"S")``)."""
    answer = bytes([reader.byte()])
    if answer not in (yes, b"N"):
        raise RemoteProtocolError(f"invalid response to {what} negotiation: {answer!r}")
    return answer == yes


# ---------------------------------------------------------------------------
# Frontend typed messages
# ---------------------------------------------------------------------------


@_message
class Query(Message):
    """Simple query: one string that may hold several statements."""

    type_code: ClassVar[bytes] = b"Q"
    query: str

    def _encode_body(self, encoding: str) -> bytes:
        return encode_cstring(self.query, encoding)

    @classmethod
    def _decode(cls, reader: Reader) -> Query:
        return cls(query=reader.cstring())


def _encode_oids(values: Iterable[int], what: str) -> bytes:
    values = tuple(values)
    return pack_checked(UINT16, f"number of {what}", len(values)) + b"".join(
        pack_checked(INT32 if v < 0x80000000 else _UINT32, what, v) for v in values
    )


def _read_oid(reader: Reader) -> int:
    return reader.uint32()


@_message
class Parse(Message):
    """Create a prepared statement (``statement`` "" is the unnamed one)."""

    type_code: ClassVar[bytes] = b"P"
    statement: str = ""
    query: str
    parameter_types: tuple[int, ...] = ()

    def _encode_body(self, encoding: str) -> bytes:
        return (
            encode_cstring(self.statement, encoding)
            + encode_cstring(self.query, encoding)
            + _encode_oids(self.parameter_types, "parameter types")
        )

    @classmethod
    def _decode(cls, reader: Reader) -> Parse:
        statement = reader.cstring()
        query = reader.cstring()
        count = reader.count()
        types = tuple(_read_oid(reader) for _ in range(count))
        return cls(statement=statement, query=query, parameter_types=types)


def _encode_formats(formats: Iterable[int], what: str) -> bytes:
    formats = tuple(formats)
    return pack_checked(UINT16, f"number of {what}", len(formats)) + b"".join(
        pack_checked(INT16, what, f) for f in formats
    )


def _read_formats(reader: Reader) -> tuple[int, ...]:
    count = reader.count()
    if count * 2 > reader.remaining:
        raise insufficient_data()
    return tuple(reader.int16() for _ in range(count))


def _encode_values(values: Iterable[bytes | None], what: str) -> bytes:
    values = tuple(values)
    parts = [pack_checked(UINT16, f"number of {what}", len(values))]
    for value in values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(INT32.pack(len(value)))
            parts.append(value)
    return b"".join(parts)


def _read_values(reader: Reader) -> tuple[bytes | None, ...]:
    count = reader.count()
    if count * 4 > reader.remaining:
        raise insufficient_data()
    return tuple(reader.nullable() for _ in range(count))


@_message
class Bind(Message):
    """Bind parameters to a prepared statement, creating a portal."""

    type_code: ClassVar[bytes] = b"B"
    portal: str = ""
    statement: str = ""
    parameter_formats: tuple[int, ...] = ()
    parameters: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def _encode_body(self, encoding: str) -> bytes:
        return (
            encode_cstring(self.portal, encoding)
            + encode_cstring(self.statement, encoding)
            + _encode_formats(self.parameter_formats, "parameter format codes")
            + _encode_values(self.parameters, "parameter values")
            + _encode_formats(self.result_formats, "result format codes")
        )

    @classmethod
    def _decode(cls, reader: Reader) -> Bind:
        portal = reader.cstring()
        statement = reader.cstring()
        parameter_formats = _read_formats(reader)
        parameters = _read_values(reader)
        result_formats = _read_formats(reader)
        if len(parameter_formats) > 1 and len(parameter_formats) != len(parameters):
            raise RemoteProtocolError(
                f"bind message has {len(parameter_formats)} parameter formats but "
                f"{len(parameters)} parameters"
            )
        for code in (*parameter_formats, *result_formats):
            if code not in (0, 1):
                raise RemoteProtocolError(
                    f"unsupported format code: {code}", SQLSTATE_INVALID_PARAMETER_VALUE
                )
        return cls(
            portal=portal,
            statement=statement,
            parameter_formats=parameter_formats,
            parameters=parameters,
            result_formats=result_formats,
        )


def _check_kind(kind: str, what: str) -> None:
    if kind not in ("S", "P"):
        raise LocalProtocolError(
            f"{what} kind must be 'S' (statement) or 'P' (portal), not {kind!r}",
            SQLSTATE_INVALID_PARAMETER_VALUE,
        )


def _read_kind(reader: Reader, what: str) -> Literal["S", "P"]:
    kind = reader.byte()
    if kind == 0x53:
        return "S"
    if kind == 0x50:
        return "P"
    raise RemoteProtocolError(f"invalid {what} message subtype {kind}")


@_message
class Describe(Message):
    """Ask for the description of a statement (``kind="S"``) or portal (``"P"``)."""

    type_code: ClassVar[bytes] = b"D"
    kind: Literal["S", "P"]
    name: str = ""

    def _encode_body(self, encoding: str) -> bytes:
        _check_kind(self.kind, "Describe")
        return self.kind.encode() + encode_cstring(self.name, encoding)

    @classmethod
    def _decode(cls, reader: Reader) -> Describe:
        kind = _read_kind(reader, "DESCRIBE")
        return cls(kind=kind, name=reader.cstring())


@_message
class Execute(Message):
    """Run a portal; ``max_rows`` 0 means no limit."""

    type_code: ClassVar[bytes] = b"E"
    portal: str = ""
    max_rows: int = 0

    def _encode_body(self, encoding: str) -> bytes:
        return encode_cstring(self.portal, encoding) + pack_checked(
            INT32, "max_rows", self.max_rows
        )

    @classmethod
    def _decode(cls, reader: Reader) -> Execute:
        return cls(portal=reader.cstring(), max_rows=reader.int32())


@_message
class Close(Message):
    """Close a statement (``kind="S"``) or portal (``"P"``)."""

    type_code: ClassVar[bytes] = b"C"
    kind: Literal["S", "P"]
    name: str = ""

    def _encode_body(self, encoding: str) -> bytes:
        _check_kind(self.kind, "Close")
        return self.kind.encode() + encode_cstring(self.name, encoding)

    @classmethod
    def _decode(cls, reader: Reader) -> Close:
        kind = _read_kind(reader, "CLOSE")
        return cls(kind=kind, name=reader.cstring())


@_message
class Sync(Message):
    """End of an extended-query batch; the server answers with ReadyForQuery."""

    type_code: ClassVar[bytes] = b"S"


@_message
class Flush(Message):
    """Ask the server to send what it has buffered."""

    type_code: ClassVar[bytes] = b"H"


@_message
class Terminate(Message):
    """The client is closing the connection."""

    type_code: ClassVar[bytes] = b"X"


@_message
class FunctionCall(Message):
    """The legacy fast-path function call."""

    type_code: ClassVar[bytes] = b"F"
    function_oid: int
    argument_formats: tuple[int, ...] = ()
    arguments: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def _encode_body(self, encoding: str) -> bytes:
        return (
            pack_checked(_UINT32, "function oid", self.function_oid)
            + _encode_formats(self.argument_formats, "argument format codes")
            + _encode_values(self.arguments, "arguments")
            + pack_checked(INT16, "result format", self.result_format)
        )

    @classmethod
    def _decode(cls, reader: Reader) -> FunctionCall:
        oid = _read_oid(reader)
        formats = _read_formats(reader)
        arguments = _read_values(reader)
        result_format = reader.int16()
        if len(formats) > 1 and len(formats) != len(arguments):
            raise RemoteProtocolError(
                f"function call message has {len(formats)} argument formats but "
                f"{len(arguments)} arguments"
            )
        for code in (*formats, result_format):
            if code not in (0, 1):
                raise RemoteProtocolError(
                    f"unsupported format code: {code}", SQLSTATE_INVALID_PARAMETER_VALUE
                )
        return cls(
            function_oid=oid,
            argument_formats=formats,
            arguments=arguments,
            result_format=result_format,
        )


@_message
class CopyData(Message):
    """A chunk of COPY data, in either direction."""

    type_code: ClassVar[bytes] = b"d"
    data: bytes

    def _encode_body(self, encoding: str) -> bytes:
        return bytes(self.data)

    @classmethod
    def _decode(cls, reader: Reader) -> CopyData:
        return cls(data=reader.rest())


@_message
class CopyDone(Message):
    """End of COPY data, in either direction."""

    type_code: ClassVar[bytes] = b"c"


@_message
class CopyFail(Message):
    """The client aborts COPY FROM STDIN with this error message."""

    type_code: ClassVar[bytes] = b"f"
    message: str

    def _encode_body(self, encoding: str) -> bytes:
        return encode_cstring(self.message, encoding)

    @classmethod
    def _decode(cls, reader: Reader) -> CopyFail:
        return cls(message=reader.cstring())


@_message
class PasswordMessage(Message):
    """A cleartext or MD5-hashed password (answers AuthenticationCleartextPassword
    or AuthenticationMD5Password). Bytes, because PostgreSQL does not interpret
    the password's encoding."""

    type_code: ClassVar[bytes] = b"p"
    password: bytes

    def _encode_body(self, encoding: str) -> bytes:
        return encode_cbytes(self.password)

    @classmethod
    def _decode(cls, reader: Reader) -> PasswordMessage:
        return cls(password=reader.cstring_bytes())


@_message
class SASLInitialResponse(Message):
    """The first SASL message: chosen mechanism and optional initial response."""

    type_code: ClassVar[bytes] = b"p"
    mechanism: str
    data: bytes | None = None

    def _encode_body(self, encoding: str) -> bytes:
        head = encode_cstring(self.mechanism, "utf-8")
        if self.data is None:
            return head + b"\xff\xff\xff\xff"
        return head + INT32.pack(len(self.data)) + self.data

    @classmethod
    def _decode(cls, reader: Reader) -> SASLInitialResponse:
        mechanism = decode_text(reader.cstring_bytes(), "utf-8")
        return cls(mechanism=mechanism, data=reader.nullable())


@_message
class SASLResponse(Message):
    """A later SASL message from the client."""

    type_code: ClassVar[bytes] = b"p"
    data: bytes

    def _encode_body(self, encoding: str) -> bytes:
        return bytes(self.data)

    @classmethod
    def _decode(cls, reader: Reader) -> SASLResponse:
        return cls(data=reader.rest())


@_message
class GSSResponse(Message):
    """A GSSAPI or SSPI token from the client."""

    type_code: ClassVar[bytes] = b"p"
    data: bytes

    def _encode_body(self, encoding: str) -> bytes:
        return bytes(self.data)

    @classmethod
    def _decode(cls, reader: Reader) -> GSSResponse:
        return cls(data=reader.rest())


# ---------------------------------------------------------------------------
# Backend messages
# ---------------------------------------------------------------------------


@_message
class Authentication(Message):
    """Base of the Authentication* family ('R'); ``auth_type`` is the subtype code."""

    type_code: ClassVar[bytes] = b"R"
    auth_type: ClassVar[int] = -1

    def encode(self, encoding: str = "utf-8") -> bytes:
        return frame(b"R", INT32.pack(self.auth_type) + self._encode_body(encoding))

    @classmethod
    def decode(cls: type[_M], body: bytes, encoding: str = "utf-8") -> _M:
        """Decode an 'R' body; the subtype code picks the class. Called on a
        subclass, a body of another subtype raises RemoteProtocolError."""
        message = decode_authentication(Reader(bytes(body), 0, len(body), encoding))
        if not isinstance(message, cls):
            raise RemoteProtocolError(
                f"expected {cls.__name__}, got {type(message).__name__}"
            )
        return message


@_message
class AuthenticationOk(Authentication):
    """Authentication succeeded."""

    auth_type: ClassVar[int] = 0


@_message
class AuthenticationKerberosV5(Authentication):
    """Kerberos V5 (obsolete; no client supports it)."""

    auth_type: ClassVar[int] = 2


@_message
class AuthenticationCleartextPassword(Authentication):
    """Send the password in clear text."""

    auth_type: ClassVar[int] = 3


@_message
class AuthenticationMD5Password(Authentication):
    """Send the MD5 hash of the password with this 4-byte ``salt``."""

    auth_type: ClassVar[int] = 5
    salt: bytes

    def _encode_body(self, encoding: str) -> bytes:
        if len(self.salt) != 4:
            raise LocalProtocolError(
                f"MD5 salt must be 4 bytes, not {len(self.salt)}", SQLSTATE_INVALID_PARAMETER_VALUE
            )
        return bytes(self.salt)


@_message
class AuthenticationGSS(Authentication):
    """Start GSSAPI authentication."""

    auth_type: ClassVar[int] = 7


@_message
class AuthenticationGSSContinue(Authentication):
    """GSSAPI or SSPI data from the server."""

    auth_type: ClassVar[int] = 8
    data: bytes

    def _encode_body(self, encoding: str) -> bytes:
        return bytes(self.data)


@_message
class AuthenticationSSPI(Authentication):
    """Start SSPI authentication."""

    auth_type: ClassVar[int] = 9


@_message
class AuthenticationSASL(Authentication):
    """Start SASL authentication with one of ``mechanisms``."""

    auth_type: ClassVar[int] = 10
    mechanisms: tuple[str, ...]

    def _encode_body(self, encoding: str) -> bytes:
        if not self.mechanisms:
            raise LocalProtocolError(
                "AuthenticationSASL needs at least one mechanism", SQLSTATE_INVALID_PARAMETER_VALUE
            )
        names = b"".join(encode_cstring(name, "utf-8") for name in self.mechanisms)
        for name in self.mechanisms:
            if not name:
                raise LocalProtocolError(
                    "SASL mechanism names must not be empty", SQLSTATE_INVALID_PARAMETER_VALUE
                )
        return names + b"\0"


@_message
class AuthenticationSASLContinue(Authentication):
    """A SASL challenge."""

    auth_type: ClassVar[int] = 11
    data: bytes

    def _encode_body(self, encoding: str) -> bytes:
        return bytes(self.data)


@_message
class AuthenticationSASLFinal(Authentication):
    """SASL outcome data (for SCRAM: the server signature)."""

    auth_type: ClassVar[int] = 12
    data: bytes

    def _encode_body(self, encoding: str) -> bytes:
        return bytes(self.data)


def decode_authentication(reader: Reader) -> Authentication:
    """Decode an 'R' body by its subtype code."""
    code = reader.int32()
    message: Authentication
    if code == 0:
        message = AuthenticationOk()
    elif code == 2:
        message = AuthenticationKerberosV5()
    elif code == 3:
        message = AuthenticationCleartextPassword()
    elif code == 5:
        message = AuthenticationMD5Password(salt=reader.raw(4))
    elif code == 7:
        message = AuthenticationGSS()
    elif code == 8:
        message = AuthenticationGSSContinue(data=reader.rest())
    elif code == 9:
        message = AuthenticationSSPI()
    elif code == 10:
        mechanisms: list[str] = []
        while True:
            name = decode_text(reader.cstring_bytes(), "utf-8")
            if not name:
                break
            mechanisms.append(name)
        if not mechanisms:
            raise RemoteProtocolError("AuthenticationSASL lists no mechanism")
        message = AuthenticationSASL(mechanisms=tuple(mechanisms))
    elif code == 11:
        message = AuthenticationSASLContinue(data=reader.rest())
    elif code == 12:
        message = AuthenticationSASLFinal(data=reader.rest())
    else:
        raise RemoteProtocolError(
            f"authentication method {code} not supported", SQLSTATE_FEATURE_NOT_SUPPORTED
        )
    reader.finish()
    return message


@_message
class ParameterStatus(Message):
    """A run-time parameter's current value (sent at startup and on change)."""

    type_code: ClassVar[bytes] = b"S"
    name: str
    value: str

    def _encode_body(self, encoding: str) -> bytes:
        return encode_cstring(self.name, encoding) + encode_cstring(self.value, encoding)

    @classmethod
    def _decode(cls, reader: Reader) -> ParameterStatus:
        return cls(name=reader.cstring(), value=reader.cstring())


@_message
class BackendKeyData(Message):
    """The process id and secret key a client needs to cancel its queries.

    ``secret_key`` is 4 bytes on protocol 3.0, 4..256 bytes on 3.2 (the
    connections check which applies).
    """

    type_code: ClassVar[bytes] = b"K"
    process_id: int
    secret_key: bytes

    def _encode_body(self, encoding: str) -> bytes:
        _check_cancel_key(self.secret_key, LocalProtocolError)
        return pack_checked(INT32, "process id", self.process_id) + self.secret_key

    @classmethod
    def _decode(cls, reader: Reader) -> BackendKeyData:
        process_id = reader.int32()
        key = reader.rest()
        _check_cancel_key(key, RemoteProtocolError)
        return cls(process_id=process_id, secret_key=key)


class TransactionStatus(enum.Enum):
    """The transaction status in ReadyForQuery."""

    IDLE = "I"
    IN_TRANSACTION = "T"
    FAILED = "E"


_STATUS_BY_BYTE: Final = {ord(s.value): s for s in TransactionStatus}


@_message
class ReadyForQuery(Message):
    """The server is ready for a new query cycle; carries the transaction status."""

    type_code: ClassVar[bytes] = b"Z"
    status: TransactionStatus = TransactionStatus.IDLE

    def _encode_body(self, encoding: str) -> bytes:
        return TransactionStatus(self.status).value.encode()

    @classmethod
    def _decode(cls, reader: Reader) -> ReadyForQuery:
        byte = reader.byte()
        status = _STATUS_BY_BYTE.get(byte)
        if status is None:
            raise RemoteProtocolError(
                f"unexpected transaction status {chr(byte)!r} in ReadyForQuery"
            )
        return cls(status=status)


@_message
class FieldDescription:
    """One column of a RowDescription."""

    name: str
    table_oid: int = 0
    column_attribute_number: int = 0
    data_type_oid: int = 0
    data_type_size: int = -1
    type_modifier: int = -1
    format: int = 0


@_message
class RowDescription(Message):
    """The columns of the rows that follow."""

    type_code: ClassVar[bytes] = b"T"
    fields: tuple[FieldDescription, ...]

    def _encode_body(self, encoding: str) -> bytes:
        parts = [pack_checked(UINT16, "number of fields", len(self.fields))]
        for f in self.fields:
            parts.append(encode_cstring(f.name, encoding))
            parts.append(
                pack_checked(
                    _FIELD, f"field {f.name!r}",
                    f.table_oid, f.column_attribute_number, f.data_type_oid,
                    f.data_type_size, f.type_modifier, f.format,
                )
            )
        return b"".join(parts)

    @classmethod
    def _decode(cls, reader: Reader) -> RowDescription:
        count = reader.count()
        if count * 19 > reader.remaining:
            raise insufficient_data()
        fields = []
        for _ in range(count):
            name = reader.cstring()
            pos = reader._need(18)
            values = _FIELD.unpack_from(reader.buf, pos)
            fields.append(
                FieldDescription(
                    name=name,
                    table_oid=values[0],
                    column_attribute_number=values[1],
                    data_type_oid=values[2],
                    data_type_size=values[3],
                    type_modifier=values[4],
                    format=values[5],
                )
            )
        return cls(fields=tuple(fields))


@_message
class DataRow(Message):
    """One row: each value is the column's bytes, or None for NULL."""

    type_code: ClassVar[bytes] = b"D"
    values: tuple[bytes | None, ...]

    def _encode_body(self, encoding: str) -> bytes:
        return _encode_values(self.values, "columns")

    @classmethod
    def decode(cls, body: bytes, encoding: str = "utf-8") -> DataRow:
        """Decode a DataRow body; values are bytes (None for NULL), as sent."""
        buf = bytes(body)
        return decode_data_row(buf, 0, len(buf))


def decode_data_row(buf: bytes, pos: int, end: int) -> DataRow:
    """Decode a DataRow body ``buf[pos:end]`` (the hot path of result streams)."""
    if end - pos < 2:
        raise insufficient_data()
    count = (buf[pos] << 8) | buf[pos + 1]
    pos += 2
    values: list[bytes | None] = []
    append = values.append
    for _ in range(count):
        # Bound every read by the frame's end, not the buffer's: the next frame
        # follows in the same buffer.
        if pos + 4 > end:
            raise insufficient_data()
        size = unpack_int32(buf, pos)[0]
        pos += 4
        if size < 0:
            if size != -1:
                raise RemoteProtocolError(f"invalid column length {size} in DataRow")
            append(None)
        else:
            nxt = pos + size
            if nxt > end:
                raise insufficient_data()
            append(buf[pos:nxt])
            pos = nxt
    if pos != end:
        raise invalid_format(f"{end - pos} unexpected trailing bytes")
    row = _new(DataRow)
    _set(row, "values", tuple(values))
    return row


def _decode_data_rows_py(  # noqa: PLR0917 - the C accelerator's positional signature
    buf: bytes, pos: int, end: int, limit: int, columns: int, max_rows: int,
    row_type: type[DataRow],
) -> tuple[list[DataRow], int]:
    """Decode consecutive complete DataRow frames in ``buf[pos:end]``.

    Stops, without raising, before the first frame that is not a DataRow, is
    incomplete, has a body over ``limit``, is malformed, or has a column count
    other than ``columns`` (when ``columns >= 0``); the caller's ordinary path
    then handles that frame and reports any error. Returns the rows and the
    position after the last one. The C accelerator implements the same contract.
    """
    end = min(end, len(buf))
    pos = max(pos, 0)
    if 0 < columns <= _MAX_UNROLLED_COLUMNS:
        decode = _UNROLLED.get(columns) or _unrolled_decoder(columns)
        batch, pos = decode(buf, pos, end, limit, max_rows)
    else:
        batch, pos = _decode_row_values(buf, pos, end, limit, columns, max_rows)
    if not batch:
        return [], pos
    # Making the rows in C loops (map) rather than one by one saves ~25 % of
    # their cost; the slot's own setter, like object.__setattr__, bypasses the
    # frozen dataclass's __setattr__.
    rows = list(_map(_new, _repeat(row_type, len(batch))))
    _consume(_map(vars(DataRow)["values"].__set__, rows, batch), 0)
    return rows, pos


def _decode_row_values(  # noqa: PLR0917 - hot path, positional
    buf: bytes, pos: int, end: int, limit: int, columns: int, max_rows: int,
) -> tuple[list[tuple[bytes | None, ...]], int]:
    """The values of a run of DataRows of any column count (see _decode_data_rows_py)."""
    batch: list[tuple[bytes | None, ...]] = []
    append = batch.append
    unpack = _unpack_uint32
    for _ in range(max_rows):
        if end - pos < 7 or buf[pos] != 0x44:
            break
        length = unpack_int32(buf, pos + 1)[0]
        frame_end = pos + 1 + length
        if length < 6 or length - 4 > limit or frame_end > end:
            break
        count = (buf[pos + 5] << 8) | buf[pos + 6]
        if columns >= 0 and count != columns:
            break
        p = pos + 7
        values: list[bytes | None] = []
        add = values.append
        for _ in range(count):
            if p + 4 > frame_end:
                break
            size = unpack(buf, p)[0]
            p += 4
            if size < _NULL:
                q = p + size
                if q > frame_end:
                    break
                add(buf[p:q])
                p = q
            else:
                add(None)
        else:
            if p == frame_end:
                append(tuple(values))
                pos = frame_end
                continue
        break
    return batch, pos


# DataRows of a known column count (the Frontend knows it from RowDescription)
# are decoded by a loop written out for that count: no loop over the columns, no
# list to build, one bounds check per value and the first length word read with
# the frame's header, which takes ~40 % off the pure-Python cost of a row. The
# source is generated (as dataclasses does for __init__) from the template
# below; only integers are substituted into it.
_MAX_UNROLLED_COLUMNS: Final = 64
_ValuesDecoder = Callable[
    [bytes, int, int, int, int], tuple[list[tuple[bytes | None, ...]], int]
]
_UNROLLED: dict[int, _ValuesDecoder] = {}

_UNROLLED_HEAD: Final = """\
def decode(buf, pos, end, limit, max_rows):
    batch = []
    append = batch.append
    last = end - 11
    limit += 4
    try:
        for _ in range(max_rows):
            if pos > last:
                break
            code, length, count, size = unpack_head(buf, pos)
            frame_end = pos + 1 + length
            if code != 68 or count != {columns} or length > limit or frame_end > end:
                break
            p = pos + 11
"""
# Column i's length word has been read into `size`; p is just after it. A value
# is sliced only after its end is known to lie inside the frame, so a hostile
# length never allocates more than the frame holds; sizes from 2**31 up
# (negative lengths) fail that test too, except 0xFFFFFFFF, NULL. A NULL is not
# checked against the frame's end, but every later step only moves p forward
# and the row is accepted only if its last value ends exactly at the frame's end.
_UNROLLED_COLUMN: Final = """\
            if size < 4294967295:
                q = p + size
                if q > frame_end:
                    break
                v{index} = buf[p:q]
                size = unpack(buf, q)[0]
                p = q + 4
            else:
                v{index} = None
                size = unpack(buf, p)[0]
                p += 4
"""
_UNROLLED_TAIL: Final = """\
            if size < 4294967295:
                if p + size != frame_end:
                    break
                v{index} = buf[p:frame_end]
            elif p == frame_end:
                v{index} = None
            else:
                break
            append(({values},))
            pos = frame_end
    except error:  # a length word read past the buffer's end: a malformed row
        pass
    return batch, pos
"""


def _unrolled_decoder(columns: int) -> _ValuesDecoder:
    """The values decoder for DataRows of exactly ``columns`` (>= 1) columns."""
    source = _UNROLLED_HEAD.format(columns=columns)
    source += "".join(_UNROLLED_COLUMN.format(index=index) for index in range(columns - 1))
    source += _UNROLLED_TAIL.format(
        index=columns - 1, values=", ".join(f"v{index}" for index in range(columns))
    )
    namespace: dict[str, object] = {
        "unpack_head": _ROW_HEAD.unpack_from, "unpack": _unpack_uint32, "error": _struct.error,
    }
    code = compile(source, f"<pgwire DataRow decoder for {columns} columns>", "exec")
    exec(code, namespace)  # our own template; only integers are substituted
    decoder: _ValuesDecoder = namespace["decode"]  # type: ignore[assignment]
    _UNROLLED[columns] = decoder
    return decoder


RowRunDecoder = Callable[
    [bytes, int, int, int, int, int, type[DataRow]], tuple[list[DataRow], int]
]


def _accelerated_decoder() -> RowRunDecoder | None:
    """The C run decoder, unless PGWIRE_PURE_PYTHON is set or it was not built."""
    if os.environ.get("PGWIRE_PURE_PYTHON"):
        return None
    try:
        from ._speedups import decode_data_rows as accelerated  # noqa: PLC0415 - optional
    except ImportError:  # pragma: no cover - depends on the build
        return None
    return accelerated


_ACCELERATED = _accelerated_decoder()
#: True when the optional C accelerator is in use (see setup.py).
SPEEDUPS = _ACCELERATED is not None
decode_data_rows: RowRunDecoder = _ACCELERATED or _decode_data_rows_py


@_message
class CommandComplete(Message):
    """A command finished; ``tag`` is e.g. ``"SELECT 5"`` or ``"INSERT 0 1"``."""

    type_code: ClassVar[bytes] = b"C"
    tag: str

    def _encode_body(self, encoding: str) -> bytes:
        return encode_cstring(self.tag, encoding)

    @classmethod
    def _decode(cls, reader: Reader) -> CommandComplete:
        return cls(tag=reader.cstring())


@_message
class EmptyQueryResponse(Message):
    """The query string was empty."""

    type_code: ClassVar[bytes] = b"I"


# Field codes of ErrorResponse/NoticeResponse, in PostgreSQL's documented order.
_NOTICE_FIELDS: Final = (
    ("S", "severity"),
    ("V", "severity_nonlocalized"),
    ("C", "code"),
    ("M", "message"),
    ("D", "detail"),
    ("H", "hint"),
    ("P", "position"),
    ("p", "internal_position"),
    ("q", "internal_query"),
    ("W", "where"),
    ("s", "schema_name"),
    ("t", "table_name"),
    ("c", "column_name"),
    ("d", "data_type_name"),
    ("n", "constraint_name"),
    ("F", "file"),
    ("L", "line"),
    ("R", "routine"),
)
_NOTICE_ATTR_BY_CODE: Final = {ord(code): name for code, name in _NOTICE_FIELDS}


@_message
class _NoticeFields(Message):
    """Shared shape of ErrorResponse and NoticeResponse.

    Every documented field has an attribute (None when absent); fields with
    codes PostgreSQL may add later are kept in ``other`` as (code, value).
    """

    severity: str | None = None
    severity_nonlocalized: str | None = None
    code: str | None = None
    message: str | None = None
    detail: str | None = None
    hint: str | None = None
    position: str | None = None
    internal_position: str | None = None
    internal_query: str | None = None
    where: str | None = None
    schema_name: str | None = None
    table_name: str | None = None
    column_name: str | None = None
    data_type_name: str | None = None
    constraint_name: str | None = None
    file: str | None = None
    line: str | None = None
    routine: str | None = None
    other: tuple[tuple[str, str], ...] = field(default=())

    @property
    def sqlstate(self) -> str | None:
        """The SQLSTATE code (field 'C')."""
        return self.code

    def _encode_body(self, encoding: str) -> bytes:
        parts = []
        for code, name in _NOTICE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                parts.append(code.encode() + encode_cstring(value, encoding))
        for code, value in self.other:
            # Codes are single bytes; decode maps byte N to chr(N), so any of 1..255.
            if len(code) != 1 or not 0 < ord(code) < 256:
                raise LocalProtocolError(
                    f"notice field code {code!r} must be one character from \\x01 to \\xff",
                    SQLSTATE_INVALID_PARAMETER_VALUE,
                )
            parts.append(code.encode("latin-1") + encode_cstring(value, encoding))
        parts.append(b"\0")
        return b"".join(parts)

    @classmethod
    def _decode(cls, reader: Reader) -> Self:
        known: dict[str, str] = {}
        other: list[tuple[str, str]] = []
        while True:
            code = reader.byte()
            if code == 0:
                break
            value = reader.cstring()
            name = _NOTICE_ATTR_BY_CODE.get(code)
            if name is None:
                other.append((chr(code), value))
            else:
                known[name] = value
        return cls(other=tuple(other), **known)


@_message
class ErrorResponse(_NoticeFields):
    """An error: the current command, transaction or (FATAL) session failed."""

    type_code: ClassVar[bytes] = b"E"

    @property
    def ends_session(self) -> bool:
        """True for a FATAL or PANIC error: the server closes the connection after it.

        Reads the untranslated severity (field 'V', PostgreSQL 9.6+) when the
        server sent one, since 'S' is in the server's ``lc_messages`` language
        (``ВАЖНО`` is FATAL in Russian); older servers send only 'S'.
        """
        severity = self.severity_nonlocalized or self.severity
        return severity in ("FATAL", "PANIC")


@_message
class NoticeResponse(_NoticeFields):
    """A warning or information message; the session continues."""

    type_code: ClassVar[bytes] = b"N"


@_message
class ParseComplete(Message):
    """Parse succeeded."""

    type_code: ClassVar[bytes] = b"1"


@_message
class BindComplete(Message):
    """Bind succeeded."""

    type_code: ClassVar[bytes] = b"2"


@_message
class CloseComplete(Message):
    """Close succeeded."""

    type_code: ClassVar[bytes] = b"3"


@_message
class NoData(Message):
    """The described statement or portal returns no rows."""

    type_code: ClassVar[bytes] = b"n"


@_message
class PortalSuspended(Message):
    """Execute stopped at ``max_rows``; the portal can be executed again."""

    type_code: ClassVar[bytes] = b"s"


@_message
class ParameterDescription(Message):
    """The parameter types of a described statement."""

    type_code: ClassVar[bytes] = b"t"
    parameter_types: tuple[int, ...]

    def _encode_body(self, encoding: str) -> bytes:
        return _encode_oids(self.parameter_types, "parameter types")

    @classmethod
    def _decode(cls, reader: Reader) -> ParameterDescription:
        count = reader.count()
        if count * 4 > reader.remaining:
            raise insufficient_data()
        return cls(parameter_types=tuple(_read_oid(reader) for _ in range(count)))


@_message
class _CopyResponse(Message):
    """Shared shape of the Copy{In,Out,Both}Response messages."""

    format: int = 0
    column_formats: tuple[int, ...] = ()

    def _encode_body(self, encoding: str) -> bytes:
        return pack_checked(_BYTE, "copy format", self.format) + _encode_formats(
            self.column_formats, "column format codes"
        )

    @classmethod
    def _decode(cls, reader: Reader) -> Self:
        overall = reader.byte()
        formats = _read_formats(reader)
        for code in (overall, *formats):
            if code not in (0, 1):
                raise RemoteProtocolError(
                    f"unsupported COPY format code: {code}", SQLSTATE_INVALID_PARAMETER_VALUE
                )
        return cls(format=overall, column_formats=formats)


@_message
class CopyInResponse(_CopyResponse):
    """The server is ready for COPY FROM STDIN data."""

    type_code: ClassVar[bytes] = b"G"


@_message
class CopyOutResponse(_CopyResponse):
    """COPY TO STDOUT data follows."""

    type_code: ClassVar[bytes] = b"H"


@_message
class CopyBothResponse(_CopyResponse):
    """Copy in both directions (streaming replication) begins."""

    type_code: ClassVar[bytes] = b"W"


@_message
class NotificationResponse(Message):
    """A NOTIFY delivered to this session."""

    type_code: ClassVar[bytes] = b"A"
    process_id: int
    channel: str
    payload: str = ""

    def _encode_body(self, encoding: str) -> bytes:
        return (
            pack_checked(INT32, "process id", self.process_id)
            + encode_cstring(self.channel, encoding)
            + encode_cstring(self.payload, encoding)
        )

    @classmethod
    def _decode(cls, reader: Reader) -> NotificationResponse:
        return cls(process_id=reader.int32(), channel=reader.cstring(), payload=reader.cstring())


@_message
class FunctionCallResponse(Message):
    """The result of a FunctionCall (None for NULL)."""

    type_code: ClassVar[bytes] = b"V"
    result: bytes | None

    def _encode_body(self, encoding: str) -> bytes:
        if self.result is None:
            return b"\xff\xff\xff\xff"
        return INT32.pack(len(self.result)) + self.result

    @classmethod
    def _decode(cls, reader: Reader) -> FunctionCallResponse:
        return cls(result=reader.nullable())


@_message
class NegotiateProtocolVersion(Message):
    """The server supports only an older minor version, or not these ``_pq_.`` options.

    On the wire the version is a full protocol number (``3 << 16 | minor``),
    as PostgreSQL sends it and libpq reads it; the field holds the minor part.
    """

    type_code: ClassVar[bytes] = b"v"
    newest_minor_version: int
    unrecognized_options: tuple[str, ...] = ()

    def _encode_body(self, encoding: str) -> bytes:
        if not 0 <= self.newest_minor_version <= 0xFFFF:
            raise LocalProtocolError(
                f"minor version {self.newest_minor_version} is outside 0..65535",
                SQLSTATE_INVALID_PARAMETER_VALUE,
            )
        return (
            INT32.pack((3 << 16) | self.newest_minor_version)
            + pack_checked(INT32, "option count", len(self.unrecognized_options))
            + b"".join(encode_cstring(o, encoding) for o in self.unrecognized_options)
        )

    @classmethod
    def _decode(cls, reader: Reader) -> NegotiateProtocolVersion:
        version = reader.int32()
        if version >> 16 != 3:
            raise RemoteProtocolError(
                f"NegotiateProtocolVersion offers protocol {version >> 16}.{version & 0xFFFF}; "
                "only major version 3 exists"
            )
        count = reader.int32()
        if count < 0 or count > reader.remaining:
            raise RemoteProtocolError(f"invalid option count {count} in NegotiateProtocolVersion")
        options = tuple(reader.cstring() for _ in range(count))
        return cls(newest_minor_version=version & 0xFFFF, unrecognized_options=options)


# ---------------------------------------------------------------------------
# Decoder tables
# ---------------------------------------------------------------------------

Decoder = Callable[[Reader], Message]


def _table(*classes: type[Message]) -> dict[bytes, Decoder]:
    return {cls.type_code: cls._decode for cls in classes}


def _decode_data_row_reader(reader: Reader) -> Message:
    row = decode_data_row(reader.buf, reader.pos, reader.end)
    reader.pos = reader.end
    return row


#: Typed messages a frontend sends, by type byte ('p' excluded, see module doc).
FRONTEND_MESSAGES: Final[dict[bytes, Decoder]] = _table(
    Query, Parse, Bind, Describe, Execute, Close, Sync, Flush, Terminate,
    FunctionCall, CopyData, CopyDone, CopyFail,
)

#: Typed messages a backend sends, by type byte.
BACKEND_MESSAGES: Final[dict[bytes, Decoder]] = {
    **_table(
        ParameterStatus, BackendKeyData, ReadyForQuery, RowDescription,
        CommandComplete, EmptyQueryResponse, ErrorResponse, NoticeResponse, ParseComplete,
        BindComplete, CloseComplete, NoData, PortalSuspended, ParameterDescription,
        CopyInResponse, CopyOutResponse, CopyBothResponse, NotificationResponse,
        FunctionCallResponse, NegotiateProtocolVersion, CopyData, CopyDone,
    ),
    b"R": decode_authentication,
    b"D": _decode_data_row_reader,
}

#: Typed message classes a frontend sends (CopyData and CopyDone go both ways).
FRONTEND_TYPED_CLASSES: Final[frozenset[type[Message]]] = frozenset(
    {Query, Parse, Bind, Describe, Execute, Close, Sync, Flush, Terminate, FunctionCall,
     CopyData, CopyDone, CopyFail, PasswordMessage, SASLInitialResponse, SASLResponse,
     GSSResponse}
)

#: Typed message classes a backend sends.
BACKEND_TYPED_CLASSES: Final[frozenset[type[Message]]] = frozenset(
    {AuthenticationOk, AuthenticationKerberosV5, AuthenticationCleartextPassword,
     AuthenticationMD5Password, AuthenticationGSS, AuthenticationGSSContinue,
     AuthenticationSSPI, AuthenticationSASL, AuthenticationSASLContinue,
     AuthenticationSASLFinal, ParameterStatus, BackendKeyData, ReadyForQuery, RowDescription,
     DataRow, CommandComplete, EmptyQueryResponse, ErrorResponse, NoticeResponse,
     ParseComplete, BindComplete, CloseComplete, NoData, PortalSuspended,
     ParameterDescription, CopyInResponse, CopyOutResponse, CopyBothResponse,
     NotificationResponse, FunctionCallResponse, NegotiateProtocolVersion, CopyData, CopyDone}
)

"""Errors raised by the protocol core.

Every error says whose fault it is, as in h11: :class:`LocalProtocolError` when
the caller misused the API (nothing was produced), :class:`RemoteProtocolError`
when the peer broke the protocol. Both carry the PostgreSQL SQLSTATE a server
would report for the same fault, so a proxy can answer with a correct
``ErrorResponse`` (see :meth:`ProtocolError.error_fields`).
"""

from __future__ import annotations

__all__ = [
    "SQLSTATE_CHARACTER_NOT_IN_REPERTOIRE",
    "SQLSTATE_FEATURE_NOT_SUPPORTED",
    "SQLSTATE_INVALID_AUTHORIZATION_SPECIFICATION",
    "SQLSTATE_INVALID_PARAMETER_VALUE",
    "SQLSTATE_PROGRAM_LIMIT_EXCEEDED",
    "SQLSTATE_PROTOCOL_VIOLATION",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]

#: 08P01 — the peer sent something the protocol does not allow.
SQLSTATE_PROTOCOL_VIOLATION = "08P01"
#: 22021 — a string is not valid in the connection's encoding.
SQLSTATE_CHARACTER_NOT_IN_REPERTOIRE = "22021"
#: 22023 — a field holds a value outside its domain (e.g. a format code).
SQLSTATE_INVALID_PARAMETER_VALUE = "22023"
#: 0A000 — e.g. an unsupported protocol major version.
SQLSTATE_FEATURE_NOT_SUPPORTED = "0A000"
#: 54000 — a message or packet is larger than the configured limit.
SQLSTATE_PROGRAM_LIMIT_EXCEEDED = "54000"
#: 28000 — e.g. a startup packet without a user name.
SQLSTATE_INVALID_AUTHORIZATION_SPECIFICATION = "28000"


class ProtocolError(Exception):
    """Base class of every error the protocol core raises on purpose.

    ``sqlstate`` is the five-character PostgreSQL error code that describes the
    fault; ``message`` is a sentence for humans that says what to do next.
    """

    sqlstate: str
    message: str

    def __init__(self, message: str, sqlstate: str = SQLSTATE_PROTOCOL_VIOLATION) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError, not ProtocolError")
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate

    def __str__(self) -> str:
        return f"{self.message} (SQLSTATE {self.sqlstate})"


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol does not allow here.

    Raised before any byte is produced, so nothing has been sent. The
    connection object stays usable unless the docs of the call say otherwise.
    """


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol.

    After this, the connection object is in its ERROR state and every further
    :meth:`next_event` raises the same error again: close the connection.
    """

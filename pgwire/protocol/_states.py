"""The protocol's state machine: every rule about what may come when.

Everything that affects the state machine lives in this file, and this file
does not know which role we play. A :class:`Conversation` watches one
connection from the outside: it is told each message either side sends and
raises :class:`Violation` when a message is out of order. :class:`Frontend`
and :class:`Backend` turn a violation into a LocalProtocolError (our side broke
the rules) or a RemoteProtocolError (the peer did).

Two levels of rules, both as data:

* :data:`TRANSITIONS` — the phase changes (startup, negotiation, authentication,
  session setup, ready, COPY, closed). ``tools/state_diagram.py`` draws the
  diagram in ``docs/`` from this table.
* :data:`FRONTEND_ALLOWED` / :data:`BACKEND_ALLOWED` — the message types
  each side may send in each phase without changing it, refined in the ready
  phase by the query cycle (:data:`CYCLE_RESPONSES`): what the server may send
  depends on whether the oldest unanswered request is a simple Query, a
  FunctionCall or an extended-query batch, and whether it already failed.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Final

from ._codec import unpack_int32, unpack_uint16
from ._errors import SQLSTATE_FEATURE_NOT_SUPPORTED, SQLSTATE_PROTOCOL_VIOLATION
from ._messages import MAX_CANCEL_KEY_LENGTH, PROTOCOL_3_0

__all__ = [
    "BACKEND_ALLOWED",
    "CYCLE_RESPONSES",
    "FRONTEND_ALLOWED",
    "TRANSITIONS",
    "Conversation",
    "Phase",
    "Side",
    "Violation",
]


class Phase(enum.Enum):
    """Where a connection is in its life."""

    #: Nothing sent yet: the client may ask for TLS/GSS, start up, or cancel.
    STARTUP = "startup"
    #: SSLRequest sent; waiting for the one-byte answer.
    SSL_NEGOTIATION = "ssl-negotiation"
    #: GSSENCRequest sent; waiting for the one-byte answer.
    GSSENC_NEGOTIATION = "gssenc-negotiation"
    #: StartupMessage sent; authentication exchange until AuthenticationOk.
    AUTHENTICATION = "authentication"
    #: Authenticated; ParameterStatus and BackendKeyData until the first ReadyForQuery.
    SESSION_SETUP = "session-setup"
    #: Normal operation: queries may be in flight (see the query cycle).
    READY = "ready"
    #: COPY FROM STDIN in progress.
    COPY_IN = "copy-in"
    #: COPY TO STDOUT in progress.
    COPY_OUT = "copy-out"
    #: Copy in both directions (replication) in progress.
    COPY_BOTH = "copy-both"
    #: A CancelRequest was sent; the server closes the connection.
    CANCEL = "cancel"
    #: Terminate sent, a FATAL error, or the end of the stream.
    CLOSED = "closed"

    # Members are singletons, so identity hashing is right, and it skips
    # Enum.__hash__ (Python code) on every message's table lookup.
    __hash__ = object.__hash__


class Side(enum.Enum):
    """Who sent a message."""

    FRONTEND = "frontend"
    BACKEND = "backend"


FE: Final = Side.FRONTEND
BE: Final = Side.BACKEND


class Violation(Exception):
    """A message out of order; converted to Local/RemoteProtocolError by the caller."""

    def __init__(self, message: str, sqlstate: str = SQLSTATE_PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


# Phase changes: (phase, sender, event) -> next phase. Event names are message
# class names; "ErrorResponse:FATAL" is an error with severity FATAL or PANIC,
# "EOF" the end of the stream, "DirectTLS" a TLS ClientHello instead of a packet.
TRANSITIONS: Final[dict[tuple[Phase, Side, str], Phase]] = {
    (Phase.STARTUP, FE, "SSLRequest"): Phase.SSL_NEGOTIATION,
    (Phase.STARTUP, FE, "GSSENCRequest"): Phase.GSSENC_NEGOTIATION,
    (Phase.STARTUP, FE, "DirectTLS"): Phase.STARTUP,
    (Phase.STARTUP, FE, "StartupMessage"): Phase.AUTHENTICATION,
    (Phase.STARTUP, FE, "CancelRequest"): Phase.CANCEL,
    (Phase.STARTUP, BE, "ErrorResponse:FATAL"): Phase.CLOSED,
    (Phase.SSL_NEGOTIATION, BE, "SSLResponse"): Phase.STARTUP,
    (Phase.SSL_NEGOTIATION, BE, "ErrorResponse:FATAL"): Phase.CLOSED,
    (Phase.GSSENC_NEGOTIATION, BE, "GSSENCResponse"): Phase.STARTUP,
    (Phase.GSSENC_NEGOTIATION, BE, "ErrorResponse:FATAL"): Phase.CLOSED,
    (Phase.AUTHENTICATION, BE, "AuthenticationOk"): Phase.SESSION_SETUP,
    (Phase.AUTHENTICATION, BE, "ErrorResponse:FATAL"): Phase.CLOSED,
    (Phase.AUTHENTICATION, BE, "ErrorResponse"): Phase.CLOSED,
    (Phase.AUTHENTICATION, FE, "Terminate"): Phase.CLOSED,
    (Phase.SESSION_SETUP, BE, "ReadyForQuery"): Phase.READY,
    (Phase.SESSION_SETUP, BE, "ErrorResponse:FATAL"): Phase.CLOSED,
    (Phase.SESSION_SETUP, FE, "Terminate"): Phase.CLOSED,
    (Phase.READY, BE, "CopyInResponse"): Phase.COPY_IN,
    (Phase.READY, BE, "CopyOutResponse"): Phase.COPY_OUT,
    (Phase.READY, BE, "CopyBothResponse"): Phase.COPY_BOTH,
    (Phase.READY, BE, "ErrorResponse:FATAL"): Phase.CLOSED,
    (Phase.READY, FE, "Terminate"): Phase.CLOSED,
    (Phase.COPY_IN, FE, "CopyDone"): Phase.READY,
    (Phase.COPY_IN, FE, "CopyFail"): Phase.READY,
    (Phase.COPY_IN, BE, "ErrorResponse"): Phase.READY,
    (Phase.COPY_IN, BE, "ErrorResponse:FATAL"): Phase.CLOSED,
    (Phase.COPY_IN, FE, "Terminate"): Phase.CLOSED,
    (Phase.COPY_OUT, BE, "CopyDone"): Phase.READY,
    (Phase.COPY_OUT, BE, "ErrorResponse"): Phase.READY,
    (Phase.COPY_OUT, BE, "ErrorResponse:FATAL"): Phase.CLOSED,
    (Phase.COPY_OUT, FE, "Terminate"): Phase.CLOSED,
    (Phase.COPY_BOTH, FE, "CopyDone"): Phase.COPY_BOTH,
    (Phase.COPY_BOTH, BE, "CopyDone"): Phase.COPY_BOTH,
    (Phase.COPY_BOTH, FE, "CopyDone+CopyDone"): Phase.READY,
    (Phase.COPY_BOTH, BE, "CopyDone+CopyDone"): Phase.READY,
    (Phase.COPY_BOTH, BE, "ErrorResponse"): Phase.READY,
    (Phase.COPY_BOTH, BE, "ErrorResponse:FATAL"): Phase.CLOSED,
    (Phase.COPY_BOTH, FE, "Terminate"): Phase.CLOSED,
}
for _phase in Phase:
    TRANSITIONS[(_phase, FE, "EOF")] = Phase.CLOSED
    TRANSITIONS[(_phase, BE, "EOF")] = Phase.CLOSED

_QUERY: Final = frozenset(b"QPBDECSHF")
_COPY_DATA: Final = frozenset(b"dcf")
_ASYNC: Final = frozenset(b"NAS")

#: Typed messages the frontend may send in each phase (type bytes as ints).
FRONTEND_ALLOWED: Final[dict[Phase, frozenset[int]]] = {
    Phase.AUTHENTICATION: frozenset(b"pX"),
    Phase.SESSION_SETUP: _QUERY | _COPY_DATA | frozenset(b"X"),
    Phase.READY: _QUERY | _COPY_DATA | frozenset(b"X"),
    # PostgreSQL ignores Flush and Sync during COPY FROM STDIN.
    Phase.COPY_IN: _COPY_DATA | frozenset(b"HSX"),
    Phase.COPY_OUT: _QUERY | _COPY_DATA | frozenset(b"X"),
    Phase.COPY_BOTH: frozenset(b"dcX"),
}

#: Typed messages the backend may send in each phase (type bytes as ints).
BACKEND_ALLOWED: Final[dict[Phase, frozenset[int]]] = {
    Phase.STARTUP: frozenset(b"E"),
    Phase.SSL_NEGOTIATION: frozenset(b"E"),
    Phase.GSSENC_NEGOTIATION: frozenset(b"E"),
    Phase.AUTHENTICATION: frozenset(b"RvEN"),
    Phase.SESSION_SETUP: frozenset(b"SKNAEZ"),
    Phase.READY: frozenset(b"123ACDEGHINSTVWZnst"),
    Phase.COPY_IN: _ASYNC | frozenset(b"E"),
    Phase.COPY_OUT: _ASYNC | frozenset(b"dcE"),
    Phase.COPY_BOTH: _ASYNC | frozenset(b"dcE"),
}

#: In the ready phase, what the server may send while the oldest unanswered
#: request is of each kind: "Q" simple query, "F" function call, "X"
#: extended-query batch, "" nothing in flight, "failed" a request that already
#: got its ErrorResponse (the server now skips to the end of the cycle).
CYCLE_RESPONSES: Final[dict[str, frozenset[int]]] = {
    "Q": _ASYNC | frozenset(b"TDCIEGHWZ"),
    "F": _ASYNC | frozenset(b"VEZ"),
    "X": _ASYNC | frozenset(b"123tnTDCIsEGHWZ"),
    "": _ASYNC | frozenset(b"E"),
    "failed": _ASYNC | frozenset(b"EZ"),
}

_PHASE_READY: Final = Phase.READY
#: The pending queue of every connection with nothing in flight; ``maxlen=0``
#: drops anything appended to it by mistake (it is shared).
_NOTHING_PENDING: Final[deque[int]] = deque(maxlen=0)

# What each authentication request asks the client to send next.
_AUTH_ANSWER: Final[dict[int, str | None]] = {
    2: None,  # KerberosV5: no client supports it; the client can only close
    3: "PasswordMessage",
    5: "PasswordMessage",
    7: "GSSResponse",
    8: "GSSResponse",
    9: "GSSResponse",
    10: "SASLInitialResponse",
    11: "SASLResponse",
    12: None,
}
_AUTH_METHOD: Final[dict[int, str]] = {
    2: "kerberos", 3: "password", 5: "md5", 7: "gss", 9: "gss", 10: "sasl",
}
_AUTH_NAMES: Final[dict[int, str]] = {
    0: "AuthenticationOk", 2: "AuthenticationKerberosV5", 3: "AuthenticationCleartextPassword",
    5: "AuthenticationMD5Password", 7: "AuthenticationGSS", 8: "AuthenticationGSSContinue",
    9: "AuthenticationSSPI", 10: "AuthenticationSASL", 11: "AuthenticationSASLContinue",
    12: "AuthenticationSASLFinal",
}
_FATAL_SEVERITIES: Final = (b"FATAL", b"PANIC")


def _who(side: Side) -> str:
    return "client" if side is FE else "server"


class Conversation:
    """The state of one connection, driven by the messages both sides send.

    Not thread-safe; one per connection. Raises :class:`Violation` and leaves
    the state unchanged when a message is out of order.
    """

    __slots__ = (
        "_auth_answer",
        "_auth_method",
        "_auth_optional",
        "_copy_client_done",
        "_copy_server_done",
        "_cycle_failed",
        "_key_seen",
        "_negotiated",
        "_pending",
        "_sasl_final",
        "_unsynced",
        "gss_done",
        "phase",
        "protocol_version",
        "requested_options",
        "row_columns",
        "ssl_done",
        "transaction_status",
    )

    def __init__(self) -> None:
        self.phase = Phase.STARTUP
        self.protocol_version = PROTOCOL_3_0
        self.requested_options: tuple[str, ...] = ()
        self.ssl_done = False
        self.gss_done = False
        self.transaction_status = "I"
        #: Column count of the simple query's last RowDescription (-1: unknown).
        self.row_columns = -1
        self._auth_answer: str | None = None
        self._auth_optional = False
        self._auth_method: str | None = None
        self._sasl_final = False
        self._key_seen = False
        self._negotiated = False
        # Sent requests that each owe a ReadyForQuery: b"Q", b"F" or b"S". An
        # empty deque costs 760 bytes: a connection shares one that takes
        # nothing until its first request (a proxy holds thousands of idle
        # sessions), then keeps its own (a deque per query costs more CPU).
        self._pending: deque[int] = _NOTHING_PENDING
        # Extended-query messages sent since the last Sync.
        self._unsynced = False
        self._cycle_failed = False
        self._copy_client_done = False
        self._copy_server_done = False

    # -- helpers -----------------------------------------------------------

    def _transition(self, side: Side, event: str) -> None:
        try:
            self.phase = TRANSITIONS[(self.phase, side, event)]
        except KeyError:
            raise Violation(
                f"unexpected {event} from the {_who(side)} in phase {self.phase.value}"
            ) from None

    @property
    def cycle_kind(self) -> str:
        """Kind of the oldest unanswered request: "Q", "F", "X" or ""."""
        if self._pending:
            kind = self._pending[0]
            return "X" if kind == 0x53 else chr(kind)
        return "X" if self._unsynced else ""

    @property
    def pending_syncs(self) -> int:
        """How many ReadyForQuery messages the server still owes."""
        return len(self._pending)

    @property
    def expected_password_message(self) -> str | None:
        """Which 'p' message answers the last authentication request, if any."""
        return self._auth_answer

    def rows_allowed(self) -> bool:
        """Fast check for the hot path: may the server send a DataRow now?
        (Caller has checked the phase is READY.)"""
        if self._cycle_failed:
            return False
        pending = self._pending
        if pending:
            return pending[0] != 0x46
        return self._unsynced

    @property
    def busy(self) -> bool:
        """True while a request is in flight (the server owes responses)."""
        return bool(self._pending) or self._unsynced

    # -- untyped packets and one-byte answers ---------------------------------

    def frontend_packet(self, name: str, protocol_version: int = PROTOCOL_3_0,
                        options: tuple[str, ...] = ()) -> None:
        """The frontend sent an untyped packet: SSLRequest, GSSENCRequest,
        StartupMessage, CancelRequest, or a direct TLS handshake ("DirectTLS")."""
        if self.phase is not Phase.STARTUP:
            raise Violation(f"unexpected {name} in phase {self.phase.value}")
        # As PostgreSQL's ProcessStartupPacket: each request at most once, and
        # neither after the other was accepted. PostgreSQL then reports the
        # request code as an unsupported protocol version (0A000).
        if (name == "SSLRequest" and self.ssl_done) or (
            name == "GSSENCRequest" and self.gss_done
        ):
            raise Violation(f"{name} after encryption was already negotiated",
                            SQLSTATE_FEATURE_NOT_SUPPORTED)
        if name == "DirectTLS" and (self.ssl_done or self.gss_done):
            raise Violation("TLS handshake after encryption was already negotiated")
        if name == "StartupMessage":
            major = protocol_version >> 16
            if major != 3:
                raise Violation(
                    f"unsupported frontend protocol {major}.{protocol_version & 0xFFFF}: "
                    "server supports 3.0 to 3.2",
                    SQLSTATE_FEATURE_NOT_SUPPORTED,
                )
            self.protocol_version = protocol_version
            self.requested_options = options
        self._transition(FE, name)
        if name == "DirectTLS":
            self.ssl_done = self.gss_done = True

    def negotiation_answer(self, name: str, accepted: bool) -> None:
        """The backend answered SSLRequest/GSSENCRequest with one byte.

        ``ssl_done``/``gss_done`` then say that request may not be repeated.
        """
        self._transition(BE, name)
        if name == "SSLResponse":
            self.ssl_done = True
            self.gss_done = self.gss_done or accepted
        else:
            self.gss_done = True
            self.ssl_done = self.ssl_done or accepted

    # -- typed messages ---------------------------------------------------------

    def frontend_message(self, code: int, password_kind: str | None = None) -> None:
        """The frontend sent a typed message with type byte ``code``.

        ``password_kind`` names the class of a 'p' message when the sender
        knows it; the conversation checks it against the request it answers.
        """
        phase = self.phase
        allowed = FRONTEND_ALLOWED.get(phase)
        if allowed is None or code not in allowed:
            if phase is Phase.CLOSED:
                raise Violation(f"message {chr(code)!r} after the connection was closed")
            raise Violation(f"unexpected message type {chr(code)!r} from the client in phase "
                            f"{phase.value}")
        if code == 0x70:  # 'p'
            self._password(password_kind)
        elif code == 0x58:  # 'X'
            self._transition(FE, "Terminate")
        elif phase is Phase.COPY_IN:
            if code == 0x63:
                self._transition(FE, "CopyDone")
            elif code == 0x66:
                self._transition(FE, "CopyFail")
            # d: data; H and S are ignored by the server during COPY FROM STDIN.
        elif phase is Phase.COPY_BOTH:
            if code == 0x63:
                if self._copy_client_done:
                    raise Violation("client sent CopyDone twice")
                self._copy_client_done = True
                self._transition(FE, "CopyDone+CopyDone" if self._copy_server_done else "CopyDone")
            elif self._copy_client_done:
                raise Violation("client sent CopyData after its CopyDone")
        elif code in _QUERY:
            self._request(code)
        # d/c/f outside COPY: PostgreSQL accepts and ignores them.

    def _request(self, code: int) -> None:
        if code in (0x51, 0x46):  # Q, F
            if self._unsynced:
                raise Violation(
                    f"{'Query' if code == 0x51 else 'FunctionCall'} in the middle of an "
                    "extended-query batch: send Sync first"
                )
        elif code != 0x53:  # S
            if code != 0x48:  # H (Flush) opens nothing
                self._unsynced = True
            return
        else:
            self._unsynced = False
        if self._pending is _NOTHING_PENDING:
            self._pending = deque((code,))
        else:
            self._pending.append(code)

    def _password(self, kind: str | None) -> None:
        expected = self._auth_answer
        if expected is None:
            raise Violation("password message sent without an authentication request to answer")
        if kind is not None and kind != expected:
            raise Violation(f"the authentication request asks for a {expected}, not a {kind}")
        self._auth_answer = None
        self._auth_optional = False

    def backend_message(self, code: int, buf: bytes, start: int, end: int) -> None:
        """The backend sent a typed message with type byte ``code`` and body
        ``buf[start:end]`` (only peeked where the state depends on it)."""
        phase = self.phase
        allowed = BACKEND_ALLOWED.get(phase)
        if allowed is None or code not in allowed:
            if phase is Phase.CLOSED:
                raise Violation(f"message {chr(code)!r} after the connection was closed")
            raise Violation(f"unexpected message type {chr(code)!r} from the server in phase "
                            f"{phase.value}")
        if code == 0x45:  # 'E'
            self._error(buf, start, end)
        elif phase is _PHASE_READY:
            self._response(code, buf, start, end)
        elif phase is Phase.AUTHENTICATION:
            if code == 0x52:
                self._auth_request(buf, start, end)
            elif code == 0x76:
                self._negotiate(buf, start, end)
        elif phase is Phase.SESSION_SETUP:
            if code == 0x4B:
                self._backend_key(start, end)
            elif code == 0x5A:
                self._ready(buf, start, end, first=True)
        elif phase is Phase.COPY_OUT:
            if code == 0x63:
                self._transition(BE, "CopyDone")
        elif phase is Phase.COPY_BOTH:
            if code == 0x63:
                if self._copy_server_done:
                    raise Violation("server sent CopyDone twice")
                self._copy_server_done = True
                self._transition(BE, "CopyDone+CopyDone" if self._copy_client_done else "CopyDone")
            elif code == 0x64 and self._copy_server_done:
                raise Violation("server sent CopyData after its CopyDone")

    def _response(self, code: int, buf: bytes, start: int, end: int) -> None:
        if self._cycle_failed:
            kind = "failed"
        elif self._pending:
            first = self._pending[0]
            kind = "X" if first == 0x53 else ("Q" if first == 0x51 else "F")
        else:
            kind = "X" if self._unsynced else ""
        if code not in CYCLE_RESPONSES[kind]:
            if kind == "":
                raise Violation(
                    f"server sent message type {chr(code)!r} while no request was in flight"
                )
            if kind == "failed":
                raise Violation(
                    f"server sent message type {chr(code)!r} after an error, before ReadyForQuery"
                )
            raise Violation(
                f"server sent message type {chr(code)!r}, which cannot answer a "
                f"{ {'Q': 'simple Query', 'F': 'FunctionCall', 'X': 'extended query'}[kind] }"
            )
        if code == 0x5A:  # Z
            self._ready(buf, start, end, first=False)
        elif code == 0x54:  # T: remember the column count for DataRow checks
            # Only a simple query's RowDescription surely describes the rows that
            # follow; in the extended protocol it answers a Describe, and the next
            # Execute may run another portal.
            if kind == "Q" and end - start >= 2:
                self.row_columns = unpack_uint16(buf, start)[0]
        elif code in (0x43, 0x73, 0x49):  # C, s, I end a result
            self.row_columns = -1
        elif code == 0x47:  # G
            self._start_copy("CopyInResponse")
            if kind == "X" and self._pending and self._pending[0] == 0x53:
                # The server swallows Syncs read during COPY FROM STDIN; the client
                # must send another after CopyDone (libpq does).
                self._pending.popleft()
                self._unsynced = True
        elif code == 0x48:  # H
            self._start_copy("CopyOutResponse")
        elif code == 0x57:  # W
            self._start_copy("CopyBothResponse")

    def _start_copy(self, event: str) -> None:
        self._transition(BE, event)
        self._copy_client_done = False
        self._copy_server_done = False

    def _ready(self, buf: bytes, start: int, end: int, first: bool) -> None:
        if end - start != 1 or buf[start] not in b"ITE":
            raise Violation("invalid ReadyForQuery message")
        if first:
            self._transition(BE, "ReadyForQuery")
        elif not (pending := self._pending):
            raise Violation("ReadyForQuery while no Query, Sync or FunctionCall awaits one")
        else:
            pending.popleft()
        self.transaction_status = chr(buf[start])
        self._cycle_failed = False
        self.row_columns = -1

    def _error(self, buf: bytes, start: int, end: int) -> None:
        fatal = _is_fatal(buf, start, end)
        phase = self.phase
        if fatal:
            self._transition(BE, "ErrorResponse:FATAL")
            return
        if phase in (Phase.AUTHENTICATION, Phase.COPY_IN, Phase.COPY_OUT, Phase.COPY_BOTH):
            self._transition(BE, "ErrorResponse")
        if self.busy:
            self._cycle_failed = True
        self.row_columns = -1

    def _auth_request(self, buf: bytes, start: int, end: int) -> None:
        if end - start < 4:
            raise Violation("authentication request too short")
        subtype = unpack_int32(buf, start)[0]
        name = _AUTH_NAMES.get(subtype)
        if name is None:
            raise Violation(f"authentication method {subtype} not supported",
                            SQLSTATE_FEATURE_NOT_SUPPORTED)
        if self._auth_answer is not None and not self._auth_optional:
            raise Violation(f"{name} before the client answered the previous request "
                            f"with a {self._auth_answer}")
        method = self._auth_method
        if subtype == 0:
            if method == "sasl" and not self._sasl_final:
                raise Violation("AuthenticationOk before AuthenticationSASLFinal: the server "
                                "did not prove it knows the password")
            self._transition(BE, "AuthenticationOk")
            self._auth_answer = None
            return
        if subtype in _AUTH_METHOD:
            if method is not None:
                raise Violation(f"{name} after authentication with {method} had begun")
            self._auth_method = _AUTH_METHOD[subtype]
        elif subtype in (11, 12):
            if method != "sasl" or self._sasl_final:
                raise Violation(f"{name} outside a SASL exchange")
            self._sasl_final = subtype == 12
        elif subtype == 8 and method != "gss":
            raise Violation("AuthenticationGSSContinue outside a GSSAPI/SSPI exchange")
        self._auth_answer = _AUTH_ANSWER[subtype]
        self._auth_optional = subtype == 8

    def _negotiate(self, buf: bytes, start: int, end: int) -> None:
        if self._auth_method is not None or self._negotiated:
            raise Violation("NegotiateProtocolVersion after authentication began")
        if end - start < 8:
            raise Violation("NegotiateProtocolVersion too short")
        version = unpack_int32(buf, start)[0]
        if version >> 16 != 3:
            raise Violation(f"NegotiateProtocolVersion offers protocol {version >> 16}."
                            f"{version & 0xFFFF}; only major version 3 exists")
        minor = version & 0xFFFF
        count = unpack_int32(buf, start + 4)[0]
        options = buf[start + 8 : end].split(b"\0")
        if count < 0 or len(options) != count + 1 or options[-1] != b"":
            raise Violation("malformed NegotiateProtocolVersion")
        for option in options[:-1]:
            name = option.decode("utf-8", "replace")
            if name not in self.requested_options:
                raise Violation(f"server rejected protocol option {name!r}, which the "
                                "client did not request")
        requested_minor = self.protocol_version & 0xFFFF
        if not (0 <= minor < requested_minor or (minor == requested_minor and count)):
            raise Violation(
                f"server offered protocol 3.{minor} for a requested 3.{requested_minor} "
                "without rejecting any option"
            )
        self.protocol_version = (3 << 16) | minor
        self._negotiated = True

    def _backend_key(self, start: int, end: int) -> None:
        key_length = end - start - 4
        if self.protocol_version & 0xFFFF < 2:
            if key_length != 4:
                raise Violation(f"BackendKeyData key of {key_length} bytes on protocol 3.0 "
                                "(must be 4)")
        elif not 4 <= key_length <= MAX_CANCEL_KEY_LENGTH:
            raise Violation(f"BackendKeyData key of {key_length} bytes (must be 4 to "
                            f"{MAX_CANCEL_KEY_LENGTH})")
        if self._key_seen:
            raise Violation("second BackendKeyData")
        self._key_seen = True

    def end_of_stream(self) -> None:
        """The stream ended (either side may observe it)."""
        self.phase = Phase.CLOSED


def _is_fatal(buf: bytes, start: int, end: int) -> bool:
    """Whether an ErrorResponse body carries severity FATAL or PANIC."""
    pos = start
    while pos < end and buf[pos] != 0:
        nul = buf.find(b"\0", pos + 1, end)
        if nul < 0:
            return False
        if buf[pos] in (0x53, 0x56) and buf[pos + 1 : nul] in _FATAL_SEVERITIES:  # S, V
            return True
        pos = nul + 1
    return False

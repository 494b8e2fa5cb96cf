"""pgwire.Backend (you are the server): checking clients as PostgreSQL does, and your answers.

Limits and SQLSTATEs follow PROTOCOL.md "Limits PostgreSQL enforces": a
client that breaks them gets RemoteProtocolError; a server program that
answers out of order gets LocalProtocolError with the state unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import pgwire as pw

from .helpers import (
    cstr,
    drain,
    feed,
    frame,
    header,
    int32,
    packet,
    protocol_error,
    ready_backend,
    startup_message,
)

SSL_CODE = 80877103
GSS_CODE = 80877104
CANCEL_CODE = 80877102


def fresh() -> pw.Backend:
    return pw.Backend()


def authenticating(*requests: pw.Message) -> pw.Backend:
    backend = pw.Backend()
    assert isinstance(feed(backend, startup_message().encode())[0], pw.StartupMessage)
    for request in requests:
        backend.send(request)
    return backend


def startup_packet(version: int, *pairs: tuple[str, str]) -> bytes:
    body = int32(version) + b"".join(cstr(k) + cstr(v) for k, v in pairs) + b"\0"
    return packet(body)


# ---------------------------------------------------------------------------
# The startup packet
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [7, 4, 0, -1, -(2**31)], ids=lambda n: f"length-{n}")
def test_startup_packet_length_below_8(length: int) -> None:
    backend = fresh()
    backend.receive_data(int32(length))
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid length of startup packet"):
        backend.next_event()


@pytest.mark.parametrize("length", [10005, 0x7FFFFFFF], ids=lambda n: f"length-{n}")
def test_startup_packet_over_10000_refused_after_only_the_length_word(length: int) -> None:
    backend = fresh()
    backend.receive_data(int32(length))
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid length of startup packet"):
        backend.next_event()


def test_startup_packet_body_of_exactly_10000_bytes_is_read() -> None:
    # PostgreSQL subtracts the length word itself before comparing with 10,000.
    body = int32(pw.PROTOCOL_3_0) + cstr("user") + cstr("u") + cstr("options")
    body += b"x" * (10000 - len(body) - 2) + b"\0\0"
    assert len(body) == 10000
    backend = fresh()
    backend.receive_data(packet(body)[:4])
    assert backend.next_event() is pw.NEED_DATA
    backend.receive_data(packet(body)[4:])
    event = backend.next_event()
    assert isinstance(event, pw.StartupMessage)
    assert event.get("user") == "u"


def test_max_startup_size_is_configurable() -> None:
    backend = pw.Backend(max_startup_size=100)
    backend.receive_data(int32(105))
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid length of startup packet"):
        backend.next_event()


STARTUP_ERRORS: list[Any] = [
    pytest.param(packet(int32(pw.PROTOCOL_3_0) + cstr("user") + cstr("u")), "08P01",
                 "expected terminator as last byte", id="no-terminator"),
    pytest.param(packet(int32(pw.PROTOCOL_3_0) + cstr("user") + b"u"), "08P01",
                 "expected terminator as last byte", id="value-not-terminated"),
    pytest.param(startup_packet(pw.PROTOCOL_3_0, ("database", "d")), "28000",
                 "no PostgreSQL user name", id="no-user"),
    pytest.param(startup_packet(pw.PROTOCOL_3_0, ("user", "")), "28000",
                 "no PostgreSQL user name", id="empty-user"),
    pytest.param(startup_packet(pw.PROTOCOL_3_0, ("user", "u"), ("user", "")), "28000",
                 "no PostgreSQL user name", id="last-duplicate-user-empty"),
    pytest.param(startup_packet(2 << 16, ("user", "u")), "0A000",
                 "unsupported frontend protocol 2.0", id="protocol-2.0"),
    pytest.param(startup_packet(4 << 16, ("user", "u")), "0A000",
                 "unsupported frontend protocol 4.0", id="protocol-4.0"),
    pytest.param(startup_packet((1234 << 16) | 1, ("user", "u")), "0A000",
                 "unsupported frontend protocol 1234.1", id="protocol-1234.1"),
    pytest.param(packet(int32(pw.PROTOCOL_3_0) + b"us\xffer\0u\0\0"), "22021",
                 "invalid byte sequence", id="name-not-UTF-8"),
    # Same fault in a value: the terminator is there, so "expected terminator"
    # would send the reader looking for the wrong problem.
    pytest.param(packet(int32(pw.PROTOCOL_3_0) + cstr("user") + b"\xff\xfe\0\0"), "22021",
                 "invalid byte sequence", id="value-not-UTF-8"),
    pytest.param(packet(int32(SSL_CODE) + b"\0\0\0\0"), "08P01",
                 "invalid length of encryption request", id="SSLRequest-with-a-body"),
    pytest.param(packet(int32(GSS_CODE) + b"\0"), "08P01",
                 "invalid length of encryption request", id="GSSENCRequest-with-a-body"),
]


@pytest.mark.parametrize(("data", "sqlstate", "match"), STARTUP_ERRORS)
def test_bad_startup_packet(data: bytes, sqlstate: str, match: str) -> None:
    backend = fresh()
    backend.receive_data(data)
    with protocol_error(pw.RemoteProtocolError, sqlstate, match):
        backend.next_event()


def test_startup_message_sets_protocol_and_client_encoding() -> None:
    backend = fresh()
    backend.receive_data(startup_packet(pw.PROTOCOL_3_2, ("user", "u"),
                                        ("client_encoding", "LATIN1")))
    startup = backend.next_event()
    assert isinstance(startup, pw.StartupMessage)
    assert backend.startup == startup
    assert backend.protocol_version == pw.PROTOCOL_3_2
    assert backend.protocol_negotiation is None
    assert backend.encoding == "latin-1"
    assert backend.phase is pw.Phase.AUTHENTICATION


@pytest.mark.parametrize(
    ("version", "options", "expected"),
    [
        pytest.param((3 << 16) | 5, (), pw.NegotiateProtocolVersion(newest_minor_version=2),
                     id="minor-3.5"),
        pytest.param((3 << 16) | 0xFFFF, (), pw.NegotiateProtocolVersion(newest_minor_version=2),
                     id="minor-3.65535"),
        pytest.param(pw.PROTOCOL_3_0, ("_pq_.x",),
                     pw.NegotiateProtocolVersion(newest_minor_version=0,
                                                 unrecognized_options=("_pq_.x",)),
                     id="3.0-with-_pq_.x"),
        pytest.param((3 << 16) | 5, ("_pq_.a", "_pq_.b"),
                     pw.NegotiateProtocolVersion(newest_minor_version=2,
                                                 unrecognized_options=("_pq_.a", "_pq_.b")),
                     id="minor-3.5-with-two-options"),
    ],
)
def test_negotiation_must_be_sent_first(
    version: int, options: tuple[str, ...], expected: pw.NegotiateProtocolVersion
) -> None:
    backend = fresh()
    pairs = [("user", "u"), *((o, "1") for o in options)]
    backend.receive_data(startup_packet(version, *pairs))
    assert isinstance(backend.next_event(), pw.StartupMessage)
    assert backend.protocol_negotiation == expected
    for premature in (pw.AuthenticationOk(), pw.AuthenticationCleartextPassword(),
                      pw.NoticeResponse(severity="NOTICE", message="hi")):
        with protocol_error(pw.LocalProtocolError, "08P01", "send backend.protocol_negotiation"):
            backend.send(premature)
    assert backend.phase is pw.Phase.AUTHENTICATION
    backend.send(expected)
    assert backend.protocol_negotiation is None
    assert backend.protocol_version == (3 << 16) | expected.newest_minor_version
    backend.send(pw.AuthenticationOk())
    assert backend.phase is pw.Phase.SESSION_SETUP


def test_error_response_may_precede_the_negotiation() -> None:
    backend = fresh()
    backend.receive_data(startup_packet((3 << 16) | 5, ("user", "u")))
    backend.next_event()
    backend.send(pw.ErrorResponse(severity="FATAL", code="28P01", message="no"))
    assert backend.phase is pw.Phase.CLOSED


# ---------------------------------------------------------------------------
# Encryption requests (CVE-2021-23214) and direct TLS
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_packet", "extra"),
    [
        pytest.param(pw.SSLRequest(), startup_message().encode(), id="SSLRequest+Startup"),
        pytest.param(pw.SSLRequest(), b"\x00", id="SSLRequest+one-byte"),
        pytest.param(pw.GSSENCRequest(), startup_message().encode(), id="GSSENCRequest+Startup"),
    ],
)
def test_bytes_after_encryption_request_in_the_same_read(
    request_packet: pw.Message, extra: bytes
) -> None:
    backend = fresh()
    backend.receive_data(request_packet.encode() + extra)
    with protocol_error(pw.RemoteProtocolError, "08P01",
                        "received unencrypted data after SSL request"):
        backend.next_event()


@pytest.mark.parametrize(
    ("request_packet", "answer"),
    [
        pytest.param(pw.SSLRequest(), pw.SSLResponse(accepted=True), id="SSL-S"),
        pytest.param(pw.SSLRequest(), pw.SSLResponse(accepted=False), id="SSL-N"),
        pytest.param(pw.GSSENCRequest(), pw.GSSENCResponse(accepted=True), id="GSS-G"),
        pytest.param(pw.GSSENCRequest(), pw.GSSENCResponse(accepted=False), id="GSS-N"),
    ],
)
def test_bytes_arriving_before_the_answer_is_sent(
    request_packet: pw.Message, answer: pw.Message
) -> None:
    backend = fresh()
    backend.receive_data(request_packet.encode())
    assert backend.next_event() == request_packet
    backend.receive_data(startup_message().encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", "unencrypted data") as info:
        backend.send(answer)
    with pytest.raises(pw.RemoteProtocolError) as latched:
        backend.next_event()
    assert latched.value is info.value


def test_ssl_accepted_then_startup_over_tls() -> None:
    backend = fresh()
    backend.receive_data(pw.SSLRequest().encode())
    assert backend.next_event() == pw.SSLRequest()
    assert backend.send(pw.SSLResponse(accepted=True)) == b"S"
    assert backend.phase is pw.Phase.STARTUP
    assert isinstance(feed(backend, startup_message())[0], pw.StartupMessage)


def _after(*steps: tuple[pw.Message, pw.Message]) -> pw.Backend:
    backend = fresh()
    for request, answer in steps:
        backend.receive_data(request.encode())
        assert backend.next_event() == request
        backend.send(answer)
    return backend


SSL_S = (pw.SSLRequest(), pw.SSLResponse(accepted=True))
SSL_N = (pw.SSLRequest(), pw.SSLResponse(accepted=False))
GSS_G = (pw.GSSENCRequest(), pw.GSSENCResponse(accepted=True))
GSS_N = (pw.GSSENCRequest(), pw.GSSENCResponse(accepted=False))

# PostgreSQL (ProcessStartupPacket): after an SSLRequest, whatever the answer,
# another SSLRequest is refused; a GSSENCRequest may follow only a refused SSL;
# and symmetrically for GSSENCRequest.
NEGOTIATION_ORDER: list[Any] = [
    pytest.param([SSL_S], pw.SSLRequest(), False, id="SSL-after-SSL-accepted"),
    pytest.param([SSL_N], pw.SSLRequest(), False, id="SSL-after-SSL-refused"),
    pytest.param([SSL_S], pw.GSSENCRequest(), False, id="GSS-after-SSL-accepted"),
    pytest.param([SSL_N], pw.GSSENCRequest(), True, id="GSS-after-SSL-refused"),
    pytest.param([GSS_G], pw.GSSENCRequest(), False, id="GSS-after-GSS-accepted"),
    pytest.param([GSS_N], pw.GSSENCRequest(), False, id="GSS-after-GSS-refused"),
    pytest.param([GSS_G], pw.SSLRequest(), False, id="SSL-after-GSS-accepted"),
    pytest.param([GSS_N], pw.SSLRequest(), True, id="SSL-after-GSS-refused"),
]


@pytest.mark.parametrize(("steps", "request_packet", "allowed"), NEGOTIATION_ORDER)
def test_encryption_request_order(
    steps: list[tuple[pw.Message, pw.Message]], request_packet: pw.Message, allowed: bool
) -> None:
    backend = _after(*steps)
    backend.receive_data(request_packet.encode())
    if allowed:
        assert backend.next_event() == request_packet
    else:
        # PostgreSQL reads a repeated request code as an unsupported protocol version.
        with protocol_error(pw.RemoteProtocolError, "0A000"):
            backend.next_event()


def test_direct_tls_handshake() -> None:
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40)
    backend = fresh()
    backend.receive_data(hello[:7])
    backend.receive_data(hello[7:])
    event = backend.next_event()
    assert event == pw.DirectTLSHandshake(data=hello)
    assert backend.phase is pw.Phase.STARTUP
    assert backend.buffered == 0
    # The decrypted stream then carries the StartupMessage; no SSLRequest any more.
    assert isinstance(feed(backend, startup_message())[0], pw.StartupMessage)
    backend = fresh()
    backend.receive_data(hello)
    backend.next_event()
    backend.receive_data(pw.SSLRequest().encode())
    with protocol_error(pw.RemoteProtocolError, "0A000", "already negotiated"):
        backend.next_event()


# ---------------------------------------------------------------------------
# CancelRequest
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("key_size", [4, 32, 256], ids=lambda n: f"key-{n}-bytes")
def test_cancel_request_key_sizes(key_size: int) -> None:
    key = bytes(i % 256 for i in range(key_size))
    backend = fresh()
    backend.receive_data(packet(int32(CANCEL_CODE) + int32(77) + key))
    assert backend.next_event() == pw.CancelRequest(process_id=77, secret_key=key)
    assert backend.phase is pw.Phase.CANCEL
    backend.receive_data(b"")
    assert backend.next_event() == pw.ConnectionClosed()


@pytest.mark.parametrize("key_size", [0, 3, 257, 1000], ids=lambda n: f"key-{n}-bytes")
def test_cancel_request_key_out_of_range(key_size: int) -> None:
    backend = fresh()
    backend.receive_data(packet(int32(CANCEL_CODE) + int32(77) + b"k" * key_size))
    with protocol_error(pw.RemoteProtocolError, "08P01", f"cancel key of {key_size} bytes"):
        backend.next_event()


def test_data_after_cancel_request() -> None:
    backend = fresh()
    backend.receive_data(pw.CancelRequest(process_id=1, secret_key=b"abcd").encode())
    backend.next_event()
    backend.receive_data(b"x")
    with protocol_error(pw.RemoteProtocolError, "08P01", "after a CancelRequest"):
        backend.next_event()


# ---------------------------------------------------------------------------
# Typed messages: types and sizes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("type_code", [b"?", b"Z", b"R", b"T", b"\x00", b"1", b"K"],
                         ids=repr)
def test_unknown_message_type_after_login_refused_after_the_type_byte(type_code: bytes) -> None:
    backend = ready_backend()
    backend.receive_data(type_code)
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid frontend message type"):
        backend.next_event()


def test_unknown_message_type_during_authentication() -> None:
    backend = authenticating(pw.AuthenticationCleartextPassword())
    backend.receive_data(b"R")
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid frontend message type"):
        backend.next_event()


@pytest.mark.parametrize("type_code", [b"S", b"H", b"c", b"f", b"X"], ids=lambda c: c.decode())
def test_small_messages_over_10000_refused_from_the_header(type_code: bytes) -> None:
    backend = ready_backend()
    if type_code in b"cf":
        backend.receive_data(pw.Query(query="copy t from stdin").encode())
        backend.next_event()
        backend.send(pw.CopyInResponse())
    backend.receive_data(header(type_code, 10001))
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid message length 10001"):
        backend.next_event()


def test_copy_fail_of_exactly_10000_bytes_is_read() -> None:
    backend = ready_backend()
    backend.receive_data(pw.Query(query="copy t from stdin").encode())
    backend.next_event()
    backend.send(pw.CopyInResponse())
    message = pw.CopyFail(message="x" * 9995)
    assert len(message.encode()) == 10001  # the length word counts 10000
    assert feed(backend, message) == [message]


@pytest.mark.parametrize("message", [pw.Sync(), pw.Flush(), pw.Terminate()],
                         ids=lambda m: type(m).__name__)
def test_bodyless_message_with_a_body(message: pw.Message) -> None:
    backend = ready_backend()
    backend.receive_data(frame(message.type_code, b"\x00"))
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid message format"):
        backend.next_event()


def test_large_query_is_not_capped_small() -> None:
    backend = ready_backend()
    query = pw.Query(query="select '" + "x" * 200_000 + "'")
    assert feed(backend, query) == [query]


def test_max_message_size_caps_password_messages_too() -> None:
    backend = pw.Backend(max_message_size=100)
    feed(backend, startup_message())
    backend.send(pw.AuthenticationCleartextPassword())
    backend.receive_data(pw.PasswordMessage(password=b"x" * 5000).encode())
    with protocol_error(pw.RemoteProtocolError, "54000"):
        backend.next_event()


def test_max_message_size_refuses_a_big_query_with_54000() -> None:
    backend = ready_backend(max_message_size=1000)
    backend.receive_data(header(b"Q", 1005))
    with protocol_error(pw.RemoteProtocolError, "54000"):
        backend.next_event()


# ---------------------------------------------------------------------------
# Password messages: meaning decided by the request they answer
# ---------------------------------------------------------------------------

PASSWORD_KINDS: list[Any] = [
    pytest.param([pw.AuthenticationCleartextPassword()], b"secret\x00",
                 pw.PasswordMessage(password=b"secret"), id="cleartext-PasswordMessage"),
    pytest.param([pw.AuthenticationMD5Password(salt=b"salt")],
                 b"md5" + b"0" * 32 + b"\x00",
                 pw.PasswordMessage(password=b"md5" + b"0" * 32), id="md5-PasswordMessage"),
    pytest.param([pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",))],
                 cstr("SCRAM-SHA-256") + int32(9) + b"n,,n=,r=x",
                 pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=b"n,,n=,r=x"),
                 id="SASLInitialResponse"),
    pytest.param([pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",))],
                 cstr("SCRAM-SHA-256") + int32(-1),
                 pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=None),
                 id="SASLInitialResponse-length-minus-1"),
    pytest.param([pw.AuthenticationGSS()], b"\x60\x82token",
                 pw.GSSResponse(data=b"\x60\x82token"), id="GSS-GSSResponse"),
    pytest.param([pw.AuthenticationSSPI()], b"NTLMSSP\x00",
                 pw.GSSResponse(data=b"NTLMSSP\x00"), id="SSPI-GSSResponse"),
]


@pytest.mark.parametrize(("requests", "body", "expected"), PASSWORD_KINDS)
def test_password_message_decoded_per_request(
    requests: list[pw.Message], body: bytes, expected: pw.Message
) -> None:
    backend = authenticating(*requests)
    assert feed(backend, frame(b"p", body)) == [expected]


def test_sasl_response_after_sasl_continue() -> None:
    backend = authenticating(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",)))
    feed(backend, pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=b"n,,n=,r=x"))
    backend.send(pw.AuthenticationSASLContinue(data=b"r=xy,s=c2FsdA==,i=4096"))
    assert feed(backend, frame(b"p", b"c=biws,r=xy,p=proof")) == [
        pw.SASLResponse(data=b"c=biws,r=xy,p=proof")
    ]
    backend.send(pw.AuthenticationSASLFinal(data=b"v=sig"))
    backend.send(pw.AuthenticationOk())
    assert backend.phase is pw.Phase.SESSION_SETUP


def _answered() -> pw.Backend:
    backend = authenticating(pw.AuthenticationCleartextPassword())
    feed(backend, pw.PasswordMessage(password=b"pw"))
    return backend


PASSWORD_VIOLATIONS: list[Any] = [
    pytest.param(authenticating, b"pw\x00", "without an authentication request",
                 id="no-request-sent"),
    pytest.param(_answered, b"pw\x00", "without an authentication request",
                 id="second-answer-to-one-request"),
    pytest.param(ready_backend, b"pw\x00", "unexpected message type 'p'",
                 id="after-login"),
    pytest.param(lambda: authenticating(pw.AuthenticationCleartextPassword()), b"pw",
                 "invalid string in message", id="PasswordMessage-without-terminator"),
    pytest.param(lambda: authenticating(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",))),
                 cstr("SCRAM-SHA-256") + int32(-2), "invalid argument length -2",
                 id="SASLInitialResponse-length-minus-2"),
    pytest.param(lambda: authenticating(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",))),
                 cstr("SCRAM-SHA-256") + int32(10) + b"abc", "insufficient data",
                 id="SASLInitialResponse-data-short"),
]


@pytest.mark.parametrize(("setup", "body", "match"), PASSWORD_VIOLATIONS)
def test_password_message_violations(
    setup: Callable[[], pw.Backend], body: bytes, match: str
) -> None:
    backend = setup()
    backend.receive_data(frame(b"p", body))
    with protocol_error(pw.RemoteProtocolError, "08P01", match):
        backend.next_event()


def test_password_packet_over_65535_refused_from_the_header() -> None:
    backend = authenticating(pw.AuthenticationCleartextPassword())
    backend.receive_data(header(b"p", 65536))
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid message length 65536"):
        backend.next_event()


def test_password_packet_of_65535_is_read() -> None:
    backend = authenticating(pw.AuthenticationCleartextPassword())
    message = pw.PasswordMessage(password=b"x" * (65535 - 4 - 1))
    assert feed(backend, message) == [message]


# ---------------------------------------------------------------------------
# Backend.send: the server program's own mistakes
# ---------------------------------------------------------------------------


def _idle() -> pw.Backend:
    return ready_backend()


def _in_query() -> pw.Backend:
    backend = ready_backend()
    feed(backend, pw.Query(query="select 1"))
    return backend


def _in_setup() -> pw.Backend:
    backend = authenticating(pw.AuthenticationOk())
    backend.send(pw.BackendKeyData(process_id=1, secret_key=b"abcd"))
    return backend


def _unsynced_batch() -> pw.Backend:
    backend = ready_backend()
    feed(backend, pw.Parse(query="select 1"), pw.Bind(), pw.Execute())
    return backend


SEND_MISUSE: list[Any] = [
    pytest.param(_idle, pw.ReadyForQuery(), "no request was in flight",
                 pw.NoticeResponse(severity="NOTICE", message="n"),
                 id="ReadyForQuery-nothing-pending"),
    pytest.param(_idle, pw.DataRow(values=(b"1",)), "no request was in flight",
                 pw.ParameterStatus(name="a", value="b"), id="DataRow-when-idle"),
    pytest.param(_idle, pw.CopyData(data=b"x"), "unexpected message type 'd'",
                 pw.NotificationResponse(process_id=1, channel="c"), id="CopyData-outside-COPY"),
    pytest.param(_in_query, pw.ParseComplete(), "cannot answer a simple Query",
                 pw.CommandComplete(tag="SELECT 1"), id="ParseComplete-for-a-Query"),
    pytest.param(_idle, pw.Query(query="select 1"), "is a client message",
                 pw.ParameterStatus(name="a", value="b"), id="client-message-Query"),
    pytest.param(_idle, pw.Sync(), "is a client message",
                 pw.ParameterStatus(name="a", value="b"), id="client-message-Sync"),
    pytest.param(authenticating, pw.PasswordMessage(password=b"x"),
                 "is a client message", pw.AuthenticationOk(),
                 id="client-message-PasswordMessage"),
    pytest.param(_in_setup, pw.BackendKeyData(process_id=2, secret_key=b"abcd"),
                 "second BackendKeyData", pw.ReadyForQuery(), id="second-BackendKeyData"),
    pytest.param(lambda: authenticating(pw.AuthenticationOk()),
                 pw.BackendKeyData(process_id=2, secret_key=b"12345678"),
                 "8 bytes on protocol 3.0", pw.ReadyForQuery(),
                 id="8-byte-BackendKeyData-on-3.0"),
    pytest.param(lambda: authenticating(pw.AuthenticationCleartextPassword()),
                 pw.AuthenticationOk(), "before the client answered",
                 pw.ErrorResponse(severity="FATAL", code="28P01"),
                 id="AuthenticationOk-before-password-answered"),
    pytest.param(authenticating, pw.ParameterStatus(name="a", value="b"),
                 "unexpected message type 'S'", pw.AuthenticationOk(),
                 id="ParameterStatus-before-AuthenticationOk"),
    pytest.param(fresh, pw.AuthenticationOk(), "unexpected message type 'R'",
                 pw.ErrorResponse(severity="FATAL", code="08P01"),
                 id="AuthenticationOk-before-startup"),
    pytest.param(authenticating, pw.SSLResponse(accepted=True),
                 "unexpected SSLResponse", pw.AuthenticationOk(),
                 id="SSLResponse-without-SSLRequest"),
    pytest.param(_idle, pw.ErrorResponse(message="a\x00b"), "NUL",
                 pw.NoticeResponse(message="ab"), id="unencodable-ErrorResponse"),
]


def _state(backend: pw.Backend) -> tuple[Any, ...]:
    return (backend.phase, backend.pending_syncs, backend.busy, backend.transaction_status,
            backend.protocol_version, backend.encoding)


@pytest.mark.parametrize(("setup", "message", "match", "next_valid"), SEND_MISUSE)
def test_send_misuse_changes_nothing(
    setup: Callable[[], pw.Backend], message: pw.Message, match: str, next_valid: pw.Message
) -> None:
    backend = setup()
    before = _state(backend)
    sqlstate = "22023" if match == "NUL" else "08P01"
    with protocol_error(pw.LocalProtocolError, sqlstate, match):
        backend.send(message)
    assert _state(backend) == before
    assert backend.send(next_valid) == next_valid.encode()


def test_ready_for_query_for_an_unsynced_batch_is_local_misuse() -> None:
    backend = _unsynced_batch()
    backend.send(pw.ParseComplete())
    backend.send(pw.BindComplete())
    backend.send(pw.CommandComplete(tag="SELECT 1"))
    with protocol_error(pw.LocalProtocolError, "08P01"):
        backend.send(pw.ReadyForQuery())


def test_error_response_helper_reports_a_protocol_error() -> None:
    backend = fresh()
    backend.receive_data(startup_packet(pw.PROTOCOL_3_0, ("database", "d")))
    with pytest.raises(pw.RemoteProtocolError) as info:
        backend.next_event()
    answer = pw.error_response(info.value)
    assert answer == pw.ErrorResponse(
        severity="FATAL", severity_nonlocalized="FATAL", code="28000",
        message="no PostgreSQL user name specified in startup packet",
    )
    backend.send(answer)
    assert backend.phase is pw.Phase.CLOSED


# ---------------------------------------------------------------------------
# COPY FROM STDIN, Terminate, end of stream
# ---------------------------------------------------------------------------


def test_copy_in_ignores_sync_and_flush_and_copy_done_returns_to_ready() -> None:
    backend = ready_backend()
    feed(backend, pw.Query(query="copy t from stdin"))
    backend.send(pw.CopyInResponse(format=0, column_formats=(0,)))
    assert backend.phase is pw.Phase.COPY_IN
    assert backend.pending_syncs == 1
    events = feed(backend, pw.CopyData(data=b"1\n"), pw.Sync(), pw.Flush(),
                  pw.CopyData(data=b"2\n"), pw.Sync())
    assert events == [pw.CopyData(data=b"1\n"), pw.Sync(), pw.Flush(),
                      pw.CopyData(data=b"2\n"), pw.Sync()]
    assert backend.pending_syncs == 1
    assert backend.phase is pw.Phase.COPY_IN
    assert feed(backend, pw.CopyDone()) == [pw.CopyDone()]
    assert backend.phase is pw.Phase.READY
    backend.send(pw.CommandComplete(tag="COPY 2"))
    backend.send(pw.ReadyForQuery())
    assert backend.pending_syncs == 0


def test_copy_in_refuses_a_query() -> None:
    backend = ready_backend()
    feed(backend, pw.Query(query="copy t from stdin"))
    backend.send(pw.CopyInResponse())
    backend.receive_data(pw.Query(query="select 1").encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", "unexpected message type 'Q'"):
        backend.next_event()


def test_copy_fail_returns_to_ready_and_the_server_reports_the_error() -> None:
    backend = ready_backend()
    feed(backend, pw.Query(query="copy t from stdin"))
    backend.send(pw.CopyInResponse())
    feed(backend, pw.CopyFail(message="client gave up"))
    assert backend.phase is pw.Phase.READY
    with protocol_error(pw.LocalProtocolError, "08P01", "unexpected message type 'd'"):
        backend.send(pw.CopyData(data=b"x"))
    backend.send(pw.ErrorResponse(severity="ERROR", code="57014", message="COPY from stdin failed"))
    backend.send(pw.ReadyForQuery())
    assert not backend.busy


def test_data_after_terminate() -> None:
    backend = ready_backend()
    backend.receive_data(pw.Terminate().encode() + pw.Query(query="select 1").encode())
    assert backend.next_event() == pw.Terminate()
    assert backend.phase is pw.Phase.CLOSED
    with protocol_error(pw.RemoteProtocolError, "08P01", "after the connection closed"):
        backend.next_event()


def test_eof_after_terminate_closes() -> None:
    backend = ready_backend()
    backend.receive_data(pw.Terminate().encode())
    backend.receive_data(b"")
    assert drain(backend) == [pw.Terminate(), pw.ConnectionClosed()]


def test_eof_mid_message_and_at_a_boundary() -> None:
    backend = ready_backend()
    backend.receive_data(pw.Query(query="select 1").encode()[:-1])
    backend.receive_data(b"")
    with protocol_error(pw.RemoteProtocolError, "08P01", "in the middle of a message"):
        backend.next_event()
    backend = fresh()
    backend.receive_data(startup_message().encode()[:6])
    backend.receive_data(b"")
    with protocol_error(pw.RemoteProtocolError, "08P01", "6 bytes of it received"):
        backend.next_event()
    backend = ready_backend()
    backend.receive_data(pw.Sync().encode())
    backend.receive_data(b"")
    assert drain(backend) == [pw.Sync(), pw.ConnectionClosed()]
    assert backend.phase is pw.Phase.CLOSED


def test_remote_error_is_latched() -> None:
    backend = ready_backend()
    backend.receive_data(b"?")
    with pytest.raises(pw.RemoteProtocolError) as first:
        backend.next_event()
    with pytest.raises(pw.RemoteProtocolError) as again:
        backend.next_event()
    assert again.value is first.value


def test_client_encoding_from_startup_decodes_later_messages() -> None:
    backend = ready_backend(startup=pw.StartupMessage.from_dict(
        {"user": "u", "client_encoding": "WIN1251"}))
    # ready_backend reported client_encoding UTF8 with ParameterStatus: that wins.
    assert backend.encoding == "utf-8"
    backend = fresh()
    feed(backend, pw.StartupMessage.from_dict({"user": "u", "client_encoding": "WIN1251"}))
    backend.send(pw.AuthenticationOk())
    backend.send(pw.ReadyForQuery())
    assert feed(backend, frame(b"Q", b"\xcf\xf0\xe8\xe2\xe5\xf2\x00")) == [
        pw.Query(query="Привет")
    ]


def test_undecoded_types_come_raw_but_password_is_always_decoded() -> None:
    backend = pw.Backend(decode={b"Q"})
    feed(backend, startup_message())
    backend.send(pw.AuthenticationCleartextPassword())
    assert feed(backend, pw.PasswordMessage(password=b"pw")) == [
        pw.PasswordMessage(password=b"pw")
    ]
    backend.send(pw.AuthenticationOk())
    backend.send(pw.ReadyForQuery())
    events = feed(backend, pw.Parse(query="select 1"), pw.Sync(), pw.Query(query="x"))
    assert [type(e).__name__ for e in events] == ["RawMessage", "RawMessage", "Query"]
    assert backend.pending_syncs == 2
    raw = events[0]
    assert isinstance(raw, pw.RawMessage)
    assert backend.decode(raw) == pw.Parse(query="select 1")

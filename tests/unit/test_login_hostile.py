"""Malformed and hostile inputs to a login, each with the one error it must produce.

One side is a real ClientConnection or ServerConnection; the other is played
by hand: bytes made with the message classes (or by hand where the classes
refuse to make them), a real ScramServer/ScramClient whose output we tamper
with, or a bare TLSSession. Each case names the exact exception class and
SQLSTATE (or the LoginFailed event and the FATAL ErrorResponse queued with
it), and a checker makes sure nothing else came out: no other exception type,
no login, no bytes that should not have been sent.

Client side: plaintext injected with the 'S' (CVE-2021-23222), an
ErrorResponse answering SSLRequest, SCRAM messages with bad iteration counts,
nonces, salts, signatures, skipped or repeated steps, PLUS over plaintext,
password requests over plaintext, GSSAPI/SSPI/Kerberos.
Server side: bytes before our answer to SSLRequest (CVE-2021-23214), SSLRequest
inside TLS, direct TLS without ALPN or without a server context, and hostile
SCRAM and password messages.
"""

from __future__ import annotations

import base64
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

import pgwire as pw
from pgwire.auth import (
    AuthenticationFailed,
    ChannelBinding,
    ScramClient,
    ScramError,
    ScramServer,
    md5_password_response,
    scram_sha_256_secret,
)
from pgwire.client import ClientConnection
from pgwire.login import LoginFailed, LoginRefused
from pgwire.server import ServerConnection
from pgwire.tls import TLSError, TLSSession, load_certificate_der, server_context

from .helpers import drain
from .test_login_pairs import PKI, USER, LoginPair, make_pki

PASSWORD = "hunter2"
SECRET = scram_sha_256_secret(PASSWORD, iterations=16)



@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("hostile-pki"))


@pytest.fixture(scope="module")
def tls_context(pki: PKI) -> ssl.SSLContext:
    return server_context(pki.server_cert, pki.server_key)


# ---------------------------------------------------------------------------
# helpers


def frame(type_code: bytes, body: bytes) -> bytes:
    return type_code + struct.pack("!i", len(body) + 4) + body


def auth_request(subtype: int, body: bytes = b"") -> bytes:
    return frame(b"R", struct.pack("!i", subtype) + body)


def split_frames(data: bytes) -> list[tuple[bytes, bytes]]:
    """Typed messages as (type byte, body)."""
    frames = []
    while data:
        length = struct.unpack("!i", data[1:5])[0]
        frames.append((data[:1], data[5:1 + length]))
        data = data[1 + length:]
    return frames


def expect_error(call: Callable[[], object], error_class: type[pw.ProtocolError],
                 sqlstate: str, match: str | None = None) -> pw.ProtocolError:
    """``call`` raises exactly ``error_class`` (not a subclass or sibling) with ``sqlstate``."""
    with pytest.raises(pw.ProtocolError, match=match) as info:
        call()
    error = info.value
    assert type(error) is error_class, f"{type(error).__name__}: {error}"
    assert error.sqlstate == sqlstate, str(error)
    return error


# -- a client facing a hand-played server -------------------------------------------


def new_client(**options: Any) -> ClientConnection:
    settings: dict[str, Any] = {"user": USER, "password": PASSWORD, "sslmode": "disable"}
    settings.update(options)
    client = ClientConnection(**settings)
    client.start()
    client.data_to_send()  # the StartupMessage or SSLRequest
    return client


def client_messages(client: ClientConnection, kind: type[pw.Message]) -> list[Any]:
    """Decode what the client sent as ``kind`` messages (plaintext only)."""
    return [kind.decode(body) for _, body in split_frames(client.data_to_send())]


@dataclass
class ScramHandshake:
    """A plaintext client mid-SCRAM, and a real ScramServer to make honest answers."""

    client: ClientConnection
    server: ScramServer
    client_nonce: bytes
    server_first: bytes

    @classmethod
    def start(cls, mechanisms: tuple[str, ...] = ("SCRAM-SHA-256",),
              **options: Any) -> ScramHandshake:
        client = new_client(**options)
        client.receive_data(pw.AuthenticationSASL(mechanisms=mechanisms).encode())
        drain(client)
        (initial,) = client_messages(client, pw.SASLInitialResponse)
        server = ScramServer(SECRET)
        server_first = server.receive_client_first(initial.mechanism, initial.data)
        client_nonce = initial.data.split(b"r=", 1)[1]
        return cls(client, server, client_nonce, server_first)

    def send(self, *messages: bytes | pw.Message) -> list[Any]:
        self.client.receive_data(b"".join(
            m if isinstance(m, bytes) else m.encode() for m in messages))
        return drain(self.client)

    def honest_first(self) -> list[Any]:
        return self.send(pw.AuthenticationSASLContinue(data=self.server_first))

    def client_final(self) -> bytes:
        (response,) = client_messages(self.client, pw.SASLResponse)
        data: bytes = response.data
        return data


def continue_with(data: bytes) -> pw.Message:
    return pw.AuthenticationSASLContinue(data=data)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# -- a hand-played client facing a ServerConnection -------------------------------------


class TLSClient:
    """A bare TLS client (no ClientConnection) that can send any plaintext inside TLS."""

    def __init__(self, server: ServerConnection, *, direct: bool = False,
                 alpn: list[str] | None = None) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if alpn:
            context.set_alpn_protocols(alpn)
        self.server = server
        self.events: list[Any] = []
        if not direct:
            server.receive_data(pw.SSLRequest().encode())
            self.events += drain(server)
            assert server.data_to_send() == b"S"
        self.tls = TLSSession(context, server_side=False)

    def handshake(self) -> None:
        for _ in range(10):
            done = self.tls.do_handshake()
            self.server.receive_data(self.tls.outgoing())
            self.events += drain(self.server)
            self.tls.receive_encrypted(self.server.data_to_send())
            if done and self.server.tls:
                return
        raise AssertionError("the TLS handshake did not finish")

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.server.receive_data(self.tls.outgoing())

    def read(self) -> bytes:
        self.tls.receive_encrypted(self.server.data_to_send())
        return self.tls.read()


def startup(user: str = USER) -> bytes:
    return pw.StartupMessage.from_dict({"user": user, "database": "app"}).encode()


def scram_server(pki: PKI, context: ssl.SSLContext | None = None,
                 tls: TLSClient | None = None) -> tuple[ServerConnection, Callable[[bytes], None]]:
    """A ServerConnection that sent AuthenticationSASL, and a function sending it bytes
    (through ``tls`` when given)."""
    server = tls.server if tls is not None else ServerConnection(
        ssl_context=context, server_certificate=load_certificate_der(pki.server_cert))
    send: Callable[[bytes], None] = tls.send if tls is not None else server.receive_data
    send(startup())
    assert isinstance(drain(server)[-1], pw.StartupMessage)
    server.authenticate("scram-sha-256", SECRET)
    sasl = tls.read() if tls is not None else server.data_to_send()
    mechanisms = pw.AuthenticationSASL.decode(split_frames(sasl)[-1][1]).mechanisms
    expected = ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256") if tls else ("SCRAM-SHA-256",)
    assert mechanisms == expected
    return server, send


def assert_login_failed(server: ServerConnection, events: list[Any], sqlstate: str,
                        queued: bytes | None = None) -> LoginFailed:
    """The last event is LoginFailed(sqlstate), a FATAL error with it is queued, and the
    server's state machine is closed."""
    assert events, "no event"
    failed = events[-1]
    assert isinstance(failed, LoginFailed), events
    assert failed.sqlstate == sqlstate, failed
    assert not any(type(e).__name__ == "Authenticated" for e in events)
    data = queued if queued is not None else server.data_to_send()
    errors = [pw.ErrorResponse.decode(body) for code, body in split_frames(data) if code == b"E"]
    assert len(errors) == 1, split_frames(data)
    assert (errors[0].severity, errors[0].code, errors[0].message) == (
        "FATAL", sqlstate, failed.message)
    assert server.backend.phase is pw.Phase.CLOSED
    return failed


# ---------------------------------------------------------------------------
# client: the encryption request


@pytest.mark.parametrize(("sslmode", "answer"), [("require", b"S"), ("prefer", b"S"),
                                                 ("prefer", b"N")])
def test_plaintext_injected_with_the_ssl_answer(sslmode: str, answer: bytes) -> None:
    """CVE-2021-23222: bytes that arrive together with the answer were not encrypted."""
    client = new_client(sslmode=sslmode)
    client.receive_data(answer + pw.AuthenticationOk().encode())
    expect_error(client.next_event, pw.RemoteProtocolError, "08P01",
                 "received unencrypted data after the server's answer")
    assert client.data_to_send() == b""  # no ClientHello, no StartupMessage
    assert client.authentication_method is None
    expect_error(client.next_event, pw.RemoteProtocolError, "08P01")  # latched


def test_error_response_to_ssl_request_is_not_shown() -> None:
    client = new_client(sslmode="prefer")
    client.receive_data(pw.ErrorResponse(severity="FATAL", code="XX000",
                                         message="please visit evil.example").encode())
    error = expect_error(client.next_event, pw.RemoteProtocolError, "08P01",
                         "answered the encryption request with an error")
    assert "evil" not in str(error)
    assert client.data_to_send() == b""


def test_invalid_ssl_answer() -> None:
    client = new_client(sslmode="prefer")
    client.receive_data(b"X")
    expect_error(client.next_event, pw.RemoteProtocolError, "08P01",
                 "invalid response to SSL negotiation")


def test_no_tls_under_sslmode_require() -> None:
    client = new_client(sslmode="require")
    client.receive_data(b"N")
    expect_error(client.next_event, LoginRefused, "08001", "server does not support SSL")
    assert client.data_to_send() == b""  # the StartupMessage was not sent in the clear


def test_garbage_instead_of_a_tls_handshake() -> None:
    client = new_client(sslmode="require")
    client.receive_data(b"S")
    assert drain(client) == [pw.SSLResponse(accepted=True)]
    client.receive_data(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    error = expect_error(client.next_event, TLSError, "08P01")
    assert isinstance(error, TLSError)
    assert error.reason == "WRONG_VERSION_NUMBER"


def test_server_hangs_up_during_the_tls_handshake() -> None:
    client = new_client(sslmode="require")
    client.receive_data(b"S")
    drain(client)
    client.receive_data(b"")
    expect_error(client.next_event, TLSError, "08P01")


def test_server_hangs_up_after_the_ssl_request() -> None:
    client = new_client(sslmode="prefer")
    client.receive_data(b"")
    assert drain(client) == [pw.ConnectionClosed()]


# ---------------------------------------------------------------------------
# client: authentication requests it must refuse


@pytest.mark.parametrize(("request_bytes", "options", "error_class", "sqlstate", "match"), [
    pytest.param(auth_request(7), {}, LoginRefused, "0A000", "AuthenticationGSS", id="gss"),
    pytest.param(auth_request(9), {}, LoginRefused, "0A000", "AuthenticationSSPI", id="sspi"),
    pytest.param(auth_request(2), {}, LoginRefused, "0A000", "AuthenticationKerberosV5",
                 id="kerberos"),
    pytest.param(auth_request(6), {}, pw.RemoteProtocolError, "0A000", "method 6",
                 id="scm-credential"),
    pytest.param(auth_request(8, b"token"), {}, pw.RemoteProtocolError, "08P01",
                 "outside a GSSAPI", id="gss-continue-alone"),
    pytest.param(auth_request(3), {}, LoginRefused, "28000", "unencrypted",
                 id="cleartext-over-plaintext"),
    pytest.param(auth_request(5, b"salt"), {}, LoginRefused, "28000", "unencrypted",
                 id="md5-over-plaintext"),
    pytest.param(auth_request(5, b"sal"), {"allow_plaintext_password": True},
                 pw.RemoteProtocolError, "08P01", None, id="md5-short-salt"),
    pytest.param(auth_request(5, b"salty"), {"allow_plaintext_password": True},
                 pw.RemoteProtocolError, "08P01", None, id="md5-long-salt"),
    pytest.param(auth_request(3), {"allow_plaintext_password": True, "password": None},
                 LoginRefused, "28000", "no password", id="cleartext-without-password"),
    pytest.param(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",)).encode(),
                 {"password": None}, LoginRefused, "28000", "no password",
                 id="scram-without-password"),
    pytest.param(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256-PLUS",)).encode(), {},
                 LoginRefused, "28000", "over a connection without TLS",
                 id="plus-only-over-plaintext"),
    pytest.param(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256-PLUS",
                                                   "SCRAM-SHA-256")).encode(), {},
                 LoginRefused, "28000", "over a connection without TLS",
                 id="plus-offered-over-plaintext"),
    pytest.param(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-1", "OAUTHBEARER")).encode(), {},
                 ScramError, "0A000", "no SASL mechanism we support", id="unknown-mechanisms"),
    pytest.param(auth_request(10, b"\0"), {}, pw.RemoteProtocolError, "08P01",
                 "no mechanism", id="empty-mechanism-list"),
    pytest.param(auth_request(10, b"SCRAM-SHA-256"), {}, pw.RemoteProtocolError, "08P01", None,
                 id="unterminated-mechanism-list"),
    pytest.param(auth_request(11, b"r=x,s=c2FsdA==,i=1"), {}, pw.RemoteProtocolError, "08P01",
                 "outside a SASL exchange", id="sasl-continue-first"),
    pytest.param(auth_request(12, b"v=x"), {}, pw.RemoteProtocolError, "08P01",
                 "outside a SASL exchange", id="sasl-final-first"),
    pytest.param(b"R\0\0\0\x03\0", {}, pw.RemoteProtocolError, "08P01", None,
                 id="truncated-request"),
])
def test_client_refuses_the_request(request_bytes: bytes, options: dict[str, Any],
                                    error_class: type[pw.ProtocolError], sqlstate: str,
                                    match: str | None) -> None:
    client = new_client(**options)
    client.receive_data(request_bytes)
    expect_error(lambda: drain(client), error_class, sqlstate, match)
    assert client.data_to_send() == b"", "nothing may be sent after a refusal"
    assert client.authentication_method is None


def test_client_refuses_trust_with_channel_binding_required(pki: PKI,
                                                            tls_context: ssl.SSLContext) -> None:
    pair = LoginPair(ClientConnection(user=USER, sslmode="require", channel_binding="require"),
                     ServerConnection(ssl_context=tls_context), method="trust").run()
    assert type(pair.client_error) is LoginRefused
    assert pair.client_error.sqlstate == "28000"
    assert pair.client.authentication_method is None


def test_client_sends_plaintext_passwords_only_when_allowed() -> None:
    client = new_client(allow_plaintext_password=True)
    client.receive_data(pw.AuthenticationMD5Password(salt=b"abcd").encode())
    drain(client)
    (message,) = client_messages(client, pw.PasswordMessage)
    assert message.password == md5_password_response(USER, PASSWORD, b"abcd")


# ---------------------------------------------------------------------------
# client: a hostile SCRAM server


def _server_first_with(handshake: ScramHandshake, **replace: bytes) -> bytes:
    parts = dict(item.split(b"=", 1) for item in handshake.server_first.split(b","))
    for name, value in replace.items():
        parts[name.encode()] = value
    return b",".join(name + b"=" + value for name, value in parts.items())


SERVER_FIRST_CASES: list[tuple[str, Callable[[ScramHandshake], bytes], type[pw.ProtocolError],
                               str]] = [
    ("iterations-0", lambda h: _server_first_with(h, i=b"0"), ScramError, "08P01"),
    ("iterations-1e11", lambda h: _server_first_with(h, i=b"100000000000"), ScramError,
     "54000"),
    ("iterations-above-limit", lambda h: _server_first_with(h, i=b"1000001"), ScramError,
     "54000"),
    ("iterations-negative", lambda h: _server_first_with(h, i=b"-1"), ScramError, "08P01"),
    ("iterations-not-a-number", lambda h: _server_first_with(h, i=b"4096x"), ScramError,
     "08P01"),
    ("iterations-5000-digits", lambda h: _server_first_with(h, i=b"9" * 5_000),
     ScramError, "54000"),
    ("nonce-not-ours", lambda h: _server_first_with(h, r=b"AAAA" + h.client_nonce), ScramError,
     "08P01"),
    ("nonce-without-server-part", lambda h: _server_first_with(h, r=h.client_nonce),
     ScramError, "08P01"),
    ("nonce-truncated", lambda h: _server_first_with(h, r=h.client_nonce[:-1]), ScramError,
     "08P01"),
    ("salt-empty", lambda h: _server_first_with(h, s=b""), ScramError, "08P01"),
    ("salt-not-base64", lambda h: _server_first_with(h, s=b"!!!"), ScramError, "08P01"),
    ("salt-non-canonical-base64", lambda h: _server_first_with(h, s=b"c2FsdB=="), ScramError,
     "08P01"),
    ("attributes-reordered",
     lambda h: b",".join(reversed(h.server_first.split(b","))), ScramError, "08P01"),
    ("iterations-missing", lambda h: h.server_first.rsplit(b",", 1)[0], ScramError, "08P01"),
    ("truncated-to-nonce", lambda h: h.server_first.split(b",")[0], ScramError, "08P01"),
    ("truncated-mid-attribute", lambda h: h.server_first[:-3] + b",i", ScramError, "08P01"),
    ("empty", lambda h: b"", ScramError, "08P01"),
    ("garbage", lambda h: b"\xff\xfe hello", ScramError, "08P01"),
    ("nul-byte", lambda h: h.server_first + b"\0", ScramError, "08P01"),
    ("extension-first", lambda h: b"m=ext," + h.server_first, ScramError, "0A000"),
    ("trailing-garbage", lambda h: h.server_first + b",garbage", ScramError, "08P01"),
    ("trailing-comma", lambda h: h.server_first + b",", ScramError, "08P01"),
    # libpq: "malformed SCRAM message (garbage at end of server-first-message)"
    ("trailing-attribute", lambda h: h.server_first + b",x=1", ScramError, "08P01"),
]


@pytest.mark.parametrize(("make", "error_class", "sqlstate"),
                         [case[1:] for case in SERVER_FIRST_CASES],
                         ids=[case[0] for case in SERVER_FIRST_CASES])
def test_hostile_server_first_message(make: Callable[[ScramHandshake], bytes],
                                      error_class: type[pw.ProtocolError],
                                      sqlstate: str) -> None:
    handshake = ScramHandshake.start()
    expect_error(lambda: handshake.send(continue_with(make(handshake))), error_class, sqlstate)
    assert handshake.client.data_to_send() == b"", "no client-final may be sent"
    expect_error(handshake.client.next_event, error_class, sqlstate)  # latched


def _wrong_signature(handshake: ScramHandshake) -> bytes:
    return b"v=" + b64(b"\x01" * 32)


SERVER_FINAL_CASES: list[tuple[str, Callable[[ScramHandshake, bytes], bytes],
                               type[pw.ProtocolError], str]] = [
    ("wrong-signature", lambda h, honest: _wrong_signature(h), AuthenticationFailed, "28000"),
    ("signature-of-another-exchange",
     lambda h, honest: honest[:-6] + (b"AAAAA=" if honest[-6:] != b"AAAAA=" else b"BBBBB="),
     AuthenticationFailed, "28000"),
    ("error-invalid-proof", lambda h, honest: b"e=invalid-proof", AuthenticationFailed, "28P01"),
    ("error-other", lambda h, honest: b"e=other-error", AuthenticationFailed, "28000"),
    ("signature-short", lambda h, honest: b"v=" + b64(b"\x01" * 16), ScramError, "08P01"),
    ("signature-not-base64", lambda h, honest: b"v=not base64!", ScramError, "08P01"),
    ("empty", lambda h, honest: b"", ScramError, "08P01"),
    ("garbage", lambda h, honest: b"garbage", ScramError, "08P01"),
    ("wrong-attribute", lambda h, honest: b"x" + honest[1:], ScramError, "08P01"),
    ("trailing-garbage", lambda h, honest: honest + b",junk", ScramError, "08P01"),
    # libpq: "malformed SCRAM message (garbage at end of server-final-message)"
    ("trailing-attribute", lambda h, honest: honest + b",x=1", ScramError, "08P01"),
]


@pytest.mark.parametrize(("make", "error_class", "sqlstate"),
                         [case[1:] for case in SERVER_FINAL_CASES],
                         ids=[case[0] for case in SERVER_FINAL_CASES])
def test_hostile_server_final_message(make: Callable[[ScramHandshake, bytes], bytes],
                                      error_class: type[pw.ProtocolError],
                                      sqlstate: str) -> None:
    handshake = ScramHandshake.start()
    handshake.honest_first()
    honest = handshake.server.receive_client_final(handshake.client_final())
    final = make(handshake, honest)
    assert final != honest
    expect_error(lambda: handshake.send(pw.AuthenticationSASLFinal(data=final),
                                        pw.AuthenticationOk()), error_class, sqlstate)
    assert handshake.client.authentication_method is None


def test_honest_scram_server_is_accepted() -> None:
    """The harness itself: the same exchange, untampered, logs in."""
    handshake = ScramHandshake.start()
    handshake.honest_first()
    final = handshake.server.receive_client_final(handshake.client_final())
    events = handshake.send(pw.AuthenticationSASLFinal(data=final), pw.AuthenticationOk())
    assert [type(e) for e in events] == [pw.AuthenticationSASLFinal, pw.AuthenticationOk]
    assert handshake.client.authentication_method == "scram-sha-256"


def test_authentication_ok_without_sasl_final() -> None:
    """Mutual authentication cannot be skipped: Ok right after SASLContinue is refused."""
    handshake = ScramHandshake.start()
    handshake.honest_first()
    handshake.client_final()
    expect_error(lambda: handshake.send(pw.AuthenticationOk()), pw.RemoteProtocolError,
                 "08P01", "before AuthenticationSASLFinal")
    assert handshake.client.authentication_method is None


def test_authentication_ok_right_after_sasl() -> None:
    handshake = ScramHandshake.start()
    expect_error(lambda: handshake.send(pw.AuthenticationOk()), pw.RemoteProtocolError,
                 "08P01", "before AuthenticationSASLFinal")


# A server that skips or repeats SCRAM steps is a remote fault: the client must
# raise a RemoteProtocolError (08P01), never LocalProtocolError, which means
# "you, the caller, misused the API".


def test_sasl_final_instead_of_sasl_continue() -> None:
    handshake = ScramHandshake.start()
    expect_error(lambda: handshake.send(pw.AuthenticationSASLFinal(data=b"v=" + b64(b"x" * 32))),
                 ScramError, "08P01")
    assert handshake.client.data_to_send() == b""


def test_second_sasl_continue() -> None:
    handshake = ScramHandshake.start()
    handshake.honest_first()
    handshake.client_final()
    expect_error(lambda: handshake.send(continue_with(handshake.server_first)),
                 ScramError, "08P01")


def test_second_authentication_sasl() -> None:
    handshake = ScramHandshake.start()
    expect_error(lambda: handshake.send(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",))),
                 pw.RemoteProtocolError, "08P01")


def test_md5_request_in_the_middle_of_scram() -> None:
    handshake = ScramHandshake.start(allow_plaintext_password=True)
    expect_error(lambda: handshake.send(pw.AuthenticationMD5Password(salt=b"abcd")),
                 pw.RemoteProtocolError, "08P01")
    assert handshake.client.data_to_send() == b""


def test_iteration_limit_is_configurable() -> None:
    handshake = ScramHandshake.start(max_scram_iterations=8)
    expect_error(handshake.honest_first, ScramError, "54000", '"16"')  # SECRET has 16


# ---------------------------------------------------------------------------
# server: the encryption request


@pytest.mark.parametrize("with_tls", [True, False], ids=["ssl-on", "ssl-off"])
@pytest.mark.parametrize("request_message", [pw.SSLRequest(), pw.GSSENCRequest()],
                         ids=["SSLRequest", "GSSENCRequest"])
def test_bytes_before_the_ssl_answer(with_tls: bool, request_message: pw.Message,
                                     tls_context: ssl.SSLContext) -> None:
    """CVE-2021-23214: what the client sent before our answer was not encrypted."""
    server = ServerConnection(ssl_context=tls_context if with_tls else None)
    server.receive_data(request_message.encode() + startup())
    expect_error(server.next_event, pw.RemoteProtocolError, "08P01",
                 "received unencrypted data after SSL request")
    assert server.data_to_send() == b"", "no answer byte may go out"
    assert not server.tls
    expect_error(server.next_event, pw.RemoteProtocolError, "08P01")  # latched


def test_plaintext_after_accepting_tls(tls_context: ssl.SSLContext) -> None:
    server = ServerConnection(ssl_context=tls_context)
    server.receive_data(pw.SSLRequest().encode())
    drain(server)
    assert server.data_to_send() == b"S"
    server.receive_data(startup())
    error = expect_error(server.next_event, TLSError, "08P01")
    assert isinstance(error, TLSError)
    assert error.reason == "WRONG_VERSION_NUMBER"


def test_client_hangs_up_during_the_tls_handshake(tls_context: ssl.SSLContext) -> None:
    server = ServerConnection(ssl_context=tls_context)
    server.receive_data(pw.SSLRequest().encode())
    drain(server)
    server.receive_data(b"")
    expect_error(server.next_event, TLSError, "08P01")


@pytest.mark.parametrize("direct", [False, True], ids=["after-sslrequest", "direct"])
@pytest.mark.parametrize(("inner", "sqlstate", "match"), [
    (pw.SSLRequest().encode(), "0A000", "SSLRequest after encryption"),
    (pw.GSSENCRequest().encode(), "0A000", "GSSENCRequest after encryption"),
    (b"\x16\x03\x01\x00\x05hello", "08P01", "TLS handshake after encryption"),
], ids=["SSLRequest", "GSSENCRequest", "ClientHello"])
def test_encryption_request_inside_tls(direct: bool, inner: bytes, sqlstate: str, match: str,
                                       tls_context: ssl.SSLContext) -> None:
    server = ServerConnection(ssl_context=tls_context)
    client = TLSClient(server, direct=direct, alpn=["postgresql"])
    client.handshake()
    assert server.tls
    client.send(inner)
    expect_error(server.next_event, pw.RemoteProtocolError, sqlstate, match)
    assert client.read() == b"", "nothing may be answered"


def test_second_ssl_request_after_refusal() -> None:
    server = ServerConnection()
    server.receive_data(pw.SSLRequest().encode())
    drain(server)
    assert server.data_to_send() == b"N"
    server.receive_data(pw.SSLRequest().encode())
    expect_error(server.next_event, pw.RemoteProtocolError, "0A000")


def test_encryption_request_with_a_bad_length() -> None:
    server = ServerConnection()
    server.receive_data(struct.pack("!ii", 12, (1234 << 16) | 5679) + b"\0\0\0\0")
    expect_error(server.next_event, pw.RemoteProtocolError, "08P01",
                 "invalid length of encryption request packet")
    assert server.data_to_send() == b""


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]], ids=["no-alpn", "wrong-alpn"])
def test_direct_tls_without_alpn_postgresql(alpn: list[str] | None,
                                            tls_context: ssl.SSLContext) -> None:
    server = ServerConnection(ssl_context=tls_context)
    client = TLSClient(server, direct=True, alpn=alpn)
    error = expect_error(client.handshake, TLSError, "08P01", "without ALPN")
    assert not server.tls
    assert type(error) is TLSError
    assert not any(isinstance(e, pw.StartupMessage) for e in client.events)


def test_direct_tls_to_a_server_without_tls(tls_context: ssl.SSLContext) -> None:
    client_tls = TLSSession(ssl.create_default_context(), server_side=False,
                            server_hostname="localhost")
    client_tls.do_handshake()
    server = ServerConnection()
    server.receive_data(client_tls.outgoing())
    expect_error(server.next_event, pw.RemoteProtocolError, "08P01",
                 "no TLS configured")
    assert server.data_to_send() == b""


def test_direct_tls_client_against_a_server_without_tls(pki: PKI) -> None:
    pair = LoginPair(ClientConnection(user=USER, sslmode="require", sslnegotiation="direct"),
                     ServerConnection(), method="trust").run()
    assert type(pair.server_error) is pw.RemoteProtocolError
    assert pair.server_error.sqlstate == "08P01"
    assert pair.client.authentication_method is None
    # The server hangs up: the client learns its handshake cannot finish.
    pair.client.receive_data(b"")
    expect_error(pair.client.next_event, TLSError, "08P01")


@pytest.mark.parametrize("side", ["client", "server"])
def test_peer_vanishes_without_close_notify(side: str, pki: PKI,
                                            tls_context: ssl.SSLContext) -> None:
    """After a TLS login, the peer closes the socket without a TLS close_notify (a
    crash, or a client that just exits). That is the end of the stream: the
    connection must report ConnectionClosed (or raise from next_event), not raise
    from receive_data and then wait for data forever."""
    pair = LoginPair(ClientConnection(user=USER, sslmode="require"),
                     ServerConnection(ssl_context=tls_context), method="trust").run()
    assert pair.client.authentication_method == "trust"
    connection: ClientConnection | ServerConnection = (
        pair.client if side == "client" else pair.server)
    connection.receive_data(b"")  # must not raise: this only records the EOF
    assert drain(connection)[-1:] == [pw.ConnectionClosed()]


# ---------------------------------------------------------------------------
# server: a hostile SCRAM client


def _initial(mechanism: str, data: bytes | None) -> bytes:
    return pw.SASLInitialResponse(mechanism=mechanism, data=data).encode()


CLIENT_FIRST_CASES: list[tuple[str, str, bytes, str]] = [
    ("garbage", "SCRAM-SHA-256", b"hello", "08P01"),
    ("empty", "SCRAM-SHA-256", b"", "08P01"),
    ("nul-byte", "SCRAM-SHA-256", b"n,,n=,r=abc\0", "08P01"),
    ("no-nonce", "SCRAM-SHA-256", b"n,,n=", "08P01"),
    ("empty-nonce", "SCRAM-SHA-256", b"n,,n=,r=", "08P01"),
    ("nonce-non-printable", "SCRAM-SHA-256", b"n,,n=,r=a\x01b", "08P01"),
    ("missing-comma-after-flag", "SCRAM-SHA-256", b"n,n=,r=abc", "08P01"),
    ("unknown-flag", "SCRAM-SHA-256", b"x,,n=,r=abc", "08P01"),
    ("authzid", "SCRAM-SHA-256", b"n,a=admin,n=,r=abc", "0A000"),
    ("extension", "SCRAM-SHA-256", b"n,,m=ext,n=,r=abc", "0A000"),
    ("unknown-mechanism", "SCRAM-SHA-1", b"n,,n=,r=abc", "08P01"),
    ("plus-not-offered", "SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc", "08P01"),
    ("p-flag-not-offered", "SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc", "08P01"),
    ("attributes-reordered", "SCRAM-SHA-256", b"n,,r=abc,n=", "08P01"),
]


@pytest.mark.parametrize(("mechanism", "data", "sqlstate"),
                         [case[1:] for case in CLIENT_FIRST_CASES],
                         ids=[case[0] for case in CLIENT_FIRST_CASES])
def test_hostile_client_first_message(mechanism: str, data: bytes, sqlstate: str,
                                      pki: PKI) -> None:
    server, send = scram_server(pki)
    send(_initial(mechanism, data))
    events = drain(server)
    assert isinstance(events[0], pw.SASLInitialResponse)
    assert_login_failed(server, events, sqlstate)


def test_client_first_split_over_an_empty_initial_response(pki: PKI) -> None:
    """PostgreSQL allows SASLInitialResponse without data: it answers with an empty
    SASLContinue and takes the client-first message from the next SASLResponse."""
    server, send = scram_server(pki)
    client = ScramClient(PASSWORD, mechanisms=("SCRAM-SHA-256",))
    send(_initial("SCRAM-SHA-256", None))
    drain(server)
    (_, body), = split_frames(server.data_to_send())
    assert pw.AuthenticationSASLContinue.decode(body).data == b""
    send(pw.SASLResponse(data=client.client_first()).encode())
    drain(server)
    (_, body), = split_frames(server.data_to_send())
    final = client.receive_server_first(pw.AuthenticationSASLContinue.decode(body).data)
    send(pw.SASLResponse(data=final).encode())
    events = drain(server)
    assert [type(e).__name__ for e in events] == ["SASLResponse", "Authenticated"]
    assert events[1].method == "scram-sha-256"


def test_y_flag_over_plaintext_is_accepted(pki: PKI) -> None:
    """'y' (I could bind, you did not offer PLUS) is honest over plaintext."""
    server, send = scram_server(pki)
    binding = ChannelBinding.from_certificate(load_certificate_der(pki.server_cert))
    client = ScramClient(PASSWORD, channel_binding=binding, mechanisms=("SCRAM-SHA-256",))
    first = client.client_first()
    assert first.startswith(b"y,,")
    send(_initial(client.mechanism, first))
    drain(server)
    (_, body), = split_frames(server.data_to_send())
    send(pw.SASLResponse(data=client.receive_server_first(
        pw.AuthenticationSASLContinue.decode(body).data)).encode())
    events = drain(server)
    assert events[-1].method == "scram-sha-256"
    assert events[-1].channel_bound is False


def _tls_scram_server(pki: PKI, tls_context: ssl.SSLContext
                      ) -> tuple[ServerConnection, TLSClient, ChannelBinding]:
    server = ServerConnection(ssl_context=tls_context,
                              server_certificate=load_certificate_der(pki.server_cert))
    tls = TLSClient(server)
    tls.handshake()
    scram_server(pki, tls=tls)
    binding = ChannelBinding.from_certificate(load_certificate_der(pki.server_cert))
    return server, tls, binding


def test_y_flag_when_plus_was_offered_over_tls(pki: PKI, tls_context: ssl.SSLContext) -> None:
    """A downgrade: a man in the middle removed SCRAM-SHA-256-PLUS from our offer."""
    server, tls, binding = _tls_scram_server(pki, tls_context)
    client = ScramClient(PASSWORD, channel_binding=binding, mechanisms=("SCRAM-SHA-256",))
    tls.send(_initial(client.mechanism, client.client_first()))
    events = drain(server)
    assert_login_failed(server, events, "28000", queued=tls.read())


@pytest.mark.parametrize(("mechanism", "first", "sqlstate"), [
    ("SCRAM-SHA-256-PLUS", b"p=tls-unique,,n=,r=abc", "08P01"),
    ("SCRAM-SHA-256-PLUS", b"n,,n=,r=abc", "08P01"),
    ("SCRAM-SHA-256-PLUS", b"y,,n=,r=abc", "08P01"),
    ("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc", "08P01"),
], ids=["unsupported-binding-type", "plus-with-n", "plus-with-y", "plain-with-p"])
def test_inconsistent_channel_binding_over_tls(mechanism: str, first: bytes, sqlstate: str,
                                               pki: PKI, tls_context: ssl.SSLContext) -> None:
    server, tls, _ = _tls_scram_server(pki, tls_context)
    tls.send(_initial(mechanism, first))
    assert_login_failed(server, drain(server), sqlstate, queued=tls.read())


def test_plus_with_another_certificate_hash(pki: PKI, tls_context: ssl.SSLContext) -> None:
    """A client behind a TLS-terminating man in the middle sees another certificate."""
    server, tls, _ = _tls_scram_server(pki, tls_context)
    rogue = ChannelBinding.from_certificate(load_certificate_der(pki.rogue_server[0]))
    client = ScramClient(PASSWORD, channel_binding=rogue)
    tls.send(_initial(client.mechanism, client.client_first()))
    drain(server)
    (_, body), = split_frames(tls.read())
    tls.send(pw.SASLResponse(data=client.receive_server_first(
        pw.AuthenticationSASLContinue.decode(body).data)).encode())
    assert_login_failed(server, drain(server), "28000", queued=tls.read())


def test_plus_over_tls_succeeds_with_the_hand_driven_client(pki: PKI,
                                                            tls_context: ssl.SSLContext) -> None:
    """The harness itself: an honest PLUS exchange through TLSClient logs in, bound."""
    server, tls, binding = _tls_scram_server(pki, tls_context)
    client = ScramClient(PASSWORD, channel_binding=binding)
    tls.send(_initial(client.mechanism, client.client_first()))
    drain(server)
    (_, body), = split_frames(tls.read())
    tls.send(pw.SASLResponse(data=client.receive_server_first(
        pw.AuthenticationSASLContinue.decode(body).data)).encode())
    events = drain(server)
    assert events[-1].method == "scram-sha-256-plus"
    assert events[-1].channel_bound is True


def _client_final_cases() -> list[Any]:
    def proof_flipped(final: bytes) -> bytes:
        head, proof = final.rsplit(b",p=", 1)
        raw = bytearray(base64.b64decode(proof))
        raw[0] ^= 1
        return head + b",p=" + b64(bytes(raw))

    def nonce_changed(final: bytes) -> bytes:
        parts = final.split(b",")
        parts[1] = parts[1][:-1] + (b"A" if parts[1][-1:] != b"A" else b"B")
        return b",".join(parts)

    cases: list[tuple[str, Callable[[bytes], bytes], str]] = [
        ("wrong-proof", proof_flipped, "28P01"),
        ("wrong-nonce", nonce_changed, "08P01"),
        ("nonce-of-client-only", lambda f: f.replace(f.split(b",")[1],
                                                     f.split(b",")[1][:26]), "08P01"),
        ("no-proof", lambda f: f.rsplit(b",p=", 1)[0], "08P01"),
        ("proof-not-base64", lambda f: f.rsplit(b",p=", 1)[0] + b",p=%%%", "08P01"),
        ("proof-short", lambda f: f.rsplit(b",p=", 1)[0] + b",p=" + b64(b"x" * 16), "08P01"),
        ("garbage-after-proof", lambda f: f + b",x=1", "08P01"),
        ("channel-binding-changed", lambda f: b"c=eSws" + f[len(b"c=biws"):], "08P01"),
        ("channel-binding-missing", lambda f: f[len(b"c=biws,"):], "08P01"),
        ("empty", lambda f: b"", "08P01"),
        ("garbage", lambda f: b"\x00\x01garbage", "08P01"),
        ("truncated", lambda f: f[:20], "08P01"),
    ]
    return [pytest.param(make, sqlstate, id=name) for name, make, sqlstate in cases]


@pytest.mark.parametrize(("tamper", "sqlstate"), _client_final_cases())
def test_hostile_client_final_message(tamper: Callable[[bytes], bytes], sqlstate: str,
                                      pki: PKI) -> None:
    server, send = scram_server(pki)
    client = ScramClient(PASSWORD, mechanisms=("SCRAM-SHA-256",))
    send(_initial(client.mechanism, client.client_first()))
    drain(server)
    (_, body), = split_frames(server.data_to_send())
    honest = client.receive_server_first(pw.AuthenticationSASLContinue.decode(body).data)
    assert honest.startswith(b"c=biws,r=")
    send(pw.SASLResponse(data=tamper(honest)).encode())
    events = drain(server)
    assert isinstance(events[0], pw.SASLResponse)
    failed = assert_login_failed(server, events, sqlstate)
    if sqlstate == "28P01":
        assert failed.message == f'password authentication failed for user "{USER}"'


# ---------------------------------------------------------------------------
# server: framing-level garbage and password messages


def _password_server(method: str, secret: str | None = PASSWORD
                     ) -> ServerConnection:
    server = ServerConnection()
    server.receive_data(startup())
    drain(server)
    server.authenticate(method, secret)  # type: ignore[arg-type]
    server.data_to_send()
    return server


@pytest.mark.parametrize(("method", "raw", "match"), [
    ("scram-sha-256", frame(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", 100) + b"short"),
     None),
    ("scram-sha-256", frame(b"p", b"SCRAM-SHA-256"), None),
    ("scram-sha-256", frame(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", -2)), None),
    ("scram-sha-256", pw.PasswordMessage(password=b"hunter2").encode(), None),
    ("password", frame(b"p", b"no terminator"), None),
    ("password", frame(b"p", b"two\0strings\0"), None),
    ("password", frame(b"p", b"x" * 70_000 + b"\0"), None),
    ("md5", b"p\xff\xff\xff\xff", None),
    ("md5", pw.Query(query="select 1").encode(), "unexpected message type"),
    ("md5", b"\x00\x00\x00\x08", None),
], ids=["sasl-data-length-lies", "sasl-mechanism-unterminated", "sasl-negative-length",
        "password-message-for-sasl", "password-unterminated", "password-trailing-bytes",
        "password-over-65535-bytes", "negative-frame-length", "query-during-login",
        "untyped-packet-during-login"])
def test_framing_garbage_raises(method: str, raw: bytes, match: str | None) -> None:
    server = _password_server(method)
    server.receive_data(raw)
    expect_error(server.next_event, pw.RemoteProtocolError, "08P01", match)
    expect_error(server.next_event, pw.RemoteProtocolError, "08P01", match)  # latched


@pytest.mark.parametrize(("method", "secret", "password"), [
    ("password", PASSWORD, b""),
    ("password", PASSWORD, b"x" * 65_000),
    ("password", PASSWORD, PASSWORD.encode() + b" "),
    ("password", None, PASSWORD.encode()),
    ("md5", PASSWORD, b"md5zz"),
    ("md5", PASSWORD, b""),
    ("md5", PASSWORD, PASSWORD.encode()),  # the cleartext instead of the MD5 answer
    ("md5", None, b"md5" + b"0" * 32),
])
def test_wrong_password_message(method: str, secret: str | None, password: bytes) -> None:
    server = _password_server(method, secret)
    server.receive_data(pw.PasswordMessage(password=password).encode())
    events = drain(server)
    assert isinstance(events[0], pw.PasswordMessage)
    assert_login_failed(server, events, "28P01")


def test_md5_answer_replayed_with_another_salt() -> None:
    """An MD5 answer is bound to the salt of that connection: replaying it fails."""
    server = _password_server("md5")
    salt_of_another_connection = b"\x00\x01\x02\x03"
    server.receive_data(pw.PasswordMessage(password=md5_password_response(
        USER, PASSWORD, salt_of_another_connection)).encode())
    assert_login_failed(server, drain(server), "28P01")


def test_sasl_response_after_login_failed(pki: PKI) -> None:
    server, send = scram_server(pki)
    send(_initial("SCRAM-SHA-256", b"garbage"))
    assert_login_failed(server, drain(server), "08P01")
    send(pw.SASLResponse(data=b"c=biws,r=x,p=y").encode())
    expect_error(server.next_event, pw.RemoteProtocolError, "08P01")


def test_terminate_during_login(pki: PKI) -> None:
    server, send = scram_server(pki)
    send(pw.Terminate().encode())
    events = drain(server)
    assert [type(e) for e in events] == [pw.Terminate]
    assert server.data_to_send() == b""


@pytest.mark.parametrize(("packet", "sqlstate"), [
    (pw.StartupMessage.from_dict({"database": "app"}).encode(), "28000"),
    (pw.StartupMessage(protocol_version=2 << 16,
                       parameters=(("user", USER),)).encode(), "0A000"),
    (struct.pack("!i", 10_001) + b"\0" * 10_000, "08P01"),
    (struct.pack("!i", 3), "08P01"),
], ids=["no-user", "protocol-2", "startup-too-long", "startup-too-short"])
def test_hostile_startup_packet(packet: bytes, sqlstate: str) -> None:
    server = ServerConnection()
    server.receive_data(packet)
    expect_error(server.next_event, pw.RemoteProtocolError, sqlstate)
    assert server.data_to_send() == b""

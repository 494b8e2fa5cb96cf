"""Faults during the login itself: the client's TLS handshake, the proxy's login upstream.

Client leg: after the proxy answers an SSLRequest with 'S' (or on a direct
TLS connection) the client sends half a ClientHello and hangs up, or a whole
one and hangs up (FIN or RST) before its Finished; or it stalls
mid-handshake, or right after a complete handshake, and ``limits.login_timeout``
must end it; or it pipelines a plaintext startup packet behind its
SSLRequest (CVE-2021-23214). A client that ends TLS with close_notify has
ended the connection, before its startup packet or after its login. Each
time the proxy keeps no socket, thread nor session.

Server leg: the upstream is a fake server (`FakeUpstream`) that breaks the
login the proxy makes to it, in both auth modes (passthrough relays the
client's login, proxy mode logs in on its own): it closes at once, closes
after the StartupMessage, sends AuthenticationSASL and closes, answers with
bytes that are no auth request, stalls, or refuses the password (FATAL
28P01); in proxy mode it also plays an impostor whose SCRAM proof is wrong or
missing; asked for TLS, it says 'S' and breaks the handshake, or injects
plaintext behind its 'S' (CVE-2021-23222). The client must get one FATAL
with the SQLSTATE docs/proxy.md gives for it, then the end of the stream;
the proxy must close its side of the server link and come back to its idle
counts.

And the real server's login process dies: SIGKILL to the backend that waits
for a client's SCRAM answer (passthrough).
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import ssl
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

import pgwire as pw
from pgwire.client import ClientConnection
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.pki import CertificateAuthority

from .toolkit import (
    HANGUPS,
    TIMEOUT,
    ProxyProcess,
    Quiet,
    check_audit,
    errors_of,
    hang_up,
    kill_backend,
    postmaster_pid,
    raw_connect,
    read_until_closed,
    wait_until,
)

pytestmark = pytest.mark.fault

SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSSENC_REQUEST = struct.pack("!II", 8, 80877104)
#: Seconds of `limits.login_timeout` for the stalls.
LOGIN_TIMEOUT = 1


# -- the client's TLS handshake -----------------------------------------------------------


@pytest.fixture(scope="module")
def proxy_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    authority = CertificateAuthority.create(tmp_path_factory.mktemp("login-ca"), "login CA")
    return authority.issue_server_certificate("proxy")


def client_context() -> ssl.SSLContext:
    """A TLS client that checks nothing and offers ALPN "postgresql" (which
    direct TLS needs and a negotiated connection ignores)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["postgresql"])
    return context


def client_hello() -> bytes:
    """The first flight of a TLS client: one ClientHello record."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def said_s(address: tuple[str, int]) -> socket.socket:
    """A connection whose SSLRequest the proxy accepted."""
    sock = raw_connect(address)
    sock.sendall(SSL_REQUEST)
    assert sock.recv(1) == b"S"
    return sock


def vanish_mid_handshake(address: tuple[str, int], negotiation: str, cut: str,
                         how: str) -> None:
    """Start a TLS handshake (after an SSLRequest, or ``direct``ly), then hang up
    ``how``: after half the ClientHello, or after all of it and the proxy's
    answer but before the client's Finished."""
    hello = client_hello()
    sock = said_s(address) if negotiation == "sslrequest" else raw_connect(address)
    if cut == "partial_hello":
        sock.sendall(hello[:len(hello) // 2])
    else:
        sock.sendall(hello)
        # The proxy's flight (ServerHello ... its Finished) arrives; ours never goes.
        assert sock.recv(5)[:1] == b"\x16", "no TLS handshake record from the proxy"
    hang_up(sock, how)


def test_client_vanishes_or_stalls_in_the_tls_handshake(
    adapter: str, cluster: PostgresCluster, tmp_path: Path,
    proxy_certificate: tuple[Path, Path],
) -> None:
    cert, key = proxy_certificate
    with ProxyProcess(adapter, (cluster.host, cluster.port), tmp_path, toml=(
            f"[limits]\nlogin_timeout = {LOGIN_TIMEOUT}\nshutdown_timeout = 2\n"
            f'[client_tls]\ncert = "{cert}"\nkey = "{key}"\n')) as proxy:
        baseline = proxy.warm_up(cluster)
        for negotiation in ("sslrequest", "direct"):
            for cut in ("partial_hello", "whole_hello"):
                for how in HANGUPS:
                    vanish_mid_handshake(proxy.address, negotiation, cut, how)
                    proxy.assert_back_to(baseline)
        # Half a ClientHello, then nothing.
        with said_s(proxy.address) as sock:
            sock.sendall(client_hello()[:20])
            read_until_closed(sock)
        proxy.assert_back_to(baseline)
        # TLS up, then no startup packet: closed without a word, as PostgreSQL does.
        with said_s(proxy.address) as sock, client_context().wrap_socket(sock) as tls:
            assert tls.version() is not None
            assert read_tls_until_closed(tls) == b""
        proxy.assert_back_to(baseline)
        assert proxy.counter("login_timeouts") == 2
        # A plaintext startup packet behind the SSLRequest, in the same segment
        # (CVE-2021-23214): it must not be taken for a login.
        with raw_connect(proxy.address) as sock:
            sock.sendall(SSL_REQUEST + pw.StartupMessage(parameters=(
                ("user", cluster.superuser), ("database", "postgres"))).encode())
            reply = read_until_closed(sock)
        assert reply[:1] in (b"", b"E"), reply
        proxy.assert_back_to(baseline)
        assert proxy.stop() == 0
    check_audit(proxy.audit_records())


def tls_login(address: tuple[str, int], cluster: PostgresCluster) -> ssl.SSLSocket:
    """A client logged in through the proxy over TLS (negotiated with an SSLRequest)."""
    tls = client_context().wrap_socket(said_s(address))
    connection = ClientConnection(user=cluster.superuser, password=cluster.superuser_password,
                                  database="postgres", sslmode="disable",
                                  parameters={"application_name": "close-notify"})
    connection.start()
    while True:
        if data := connection.data_to_send():
            tls.sendall(data)
        event = connection.next_event()
        if event is pw.NEED_DATA:
            connection.receive_data(tls.recv(65536))
        elif isinstance(event, pw.ReadyForQuery):
            return tls
        else:
            assert not isinstance(event, pw.ErrorResponse | pw.ConnectionClosed), event


#: Seconds the proxy has to close a connection after the client's close_notify.
CLOSE_WAIT = 3.0


def test_a_tls_close_notify_ends_the_session(
    adapter: str, cluster: PostgresCluster, tmp_path: Path,
    proxy_certificate: tuple[Path, Path],
) -> None:
    """A client that ends TLS with close_notify has ended its stream, as a TCP
    FIN would (PostgreSQL reads it as the end of the connection): the proxy
    must end the session at once, not keep it (and its server backend) until
    a timeout, which after the login there is none of by default."""
    cert, key = proxy_certificate
    with ProxyProcess(adapter, (cluster.host, cluster.port), tmp_path, toml=(
            '[limits]\nshutdown_timeout = 2\n'
            f'[client_tls]\ncert = "{cert}"\nkey = "{key}"\n')) as proxy:
        baseline = proxy.warm_up(cluster)
        kept_open = []
        for when in ("before the startup packet", "after the login"):
            tls = (client_context().wrap_socket(said_s(proxy.address))
                   if when.startswith("before") else tls_login(proxy.address, cluster))
            tls.settimeout(CLOSE_WAIT)
            try:
                tls.unwrap()  # sends close_notify; returns on the proxy's, or its close
            except TimeoutError:
                kept_open.append(when)
            except (ssl.SSLError, OSError):
                pass  # the proxy closed without a close_notify of its own
            finally:
                tls.close()  # a TCP close ends what the close_notify did not
            proxy.assert_back_to(baseline)
        assert kept_open == [], (f"the proxy kept the connection open {CLOSE_WAIT:g} s after "
                                 f"the client's close_notify: {kept_open}")
        assert proxy.counter("login_timeouts") == 0
        assert proxy.stop() == 0
    check_audit(proxy.audit_records())


def read_tls_until_closed(tls: ssl.SSLSocket) -> bytes:
    """What the proxy sends until it closes the TLS connection (with or without
    a close_notify; a reset counts as a close)."""
    tls.settimeout(LOGIN_TIMEOUT + TIMEOUT)
    received = b""
    while True:
        try:
            chunk = tls.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError):
            return received
        if not chunk:
            return received
        received += chunk


# -- a fake upstream that breaks the proxy's login ---------------------------------------

#: What the fake server does with one connection.
FAULTS = ("close_at_once", "close_after_startup", "sasl_then_close", "http_reply",
          "unexpected_message", "stall", "fatal_28p01")
#: An impostor that does not know the password, in proxy mode (where the proxy is
#: the SCRAM client and must check the server's proof): it sends a SCRAM nonce
#: that does not extend the proxy's, a wrong server signature, or no signature
#: at all, and then AuthenticationOk and ReadyForQuery as if all were well.
IMPOSTOR_FAULTS = ("scram_foreign_nonce", "scram_wrong_signature", "scram_no_signature")
#: What it does when the proxy asks for TLS: says 'S', then breaks the handshake.
TLS_FAULTS = ("tls_then_close", "tls_then_reset", "tls_then_http_reply", "tls_then_stall",
              "tls_with_injected_bytes")

SASL = struct.pack("!cII", b"R", 4 + 4 + 15, 10) + b"SCRAM-SHA-256\0\0"
HTTP_REPLY = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
COMMAND_COMPLETE = b"C" + struct.pack("!I", 4 + 7) + b"SELECT\0"
_FATAL_FIELDS = (b"SFATAL\0VFATAL\0C28P01\0"
                 b'Mpassword authentication failed for user "postgres"\0\0')
FATAL_28P01 = b"E" + struct.pack("!I", 4 + len(_FATAL_FIELDS)) + _FATAL_FIELDS
READY = b"Z" + struct.pack("!I", 5) + b"I"


def authentication(code: int, data: bytes = b"") -> bytes:
    """An Authentication* message: AuthenticationOk (0), SASLContinue (11), SASLFinal (12)."""
    return b"R" + struct.pack("!II", 8 + len(data), code) + data


class FakeUpstream:
    """A TCP server on a free loopback port that plays `fault` (one of `FAULTS`)
    on each connection it accepts, after answering 'N' to an SSLRequest or a
    GSSENCRequest. Where it does not close itself, it waits for the proxy to
    close the link; `open_links` counts the links the proxy left open."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.fault = FAULTS[0]
        self.startups: list[bytes] = []
        self._open = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True,
                                          name="fake-upstream")
        self._accepter.start()

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closing.set()
        self.listener.close()
        self._accepter.join(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)

    def open_links(self) -> int:
        with self._lock:
            return self._open

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._closing.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._open += 1
            thread = threading.Thread(target=self._serve, args=(sock, self.fault),
                                      daemon=True, name="fake-upstream-link")
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, fault: str) -> None:
        try:
            sock.settimeout(0.1)
            if fault == "close_at_once":
                return
            if fault in TLS_FAULTS:
                self._break_tls(sock, fault)
                return
            startup = self._read_startup(sock)
            if startup is None:
                return
            self.startups.append(startup)
            if fault == "close_after_startup":
                return
            if fault in IMPOSTOR_FAULTS:
                self._impersonate(sock, fault)
                return
            if fault == "sasl_then_close":
                sock.sendall(SASL)
                return
            if fault == "fatal_28p01":
                sock.sendall(FATAL_28P01)
                return
            if fault in ("http_reply", "unexpected_message"):
                sock.sendall(HTTP_REPLY if fault == "http_reply" else COMMAND_COMPLETE)
            self._wait_for_close(sock)
        except OSError:
            return
        finally:
            sock.close()
            with self._lock:
                self._open -= 1

    def _impersonate(self, sock: socket.socket, fault: str) -> None:
        sock.sendall(SASL)
        initial = self._read_message(sock)
        if initial is None:
            return
        client_first = initial[initial.index(b"\0") + 5:]
        client_nonce = dict(part.split(b"=", 1) for part in client_first.split(b",")[2:])[b"r"]
        nonce = b"someone-else" if fault == "scram_foreign_nonce" else client_nonce + b"imp"
        server_first = b"r=" + nonce + b",s=" + base64.b64encode(b"salt" * 4) + b",i=4096"
        sock.sendall(authentication(11, server_first))
        if self._read_message(sock) is None:  # the client's proof
            return
        if fault == "scram_wrong_signature":
            sock.sendall(authentication(12, b"v=" + base64.b64encode(bytes(32))))
        sock.sendall(authentication(0) + READY)
        self._wait_for_close(sock)

    def _read_message(self, sock: socket.socket) -> bytes | None:
        """The body of the proxy's next message (its type byte dropped)."""
        header = self._read(sock, 5)
        if header is None:
            return None
        return self._read(sock, struct.unpack("!I", header[1:])[0] - 4)

    def _break_tls(self, sock: socket.socket, fault: str) -> None:
        request = self._read(sock, 8)
        if request != SSL_REQUEST:
            return
        if fault == "tls_with_injected_bytes":
            # Plaintext right behind the 'S', as a man in the middle would inject
            # it (CVE-2021-23222): the proxy must not take it for the server's.
            sock.sendall(b"S" + FATAL_28P01)
            self._wait_for_close(sock)
            return
        sock.sendall(b"S")
        if self._read(sock, 5) is None:  # the head of the proxy's ClientHello
            return
        if fault == "tls_then_reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif fault == "tls_then_http_reply":
            sock.sendall(HTTP_REPLY)
            self._wait_for_close(sock)
        elif fault == "tls_then_stall":
            self._wait_for_close(sock)

    def _read_startup(self, sock: socket.socket) -> bytes | None:
        while True:
            header = self._read(sock, 4)
            if header is None:
                return None
            body = self._read(sock, struct.unpack("!I", header)[0] - 4)
            if body is None:
                return None
            packet = header + body
            if packet not in (SSL_REQUEST, GSSENC_REQUEST):
                return packet
            sock.sendall(b"N")

    def _read(self, sock: socket.socket, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            try:
                chunk = sock.recv(size - len(data))
            except TimeoutError:
                if self._closing.is_set():
                    return None
                continue
            if not chunk:
                return None
            data += chunk
        return data

    def _wait_for_close(self, sock: socket.socket) -> None:
        while not self._closing.is_set():
            try:
                if not sock.recv(65536):
                    return
            except TimeoutError:
                continue


#: The password the client (passthrough) or the proxy (proxy mode) gives.
PASSWORD = "not-checked"
AUTH_MODES = {
    "passthrough": "",
    "proxy": ('[auth]\nmode = "proxy"\nmethod = "trust"\n'
              f'upstream_user = "postgres"\nupstream_password = "{PASSWORD}"\n'),
}

#: The SQLSTATE of the one FATAL the client must get, per fault (docs/proxy.md:
#: 08006 for a server that closed unexpectedly or a login past login_timeout,
#: 08P01 for a server that broke the protocol, the server's own 28P01).
EXPECTED = {
    "close_at_once": "08006",
    "close_after_startup": "08006",
    "sasl_then_close": "08006",
    "http_reply": "08P01",
    "unexpected_message": "08P01",
    "stall": "08006",
    "fatal_28p01": "28P01",
    # The proxy's own SCRAM checks (proxy mode): a nonce the proxy did not start
    # and an AuthenticationOk without a proof break the protocol; a wrong proof
    # is a failed login (28000: not the client's password that was wrong).
    "scram_foreign_nonce": "08P01",
    "scram_wrong_signature": "28000",
    "scram_no_signature": "08P01",
}


def log_in(address: tuple[str, int], application_name: str) -> list[Any]:
    """A client's login through the proxy, and everything it got until the end."""
    connection = ClientConnection(user="postgres", password=PASSWORD, database="postgres",
                                  sslmode="disable",
                                  parameters={"application_name": application_name})
    with raw_connect(address) as sock:
        sock.settimeout(LOGIN_TIMEOUT + TIMEOUT)
        connection.start()
        events: list[Any] = []
        while True:
            if data := connection.data_to_send():
                # When the proxy has gone, still read what it said before.
                with contextlib.suppress(OSError):
                    sock.sendall(data)
            event = connection.next_event()
            if event is pw.NEED_DATA:
                try:
                    connection.receive_data(sock.recv(65536))
                except ConnectionResetError:
                    connection.receive_data(b"")
                continue
            events.append(event)
            if isinstance(event, pw.ConnectionClosed):
                return events


def fatal_of(events: list[Any]) -> tuple[str, str] | None:
    """(severity, SQLSTATE) of the one ErrorResponse before the end of the stream."""
    errors = [(str(e.severity), str(e.sqlstate)) for e in errors_of(events)]
    assert len(errors) <= 1 and events[-1] == pw.ConnectionClosed(), events
    return errors[0] if errors else None


@pytest.mark.parametrize("auth", list(AUTH_MODES))
def test_the_server_breaks_the_login(adapter: str, auth: str, tmp_path: Path) -> None:
    with FakeUpstream() as upstream, ProxyProcess(adapter, upstream.address, tmp_path, toml=(
            f"[limits]\nlogin_timeout = {LOGIN_TIMEOUT}\nconnect_timeout = {LOGIN_TIMEOUT}\n"
            f"shutdown_timeout = 2\n{AUTH_MODES[auth]}")) as proxy:
        upstream.fault = "close_at_once"
        log_in(proxy.address, "warm-up")
        baseline = proxy.quiet(disconnects=1)
        seen: dict[str, tuple[str, str] | None] = {}
        for fault in FAULTS + (IMPOSTOR_FAULTS if auth == "proxy" else ()):
            upstream.fault = fault
            events = log_in(proxy.address, fault)
            assert not any(isinstance(e, pw.ReadyForQuery) for e in events), events
            seen[fault] = fatal_of(events)
            proxy.assert_back_to(baseline)
            wait_until(lambda: upstream.open_links() == 0,
                       f"the proxy to close its link to the server ({fault})")
        assert {f: s for f, s in seen.items() if s != ("FATAL", EXPECTED[f])} == {}, seen
        assert proxy.counter("login_timeouts") == 1  # the stall
        assert proxy.stop() == 0
    check_audit(proxy.audit_records())


#: What the client gets when the server breaks the TLS handshake the proxy asked
#: for: 08001 (could not establish TLS), 08006 when login_timeout ends a stall, 08P01
#: for plaintext behind the server's 'S' (a protocol violation).
EXPECTED_TLS = {"tls_then_close": "08001", "tls_then_reset": "08001",
                "tls_then_http_reply": "08001", "tls_then_stall": "08006",
                "tls_with_injected_bytes": "08P01"}


@pytest.mark.parametrize("auth", list(AUTH_MODES))
def test_the_server_breaks_the_tls_handshake(adapter: str, auth: str, tmp_path: Path) -> None:
    with FakeUpstream() as upstream, ProxyProcess(adapter, upstream.address, tmp_path, toml=(
            f"[limits]\nlogin_timeout = {LOGIN_TIMEOUT}\nshutdown_timeout = 2\n"
            f'{AUTH_MODES[auth]}[upstream_tls]\nsslmode = "require"\n')) as proxy:
        upstream.fault = "tls_then_close"
        log_in(proxy.address, "warm-up")
        baseline = proxy.quiet(disconnects=1)
        seen: dict[str, tuple[str, str] | None] = {}
        for fault in TLS_FAULTS:
            upstream.fault = fault
            seen[fault] = fatal_of(log_in(proxy.address, fault))
            proxy.assert_back_to(baseline)
            wait_until(lambda: upstream.open_links() == 0,
                       f"the proxy to close its link to the server ({fault})")
        assert {f: s for f, s in seen.items() if s != ("FATAL", EXPECTED_TLS[f])} == {}, seen
        assert proxy.stop() == 0
    check_audit(proxy.audit_records())


# -- the real server's login process dies -------------------------------------------------


def logins_in_progress(cluster: PostgresCluster) -> set[int]:
    """The server processes still authenticating a client: their process title
    ends in "authentication" (PostgreSQL 15 does not list them in
    pg_stat_activity before the login ends; 18 does)."""
    parent = postmaster_pid(cluster)
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            title = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"authentication" in title:
            found.add(int(entry))
    return found


def test_backend_killed_during_the_login(proxy: ProxyProcess, baseline: Quiet,
                                         cluster: PostgresCluster) -> None:
    before = logins_in_progress(cluster)
    with raw_connect(proxy.address) as sock:
        sock.sendall(pw.StartupMessage(parameters=(
            ("user", cluster.superuser), ("database", "postgres"),
            ("application_name", "killed-login"))).encode())
        kind = sock.recv(1)
        assert kind == b"R", kind  # AuthenticationSASL: the server waits for our answer
        wait_until(lambda: len(logins_in_progress(cluster) - before) == 1,
                   "the server's login process")
        [victim] = logins_in_progress(cluster) - before
        kill_backend(cluster, victim)
        rest = read_until_closed(sock)
    messages = frames(b"R" + rest)
    assert messages[0][0] == b"R", messages
    assert [error_fields(body) for kind, body in messages[1:]] == [("FATAL", "08006")], messages
    proxy.assert_back_to(baseline)
    assert proxy.stop() == 0
    check_audit(proxy.audit_records())


def frames(data: bytes) -> list[tuple[bytes, bytes]]:
    """Backend messages, as (type byte, body), from a byte stream that ends whole."""
    found = []
    while data:
        length = struct.unpack("!I", data[1:5])[0]
        found.append((data[:1], data[5:1 + length]))
        data = data[1 + length:]
    return found


def error_fields(body: bytes) -> tuple[str, str]:
    """(severity, SQLSTATE) of an ErrorResponse body."""
    fields = {part[:1]: part[1:].decode() for part in body.split(b"\0") if part}
    return fields.get(b"V", ""), fields.get(b"C", "")

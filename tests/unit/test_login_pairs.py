"""ClientConnection against ServerConnection, joined in memory: the whole login matrix.

No network: :class:`LoginPair` moves ``data_to_send()`` from each side into
the other's ``receive_data()`` (whole, or in chunks down to one byte, with the
receiver's events drained after every chunk) until neither has anything to
say. The matrix crosses the server's method and stored secret, TLS on the
server, and the client's ``sslmode``, ``channel_binding`` and
``allow_plaintext_password``; :func:`expected_outcome` states the policy, and
every case checks that both sides agree (``Authenticated.method`` equals
``ClientConnection.authentication_method``) or that the exact side refuses with
the exact error and SQLSTATE. Then protocol 3.2 negotiation, direct TLS,
byte-at-a-time delivery and a few single cases.

The certificates come from throwaway CAs made with :mod:`pgwire.testing.pki`
once per session (:func:`make_pki`); tests/unit/test_login_hostile.py shares them.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import pgwire as pw
from pgwire.auth import ScramError, md5_secret, scram_sha_256_secret
from pgwire.client import ClientConnection
from pgwire.login import Authenticated, LoginFailed, LoginRefused
from pgwire.server import AuthMethod, ServerConnection
from pgwire.testing.pki import CertificateAuthority
from pgwire.tls import TLSError, load_certificate_der, server_context

USER = "alice"
PASSWORD = "pässwörd"
#: A cheap iteration count keeps the matrix fast; 4096 is tested separately.
ITERATIONS = 32


# ---------------------------------------------------------------------------
# a throwaway PKI


@dataclass(frozen=True)
class PKI:
    """Paths of the throwaway certificates (all keys unencrypted)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    #: Common name ``alice`` (USER), signed by the CA.
    client_cert: tuple[Path, Path]
    #: A localhost certificate from another CA, which clients do not trust.
    rogue_server: tuple[Path, Path]
    #: A localhost certificate signed with Ed25519: no channel binding possible.
    ed25519_server: tuple[Path, Path]


def make_pki(directory: Path) -> PKI:
    """A CA with a localhost server certificate and a client certificate for ``alice``;
    a rogue CA with its own localhost certificate; an Ed25519 server certificate."""
    ca = CertificateAuthority.create(directory / "ca", "ca")
    rogue = CertificateAuthority.create(directory / "rogue-ca", "rogue-ca")
    ed25519 = CertificateAuthority.create(directory / "ed-ca", "ed-ca", key_type="ed25519")
    server_cert, server_key = ca.issue_server_certificate()
    return PKI(
        ca_cert=ca.certificate,
        server_cert=server_cert,
        server_key=server_key,
        client_cert=ca.issue_client_certificate(USER),
        rogue_server=rogue.issue_server_certificate(),
        ed25519_server=ed25519.issue_server_certificate(),
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("login-pki"))


@pytest.fixture(scope="session")
def tls_context(pki: PKI) -> ssl.SSLContext:
    """The server's context: client certificates optional, checked against the CA."""
    return server_context(pki.server_cert, pki.server_key, client_ca=pki.ca_cert)


# ---------------------------------------------------------------------------
# joining a client and a server in memory


@dataclass
class LoginPair:
    """A ClientConnection and a ServerConnection, pumped into each other in memory.

    The server side plays a small PostgreSQL: on the StartupMessage it calls
    ``authenticate(method, secret)``; on Authenticated it sends ParameterStatus,
    BackendKeyData and ReadyForQuery; it answers a Query with one row. The client
    side sends one ``select 1`` after its first ReadyForQuery. Exceptions from
    either side are caught and kept (that side then stops).
    """

    client: ClientConnection
    server: ServerConnection
    method: AuthMethod | None = "trust"
    secret: str | None = None
    chunk_size: int | None = None
    client_events: list[Any] = field(default_factory=list)
    server_events: list[Any] = field(default_factory=list)
    client_error: Exception | None = None
    server_error: Exception | None = None
    rows: list[pw.DataRow] = field(default_factory=list)
    _queried: bool = False

    # -- results --------------------------------------------------------------

    @property
    def authenticated(self) -> Authenticated | None:
        found = [e for e in self.server_events if isinstance(e, Authenticated)]
        assert len(found) <= 1
        return found[0] if found else None

    @property
    def login_failed(self) -> LoginFailed | None:
        found = [e for e in self.server_events if isinstance(e, LoginFailed)]
        assert len(found) <= 1
        return found[0] if found else None

    @property
    def client_error_response(self) -> pw.ErrorResponse | None:
        found = [e for e in self.client_events if isinstance(e, pw.ErrorResponse)]
        return found[0] if found else None

    def event_types(self, side: str) -> list[str]:
        events = self.client_events if side == "client" else self.server_events
        return [type(event).__name__ for event in events]

    # -- pumping --------------------------------------------------------------

    def run(self, max_rounds: int = 100) -> LoginPair:
        self.client.start()
        for _ in range(max_rounds):
            self.drain_client()
            moved = self.deliver(self.client.data_to_send(), to_server=True)
            self.drain_server()
            moved |= self.deliver(self.server.data_to_send(), to_server=False)
            if not moved:
                return self
        raise AssertionError("the login did not settle: the two sides keep talking")

    def deliver(self, data: bytes, *, to_server: bool) -> bool:
        if not data:
            return False
        if (self.server_error if to_server else self.client_error) is not None:
            return False  # that side is gone: the bytes fall on the floor
        size = self.chunk_size or len(data)
        for start in range(0, len(data), size):
            chunk = data[start:start + size]
            try:
                if to_server:
                    self.server.receive_data(chunk)
                else:
                    self.client.receive_data(chunk)
            except Exception as exc:
                self._fail(exc, server=to_server)
                return True
            if to_server:
                self.drain_server()
            else:
                self.drain_client()
        return True

    def _fail(self, exc: Exception, *, server: bool) -> None:
        if server:
            self.server_error = exc
        else:
            self.client_error = exc

    def drain_client(self) -> None:
        while self.client_error is None:
            try:
                event = self.client.next_event()
            except Exception as exc:
                self.client_error = exc
                return
            if event is pw.NEED_DATA:
                return
            self.client_events.append(event)
            if isinstance(event, pw.ReadyForQuery) and not self._queried:
                self._queried = True
                self.client.send(pw.Query(query="select 1"))
            elif isinstance(event, pw.DataRow):
                self.rows.append(event)

    def drain_server(self) -> None:
        server = self.server
        while self.server_error is None:
            try:
                event = server.next_event()
            except Exception as exc:
                self.server_error = exc
                return
            if event is pw.NEED_DATA:
                return
            self.server_events.append(event)
            if isinstance(event, pw.StartupMessage) and self.method is not None:
                server.authenticate(self.method, self.secret)
            elif isinstance(event, Authenticated):
                server.send(pw.ParameterStatus(name="server_version", value="17.0"))
                key_length = 32 if server.backend.protocol_version & 0xFFFF >= 2 else 4
                server.send(pw.BackendKeyData(process_id=7, secret_key=b"k" * key_length))
                server.send(pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))
            elif isinstance(event, pw.Query):
                server.send(pw.RowDescription(fields=(pw.FieldDescription(name="x"),)))
                server.send(pw.DataRow(values=(b"1",)))
                server.send(pw.CommandComplete(tag="SELECT 1"))
                server.send(pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))


def make_client(pki: PKI, **options: Any) -> ClientConnection:
    """A client for USER/PASSWORD that trusts the test CA, checks 'localhost' and
    presents its certificate; ``options`` override any of that."""
    settings: dict[str, Any] = {
        "user": USER, "database": "app", "password": PASSWORD, "sslrootcert": pki.ca_cert,
        "server_hostname": "localhost", "sslcert": pki.client_cert[0],
        "sslkey": pki.client_cert[1],
    }
    settings.update(options)
    if settings.get("sslmode", "prefer") == "disable":
        for name in ("sslrootcert", "sslcert", "sslkey"):
            settings.pop(name, None)
    return ClientConnection(**settings)


def make_server(pki: PKI, context: ssl.SSLContext | None, **options: Any) -> ServerConnection:
    certificate = load_certificate_der(pki.server_cert) if context is not None else None
    options.setdefault("server_certificate", certificate)
    return ServerConnection(ssl_context=context, **options)


def login(pki: PKI, context: ssl.SSLContext | None, method: AuthMethod | None,
          secret: str | None, *, server_options: dict[str, Any] | None = None,
          chunk_size: int | None = None, **client_options: Any) -> LoginPair:
    pair = LoginPair(make_client(pki, **client_options),
                     make_server(pki, context, **(server_options or {})),
                     method=method, secret=secret, chunk_size=chunk_size)
    return pair.run()


def assert_logged_in(pair: LoginPair, method: str, *, tls: bool) -> None:
    """Both sides agree on the method, on TLS and on the channel binding; the session works."""
    assert pair.client_error is None, repr(pair.client_error)
    assert pair.server_error is None, repr(pair.server_error)
    authenticated = pair.authenticated
    assert authenticated is not None, pair.server_events
    assert authenticated.method == method
    assert authenticated.user == USER
    client_method = pair.client.authentication_method
    # A client cannot tell a certificate login from trust: it saw only AuthenticationOk.
    assert client_method == ("trust" if method == "cert" else method)
    assert authenticated.channel_bound == (method == "scram-sha-256-plus")
    assert pair.client.tls is tls
    assert pair.server.tls is tls
    if tls:
        assert pair.client.tls_info is not None
        assert pair.server.tls_info is not None
        if pair.server.server_certificate is not None:
            assert pair.client.tls_info.channel_binding == pair.server.tls_info.channel_binding
        else:
            assert pair.server.tls_info.channel_binding is None
        assert pair.client.tls_info.version == pair.server.tls_info.version
    assert [row.values for row in pair.rows] == [(b"1",)]


def secret_for(kind: str, password: str = PASSWORD) -> str | None:
    if kind == "plaintext":
        return password
    if kind == "md5":
        return md5_secret(password, USER)
    if kind == "scram":
        return scram_sha_256_secret(password, iterations=ITERATIONS)
    assert kind == "none"
    return None


# ---------------------------------------------------------------------------
# the matrix


@dataclass(frozen=True)
class Expected:
    """One case's outcome. Exactly one of: a login (``method``), a client-side
    refusal (``client_error``, ``sqlstate``), a server-side failure (``login_failed``)."""

    method: str | None = None
    tls: bool = False
    client_error: type[Exception] | None = None
    login_failed: str | None = None
    sqlstate: str | None = None
    #: The server accepted (trust, cert) before the client refused.
    server_authenticated: bool = False


def expected_outcome(method: str, secret_kind: str, *, server_tls: bool, sslmode: str,
                     channel_binding: str, allow_plaintext: bool) -> Expected:
    """The policy, written out: what a login with these settings must end in."""
    if sslmode in ("require", "verify-ca", "verify-full") and not server_tls:
        return Expected(client_error=LoginRefused, sqlstate="08001")
    tls = server_tls and sslmode not in ("disable", "allow")
    if method == "md5" and secret_kind == "scram":
        method = "scram-sha-256"  # as PostgreSQL: md5 in pg_hba with a SCRAM secret
    bind = channel_binding == "require"
    if method == "trust":
        if bind:
            return Expected(tls=tls, client_error=LoginRefused, sqlstate="28000",
                            server_authenticated=True)
        return Expected(method="trust", tls=tls)
    if method == "cert":
        if not tls:
            return Expected(tls=tls, login_failed="28000")
        if bind:
            return Expected(tls=tls, client_error=LoginRefused, sqlstate="28000",
                            server_authenticated=True)
        return Expected(method="cert", tls=tls)
    if method in ("password", "md5"):
        if bind or not (tls or allow_plaintext):
            return Expected(tls=tls, client_error=LoginRefused, sqlstate="28000")
        if secret_kind == "none":
            return Expected(tls=tls, login_failed="28P01")
        return Expected(method=method, tls=tls)
    assert method == "scram-sha-256"
    if bind and not tls:
        return Expected(tls=tls, client_error=LoginRefused, sqlstate="28000")
    if secret_kind in ("none", "md5"):  # a mock exchange: fails like a wrong password
        return Expected(tls=tls, login_failed="28P01")
    plus = tls and channel_binding != "disable"
    return Expected(method="scram-sha-256-plus" if plus else "scram-sha-256", tls=tls)


SERVER_SIDES = [("trust", "none"), ("cert", "none")] + [
    (method, kind)
    for method in ("password", "md5", "scram-sha-256")
    for kind in ("plaintext", "md5", "scram", "none")
]
CLIENT_SIDES = [
    (sslmode, channel_binding, allow_plaintext)
    for sslmode in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
    for channel_binding in ("disable", "prefer", "require")
    for allow_plaintext in (False, True)
    if not (channel_binding == "require" and sslmode in ("disable", "allow"))
]


def _id(values: tuple[object, ...]) -> str:
    return "-".join(str(v) if not isinstance(v, bool) else ("plain-ok" if v else "tls-only")
                    for v in values)


@pytest.mark.parametrize("server_tls", [True, False], ids=["server-tls", "server-no-tls"])
@pytest.mark.parametrize("server_side", SERVER_SIDES, ids=[_id(s) for s in SERVER_SIDES])
@pytest.mark.parametrize("client_side", CLIENT_SIDES, ids=[_id(c) for c in CLIENT_SIDES])
def test_login_matrix(server_side: tuple[AuthMethod, str], server_tls: bool,
                      client_side: tuple[str, str, bool], pki: PKI,
                      tls_context: ssl.SSLContext) -> None:
    method, secret_kind = server_side
    sslmode, channel_binding, allow_plaintext = client_side
    expected = expected_outcome(method, secret_kind, server_tls=server_tls, sslmode=sslmode,
                                channel_binding=channel_binding,
                                allow_plaintext=allow_plaintext)
    pair = login(pki, tls_context if server_tls else None, method, secret_for(secret_kind),
                 sslmode=sslmode, channel_binding=channel_binding,
                 allow_plaintext_password=allow_plaintext)

    assert pair.server_error is None, repr(pair.server_error)
    if expected.method is not None:
        assert_logged_in(pair, expected.method, tls=expected.tls)
    elif expected.client_error is not None:
        assert type(pair.client_error) is expected.client_error, repr(pair.client_error)
        assert isinstance(pair.client_error, pw.ProtocolError)
        assert pair.client_error.sqlstate == expected.sqlstate, repr(pair.client_error)
        assert pair.client.authentication_method is None
        assert pair.login_failed is None
        assert (pair.authenticated is not None) == expected.server_authenticated
        with pytest.raises(expected.client_error):  # latched
            pair.client.next_event()
    else:
        assert pair.client_error is None, repr(pair.client_error)
        failed = pair.login_failed
        assert failed is not None, pair.server_events
        assert failed.sqlstate == expected.login_failed
        assert pair.authenticated is None
        error = pair.client_error_response
        assert error is not None
        assert (error.severity, error.code) == ("FATAL", expected.login_failed)
        assert error.message == failed.message
        assert pair.client.authentication_method is None
        assert pair.client.frontend.phase is pw.Phase.CLOSED
        assert pair.server.tls is expected.tls


# ---------------------------------------------------------------------------
# wrong passwords, empty passwords, iteration counts


@pytest.mark.parametrize("server_tls", [True, False], ids=["tls", "plaintext"])
@pytest.mark.parametrize(("method", "secret_kind"), [
    ("password", "plaintext"), ("password", "md5"), ("password", "scram"),
    ("md5", "plaintext"), ("md5", "md5"), ("scram-sha-256", "plaintext"),
    ("scram-sha-256", "scram"),
])
def test_wrong_password(method: AuthMethod, secret_kind: str, server_tls: bool, pki: PKI,
                        tls_context: ssl.SSLContext) -> None:
    pair = login(pki, tls_context if server_tls else None, method, secret_for(secret_kind),
                 password="wrong", sslmode="prefer", allow_plaintext_password=True)
    assert pair.client_error is None and pair.server_error is None
    failed = pair.login_failed
    assert failed == LoginFailed(sqlstate="28P01",
                                 message=f'password authentication failed for user "{USER}"')
    error = pair.client_error_response
    assert error is not None
    assert (error.severity, error.code, error.message) == ("FATAL", "28P01", failed.message)


@pytest.mark.parametrize("method", ["password", "md5", "scram-sha-256"])
def test_empty_stored_password_never_authenticates(method: AuthMethod, pki: PKI,
                                                   tls_context: ssl.SSLContext) -> None:
    """PostgreSQL refuses empty passwords, and verify_md5_response says it does too:
    a user whose stored secret is "" must not log in with an empty password."""
    pair = login(pki, tls_context, method, "", password="", sslmode="require")
    assert pair.authenticated is None, f"{method}: empty password accepted"
    failed = pair.login_failed
    assert failed is not None
    assert failed.sqlstate == "28P01"


def test_default_iteration_count_and_non_ascii_password(pki: PKI,
                                                        tls_context: ssl.SSLContext) -> None:
    password = "Ünïcødé 密码 \u00a0space"  # SASLprep maps the no-break space
    pair = login(pki, tls_context, "scram-sha-256", scram_sha_256_secret(password),
                 password=password, sslmode="verify-full", channel_binding="require")
    assert_logged_in(pair, "scram-sha-256-plus", tls=True)


def test_md5_secret_stored_for_another_user_fails(pki: PKI, tls_context: ssl.SSLContext) -> None:
    """The MD5 secret is salted with the user name: the same password under another name fails."""
    pair = login(pki, tls_context, "md5", md5_secret(PASSWORD, "bob"), sslmode="require")
    failed = pair.login_failed
    assert failed is not None
    assert failed.sqlstate == "28P01"


# ---------------------------------------------------------------------------
# TLS variations


@pytest.mark.parametrize(("method", "secret_kind", "expected"), [
    ("scram-sha-256", "scram", "scram-sha-256-plus"),
    ("md5", "md5", "md5"),
    ("password", "plaintext", "password"),
    ("trust", "none", "trust"),
    ("cert", "none", "cert"),
])
def test_direct_tls(method: AuthMethod, secret_kind: str, expected: str, pki: PKI,
                    tls_context: ssl.SSLContext) -> None:
    pair = login(pki, tls_context, method, secret_for(secret_kind),
                 server_options={"require_tls": True}, sslmode="verify-full",
                 sslnegotiation="direct")
    assert_logged_in(pair, expected, tls=True)
    types = pair.event_types("server")
    assert types[0] == "DirectTLSHandshake"
    assert "SSLRequest" not in types
    assert "SSLResponse" not in pair.event_types("client")
    assert pair.client.tls_info is not None and pair.server.tls_info is not None
    assert pair.client.tls_info.alpn_protocol == "postgresql"
    assert pair.server.tls_info.alpn_protocol == "postgresql"


def test_require_tls_refuses_plaintext_startup(pki: PKI, tls_context: ssl.SSLContext) -> None:
    pair = login(pki, tls_context, "trust", None, server_options={"require_tls": True},
                 sslmode="disable")
    failed = pair.login_failed
    assert failed is not None
    assert failed.sqlstate == "28000"
    assert "requires TLS" in failed.message
    assert pair.authenticated is None
    assert "StartupMessage" not in pair.event_types("server")  # refused before the method
    error = pair.client_error_response
    assert error is not None and error.code == "28000"


def test_require_tls_accepts_tls(pki: PKI, tls_context: ssl.SSLContext) -> None:
    pair = login(pki, tls_context, "md5", secret_for("md5"),
                 server_options={"require_tls": True}, sslmode="prefer")
    assert_logged_in(pair, "md5", tls=True)


def test_require_tls_needs_a_context() -> None:
    with pytest.raises(ValueError, match="require_tls needs an ssl_context"):
        ServerConnection(require_tls=True)


def test_server_without_its_certificate_offers_no_plus(pki: PKI,
                                                       tls_context: ssl.SSLContext) -> None:
    """Without ``server_certificate`` the server cannot bind: it offers SCRAM-SHA-256 only,
    and a client that could bind says so with the 'y' flag, which is accepted."""
    pair = login(pki, tls_context, "scram-sha-256", secret_for("scram"),
                 server_options={"server_certificate": None}, sslmode="require")
    assert_logged_in(pair, "scram-sha-256", tls=True)
    sasl = next(e for e in pair.client_events if isinstance(e, pw.AuthenticationSASL))
    assert sasl.mechanisms == ("SCRAM-SHA-256",)
    initial = next(e for e in pair.server_events if isinstance(e, pw.SASLInitialResponse))
    assert initial.data is not None and initial.data.startswith(b"y,,")


def test_server_without_its_certificate_fails_channel_binding_require(
    pki: PKI, tls_context: ssl.SSLContext
) -> None:
    pair = login(pki, tls_context, "scram-sha-256", secret_for("scram"),
                 server_options={"server_certificate": None}, sslmode="require",
                 channel_binding="require")
    assert type(pair.client_error) is ScramError
    assert pair.client_error.sqlstate == "28000"
    assert pair.authenticated is None


def test_ed25519_certificate_gives_no_channel_binding(pki: PKI) -> None:
    """tls-server-end-point is undefined for Ed25519: plain SCRAM, and `require` refuses."""
    cert, key = pki.ed25519_server
    context = server_context(cert, key)
    der = load_certificate_der(cert)
    server_options = {"server_certificate": der}
    pair = login(pki, context, "scram-sha-256", secret_for("scram"),
                 server_options=server_options, sslmode="require")
    assert_logged_in(pair, "scram-sha-256", tls=True)
    pair = login(pki, context, "scram-sha-256", secret_for("scram"),
                 server_options=server_options, sslmode="require", channel_binding="require")
    assert type(pair.client_error) is LoginRefused
    assert pair.client_error.sqlstate == "28000"


def test_verify_full_refuses_a_certificate_from_another_ca(pki: PKI) -> None:
    cert, key = pki.rogue_server
    pair = login(pki, server_context(cert, key), "trust", None, sslmode="verify-full")
    assert type(pair.client_error) is TLSError
    assert pair.client_error.sqlstate == "08P01"
    assert pair.client_error.reason == "CERTIFICATE_VERIFY_FAILED"
    assert pair.authenticated is None
    # The alert reached the server, whose handshake fails too.
    assert type(pair.server_error) is TLSError


def test_verify_full_refuses_the_wrong_host_name(pki: PKI, tls_context: ssl.SSLContext) -> None:
    pair = login(pki, tls_context, "trust", None, sslmode="verify-full",
                 server_hostname="db.example.com")
    assert type(pair.client_error) is TLSError
    assert pair.client_error.reason == "CERTIFICATE_VERIFY_FAILED"
    assert pair.authenticated is None


def test_verify_ca_ignores_the_host_name(pki: PKI, tls_context: ssl.SSLContext) -> None:
    pair = login(pki, tls_context, "trust", None, sslmode="verify-ca",
                 server_hostname="db.example.com")
    assert_logged_in(pair, "trust", tls=True)


def test_require_does_not_check_the_certificate(pki: PKI) -> None:
    cert, key = pki.rogue_server
    pair = login(pki, server_context(cert, key), "scram-sha-256", secret_for("scram"),
                 server_options={"server_certificate": load_certificate_der(cert)},
                 sslmode="require")
    assert_logged_in(pair, "scram-sha-256-plus", tls=True)


def test_cert_login_needs_a_certificate_with_the_user_name(pki: PKI,
                                                           tls_context: ssl.SSLContext) -> None:
    pair = login(pki, tls_context, "cert", None, sslmode="require", sslcert=None, sslkey=None)
    failed = pair.login_failed
    assert failed is not None
    assert (failed.sqlstate, failed.message) == (
        "28000", f'certificate authentication failed for user "{USER}"')
    pair = login(pki, tls_context, "cert", None, sslmode="require", user="bob")
    failed = pair.login_failed
    assert failed is not None
    assert failed.message == 'certificate authentication failed for user "bob"'


def test_unverified_client_certificate_is_not_trusted(pki: PKI) -> None:
    """A server context that does not ask for client certificates cannot vouch for one:
    the cert method must fail even though the client sent a certificate for the user."""
    pair = login(pki, server_context(pki.server_cert, pki.server_key), "cert", None,
                 sslmode="require")
    failed = pair.login_failed
    assert failed is not None
    assert failed.sqlstate == "28000"
    assert pair.authenticated is None


def test_required_client_certificate_missing_fails_the_handshake(pki: PKI) -> None:
    context = server_context(pki.server_cert, pki.server_key, client_ca=pki.ca_cert,
                             require_client_certificate=True)
    pair = login(pki, context, "cert", None, sslmode="require", sslcert=None, sslkey=None)
    assert type(pair.server_error) is TLSError
    assert pair.server_error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    # TLS 1.3: the client finished its handshake first and learns from the alert.
    assert type(pair.client_error) is TLSError
    assert pair.authenticated is None


def test_sslmode_prefer_without_server_tls_goes_plaintext(pki: PKI) -> None:
    pair = login(pki, None, "scram-sha-256", secret_for("scram"), sslmode="prefer")
    assert_logged_in(pair, "scram-sha-256", tls=False)
    response = next(e for e in pair.client_events if isinstance(e, pw.SSLResponse))
    assert response.accepted is False


def test_gssencrequest_is_answered_no(pki: PKI) -> None:
    server = make_server(pki, None)
    server.receive_data(pw.GSSENCRequest().encode())
    assert isinstance(server.next_event(), pw.GSSENCRequest)
    assert server.data_to_send() == b"N"


# ---------------------------------------------------------------------------
# protocol 3.2 and NegotiateProtocolVersion


def test_protocol_3_2(pki: PKI, tls_context: ssl.SSLContext) -> None:
    pair = login(pki, tls_context, "scram-sha-256", secret_for("scram"), sslmode="require",
                 protocol_version=pw.PROTOCOL_3_2)
    assert_logged_in(pair, "scram-sha-256-plus", tls=True)
    assert "NegotiateProtocolVersion" not in pair.event_types("client")
    assert pair.client.frontend.protocol_version == pw.PROTOCOL_3_2
    assert pair.server.backend.protocol_version == pw.PROTOCOL_3_2
    assert pair.client.frontend.backend_key == (7, b"k" * 32)


@pytest.mark.parametrize("sslnegotiation", ["postgres", "direct"])
def test_newer_minor_version_is_negotiated_down(sslnegotiation: str, pki: PKI,
                                                tls_context: ssl.SSLContext) -> None:
    pair = login(pki, tls_context, "md5", secret_for("md5"), sslmode="require",
                 sslnegotiation=sslnegotiation, protocol_version=(3 << 16) | 9,
                 parameters={"_pq_.compression": "on"})
    assert_logged_in(pair, "md5", tls=True)
    negotiation = [e for e in pair.client_events if isinstance(e, pw.NegotiateProtocolVersion)]
    assert negotiation == [pw.NegotiateProtocolVersion(
        newest_minor_version=2, unrecognized_options=("_pq_.compression",))]
    # It is the server's first message, before any authentication request.
    first_after_tls = next(t for t in pair.event_types("client") if t != "SSLResponse")
    assert first_after_tls == "NegotiateProtocolVersion"
    assert pair.client.frontend.protocol_version == pw.PROTOCOL_3_2
    assert pair.server.backend.protocol_version == pw.PROTOCOL_3_2


def test_protocol_option_on_3_0(pki: PKI) -> None:
    pair = login(pki, None, "trust", None, sslmode="disable",
                 parameters={"_pq_.something": "1"})
    assert_logged_in(pair, "trust", tls=False)
    assert [e for e in pair.client_events if isinstance(e, pw.NegotiateProtocolVersion)] == [
        pw.NegotiateProtocolVersion(newest_minor_version=0,
                                    unrecognized_options=("_pq_.something",))]


# ---------------------------------------------------------------------------
# byte-at-a-time delivery gives the same conversation


def _summary(pair: LoginPair) -> tuple[Any, ...]:
    def shape(event: Any) -> Any:
        if isinstance(event, pw.DirectTLSHandshake):
            return "DirectTLSHandshake"  # its data is whatever had arrived
        if isinstance(event, (pw.SASLInitialResponse, pw.SASLResponse, pw.PasswordMessage,
                              pw.AuthenticationSASLContinue, pw.AuthenticationSASLFinal,
                              pw.AuthenticationMD5Password)):
            return type(event).__name__  # nonces and salts differ per run
        return event
    return ([shape(e) for e in pair.client_events], [shape(e) for e in pair.server_events],
            repr(pair.client_error), repr(pair.server_error), pair.client.authentication_method)


CHUNKED_CASES: list[tuple[AuthMethod, str, dict[str, Any]]] = [
    ("scram-sha-256", "scram", {"sslmode": "verify-full", "channel_binding": "require"}),
    ("scram-sha-256", "scram", {"sslmode": "require", "sslnegotiation": "direct"}),
    ("md5", "md5", {"sslmode": "disable", "allow_plaintext_password": True}),
    ("password", "plaintext", {"sslmode": "prefer", "protocol_version": (3 << 16) | 5}),
    ("scram-sha-256", "none", {"sslmode": "require"}),
    ("cert", "none", {"sslmode": "disable"}),
]


@pytest.mark.parametrize("case", CHUNKED_CASES,
                         ids=[f"{m}-{k}-{'-'.join(map(str, o.values()))}"
                              for m, k, o in CHUNKED_CASES])
@pytest.mark.parametrize("chunk_size", [1, 3])
def test_chunked_delivery_gives_the_same_events(
    case: tuple[AuthMethod, str, dict[str, Any]], chunk_size: int, pki: PKI,
    tls_context: ssl.SSLContext,
) -> None:
    method, secret_kind, options = case

    def run(chunk: int | None) -> LoginPair:
        return login(pki, tls_context, method, secret_for(secret_kind), chunk_size=chunk,
                     **options)

    whole, chunked = run(None), run(chunk_size)
    assert _summary(chunked) == _summary(whole)
    assert whole.authenticated is not None or whole.login_failed is not None


# ---------------------------------------------------------------------------
# misuse of the API (LocalProtocolError / ValueError, before any byte)


@pytest.mark.parametrize(("options", "message"), [
    ({"sslmode": "disable", "channel_binding": "require"}, "channel_binding='require' needs TLS"),
    ({"sslmode": "allow", "channel_binding": "require"}, "channel_binding='require' needs TLS"),
    ({"sslmode": "prefer", "sslnegotiation": "direct"}, "needs sslmode 'require'"),
    ({"sslmode": "verify-full", "server_hostname": None}, "needs server_hostname"),
    ({"sslmode": "bogus"}, "sslmode must be one of"),
    ({"channel_binding": "maybe"}, "channel_binding must be"),
    ({"sslnegotiation": "gss"}, "sslnegotiation must be"),
])
def test_client_settings_checked_up_front(options: dict[str, Any], message: str,
                                          pki: PKI) -> None:
    with pytest.raises(ValueError, match=message):
        make_client(pki, **options)


def test_client_api_order(pki: PKI) -> None:
    client = make_client(pki, sslmode="disable")
    with pytest.raises(pw.LocalProtocolError, match="call start"):
        client.next_event()
    client.start()
    with pytest.raises(pw.LocalProtocolError, match="already called"):
        client.start()


def test_server_api_order(pki: PKI) -> None:
    server = make_server(pki, None)
    with pytest.raises(pw.LocalProtocolError, match="answers a StartupMessage"):
        server.authenticate("trust")
    server.receive_data(pw.StartupMessage.from_dict({"user": USER}).encode())
    assert isinstance(server.next_event(), pw.StartupMessage)
    with pytest.raises(ValueError, match="method must be one of"):
        server.authenticate("ident")  # type: ignore[arg-type]
    server.authenticate("md5", "secret")
    with pytest.raises(pw.LocalProtocolError, match="already called"):
        server.authenticate("trust")


def test_mock_salt_is_stable_per_user_and_hides_nothing(pki: PKI) -> None:
    """Unknown users get a SCRAM exchange whose salt depends only on the name and the
    server's mock key, like a real user's: probing cannot tell them apart."""

    def server_first(user: str, mock_key: bytes, secret: str | None) -> bytes:
        server = ServerConnection(mock_key=mock_key)
        server.receive_data(pw.StartupMessage.from_dict({"user": user}).encode())
        assert isinstance(server.next_event(), pw.StartupMessage)
        server.authenticate("scram-sha-256", secret)
        server.receive_data(pw.SASLInitialResponse(
            mechanism="SCRAM-SHA-256", data=b"n,,n=,r=clientnonce").encode())
        assert isinstance(server.next_event(), pw.SASLInitialResponse)
        data = server.data_to_send()
        frames = []
        while data:
            length = int.from_bytes(data[1:5], "big")
            frames.append(data[:1 + length])
            data = data[1 + length:]
        continue_ = pw.AuthenticationSASLContinue.decode(frames[-1][5:])
        parts = dict(item.split(b"=", 1) for item in continue_.data.split(b","))
        return parts[b"s"] + b"," + parts[b"i"]

    key = b"m" * 32
    assert server_first("ghost", key, None) == server_first("ghost", key, None)
    assert server_first("ghost", key, None) != server_first("phantom", key, None)
    assert server_first("ghost", key, None) != server_first("ghost", b"n" * 32, None)
    assert server_first("ghost", key, None).endswith(b",4096")
    # A user with an MD5 secret cannot do SCRAM: the same mock exchange.
    assert server_first("ghost", key, md5_secret("x", "ghost")) == server_first(
        "ghost", key, None)

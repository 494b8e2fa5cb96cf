"""pgwire.client.ClientConnection logging in to a real PostgreSQL 15.

One TLS cluster whose pg_hba.conf gives each role its own method (SCRAM,
MD5, cleartext password, client certificate, trust, plaintext-only), and one
cluster without TLS. Over blocking sockets (`client_wire.ClientSession`),
the tests check what the connection reports (``authentication_method``,
``tls_info``) against what the server itself sees in ``pg_stat_ssl``, and
every policy refusal: sslmode, certificate and host name verification,
channel binding, cleartext passwords over plaintext, the SCRAM iteration cap,
and direct TLS against a server that does not speak it.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import pgwire as pw
from pgwire.auth import ChannelBinding, ScramError
from pgwire.client import ClientConnection
from pgwire.login import LoginRefused
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.pki import CertificateAuthority
from pgwire.tls import TLSError, load_certificate_der

from .client_wire import ClientSession, open_session

SSL_QUERY = (
    "select current_user, ssl, version, cipher, client_dn "
    "from pg_stat_ssl where pid = pg_backend_pid()"
)

SCRAM_PASSWORD = "scräm pässword"
MD5_PASSWORD = "md5 pässword"
CLEARTEXT_PASSWORD = "cleartext password"

HBA_LINES = [
    # The superuser, for cluster.sql(): psql tries TLS first, and "host" takes both.
    "host       all  postgres    127.0.0.1/32  scram-sha-256",
    "host       all  scram_user  127.0.0.1/32  scram-sha-256",
    "host       all  md5_user    127.0.0.1/32  md5",
    "host       all  pw_user     127.0.0.1/32  password",
    "hostssl    all  cert_user   127.0.0.1/32  cert",
    "host       all  trust_user  127.0.0.1/32  trust",
    "hostnossl  all  nossl_user  127.0.0.1/32  trust",
]

PASSWORDS = {
    "scram_user": SCRAM_PASSWORD,
    "md5_user": MD5_PASSWORD,
    "pw_user": CLEARTEXT_PASSWORD,
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    """PostgreSQL with TLS and a different authentication method per role."""
    with PostgresCluster(ssl=True, hba_lines=HBA_LINES) as pg:
        pg.sql(
            f"create role scram_user login password '{SCRAM_PASSWORD}';\n"
            "set password_encryption = 'md5';\n"
            f"create role md5_user login password '{MD5_PASSWORD}';\n"
            f"create role pw_user login password '{CLEARTEXT_PASSWORD}';\n"
            "create role cert_user login;\n"
            "create role trust_user login;\n"
            "create role nossl_user login;\n"
        )
        yield pg


@pytest.fixture(scope="module")
def plain_cluster() -> Iterator[PostgresCluster]:
    """PostgreSQL without TLS: it answers SSLRequest with 'N'. SCRAM for everyone."""
    with PostgresCluster(ssl=False, auth="scram-sha-256") as pg:
        yield pg


@pytest.fixture(scope="module")
def server_der(cluster: PostgresCluster) -> bytes:
    return load_certificate_der(cluster.server_cert)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA certificate that did not sign the cluster's server certificate."""
    directory = tmp_path_factory.mktemp("other-ca")
    return CertificateAuthority.create(directory, "some other CA").certificate


def session(cluster: PostgresCluster, **kwargs: object) -> ClientSession:
    """A ClientSession for a ClientConnection built from ``kwargs`` (database postgres)."""
    kwargs.setdefault("database", "postgres")
    return open_session(cluster, ClientConnection(**kwargs))  # type: ignore[arg-type]


def login(cluster: PostgresCluster, **kwargs: object) -> ClientSession:
    """A session that has logged in (its login ended with ReadyForQuery)."""
    client = session(cluster, **kwargs)
    try:
        events = client.login()
        assert isinstance(events[-1], pw.ReadyForQuery), events
    except BaseException:
        client.close()
        raise
    return client


def fails(client: ClientSession, error: type[pw.ProtocolError]) -> pw.ProtocolError:
    """Run the login, which must raise ``error``; check the error latches; return it."""
    with client, pytest.raises(error) as caught:
        client.login()
    with pytest.raises(error) as again:
        client.conn.next_event()
    assert again.value is caught.value
    return caught.value


def refused_by_server(client: ClientSession) -> pw.ErrorResponse:
    """Run the login, which the server must end with a FATAL ErrorResponse and a close."""
    with client:
        events = client.login()
    assert isinstance(events[-1], pw.ConnectionClosed), events
    error = events[-2]
    assert isinstance(error, pw.ErrorResponse), events
    assert error.severity == "FATAL"
    assert client.conn.authentication_method is None
    return error


def ssl_row(client: ClientSession) -> tuple[bytes | None, ...]:
    [row] = client.rows(SSL_QUERY)
    return row


def check_tls(client: ClientSession, server_der: bytes) -> None:
    """The connection's TLS facts agree with the server's view and certificate."""
    info = client.conn.tls_info
    assert info is not None
    assert client.conn.tls
    _, ssl, version, cipher, _ = ssl_row(client)
    assert ssl == b"t"
    assert info.version is not None and info.version.encode() == version
    assert info.cipher is not None and info.cipher.encode() == cipher
    assert info.peer_certificate == server_der
    assert info.channel_binding == ChannelBinding.from_certificate(server_der)
    assert info.alpn_protocol is None  # PostgreSQL 15 does not negotiate ALPN


def check_plaintext(client: ClientSession) -> None:
    assert client.conn.tls_info is None
    assert not client.conn.tls
    assert ssl_row(client)[1:4] == (b"f", None, None)


# -- every method, with and without TLS ------------------------------------------------------

METHOD_CASES = [
    # (user, TLS?, what authentication_method must say)
    ("scram_user", True, "scram-sha-256-plus"),
    ("scram_user", False, "scram-sha-256"),
    ("md5_user", True, "md5"),
    ("md5_user", False, "md5"),
    ("pw_user", True, "password"),
    ("pw_user", False, "password"),
    ("trust_user", True, "trust"),
    ("trust_user", False, "trust"),
]


@pytest.mark.parametrize(
    ("user", "tls", "method"), METHOD_CASES,
    ids=[f"{user}-{'tls' if tls else 'plain'}" for user, tls, _ in METHOD_CASES],
)
def test_each_method_with_and_without_tls(
    cluster: PostgresCluster, server_der: bytes, user: str, tls: bool, method: str
) -> None:
    options: dict[str, object] = {"user": user, "password": PASSWORDS.get(user)}
    if tls:
        options["sslmode"] = "require"
    else:
        # A cleartext or MD5 password over plaintext needs the explicit opt-in.
        options |= {"sslmode": "disable", "allow_plaintext_password": True}
    with login(cluster, **options) as client:
        assert client.conn.authentication_method == method
        assert ssl_row(client)[0] == user.encode()
        if tls:
            check_tls(client, server_der)
            assert client.startup_events[0] == pw.SSLResponse(accepted=True)
        else:
            check_plaintext(client)
            # sslmode=disable sends the StartupMessage first: no SSLRequest, no 'N'.
            assert not isinstance(client.startup_events[0], pw.SSLResponse)


def test_cert_method_with_a_client_certificate(
    cluster: PostgresCluster, server_der: bytes
) -> None:
    cert, key = cluster.make_client_cert("cert_user")
    with login(cluster, user="cert_user", sslmode="verify-full", sslrootcert=cluster.ca_cert,
               server_hostname="localhost", sslcert=cert, sslkey=key) as client:
        # The server sends AuthenticationOk at once: from the client's side,
        # certificate authentication cannot be told apart from trust.
        assert client.startup_events[:2] == [pw.SSLResponse(accepted=True), pw.AuthenticationOk()]
        assert client.conn.authentication_method == "trust"
        check_tls(client, server_der)
        assert ssl_row(client)[4] == b"/CN=cert_user"
        info = client.conn.tls_info
        assert info is not None
        assert info.server_hostname == "localhost"
        assert info.peer_certificate_fields["subject"] == ((("commonName", "localhost"),),)


def test_cert_method_refuses_a_certificate_for_another_role(cluster: PostgresCluster) -> None:
    cert, key = cluster.make_client_cert("trust_user")
    error = refused_by_server(session(cluster, user="cert_user", sslmode="require",
                                      sslcert=cert, sslkey=key))
    assert (error.code, error.message) == (
        "28000", 'certificate authentication failed for user "cert_user"'
    )


def test_cert_method_without_a_client_certificate(cluster: PostgresCluster) -> None:
    error = refused_by_server(session(cluster, user="cert_user", sslmode="require"))
    assert (error.code, error.message) == (
        "28000", "connection requires a valid client certificate"
    )


def test_hostnossl_role_needs_sslmode_disable(cluster: PostgresCluster) -> None:
    with login(cluster, user="nossl_user", sslmode="disable") as client:
        check_plaintext(client)
    # Unlike libpq, a sans-IO connection cannot retry without TLS under "prefer".
    error = refused_by_server(session(cluster, user="nossl_user", sslmode="prefer"))
    assert error.code == "28000"
    assert error.message is not None
    assert error.message.endswith(", SSL encryption")


# -- the data path through TLS ------------------------------------------------------------


def test_large_results_and_queries_cross_many_tls_records(cluster: PostgresCluster) -> None:
    with login(cluster, user="scram_user", password=SCRAM_PASSWORD, sslmode="require") as client:
        assert client.conn.tls
        rows = client.rows(
            "select g, repeat(chr(65 + g % 26), 2000) from generate_series(1, 200) g"
        )
        assert rows == [
            (str(g).encode(), chr(65 + g % 26).encode() * 2000) for g in range(1, 201)
        ]
        # 100 kB of query text, several TLS records the other way.
        literal = "".join(chr(97 + i % 26) for i in range(100_000))
        assert client.rows(f"select length('{literal}'), md5('{literal}')") == [
            (b"100000", hashlib.md5(literal.encode()).hexdigest().encode())
        ]
        assert client.conn.frontend.transaction_status == "I"


# -- sslmode --------------------------------------------------------------------------------


@pytest.mark.parametrize("sslmode", ["disable", "allow"])
def test_sslmode_disable_and_allow_stay_in_plaintext(
    cluster: PostgresCluster, sslmode: str
) -> None:
    with login(cluster, user="scram_user", password=SCRAM_PASSWORD, sslmode=sslmode) as client:
        assert isinstance(client.startup_events[0], pw.AuthenticationSASL)
        assert client.startup_events[0].mechanisms == ("SCRAM-SHA-256",)
        assert client.conn.authentication_method == "scram-sha-256"
        check_plaintext(client)


def test_sslmode_prefer_uses_tls_when_offered(cluster: PostgresCluster, server_der: bytes) -> None:
    with login(cluster, user="scram_user", password=SCRAM_PASSWORD) as client:  # the default
        assert client.conn.sslmode == "prefer"
        assert client.startup_events[0] == pw.SSLResponse(accepted=True)
        check_tls(client, server_der)
        # No verification was asked for: the certificate is not parsed.
        info = client.conn.tls_info
        assert info is not None
        assert info.peer_certificate_fields == {}


def test_sslmode_prefer_falls_back_to_plaintext(plain_cluster: PostgresCluster) -> None:
    with login(plain_cluster, user=plain_cluster.superuser,
               password=plain_cluster.superuser_password, sslmode="prefer") as client:
        assert client.startup_events[:2] == [
            pw.SSLResponse(accepted=False),
            pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",)),
        ]
        assert client.conn.authentication_method == "scram-sha-256"
        assert client.conn.tls_info is None
        assert client.rows("select ssl from pg_stat_ssl where pid = pg_backend_pid()") == [
            (b"f",)
        ]


@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "verify-full"])
def test_sslmode_require_refuses_a_server_without_tls(
    plain_cluster: PostgresCluster, other_ca: Path, sslmode: str
) -> None:
    client = session(plain_cluster, user=plain_cluster.superuser,
                     password=plain_cluster.superuser_password, sslmode=sslmode,
                     sslrootcert=other_ca if sslmode != "require" else None,
                     server_hostname="localhost")
    error = fails(client, LoginRefused)
    assert error.sqlstate == "08001"
    # Only the SSLRequest went out; the StartupMessage never did, in the clear or otherwise.
    assert bytes(client.sent) == pw.SSLRequest().encode()
    assert client.conn.data_to_send() == b""


@pytest.mark.parametrize("server_hostname", [None, "localhost", "wrong.example"])
def test_sslmode_verify_ca_checks_the_chain_not_the_name(
    cluster: PostgresCluster, server_der: bytes, server_hostname: str | None
) -> None:
    with login(cluster, user="trust_user", sslmode="verify-ca", sslrootcert=cluster.ca_cert,
               server_hostname=server_hostname) as client:
        check_tls(client, server_der)
        info = client.conn.tls_info
        assert info is not None
        assert info.peer_certificate_fields["subject"] == ((("commonName", "localhost"),),)


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
def test_sslmode_verify_refuses_a_certificate_from_another_ca(
    cluster: PostgresCluster, other_ca: Path, sslmode: str
) -> None:
    client = session(cluster, user="trust_user", sslmode=sslmode, sslrootcert=other_ca,
                     server_hostname="localhost")
    error = fails(client, TLSError)
    assert isinstance(error, TLSError)
    assert (error.sqlstate, error.reason) == ("08P01", "CERTIFICATE_VERIFY_FAILED")
    assert client.conn.tls_info is None
    assert client.conn.authentication_method is None


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_sslmode_verify_full_accepts_the_names_in_the_certificate(
    cluster: PostgresCluster, server_der: bytes, server_hostname: str
) -> None:
    with login(cluster, user="scram_user", password=SCRAM_PASSWORD, sslmode="verify-full",
               sslrootcert=cluster.ca_cert, server_hostname=server_hostname) as client:
        assert client.conn.authentication_method == "scram-sha-256-plus"
        check_tls(client, server_der)
        info = client.conn.tls_info
        assert info is not None
        assert info.server_hostname == server_hostname


def test_sslmode_verify_full_refuses_a_wrong_host_name(cluster: PostgresCluster) -> None:
    client = session(cluster, user="scram_user", password=SCRAM_PASSWORD,
                     sslmode="verify-full", sslrootcert=cluster.ca_cert,
                     server_hostname="wrong.example")
    error = fails(client, TLSError)
    assert isinstance(error, TLSError)
    assert (error.sqlstate, error.reason) == ("08P01", "CERTIFICATE_VERIFY_FAILED")
    assert "wrong.example" in error.message


def test_direct_tls_against_postgresql_15_fails_cleanly(cluster: PostgresCluster) -> None:
    # PostgreSQL 15 reads the ClientHello as a startup packet of absurd length,
    # logs "invalid length of startup packet" and closes without a word: the
    # handshake sees EOF.
    client = session(cluster, user="trust_user", sslmode="require", sslnegotiation="direct")
    error = fails(client, TLSError)
    assert isinstance(error, TLSError)
    assert (error.sqlstate, error.reason) == ("08P01", "UNEXPECTED_EOF_WHILE_READING")
    assert client.sent[:1] == b"\x16"  # a TLS handshake record went out first, no SSLRequest
    assert client.conn.tls_info is None
    # The server is fine, and the ordinary negotiation still works.
    with login(cluster, user="trust_user", sslmode="require") as again:
        assert again.conn.tls


# -- channel binding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel_binding", "method"),
    [("prefer", "scram-sha-256-plus"), ("require", "scram-sha-256-plus"),
     ("disable", "scram-sha-256")],
)
def test_channel_binding_modes_over_tls(
    cluster: PostgresCluster, server_der: bytes, channel_binding: str, method: str
) -> None:
    with login(cluster, user="scram_user", password=SCRAM_PASSWORD, sslmode="require",
               channel_binding=channel_binding) as client:
        assert client.startup_events[1] == pw.AuthenticationSASL(
            mechanisms=("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")
        )
        assert client.conn.authentication_method == method
        check_tls(client, server_der)


@pytest.mark.parametrize("user", ["md5_user", "pw_user", "trust_user"])
def test_channel_binding_require_refuses_unbound_methods(
    cluster: PostgresCluster, user: str
) -> None:
    client = session(cluster, user=user, password=PASSWORDS.get(user), sslmode="require",
                     channel_binding="require")
    error = fails(client, LoginRefused)
    assert error.sqlstate == "28000"
    assert client.conn.authentication_method is None
    # Refused before answering: no password went into the TLS stream.
    assert client.conn.data_to_send() == b""


def test_channel_binding_require_refuses_a_server_without_tls(
    plain_cluster: PostgresCluster,
) -> None:
    client = session(plain_cluster, user=plain_cluster.superuser,
                     password=plain_cluster.superuser_password, sslmode="prefer",
                     channel_binding="require")
    error = fails(client, LoginRefused)
    assert error.sqlstate == "28000"
    # SSLRequest and StartupMessage, and no SASLInitialResponse.
    startup = pw.StartupMessage.from_dict(
        {"user": plain_cluster.superuser, "database": "postgres"}
    )
    assert bytes(client.sent) == pw.SSLRequest().encode() + startup.encode()
    assert client.conn.data_to_send() == b""


# -- passwords over plaintext, and wrong passwords ------------------------------------------


@pytest.mark.parametrize("user", ["md5_user", "pw_user"])
def test_password_over_plaintext_is_refused_by_default(
    cluster: PostgresCluster, user: str
) -> None:
    client = session(cluster, user=user, password=PASSWORDS[user], sslmode="disable")
    error = fails(client, LoginRefused)
    assert error.sqlstate == "28000"
    # Only the StartupMessage went out; the password stayed here.
    startup = pw.StartupMessage.from_dict({"user": user, "database": "postgres"})
    assert bytes(client.sent) == startup.encode()
    assert client.conn.data_to_send() == b""


WRONG_PASSWORD_CASES = [
    ("scram_user", "require"),
    ("scram_user", "disable"),
    ("md5_user", "require"),
    ("pw_user", "require"),
]


@pytest.mark.parametrize(("user", "sslmode"), WRONG_PASSWORD_CASES)
def test_wrong_password_is_the_servers_fatal_error(
    cluster: PostgresCluster, user: str, sslmode: str
) -> None:
    client = session(cluster, user=user, password="not the password", sslmode=sslmode)
    error = refused_by_server(client)
    assert (error.code, error.message) == (
        "28P01", f'password authentication failed for user "{user}"'
    )
    # The connection is closed and says so: no error of its own.
    assert client.conn.next_event() == pw.ConnectionClosed()


@pytest.mark.parametrize("user", ["scram_user", "md5_user", "pw_user"])
def test_no_password_given(cluster: PostgresCluster, user: str) -> None:
    client = session(cluster, user=user, sslmode="require")
    error = fails(client, LoginRefused)
    assert error.sqlstate == "28000"
    assert "no password was given" in error.message


def test_server_ends_a_tls_session(cluster: PostgresCluster) -> None:
    with login(cluster, user="trust_user", sslmode="require") as client:
        [key] = [e for e in client.startup_events if isinstance(e, pw.BackendKeyData)]
        assert cluster.sql(f"select pg_terminate_backend({key.process_id})") == "t"
        events = client.events_until(lambda event: False)
        assert [(type(e), getattr(e, "code", None)) for e in events] == [
            (pw.ErrorResponse, "57P01"), (pw.ConnectionClosed, None)
        ]
        assert client.conn.next_event() == pw.ConnectionClosed()


# -- decode: the login must not depend on which messages the caller wants decoded ----------


def test_login_with_a_narrow_decode_set(cluster: PostgresCluster) -> None:
    # decode={b"Z"}: the caller wants only ReadyForQuery decoded; the
    # authentication requests ('R') must still be seen and answered.
    client = session(cluster, user="scram_user", password=SCRAM_PASSWORD, sslmode="require",
                     decode={b"Z"})
    client.sock.settimeout(2)  # a stalled login fails fast
    with client:
        events = client.login()
        assert events[-1] == pw.ReadyForQuery(status=pw.TransactionStatus.IDLE)
        assert client.conn.authentication_method == "scram-sha-256-plus"


def test_narrow_decode_set_does_not_bypass_channel_binding_require(
    cluster: PostgresCluster,
) -> None:
    # A trust login under channel_binding=require must be refused whatever
    # the decode set: a raw AuthenticationOk is still an AuthenticationOk.
    client = session(cluster, user="trust_user", sslmode="require", channel_binding="require",
                     decode={b"Z"})
    error = fails(client, LoginRefused)
    assert error.sqlstate == "28000"


# -- protocol 3.2 and the SCRAM iteration cap ------------------------------------------------


def test_protocol_3_2_is_negotiated_down(cluster: PostgresCluster, server_der: bytes) -> None:
    with login(cluster, user="scram_user", password=SCRAM_PASSWORD, sslmode="require",
               protocol_version=pw.PROTOCOL_3_2,
               parameters={"application_name": "pgwire 3.2"}) as client:
        events = client.startup_events
        assert events[:3] == [
            pw.SSLResponse(accepted=True),
            pw.NegotiateProtocolVersion(newest_minor_version=0, unrecognized_options=()),
            pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
        ]
        assert client.conn.frontend.protocol_version == pw.PROTOCOL_3_0
        assert client.conn.authentication_method == "scram-sha-256-plus"
        [key] = [event for event in events if isinstance(event, pw.BackendKeyData)]
        assert len(key.secret_key) == 4
        assert pw.ParameterStatus(name="application_name", value="pgwire 3.2") in events
        check_tls(client, server_der)


def test_scram_iteration_cap_refuses_before_answering(cluster: PostgresCluster) -> None:
    # PostgreSQL 15 stores SCRAM secrets with 4096 iterations.
    stored = cluster.sql("select rolpassword from pg_authid where rolname = 'scram_user'")
    assert stored.startswith("SCRAM-SHA-256$4096:")
    client = session(cluster, user="scram_user", password=SCRAM_PASSWORD, sslmode="disable",
                     max_scram_iterations=1000)
    error = fails(client, ScramError)
    assert error.sqlstate == "54000"
    assert "4096" in error.message
    # No client-final message was produced (the key derivation never ran).
    assert client.conn.data_to_send() == b""
    assert client.conn.authentication_method is None


def test_scram_iteration_cap_is_inclusive(cluster: PostgresCluster) -> None:
    with login(cluster, user="scram_user", password=SCRAM_PASSWORD, sslmode="require",
               max_scram_iterations=4096) as client:
        assert client.conn.authentication_method == "scram-sha-256-plus"


# -- the server vanishing mid-session ------------------------------------------------------


def test_tls_connection_cut_without_close_notify() -> None:
    """A backend killed outright closes TCP without a TLS close_notify.

    The connection must report that through ``next_event`` (a ConnectionClosed,
    or a TLSError that latches), never by raising out of ``receive_data`` and
    then returning NEED_DATA forever. Its own cluster: the kill makes the
    postmaster restart every backend.
    """
    with PostgresCluster(ssl=True) as pg, login(
        pg, user=pg.superuser, password=pg.superuser_password, sslmode="require"
    ) as client:
        [key] = [e for e in client.startup_events if isinstance(e, pw.BackendKeyData)]
        assert client.rows("select 1") == [(b"1",)]
        os.kill(key.process_id, signal.SIGKILL)
        conn = client.conn
        assert conn.next_event() is pw.NEED_DATA
        assert client.sock.recv(65536) == b""
        try:
            conn.receive_data(b"")
            event = conn.next_event()
        except TLSError as exc:
            # Reported as a TLS error: then it must latch, like every other error.
            with pytest.raises(TLSError) as again:
                conn.next_event()
            assert again.value is exc
        else:
            assert event == pw.ConnectionClosed()

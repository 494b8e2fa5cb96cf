"""pgwire.auth against a real PostgreSQL and a real libpq.

* PostgreSQL's own stored secrets (``pg_authid.rolpassword``) parse, verify our
  passwords and drive our ScramServer; our MD5 secrets equal PostgreSQL's, and
  PostgreSQL accepts the SCRAM secrets we build.
* pgwire.Frontend plus ScramClient (or the MD5 answer) logs in to PostgreSQL
  over a blocking socket: SCRAM-SHA-256, MD5, and SCRAM-SHA-256-PLUS over TLS;
  PostgreSQL's refusals of a wrong channel binding and of a downgrade match
  the SQLSTATEs our ScramServer uses.
* libpq (psycopg) logs in to a test server built from pgwire.Backend and
  ScramServer, with and without channel binding.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

import pgwire as pw
from pgwire.auth import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    AuthenticationFailed,
    ChannelBinding,
    ScramClient,
    ScramError,
    ScramSecret,
    ScramServer,
    md5_password_response,
    md5_secret,
    parse_scram_secret,
    password_type,
    scram_sha_256_secret,
    verify_password,
)
from pgwire.testing.cluster import PostgresCluster

TIMEOUT = 10.0

# Passwords that exercise SASLprep: mapped, normalised, and the raw-bytes fallback.
TRICKY_PASSWORDS = [
    "plain ascii",
    "\x07bell",  # ASCII control character: PostgreSQL skips SASLprep for ASCII
    "pässwörd",
    "I\u00adX",  # soft hyphen maps to nothing
    "\u2168",  # ROMAN NUMERAL NINE: NFKC gives "IX"
    "a\u3000b",  # ideographic space maps to a space
    "\uff50\uff41\uff53\uff53",  # fullwidth "pass"
    "\u0627\u0031",  # bidi rule broken: hashed raw
    "\x07\u00e9",  # control character with non-ASCII: prohibited, hashed raw
    "a\u0340",  # prohibited before NFKC only
    "\u0221x",  # unassigned in Unicode 3.2: hashed raw
]


def role_name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def sql_literal(text: str) -> str:
    """A SQL expression for ``text`` that survives any character (via hex)."""
    return f"convert_from(decode('{text.encode().hex()}', 'hex'), 'UTF8')"


def create_role(cluster: PostgresCluster, name: str, password: str, encryption: str) -> str:
    """Create a login role with ``password`` stored as ``encryption``; return rolpassword."""
    cluster.sql(
        f"set password_encryption = '{encryption}';\n"
        "do $$ begin execute format('create role %I login password %L', "
        f"{sql_literal(name)}, {sql_literal(password)}); end $$;"
    )
    return cluster.sql(
        f"select rolpassword from pg_authid where rolname = {sql_literal(name)}"
    )


@pytest.fixture(scope="module")
def scram_cluster() -> Iterator[PostgresCluster]:
    """PostgreSQL with ``scram-sha-256`` in pg_hba.conf and TLS on."""
    with PostgresCluster(auth="scram-sha-256", ssl=True) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def md5_cluster() -> Iterator[PostgresCluster]:
    """PostgreSQL with ``md5`` in pg_hba.conf, no TLS."""
    with PostgresCluster(auth="md5", ssl=False) as cluster:
        yield cluster


# ---------------------------------------------------------------------------
# Stored secrets made by PostgreSQL


@pytest.mark.parametrize("password", TRICKY_PASSWORDS)
def test_postgresql_scram_secrets_parse_and_verify(
    pg_cluster: PostgresCluster, password: str
) -> None:
    name = role_name("scram")
    stored = create_role(pg_cluster, name, password, "scram-sha-256")
    try:
        assert password_type(stored) == "scram-sha-256"
        secret = parse_scram_secret(stored)
        assert str(secret) == stored
        assert secret.iterations == 4096 and len(secret.salt) == 16
        assert secret.verify_password(password)
        assert verify_password(stored, password, user=name)
        assert not verify_password(stored, password + "x", user=name)
        # Our server, holding PostgreSQL's secret, accepts our client...
        server = ScramServer(stored, user=name)
        client = ScramClient(password)
        server_first = server.receive_client_first(client.mechanism, client.client_first())
        client.receive_server_final(
            server.receive_client_final(client.receive_server_first(server_first))
        )
        assert server.authenticated and client.authenticated
        # ...and refuses a wrong password the way PostgreSQL does.
        server = ScramServer(stored, user=name)
        client = ScramClient(password + "x")
        server_first = server.receive_client_first(client.mechanism, client.client_first())
        with pytest.raises(AuthenticationFailed) as info:
            server.receive_client_final(client.receive_server_first(server_first))
        assert info.value.sqlstate == "28P01"
    finally:
        pg_cluster.sql(f'drop role "{name}"')


@pytest.mark.parametrize(
    ("user_prefix", "password"),
    [("md5", "s3cret"), ("mд5_ünï", "pässwörd"), ("md5", "\x07bell")],
)
def test_md5_secret_equals_postgresqls(
    pg_cluster: PostgresCluster, user_prefix: str, password: str
) -> None:
    name = role_name(user_prefix)
    stored = create_role(pg_cluster, name, password, "md5")
    try:
        assert stored == md5_secret(password, name)
        assert password_type(stored) == "md5"
        assert verify_password(stored, password, user=name)
    finally:
        pg_cluster.sql(f'drop role "{name}"')


# ---------------------------------------------------------------------------
# Logging in to PostgreSQL with pgwire.Frontend


class LoginRefused(Exception):
    """PostgreSQL answered the login with an ErrorResponse."""

    def __init__(self, error: pw.ErrorResponse) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class Wire:
    """A blocking socket driving one pgwire.Frontend."""

    def __init__(self, cluster: PostgresCluster) -> None:
        self.sock: socket.socket = socket.create_connection(
            (cluster.host, cluster.port), timeout=TIMEOUT
        )
        self.frontend = pw.Frontend()

    def send(self, message: pw.Message) -> None:
        self.sock.sendall(self.frontend.send(message))

    def event(self) -> pw.FrontendEvent:
        while True:
            event = self.frontend.next_event()
            if event is not pw.NEED_DATA:
                return event
            # One byte answers SSLRequest: read no further, TLS starts right after.
            size = 1 if self.frontend.phase is pw.Phase.SSL_NEGOTIATION else 65536
            self.frontend.receive_data(self.sock.recv(size))

    def start_tls(self, cluster: PostgresCluster) -> ChannelBinding:
        """SSLRequest, then TLS verified against the cluster's CA; return its binding."""
        self.send(pw.SSLRequest())
        answer = self.event()
        assert answer == pw.SSLResponse(accepted=True)
        context = ssl.create_default_context(cafile=str(cluster.ca_cert))
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        assert isinstance(self.sock, ssl.SSLSocket)
        certificate = self.sock.getpeercert(binary_form=True)
        assert certificate is not None
        return ChannelBinding.from_certificate(certificate)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Login:
    """What happened during one login."""

    requests: list[str] = field(default_factory=list)
    scram: ScramClient | None = None
    current_user: str | None = None


def log_in(
    cluster: PostgresCluster,
    user: str,
    password: str,
    *,
    tls: bool = False,
    scram_client: Callable[[tuple[str, ...], ChannelBinding | None], ScramClient] | None = None,
) -> Login:
    """Log in with pgwire.Frontend, answering whatever the server asks; run one query."""
    wire = Wire(cluster)
    login = Login()
    try:
        binding = wire.start_tls(cluster) if tls else None
        wire.send(pw.StartupMessage.from_dict({"user": user, "database": "postgres"}))
        while True:
            event = wire.event()
            login.requests.append(type(event).__name__)
            if isinstance(event, pw.ErrorResponse):
                raise LoginRefused(event)
            if isinstance(event, pw.AuthenticationSASL):
                if scram_client is not None:
                    client = scram_client(event.mechanisms, binding)
                else:
                    client = ScramClient(
                        password, mechanisms=event.mechanisms, channel_binding=binding
                    )
                login.scram = client
                wire.send(pw.SASLInitialResponse(mechanism=client.mechanism,
                                                 data=client.client_first()))
            elif isinstance(event, pw.AuthenticationSASLContinue):
                assert login.scram is not None
                wire.send(pw.SASLResponse(data=login.scram.receive_server_first(event.data)))
            elif isinstance(event, pw.AuthenticationSASLFinal):
                assert login.scram is not None
                login.scram.receive_server_final(event.data)
            elif isinstance(event, pw.AuthenticationMD5Password):
                wire.send(pw.PasswordMessage(
                    password=md5_password_response(user, password, event.salt)))
            elif isinstance(event, pw.AuthenticationOk):
                # Mutual authentication: never accept Ok before the server's proof.
                assert login.scram is None or login.scram.authenticated
            elif isinstance(event, pw.ReadyForQuery):
                break
        wire.send(pw.Query(query="select current_user"))
        while True:
            event = wire.event()
            if isinstance(event, pw.DataRow):
                value = event.values[0]
                assert value is not None
                login.current_user = value.decode()
            elif isinstance(event, pw.ReadyForQuery):
                break
        wire.send(pw.Terminate())
    finally:
        wire.close()
    return login


def test_scram_login_without_tls(scram_cluster: PostgresCluster) -> None:
    name = role_name("scram_login")
    create_role(scram_cluster, name, "pässwörd I\u00adX", "scram-sha-256")
    login = log_in(scram_cluster, name, "pässwörd I\u00adX")
    assert login.scram is not None
    assert login.scram.mechanism == SCRAM_SHA_256  # no TLS: PostgreSQL offers no PLUS
    assert login.scram.authenticated and not login.scram.channel_bound
    assert login.requests[:4] == [
        "AuthenticationSASL", "AuthenticationSASLContinue", "AuthenticationSASLFinal",
        "AuthenticationOk",
    ]
    assert login.current_user == name


def test_scram_login_with_a_wrong_password_is_refused_with_28p01(
    scram_cluster: PostgresCluster,
) -> None:
    name = role_name("scram_wrong")
    create_role(scram_cluster, name, "right", "scram-sha-256")
    with pytest.raises(LoginRefused) as info:
        log_in(scram_cluster, name, "wrong")
    assert info.value.error.code == "28P01"
    assert info.value.error.message == f'password authentication failed for user "{name}"'


def test_postgresql_accepts_the_scram_secret_we_build(scram_cluster: PostgresCluster) -> None:
    password = "\u2168 ünï\u3000cødé"
    ours = scram_sha_256_secret(password, iterations=5000)
    name = role_name("our_secret")
    stored = create_role(scram_cluster, name, ours, "scram-sha-256")
    assert stored == ours  # PostgreSQL keeps a valid SCRAM secret as given
    # libpq applies its own SASLprep to the password and logs in with our secret.
    dsn = scram_cluster.dsn(user=name, password=password, sslmode="disable")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select current_user").fetchone() == (name,)
    assert log_in(scram_cluster, name, password).current_user == name


def test_scram_plus_login_over_tls(scram_cluster: PostgresCluster) -> None:
    name = role_name("plus")
    create_role(scram_cluster, name, "tls pässword", "scram-sha-256")
    login = log_in(scram_cluster, name, "tls pässword", tls=True)
    assert login.scram is not None
    assert login.scram.mechanism == SCRAM_SHA_256_PLUS
    assert login.scram.channel_bound
    assert login.current_user == name


def test_postgresql_refuses_a_foreign_channel_binding_with_28000(
    scram_cluster: PostgresCluster,
) -> None:
    name = role_name("mitm")
    create_role(scram_cluster, name, "pw", "scram-sha-256")

    def impostor(mechanisms: tuple[str, ...], binding: ChannelBinding | None) -> ScramClient:
        assert binding is not None
        other = ChannelBinding(data=bytes(b ^ 1 for b in binding.data))
        return ScramClient("pw", mechanisms=mechanisms, channel_binding=other)

    with pytest.raises(LoginRefused) as info:
        log_in(scram_cluster, name, "pw", tls=True, scram_client=impostor)
    assert info.value.error.code == "28000"
    assert info.value.error.message == "SCRAM channel binding check failed"


def test_postgresql_refuses_the_y_downgrade_over_tls_with_28000(
    scram_cluster: PostgresCluster,
) -> None:
    name = role_name("downgrade")
    create_role(scram_cluster, name, "pw", "scram-sha-256")

    def downgraded(mechanisms: tuple[str, ...], binding: ChannelBinding | None) -> ScramClient:
        assert SCRAM_SHA_256_PLUS in mechanisms  # PostgreSQL offered PLUS over TLS
        # As if a man in the middle had removed PLUS from the list.
        return ScramClient("pw", mechanisms=(SCRAM_SHA_256,), channel_binding=binding)

    with pytest.raises(LoginRefused) as info:
        log_in(scram_cluster, name, "pw", tls=True, scram_client=downgraded)
    assert info.value.error.code == "28000"
    assert info.value.error.message == "SCRAM channel binding negotiation error"


def test_channel_binding_required_without_tls_stops_before_sending(
    scram_cluster: PostgresCluster,
) -> None:
    name = role_name("require")
    create_role(scram_cluster, name, "pw", "scram-sha-256")
    fake = ChannelBinding(data=bytes(32))  # claims TLS data, but PostgreSQL sees plaintext

    def requiring(mechanisms: tuple[str, ...], binding: ChannelBinding | None) -> ScramClient:
        assert mechanisms == (SCRAM_SHA_256,)
        return ScramClient("pw", mechanisms=mechanisms, channel_binding=fake,
                           require_channel_binding=True)

    with pytest.raises(ScramError) as info:
        log_in(scram_cluster, name, "pw", scram_client=requiring)
    assert info.value.sqlstate == "28000"


def test_md5_login(md5_cluster: PostgresCluster) -> None:
    name = role_name("md5_login")
    stored = create_role(md5_cluster, name, "pässwörd", "md5")
    login = log_in(md5_cluster, name, "pässwörd")
    assert login.requests[:2] == ["AuthenticationMD5Password", "AuthenticationOk"]
    assert login.scram is None
    assert login.current_user == name
    # The stored secret logs in too: it is as good as the password for MD5.
    assert log_in(md5_cluster, name, stored).current_user == name
    with pytest.raises(LoginRefused) as info:
        log_in(md5_cluster, name, "wrong")
    assert info.value.error.code == "28P01"


# ---------------------------------------------------------------------------
# libpq logging in to ScramServer


@dataclass
class ServerOutcome:
    server: ScramServer | None = None
    error: BaseException | None = None


def serve_one_login(
    listener: socket.socket,
    secret: ScramSecret,
    outcome: ServerOutcome,
    tls: tuple[ssl.SSLContext, bytes] | None,
) -> None:
    """Accept one connection and authenticate it with ScramServer; then answer Terminate."""
    conn: socket.socket | None = None
    try:
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        backend = pw.Backend()

        def event() -> pw.BackendEvent:
            assert conn is not None
            while True:
                next_event = backend.next_event()
                if next_event is not pw.NEED_DATA:
                    return next_event
                backend.receive_data(conn.recv(65536))

        binding = None
        first = event()
        if isinstance(first, pw.SSLRequest):
            conn.sendall(backend.send(pw.SSLResponse(accepted=tls is not None)))
            if tls is not None:
                context, certificate = tls
                conn = context.wrap_socket(conn, server_side=True)
                binding = ChannelBinding.from_certificate(certificate)
            first = event()
        assert isinstance(first, pw.StartupMessage)
        server = ScramServer(secret, channel_binding=binding, user=first.get("user"))
        outcome.server = server
        conn.sendall(backend.send(pw.AuthenticationSASL(mechanisms=server.mechanisms)))
        initial = event()
        assert isinstance(initial, pw.SASLInitialResponse) and initial.data is not None
        try:
            server_first = server.receive_client_first(initial.mechanism, initial.data)
            conn.sendall(backend.send(pw.AuthenticationSASLContinue(data=server_first)))
            response = event()
            assert isinstance(response, pw.SASLResponse)
            server_final = server.receive_client_final(response.data)
        except pw.RemoteProtocolError as exc:
            conn.sendall(backend.send(pw.error_response(exc)))
            outcome.error = exc
            return
        conn.sendall(
            backend.send(pw.AuthenticationSASLFinal(data=server_final))
            + backend.send(pw.AuthenticationOk())
            + b"".join(backend.send(pw.ParameterStatus(name=key, value=value)) for key, value in (
                ("server_version", "15.0"), ("server_encoding", "UTF8"),
                ("client_encoding", "UTF8"), ("standard_conforming_strings", "on"),
                ("integer_datetimes", "on"), ("DateStyle", "ISO, MDY"),
            ))
            + backend.send(pw.BackendKeyData(process_id=1, secret_key=b"\0\0\0\1"))
            + backend.send(pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))
        )
        assert isinstance(event(), pw.Terminate)
    except BaseException as exc:  # reported to the test thread
        outcome.error = exc
    finally:
        if conn is not None:
            conn.close()
        listener.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    sock.settimeout(TIMEOUT)
    yield sock
    sock.close()


def run_libpq_login(
    listener: socket.socket,
    secret: ScramSecret,
    dsn_options: dict[str, str],
    tls: tuple[ssl.SSLContext, bytes] | None = None,
) -> tuple[ServerOutcome, BaseException | None]:
    outcome = ServerOutcome()
    thread = threading.Thread(target=serve_one_login, args=(listener, secret, outcome, tls))
    thread.start()
    port = listener.getsockname()[1]
    client_error: BaseException | None = None
    try:
        # Any: ** into psycopg's typed keyword parameters (values are all str).
        params: dict[str, Any] = {
            "host": "127.0.0.1", "port": str(port), "user": "alice", "dbname": "db",
            "gssencmode": "disable", "connect_timeout": "10", **dsn_options,
        }
        with psycopg.connect(**params):
            pass
    except psycopg.Error as exc:
        client_error = exc
    thread.join(TIMEOUT * 2)
    assert not thread.is_alive()
    return outcome, client_error


def test_libpq_logs_in_to_scram_server(listener: socket.socket) -> None:
    secret = ScramSecret.from_password("pässwörd I\u00adX")
    outcome, client_error = run_libpq_login(
        listener, secret, {"password": "pässwörd IX", "sslmode": "disable"})
    assert client_error is None and outcome.error is None
    assert outcome.server is not None and outcome.server.authenticated
    assert outcome.server.mechanism == SCRAM_SHA_256


def test_libpq_with_a_wrong_password_gets_28p01_from_scram_server(
    listener: socket.socket,
) -> None:
    secret = ScramSecret.from_password("right")
    outcome, client_error = run_libpq_login(
        listener, secret, {"password": "wrong", "sslmode": "disable"})
    assert isinstance(outcome.error, AuthenticationFailed)
    assert isinstance(client_error, psycopg.OperationalError)
    assert 'password authentication failed for user "alice"' in str(client_error)


def test_libpq_requiring_channel_binding_logs_in_to_scram_server_over_tls(
    listener: socket.socket, scram_cluster: PostgresCluster
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(scram_cluster.server_cert, scram_cluster.server_key)
    certificate = ssl.PEM_cert_to_DER_cert(scram_cluster.server_cert.read_text())
    secret = ScramSecret.from_password("tls pw")
    outcome, client_error = run_libpq_login(
        listener, secret,
        {"password": "tls pw", "sslmode": "verify-full", "host": "localhost",
         "hostaddr": "127.0.0.1", "sslrootcert": str(scram_cluster.ca_cert),
         "channel_binding": "require"},
        tls=(context, certificate),
    )
    assert client_error is None and outcome.error is None
    assert outcome.server is not None
    assert outcome.server.mechanism == SCRAM_SHA_256_PLUS
    assert outcome.server.channel_bound

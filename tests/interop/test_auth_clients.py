"""Real clients log in to a ServerConnection-based server with every method.

psql (the system's libpq), psycopg 3 (its bundled libpq 18), asyncpg and
pg8000 each connect to :class:`AuthServer` (tests/interop/auth_server.py) on a
free loopback port, with trust, cleartext password, MD5 (stored MD5 secret and
plaintext secret), SCRAM-SHA-256 (stored SCRAM secret), SCRAM-SHA-256-PLUS over
TLS and client certificates. Every test checks both ends: what the client got
(the server's fixed row, or the failure it reports) and what the *server* saw
(the Authenticated or LoginFailed event: method, channel binding, TLS), and
that the server side raised nothing it should not have.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pg8000.exceptions
import pg8000.native
import psycopg
import pytest

from pgwire.auth import md5_secret, scram_sha_256_secret
from pgwire.tls import TLSError, load_certificate_der, server_context

from .auth_server import ANSWER, AuthServer, Session, TestPKI, User

PASSWORD = "s3cret-ü"
USERS = {
    "trust_user": User("trust"),
    "clear_user": User("password", PASSWORD),
    "md5_user": User("md5", md5_secret(PASSWORD, "md5_user")),
    "md5_plain": User("md5", PASSWORD),
    "scram_user": User("scram-sha-256", scram_sha_256_secret(PASSWORD)),
    "cert_user": User("cert"),
}
CLIENTS = ("psql", "psycopg", "asyncpg", "pg8000")


# ---------------------------------------------------------------------------
# servers


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(pki: TestPKI) -> Iterator[AuthServer]:
    """TLS offered, not required; no client certificates asked for."""
    context = server_context(pki.server_cert, pki.server_key)
    with AuthServer(USERS, ssl_context=context,
                    server_certificate=load_certificate_der(pki.server_cert)) as auth_server:
        yield auth_server


@pytest.fixture(scope="module")
def cert_server(pki: TestPKI) -> Iterator[AuthServer]:
    """Client certificates required and checked against the test CA."""
    context = server_context(pki.server_cert, pki.server_key, client_ca=pki.ca_cert,
                             require_client_certificate=True)
    with AuthServer(USERS, ssl_context=context,
                    server_certificate=load_certificate_der(pki.server_cert)) as auth_server:
        yield auth_server


@pytest.fixture(scope="module")
def tls_only_server(pki: TestPKI) -> Iterator[AuthServer]:
    """``require_tls``: like a pg_hba.conf with only hostssl lines."""
    context = server_context(pki.server_cert, pki.server_key)
    with AuthServer(USERS, ssl_context=context, require_tls=True,
                    server_certificate=load_certificate_der(pki.server_cert)) as auth_server:
        yield auth_server


# ---------------------------------------------------------------------------
# one login with any client


@dataclass
class Login:
    """How to connect: the libpq-style ``sslmode`` and friends, for every client."""

    user: str
    password: str | None = PASSWORD
    sslmode: str = "disable"  # disable, require or verify-full
    cert: tuple[Path, Path] | None = None
    libpq: dict[str, str] = field(default_factory=dict)  # extra libpq keywords
    direct_tls: bool = False


@dataclass
class Outcome:
    """What the client reported: the row it read, or its error."""

    answer: str | None = None
    error: str = ""
    sqlstate: str | None = None  # when the client exposes it (asyncpg, pg8000)

    @property
    def ok(self) -> bool:
        return self.answer is not None


def libpq_conninfo(port: int, login: Login, pki: TestPKI) -> dict[str, str]:
    options = {"host": "localhost", "hostaddr": "127.0.0.1", "port": str(port),
               "user": login.user, "dbname": "app", "sslmode": login.sslmode,
               "connect_timeout": "10", "gssencmode": "disable"}
    if login.sslmode == "verify-full":
        options["sslrootcert"] = str(pki.ca_cert)
    if login.cert is not None:
        options["sslcert"], options["sslkey"] = map(str, login.cert)
    if login.direct_tls:
        options["sslnegotiation"] = "direct"
    options.update(login.libpq)
    return options


def conninfo_string(options: dict[str, str]) -> str:
    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return " ".join(f"{key}={quote(value)}" for key, value in options.items())


def run_psql(port: int, login: Login, pki: TestPKI) -> Outcome:
    program = shutil.which("psql")
    if program is None:
        pytest.fail("psql is not on PATH: install the PostgreSQL client "
                    "(e.g. apt-get install postgresql-client)")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["PGPASSFILE"] = str(pki.directory / "no-such-pgpass")
    if login.password is not None:
        env["PGPASSWORD"] = login.password
    result = subprocess.run(
        [program, "-X", "-At", "-w", "-c", "select 1",
         conninfo_string(libpq_conninfo(port, login, pki))],
        capture_output=True, text=True, encoding="utf-8", env=env, timeout=60, check=False,
    )
    if result.returncode == 0:
        return Outcome(answer=result.stdout.strip())
    return Outcome(error=result.stderr)


def run_psycopg(port: int, login: Login, pki: TestPKI) -> Outcome:
    options: dict[str, Any] = libpq_conninfo(port, login, pki)
    options["passfile"] = str(pki.directory / "no-such-pgpass")
    if login.password is not None:
        options["password"] = login.password
    try:
        with psycopg.connect(**options, autocommit=True) as connection:
            row = connection.execute("select 1").fetchone()
    except psycopg.OperationalError as exc:
        return Outcome(error=str(exc), sqlstate=exc.sqlstate)
    assert row is not None
    return Outcome(answer=str(row[0]))


def client_ssl_context(login: Login, pki: TestPKI) -> ssl.SSLContext:
    if login.sslmode == "verify-full":
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if login.cert is not None:
        context.load_cert_chain(*map(str, login.cert))
    if login.direct_tls:
        context.set_alpn_protocols(["postgresql"])
    return context


def run_asyncpg(port: int, login: Login, pki: TestPKI) -> Outcome:
    async def connect() -> str:
        connection = await asyncpg.connect(
            host="localhost" if login.sslmode == "verify-full" else "127.0.0.1", port=port,
            user=login.user, password=login.password, database="app", timeout=10,
            ssl=client_ssl_context(login, pki) if login.sslmode != "disable" else False,
            direct_tls=login.direct_tls, passfile=str(pki.directory / "no-such-pgpass"),
        )
        try:
            return str(await connection.fetchval("select 1"))
        finally:
            await connection.close()

    try:
        return Outcome(answer=asyncio.run(connect()))
    except asyncpg.PostgresError as exc:
        return Outcome(error=str(exc), sqlstate=exc.sqlstate)
    except (OSError, asyncpg.InterfaceError) as exc:  # e.g. a failed TLS handshake
        return Outcome(error=f"{type(exc).__name__}: {exc}")


def run_pg8000(port: int, login: Login, pki: TestPKI) -> Outcome:
    assert not login.direct_tls, "pg8000 has no direct TLS"
    try:
        connection = pg8000.native.Connection(
            login.user, host="127.0.0.1", port=port, database="app",
            password=login.password, timeout=10,
            ssl_context=client_ssl_context(login, pki) if login.sslmode != "disable" else False,
        )
    except pg8000.exceptions.DatabaseError as exc:
        fields: dict[str, str] = exc.args[0]
        return Outcome(error=fields.get("M", ""), sqlstate=fields.get("C"))
    except (OSError, pg8000.exceptions.InterfaceError) as exc:  # e.g. a failed TLS handshake
        return Outcome(error=f"{type(exc).__name__}: {exc}")
    try:
        rows = connection.run("select 1")
    finally:
        connection.close()
    return Outcome(answer=str(rows[0][0]))


RUNNERS = {"psql": run_psql, "psycopg": run_psycopg, "asyncpg": run_asyncpg,
           "pg8000": run_pg8000}


def log_in(client: str, auth_server: AuthServer, login: Login,
           pki: TestPKI) -> tuple[Outcome, Session]:
    """Run one client login; return its outcome and the server's one session."""
    outcome = RUNNERS[client](auth_server.port, login, pki)
    sessions = auth_server.take_sessions()
    assert len(sessions) == 1, [(s.user, s.failed, s.error) for s in sessions]
    return outcome, sessions[0]


def assert_logged_in(outcome: Outcome, session: Session, *, method: str, tls: bool) -> None:
    assert outcome.ok, outcome.error
    assert outcome.answer == ANSWER
    assert session.error is None, session.error_traceback
    assert session.failed is None
    assert session.authenticated is not None
    assert session.authenticated.method == method
    assert session.authenticated.channel_bound == (method == "scram-sha-256-plus")
    assert (session.tls is not None) == tls
    assert session.queries == ["select 1"]
    assert session.terminated


def assert_refused(outcome: Outcome, session: Session, *, sqlstate: str, message: str) -> None:
    """The server refused the login with FATAL ``sqlstate``, and the client says so."""
    assert not outcome.ok
    assert session.error is None, session.error_traceback
    assert session.authenticated is None
    assert session.failed is not None
    assert session.failed.sqlstate == sqlstate
    assert message in session.failed.message
    assert message in outcome.error
    if outcome.sqlstate is not None:  # psql and libpq do not expose it for login errors
        assert outcome.sqlstate == sqlstate


# ---------------------------------------------------------------------------
# every client, every method

# (user, sslmode, TLS used, server-side method). "scram-plus" is SCRAM-SHA-256-PLUS
# for clients that implement channel binding; asyncpg does not (plain SCRAM, flag 'n').
METHOD_CASES = [
    pytest.param(("trust_user", "disable", False, "trust"), id="trust"),
    pytest.param(("clear_user", "require", True, "password"), id="password-tls"),
    pytest.param(("clear_user", "disable", False, "password"), id="password-plain"),
    pytest.param(("md5_user", "disable", False, "md5"), id="md5-stored-md5"),
    pytest.param(("md5_plain", "require", True, "md5"), id="md5-plaintext-secret"),
    pytest.param(("scram_user", "disable", False, "scram-sha-256"), id="scram-plain"),
    pytest.param(("scram_user", "verify-full", True, "scram-plus"), id="scram-plus-verify-full"),
]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", METHOD_CASES)
def test_login_with_each_method(client: str, case: tuple[str, str, bool, str],
                                server: AuthServer, pki: TestPKI) -> None:
    user, sslmode, tls, method = case
    outcome, session = log_in(client, server, Login(user=user, sslmode=sslmode), pki)
    if method == "scram-plus":
        method = "scram-sha-256" if client == "asyncpg" else "scram-sha-256-plus"
    assert_logged_in(outcome, session, method=method, tls=tls)
    assert session.startup is not None
    assert session.startup.get("database") == "app"


@pytest.mark.parametrize("client", CLIENTS)
def test_certificate_login(client: str, cert_server: AuthServer, pki: TestPKI) -> None:
    login = Login(user="cert_user", password=None, sslmode="verify-full",
                  cert=pki.make_client_cert("cert_user"))
    outcome, session = log_in(client, cert_server, login, pki)
    assert_logged_in(outcome, session, method="cert", tls=True)
    assert session.tls is not None
    assert session.tls.peer_common_name == "cert_user"


@pytest.mark.parametrize("client", CLIENTS)
def test_certificate_of_another_user_is_refused(client: str, cert_server: AuthServer,
                                                 pki: TestPKI) -> None:
    login = Login(user="cert_user", password=None, sslmode="require",
                  cert=pki.make_client_cert("mallory"))
    outcome, session = log_in(client, cert_server, login, pki)
    assert_refused(outcome, session, sqlstate="28000",
                   message='certificate authentication failed for user "cert_user"')


@pytest.mark.parametrize("client", ["psql", "psycopg"])
def test_scram_plus_with_channel_binding_required(client: str, server: AuthServer,
                                                  pki: TestPKI) -> None:
    login = Login(user="scram_user", sslmode="verify-full",
                  libpq={"channel_binding": "require"})
    outcome, session = log_in(client, server, login, pki)
    assert_logged_in(outcome, session, method="scram-sha-256-plus", tls=True)


def test_pg8000_binds_scram_to_the_channel(server: AuthServer, pki: TestPKI) -> None:
    outcome, session = log_in("pg8000", server, Login(user="scram_user", sslmode="require"), pki)
    assert_logged_in(outcome, session, method="scram-sha-256-plus", tls=True)


# ---------------------------------------------------------------------------
# failures


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(("user", "sslmode"), [
    pytest.param("scram_user", "require", id="scram"),
    pytest.param("md5_user", "require", id="md5"),
    pytest.param("md5_plain", "disable", id="md5-plaintext-secret"),
    pytest.param("clear_user", "require", id="password"),
])
def test_wrong_password(client: str, user: str, sslmode: str, server: AuthServer,
                        pki: TestPKI) -> None:
    login = Login(user=user, password="not the password", sslmode=sslmode)
    outcome, session = log_in(client, server, login, pki)
    assert_refused(outcome, session, sqlstate="28P01",
                   message=f'password authentication failed for user "{user}"')


@pytest.mark.parametrize("client", CLIENTS)
def test_unknown_user_fails_like_a_wrong_password(client: str, server: AuthServer,
                                                  pki: TestPKI) -> None:
    outcome, session = log_in(client, server, Login(user="ghost", sslmode="require"), pki)
    assert_refused(outcome, session, sqlstate="28P01",
                   message='password authentication failed for user "ghost"')


@pytest.mark.parametrize("client", CLIENTS)
def test_tls_required_but_client_disables_it(client: str, tls_only_server: AuthServer,
                                             pki: TestPKI) -> None:
    outcome, session = log_in(client, tls_only_server, Login(user="trust_user"), pki)
    assert_refused(outcome, session, sqlstate="28000",
                   message='connection for user "trust_user" requires TLS')
    assert session.tls is None


@pytest.mark.parametrize("client", CLIENTS)
def test_tls_required_and_used(client: str, tls_only_server: AuthServer, pki: TestPKI) -> None:
    outcome, session = log_in(client, tls_only_server,
                              Login(user="md5_user", sslmode="require"), pki)
    assert_logged_in(outcome, session, method="md5", tls=True)


@pytest.mark.parametrize("client", CLIENTS)
def test_client_without_certificate_fails_the_handshake(client: str, cert_server: AuthServer,
                                                        pki: TestPKI) -> None:
    outcome, session = log_in(client, cert_server, Login(user="cert_user", sslmode="require"),
                              pki)
    assert not outcome.ok
    assert session.authenticated is None
    assert session.startup is None
    # The one server-side error a client may cause here: its handshake fails.
    assert isinstance(session.error, TLSError), session.error_traceback
    assert session.error.sqlstate == "08P01"
    assert session.error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    if client in ("psql", "psycopg"):  # libpq shows the alert our server sent
        assert "certificate required" in outcome.error


# ---------------------------------------------------------------------------
# libpq 17+ features, through psycopg's libpq 18


def test_psycopg_direct_tls_with_channel_binding(server: AuthServer, pki: TestPKI) -> None:
    login = Login(user="scram_user", sslmode="verify-full", direct_tls=True,
                  libpq={"channel_binding": "require", "require_auth": "scram-sha-256"})
    outcome, session = log_in("psycopg", server, login, pki)
    assert_logged_in(outcome, session, method="scram-sha-256-plus", tls=True)
    assert session.tls is not None
    assert session.tls.alpn_protocol == "postgresql"


def test_asyncpg_direct_tls(server: AuthServer, pki: TestPKI) -> None:
    login = Login(user="md5_user", sslmode="verify-full", direct_tls=True)
    outcome, session = log_in("asyncpg", server, login, pki)
    assert_logged_in(outcome, session, method="md5", tls=True)
    assert session.tls is not None
    assert session.tls.alpn_protocol == "postgresql"


@pytest.mark.parametrize(("user", "require_auth", "method"), [
    ("md5_user", "md5", "md5"),
    ("clear_user", "password", "password"),
    ("trust_user", "none", "trust"),
    ("scram_user", "scram-sha-256", "scram-sha-256"),
])
def test_psycopg_require_auth_accepts(user: str, require_auth: str, method: str,
                                      server: AuthServer, pki: TestPKI) -> None:
    login = Login(user=user, sslmode="require",
                  libpq={"require_auth": require_auth, "channel_binding": "disable"})
    outcome, session = log_in("psycopg", server, login, pki)
    assert_logged_in(outcome, session, method=method, tls=True)


@pytest.mark.parametrize(("user", "libpq_options", "message"), [
    pytest.param("md5_user", {"require_auth": "scram-sha-256"},
                 'requirement "scram-sha-256" failed: server requested a hashed password',
                 id="require_auth-md5"),
    pytest.param("trust_user", {"require_auth": "scram-sha-256"},
                 'requirement "scram-sha-256" failed: server did not complete authentication',
                 id="require_auth-trust"),
    pytest.param("clear_user", {"channel_binding": "require"},
                 "channel binding required but not supported by server's authentication request",
                 id="channel_binding-password"),
    pytest.param("md5_user", {"channel_binding": "require"},
                 "channel binding required but not supported by server's authentication request",
                 id="channel_binding-md5"),
    pytest.param("trust_user", {"channel_binding": "require"},
                 "channel binding required, but server authenticated client without channel "
                 "binding", id="channel_binding-trust"),
])
def test_psycopg_refuses_a_weaker_method(user: str, libpq_options: dict[str, str], message: str,
                                         server: AuthServer, pki: TestPKI) -> None:
    login = Login(user=user, sslmode="require", libpq=libpq_options)
    outcome, session = log_in("psycopg", server, login, pki)
    assert not outcome.ok
    assert message in outcome.error
    # The client hung up; the server saw no proof and raised nothing.
    assert session.error is None, session.error_traceback
    assert session.failed is None
    if user == "trust_user":
        assert session.authenticated is not None  # trust: the server said Ok at once
    else:
        assert session.authenticated is None

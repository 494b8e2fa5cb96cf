"""RoleRewrite through a real proxy, in front of a real PostgreSQL, with psycopg.

Each mode must end with the right ``session_user`` and ``current_user`` on the
server itself. Raw StartupMessages (built with pgwire's own Frontend) test
what no driver sends: duplicate keys, a ``role`` key, ``replication``. The
first tests check the startup-options parser against PostgreSQL directly, so
the facts the sanitizer relies on are the server's, not ours.

Roles (prefix ``rw5_``, unique to this module): a NOINHERIT pool role, a
NOLOGIN group the pool role is a member of, login roles, and a role the pool
role is not a member of. The cluster's pg_hba trusts every local role.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import psycopg.errors
import pytest

import pgwire as pw
from pgwire.middleware import AuthResult, Context, Middleware, Reject
from pgwire.middleware.rewrite import RoleRewrite
from pgwire.middleware.roles import RoleGuard
from pgwire.proxy import ProxyAuth, ProxyConfig
from pgwire.roles._startup import InvalidOptions, parse_options
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import ADAPTERS, AdapterName, RunningProxy, running_proxy

TIMEOUT = 10.0
ROLES = ("rw5_pool", "rw5_group", "rw5_alice", "rw5_app", "rw5_reporting", "rw5_bob_login",
         "rw5_outsider")


@pytest.fixture(scope="module")
def roles(pg_cluster: PostgresCluster) -> Iterator[None]:
    drop = ("DROP DATABASE IF EXISTS rw5_db WITH (FORCE);\n"
            + "".join(f"DROP ROLE IF EXISTS {role};\n" for role in ROLES))
    pg_cluster.sql(drop)
    pg_cluster.sql("""
        CREATE ROLE rw5_pool LOGIN NOINHERIT;
        CREATE ROLE rw5_group NOLOGIN;
        CREATE ROLE rw5_alice LOGIN;
        CREATE ROLE rw5_app LOGIN;
        CREATE ROLE rw5_reporting LOGIN;
        CREATE ROLE rw5_bob_login LOGIN;
        CREATE ROLE rw5_outsider NOLOGIN;
        GRANT rw5_group, rw5_alice TO rw5_pool;
        CREATE DATABASE rw5_db;
    """)
    yield
    pg_cluster.sql(drop)


# -- clients ----------------------------------------------------------------------------


class Raw:
    """A pgwire Frontend on a socket: any StartupMessage, a trusted login, simple queries."""

    def __init__(self, address: tuple[str, int], pairs: Sequence[tuple[str, str]]) -> None:
        self.frontend = pw.Frontend()
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.sock.sendall(self.frontend.send(pw.StartupMessage(parameters=tuple(pairs))))

    def close(self) -> None:
        self.sock.close()

    def next_event(self) -> object:
        while (event := self.frontend.next_event()) is pw.NEED_DATA:
            self.frontend.receive_data(self.sock.recv(65536))
        return event

    def until_ready(self) -> tuple[list[object], pw.ErrorResponse | None]:
        """Events up to ReadyForQuery, or the first error (which ends a login)."""
        events: list[object] = []
        while True:
            event = self.next_event()
            events.append(event)
            if isinstance(event, pw.ReadyForQuery | pw.ConnectionClosed):
                return events, None
            if isinstance(event, pw.ErrorResponse) and event.severity == "FATAL":
                return events, event

    def query(self, sql: str) -> list[tuple[str | None, ...]]:
        self.sock.sendall(self.frontend.send(pw.Query(query=sql)))
        events, error = self.until_ready()
        assert error is None, error
        errors = [e for e in events if isinstance(e, pw.ErrorResponse)]
        assert not errors, errors
        return [tuple(None if v is None else bytes(v).decode() for v in e.values)
                for e in events if isinstance(e, pw.DataRow)]


def raw_login(address: tuple[str, int], *pairs: tuple[str, str]) -> Raw | pw.ErrorResponse:
    """Log in with exactly these startup parameters (trust): the session or the FATAL."""
    raw = Raw(address, pairs)
    _, error = raw.until_ready()
    if error is not None:
        raw.close()
        return error
    return raw


def login_error(address: tuple[str, int], *pairs: tuple[str, str]) -> pw.ErrorResponse:
    result = raw_login(address, *pairs)
    if isinstance(result, Raw):
        result.close()
        pytest.fail(f"the login with {pairs} succeeded")
    return result


def whoami(address: tuple[str, int], *pairs: tuple[str, str]) -> tuple[str | None, ...]:
    result = raw_login(address, *pairs)
    assert isinstance(result, Raw), result
    try:
        [row] = result.query("SELECT session_user, current_user")
        return row
    finally:
        result.close()


def through(cluster: PostgresCluster, proxy: RunningProxy, user: str,
            **extra: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(**cluster.connect_kwargs(user=user, host=proxy.host,
                                                    port=proxy.port, sslmode="disable",
                                                    connect_timeout=10, **extra),
                           autocommit=True, prepare_threshold=None)


def users(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = conn.execute("SELECT session_user, current_user").fetchone()
    assert row is not None
    return tuple(row)


def proxy_for(cluster: PostgresCluster, *middleware: Middleware[Any],
              adapter: AdapterName = "asyncio", **settings: Any) -> Any:
    config = ProxyConfig(upstream=(cluster.host, cluster.port), middleware=list(middleware),
                         **settings)
    return running_proxy(config, adapter=adapter)


def direct(cluster: PostgresCluster) -> tuple[str, int]:
    return (cluster.host, cluster.port)


# -- the parser agrees with PostgreSQL --------------------------------------------------

AGREES = [
    "-c role=rw5_group",
    "-crole=rw5_group",
    "--role=rw5_group",
    "-c ROLE=rw5_group",
    "--Role=rw5_group",
    "-ecrole=rw5_group",
    "-ec role=rw5_group",
    "-e-role=rw5_group",
    "\\-c role=rw5_group",
    "-\\c r\\ole=rw5_group",
    "-c\trole=rw5_group",
    "-c\vrole=rw5_group",
    "-c\frole=rw5_group",
    "-c role=rw5_group --",
    "-c role=rw5_group -c role=none",
    "-c role=none -c role=rw5_group",
    "-c x.role=rw5_group",
    "-c application_name=a\\ b -c role=rw5_group",
    "-c application_name=a=b",
    "--application-name=dash",
    "-c APPLICATION_NAME=x\\\\y",
    "-c rw5.probe=x\u00a0-crole=rw5_group",  # U+00A0 is no space to PostgreSQL
    "-c rw5.probe=x\x1c-crole=rw5_group",
    "-C x -D /nowhere -v 3 -r out -b -E -j -n -T -f s -S 64",
    "-c",
    "-c role",
    "--role",
    "-x",
    "foo",
    "-",
    "-c role=rw5_group -- x",
    "-t x",
    "-eQ",
    "-o -F",  # -o was taken out of the backend's switches before 15
]


@pytest.mark.parametrize("options", AGREES)
def test_parse_options_agrees_with_postgresql(pg_cluster: PostgresCluster, roles: None,
                                              options: str) -> None:
    result = raw_login(direct(pg_cluster), ("user", "rw5_pool"), ("database", "postgres"),
                       ("options", options))
    try:
        switches = parse_options(options)
    except InvalidOptions as refused:
        assert isinstance(result, pw.ErrorResponse), "PostgreSQL accepted it"
        assert (result.code, result.message) == (refused.sqlstate, refused.message)
        return
    assert isinstance(result, Raw), result
    try:
        [(current_user, application_name, probe)] = result.query(
            "SELECT current_user, current_setting('application_name'), "
            "current_setting('rw5.probe', true)")
    finally:
        result.close()
    settings = dict(setting for switch in switches for setting in switch.settings)
    role = settings.get("role", "none")
    assert current_user == ("rw5_pool" if role == "none" else role)
    assert application_name == settings.get("application_name", "")
    assert probe == settings.get("rw5.probe")


@pytest.mark.parametrize("options", ["-c\\ role=rw5_group", "---role=rw5_group",
                                     "-c ro-le=rw5_group", "-c\x1crole=rw5_group",
                                     "-c role\u0130=rw5_group"])
def test_look_alikes_are_no_role_to_postgresql_either(pg_cluster: PostgresCluster,
                                                      roles: None, options: str) -> None:
    assert not any(switch.sets_role for switch in parse_options(options))
    error = login_error(direct(pg_cluster), ("user", "rw5_pool"), ("database", "postgres"),
                        ("options", options))
    assert error.code == "42704"
    assert (error.message or "").startswith("unrecognized configuration parameter")


def test_a_backslash_escaping_nothing_is_stricter_than_postgresql(
    pg_cluster: PostgresCluster, roles: None,
) -> None:
    # PostgreSQL drops it silently; the parser refuses rather than guess.
    options = "-c application_name=a\\"
    with pytest.raises(InvalidOptions):
        parse_options(options)
    session = raw_login(direct(pg_cluster), ("user", "rw5_pool"), ("database", "postgres"),
                        ("options", options))
    assert isinstance(session, Raw), session
    try:
        assert session.query("SHOW application_name") == [("a",)]
    finally:
        session.close()


def test_the_duplicate_user_trap_is_real(pg_cluster: PostgresCluster, roles: None) -> None:
    """Straight to PostgreSQL, the last ``user`` wins: the packet says rw5_alice
    first and logs in as the superuser."""
    assert whoami(direct(pg_cluster), ("user", "rw5_alice"), ("database", "postgres"),
                  ("user", pg_cluster.superuser)) == (pg_cluster.superuser,) * 2


# -- preserve ---------------------------------------------------------------------------


def test_preserve_keeps_the_user_and_refuses_role_options(pg_cluster: PostgresCluster,
                                                          roles: None) -> None:
    with proxy_for(pg_cluster, RoleRewrite()) as proxy:
        with through(pg_cluster, proxy, "rw5_pool") as conn:
            assert users(conn) == ("rw5_pool", "rw5_pool")
        with pytest.raises(psycopg.OperationalError, match="setting the role at login"):
            through(pg_cluster, proxy, "rw5_pool", options="-c role=rw5_group")
        error = login_error(proxy.address, ("user", "rw5_pool"), ("options", "--Role=rw5_group"))
        assert (error.severity, error.code) == ("FATAL", "42501")
        error = login_error(proxy.address, ("user", "rw5_pool"), ("role", "rw5_group"))
        assert error.code == "42501"
        error = login_error(proxy.address, ("user", "rw5_pool"), ("options", "-c role"))
        assert (error.code, error.message) == ("42601", "-c role requires a value")


def test_strip_policy_removes_the_role_and_keeps_the_rest(pg_cluster: PostgresCluster,
                                                          roles: None) -> None:
    rewrite = RoleRewrite(policy={"role_parameters": "strip"})
    options = ("-c application_name=kept\\ here -crole=rw5_group -ec role=rw5_group "
               "--session-authorization=rw5_alice -c search_path=rw5_s")
    with proxy_for(pg_cluster, rewrite) as proxy, \
            through(pg_cluster, proxy, "rw5_pool", options=options) as conn:
        row = conn.execute("SELECT session_user, current_user, "
                           "current_setting('application_name'), current_setting('datestyle'), "
                           "current_setting('search_path')").fetchone()
        assert row == ("rw5_pool", "rw5_pool", "kept here", "ISO, DMY", "rw5_s")
        assert conn.execute("SHOW role").fetchone() == ("none",)
    with proxy_for(pg_cluster, rewrite) as proxy:
        assert whoami(proxy.address, ("user", "rw5_pool"), ("database", "postgres"),
                      ("ROLE", "rw5_group")) == ("rw5_pool", "rw5_pool")


# -- the trap and other raw packets through the proxy ----------------------------------


def test_the_proxy_closes_the_duplicate_user_trap(pg_cluster: PostgresCluster,
                                                  roles: None) -> None:
    rewrite = RoleRewrite("map", rules=[{"user": "rw5_alice", "role": "rw5_app"}])
    with proxy_for(pg_cluster, rewrite) as proxy:
        error = login_error(proxy.address, ("user", "rw5_alice"), ("database", "postgres"),
                            ("user", pg_cluster.superuser))
        assert (error.severity, error.code, error.message) == (
            "FATAL", "08P01", 'duplicate startup parameter "user"')
        assert whoami(proxy.address, ("user", "rw5_alice"), ("database", "postgres")) == (
            "rw5_app", "rw5_app")


@pytest.mark.parametrize("value", ["database", "true"])
def test_replication_is_refused_or_stripped(pg_cluster: PostgresCluster, roles: None,
                                            value: str) -> None:
    with proxy_for(pg_cluster, RoleRewrite()) as proxy:
        error = login_error(proxy.address, ("user", pg_cluster.superuser),
                            ("database", "postgres"), ("replication", value))
        assert (error.code, error.message) == (
            "42501", "replication connections are not allowed through this proxy")
    with proxy_for(pg_cluster, RoleRewrite(policy={"replication": "strip"})) as proxy:
        raw = raw_login(proxy.address, ("user", pg_cluster.superuser),
                        ("database", "postgres"), ("replication", value))
        assert isinstance(raw, Raw), raw
        try:
            # An ordinary session: replication commands are not commands here.
            assert raw.query("SELECT pg_backend_pid() > 0") == [("t",)]
            raw.sock.sendall(raw.frontend.send(pw.Query(query="IDENTIFY_SYSTEM")))
            events, _ = raw.until_ready()
            [error] = [e for e in events if isinstance(e, pw.ErrorResponse)]
            assert error.code == "42601"
        finally:
            raw.close()


# -- map --------------------------------------------------------------------------------

MAP_RULES = [
    {"user": "rw5_report_*", "role": "rw5_reporting"},
    {"user": "rw5_alice", "database": "postgres", "role": "rw5_app"},
    {"user": "rw5_alice", "database": "rw5_*", "role": "rw5_reporting"},
    {"user": "rw5_b?b", "role": "{user}_login"},
]


def test_map_mode(pg_cluster: PostgresCluster, roles: None) -> None:
    with proxy_for(pg_cluster, RoleRewrite("map", rules=MAP_RULES)) as proxy:
        # rw5_report_x is no PostgreSQL role at all: the rule decides.
        with through(pg_cluster, proxy, "rw5_report_x") as conn:
            assert users(conn) == ("rw5_reporting", "rw5_reporting")
            assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)
        with through(pg_cluster, proxy, "rw5_alice") as conn:
            assert users(conn) == ("rw5_app", "rw5_app")
        with through(pg_cluster, proxy, "rw5_alice", dbname="rw5_db") as conn:
            assert users(conn) == ("rw5_reporting", "rw5_reporting")
            assert conn.execute("SELECT current_database()").fetchone() == ("rw5_db",)
        with through(pg_cluster, proxy, "rw5_bob") as conn:
            assert users(conn) == ("rw5_bob_login", "rw5_bob_login")
        error = login_error(proxy.address, ("user", "rw5_app"), ("database", "postgres"))
        assert (error.severity, error.code, error.message) == (
            "FATAL", "28000", 'no role mapping for user "rw5_app"')
        # Without a database, the client lands in the one named after *its* user.
        error = login_error(proxy.address, ("user", "rw5_report_nodb"))
        assert error.code == "3D000"
        assert '"rw5_report_nodb"' in (error.message or "")


def test_map_mode_preserving_unmapped_users(pg_cluster: PostgresCluster,
                                            roles: None) -> None:
    rewrite = RoleRewrite("map", rules=MAP_RULES, unmapped="preserve")
    with proxy_for(pg_cluster, rewrite) as proxy, through(pg_cluster, proxy, "rw5_app") as conn:
        assert users(conn) == ("rw5_app", "rw5_app")


# -- fixed ------------------------------------------------------------------------------


def test_fixed_mode(pg_cluster: PostgresCluster, roles: None) -> None:
    with proxy_for(pg_cluster, RoleRewrite("fixed", login_role="rw5_app")) as proxy:
        for user in ("rw5_alice", "nobody_at_all", pg_cluster.superuser):
            extra = {"dbname": "postgres"} if user == "nobody_at_all" else {}
            with through(pg_cluster, proxy, user, **extra) as conn:
                assert users(conn) == ("rw5_app", "rw5_app")


# -- set_role ---------------------------------------------------------------------------


class RolesProbe(Middleware[None]):
    """Records what ctx.roles says once the login is done (one instance, every session)."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def on_authenticated(self, ctx: Context[None], result: AuthResult) -> Reject | None:
        roles = getattr(ctx, "roles", None)
        if result.ok and roles is not None:
            self.seen.append((result.user, result.upstream_user, roles.client_user,
                              roles.login_role, roles.default_role, roles.current_user))
        return None


SET_ROLE_RULES = [{"user": "rw5_intern_*", "role": "rw5_group"}]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_set_role_mode(pg_cluster: PostgresCluster, roles: None, adapter: AdapterName) -> None:
    rewrite = RoleRewrite("set_role", login_role="rw5_pool", rules=SET_ROLE_RULES,
                          unmapped="preserve", policy={"role_parameters": "strip"})
    probe = RolesProbe()
    with proxy_for(pg_cluster, rewrite, probe, adapter=adapter) as proxy:
        with through(pg_cluster, proxy, "rw5_intern_1", dbname="postgres",
                     options="-c role=rw5_alice -c application_name=intern") as conn:
            assert users(conn) == ("rw5_pool", "rw5_group")
            assert conn.execute("SHOW application_name").fetchone() == ("intern",)
            # The mapped role is the session's default: resets come back to it.
            for reset in ("RESET ROLE", "DISCARD ALL", "RESET ALL"):
                conn.execute(reset)
                assert users(conn) == ("rw5_pool", "rw5_group"), reset
            conn.execute("SET ROLE rw5_alice")  # a member role: allowed by PostgreSQL
            assert users(conn) == ("rw5_pool", "rw5_alice")
            conn.execute("RESET ROLE")
            assert users(conn) == ("rw5_pool", "rw5_group")
        # Unmapped, preserved: the client becomes its own role through the pool role.
        with through(pg_cluster, proxy, "rw5_alice") as conn:
            assert users(conn) == ("rw5_pool", "rw5_alice")
    # The facts other middleware read: the client's user, the login role, the role.
    assert probe.seen == [
        ("rw5_intern_1", "rw5_pool", "rw5_intern_1", "rw5_pool", "rw5_group", "rw5_group"),
        ("rw5_alice", "rw5_pool", "rw5_alice", "rw5_pool", "rw5_alice", "rw5_alice"),
    ]


def test_set_role_overrides_the_pool_roles_own_default_role(pg_cluster: PostgresCluster,
                                                            roles: None) -> None:
    rewrite = RoleRewrite("set_role", login_role="rw5_pool", rules=SET_ROLE_RULES)
    pg_cluster.sql("ALTER ROLE rw5_pool SET role = 'rw5_alice'")
    try:
        with proxy_for(pg_cluster, rewrite) as proxy, \
                through(pg_cluster, proxy, "rw5_intern_3", dbname="postgres") as conn:
            assert users(conn) == ("rw5_pool", "rw5_group")
            conn.execute("RESET ROLE")
            assert users(conn) == ("rw5_pool", "rw5_group")
    finally:
        pg_cluster.sql("ALTER ROLE rw5_pool RESET role")


def test_set_role_none_still_reaches_the_pool_role(pg_cluster: PostgresCluster,
                                                  roles: None) -> None:
    """What RoleRewrite alone does not close (docs): SET ROLE NONE and SET ROLE to
    the pool role set the role explicitly, so they are not resets. The
    NOINHERIT pool role then has no rights of its members; RoleGuard refuses these."""
    rewrite = RoleRewrite("set_role", login_role="rw5_pool", rules=SET_ROLE_RULES)
    with proxy_for(pg_cluster, rewrite) as proxy, \
            through(pg_cluster, proxy, "rw5_intern_2", dbname="postgres") as conn:
        conn.execute("SET ROLE NONE")
        assert users(conn) == ("rw5_pool", "rw5_pool")
        conn.execute("RESET ROLE")
        assert users(conn) == ("rw5_pool", "rw5_group")
        conn.execute("SET ROLE rw5_pool")
        assert users(conn) == ("rw5_pool", "rw5_pool")
        conn.execute("DISCARD ALL")
        assert users(conn) == ("rw5_pool", "rw5_group")


@pytest.mark.parametrize("escape", ["SET ROLE NONE", "SET ROLE rw5_pool",
                                    "SELECT set_config('role', 'none', false)"])
def test_role_guard_keeps_a_set_role_session_on_its_mapped_role(
    pg_cluster: PostgresCluster, roles: None, escape: str,
) -> None:
    """With RoleGuard (policy deny) after RoleRewrite, the escapes above are refused:
    the mapped role is the session's default, the pool role is not where it may go."""
    rewrite = RoleRewrite("set_role", login_role="rw5_pool", rules=SET_ROLE_RULES)
    with proxy_for(pg_cluster, rewrite, RoleGuard()) as proxy, \
            through(pg_cluster, proxy, "rw5_intern_4", dbname="postgres") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(escape)
        assert users(conn) == ("rw5_pool", "rw5_group")
        conn.execute("RESET ROLE")  # back to the default: allowed
        assert users(conn) == ("rw5_pool", "rw5_group")


def test_set_role_to_a_role_the_pool_is_not_a_member_of_fails_as_postgresql_says(
    pg_cluster: PostgresCluster, roles: None,
) -> None:
    rewrite = RoleRewrite("set_role", login_role="rw5_pool",
                          rules=[{"user": "*", "role": "rw5_outsider"}])
    with proxy_for(pg_cluster, rewrite) as proxy:
        error = login_error(proxy.address, ("user", "rw5_alice"), ("database", "postgres"))
        assert (error.severity, error.code, error.message) == (
            "FATAL", "42501", 'permission denied to set role "rw5_outsider"')


# -- with ProxyAuth: the client proves who it is, the proxy logs in as the mapping -----


def test_proxy_auth_checks_the_client_as_itself(pg_cluster: PostgresCluster,
                                                roles: None) -> None:
    auth = ProxyAuth(method="scram-sha-256", users={"rw5_alice": "alice-secret"})
    rewrite = RoleRewrite("map", rules=[{"user": "rw5_alice", "role": "rw5_app"}])
    with proxy_for(pg_cluster, rewrite, auth=auth) as proxy:
        with through(pg_cluster, proxy, "rw5_alice", password="alice-secret") as conn:
            assert users(conn) == ("rw5_app", "rw5_app")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            through(pg_cluster, proxy, "rw5_alice", password="wrong")


def test_a_login_that_ignored_the_mapping_is_refused(pg_cluster: PostgresCluster,
                                                     roles: None) -> None:
    # ProxyAuth.upstream_user overrides the rewrite: RoleRewrite notices and ends it.
    auth = ProxyAuth(method="trust", upstream_user="rw5_reporting")
    with proxy_for(pg_cluster, RoleRewrite("fixed", login_role="rw5_app"), auth=auth) as proxy:
        session = raw_login(proxy.address, ("user", "rw5_alice"), ("database", "postgres"))
        assert isinstance(session, Raw), session
        try:
            error = session.next_event()
            assert isinstance(error, pw.ErrorResponse), error
            assert (error.severity, error.code, error.message) == (
                "FATAL", "28000", 'the proxy logged in upstream as "rw5_reporting", not as '
                                  '"rw5_app" as its role mapping requires')
            assert isinstance(session.next_event(), pw.ConnectionClosed)
        finally:
            session.close()

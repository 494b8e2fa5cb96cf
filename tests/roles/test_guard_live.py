"""RoleGuard through a real proxy, in front of a real PostgreSQL, with psycopg.

For each policy (``deny``, ``allowlist``, ``drop_only``) a large table of
statements runs, each on a fresh session, and every case checks four things:

1. the guard's verdict: allowed, refused by the guard (42501 with the guard's
   HINT), or allowed by the guard and refused by the server;
2. who the session really is afterwards (``current_user``/``session_user``
   asked on the same connection);
3. that ``ctx.roles`` agrees once the guard's verification has run (read by a
   small recording middleware placed before the guard in the chain, so it
   sees each ReadyForQuery after the guard did);
4. for statements whose effect the text shows, that ``ctx.roles`` was right
   already at the statement's own ReadyForQuery, before any verification.

Then transaction scenarios (SET LOCAL, ROLLBACK, savepoints), the extended
protocol (named statements, ``prepare=True``, pipelines, parameters checked
at Bind) and the agreement on transaction state after a refusal, checked
against what a separate direct connection finds committed.

Roles (prefix ``gl5_``, unique to this module; the cluster trusts them):

- ``gl5_app`` LOGIN: member of ``gl5_readers``, ``gl5_writers``,
  ``gl5_staff``, ``gl5_peer`` (a LOGIN role), ``gl5_admins`` (SUPERUSER),
  ``gl5_bypass`` (BYPASSRLS) and ``gl5_creator`` (CREATEROLE); through
  ``gl5_readers`` also of ``gl5_deep``. Not a member of ``gl5_outsider``.
- ``gl5_dflt`` LOGIN: member of ``gl5_readers`` and ``gl5_writers``, with
  ``ALTER ROLE gl5_dflt SET role = 'gl5_readers'`` (its default role).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import pq

import pgwire as pw
from pgwire.middleware import AuthResult, Context, Middleware, SessionInfo
from pgwire.middleware.roles import RoleGuard
from pgwire.proxy import ProxyConfig
from pgwire.roles._graph import RoleGraphSource
from pgwire.roles._state import RoleChange, RoleDecision, RoleEvent
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import RunningProxy, running_proxy
from tests.interop.proxy_wire import RawClient

TIMEOUT = 10

APP = "gl5_app"
DFLT = "gl5_dflt"
READERS = "gl5_readers"
WRITERS = "gl5_writers"
DEEP = "gl5_deep"
STAFF = "gl5_staff"
PEER = "gl5_peer"
ADMINS = "gl5_admins"
BYPASS = "gl5_bypass"
CREATOR = "gl5_creator"
OUTSIDER = "gl5_outsider"
NOSUCH = "gl5_nosuch"
ROLES = (APP, DFLT, READERS, WRITERS, DEEP, STAFF, PEER, ADMINS, BYPASS, CREATOR, OUTSIDER)

POLICIES = ("deny", "allowlist", "drop_only")
ALLOW = {APP: [READERS, "gl5_w*", OUTSIDER], f"@{STAFF}": [BYPASS], DFLT: [WRITERS]}

OK = "ok"
GUARD = "guard"
_counter = itertools.count()


# -- the role hierarchy --------------------------------------------------------------------

SETUP = f"""
    CREATE ROLE {READERS} NOLOGIN;
    CREATE ROLE {WRITERS} NOLOGIN;
    CREATE ROLE {DEEP} NOLOGIN;
    CREATE ROLE {STAFF} NOLOGIN;
    CREATE ROLE {PEER} LOGIN;
    CREATE ROLE {ADMINS} NOLOGIN SUPERUSER;
    CREATE ROLE {BYPASS} NOLOGIN BYPASSRLS;
    CREATE ROLE {CREATOR} NOLOGIN CREATEROLE;
    CREATE ROLE {OUTSIDER} NOLOGIN;
    CREATE ROLE {APP} LOGIN;
    CREATE ROLE {DFLT} LOGIN;
    GRANT {DEEP} TO {READERS};
    GRANT {READERS}, {WRITERS}, {STAFF}, {PEER}, {ADMINS}, {BYPASS}, {CREATOR} TO {APP};
    GRANT {READERS}, {WRITERS} TO {DFLT};
    ALTER ROLE {DFLT} SET role = '{READERS}';
    CREATE TABLE gl5_items (marker text);
    CREATE TABLE gl5_scratch (n int);
    GRANT ALL ON gl5_items, gl5_scratch TO PUBLIC;
    CREATE FUNCTION gl5_become(target text) RETURNS text LANGUAGE plpgsql
        AS $$BEGIN PERFORM set_config('role', target, false); RETURN target; END$$;
    CREATE PROCEDURE gl5_pbecome(target text) LANGUAGE plpgsql
        AS $$BEGIN PERFORM set_config('role', target, false); END$$;
    CREATE PROCEDURE gl5_noop() LANGUAGE sql AS $$SELECT 1$$;
"""

TEARDOWN = ("DROP TABLE IF EXISTS gl5_items, gl5_scratch;\n"
            "DROP FUNCTION IF EXISTS gl5_become(text);\n"
            "DROP PROCEDURE IF EXISTS gl5_pbecome(text), gl5_noop();\n"
            + "".join(f"DROP ROLE IF EXISTS {name};\n" for name in reversed(ROLES)))


@pytest.fixture(scope="module")
def hierarchy(pg_cluster: PostgresCluster) -> Iterator[None]:
    pg_cluster.sql(TEARDOWN)
    pg_cluster.sql(SETUP)
    yield
    pg_cluster.sql(TEARDOWN)


# -- a middleware that records what ctx.roles says -------------------------------------------


@dataclass
class Snapshot:
    """``ctx.roles`` at one ReadyForQuery, after the guard has handled it."""

    status: str
    current_user: str | None
    session_user: str | None
    tracked: bool


@dataclass
class SessionLog:
    snapshots: list[Snapshot] = field(default_factory=list)
    events: list[RoleEvent] = field(default_factory=list)


class Recorder(Middleware[SessionLog]):
    """Records ``ctx.roles`` at every ReadyForQuery and every role event.

    Put it before the guard: server messages go through the chain in reverse,
    so it sees each ReadyForQuery after the guard's tracker did. Sessions are
    found by their ``application_name``.
    """

    server_messages = frozenset({b"Z"})

    def __init__(self) -> None:
        self.sessions: dict[str, SessionLog] = {}

    def create_state(self, info: SessionInfo) -> SessionLog:
        return SessionLog()

    def on_authenticated(self, ctx: Context[SessionLog], result: AuthResult) -> None:
        if result.ok:
            startup = ctx.startup
            name = (startup.get("application_name") if startup is not None else None) or ""
            self.sessions[name] = ctx.state
            ctx.roles.subscribe(ctx.state.events.append)

    def on_server_message(self, ctx: Context[SessionLog], message: pw.Message) -> None:
        assert isinstance(message, pw.ReadyForQuery)
        roles = ctx.roles
        ctx.state.snapshots.append(Snapshot(str(message.status.value), roles.current_user,
                                            roles.session_user, roles.tracked))


@dataclass
class Guarded:
    proxy: RunningProxy
    recorder: Recorder
    policy: str


def make_guard(policy: str, graph: RoleGraphSource) -> RoleGuard:
    # verify="always": ctx.roles is then exact after every request, also after
    # a function that changes the role where no statement shows it (the
    # default verifies only after changes the statements show).
    if policy == "deny":
        return RoleGuard("deny", verify="always")
    if policy == "allowlist":
        return RoleGuard("allowlist", allow=ALLOW, graph=graph, verify="always")
    return RoleGuard("drop_only", graph=graph, verify="always")


@pytest.fixture(scope="module")
def proxies(pg_cluster: PostgresCluster, hierarchy: None) -> Iterator[dict[str, Guarded]]:
    graph = RoleGraphSource((pg_cluster.host, pg_cluster.port), pg_cluster.superuser,
                            password=pg_cluster.superuser_password)
    graph.load()
    with contextlib.ExitStack() as stack:
        running: dict[str, Guarded] = {}
        for policy in POLICIES:
            recorder = Recorder()
            config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port),
                                 middleware=[recorder, make_guard(policy, graph)])
            proxy = stack.enter_context(running_proxy(config))
            running[policy] = Guarded(proxy, recorder, policy)
        yield running


# -- clients -------------------------------------------------------------------------------


class Client:
    """A psycopg connection through the proxy, with the recorder's log of its session."""

    def __init__(self, guarded: Guarded, user: str) -> None:
        name = f"gl5-{next(_counter)}"
        self.conn = psycopg.connect(host=guarded.proxy.host, port=guarded.proxy.port,
                                    user=user, dbname="postgres", sslmode="disable",
                                    application_name=name, autocommit=True,
                                    connect_timeout=TIMEOUT)
        self.log = guarded.recorder.sessions[name]

    def close(self) -> None:
        self.conn.close()

    def real(self) -> tuple[str, str]:
        """``(current_user, session_user)`` as the server says, on this connection."""
        row = self.conn.execute("SELECT current_user, session_user").fetchone()
        assert row is not None
        return (row[0], row[1])

    def tracked(self) -> tuple[str | None, str | None]:
        """What ``ctx.roles`` said at the latest ReadyForQuery."""
        last = self.log.snapshots[-1]
        assert last.tracked, "ctx.roles is not tracked"
        return (last.current_user, last.session_user)

    def check_agreement(self, what: str) -> tuple[str, str]:
        """The real users; asserts ctx.roles says the same after the state query."""
        real = self.real()
        assert self.tracked() == real, (
            f"after {what}: ctx.roles says {self.tracked()}, the server says {real}")
        return real

    def status(self) -> pq.TransactionStatus:
        return self.conn.info.transaction_status


@pytest.fixture
def connect(proxies: dict[str, Guarded]) -> Iterator[Any]:
    clients: list[Client] = []

    def open_client(policy: str, user: str = APP) -> Client:
        client = Client(proxies[policy], user)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


def outcome_of(exc: psycopg.Error) -> str:
    """``guard`` for the guard's refusal, else ``server:SQLSTATE``."""
    hint = exc.diag.message_hint or ""
    if exc.sqlstate == "42501" and hint.startswith("pgwire role guard"):
        return GUARD
    return f"server:{exc.sqlstate}"


def attempt(conn: psycopg.Connection[Any], sql: str, mode: str = "simple",
            params: Sequence[object] | None = None) -> str:
    """Run ``sql`` the way ``mode`` says; ``ok``, ``guard`` or ``server:SQLSTATE``."""
    try:
        if mode == "simple":
            conn.execute(sql.encode())  # bytes, no parameters: a Query message
        elif mode == "params":
            conn.execute(sql, params)  # Parse/Bind/Execute, values in the Bind
        elif mode == "prepared":
            conn.execute(sql.encode(), prepare=True)  # a named statement
        elif mode == "pipeline":
            with conn.pipeline():
                conn.execute(sql.encode())
        elif mode == "copy":
            with conn.cursor() as cursor, cursor.copy(sql.encode()) as copy:
                for _ in copy:
                    pass
        else:
            raise ValueError(mode)
    except psycopg.Error as exc:
        return outcome_of(exc)
    return OK


# -- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A statement and what each policy makes of it.

    ``verdicts`` are for deny, allowlist and drop_only: ``ok``, ``guard`` or
    ``server:SQLSTATE``. ``after`` is ``current_user`` after an allowed run
    (None: unchanged); ``session_after`` likewise for ``session_user``.
    ``modelled`` is False when only the server can know the effect (CALL, a
    function), so ``ctx.roles`` is compared only after verification.
    """

    sql: str
    verdicts: tuple[str, str, str]
    after: str | None = None
    user: str = APP
    setup: tuple[str, ...] = ()
    mode: str = "simple"
    params: tuple[object, ...] | None = None
    modelled: bool = True
    session_after: str | None = None

    @property
    def id(self) -> str:
        extra = f"[{self.mode}]" if self.mode != "simple" else ""
        prefix = f"{self.user}: " if self.user != APP else ""
        setup = f"after {'; '.join(self.setup)}: " if self.setup else ""
        params = f" {self.params}" if self.params is not None else ""
        return f"{prefix}{setup}{self.sql}{params}{extra}"


# How each policy treats a change of gl5_app's role to each target.
BY_TARGET: dict[str, tuple[str, str, str]] = {
    APP: (OK, OK, OK),                     # the login role itself
    READERS: (GUARD, OK, OK),
    WRITERS: (GUARD, OK, OK),              # allowlisted by the pattern gl5_w*
    DEEP: (GUARD, GUARD, OK),              # a member through gl5_readers
    PEER: (GUARD, GUARD, OK),
    BYPASS: (GUARD, OK, GUARD),            # allowlisted for the group @gl5_staff
    ADMINS: (GUARD, GUARD, GUARD),         # SUPERUSER
    CREATOR: (GUARD, GUARD, GUARD),        # CREATEROLE
    OUTSIDER: (GUARD, "server:42501", GUARD),  # allowlisted, but not a member
    NOSUCH: (GUARD, GUARD, GUARD),
}

SPELLINGS: list[tuple[str, str]] = [
    ("SET ROLE {t}", "simple"),
    ("SET ROLE '{t}'", "simple"),
    ("SET ROLE $${t}$$", "simple"),
    ('SET "Role" = {t}', "simple"),
    ('SET U&"r\\006Fle" = {t}', "simple"),
    ("SET SESSION ROLE {t}", "simple"),
    ("set role to {t}", "simple"),
    ("SELECT set_config('role', '{t}', false)", "simple"),
    # (PostgreSQL 15 declares set_config without argument names: named
    # notation fails there with 42883, so it is only in test_sql_analysis.)
    ("SELECT pg_catalog.set_config('role', '{t}', false)", "simple"),
    ("SELECT set_config('ROLE', '{t}', 'off')", "simple"),
    ("WITH x AS (SELECT set_config('role', '{t}', false)) SELECT * FROM x", "simple"),
    ("SELECT * FROM (SELECT set_config('role', '{t}', false)) AS s", "simple"),
    ("SELECT 1 WHERE set_config('role', '{t}', false) IS NOT NULL", "simple"),
    ("VALUES (set_config('role', '{t}', false))", "simple"),
    ("INSERT INTO gl5_scratch VALUES (1) RETURNING set_config('role', '{t}', false)",
     "simple"),
    ("EXPLAIN ANALYZE SELECT set_config('role', '{t}', false)", "simple"),
    ("CREATE TEMP TABLE gl5_ctas AS SELECT set_config('role', '{t}', false)", "simple"),
    ("SELECT set_config(E'r\\x6fle', '{t}', false)", "simple"),
    ("SELECT set_config(U&'r\\006Fle', '{t}', false)", "simple"),
    ("SELECT set_config($$role$$, '{t}', false)", "simple"),
    ("SELECT set_config($q$ROLE$q$, '{t}', false)", "simple"),
    ("COPY (SELECT set_config('role', '{t}', false)) TO STDOUT", "copy"),
    ("SELECT set_config('role', '{t}', false)", "prepared"),
    ("SELECT set_config('role', '{t}', false)", "pipeline"),
    ("SET ROLE {t}", "prepared"),
    ("SET ROLE {t}", "pipeline"),
]

# A role change every policy allows (CALL is allowed by default; the guard
# learns its effect by asking the server once the session is idle).
LEAVE_LOGIN = (f"CALL gl5_pbecome('{READERS}')",)

CASES: list[Case] = []
# Every target, in the plainest spelling...
for target, verdicts in BY_TARGET.items():
    CASES.append(Case(f"SET ROLE {target}", verdicts, after=target))
# ...and every spelling, for three targets the policies disagree on.
for (template, mode), target in itertools.product(SPELLINGS, (READERS, BYPASS, ADMINS)):
    if (template, mode) == ("SET ROLE {t}", "simple"):
        continue
    CASES.append(Case(template.format(t=target), BY_TARGET[target], after=target, mode=mode))
# Parameters: the value is checked at each Bind.
for target in (READERS, BYPASS, ADMINS, NOSUCH):
    CASES.append(Case("SELECT set_config('role', %s, false)", BY_TARGET[target],
                      after=target, mode="params", params=(target,)))

CASES += [
    Case("SELECT set_config('role', %s, false)", (OK, OK, OK), mode="params", params=(None,)),
    Case("SELECT set_config(%s, %s, false)", (GUARD, GUARD, GUARD), mode="params",
         params=("role", READERS)),
    # SET LOCAL and is_local outside a transaction block change nothing.
    Case(f"SET LOCAL ROLE {READERS}", BY_TARGET[READERS]),
    Case(f"SELECT set_config('role', '{READERS}', true)", BY_TARGET[READERS]),
    Case(f"SET LOCAL ROLE {ADMINS}", BY_TARGET[ADMINS]),
    # Back to the default role (gl5_app has none: itself).
    Case("RESET ROLE", (OK, OK, OK), after=APP),
    Case("SET ROLE NONE", (OK, OK, OK), after=APP),
    Case("SET role TO DEFAULT", (OK, OK, OK), after=APP),
    Case("DISCARD ALL", (OK, OK, OK), after=APP),
    Case("SELECT set_config('role', NULL, false)", (OK, OK, OK), after=APP),
    Case("SELECT set_config('role', 'none', false)", (OK, OK, OK), after=APP),
    Case("RESET ALL", (OK, OK, OK)),
    # Session authorization: only a superuser login may change it.
    Case(f"SET SESSION AUTHORIZATION {APP}", (OK, OK, OK), after=APP),
    Case("SET SESSION AUTHORIZATION DEFAULT", (OK, OK, OK), after=APP),
    Case("RESET SESSION AUTHORIZATION", (OK, OK, OK), after=APP),
    # Any change of session_authorization resets the role (PostgreSQL 15):
    # a value to NONE, RESET/DEFAULT to the login's default role.
    Case(f"SET SESSION AUTHORIZATION {APP}", (OK, OK, OK), setup=LEAVE_LOGIN, after=APP),
    Case("SET SESSION AUTHORIZATION DEFAULT", (OK, OK, OK), setup=LEAVE_LOGIN, after=APP),
    Case("RESET SESSION AUTHORIZATION", (OK, OK, OK), setup=LEAVE_LOGIN, after=APP),
    Case("SELECT set_config('session_authorization', NULL, false)", (OK, OK, OK),
         setup=LEAVE_LOGIN, after=APP),
    Case(f"SET SESSION AUTHORIZATION {READERS}", (GUARD, "server:42501", "server:42501")),
    Case(f"SET SESSION AUTHORIZATION {ADMINS}", (GUARD, GUARD, GUARD)),
    Case(f"SELECT set_config('session_authorization', '{ADMINS}', false)",
         (GUARD, GUARD, GUARD)),
    # Values and names that are not literals.
    Case(f"SELECT set_config('role', lower('{READERS.upper()}'), false)",
         (GUARD, GUARD, GUARD)),
    Case(f"SELECT set_config(lower('ROLE'), '{READERS}', false)", (GUARD, GUARD, GUARD)),
    Case(f"SELECT set_config('ro' || 'le', '{READERS}', false)", (GUARD, GUARD, GUARD)),
    # Defaults of future sessions.
    Case(f"ALTER ROLE {APP} SET role = '{READERS}'", (GUARD, GUARD, GUARD)),
    Case(f"ALTER USER {APP} RESET role", (GUARD, GUARD, GUARD)),
    Case(f"ALTER ROLE {APP} RESET ALL", (GUARD, GUARD, GUARD)),
    Case(f"ALTER ROLE {APP} IN DATABASE postgres SET role = '{READERS}'",
         (GUARD, GUARD, GUARD)),
    Case(f"ALTER DATABASE postgres SET role = '{READERS}'", (GUARD, GUARD, GUARD)),
    Case(f"ALTER SYSTEM SET role = '{READERS}'", (GUARD, GUARD, GUARD)),
    Case(f"UPDATE pg_settings SET setting = '{ADMINS}' WHERE name = 'role'",
         (GUARD, GUARD, GUARD)),
    # Code the guard cannot read.
    Case(f"DO $$BEGIN PERFORM set_config('role', '{READERS}', false); END$$",
         (GUARD, GUARD, GUARD)),
    Case("DO $$BEGIN NULL; END$$", (GUARD, GUARD, GUARD)),
    Case("CALL gl5_noop()", (OK, OK, OK)),
    # CALL is allowed by default; what it does is seen only by asking the server.
    Case(f"CALL gl5_pbecome('{ADMINS}')", (OK, OK, OK), after=ADMINS, modelled=False),
    # So is a function that calls set_config (docs/roles.md: the verification
    # after the statement corrects ctx.roles before the next request).
    Case(f"SELECT gl5_become('{READERS}')", (OK, OK, OK), after=READERS, modelled=False),
    # Function and procedure definitions (functions="inspect").
    Case(f"CREATE FUNCTION pg_temp.gl5_f() RETURNS int LANGUAGE sql "
         f"SET role = '{READERS}' AS 'SELECT 1'", (GUARD, GUARD, GUARD)),
    Case(f"CREATE FUNCTION pg_temp.gl5_f() RETURNS text LANGUAGE sql "
         f"AS $$SELECT set_config('role', '{READERS}', false)$$", (GUARD, GUARD, GUARD)),
    Case(f"CREATE FUNCTION pg_temp.gl5_f() RETURNS text LANGUAGE sql "
         f"BEGIN ATOMIC SELECT set_config('role', '{READERS}', false); END",
         (GUARD, GUARD, GUARD)),
    Case(f"CREATE PROCEDURE pg_temp.gl5_p() LANGUAGE sql "
         f"AS $$SELECT set_config('role', '{READERS}', false)$$", (GUARD, GUARD, GUARD)),
    Case("CREATE FUNCTION pg_temp.gl5_f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
         (OK, OK, OK)),
    Case("CREATE FUNCTION pg_temp.gl5_f() RETURNS int LANGUAGE plpgsql "
         "AS $$BEGIN RETURN 1; END$$", (OK, OK, OK)),
    # Several statements: one refused, none runs.
    Case(f"SET ROLE {READERS}; SET ROLE {ADMINS}", (GUARD, GUARD, GUARD)),
    Case(f"SELECT 1; SET ROLE {READERS}; SELECT 2", BY_TARGET[READERS], after=READERS),
    Case(f"SET ROLE {READERS}; RESET ROLE", BY_TARGET[READERS], after=APP),
    Case(f"SET ROLE {WRITERS}; SELECT set_config('role', '{READERS}', false)",
         BY_TARGET[READERS], after=READERS),
    # ...and a failure later in the string undoes an allowed change.
    Case(f"SET ROLE {READERS}; SELECT 1/0", (GUARD, "server:22012", "server:22012")),
    # Look-alikes: allowed, and nothing changes.
    Case(f"SELECT $$SET ROLE {ADMINS}$$", (OK, OK, OK)),
    Case(f"SELECT $x$ ; SET ROLE {ADMINS}; $x$", (OK, OK, OK)),
    Case(f"SELECT 1 /* SET ROLE {ADMINS} /* nested */ ; SET ROLE {ADMINS} */", (OK, OK, OK)),
    Case(f"SELECT 1 -- ; SET ROLE {ADMINS}", (OK, OK, OK)),
    Case(f"SELECT 'SET ROLE {ADMINS}'", (OK, OK, OK)),
    Case(f"SELECT 'x''; SET ROLE {ADMINS}; --'", (OK, OK, OK)),
    Case(f"SET gl5.role = '{ADMINS}'", (OK, OK, OK)),
    Case(f"SELECT set_config('gl5.role', '{ADMINS}', false)", (OK, OK, OK)),
    Case("SELECT current_setting('role')", (OK, OK, OK)),
    Case(f"SELECT role FROM (VALUES ('{ADMINS}')) AS t(role)", (OK, OK, OK)),
    Case("CREATE TEMP TABLE role (role text)", (OK, OK, OK)),
    Case("SHOW role", (OK, OK, OK)),
    Case("SELECT 1", (OK, OK, OK), mode="pipeline"),
    # Text the parser rejects is refused (the server would say 42601).
    Case("SELEC 1", (GUARD, GUARD, GUARD)),
    # Statements that name a role change but do not run it now.
    Case(f"EXPLAIN SELECT set_config('role', '{READERS}', false)", BY_TARGET[READERS]),
    Case(f"CREATE TEMP TABLE gl5_nodata AS SELECT set_config('role', '{READERS}', false) "
         "WITH NO DATA", BY_TARGET[READERS]),
    # A cursor WITH HOLD runs its query when its (here implicit) transaction
    # ends: the model does not simulate that, the verification catches it.
    Case(f"DECLARE gl5_c CURSOR WITH HOLD FOR SELECT set_config('role', '{READERS}', false)",
         BY_TARGET[READERS], after=READERS, modelled=False),
]

# gl5_dflt logs in as gl5_readers (its ALTER ROLE default); base of the rules.
LEAVE_DEFAULT = (f"CALL gl5_pbecome('{WRITERS}')",)  # allowed by every policy
CASES += [
    Case("SELECT 1", (OK, OK, OK), user=DFLT, after=READERS),
    Case(f"SET ROLE {READERS}", (OK, OK, OK), user=DFLT, after=READERS),
    Case(f"SET ROLE {WRITERS}", (GUARD, OK, GUARD), user=DFLT, after=WRITERS),
    Case(f"SET ROLE {DEEP}", (GUARD, GUARD, OK), user=DFLT, after=DEEP),
    Case(f"SET ROLE {DFLT}", (GUARD, GUARD, GUARD), user=DFLT, after=DFLT),
    Case("SET ROLE NONE", (GUARD, GUARD, GUARD), user=DFLT, after=DFLT),
    Case(f"SET SESSION AUTHORIZATION {DFLT}", (GUARD, GUARD, GUARD), user=DFLT, after=DFLT),
    Case("RESET ROLE", (OK, OK, OK), user=DFLT, setup=LEAVE_DEFAULT, after=READERS),
    Case("SET role TO DEFAULT", (OK, OK, OK), user=DFLT, setup=LEAVE_DEFAULT, after=READERS),
    Case("DISCARD ALL", (OK, OK, OK), user=DFLT, setup=LEAVE_DEFAULT, after=READERS),
    Case("SELECT set_config('role', NULL, false)", (OK, OK, OK), user=DFLT,
         setup=LEAVE_DEFAULT, after=READERS),
    Case("RESET SESSION AUTHORIZATION", (OK, OK, OK), user=DFLT, setup=LEAVE_DEFAULT,
         after=READERS),
    Case("SET SESSION AUTHORIZATION DEFAULT", (OK, OK, OK), user=DFLT, setup=LEAVE_DEFAULT,
         after=READERS),
    Case("RESET ALL", (OK, OK, OK), user=DFLT, setup=LEAVE_DEFAULT),
    Case("SET ROLE NONE", (GUARD, GUARD, GUARD), user=DFLT, setup=LEAVE_DEFAULT, after=DFLT),
    Case("BEGIN; RESET ROLE; COMMIT", (OK, OK, OK), user=DFLT, setup=LEAVE_DEFAULT,
         after=READERS),
    Case("BEGIN; RESET ROLE; ROLLBACK", (OK, OK, OK), user=DFLT, setup=LEAVE_DEFAULT),
]

TABLE = [pytest.param(policy, case, id=f"{policy}: {case.id}")
         for policy in POLICIES for case in CASES]


@pytest.mark.parametrize(("policy", "case"), TABLE)
def test_policy_table(connect: Any, policy: str, case: Case) -> None:
    client: Client = connect(policy, case.user)
    for statement in case.setup:
        assert attempt(client.conn, statement) == OK, statement
    before = client.check_agreement("the login and setup")
    expected_verdict = case.verdicts[POLICIES.index(policy)]

    verdict = attempt(client.conn, case.sql, case.mode, case.params)
    model = client.tracked()  # ctx.roles at the statement's own ReadyForQuery

    assert verdict == expected_verdict, f"{policy} answered {verdict!r} to {case.sql!r}"
    assert client.status() == pq.TransactionStatus.IDLE
    if verdict == OK:
        expected = (case.after or before[0], case.session_after or before[1])
    else:
        expected = before
    real = client.real()
    assert real == expected, f"the server says {real} after {case.sql!r}"
    assert client.tracked() == real, (
        f"after {case.sql!r} and the verification, ctx.roles says {client.tracked()}, "
        f"the server says {real}")
    if verdict == GUARD:
        refusals = [e for e in client.log.events
                    if isinstance(e, RoleDecision) and not e.allowed]
        assert refusals, "no RoleDecision(allowed=False) was published"
        assert refusals[-1].policy == policy
    if case.modelled:
        assert model == real, (
            f"at the ReadyForQuery of {case.sql!r}, before verification, ctx.roles said "
            f"{model}; the server says {real}")


def test_role_change_events_are_published(connect: Any) -> None:
    client: Client = connect("drop_only")
    assert attempt(client.conn, f"SET ROLE {READERS}") == OK
    client.check_agreement("SET ROLE")
    decisions = [e for e in client.log.events if isinstance(e, RoleDecision)]
    changes = [e for e in client.log.events if isinstance(e, RoleChange)]
    assert [(d.kind, d.target, d.allowed) for d in decisions] == [("set_role", READERS, True)]
    assert changes and changes[-1].after_current == READERS
    assert changes[-1].before_current == APP
    assert attempt(client.conn, f"SET ROLE {ADMINS}") == GUARD
    refused = [e for e in client.log.events if isinstance(e, RoleDecision)][-1]
    assert (refused.kind, refused.target, refused.allowed) == ("set_role", ADMINS, False)
    assert ADMINS in refused.reason and "SUPERUSER" in refused.reason
    assert client.check_agreement("a refusal") == (READERS, APP)


def test_refusal_looks_like_postgresql(connect: Any) -> None:
    client: Client = connect("deny")
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        client.conn.execute(f"SET ROLE {READERS}".encode())
    diag = caught.value.diag
    assert diag.sqlstate == "42501"
    assert diag.severity == "ERROR"
    assert diag.message_primary == f'permission denied to set role "{READERS}"'
    assert diag.message_detail
    assert diag.message_hint == "pgwire role guard, policy deny"


# -- transactions and savepoints -----------------------------------------------------------

Step = tuple[str, str, str | None]  # sql, outcome, current_user afterwards (None: unchecked)


def run_steps(client: Client, steps: Sequence[Step]) -> None:
    for number, (sql, outcome, current) in enumerate(steps, 1):
        got = attempt(client.conn, sql)
        assert got == outcome, f"step {number} {sql!r}: {got!r}"
        if client.status() == pq.TransactionStatus.INERROR or current is None:
            continue
        real = client.real()
        assert real[0] == current, f"step {number} {sql!r}: the server says {real}"
        assert client.tracked() == real, (
            f"step {number} {sql!r}: ctx.roles says {client.tracked()}, the server {real}")


SCENARIOS: dict[str, list[Step]] = {
    "SET LOCAL ends at COMMIT": [
        ("BEGIN", OK, APP),
        (f"SET LOCAL ROLE {READERS}", OK, READERS),
        ("SELECT 1", OK, READERS),
        ("COMMIT", OK, APP),
    ],
    "set_config is_local ends at COMMIT": [
        ("BEGIN", OK, APP),
        (f"SELECT set_config('role', '{READERS}', true)", OK, READERS),
        ("COMMIT", OK, APP),
    ],
    "SET ROLE is undone by ROLLBACK": [
        ("BEGIN", OK, APP),
        (f"SET ROLE {READERS}", OK, READERS),
        ("ROLLBACK", OK, APP),
    ],
    "SET ROLE survives COMMIT": [
        ("BEGIN", OK, APP),
        (f"SET ROLE {READERS}", OK, READERS),
        ("COMMIT", OK, READERS),
        ("RESET ROLE", OK, APP),
    ],
    "savepoints": [
        ("BEGIN", OK, APP),
        (f"SET ROLE {READERS}", OK, READERS),
        ("SAVEPOINT s", OK, READERS),
        (f"SET ROLE {WRITERS}", OK, WRITERS),
        ("ROLLBACK TO SAVEPOINT s", OK, READERS),
        (f"SET LOCAL ROLE {WRITERS}", OK, WRITERS),
        ("RELEASE SAVEPOINT s", OK, WRITERS),
        ("COMMIT", OK, READERS),
    ],
    "savepoints with the same name": [
        ("BEGIN", OK, APP),
        ("SAVEPOINT s", OK, APP),
        (f"SET ROLE {READERS}", OK, READERS),
        ("SAVEPOINT s", OK, READERS),
        (f"SET ROLE {WRITERS}", OK, WRITERS),
        ("ROLLBACK TO s", OK, READERS),
        ("RELEASE s", OK, READERS),
        ("ROLLBACK TO s", OK, APP),
        ("COMMIT", OK, APP),
    ],
    "a refusal inside a savepoint, rolled back to": [
        ("BEGIN", OK, APP),
        (f"SET ROLE {READERS}", OK, READERS),
        ("SAVEPOINT s", OK, READERS),
        (f"SET ROLE {ADMINS}", GUARD, None),
        ("SELECT 1", "server:25P02", None),
        ("ROLLBACK TO s", OK, READERS),
        ("COMMIT", OK, READERS),
    ],
    "an error after SET LOCAL, rolled back to": [
        ("BEGIN", OK, APP),
        ("SAVEPOINT a", OK, APP),
        (f"SET LOCAL ROLE {READERS}", OK, READERS),
        ("SELECT 1/0", "server:22012", None),
        ("ROLLBACK TO a", OK, APP),
        ("COMMIT", OK, APP),
    ],
    "COMMIT AND CHAIN": [
        ("BEGIN", OK, APP),
        (f"SET LOCAL ROLE {READERS}", OK, READERS),
        ("COMMIT AND CHAIN", OK, APP),
        (f"SET ROLE {WRITERS}", OK, WRITERS),
        ("ROLLBACK", OK, APP),
    ],
    "a refusal fails the block: COMMIT rolls back": [
        ("BEGIN", OK, APP),
        (f"SET ROLE {READERS}", OK, READERS),
        (f"SET ROLE {ADMINS}", GUARD, None),
        ("COMMIT", OK, APP),
    ],
    "one string with its own transaction": [
        (f"BEGIN; SET ROLE {READERS}; COMMIT; SET ROLE {WRITERS}; SELECT 1/0",
         "server:22012", READERS),
        (f"SET ROLE {WRITERS}; SET LOCAL ROLE {READERS}", OK, WRITERS),
    ],
    "DISCARD ALL cannot run in a block": [
        ("BEGIN", OK, APP),
        (f"SET ROLE {READERS}", OK, READERS),
        ("DISCARD ALL", "server:25001", None),
        ("ROLLBACK", OK, APP),
    ],
}


@pytest.mark.parametrize("policy", ["allowlist", "drop_only"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_transaction_scenarios(connect: Any, policy: str, scenario: str) -> None:
    run_steps(connect(policy), SCENARIOS[scenario])


DEFAULT_ROLE_SCENARIO: list[Step] = [
    ("SELECT 1", OK, READERS),
    (LEAVE_DEFAULT[0], OK, WRITERS),
    ("BEGIN", OK, WRITERS),
    ("RESET ROLE", OK, READERS),
    ("ROLLBACK", OK, WRITERS),
    ("BEGIN", OK, WRITERS),
    ("SET LOCAL role TO DEFAULT", OK, READERS),
    ("COMMIT", OK, WRITERS),
    ("DISCARD ALL", OK, READERS),
    (LEAVE_DEFAULT[0], OK, WRITERS),
    ("RESET SESSION AUTHORIZATION", OK, READERS),
]


@pytest.mark.parametrize("policy", POLICIES)
def test_returns_to_the_alter_role_default(connect: Any, policy: str) -> None:
    run_steps(connect(policy, DFLT), DEFAULT_ROLE_SCENARIO)


# -- the extended protocol -----------------------------------------------------------------


def libpq_outcome(result: pq.abc.PGresult) -> str:
    if result.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
        return OK
    state = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
    hint = (result.error_field(pq.DiagnosticField.MESSAGE_HINT) or b"").decode()
    if state == "42501" and hint.startswith("pgwire role guard"):
        return GUARD
    return f"server:{state}"


@pytest.mark.parametrize("policy", POLICIES)
def test_named_statement_runs_much_later(connect: Any, policy: str) -> None:
    client: Client = connect(policy)
    pgconn = client.conn.pgconn
    allowed = BY_TARGET[READERS][POLICIES.index(policy)]
    prepared = libpq_outcome(pgconn.prepare(
        b"gl5_to_readers", f"SELECT set_config('role', '{READERS}', false)".encode()))
    assert prepared == allowed
    refused = libpq_outcome(pgconn.prepare(
        b"gl5_to_admins", f"SELECT set_config('role', '{ADMINS}', false)".encode()))
    assert refused == GUARD
    # Parsing changes nothing; other statements come and go.
    assert client.check_agreement("the Parse") == (APP, APP)
    assert attempt(client.conn, "SELECT 1", "params", ()) == OK
    assert attempt(client.conn, "SELECT 2") == OK
    # The refused statement was never named on the server.
    assert libpq_outcome(pgconn.exec_prepared(b"gl5_to_admins", [])) == "server:26000"
    assert client.check_agreement("executing a refused name") == (APP, APP)
    ran = libpq_outcome(pgconn.exec_prepared(b"gl5_to_readers", []))
    if allowed == OK:
        assert ran == OK
        model = client.tracked()
        assert client.check_agreement("executing the named statement") == (READERS, APP)
        assert model == (READERS, APP), "ctx.roles before verification"
        assert attempt(client.conn, "RESET ROLE") == OK
        assert libpq_outcome(pgconn.exec_prepared(b"gl5_to_readers", [])) == OK
        assert client.check_agreement("executing it again") == (READERS, APP)
    else:
        assert ran == "server:26000"
        assert client.check_agreement("executing a refused name") == (APP, APP)


@pytest.mark.parametrize("policy", ["allowlist", "drop_only"])
def test_psycopg_prepared_statements(connect: Any, policy: str) -> None:
    client: Client = connect(policy)
    conn = client.conn
    sql = f"SELECT set_config('role', '{READERS}', false)".encode()
    for round_ in range(3):  # Parse once, then Bind/Execute of the named statement
        conn.execute(sql, prepare=True)
        model = client.tracked()
        assert client.check_agreement(f"round {round_}") == (READERS, APP)
        assert model == (READERS, APP)
        conn.execute(b"RESET ROLE", prepare=True)
        assert client.check_agreement(f"reset {round_}") == (APP, APP)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(f"SET ROLE {ADMINS}".encode(), prepare=True)
    assert client.check_agreement("a refused Parse") == (APP, APP)


@pytest.mark.parametrize("policy", ["allowlist", "drop_only"])
def test_pipeline_with_a_refusal_in_the_middle(connect: Any, policy: str) -> None:
    client: Client = connect(policy)
    conn = client.conn
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline() as pipeline:
        conn.execute(b"BEGIN")
        conn.execute(f"SET ROLE {READERS}".encode())
        conn.execute("SELECT set_config('role', %s, false)", [ADMINS])
        conn.execute(f"SET ROLE {WRITERS}".encode())
        pipeline.sync()
    assert client.status() == pq.TransactionStatus.INERROR
    conn.execute(b"ROLLBACK")
    assert client.check_agreement("the failed pipeline") == (APP, APP)
    with conn.pipeline():
        conn.execute(f"SET ROLE {WRITERS}".encode())
        conn.execute("SELECT set_config('role', %s, false)", [READERS])
        conn.execute(b"SELECT 1")
    assert client.check_agreement("an allowed pipeline") == (READERS, APP)


# -- agreement on the transaction state after a refusal --------------------------------------


def committed(cluster: PostgresCluster, *markers: str) -> list[str]:
    """Which of ``markers`` a separate direct connection finds in gl5_items."""
    with psycopg.connect(**cluster.connect_kwargs(), autocommit=True) as direct:
        rows = direct.execute("SELECT marker FROM gl5_items WHERE marker = ANY(%s)",
                              [list(markers)]).fetchall()
    return sorted(row[0] for row in rows)


def marker(name: str) -> str:
    return f"{name}-{next(_counter)}"


@pytest.mark.parametrize("policy", POLICIES)
def test_refusal_in_a_block_aborts_the_server_transaction(
        connect: Any, pg_cluster: PostgresCluster, policy: str) -> None:
    client: Client = connect(policy)
    conn = client.conn
    first = marker("simple")
    conn.execute(b"BEGIN")
    conn.execute(f"INSERT INTO gl5_items VALUES ('{first}')".encode())
    assert attempt(conn, f"SELECT set_config('role', '{ADMINS}', false)") == GUARD
    assert client.status() == pq.TransactionStatus.INERROR
    assert attempt(conn, "SELECT 1") == "server:25P02"
    cursor = conn.execute(b"COMMIT")
    assert cursor.statusmessage == "ROLLBACK"
    assert client.status() == pq.TransactionStatus.IDLE
    assert committed(pg_cluster, first) == []
    assert client.check_agreement("the rolled back block") == (APP, APP)


@pytest.mark.parametrize("policy", POLICIES)
def test_refusal_in_a_pipeline_aborts_the_server_transaction(
        connect: Any, pg_cluster: PostgresCluster, policy: str) -> None:
    client: Client = connect(policy)
    conn = client.conn
    markers = [marker("extended") for _ in range(4)]
    conn.execute(b"BEGIN")
    conn.execute("INSERT INTO gl5_items VALUES (%s)", [markers[0]])
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
        conn.execute("INSERT INTO gl5_items VALUES (%s)", [markers[1]])
        conn.execute("SELECT set_config('role', %s, false)", [ADMINS])
        conn.execute("INSERT INTO gl5_items VALUES (%s)", [markers[2]])
    assert client.status() == pq.TransactionStatus.INERROR
    with pytest.raises(psycopg.errors.InFailedSqlTransaction):
        conn.execute("INSERT INTO gl5_items VALUES (%s)", [markers[3]])
    cursor = conn.execute(b"COMMIT")
    assert cursor.statusmessage == "ROLLBACK"
    assert committed(pg_cluster, *markers) == []
    assert client.check_agreement("the rolled back block") == (APP, APP)


@pytest.mark.parametrize("policy", POLICIES)
def test_multi_statement_query_with_the_second_statement_refused(
        connect: Any, pg_cluster: PostgresCluster, policy: str) -> None:
    client: Client = connect(policy)
    first, last = marker("multi"), marker("multi")
    sql = (f"INSERT INTO gl5_items VALUES ('{first}'); SET ROLE {ADMINS}; "
           f"INSERT INTO gl5_items VALUES ('{last}')")
    assert attempt(client.conn, sql) == GUARD
    assert client.status() == pq.TransactionStatus.IDLE
    assert committed(pg_cluster, first, last) == []
    assert client.check_agreement("the refused string") == (APP, APP)
    # The same string with an allowed role runs whole.
    allowed = sql.replace(ADMINS, READERS)
    expected = BY_TARGET[READERS][POLICIES.index(policy)]
    assert attempt(client.conn, allowed) == expected
    assert committed(pg_cluster, first, last) == ([first, last] if expected == OK else [])


class Raw(RawClient):
    """pgwire's own client on a socket: exact control over the extended protocol."""

    def __init__(self, proxy: RunningProxy, user: str) -> None:
        super().__init__(proxy.address, user=user, database="postgres", sslmode="disable")
        events = self.login()
        assert not [e for e in events if isinstance(e, pw.ErrorResponse)], events

    def close(self) -> None:
        self.sock.close()

    def until_ready(self) -> list[object]:
        return self.events_until(lambda e: isinstance(e, pw.ReadyForQuery))

    def query(self, sql: str) -> list[tuple[str | None, ...]]:
        self.send(pw.Query(query=sql))
        events = self.until_ready()
        errors = [e for e in events if isinstance(e, pw.ErrorResponse)]
        assert not errors, errors
        return [tuple(None if v is None else bytes(v).decode() for v in e.values)
                for e in events if isinstance(e, pw.DataRow)]


def extended(sql: str, *parameters: bytes | None) -> list[pw.Message]:
    return [pw.Parse(query=sql), pw.Bind(parameters=parameters), pw.Execute()]


def kinds(events: Sequence[object]) -> list[str]:
    return [type(e).__name__ for e in events if not isinstance(e, pw.NoticeResponse)]


@pytest.mark.parametrize("policy", POLICIES)
def test_extended_refusal_skips_to_sync(proxies: dict[str, Guarded],
                                        pg_cluster: PostgresCluster, policy: str) -> None:
    raw = Raw(proxies[policy].proxy, APP)
    try:
        first, last = marker("raw"), marker("raw")
        raw.send(*extended("INSERT INTO gl5_items VALUES ($1)", first.encode()),
                 *extended(f"SET ROLE {ADMINS}"),
                 *extended("INSERT INTO gl5_items VALUES ($1)", last.encode()),
                 pw.Sync())
        events = raw.until_ready()
        assert kinds(events) == ["ParseComplete", "BindComplete", "CommandComplete",
                                 "ErrorResponse", "ReadyForQuery"]
        error = events[3]
        assert isinstance(error, pw.ErrorResponse) and error.code == "42501"
        ready = events[-1]
        assert isinstance(ready, pw.ReadyForQuery)
        assert ready.status == pw.TransactionStatus.IDLE
        assert committed(pg_cluster, first, last) == []
        # Inside a block the block fails, on both sides.
        raw.send(pw.Query(query="BEGIN"))
        raw.until_ready()
        raw.send(*extended("INSERT INTO gl5_items VALUES ($1)", first.encode()),
                 *extended("SELECT set_config('role', $1, false)", ADMINS.encode()),
                 pw.Sync())
        events = raw.until_ready()
        assert kinds(events) == ["ParseComplete", "BindComplete", "CommandComplete",
                                 "ParseComplete", "ErrorResponse", "ReadyForQuery"]
        ready = events[-1]
        assert isinstance(ready, pw.ReadyForQuery)
        assert ready.status == pw.TransactionStatus.FAILED
        raw.send(pw.Query(query="COMMIT"))
        tags = [e.tag for e in raw.until_ready() if isinstance(e, pw.CommandComplete)]
        assert tags == ["ROLLBACK"]
        assert committed(pg_cluster, first) == []
        assert raw.query("SELECT current_user, session_user") == [(APP, APP)]
    finally:
        raw.close()


@pytest.mark.parametrize("policy", POLICIES)
def test_function_call_to_set_config_is_refused(proxies: dict[str, Guarded],
                                                policy: str) -> None:
    raw = Raw(proxies[policy].proxy, APP)
    try:
        raw.send(pw.FunctionCall(function_oid=2078, argument_formats=(),  # set_config
                                 arguments=(b"role", READERS.encode(), b"false"),
                                 result_format=0))
        events = raw.until_ready()
        errors = [e for e in events if isinstance(e, pw.ErrorResponse)]
        assert [e.code for e in errors] == ["42501"], kinds(events)
        assert raw.query("SELECT current_user, session_user") == [(APP, APP)]
    finally:
        raw.close()


# -- lexing: a change the guard cannot see must not let text be read two ways ----------------

# Under standard_conforming_strings=on (what the guard assumes) this is one
# SELECT of two string literals; under off, \' escapes the quote and the
# set_config call is code.
SMUGGLED = (f"SELECT 'x\\', ' AS a, set_config($$role$$, $${ADMINS}$$, false) -- '")
HIDDEN_LEXING_CHANGES = {
    "a function": ("CREATE FUNCTION pg_temp.gl5_scs_off() RETURNS text LANGUAGE sql "
                   "AS $$SELECT set_config('standard_conforming_strings', 'off', false)$$",
                   "SELECT pg_temp.gl5_scs_off()"),
    "a prepared statement": ("PREPARE gl5_scs_off AS "
                             "SELECT set_config('standard_conforming_strings', 'off', false)",
                             "EXECUTE gl5_scs_off"),
    "a view": ("CREATE TEMP VIEW gl5_scs_off AS "
               "SELECT set_config('standard_conforming_strings', 'off', false) AS s",
               "SELECT * FROM gl5_scs_off"),
}


@pytest.mark.parametrize("protocol", ["extended", "simple"])
@pytest.mark.parametrize("hidden", list(HIDDEN_LEXING_CHANGES))
@pytest.mark.parametrize("policy", POLICIES)
def test_hidden_lexing_change_cannot_smuggle_a_role_change(
        proxies: dict[str, Guarded], policy: str, hidden: str, protocol: str) -> None:
    define, trigger = HIDDEN_LEXING_CHANGES[hidden]
    raw = Raw(proxies[policy].proxy, APP)
    try:
        raw.query(define)
        if protocol == "extended":
            # One batch: the server reports the new setting only at its end.
            raw.send(*extended(trigger), *extended(SMUGGLED), pw.Sync())
            events = raw.until_ready()
        else:
            # Two Queries sent together, before either is answered.
            raw.send(pw.Query(query=trigger), pw.Query(query=SMUGGLED))
            events = raw.until_ready() + raw.until_ready()
        raw.send(pw.Query(query="RESET standard_conforming_strings"))
        raw.until_ready()
        [(current, session)] = raw.query("SELECT current_user, session_user")
        assert current != ADMINS, (
            f"the guard let {SMUGGLED!r} through after {trigger!r} turned "
            "standard_conforming_strings off: the session became the superuser role")
        errors = [e for e in events if isinstance(e, pw.ErrorResponse)]
        assert errors and errors[-1].code == "42501", kinds(events)
        assert (current, session) == (APP, APP)
    finally:
        raw.close()

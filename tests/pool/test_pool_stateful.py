"""Many clients, few server connections: a hypothesis state machine drives the
transaction-mode pool against a real PostgreSQL, and no client may ever see
another client's session state.

Up to four psycopg autocommit clients log in through the proxy as three login
roles (each with role-level defaults of its own, and two of them members of
NOLOGIN roles they may ``SET ROLE`` to), with or without an
``application_name`` (which is part of the pool key). The pool keeps at most
two server connections per key, so clients of one key share them between
transactions. The rules: connect and disconnect; ``SET ROLE`` and its
relatives; session-level and transaction-level settings (``SET``, ``SET
LOCAL``, ``set_config``, ``RESET``, ``RESET ALL``); ``BEGIN`` / ``COMMIT`` /
``ROLLBACK``; an error inside a transaction; SQL ``PREPARE`` / ``EXECUTE`` /
``DEALLOCATE``; protocol-level statements (psycopg ``prepare=True``, which the
pool renames and re-prepares) and the unnamed statement; temporary tables; a
``DO`` block that sets a setting (the pool cannot see into it: it pins, and
the reset is DISCARD ALL); ``DISCARD ALL``.

Each client keeps a model of what it must see, and each client is really two
connections: one through the proxy and a *shadow* connection straight to
PostgreSQL that runs the same statements. Every statement must give the same
outcome on both (error code, command tag, rows); after every step every open
client reads its session back (``current_user``, ``session_user``, the
tracked settings, ``application_name``, its temporary tables and their rows,
its SQL-prepared statements, the ParameterStatus values its driver holds)
through the proxy, and must equal the model; the shadow reads back too for
the client the step acted on and after any mismatch. A mismatch between the
model and the shadow is a mistake of this test; between the proxy and the
other two, a fault of the pool. The read-back through the proxy is itself a
transaction: an unpinned client gets whichever server connection is free.

Each example gets a proxy, and so a pool, of its own (with one pool for all
examples, each key would start with connections already verified, which the
pool prefers, and clients of a key would hardly ever cross over to each
other's connections). It runs once with ``reset="minimal"`` and once with
``reset="discard_all"`` (DISCARD ALL at every release, which drops the pool's
statements each time and makes it prepare them again): no client may tell
the two apart.

The model also says which clients hold a server connection (pinned by
session state, or inside a transaction); at rest the pool's gauges must agree
(``clients``, ``servers_active``), no key may have more than two server
connections, and no client is ever asked to run a statement while its key's
connections are all held by others (it would only wait for its checkout
timeout). At the end of each example every client leaves, a fresh client of
every key used sees only the login defaults on each of the key's server
connections, the proxy counted no internal error, and the pool no failed
verification, failed reset, checkout timeout or login failure.

The plain tests at the end pin down what building the machine turned up.
The pool once shared one server statement between every client of a key that
prepared the same text, so a client could get an error a direct connection
does not give (the statement had been planned for another client's temporary
table or search_path) and could read the statement texts of clients gone
before it. A client could also drop another connected client's statement
with SQL ``DEALLOCATE`` of the pool's name for it (read from
``pg_prepared_statements``), and can still run it with ``EXECUTE``.

Objects (prefix ``pool_sm_``, unique to this module): the database
``pool_sm_db`` with schemas ``pool_sm_one`` / ``pool_sm_two`` (a table
``marker (v int)`` each) and ``pool_sm_words`` (``marker (v text)``, for the
plain tests only), login roles ``pool_sm_ann`` / ``pool_sm_bob`` /
``pool_sm_cat`` and NOLOGIN roles ``pool_sm_staff`` / ``pool_sm_audit``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import psycopg
import psycopg.sql
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pgwire.proxy import PoolConfig, ProxyAuth, ProxyConfig
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import running_proxy

DB = "pool_sm_db"
ANN, BOB, CAT = "pool_sm_ann", "pool_sm_bob", "pool_sm_cat"
STAFF, AUDIT = "pool_sm_staff", "pool_sm_audit"
LOGIN_ROLES = (ANN, BOB, CAT)
PASSWORDS = {ANN: "ann-pool-secret", BOB: "bob-pool-secret", CAT: "cat-pool-secret"}
#: The NOLOGIN roles each login role may SET ROLE to.
MEMBER_OF: dict[str, frozenset[str]] = {
    ANN: frozenset({STAFF}), BOB: frozenset({STAFF, AUDIT}), CAT: frozenset()}
ROLE_TARGETS = (STAFF, AUDIT, ANN, CAT)
#: application_name values a client may log in with ("" sends none).
APPS = ("", "pool_sm_app")
MAX_CLIENTS = 4
MAX_SIZE = 2
SETTLE_SECONDS = 15.0

#: The tracked settings, and values as ``current_setting`` spells them.
SETTINGS = ("search_path", "statement_timeout", "work_mem", "DateStyle")
VALUES: dict[str, tuple[str, ...]] = {
    "search_path": ("public", "pool_sm_one, public", "pool_sm_two, pool_sm_one",
                    '"$user", public'),
    "statement_timeout": ("0", "10s", "1min", "2h"),
    "work_mem": ("4MB", "8MB", "64kB", "1GB"),
    "DateStyle": ("ISO, MDY", "German, DMY", "SQL, DMY", "Postgres, MDY"),
}
#: Role-level defaults (ALTER ROLE ... SET): each role logs in differently.
ROLE_DEFAULTS: dict[str, dict[str, str]] = {
    ANN: {"work_mem": "8MB"},
    BOB: {"DateStyle": "SQL, DMY", "search_path": "pool_sm_one, public"},
    CAT: {"statement_timeout": "1min"},
}
#: The schemas that hold a ``marker`` table, and its one value there.
MARKERS = {"pool_sm_one": 1, "pool_sm_two": 2}
#: A schema whose ``marker`` has another type (the plain tests only).
WORDS = "pool_sm_words"
TEMP_TABLES = ("tt_a", "tt_b")
SQL_STATEMENTS = ("p1", "p2")
#: Command tags after which psycopg forgets its prepared statements and sends
#: DEALLOCATE ALL (when it has some), for texts it has not seen since.
DRIVER_CLEARS = re.compile(r"^(?:DROP|ALTER|ROLLBACK|DISCARD ALL|DEALLOCATE ALL)\b")

OBSERVE_SQL = """\
SELECT current_user, session_user,
       pg_catalog.current_setting('search_path'),
       pg_catalog.current_setting('statement_timeout'),
       pg_catalog.current_setting('work_mem'),
       pg_catalog.current_setting('DateStyle'),
       pg_catalog.current_setting('application_name'),
       ARRAY(SELECT c.relname::text FROM pg_catalog.pg_class c
             WHERE c.relnamespace = pg_catalog.pg_my_temp_schema() AND c.relkind = 'r'
             ORDER BY 1),
       ARRAY(SELECT s.name FROM pg_catalog.pg_prepared_statements s
             WHERE s.from_sql ORDER BY 1),
       ARRAY(SELECT s.name FROM pg_catalog.pg_prepared_statements s
             WHERE NOT s.from_sql ORDER BY 1)"""
#: ParameterStatus values the driver must hold, as the model says.
REPORTED = ("DateStyle", "application_name", "session_authorization")


# -- the cluster and the proxy ------------------------------------------------------------


@dataclass(frozen=True)
class PoolEnv:
    """What every example shares: the server, the login defaults."""

    cluster: PostgresCluster
    #: The tracked settings right after login, per login role.
    defaults: dict[str, dict[str, str]]

    def config(self, *, max_size: int = MAX_SIZE,
               reset: Literal["minimal", "discard_all"] = "minimal") -> ProxyConfig:
        """A transaction-mode pool in front of the cluster, for the login roles."""
        return ProxyConfig(
            upstream=(self.cluster.host, self.cluster.port),
            auth=ProxyAuth(method="scram-sha-256", users=dict(PASSWORDS)),
            pool=PoolConfig(mode="transaction", max_size=max_size, reset=reset,
                            checkout_timeout=10.0))


def _setup_sql() -> str:
    lines = [f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORDS[role]}';" for role in LOGIN_ROLES]
    lines += [f"CREATE ROLE {STAFF} NOLOGIN;", f"CREATE ROLE {AUDIT} NOLOGIN;",
              f"GRANT {STAFF} TO {ANN}, {BOB};", f"GRANT {AUDIT} TO {BOB};"]
    for role, values in ROLE_DEFAULTS.items():
        for name, value in values.items():
            lines.append(f"ALTER ROLE {role} SET {name} = {_set_value(name, value)};")
    lines.append(f"CREATE DATABASE {DB};")
    return "\n".join(lines)


def _schema_sql() -> str:
    lines = []
    for schema, value in MARKERS.items():
        lines += [f"CREATE SCHEMA {schema};",
                  f"CREATE TABLE {schema}.marker (v int);",
                  f"INSERT INTO {schema}.marker VALUES ({value});",
                  f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC;",
                  f"GRANT SELECT ON {schema}.marker TO PUBLIC;"]
    lines += [f"CREATE SCHEMA {WORDS};", f"CREATE TABLE {WORDS}.marker (v text);",
              f"INSERT INTO {WORDS}.marker VALUES ('three');",
              f"GRANT USAGE ON SCHEMA {WORDS} TO PUBLIC;",
              f"GRANT SELECT ON {WORDS}.marker TO PUBLIC;"]
    return "\n".join(lines)


def _drop_sql() -> str:
    return (f"DROP DATABASE IF EXISTS {DB} WITH (FORCE);\n"
            + "".join(f"DROP ROLE IF EXISTS {role};\n"
                      for role in (*LOGIN_ROLES, STAFF, AUDIT)))


def _set_value(name: str, value: str) -> str:
    """``value`` as the right-hand side of SET (search_path as a list)."""
    return value if name == "search_path" else _literal(value)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _connect(host: str, port: int, role: str, app: str) -> psycopg.Connection[Any]:
    extra: dict[str, Any] = {"application_name": app} if app else {}
    return psycopg.connect(host=host, port=port, user=role, password=PASSWORDS[role],
                           dbname=DB, sslmode="disable", connect_timeout=10,
                           autocommit=True, **extra)


@pytest.fixture(scope="module")
def pool_env(pg_cluster: PostgresCluster) -> Iterator[PoolEnv]:
    pg_cluster.sql(_drop_sql())
    try:
        pg_cluster.sql(_setup_sql())
        pg_cluster.sql(_schema_sql(), dbname=DB)
        defaults: dict[str, dict[str, str]] = {}
        for role in LOGIN_ROLES:
            with _connect(pg_cluster.host, pg_cluster.port, role, "") as conn:
                row = conn.execute(OBSERVE_SQL, prepare=False).fetchone()
            assert row is not None
            defaults[role] = dict(zip(SETTINGS, row[2:6], strict=True))
            # The premise: each role logs in with its own defaults.
            for name, value in ROLE_DEFAULTS[role].items():
                assert defaults[role][name] == value, (role, defaults[role])
        yield PoolEnv(pg_cluster, defaults)
    finally:
        pg_cluster.sql(_drop_sql())


# -- what a client sees ------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one statement gave: an error's SQLSTATE, or a command tag and rows."""

    error: str | None
    status: str | None = None
    rows: tuple[tuple[Any, ...], ...] = ()


@dataclass(frozen=True)
class Seen:
    """A session's state as read back through one connection."""

    current_user: str
    session_user: str
    settings: tuple[tuple[str, str], ...]
    application_name: str
    #: Temporary tables, each with its rows joined by commas.
    temp: tuple[tuple[str, str], ...]
    sql_prepared: tuple[str, ...]
    #: ParameterStatus values the driver holds.
    reported: tuple[tuple[str, str | None], ...]


def execute(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] | None = None,
            *, prepare: bool = False) -> Outcome:
    try:
        cursor = conn.execute(sql, params, prepare=prepare)
    except psycopg.Error as exc:
        return Outcome(error=exc.sqlstate or f"{type(exc).__name__}: {exc}")
    rows = tuple(tuple(row) for row in cursor.fetchall()) if cursor.description else ()
    return Outcome(error=None, status=cursor.statusmessage, rows=rows)


def observe(conn: psycopg.Connection[Any]) -> tuple[Seen | str, tuple[str, ...]]:
    """Read the session back: its state (or the error that stopped the read) and
    the names of its protocol-level prepared statements."""
    outcome = execute(conn, OBSERVE_SQL)
    if outcome.error is not None:
        return outcome.error, ()
    [row] = outcome.rows
    temp = []
    for name in row[7]:
        table = psycopg.sql.SQL("SELECT coalesce(pg_catalog.string_agg(v::text, "
                                "',' ORDER BY v::text), '') FROM pg_temp.{}").format(
            psycopg.sql.Identifier(name))
        contents = execute(conn, table.as_string(conn))
        temp.append((name, contents.error or str(contents.rows[0][0])))
    seen = Seen(current_user=row[0], session_user=row[1],
                settings=tuple(zip(SETTINGS, row[2:6], strict=True)),
                application_name=row[6], temp=tuple(temp), sql_prepared=tuple(row[8]),
                reported=tuple((name, conn.info.parameter_status(name))
                               for name in REPORTED))
    return seen, tuple(row[9])


#: Queries run through psycopg: with prepare=True (a named statement), except
#: "unnamed" (parameters, not prepared: the unnamed statement).
DRIVER_QUERIES = ("tag", "shared", "marker", "temp", "unnamed")


def driver_sql(client: Client, query: str) -> str:
    """The text of ``query`` for ``client`` ("tag" and "unnamed" are its own)."""
    return {
        "tag": f"SELECT 'c{client.number}'::text, %s::int + 1",
        "shared": "SELECT %s::int * 2",
        "marker": "SELECT v FROM marker",
        "temp": "SELECT count(*) FROM pg_temp.tt_a",
        "unnamed": f"SELECT 'c{client.number}'::text, %s::int - 1",
    }[query]


def session_view(*, role: str, app: str, current_user: str, settings: dict[str, str],
                 temp: tuple[tuple[str, str], ...] = (),
                 sql_prepared: tuple[str, ...] = ()) -> Seen:
    """What a session of ``role`` logged in with ``app`` must show."""
    return Seen(current_user=current_user, session_user=role,
                settings=tuple((name, settings[name]) for name in SETTINGS),
                application_name=app, temp=temp, sql_prepared=sql_prepared,
                reported=(("DateStyle", settings["DateStyle"]), ("application_name", app),
                          ("session_authorization", role)))


def login_view(role: str, app: str, defaults: dict[str, str]) -> Seen:
    """What a session shows right after its login."""
    return session_view(role=role, app=app, current_user=role, settings=defaults)


# -- the model ---------------------------------------------------------------------------


@dataclass
class Transaction:
    """An open transaction block: what ROLLBACK restores, what SET LOCAL set."""

    saved_settings: dict[str, str | None]
    saved_temp: dict[str, list[str]]
    local: dict[str, str | None] = field(default_factory=dict)
    failed: bool = False


@dataclass
class Client:
    """One client (a connection through the proxy and its direct shadow) and the
    model of what it must see."""

    number: int
    role: str
    app: str
    proxied: psycopg.Connection[Any]
    direct: psycopg.Connection[Any]
    defaults: dict[str, str]
    #: Session-level values of the tracked settings, and "role" (None: no SET ROLE).
    settings: dict[str, str | None] = field(default_factory=dict)
    temp: dict[str, list[str]] = field(default_factory=dict)
    #: SQL PREPARE name -> the tag its statement answers.
    sql_prepared: dict[str, str] = field(default_factory=dict)
    #: Query texts psycopg holds as prepared (prepare=True that succeeded).
    driver_prepared: set[str] = field(default_factory=set)
    #: Session state kinds that pin the client to its server connection.
    pins: set[str] = field(default_factory=set)
    transaction: Transaction | None = None

    def __post_init__(self) -> None:
        self.login_state()

    @property
    def key(self) -> tuple[str, str]:
        return self.role, self.app

    @property
    def holding(self) -> bool:
        """Whether the client holds a server connection between statements."""
        return bool(self.pins) or self.transaction is not None

    @property
    def failed(self) -> bool:
        return self.transaction is not None and self.transaction.failed

    def login_state(self) -> None:
        self.settings = {**self.defaults, "role": None}
        self.temp = {}
        self.sql_prepared = {}
        self.driver_prepared = set()
        self.pins = set()

    def effective(self, name: str) -> str | None:
        transaction = self.transaction
        if transaction is not None and name in transaction.local:
            return transaction.local[name]
        return self.settings[name]

    def set_session(self, name: str, value: str | None) -> None:
        self.settings[name] = value
        if self.transaction is not None:
            # A later session-level SET wins over an earlier SET LOCAL, at once
            # and at COMMIT.
            self.transaction.local.pop(name, None)

    def set_local(self, name: str, value: str | None) -> None:
        if self.transaction is not None:  # outside a block it ends with its statement
            self.transaction.local[name] = value

    def current_user(self) -> str:
        return self.effective("role") or self.role

    def may_become(self, target: str) -> bool:
        return target == self.role or target in MEMBER_OF[self.role]

    def expected(self) -> Seen:
        return session_view(
            role=self.role, app=self.app, current_user=self.current_user(),
            settings={name: str(self.effective(name)) for name in SETTINGS},
            temp=tuple((name, ",".join(sorted(rows))) for name, rows in sorted(self.temp.items())),
            sql_prepared=tuple(sorted(self.sql_prepared)))

    def marker(self) -> int | None:
        """What ``SELECT v FROM marker`` finds on the effective search_path."""
        path = self.effective("search_path") or ""
        for schema in (entry.strip() for entry in path.split(",")):
            if schema in MARKERS:
                return MARKERS[schema]
        return None

    def close(self) -> None:
        for conn in (self.proxied, self.direct):
            with contextlib.suppress(psycopg.Error):
                conn.close()


# -- the state machine -------------------------------------------------------------------


class PoolMachine(RuleBasedStateMachine):
    """Clients come and go, change their sessions, and must never see each other's."""

    env: ClassVar[PoolEnv]
    #: The pool's ``reset`` (every client's view must be the same with either).
    reset: ClassVar[Literal["minimal", "discard_all"]] = "minimal"

    def __init__(self) -> None:
        super().__init__()
        # A proxy (and so a pool) of its own per example: see the module docstring.
        self.stack = contextlib.ExitStack()
        self.running = self.stack.enter_context(
            running_proxy(self.env.config(reset=self.reset), adapter="asyncio"))
        self.clients: dict[int, Client] = {}
        self.numbers = itertools.count(1)
        self.serial = itertools.count(1)
        self.keys_used: set[tuple[str, str]] = set()
        #: The client the current step acts on.
        self.acted: int | None = None
        # False from the start of a step until its invariant passed: the
        # end-of-example checks run only after a clean last step.
        self.clean = True

    # -- helpers -----------------------------------------------------------------------

    def holders(self, key: tuple[str, str]) -> int:
        return sum(1 for client in self.clients.values() if client.key == key and client.holding)

    def usable(self) -> list[Client]:
        """Clients whose next statement gets a server connection without waiting."""
        return [client for client in self.clients.values()
                if client.holding or self.holders(client.key) < MAX_SIZE]

    def has_usable(self) -> bool:
        return bool(self.usable())

    def in_transaction(self) -> list[Client]:
        return [client for client in self.clients.values() if client.transaction is not None]

    def has_transaction(self) -> bool:
        return bool(self.in_transaction())

    def idle_usable(self) -> list[Client]:
        return [client for client in self.usable() if client.transaction is None]

    def has_idle_usable(self) -> bool:
        return bool(self.idle_usable())

    def pick(self, data: st.DataObject, clients: list[Client]) -> Client:
        self.clean = False
        number = data.draw(st.sampled_from(sorted(client.number for client in clients)),
                           label="client")
        self.acted = number
        return self.clients[number]

    def run(self, client: Client, sql: str, *, params: tuple[Any, ...] | None = None,
            prepare: bool = False, pins: frozenset[str] = frozenset(),
            error: str | None = None, rows: tuple[tuple[Any, ...], ...] | None = None,
            then: Callable[[Outcome], object] | None = None,
            ends_transaction: bool = False) -> Outcome:
        """Run ``sql`` on both of ``client``'s connections; check the outcome
        (``error``: the expected SQLSTATE, else success with ``rows`` if given);
        update the model: the pool pins for ``pins`` whatever the outcome,
        ``then`` runs on success, an error fails an open transaction."""
        if client.failed and not ends_transaction:
            error, rows, then = "25P02", None, None
        driver_had = bool(client.driver_prepared)
        direct = execute(client.direct, sql, params, prepare=prepare)
        proxied = execute(client.proxied, sql, params, prepare=prepare)
        assert proxied == direct, (
            f"client {client.number} ({client.role}) ran {sql!r} {params or ''}: "
            f"through the pool {proxied}, directly {direct}")
        assert direct.error == error, (
            f"client {client.number} ran {sql!r}: expected "
            f"{'error ' + error if error else 'success'}, got {direct}")
        if rows is not None and error is None:
            assert direct.rows == rows, (sql, direct.rows, rows)
        client.pins |= pins
        if direct.error is None:
            if then is not None:
                then(direct)
            if driver_had and DRIVER_CLEARS.match(direct.status or ""):
                # psycopg sent DEALLOCATE ALL after this statement.
                client.driver_prepared.clear()
                client.sql_prepared.clear()
                client.pins.discard("prepare")
        elif client.transaction is not None:
            client.transaction.failed = True
        return direct

    def unique(self, sql: str) -> str:
        """``sql`` with a comment that makes its text new to psycopg's cache, so
        that its DEALLOCATE ALL after ROLLBACK / DISCARD ALL is predictable."""
        return f"{sql} /* {next(self.serial)} */"

    # -- rules -------------------------------------------------------------------------

    @precondition(lambda self: len(self.clients) < MAX_CLIENTS)
    @rule(data=st.data())
    def connect(self, data: st.DataObject) -> None:
        self.clean = False
        keys = [(role, app) for role in LOGIN_ROLES for app in APPS
                if self.holders((role, app)) < MAX_SIZE]
        # The keys of clients already here count thrice: sharing is the point.
        shared = sorted({client.key for client in self.clients.values()} & set(keys))
        role, app = data.draw(st.sampled_from(shared * 3 + keys), label="key")
        cluster = self.env.cluster
        direct = _connect(cluster.host, cluster.port, role, app)
        try:
            proxied = _connect(self.running.host, self.running.port, role, app)
        except BaseException:
            direct.close()
            raise
        number = self.acted = next(self.numbers)
        self.clients[number] = Client(number, role, app, proxied, direct,
                                      dict(self.env.defaults[role]))
        self.keys_used.add((role, app))

    @precondition(lambda self: bool(self.clients))
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        """The client leaves; a newcomer of its key then reads back the connection
        the pool prefers for it: the one just reset, if there was anything to reset."""
        client = self.pick(data, list(self.clients.values()))
        del self.clients[client.number]
        client.close()
        if self.holders(client.key) < MAX_SIZE:
            self.settle()
            self.newcomer_sees_defaults(client.role, client.app)

    def newcomer_sees_defaults(self, role: str, app: str) -> None:
        with _connect(self.running.host, self.running.port, role, app) as newcomer:
            assert observe(newcomer)[0] == login_view(role, app, self.env.defaults[role]), (
                f"a new client of {role} sees what a client before it left")

    def draw_role(self, data: st.DataObject, client: Client) -> str:
        """A role to SET ROLE to: one the client may become, more often than not."""
        allowed = sorted(MEMBER_OF[client.role] | {client.role})
        return data.draw(st.sampled_from(allowed + list(ROLE_TARGETS)), label="role")

    @precondition(has_usable)
    @rule(data=st.data())
    def set_role(self, data: st.DataObject) -> None:
        client = self.pick(data, self.usable())
        wanted = self.draw_role(data, client)
        self.run(client, f"SET ROLE {wanted}", pins=frozenset({"role"}),
                 error=None if client.may_become(wanted) else "42501",
                 then=lambda _: client.set_session("role", wanted))

    @precondition(has_usable)
    @rule(data=st.data())
    def set_local_role(self, data: st.DataObject) -> None:
        client = self.pick(data, self.usable())
        wanted = self.draw_role(data, client)
        # Checked even outside a transaction block, where it lasts one statement.
        self.run(client, f"SET LOCAL ROLE {wanted}",
                 error=None if client.may_become(wanted) else "42501",
                 then=lambda _: client.set_local("role", wanted))

    @precondition(has_usable)
    @rule(data=st.data(), spelling=st.sampled_from(("RESET ROLE", "SET ROLE NONE")))
    def reset_role(self, data: st.DataObject, spelling: str) -> None:
        client = self.pick(data, self.usable())
        self.run(client, spelling, pins=frozenset({"role"}),
                 then=lambda _: client.set_session("role", None))

    @precondition(has_usable)
    @rule(data=st.data(), other=st.sampled_from(LOGIN_ROLES))
    def set_session_authorization(self, data: st.DataObject, other: str) -> None:
        """Only a superuser may (and the login roles are not): an error, but the
        pool pins all the same."""
        client = self.pick(data, self.usable())
        if other == client.role:
            other = next(role for role in LOGIN_ROLES if role != client.role)
        self.run(client, f"SET SESSION AUTHORIZATION {other}", pins=frozenset({"role"}),
                 error="42501")

    @precondition(has_usable)
    @rule(data=st.data(), name=st.sampled_from(SETTINGS), choice=st.integers(0, 3),
          spelling=st.sampled_from(("SET", "SET LOCAL", "set_config", "set_config local",
                                    "RESET")))
    def set_setting(self, data: st.DataObject, name: str, choice: int, spelling: str) -> None:
        client = self.pick(data, self.usable())
        value = VALUES[name][choice]
        session = frozenset({"settings"})
        if spelling == "SET":
            self.run(client, f"SET {name} = {_set_value(name, value)}", pins=session,
                     then=lambda _: client.set_session(name, value))
        elif spelling == "SET LOCAL":
            self.run(client, f"SET LOCAL {name} = {_set_value(name, value)}",
                     then=lambda _: client.set_local(name, value))
        elif spelling == "RESET":
            self.run(client, f"RESET {name}", pins=session,
                     then=lambda _: client.set_session(name, client.defaults[name]))
        else:
            local = spelling == "set_config local"
            self.run(client, f"SELECT pg_catalog.set_config({_literal(name)}, "
                     f"{_literal(value)}, {'true' if local else 'false'})",
                     pins=frozenset() if local else session, rows=((value,),),
                     then=lambda _: (client.set_local if local else client.set_session)(
                         name, value))

    @precondition(has_idle_usable)
    @rule(data=st.data())
    def begin(self, data: st.DataObject) -> None:
        client = self.pick(data, self.idle_usable())

        def done(_: Outcome) -> None:
            client.transaction = Transaction(saved_settings=dict(client.settings),
                                             saved_temp=copy.deepcopy(client.temp))

        self.run(client, "BEGIN", then=done)

    @precondition(has_transaction)
    @rule(data=st.data(), commit=st.booleans())
    def end_transaction(self, data: st.DataObject, commit: bool) -> None:
        client = self.pick(data, self.in_transaction())
        transaction = client.transaction
        assert transaction is not None
        keep = commit and not transaction.failed

        def done(outcome: Outcome) -> None:
            assert outcome.status == ("COMMIT" if keep else "ROLLBACK"), outcome
            if not keep:
                client.settings = transaction.saved_settings
                client.temp = transaction.saved_temp
            client.transaction = None

        self.run(client, self.unique("COMMIT" if commit else "ROLLBACK"), then=done,
                 ends_transaction=True)

    @precondition(has_usable)
    @rule(data=st.data())
    def divide_by_zero(self, data: st.DataObject) -> None:
        client = self.pick(data, self.usable())
        self.run(client, "SELECT 1/0", error="22012")

    @precondition(has_usable)
    @rule(data=st.data(), name=st.sampled_from(SQL_STATEMENTS))
    def sql_prepare(self, data: st.DataObject, name: str) -> None:
        client = self.pick(data, self.usable())
        tag = f"c{client.number}-{name}-{next(self.serial)}"
        self.run(client, f"PREPARE {name} AS SELECT {_literal(tag)}::text, $1::int",
                 pins=frozenset({"prepare"}),
                 error="42P05" if name in client.sql_prepared else None,
                 then=lambda _: client.sql_prepared.__setitem__(name, tag))

    @precondition(has_usable)
    @rule(data=st.data(), name=st.sampled_from(SQL_STATEMENTS), argument=st.integers(0, 99))
    def sql_execute(self, data: st.DataObject, name: str, argument: int) -> None:
        client = self.pick(data, self.usable())
        tag = client.sql_prepared.get(name)
        self.run(client, f"EXECUTE {name}({argument})",
                 error=None if tag is not None else "26000", rows=((tag, argument),))

    @precondition(has_usable)
    @rule(data=st.data(), name=st.sampled_from(SQL_STATEMENTS))
    def sql_deallocate(self, data: st.DataObject, name: str) -> None:
        client = self.pick(data, self.usable())
        self.run(client, f"DEALLOCATE {name}",
                 error=None if name in client.sql_prepared else "26000",
                 then=lambda _: client.sql_prepared.pop(name))

    # A protocol-level named statement (psycopg prepare=True), renamed by the
    # pool and prepared again on whichever connection lacks it; or ("unnamed")
    # the unnamed statement of a query with parameters. One rule per query, so
    # that they make up a good share of the steps.

    @precondition(has_usable)
    @rule(data=st.data(), argument=st.integers(0, 99))
    def driver_tag(self, data: st.DataObject, argument: int) -> None:
        self.driver_statement(self.pick(data, self.usable()), "tag", argument)

    @precondition(has_usable)
    @rule(data=st.data(), argument=st.integers(0, 99))
    def driver_shared(self, data: st.DataObject, argument: int) -> None:
        self.driver_statement(self.pick(data, self.usable()), "shared", argument)

    @precondition(has_usable)
    @rule(data=st.data())
    def driver_marker(self, data: st.DataObject) -> None:
        self.driver_statement(self.pick(data, self.usable()), "marker", 0)

    @precondition(has_usable)
    @rule(data=st.data())
    def driver_temp(self, data: st.DataObject) -> None:
        self.driver_statement(self.pick(data, self.usable()), "temp", 0)

    @precondition(has_usable)
    @rule(data=st.data(), argument=st.integers(0, 99))
    def driver_unnamed(self, data: st.DataObject, argument: int) -> None:
        self.driver_statement(self.pick(data, self.usable()), "unnamed", argument)

    def driver_ready(self) -> list[Client]:
        return [client for client in self.usable() if client.driver_prepared]

    def has_driver_ready(self) -> bool:
        return bool(self.driver_ready())

    @precondition(has_driver_ready)
    @rule(data=st.data(), argument=st.integers(0, 99))
    def driver_again(self, data: st.DataObject, argument: int) -> None:
        """A statement psycopg prepared before, run again (Bind only): on
        whichever server connection the pool hands out now."""
        client = self.pick(data, self.driver_ready())
        queries = [query for query in DRIVER_QUERIES
                   if driver_sql(client, query) in client.driver_prepared]
        self.driver_statement(client, data.draw(st.sampled_from(queries), label="query"),
                              argument)

    def driver_statement(self, client: Client, query: str, argument: int) -> None:
        params: tuple[Any, ...] | None = (argument,)
        sql = driver_sql(client, query)
        error: str | None = None
        if query == "unnamed":
            self.run(client, sql, params=params,
                     rows=((f"c{client.number}", argument - 1),))
            return
        if query == "tag":
            rows: tuple[tuple[Any, ...], ...] = ((f"c{client.number}", argument + 1),)
        elif query == "shared":
            rows = ((argument * 2,),)
        elif query == "marker":
            params = None
            value = client.marker()
            rows = ((value,),)
            error = None if value is not None else "42P01"
        else:
            params = None
            rows = ((len(client.temp.get("tt_a", ())),),)
            error = None if "tt_a" in client.temp else "42P01"
        self.run(client, sql, params=params, prepare=True, error=error, rows=rows,
                 then=lambda _: client.driver_prepared.add(sql))

    @precondition(has_usable)
    @rule(data=st.data(), name=st.sampled_from(TEMP_TABLES))
    def temp_create(self, data: st.DataObject, name: str) -> None:
        client = self.pick(data, self.usable())
        # Granted to everyone, so that whatever role the client has set may use it.
        self.run(client, f"CREATE TEMP TABLE {name} (v text); "
                 f"GRANT ALL ON pg_temp.{name} TO PUBLIC", pins=frozenset({"temp"}),
                 error="42P07" if name in client.temp else None,
                 then=lambda _: client.temp.__setitem__(name, []))

    @precondition(has_usable)
    @rule(data=st.data(), name=st.sampled_from(TEMP_TABLES))
    def temp_insert(self, data: st.DataObject, name: str) -> None:
        client = self.pick(data, self.usable())
        value = f"c{client.number}-{next(self.serial)}"
        self.run(client, f"INSERT INTO pg_temp.{name} VALUES ({_literal(value)})",
                 error=None if name in client.temp else "42P01",
                 then=lambda _: client.temp[name].append(value))

    @precondition(has_usable)
    @rule(data=st.data(), choice=st.integers(0, 3))
    def do_block(self, data: st.DataObject, choice: int) -> None:
        """Code the pool cannot see into: it pins, and DISCARD ALL is the reset."""
        client = self.pick(data, self.usable())
        value = VALUES["work_mem"][choice]
        self.run(client, f"DO $$BEGIN PERFORM pg_catalog.set_config('work_mem', "
                 f"{_literal(value)}, false); END$$", pins=frozenset({"unknown"}),
                 then=lambda _: client.set_session("work_mem", value))

    @precondition(has_usable)
    @rule(data=st.data(), command=st.sampled_from(("DISCARD ALL", "DEALLOCATE ALL",
                                                   "RESET ALL")))
    def clean_up(self, data: st.DataObject, command: str) -> None:
        """What a client does to start over (one rule: each is a big eraser, and
        state must be left behind now and then for the pool to clean up)."""
        client = self.pick(data, self.usable())
        if command == "DISCARD ALL":
            self.run(client, self.unique(command),
                     error="25001" if client.transaction is not None else None,
                     then=lambda _: client.login_state())
        elif command == "DEALLOCATE ALL":
            def deallocated(_: Outcome) -> None:
                client.sql_prepared.clear()
                client.driver_prepared.clear()  # psycopg forgets its own too
                client.pins.discard("prepare")

            self.run(client, self.unique(command), then=deallocated)
        else:
            def reset(_: Outcome) -> None:
                for name in SETTINGS:  # RESET ALL leaves the role alone
                    client.set_session(name, client.defaults[name])

            self.run(client, command, pins=frozenset({"settings"}), then=reset)

    # -- what must hold ----------------------------------------------------------------

    @invariant()
    def sessions_are_their_own(self) -> None:
        self.settle()
        for client in sorted(self.clients.values(), key=lambda c: c.number):
            if not client.holding and self.holders(client.key) >= MAX_SIZE:
                continue  # its key's connections are all held: it would wait
            expected: Seen | str = "25P02" if client.failed else client.expected()
            seen_proxied, statements = observe(client.proxied)
            if client.number == self.acted or seen_proxied != expected:
                # Only the client a step acted on changed its model; and any
                # mismatch must first rule out a mistake of the model.
                seen_directly, _ = observe(client.direct)
                assert seen_directly == expected, (
                    f"the test's model of client {client.number} is wrong (the direct "
                    f"connection disagrees)")
            assert seen_proxied == expected, (
                f"client {client.number} ({client.role}, app {client.app!r}) sees through "
                f"the pool what it should not")
            # Protocol-level statements on its connection are the pool's own.
            assert all(name.startswith("pgwire_") for name in statements), statements
        self.clean = True

    def pool_rows(self) -> list[dict[str, Any]]:
        pool = self.running.proxy.pool
        assert pool is not None
        while True:
            try:  # the proxy's thread may change the pool while we read it
                return pool.stats()
            except RuntimeError:
                continue

    def settle(self) -> None:
        """Wait until the pool is at rest, then check its gauges against the model."""
        want_clients = Counter(client.role for client in self.clients.values())
        want_active = Counter(client.role for client in self.clients.values()
                              if client.holding)
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            rows = [row for row in self.pool_rows() if row["database"] == DB]
            clients: Counter[str] = Counter()
            active: Counter[str] = Counter()
            for row in rows:
                clients[row["user"]] += row["clients"]
                active[row["user"]] += row["servers_active"]
            busy = [row for row in rows if row["clients_waiting"] or row["servers_checking"]
                    or row["servers_connecting"]]
            if clients == want_clients and active == want_active and not busy:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the pool did not come to rest as the model says: clients "
                            f"{dict(clients)} (model {dict(want_clients)}), active servers "
                            f"{dict(active)} (model {dict(want_active)}), stats {rows}")
            time.sleep(0.002)
        for row in rows:
            servers = (row["servers_active"] + row["servers_idle"] + row["servers_checking"]
                       + row["servers_connecting"])
            assert servers <= MAX_SIZE, row

    def teardown(self) -> None:
        try:
            clients = list(self.clients.values())
            self.clients.clear()
            for client in clients:
                client.close()
            if self.clean:  # else a step failed: that failure is the one to report
                self.end_checks()
        finally:
            self.stack.close()

    def end_checks(self) -> None:
        self.settle()
        for role, app in sorted(self.keys_used):
            self.fresh_clients_see_defaults(role, app)
        self.settle()
        assert self.running.proxy.stats.internal_errors == 0
        for row in self.pool_rows():
            for counter in ("failed_verifications", "failed_resets", "checkout_timeouts",
                            "login_failures"):
                assert row[counter] == 0, (counter, row)

    def fresh_clients_see_defaults(self, role: str, app: str) -> None:
        """Two new clients of the key, one holding a transaction open: between
        them they read back every server connection the key has."""
        host, port = self.running.host, self.running.port
        defaults = self.env.defaults[role]
        with _connect(host, port, role, app) as first, _connect(host, port, role, app) as second:
            expected = login_view(role, app, defaults)
            assert execute(first, "BEGIN").error is None
            assert observe(second)[0] == expected, f"a new client of {role} sees leftovers"
            assert observe(first)[0] == expected, f"a new client of {role} sees leftovers"
            assert execute(first, "ROLLBACK").error is None


def _run(env: PoolEnv, reset: Literal["minimal", "discard_all"], *, max_examples: int,
         steps: int) -> None:
    PoolMachine.env = env
    PoolMachine.reset = reset
    run_state_machine_as_test(PoolMachine, settings=settings(
        max_examples=max_examples, stateful_step_count=steps, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))


#: reset="minimal" undoes what a client left; "discard_all" sends DISCARD ALL
#: at every release, which also drops the pool's statements each time.
RESETS: tuple[Literal["minimal", "discard_all"], ...] = ("minimal", "discard_all")


@pytest.mark.parametrize("reset", RESETS)
def test_no_client_sees_another_clients_session(
        pool_env: PoolEnv, reset: Literal["minimal", "discard_all"]) -> None:
    _run(pool_env, reset, max_examples=15, steps=30)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_no_client_sees_another_clients_session_long(pool_env: PoolEnv) -> None:
    # The default reset only: discard_all is the simpler one, run by default above.
    _run(pool_env, "minimal", max_examples=35, steps=50)


# -- what building the machine turned up ---------------------------------------------------


@pytest.fixture
def one_connection(pool_env: PoolEnv) -> Iterator[tuple[str, int]]:
    """A proxy whose pool has one server connection per key: consecutive
    clients of a key surely share it."""
    with running_proxy(pool_env.config(max_size=1), adapter="asyncio") as running:
        yield running.host, running.port


#: Two clients' sessions, each making a ``marker`` visible to the same text
#: with a column type of its own: (first client's setup, second client's setup).
SAME_TEXT_OTHER_TABLE = {
    "temp table": ("CREATE TEMP TABLE marker (v int); INSERT INTO marker VALUES (1)",
                   "CREATE TEMP TABLE marker (v text); INSERT INTO marker VALUES ('three')"),
    "search_path": (f"SET LOCAL search_path = {next(iter(MARKERS))}",
                    f"SET LOCAL search_path = {WORDS}"),
}


@pytest.mark.parametrize("setup", sorted(SAME_TEXT_OTHER_TABLE))
def test_a_prepared_statement_is_planned_for_its_own_client(
        pool_env: PoolEnv, one_connection: tuple[str, int], setup: str) -> None:
    """Client A prepares ``SELECT v FROM marker`` where ``marker`` has an int
    column (its temporary table, or SET LOCAL search_path); client B, next on
    the same server connection, prepares the same text where ``marker`` has a
    text column, and reads 'three' as it does directly. (When the pool named
    statements by their text, B's Parse was answered from A's statement and
    B's Bind ran it: PostgreSQL re-planned it for B's table and refused with
    0A000 "cached plan must not change result type", on every try.)"""
    host, port = one_connection
    first_setup, second_setup = SAME_TEXT_OTHER_TABLE[setup]
    query = "SELECT v FROM marker"

    def session(conn: psycopg.Connection[Any], setup_sql: str) -> list[Outcome]:
        outcomes = [execute(conn, "BEGIN"), execute(conn, setup_sql)]
        outcomes += [execute(conn, query, prepare=True) for _ in range(2)]
        outcomes.append(execute(conn, "COMMIT"))
        return outcomes

    with _connect(host, port, ANN, "") as first:
        assert session(first, first_setup)[2].rows == ((1,),)
    cluster = pool_env.cluster
    with _connect(cluster.host, cluster.port, ANN, "") as direct:
        directly = session(direct, second_setup)
    assert directly[2:4] == [Outcome(None, "SELECT 1", (("three",),))] * 2
    with _connect(host, port, ANN, "") as second:
        assert session(second, second_setup) == directly


def test_protocol_statements_of_one_client_are_invisible_to_the_next(
        one_connection: tuple[str, int]) -> None:
    """Client A runs a statement with prepare=True and leaves; client B, next
    on the same server connection, must not find A's statement text in
    pg_prepared_statements, as it would not on a connection of its own."""
    host, port = one_connection
    secret = "pool_sm: a text only client A ever sent"
    with _connect(host, port, ANN, "") as first:
        assert execute(first, f"SELECT {_literal(secret)}::text, %s::int", (1,),
                       prepare=True).rows == ((secret, 1),)
    with _connect(host, port, ANN, "") as second:
        texts = execute(second, "SELECT statement FROM pg_catalog.pg_prepared_statements")
    assert texts.error is None
    assert not [row for row in texts.rows if secret in row[0]], texts.rows


def test_a_client_cannot_drop_another_clients_statement(
        one_connection: tuple[str, int]) -> None:
    """Client A (connected) has a statement prepared with prepare=True; client
    B, on the same server connection between A's transactions, reads the
    pool's name for it from pg_prepared_statements (the pool documents that
    texts are visible) and sends ``DEALLOCATE <that name>``. Directly, B has
    no such statement (26000) and A's statement is untouched. Through the pool
    the server drops A's statement: the pool still lists it on the connection,
    so A's next execution (a Bind only) fails with 26000."""
    host, port = one_connection
    query = "SELECT 'pool_sm: only A prepares this'::text, %s::int"
    with _connect(host, port, ANN, "") as first, _connect(host, port, ANN, "") as second:
        assert execute(first, query, (1,), prepare=True).error is None
        names = execute(second, "SELECT name FROM pg_catalog.pg_prepared_statements "
                        "WHERE statement LIKE '%only A prepares this%'")
        assert names.error is None
        dropped = [execute(second, psycopg.sql.SQL("DEALLOCATE {}").format(
            psycopg.sql.Identifier(name)).as_string(second)) for (name,) in names.rows]
        again = execute(first, query, (2,), prepare=True)
    assert again == Outcome(None, "SELECT 1", (("pool_sm: only A prepares this", 2),))
    assert all(outcome.error == "26000" for outcome in dropped), (names.rows, dropped)


def test_a_client_cannot_execute_another_clients_statement(
        one_connection: tuple[str, int]) -> None:
    """As above, but B runs ``EXECUTE <that name>(41)``: directly B has no such
    statement (26000); through the pool B runs A's statement and reads its
    answer."""
    host, port = one_connection
    query = "SELECT 'pool_sm: only A runs this'::text, %s::int"
    with _connect(host, port, ANN, "") as first, _connect(host, port, ANN, "") as second:
        assert execute(first, query, (1,), prepare=True).error is None
        names = execute(second, "SELECT name FROM pg_catalog.pg_prepared_statements "
                        "WHERE statement LIKE '%only A runs this%'")
        assert names.error is None
        ran = [execute(second, psycopg.sql.SQL("EXECUTE {}(41)").format(
            psycopg.sql.Identifier(name)).as_string(second)) for (name,) in names.rows]
    assert all(outcome.error == "26000" for outcome in ran), (names.rows, ran)

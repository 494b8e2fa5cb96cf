"""The leaks other poolers have, each tried against pgwire's pool on a real server.

Every test has the same shape. Client A logs in through a pool of one server
connection (``max_size=1``, so the next client surely gets the same server
backend), leaves some session state behind, and goes: it disconnects, or, in
transaction mode with the ``reset`` policy for that kind of state, just ends
its transaction. Client B then logs in on the same key and checks that it is
on the very backend A used (``pg_backend_pid()`` equal) and that it starts
where a fresh login would: ``current_user`` and ``session_user`` as right
after A's login, and no trace of A's state. The pool's counters must tell the
same story: one reset, verified, nothing failed.

Most tests run in three variants:

- ``session``: session mode, A disconnects;
- ``transaction``: transaction mode with the default ``pin`` policy: A keeps
  its state (and its connection) in its next transaction, then disconnects;
- ``transaction-reset``: transaction mode with ``reset`` for the kind: A stays
  connected, B comes after A's transaction ended.

The first test also runs on every adapter and with two connections: while A
is pinned B is served by the other connection and never sees A's role. The
last tests go beyond single statements: psycopg's automatic prepared
statements, a DO block (DISCARD ALL), ``reset="discard_all"``, a client that
hangs up inside a transaction, everything at once, startup options.

Objects (prefix ``pool_leaks_``, unique to this module): database
``pool_leaks``, schema ``pool_leaks_x``, sequence ``pool_leaks_seq``, roles
``pool_leaks_login`` (may SET ROLE ``pool_leaks_other``), ``pool_leaks_super``
(a superuser login), ``pool_leaks_defaulted`` (``ALTER ROLE ... SET role =
pool_leaks_app``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.errors
import pytest

from pgwire.proxy import PoolConfig, PoolMode
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import ADAPTERS, AdapterName, RunningProxy
from tests.interop.proxy_wire import TIMEOUT, wait_until

if TYPE_CHECKING:
    from .conftest import StartPool

pytestmark = pytest.mark.timeout(60)

DB = "pool_leaks"
SCHEMA = "pool_leaks_x"
LOGIN = "pool_leaks_login"
OTHER = "pool_leaks_other"
SUPER = "pool_leaks_super"
DEFAULTED = "pool_leaks_defaulted"
APP = "pool_leaks_app"
PASSWORDS = {LOGIN: "leaks-login-pw", SUPER: "leaks-super-pw", DEFAULTED: "leaks-defaulted-pw"}
DEFAULT_SEARCH_PATH = '"$user", public'

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture(scope="module")
def leaks_db(pg_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """``pg_cluster`` with this module's database and roles."""
    _drop(pg_cluster)
    pg_cluster.sql(f"create database {DB}")
    pg_cluster.sql(f"""
        create role {OTHER} nologin;
        create role {APP} nologin;
        create role {LOGIN} login password '{PASSWORDS[LOGIN]}';
        create role {SUPER} login superuser password '{PASSWORDS[SUPER]}';
        create role {DEFAULTED} login password '{PASSWORDS[DEFAULTED]}';
        grant {OTHER} to {LOGIN}, {DEFAULTED};
        grant {APP} to {DEFAULTED};
        alter role {DEFAULTED} set role = {APP};
    """)
    pg_cluster.sql(f"create schema {SCHEMA}; grant usage on schema {SCHEMA} to public; "
                   f"grant create on schema public to {LOGIN}; "
                   "create sequence public.pool_leaks_seq; "
                   "grant usage on sequence public.pool_leaks_seq to public", dbname=DB)
    try:
        yield pg_cluster
    finally:
        _drop(pg_cluster)


def _drop(cluster: PostgresCluster) -> None:
    cluster.sql(f"drop database if exists {DB} with (force)")
    cluster.sql(f"drop role if exists {LOGIN}, {SUPER}, {DEFAULTED}, {OTHER}, {APP}")


@pytest.fixture
def direct(leaks_db: PostgresCluster) -> Iterator[Conn]:
    """A superuser connection straight to the server, past the proxy."""
    with psycopg.connect(**leaks_db.connect_kwargs(dbname=DB, sslmode="disable",
                                                   connect_timeout=10),
                         autocommit=True) as conn:
        yield conn


def connect(proxy: RunningProxy, user: str = LOGIN) -> Conn:
    # No automatic prepared statements: B's view of pg_prepared_statements
    # must show only what A left.
    return psycopg.connect(host=proxy.host, port=proxy.port, user=user,
                           password=PASSWORDS[user], dbname=DB, sslmode="disable",
                           gssencmode="disable", connect_timeout=10, autocommit=True,
                           prepare_threshold=None)


def who(conn: Conn) -> tuple[str, str, int]:
    """(current_user, session_user, backend pid), from one statement."""
    row = conn.execute("select current_user, session_user, pg_backend_pid()").fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def scalar(conn: Conn, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def pool_row(proxy: RunningProxy, user: str) -> dict[str, Any]:
    pool = proxy.proxy.pool
    assert pool is not None
    rows = [row for row in pool.stats() if row["user"] == user]
    assert len(rows) == 1, rows
    return rows[0]


# ---------------------------------------------------------------------------
# the scenario every test runs


@dataclass(frozen=True)
class Variant:
    mode: PoolMode
    #: Transaction mode with the ``reset`` policy: A stays, B follows A's transaction.
    reset: bool = False


SESSION = Variant("session")
TRANSACTION = Variant("transaction")
TRANSACTION_RESET = Variant("transaction", reset=True)
VARIANTS = [pytest.param(SESSION, id="session"), pytest.param(TRANSACTION, id="transaction"),
            pytest.param(TRANSACTION_RESET, id="transaction-reset")]


Step = Callable[[Conn], None]


def leak_scenario(start_pool: StartPool, variant: Variant, kind: str, *, leave: Step,
                  a_keeps: Step, b_sees: Step, user: str = LOGIN,
                  adapter: AdapterName = "asyncio") -> tuple[str, str, int]:
    """A leaves state of ``kind`` (``leave``) and goes; B gets A's backend and
    ``b_sees`` no trace of it. ``a_keeps`` checks, where A keeps its
    connection, that the state is really there. Returns A's login identity."""
    session_state = {kind: "reset"} if variant.reset else {}
    proxy = start_pool(PoolConfig(mode=variant.mode, max_size=1, session_state=session_state),
                       PASSWORDS, adapter=adapter)
    with connect(proxy, user) as a:
        login = who(a)
        leave(a)
        if variant.reset:
            # A's state was undone when its transaction ended; B follows it.
            check_b(proxy, variant, user, login, b_sees)
        else:
            a_keeps(a)
            assert who(a)[2] == login[2], "A moved to another backend"
    if not variant.reset:
        check_b(proxy, variant, user, login, b_sees)
    return login


def check_b(proxy: RunningProxy, variant: Variant, user: str, login: tuple[str, str, int],
            b_sees: Step) -> None:
    with connect(proxy, user) as b:
        assert who(b) == login, (f"B must start on A's backend, as a fresh login would; "
                                 f"pool: {pool_row(proxy, user)}")
        row = pool_row(proxy, user)
        assert row["servers_opened"] == 1, row
        assert row["resets"] == 1, row
        assert row["discard_alls"] == 0, row
        assert row["verifications"] >= 1, row
        assert row["failed_verifications"] == 0, row
        assert row["failed_resets"] == 0, row
        if variant == TRANSACTION:
            assert row["pinned_transactions"] >= 1, row
        else:
            assert row["pinned_transactions"] == 0, row
        b_sees(b)
        assert who(b) == login


# ---------------------------------------------------------------------------
# roles


ROLE_CASES = [pytest.param(adapter, variant, id=f"{adapter}-{name}")
              for adapter in ADAPTERS for variant, name in
              ((SESSION, "session"), (TRANSACTION, "transaction"))]


@pytest.mark.parametrize(("adapter", "variant"), ROLE_CASES)
def test_set_role_in_transaction_mode(start_pool: StartPool, leaks_db: PostgresCluster,
                                      adapter: AdapterName, variant: Variant) -> None:
    """A's SET ROLE stays A's: with a second connection B is served by it and
    never sees A's role; after A leaves its connection is back to the login role."""
    proxy = start_pool(PoolConfig(mode=variant.mode, max_size=2), PASSWORDS, adapter=adapter)
    with connect(proxy) as a, connect(proxy) as b:
        a_login = who(a)
        assert a_login[:2] == (LOGIN, LOGIN)
        a.execute(f"set role {OTHER}")
        for _ in range(5):
            assert who(a) == (OTHER, LOGIN, a_login[2])
            current, session, b_pid = who(b)
            assert (current, session) == (LOGIN, LOGIN)
            assert b_pid != a_login[2]
        a.close()
        # B holds its connection in a transaction; a newcomer C can only get
        # the one A left, and must find it as a fresh login would.
        b.execute("begin")
        b_now = who(b)
        with connect(proxy) as c:
            c_now = who(c)
            assert {b_now[2], c_now[2]} == {a_login[2], b_pid}
            assert b_now[:2] == c_now[:2] == (LOGIN, LOGIN)
        b.execute("commit")
    row = pool_row(proxy, LOGIN)
    assert row["servers_opened"] == 2, row
    assert row["resets"] >= 1, row
    assert row["failed_verifications"] == row["failed_resets"] == 0, row
    if variant == TRANSACTION:
        assert row["pinned_transactions"] >= 5, row


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_set_role_pinned_client_makes_others_wait(start_pool: StartPool,
                                                   leaks_db: PostgresCluster,
                                                   adapter: AdapterName) -> None:
    """Transaction mode, one connection: while A is pinned by its SET ROLE, B's
    login waits; when A leaves B gets A's backend with the login role."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1), PASSWORDS, adapter=adapter)
    outcome: dict[str, Any] = {}

    def b_logs_in() -> None:
        try:
            with connect(proxy) as b:
                outcome["who"] = who(b)
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    with connect(proxy) as a:
        a_login = who(a)
        a.execute(f"set role {OTHER}")
        thread = threading.Thread(target=b_logs_in, daemon=True)
        thread.start()
        wait_until(lambda: pool_row(proxy, LOGIN)["clients_waiting"] == 1,
                   "B to wait for the pinned connection")
        assert who(a) == (OTHER, LOGIN, a_login[2])
        assert "who" not in outcome and "error" not in outcome
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["who"] == a_login
    row = pool_row(proxy, LOGIN)
    assert row["resets"] == 1 and row["failed_verifications"] == 0, row


@pytest.mark.parametrize("variant", VARIANTS)
def test_set_inside_transaction_block(start_pool: StartPool, leaks_db: PostgresCluster,
                                      variant: Variant) -> None:
    """A session-level SET inside BEGIN ... COMMIT survives the COMMIT."""
    def leave(a: Conn) -> None:
        a.execute("begin")
        a.execute(f"set search_path = {SCHEMA}")
        a.execute("commit")

    def a_keeps(a: Conn) -> None:
        assert scalar(a, "show search_path") == SCHEMA

    def b_sees(b: Conn) -> None:
        assert scalar(b, "show search_path") == DEFAULT_SEARCH_PATH

    leak_scenario(start_pool, variant, "settings", leave=leave, a_keeps=a_keeps, b_sees=b_sees)


@pytest.mark.parametrize("variant", VARIANTS)
def test_set_session_authorization_by_superuser_login(
    start_pool: StartPool, leaks_db: PostgresCluster, variant: Variant
) -> None:
    """The pool logs in as a superuser; A becomes another user entirely."""
    def leave(a: Conn) -> None:
        a.execute(f"set session authorization {OTHER}")

    def a_keeps(a: Conn) -> None:
        assert who(a)[:2] == (OTHER, OTHER)
        assert a.info.parameter_status("is_superuser") == "off"
        assert a.info.parameter_status("session_authorization") == OTHER

    def b_sees(b: Conn) -> None:
        # What the server reported at B's login, as a fresh login reports it.
        assert b.info.parameter_status("is_superuser") == "on"
        assert b.info.parameter_status("session_authorization") == SUPER

    login = leak_scenario(start_pool, variant, "role", user=SUPER, leave=leave,
                          a_keeps=a_keeps, b_sees=b_sees)
    assert login[:2] == (SUPER, SUPER)


@pytest.mark.parametrize("statement", [f"set role {OTHER}", "set role none"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_alter_role_set_role_default(start_pool: StartPool, leaks_db: PostgresCluster,
                                     variant: Variant, statement: str) -> None:
    """The login role's default role (ALTER ROLE ... SET role) is where a fresh
    login starts, so it is where the reset must return: current_user is the
    default role, session_user the login role (the Odyssey leak)."""
    expected = (OTHER if "other" in statement else DEFAULTED, DEFAULTED)

    def leave(a: Conn) -> None:
        a.execute(statement)

    def a_keeps(a: Conn) -> None:
        assert who(a)[:2] == expected

    def b_sees(b: Conn) -> None:
        assert who(b)[:2] == (APP, DEFAULTED)

    login = leak_scenario(start_pool, variant, "role", user=DEFAULTED, leave=leave,
                          a_keeps=a_keeps, b_sees=b_sees)
    assert login[:2] == (APP, DEFAULTED)


@pytest.mark.parametrize("variant", VARIANTS)
def test_pg_dump_style_set_config_search_path(start_pool: StartPool,
                                              leaks_db: PostgresCluster,
                                              variant: Variant) -> None:
    """pg_dump's first statement: an empty search_path, set with set_config."""
    def leave(a: Conn) -> None:
        assert scalar(a, "SELECT pg_catalog.set_config('search_path', '', false)") == ""

    def a_keeps(a: Conn) -> None:
        assert scalar(a, "select pg_catalog.current_setting('search_path')") == ""

    def b_sees(b: Conn) -> None:
        assert scalar(b, "select pg_catalog.current_setting('search_path')") == (
            DEFAULT_SEARCH_PATH)

    leak_scenario(start_pool, variant, "settings", leave=leave, a_keeps=a_keeps, b_sees=b_sees)


@pytest.mark.parametrize("variant", VARIANTS)
def test_reported_setting(start_pool: StartPool, leaks_db: PostgresCluster,
                          variant: Variant) -> None:
    """A setting the server reports (ParameterStatus): B's login must report
    the value B's connection really has, not A's."""
    def leave(a: Conn) -> None:
        a.execute("set application_name = 'pool_leaks_by_a'")
        assert a.info.parameter_status("application_name") == "pool_leaks_by_a"

    def a_keeps(a: Conn) -> None:
        assert scalar(a, "show application_name") == "pool_leaks_by_a"

    def b_sees(b: Conn) -> None:
        assert b.info.parameter_status("application_name") == ""
        assert scalar(b, "show application_name") == ""

    leak_scenario(start_pool, variant, "settings", leave=leave, a_keeps=a_keeps, b_sees=b_sees)


# ---------------------------------------------------------------------------
# temporary tables, LISTEN, advisory locks, PREPARE, cursors WITH HOLD


@pytest.mark.parametrize("variant", VARIANTS)
def test_temp_table(start_pool: StartPool, leaks_db: PostgresCluster,
                    variant: Variant) -> None:
    def leave(a: Conn) -> None:
        a.execute("create temp table pool_leaks_tmp as select 1 as x")

    def a_keeps(a: Conn) -> None:
        assert scalar(a, "select count(*) from pool_leaks_tmp") == 1

    def b_sees(b: Conn) -> None:
        assert scalar(b, "select to_regclass('pool_leaks_tmp')") is None
        assert scalar(b, "select count(*) from pg_class "
                         "where relnamespace = pg_my_temp_schema()") == 0

    leak_scenario(start_pool, variant, "temp", leave=leave, a_keeps=a_keeps, b_sees=b_sees)


@pytest.mark.parametrize("variant", VARIANTS)
def test_listen(start_pool: StartPool, leaks_db: PostgresCluster, direct: Conn,
                variant: Variant) -> None:
    """B must not receive the notifications of A's channel.

    Notifications arrive only while a client holds the connection, so where
    B can hold it (session mode, or pinned by a LISTEN of its own) it listens
    on a second channel, and the server notifies A's channel first and B's in
    the same transaction: B must see its own and nothing before it."""
    def notify_both() -> None:
        with direct.transaction():
            direct.execute("notify pool_leaks_a, 'for A'")
            direct.execute("notify pool_leaks_b, 'for B'")

    def leave(a: Conn) -> None:
        a.execute("listen pool_leaks_a")

    def a_keeps(a: Conn) -> None:
        assert scalar(a, "select array_agg(c) from pg_listening_channels() c") == [
            "pool_leaks_a"]
        notify_both()
        received = list(a.notifies(timeout=TIMEOUT, stop_after=1))
        assert [(n.channel, n.payload) for n in received] == [("pool_leaks_a", "for A")]

    def b_sees(b: Conn) -> None:
        assert scalar(b, "select count(*) from pg_listening_channels()") == 0
        if variant.reset:
            return  # B's own LISTEN would be undone as well: nothing to receive
        b.execute("listen pool_leaks_b")
        notify_both()
        received = list(b.notifies(timeout=TIMEOUT, stop_after=1))
        assert [(n.channel, n.payload) for n in received] == [("pool_leaks_b", "for B")]

    leak_scenario(start_pool, variant, "listen", leave=leave, a_keeps=a_keeps, b_sees=b_sees)


@pytest.mark.parametrize("variant", VARIANTS)
def test_session_advisory_lock(start_pool: StartPool, leaks_db: PostgresCluster,
                               direct: Conn, variant: Variant) -> None:
    """A's session lock is released: no backend holds it, anyone can take it.
    (B cannot prove it by taking the lock itself: B is on A's backend, and a
    session lock is re-entrant there.)"""
    held = ("select count(*) from pg_locks where locktype = 'advisory' "
            "and pid = pg_backend_pid() and objid = 4242")

    def leave(a: Conn) -> None:
        a.execute("select pg_advisory_lock(4242)")

    def a_keeps(a: Conn) -> None:
        assert scalar(a, held) == 1
        assert scalar(direct, "select pg_try_advisory_lock(4242)") is False

    def b_sees(b: Conn) -> None:
        assert scalar(b, held) == 0
        assert scalar(direct, "select pg_try_advisory_lock(4242)") is True
        assert scalar(direct, "select pg_advisory_unlock(4242)") is True

    leak_scenario(start_pool, variant, "advisory", leave=leave, a_keeps=a_keeps,
                  b_sees=b_sees)


@pytest.mark.parametrize("variant", [SESSION, TRANSACTION_RESET],
                         ids=["session", "transaction-reset"])
def test_sequence_currval(start_pool: StartPool, leaks_db: PostgresCluster,
                          variant: Variant) -> None:
    """currval() after A's nextval() is A's: B's currval is undefined (55000).
    (Sequence state is reset, never pinned, by default: no pin variant.)"""
    def leave(a: Conn) -> None:
        a.execute("select nextval('pool_leaks_seq')")

    def a_keeps(a: Conn) -> None:
        assert scalar(a, "select currval('pool_leaks_seq')") >= 1

    def b_sees(b: Conn) -> None:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            b.execute("select currval('pool_leaks_seq')")

    leak_scenario(start_pool, variant, "sequence", leave=leave, a_keeps=a_keeps,
                  b_sees=b_sees)


@pytest.mark.parametrize("variant", VARIANTS)
def test_prepare(start_pool: StartPool, leaks_db: PostgresCluster, variant: Variant) -> None:
    """B cannot EXECUTE the statement A PREPAREd."""
    def leave(a: Conn) -> None:
        a.execute("prepare pool_leaks_stmt as select 42")

    def a_keeps(a: Conn) -> None:
        assert scalar(a, "execute pool_leaks_stmt") == 42

    def b_sees(b: Conn) -> None:
        assert scalar(b, "select count(*) from pg_prepared_statements") == 0
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            b.execute("execute pool_leaks_stmt")

    leak_scenario(start_pool, variant, "prepare", leave=leave, a_keeps=a_keeps, b_sees=b_sees)


@pytest.mark.parametrize("variant", VARIANTS)
def test_declare_cursor_with_hold(start_pool: StartPool, leaks_db: PostgresCluster,
                                  variant: Variant) -> None:
    """B cannot FETCH from the cursor A declared WITH HOLD."""
    def leave(a: Conn) -> None:
        a.execute("declare pool_leaks_cur cursor with hold for select generate_series(1, 3)")

    def a_keeps(a: Conn) -> None:
        assert scalar(a, "fetch 1 from pool_leaks_cur") == 1

    def b_sees(b: Conn) -> None:
        assert scalar(b, "select count(*) from pg_cursors "
                         "where name = 'pool_leaks_cur'") == 0
        with pytest.raises(psycopg.errors.InvalidCursorName):
            b.execute("fetch 1 from pool_leaks_cur")

    leak_scenario(start_pool, variant, "cursor", leave=leave, a_keeps=a_keeps, b_sees=b_sees)


# ---------------------------------------------------------------------------
# beyond the statement kinds: protocol-level statements, DO, discard_all,
# a client that leaves inside a transaction


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_protocol_level_prepared_statements(start_pool: StartPool, leaks_db: PostgresCluster,
                                            mode: PoolMode) -> None:
    """psycopg names its automatic statements _pg3_0, _pg3_1... in every
    session: B preparing the same names on A's backend must not collide with
    A's (42P05), and must never see them."""
    proxy = start_pool(PoolConfig(mode=mode, max_size=1), PASSWORDS)

    def work(conn: Conn, offset: int) -> None:
        for i in range(8):  # past psycopg's prepare_threshold of 5
            assert conn.execute("select %s::int + 1", (offset + i,)).fetchone() == (
                offset + i + 1,)
        names = scalar(conn, "select array_agg(name) from pg_prepared_statements")
        if mode == "session":
            assert names == ["_pg3_0"]
        else:  # renamed to the pool's own names
            assert len(names) == 1 and names[0].startswith("pgwire_"), names

    with psycopg.connect(**_libpq(proxy)) as a:
        login = who(a)
        work(a, 0)
    with psycopg.connect(**_libpq(proxy)) as b:
        assert who(b) == login
        if mode == "session":
            # Session mode does not rename: A's statements were deallocated.
            assert scalar(b, "select count(*) from pg_prepared_statements") == 0
        work(b, 100)
    row = pool_row(proxy, LOGIN)
    assert row["failed_verifications"] == row["failed_resets"] == 0, row
    assert row["servers_opened"] == 1, row


def _libpq(proxy: RunningProxy, user: str = LOGIN) -> dict[str, Any]:
    """Connection keywords with psycopg's automatic prepared statements on."""
    return {"host": proxy.host, "port": proxy.port, "user": user,
            "password": PASSWORDS[user], "dbname": DB, "sslmode": "disable",
            "gssencmode": "disable", "connect_timeout": 10, "autocommit": True}


@pytest.mark.parametrize("variant", VARIANTS)
def test_do_block(start_pool: StartPool, leaks_db: PostgresCluster, variant: Variant) -> None:
    """A DO block runs code the pool cannot read: DISCARD ALL, whatever it did."""
    session_state = {"unknown": "reset"} if variant.reset else {}
    proxy = start_pool(PoolConfig(mode=variant.mode, max_size=1, session_state=session_state),
                       PASSWORDS)
    body = (f"begin perform set_config('search_path', '{SCHEMA}', false); "
            "create temp table pool_leaks_do (x int); end")
    def b_checks(login: tuple[str, str, int]) -> None:
        with connect(proxy) as b:
            assert who(b) == login
            assert scalar(b, "show search_path") == DEFAULT_SEARCH_PATH
            assert scalar(b, "select to_regclass('pool_leaks_do')") is None
            row = pool_row(proxy, LOGIN)
            assert (row["discard_alls"], row["resets"]) == (1, 0), row
            assert row["failed_verifications"] == row["failed_resets"] == 0, row

    with connect(proxy) as a:
        login = who(a)
        a.execute(f"do $$ {body} $$")
        if variant.reset:
            b_checks(login)  # A is still here; its transaction ended
        else:
            assert scalar(a, "show search_path") == SCHEMA
            assert scalar(a, "select count(*) from pool_leaks_do") == 0
    if not variant.reset:
        b_checks(login)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_reset_discard_all(start_pool: StartPool, leaks_db: PostgresCluster,
                           mode: PoolMode) -> None:
    """reset="discard_all": DISCARD ALL whenever a client leaves, and also
    returns a defaulted login to its default role."""
    proxy = start_pool(PoolConfig(mode=mode, max_size=1, reset="discard_all"), PASSWORDS)
    with connect(proxy, DEFAULTED) as a:
        login = who(a)
        assert login[:2] == (APP, DEFAULTED)
        a.execute(f"set role {OTHER}")
        a.execute(f"set search_path = {SCHEMA}")
        a.execute("prepare pool_leaks_stmt as select 1")
        assert who(a) == (OTHER, DEFAULTED, login[2])
    with connect(proxy, DEFAULTED) as b:
        assert who(b) == login
        assert scalar(b, "show search_path") == DEFAULT_SEARCH_PATH
        assert scalar(b, "select count(*) from pg_prepared_statements") == 0
        row = pool_row(proxy, DEFAULTED)
        assert row["discard_alls"] >= 1 and row["resets"] == 0, row
        assert row["failed_verifications"] == row["failed_resets"] == 0, row


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_client_leaves_inside_transaction(start_pool: StartPool, leaks_db: PostgresCluster,
                                          mode: PoolMode) -> None:
    """A client that hangs up inside a transaction block leaves nothing open:
    B is not inside A's transaction and sees none of its work."""
    proxy = start_pool(PoolConfig(mode=mode, max_size=1), PASSWORDS)
    a = connect(proxy)  # not `with`: psycopg would COMMIT on leaving the block
    try:
        a.execute("begin")
        a.execute(f"set local search_path = {SCHEMA}")
        a.execute("create table public.pool_leaks_uncommitted (x int)")
    finally:
        a.close()
    with connect(proxy) as b:
        assert who(b)[:2] == (LOGIN, LOGIN)
        assert scalar(b, "select now() = statement_timestamp()") is True  # a new transaction
        assert scalar(b, "show search_path") == DEFAULT_SEARCH_PATH
        assert scalar(b, "select to_regclass('public.pool_leaks_uncommitted')") is None
        with b.transaction():  # BEGIN works: nothing was open
            assert scalar(b, "select 1") == 1
    assert pool_row(proxy, LOGIN)["failed_verifications"] == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_everything_at_once(start_pool: StartPool, leaks_db: PostgresCluster,
                            variant: Variant) -> None:
    """A role, a setting, a prepared statement, a held cursor, a LISTEN, a
    temporary table and sequence state together: one reset undoes them all."""
    kinds = ("role", "settings", "prepare", "cursor", "listen", "temp", "sequence")
    session_state = dict.fromkeys(kinds, "reset") if variant.reset else {}
    proxy = start_pool(PoolConfig(mode=variant.mode, max_size=1, session_state=session_state),
                       PASSWORDS)
    statements = [f"set role {OTHER}", f"set search_path = {SCHEMA}, public",
                  "prepare pool_leaks_all as select 1",
                  "declare pool_leaks_all cursor with hold for select 1",
                  "listen pool_leaks_all", "create temp table pool_leaks_all (x int)",
                  "select nextval('public.pool_leaks_seq')"]

    def b_checks(login: tuple[str, str, int]) -> None:
        with connect(proxy) as b:
            assert who(b) == login
            row = b.execute(
                "select current_setting('search_path'),"
                " (select count(*) from pg_prepared_statements),"
                " (select count(*) from pg_cursors where name = 'pool_leaks_all'),"
                " (select count(*) from pg_listening_channels()),"
                " to_regclass('pool_leaks_all')").fetchone()
            assert row == (DEFAULT_SEARCH_PATH, 0, 0, 0, None)
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                b.execute("select currval('public.pool_leaks_seq')")
            stats = pool_row(proxy, LOGIN)
            assert (stats["resets"], stats["discard_alls"]) == (1, 0), stats
            assert stats["failed_verifications"] == stats["failed_resets"] == 0, stats

    with connect(proxy) as a:
        login = who(a)
        if variant.reset:
            with a.transaction():  # one transaction: one reset at its end
                for statement in statements:
                    a.execute(statement)
            b_checks(login)
        else:
            for statement in statements:
                a.execute(statement)
            assert who(a) == (OTHER, LOGIN, login[2])
    if not variant.reset:
        b_checks(login)


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_startup_options_are_the_baseline(start_pool: StartPool, leaks_db: PostgresCluster,
                                          mode: PoolMode) -> None:
    """A role and a search_path set in the startup packet (options -c ...) are
    where a fresh login starts, so they are where the reset must return."""
    proxy = start_pool(PoolConfig(mode=mode, max_size=1), PASSWORDS)
    options = {"options": f"-c role={OTHER} -c search_path={SCHEMA}"}
    with psycopg.connect(**_libpq(proxy), **options, prepare_threshold=None) as a:
        login = who(a)
        assert login[:2] == (OTHER, LOGIN)
        assert scalar(a, "show search_path") == SCHEMA
        a.execute("set role none")
        a.execute("set search_path = public")
        assert who(a) == (LOGIN, LOGIN, login[2])
    with psycopg.connect(**_libpq(proxy), **options) as b:
        assert who(b) == login
        assert scalar(b, "show search_path") == SCHEMA
    row = pool_row(proxy, LOGIN)
    assert row["resets"] == 1 and row["failed_verifications"] == row["failed_resets"] == 0, row

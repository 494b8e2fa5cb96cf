"""The pool on a real server with real clients: sharing, policies, prepared
statements, timeouts, failed logins, verification, health checks, lifetimes,
idle connections, parameters and cancels.

Transaction mode moves a client between server connections only when its
last one is busy, so the prepared-statement tests steer it: a pair of
*holders* (clients of the same key) open a transaction each, which takes
both connections of a pool of two, and the one that did not land on the
backend to avoid commits at once. The client's next statement must then run
on the other connection, where its statement is not prepared yet.

Objects (prefix ``pool_live_``, unique to this module): database
``pool_live``; roles ``pool_live_login`` (may SET ROLE ``pool_live_other``)
and ``pool_live_badpw``, whose password on the server differs from the one
the proxy has (a pg_hba.conf line at the top makes the server ask for it);
functions ``pool_live_set_role()`` and ``pool_live_set_config_role()``, which
change the role where the pool's SQL analysis cannot see it; sequence
``pool_live_seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import asyncpg
import pg8000.native
import psycopg
import psycopg.errors
import pytest

import pgwire as pw
from pgwire.proxy import PoolConfig
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import ADAPTERS, AdapterName, RunningProxy
from tests.interop.proxy_wire import TIMEOUT, RawClient, wait_until

if TYPE_CHECKING:
    from .conftest import StartPool

pytestmark = pytest.mark.timeout(60)

DB = "pool_live"
LOGIN = "pool_live_login"
OTHER = "pool_live_other"
BADPW = "pool_live_badpw"
PASSWORDS = {LOGIN: "live-login-pw", BADPW: "what-the-proxy-has"}
SERVER_BADPW = "what-the-server-has"
HBA_LINE = f"host all {BADPW} 127.0.0.1/32 scram-sha-256  # pgwire pool live tests\n"
DEFAULT_SEARCH_PATH = '"$user", public'
ROLE_FUNCTIONS = {
    "set_role": f"begin set role {OTHER}; return current_user; end",
    "set_config_role": f"begin perform set_config('role', '{OTHER}', false); "
                       "return current_user; end",
}

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.fixture(scope="module")
def live_db(pg_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """``pg_cluster`` with this module's database, roles, functions and hba line."""
    _drop(pg_cluster)
    pg_cluster.sql(f"create database {DB}")
    pg_cluster.sql(f"""
        create role {OTHER} nologin;
        create role {LOGIN} login password '{PASSWORDS[LOGIN]}';
        create role {BADPW} login password '{SERVER_BADPW}';
        grant {OTHER} to {LOGIN};
    """)
    for name, body in ROLE_FUNCTIONS.items():
        pg_cluster.sql(f"create function pool_live_{name}() returns text language plpgsql "
                       f"as $$ {body} $$", dbname=DB)
    pg_cluster.sql("create sequence pool_live_seq; "
                   "grant usage on sequence pool_live_seq to public", dbname=DB)
    hba = pg_cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(HBA_LINE + original)  # rewriting in place keeps owner and mode
    try:
        pg_cluster.sql("select pg_reload_conf()")
        wait_until(lambda: _refused(pg_cluster), "the server to ask for passwords")
        yield pg_cluster
    finally:
        hba.write_text(original)
        pg_cluster.sql("select pg_reload_conf()")
        _drop(pg_cluster)


def _drop(cluster: PostgresCluster) -> None:
    cluster.sql(f"drop database if exists {DB} with (force)")
    cluster.sql(f"drop role if exists {LOGIN}, {BADPW}, {OTHER}")


def _refused(cluster: PostgresCluster) -> bool:
    try:
        psycopg.connect(host=cluster.host, port=cluster.port, user=BADPW, dbname=DB,
                        password=PASSWORDS[BADPW], sslmode="disable",
                        connect_timeout=10).close()
    except psycopg.OperationalError:
        return True
    return False


@pytest.fixture
def direct(live_db: PostgresCluster) -> Iterator[Conn]:
    """A superuser connection straight to the server, past the proxy."""
    with psycopg.connect(**live_db.connect_kwargs(dbname=DB, sslmode="disable",
                                                  connect_timeout=10),
                         autocommit=True) as conn:
        yield conn


def connect(proxy: RunningProxy, user: str = LOGIN, **extra: Any) -> Conn:
    return psycopg.connect(host=proxy.host, port=proxy.port, user=user,
                           password=PASSWORDS[user], dbname=DB, sslmode="disable",
                           gssencmode="disable", connect_timeout=10, autocommit=True,
                           **extra)


def raw_client(address: tuple[str, int], user: str = LOGIN, password: str | None = None
               ) -> RawClient:
    return RawClient(address, user=user, password=password or PASSWORDS[user], database=DB,
                     sslmode="disable")


def who(conn: Conn) -> tuple[str, str, int]:
    """(current_user, session_user, backend pid), from one statement."""
    row = conn.execute("select current_user, session_user, pg_backend_pid()").fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def scalar(conn: Conn, sql: str, params: Sequence[Any] | None = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def pool_row(proxy: RunningProxy, user: str = LOGIN) -> dict[str, Any]:
    """The stats of ``user``'s key (each test's clients of a user share one key)."""
    pool = proxy.proxy.pool
    assert pool is not None
    rows = [row for row in pool.stats() if row["user"] == user]
    assert len(rows) == 1, rows
    return rows[0]


def pool_pids(proxy: RunningProxy) -> set[int]:
    pool = proxy.proxy.pool
    assert pool is not None
    return {s.conn.frontend.backend_key[0] for s in pool.servers()
            if s.conn.frontend.backend_key is not None}


# ---------------------------------------------------------------------------
# steering clients between connections


class Holders:
    """Two clients of one key that can take every connection of a pool of two."""

    def __init__(self, begin: Callable[[int], int], commit: Callable[[int], None]) -> None:
        #: ``begin(i)`` opens a transaction on holder i and returns its backend pid.
        self.begin = begin
        self.commit = commit

    @contextlib.contextmanager
    def occupy(self, pid: int) -> Iterator[None]:
        """Hold backend ``pid`` in an open transaction and leave the other
        connection free, so the next client statement runs there."""
        pids = [self.begin(0), self.begin(1)]
        assert pid in pids, f"backend {pid} is not in the pool: holders got {pids}"
        keep = pids.index(pid)
        self.commit(1 - keep)
        try:
            yield
        finally:
            self.commit(keep)


def psycopg_holders(stack: contextlib.ExitStack, proxy: RunningProxy, **extra: Any) -> Holders:
    conns = [stack.enter_context(connect(proxy, **extra)) for _ in range(2)]

    def begin(index: int) -> int:
        conns[index].execute("begin")
        pid: int = scalar(conns[index], "select pg_backend_pid()")
        return pid

    def commit(index: int) -> None:
        conns[index].execute("commit")

    return Holders(begin, commit)


def raw_holders(stack: contextlib.ExitStack, proxy: RunningProxy) -> Holders:
    clients = [stack.enter_context(raw_client(proxy.address)) for _ in range(2)]
    for client in clients:
        client.login()

    def begin(index: int) -> int:
        clients[index].query("begin")
        return int(clients[index].scalar("select pg_backend_pid()"))

    def commit(index: int) -> None:
        clients[index].query("commit")

    return Holders(begin, commit)


# ---------------------------------------------------------------------------
# sharing


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_transaction_mode_shares_one_server(start_pool: StartPool, live_db: PostgresCluster,
                                            adapter: AdapterName) -> None:
    """Four clients, one server connection: every statement answered right,
    all of them by the same backend."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1), PASSWORDS, adapter=adapter)
    results: dict[int, list[tuple[int, int]]] = {}
    errors: list[BaseException] = []

    def client(number: int) -> None:
        try:
            with connect(proxy) as conn:
                results[number] = [
                    (scalar(conn, "select %s::int * 2", (number * 100 + i,)),
                     scalar(conn, "select pg_backend_pid()"))
                    for i in range(10)
                ]
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    assert not errors, errors
    assert sorted(results) == [0, 1, 2, 3]
    for number, answers in results.items():
        assert [value for value, _ in answers] == [(number * 100 + i) * 2 for i in range(10)]
    assert len({pid for answers in results.values() for _, pid in answers}) == 1
    row = pool_row(proxy)
    assert row["servers_opened"] == 1, row
    assert row["checkouts"] >= 4 * 20, row  # a checkout per statement, and per login
    wait_until(lambda: pool_row(proxy)["clients"] == 0, "the clients to be gone")
    # The last client's release may still be resetting the connection.
    wait_until(lambda: pool_row(proxy)["servers_idle"] == 1, "the server to be idle again")
    assert pool_row(proxy)["servers_opened"] == 1


def test_psycopg_pipelines_share_one_server(start_pool: StartPool,
                                            live_db: PostgresCluster) -> None:
    """Three clients send pipelines of named statements through one connection;
    every other pipeline fails in its middle (the server skips the rest up
    to Sync, and so must the pool's bookkeeping of its renamed statements)."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1), PASSWORDS)
    errors: list[BaseException] = []

    def client(number: int) -> None:
        try:
            with connect(proxy) as conn:
                for round_number in range(6):
                    failing = round_number % 2 == 1
                    cursors = []
                    expect: contextlib.AbstractContextManager[Any] = (
                        pytest.raises(psycopg.errors.DivisionByZero) if failing
                        else contextlib.nullcontext())
                    with expect, conn.pipeline():
                        for i in range(8):
                            if failing and i == 3:
                                conn.execute("select 1 / %s::int", (0,))
                            cursors.append(conn.execute(f"select %s::int * {i}",
                                                        (number + round_number,),
                                                        prepare=True))
                    if failing:
                        assert [cursor.fetchone() for cursor in cursors[:3]] == [
                            ((number + round_number) * i,) for i in range(3)]
                    else:
                        assert [cursor.fetchone() for cursor in cursors] == [
                            ((number + round_number) * i,) for i in range(8)]
                assert scalar(conn, "select 'still usable'") == "still usable"
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    assert not errors, errors
    row = pool_row(proxy)
    assert row["servers_opened"] == 1 and row["failed_verifications"] == 0, row


# ---------------------------------------------------------------------------
# session state policies


def test_refuse_policy(start_pool: StartPool, live_db: PostgresCluster) -> None:
    """Refused settings never reach the server; the client goes on; SET LOCAL works."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1,
                                  session_state={"settings": "refuse"}), PASSWORDS)
    with connect(proxy) as conn:
        for statement in ("set search_path = pool_live_nowhere",
                          "select set_config('search_path', 'pool_live_nowhere', false)"):
            with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
                conn.execute(statement)
            assert info.value.sqlstate == "0A000"
            assert scalar(conn, "select 1") == 1
            assert scalar(conn, "show search_path") == DEFAULT_SEARCH_PATH
        with conn.transaction():
            conn.execute("set local search_path = pool_live_somewhere")
            assert scalar(conn, "show search_path") == "pool_live_somewhere"
        assert scalar(conn, "show search_path") == DEFAULT_SEARCH_PATH
        # Inside a transaction block the refusal fails the block, as any error does.
        conn.execute("begin")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("set search_path = pool_live_nowhere")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.execute("rollback")
        assert scalar(conn, "show search_path") == DEFAULT_SEARCH_PATH
        # Other kinds keep their default policy: a role still pins.
        conn.execute(f"set role {OTHER}")
        assert who(conn)[0] == OTHER
    with raw_client(proxy.address) as raw:
        raw.login()
        # In an extended batch the refusal is an error like the server's: the
        # rest of the batch is skipped up to Sync.
        unnamed = pw.Bind(portal="", statement="", parameter_formats=(), parameters=(),
                          result_formats=())
        answer = _batch(raw, pw.Parse(statement="", query="set search_path = pool_live_nowhere"),
                        unnamed, pw.Execute(portal="", max_rows=0),
                        pw.Parse(statement="", query="select 'after'"),
                        unnamed, pw.Execute(portal="", max_rows=0))
        assert [item[:2] for item in answer] == [("E", "0A000"), ("Z", "I")], answer
        assert raw.scalar("show search_path") == DEFAULT_SEARCH_PATH
    row = pool_row(proxy)
    assert row["refused_statements"] == 4, row
    assert row["pinned_transactions"] >= 1, row


def test_reset_policy(start_pool: StartPool, live_db: PostgresCluster) -> None:
    """A setting lives until its transaction ends, then the pool undoes it."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1,
                                  session_state={"settings": "reset"}), PASSWORDS)
    with connect(proxy) as conn:
        pid = who(conn)[2]
        conn.execute("set search_path = pool_live_somewhere")
        assert scalar(conn, "show search_path") == DEFAULT_SEARCH_PATH
        with conn.transaction():
            conn.execute("set search_path = pool_live_somewhere")
            assert scalar(conn, "show search_path") == "pool_live_somewhere"
        assert scalar(conn, "show search_path") == DEFAULT_SEARCH_PATH
        assert who(conn)[2] == pid
    row = pool_row(proxy)
    assert row["resets"] == 2, row
    assert row["pinned_transactions"] == 0, row
    assert row["failed_verifications"] == row["failed_resets"] == 0, row


def test_reset_policy_client_sees_what_the_server_has(start_pool: StartPool,
                                                      live_db: PostgresCluster) -> None:
    """The server reported A's new DateStyle and TimeZone (ParameterStatus);
    after the pool undid them, A must be told the values it now runs with.
    (A driver that trusts a stale report misreads dates, or quotes strings
    for the wrong standard_conforming_strings.)"""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1,
                                  session_state={"settings": "reset"}), PASSWORDS)
    with connect(proxy) as conn:
        conn.execute("set datestyle = 'German'")
        assert conn.info.parameter_status("DateStyle") == "German, DMY"
        conn.execute("set timezone = 'Asia/Tokyo'")
        assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert scalar(conn, "show datestyle") == "ISO, MDY"
        assert conn.info.parameter_status("DateStyle") == "ISO, MDY"
        assert conn.info.parameter_status("TimeZone") == scalar(conn, "show timezone")
        with conn.transaction():
            conn.execute("set datestyle = 'SQL, DMY'")
            assert conn.info.parameter_status("DateStyle") == "SQL, DMY"
            assert scalar(conn, "select '2024-03-01'::date::text") == "01/03/2024"
        assert scalar(conn, "select '2024-03-01'::date::text") == "2024-03-01"
        assert conn.info.parameter_status("DateStyle") == "ISO, MDY"


class StateCase(NamedTuple):
    kind: str
    #: The statement that creates the state.
    sql: str
    #: A query that shows it, and what it must answer on a clean connection.
    check: str
    clean: tuple[str, Any]


STATE_CASES = [
    pytest.param(StateCase("settings", "set search_path = pool_live_somewhere",
                           "show search_path", ("D", DEFAULT_SEARCH_PATH.encode())),
                 id="settings"),
    pytest.param(StateCase("role", f"set role {OTHER}", "select current_user",
                           ("D", LOGIN.encode())), id="role"),
    # Sequence state is reset by default: no policy needs changing for this one.
    pytest.param(StateCase("sequence", "select nextval('pool_live_seq')",
                           "select currval('pool_live_seq')", ("E", "55000")), id="sequence"),
]


@pytest.mark.parametrize("statement", ["s_state", ""], ids=["named", "unnamed"])
@pytest.mark.parametrize("case", STATE_CASES)
def test_reset_policy_statement_executed_later(start_pool: StartPool,
                                               live_db: PostgresCluster, case: StateCase,
                                               statement: str) -> None:
    """A prepares a statement that creates session state in one transaction
    and executes it in a later one: the state that execution creates must be
    undone too, like any other."""
    kind, sql, check, clean = case
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1,
                                  session_state={kind: "reset"}), PASSWORDS)
    with raw_client(proxy.address) as a, raw_client(proxy.address) as b:
        a.login()
        b.login()
        pid = b.scalar("select pg_backend_pid()")
        assert _batch(a, pw.Parse(statement=statement, query=sql)) == [
            ("ParseComplete",), ("Z", "I")]
        answer = _batch(a, pw.Bind(portal="", statement=statement, parameter_formats=(),
                                   parameters=(), result_formats=()),
                        pw.Execute(portal="", max_rows=0))
        assert not any(item[0] == "E" for item in answer), answer
        seen = [item[:2] for item in _summary(b.query(check))]
        assert clean in seen, seen
        assert b.scalar("select pg_backend_pid()") == pid
    row = pool_row(proxy)
    assert row["resets"] == 2 and row["failed_verifications"] == 0, row


def test_pin_policy_and_discard_all(start_pool: StartPool, live_db: PostgresCluster) -> None:
    """A pinned client keeps its setting and its connection; DISCARD ALL gives
    the connection back to the pool."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=2, checkout_timeout=5),
                       PASSWORDS)
    with connect(proxy) as a, connect(proxy) as b:
        a_pid = who(a)[2]
        a.execute("set search_path = pool_live_somewhere")
        for _ in range(3):
            assert scalar(a, "show search_path") == "pool_live_somewhere"
            assert who(a)[2] == a_pid
            assert scalar(b, "show search_path") == DEFAULT_SEARCH_PATH
            b_pid = who(b)[2]
            assert b_pid != a_pid
        row = pool_row(proxy)
        assert row["servers_active"] == 1 and row["pinned_transactions"] >= 4, row
        a.execute("discard all")
        wait_until(lambda: pool_row(proxy)["servers_active"] == 0,
                   "A's connection to go back to the pool")
        assert scalar(a, "show search_path") == DEFAULT_SEARCH_PATH
        # B holds one connection; a newcomer can only get the one A had.
        b.execute("begin")
        b_now = who(b)[2]
        with connect(proxy) as c:
            current, session, c_pid = who(c)
            assert (current, session) == (LOGIN, LOGIN)
            assert {b_now, c_pid} == {a_pid, b_pid}
            assert scalar(c, "show search_path") == DEFAULT_SEARCH_PATH
        b.execute("commit")
    assert pool_row(proxy)["failed_verifications"] == 0


# ---------------------------------------------------------------------------
# prepared statements


SQL_TWICE = "select %s::int * 2, pg_backend_pid()"


def test_prepared_statements_psycopg(start_pool: StartPool, live_db: PostgresCluster) -> None:
    """psycopg's named statements (prepare=True), two clients, connections changing."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=2), PASSWORDS)
    with contextlib.ExitStack() as stack:
        holders = psycopg_holders(stack, proxy)
        clients = [stack.enter_context(connect(proxy)) for _ in range(2)]
        for round_number in range(3):
            for conn in clients:
                value, pid = conn.execute(SQL_TWICE, (round_number,), prepare=True).fetchone()
                assert value == round_number * 2
                with holders.occupy(pid):
                    value, moved = conn.execute(SQL_TWICE, (round_number + 10,),
                                                prepare=True).fetchone()
                assert (value, moved != pid) == ((round_number + 10) * 2, True)
                assert scalar(conn, "select count(*) from pg_prepared_statements "
                                    "where name not like 'pgwire\\_%'") == 0
    row = pool_row(proxy)
    assert row["reprepared"] >= 1, row
    assert row["failed_verifications"] == 0, row


def names(events: Sequence[object]) -> list[str]:
    return [type(event).__name__ for event in events]


def until_ready(client: RawClient) -> list[object]:
    return list(client.events_until(lambda e: isinstance(e, pw.ReadyForQuery)))


def test_sql_deallocate_of_a_protocol_statement(start_pool: StartPool,
                                                live_db: PostgresCluster) -> None:
    """DEALLOCATE of a name the client prepared with Parse (psycopg sends it when
    its statement cache is full, with libpq before 17): the server knows the
    statement by the pool's name only, so the pool answers it; the name is
    free again afterwards and the client's other statements still run, on
    either connection."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=2), PASSWORDS)
    with contextlib.ExitStack() as stack:
        holders = psycopg_holders(stack, proxy)
        client = stack.enter_context(raw_client(proxy.address))
        client.login()
        client.send(pw.Parse(statement="s1", query="select 1", parameter_types=()),
                    pw.Parse(statement="s2", query="select 2", parameter_types=()),
                    pw.Sync())
        assert names(until_ready(client)) == ["ParseComplete", "ParseComplete", "ReadyForQuery"]
        assert names(client.query("DEALLOCATE s1")) == ["CommandComplete", "ReadyForQuery"]
        # Gone, as on the server.
        assert names(client.query('deallocate prepare "s1"'))[0] == "ErrorResponse"
        pid = int(client.scalar("select pg_backend_pid()"))
        with holders.occupy(pid):
            client.send(pw.Bind(portal="", statement="s2", parameter_formats=(),
                                parameters=(), result_formats=()),
                        pw.Execute(portal="", max_rows=0), pw.Sync())
            answer = until_ready(client)
            rows = [m for m in answer if isinstance(m, pw.DataRow)]
            assert [bytes(v) for v in rows[0].values if v is not None] == [b"2"], answer
            client.send(pw.Parse(statement="s1", query="select 11", parameter_types=()),
                        pw.Sync())
            assert names(until_ready(client)) == ["ParseComplete", "ReadyForQuery"]


def test_sql_deallocate_of_another_clients_statement_is_refused(
        start_pool: StartPool, live_db: PostgresCluster) -> None:
    """Client B reads client A's statement name in pg_prepared_statements (they
    share the connection) and tries to DEALLOCATE it: refused with 26000, as
    the server refuses a name B never prepared, and A's statement still runs."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1), PASSWORDS)
    with connect(proxy) as first, connect(proxy) as second:
        assert first.execute("select %s::int + 1", (1,), prepare=True).fetchone() == (2,)
        names = [row[0] for row in second.execute(
            "select name from pg_prepared_statements where name like 'pgwire\\_%'")]
        assert names, "A's statement is on the shared connection"
        for sql in (f'DEALLOCATE "{names[0]}"', f'select 1; deallocate prepare "{names[0]}"'):
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                second.execute(sql)
        assert first.execute("select %s::int + 1", (2,), prepare=True).fetchone() == (3,)


def test_prepared_statements_asyncpg(start_pool: StartPool, live_db: PostgresCluster) -> None:
    """asyncpg prepares every statement by name: conn.prepare() (Parse and
    Describe), executed later on another connection, where it is prepared again."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=2), PASSWORDS)

    def connect_asyncpg() -> Any:
        return asyncpg.connect(host=proxy.host, port=proxy.port, user=LOGIN,
                               password=PASSWORDS[LOGIN], database=DB, ssl=False,
                               timeout=TIMEOUT)

    @contextlib.asynccontextmanager
    async def occupy(holders: list[Any], pid: int) -> AsyncIterator[None]:
        transactions = [h.transaction() for h in holders]
        pids = []
        for holder, transaction in zip(holders, transactions, strict=True):
            await transaction.start()
            pids.append(await holder.fetchval("select pg_backend_pid()"))
        assert pid in pids, (pid, pids)
        keep = pids.index(pid)
        await transactions[1 - keep].commit()
        try:
            yield
        finally:
            await transactions[keep].commit()

    async def main() -> None:
        holders = [await connect_asyncpg() for _ in range(2)]
        a, b = await connect_asyncpg(), await connect_asyncpg()
        try:
            # prepare() ends with Flush, not Sync: the client keeps the
            # connection until its next Sync (here, the first execution).
            double = await a.prepare("select $1::int * 2, pg_backend_pid()")
            value, pid = await double.fetchrow(1)
            assert value == 2
            triple = await b.prepare("select $1::int * 3, pg_backend_pid()")
            assert (await triple.fetchrow(3))[0] == 9
            async with occupy(holders, pid):
                value, moved = await double.fetchrow(21)
                assert (value, moved != pid) == (42, True)
            value, pid = await triple.fetchrow(4)
            assert value == 12
            async with occupy(holders, pid):
                value, moved = await triple.fetchrow(5)
                assert (value, moved != pid) == (15, True)
                # The statement cache: Parse, Describe, Flush, then Bind ... Sync.
                assert await a.fetchval("select $1::text || 'x'", "a") == "ax"
            assert await a.fetchval("select $1::text || 'x'", "b") == "bx"
            assert await double.fetchval(50) == 100
        finally:
            for conn in [a, b, *holders]:
                await conn.close()

    asyncio.run(main())
    row = pool_row(proxy)
    assert row["reprepared"] >= 2, row
    assert row["failed_verifications"] == 0, row


def test_prepared_statements_pg8000(start_pool: StartPool, live_db: PostgresCluster) -> None:
    """pg8000's named statements; closing one and preparing it again."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=2), PASSWORDS)

    def connect_pg8000() -> pg8000.native.Connection:
        return pg8000.native.Connection(LOGIN, host=proxy.host, port=proxy.port,
                                        password=PASSWORDS[LOGIN], database=DB, timeout=TIMEOUT)

    conns = [connect_pg8000() for _ in range(4)]
    try:
        h0, h1, a, b = conns

        def begin(index: int) -> int:
            holder = (h0, h1)[index]
            holder.run("begin")
            pid: int = holder.run("select pg_backend_pid()")[0][0]
            return pid

        def commit(index: int) -> None:
            (h0, h1)[index].run("commit")

        holders = Holders(begin, commit)
        sql = "select cast(:v as int) + 3, pg_backend_pid()"
        statement_a = a.prepare(sql)
        statement_b = b.prepare("select cast(:v as int) + 4, pg_backend_pid()")
        [[value, pid]] = statement_a.run(v=1)
        assert value == 4
        with holders.occupy(pid):
            [[value, moved]] = statement_a.run(v=2)
            assert (value, moved != pid) == (5, True)
            assert statement_b.run(v=1)[0][0] == 5
        statement_a.close()
        statement_a = a.prepare(sql)
        [[value, pid]] = statement_a.run(v=10)
        assert value == 13
        with holders.occupy(pid):
            [[value, moved]] = statement_a.run(v=20)
            assert (value, moved != pid) == (23, True)
        assert statement_b.run(v=2)[0][0] == 6
    finally:
        for conn in conns:
            conn.close()
    row = pool_row(proxy)
    assert row["reprepared"] >= 2, row
    assert row["failed_verifications"] == 0, row


def _summary(events: list[pw.FrontendEvent]) -> list[tuple[Any, ...]]:
    """What a client sees of a batch's answer, comparable across servers."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, pw.ErrorResponse):
            out.append(("E", event.code, event.message))
        elif isinstance(event, pw.DataRow):
            out.append(("D", *(None if v is None else bytes(v) for v in event.values)))
        elif isinstance(event, pw.RowDescription):
            out.append(("T", *(f.name for f in event.fields)))
        elif isinstance(event, pw.ParameterDescription):
            out.append(("t", *event.parameter_types))
        elif isinstance(event, pw.CommandComplete):
            out.append(("C", event.tag))
        elif isinstance(event, pw.ReadyForQuery):
            out.append(("Z", event.status.value))
        elif isinstance(event, pw.Message):
            out.append((type(event).__name__,))
    return out


def _batch(client: RawClient, *messages: pw.Message) -> list[tuple[Any, ...]]:
    client.send(*messages, pw.Sync())
    return _summary(client.events_until(lambda e: isinstance(e, pw.ReadyForQuery)))


NAMED_SCRIPT: list[tuple[str, bool, list[pw.Message]]] = [
    # (what, run it on a connection other than the last one, messages)
    ("parse", False, [pw.Parse(statement="s1", query="select $1::int + 1 as one")]),
    ("duplicate parse", False, [pw.Parse(statement="s1", query="select 2")]),
    ("duplicate parse, then bind", False, [
        pw.Parse(statement="s1", query="select 2"),
        pw.Bind(portal="", statement="s1", parameter_formats=(), parameters=(b"5",),
                result_formats=()),
        pw.Execute(portal="", max_rows=0)]),
    ("describe elsewhere", True, [pw.Describe(kind="S", name="s1")]),
    ("bind elsewhere", True, [pw.Bind(portal="", statement="s1", parameter_formats=(),
                                      parameters=(b"41",), result_formats=()),
                              pw.Execute(portal="", max_rows=0)]),
    ("close", False, [pw.Close(kind="S", name="s1")]),
    ("bind after close", True, [pw.Bind(portal="", statement="s1", parameter_formats=(),
                                        parameters=(b"1",), result_formats=()),
                                pw.Execute(portal="", max_rows=0)]),
    ("parse again", False, [pw.Parse(statement="s1", query="select 'two'::text as two")]),
    ("bind again elsewhere", True, [pw.Bind(portal="", statement="s1", parameter_formats=(),
                                            parameters=(), result_formats=()),
                                    pw.Execute(portal="", max_rows=0)]),
    ("duplicate parse again", False, [pw.Parse(statement="s1", query="select 3")]),
]


def _run_named_script(client: RawClient,
                      elsewhere: Callable[[int], contextlib.AbstractContextManager[None]]
                      ) -> dict[str, list[tuple[Any, ...]]]:
    answers = {}
    for what, move, messages in NAMED_SCRIPT:
        if move:
            pid = int(client.scalar("select pg_backend_pid()"))
            with elsewhere(pid):
                answers[what] = _batch(client, *messages)
        else:
            answers[what] = _batch(client, *messages)
    return answers


def test_named_statements_like_postgresql(start_pool: StartPool,
                                          live_db: PostgresCluster) -> None:
    """Parse, a duplicate Parse (42P05), a lone Describe and a Bind on another
    connection, Close, Parse of the same name again: the client sees exactly
    what it sees talking to PostgreSQL directly."""
    with raw_client((live_db.host, live_db.port), password="unused") as client:
        client.login()
        expected = _run_named_script(client, lambda pid: contextlib.nullcontext())
    assert expected["duplicate parse"][0][:2] == ("E", "42P05")
    assert expected["duplicate parse, then bind"] == expected["duplicate parse"]
    assert expected["bind after close"][0][:2] == ("E", "26000")
    assert ("D", b"42") in expected["bind elsewhere"]
    assert ("D", b"two") in expected["bind again elsewhere"]
    proxy = start_pool(PoolConfig(mode="transaction", max_size=2), PASSWORDS)
    with contextlib.ExitStack() as stack:
        holders = raw_holders(stack, proxy)
        client = stack.enter_context(raw_client(proxy.address))
        client.login()
        assert _run_named_script(client, holders.occupy) == expected
    row = pool_row(proxy)
    assert row["reprepared"] >= 2, row
    assert row["failed_verifications"] == 0, row


def _bind_unnamed(client: RawClient) -> list[tuple[Any, ...]]:
    return _batch(client, pw.Bind(portal="", statement="", parameter_formats=(), parameters=(),
                                  result_formats=()),
                  pw.Execute(portal="", max_rows=0))


def test_unnamed_statement_is_never_another_clients(start_pool: StartPool,
                                                    live_db: PostgresCluster) -> None:
    """B binds the unnamed statement A parsed on the same backend: 26000, not
    A's result (which PostgreSQL itself would give on one connection)."""
    parse = pw.Parse(statement="", query="select 'from A'::text")
    with raw_client((live_db.host, live_db.port), password="unused") as client:
        client.login()
        _batch(client, parse)
        assert ("D", b"from A") in _bind_unnamed(client)  # what a leak would look like
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1), PASSWORDS)
    with raw_client(proxy.address) as a, raw_client(proxy.address) as b:
        a.login()
        b.login()
        a_pid = a.scalar("select pg_backend_pid()")
        assert _batch(a, parse) == [("ParseComplete",), ("Z", "I")]
        answer = _bind_unnamed(b)
        assert answer[0][:2] == ("E", "26000"), answer
        assert not any(item[0] == "D" for item in answer), answer
        assert b.scalar("select pg_backend_pid()") == a_pid


def test_unnamed_statement_follows_its_client(start_pool: StartPool,
                                              live_db: PostgresCluster) -> None:
    """A and B each parse an unnamed statement on the one backend; each binds
    and describes its own."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1), PASSWORDS)
    with raw_client(proxy.address) as a, raw_client(proxy.address) as b:
        a.login()
        b.login()
        _batch(a, pw.Parse(statement="", query="select 'A'::text as from_a"))
        _batch(b, pw.Parse(statement="", query="select 'B'::text as from_b"))
        assert ("D", b"A") in _bind_unnamed(a)
        assert ("D", b"B") in _bind_unnamed(b)
        assert ("T", "from_a") in _batch(a, pw.Describe(kind="S", name=""))
        assert ("D", b"B") in _bind_unnamed(b)
    assert pool_row(proxy)["reprepared"] >= 3


# ---------------------------------------------------------------------------
# waiting, failing logins


def test_checkout_timeout(start_pool: StartPool, live_db: PostgresCluster) -> None:
    """No free connection within checkout_timeout: FATAL 53300, at login and later."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1, checkout_timeout=1),
                       PASSWORDS)
    with connect(proxy) as holder, connect(proxy) as later:
        holder.execute("begin")
        holder_pid = who(holder)[2]
        with raw_client(proxy.address) as newcomer:
            newcomer.conn.start()
            newcomer.flush()
            events = newcomer.rest_of_stream()
        errors = [e for e in events if isinstance(e, pw.ErrorResponse)]
        assert [(e.severity, e.code) for e in errors] == [("FATAL", "53300")], events
        with pytest.raises(psycopg.OperationalError) as info:
            later.execute("select 1")
        assert info.value.sqlstate == "53300", info.value
        assert who(holder)[2] == holder_pid
        holder.execute("commit")
    with connect(proxy) as conn:
        assert who(conn)[2] == holder_pid
    row = pool_row(proxy)
    assert row["checkout_timeouts"] == 2, row


def test_login_failure(start_pool: StartPool, live_db: PostgresCluster) -> None:
    """The proxy knows a password the server does not: the client gets the
    server's FATAL 28P01; the next good client still works."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1), PASSWORDS)
    with raw_client(proxy.address, BADPW) as client:
        client.conn.start()
        client.flush()
        events = client.rest_of_stream()
    errors = [e for e in events if isinstance(e, pw.ErrorResponse)]
    assert [(e.severity, e.code) for e in errors] == [("FATAL", "28P01")], events
    assert errors[0].message == f'password authentication failed for user "{BADPW}"'
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(proxy, BADPW)
    row = pool_row(proxy, BADPW)
    assert row["login_failures"] == 2 and row["servers_idle"] == 0, row
    with connect(proxy) as conn:
        assert who(conn)[:2] == (LOGIN, LOGIN)


# ---------------------------------------------------------------------------
# verification, health checks, lifetimes, idle connections


@pytest.mark.parametrize("before", [
    pytest.param("", id="fresh"),
    # nextval() is sequence state, reset (not pinned) by default: the pool
    # resets and verifies A's connection between A's two transactions.
    pytest.param("select nextval('pool_live_seq')", id="after-a-reset"),
])
@pytest.mark.parametrize("function", sorted(ROLE_FUNCTIONS))
def test_verification_catches_role_change_in_function(start_pool: StartPool,
                                                      live_db: PostgresCluster,
                                                      function: str, before: str) -> None:
    """A function body changes the role where the SQL analysis cannot see it:
    the next client's verification finds it and the connection is closed."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1), PASSWORDS)
    with connect(proxy) as a, connect(proxy) as b:
        a_pid = who(a)[2]
        assert who(b)[2] == a_pid
        if before:
            a.execute(before)
        assert scalar(a, f"select pool_live_{function}()") == OTHER
        assert who(a) == (OTHER, LOGIN, a_pid)  # A's own doing, on A's connection
        current, session, b_pid = who(b)
        assert (current, session) == (LOGIN, LOGIN)
        assert b_pid != a_pid
    row = pool_row(proxy)
    assert row["failed_verifications"] >= 1, row
    assert row["servers_closed"] >= 1 and row["servers_opened"] == 2, row
    assert a_pid not in pool_pids(proxy)


def test_health_check_verifies_idle_connection(start_pool: StartPool,
                                               live_db: PostgresCluster) -> None:
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1, health_check_after=0.5),
                       PASSWORDS)
    with connect(proxy) as conn:
        pid = who(conn)[2]
        before = pool_row(proxy)["verifications"]
        time.sleep(0.6)  # idle past health_check_after
        assert who(conn) == (LOGIN, LOGIN, pid)
        row = pool_row(proxy)
        assert row["verifications"] == before + 1, row
        assert row["failed_verifications"] == 0, row


def test_terminated_idle_server_is_replaced(start_pool: StartPool, live_db: PostgresCluster,
                                            direct: Conn) -> None:
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1), PASSWORDS)
    with connect(proxy) as conn:
        pid = who(conn)[2]
        assert scalar(direct, "select pg_terminate_backend(%s)", (pid,)) is True
        wait_until(lambda: pid not in pool_pids(proxy), "the pool to drop the dead connection")
        current, session, new_pid = who(conn)
        assert (current, session) == (LOGIN, LOGIN) and new_pid != pid
    row = pool_row(proxy)
    assert row["servers_closed"] == 1 and row["servers_opened"] == 2, row
    assert proxy.proxy.stats.upstream_errors >= 1


def test_terminated_busy_server(start_pool: StartPool, live_db: PostgresCluster,
                                direct: Conn) -> None:
    """The backend of a client's open transaction is terminated: that client
    loses its session, as it would talking to PostgreSQL; the next gets a new one."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1, checkout_timeout=10),
                       PASSWORDS)
    with connect(proxy) as a:
        a.execute("begin")
        pid = who(a)[2]
        assert scalar(direct, "select pg_terminate_backend(%s)", (pid,)) is True
        with pytest.raises(psycopg.OperationalError):
            a.execute("select 1")
        assert a.closed
    with connect(proxy) as b:
        current, session, b_pid = who(b)
        assert (current, session) == (LOGIN, LOGIN) and b_pid != pid
    row = pool_row(proxy)
    assert row["servers_closed"] == 1 and row["servers_opened"] == 2, row


def test_server_lifetime(start_pool: StartPool, live_db: PostgresCluster) -> None:
    """A connection older than server_lifetime is closed when it comes back
    (maintenance, which would close it while idle, is kept out of the way)."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1, server_lifetime=0.5,
                                  maintenance_interval=60), PASSWORDS)
    with connect(proxy) as conn:
        pid = who(conn)[2]
        time.sleep(0.6)  # older than server_lifetime
        assert who(conn)[:2] == (LOGIN, LOGIN)
        wait_until(lambda: pool_row(proxy)["servers_closed"] >= 1,
                   "the pool to close the old connection")
        assert pid not in pool_pids(proxy)
        assert who(conn)[2] != pid
    assert pool_row(proxy)["servers_opened"] >= 2


def test_min_idle(start_pool: StartPool, live_db: PostgresCluster) -> None:
    """After the first client the pool keeps min_idle connections idle."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=3, min_idle=2,
                                  maintenance_interval=0.2), PASSWORDS)
    with connect(proxy) as conn:
        assert who(conn)[:2] == (LOGIN, LOGIN)
        wait_until(lambda: pool_row(proxy)["servers_idle"] == 2, "two idle connections")
        assert pool_row(proxy)["servers_opened"] == 2
        conn.execute("begin")
        wait_until(lambda: pool_row(proxy)["servers_idle"] == 2,
                   "two idle connections besides the busy one")
        row = pool_row(proxy)
        assert (row["servers_active"], row["servers_opened"]) == (1, 3), row
        conn.execute("commit")


# ---------------------------------------------------------------------------
# what the client sees: parameters, cancels


def test_parameter_status(start_pool: StartPool, live_db: PostgresCluster) -> None:
    """A client sees the values it asked for at login, also on a connection
    another client opened; clients with other startup values never share one."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1), PASSWORDS)
    x_options = {"application_name": "pool_live_x", "options": "-c DateStyle=SQL,DMY"}
    with connect(proxy, **x_options) as x, connect(proxy, application_name="pool_live_y") as y:
        assert x.info.parameter_status("application_name") == "pool_live_x"
        assert x.info.parameter_status("DateStyle") == "SQL, DMY"
        assert y.info.parameter_status("application_name") == "pool_live_y"
        assert y.info.parameter_status("DateStyle") == "ISO, MDY"
        x_pid, y_pid = who(x)[2], who(y)[2]
        assert x_pid != y_pid
        assert scalar(x, "select application_name from pg_stat_activity "
                         "where pid = pg_backend_pid()") == "pool_live_x"
        assert scalar(x, "select '2024-03-01'::date::text") == "01/03/2024"
        with connect(proxy, **x_options) as again:
            assert who(again)[2] == x_pid
            assert again.info.parameter_status("application_name") == "pool_live_x"
            assert again.info.parameter_status("DateStyle") == "SQL, DMY"
    pool = proxy.proxy.pool
    assert pool is not None
    assert len(pool.stats()) == 2


def _sleeping(direct: Conn, tag: str) -> int | None:
    """The pid of the backend running the pg_sleep tagged ``tag``, if one is."""
    row = direct.execute("select pid from pg_stat_activity where state = 'active' "
                         "and query like %s", (f"%/* {tag} */%",)).fetchone()
    return None if row is None else int(row[0])


def test_cancel_in_transaction_mode(start_pool: StartPool, live_db: PostgresCluster,
                                    direct: Conn) -> None:
    """A cancel reaches the backend running the client's statement, not the other one."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=2), PASSWORDS)
    options = {"options": "-c statement_timeout=20000"}
    outcomes: dict[str, BaseException | None] = {}

    def sleep(conn: Conn, tag: str) -> None:
        try:
            conn.execute(f"select pg_sleep(30) /* {tag} */")
            outcomes[tag] = None
        except BaseException as exc:  # handed to the test's thread
            outcomes[tag] = exc

    def sleeping(tag: str) -> int | None:
        return _sleeping(direct, tag)

    with connect(proxy, **options) as a, connect(proxy, **options) as b:
        threads = {tag: threading.Thread(target=sleep, args=(conn, tag), daemon=True)
                   for tag, conn in (("A", a), ("B", b))}
        for thread in threads.values():
            thread.start()
        wait_until(lambda: sleeping("A") is not None and sleeping("B") is not None,
                   "both clients to sleep")
        b_pid = sleeping("B")
        a.cancel_safe(timeout=TIMEOUT)
        threads["A"].join(TIMEOUT)
        assert isinstance(outcomes["A"], psycopg.errors.QueryCanceled), outcomes
        assert outcomes["A"].sqlstate == "57014"
        assert sleeping("B") == b_pid and "B" not in outcomes
        b.cancel_safe(timeout=TIMEOUT)
        threads["B"].join(TIMEOUT)
        assert isinstance(outcomes["B"], psycopg.errors.QueryCanceled), outcomes
        assert scalar(a, "select 'still usable'") == "still usable"
    assert proxy.proxy.stats.cancel_requests == 2


def test_cancel_between_transactions_reaches_nothing(start_pool: StartPool,
                                                     live_db: PostgresCluster,
                                                     direct: Conn) -> None:
    """A's last transaction ran on the connection B now uses: a cancel from A,
    which has nothing running, must not stop B's statement."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1), PASSWORDS)
    options = {"options": "-c statement_timeout=20000"}
    outcome: list[BaseException | None] = []

    def b_sleeps(conn: Conn) -> None:
        try:
            conn.execute("select pg_sleep(30) /* B after A */")
            outcome.append(None)
        except BaseException as exc:  # handed to the test's thread
            outcome.append(exc)

    with connect(proxy, **options) as a, connect(proxy, **options) as b:
        a_pid = who(a)[2]
        thread = threading.Thread(target=b_sleeps, args=(b,), daemon=True)
        thread.start()
        wait_until(lambda: _sleeping(direct, "B after A") == a_pid, "B to sleep on A's backend")
        a.cancel_safe(timeout=TIMEOUT)
        # A cancel sent on would land within moments: give it as long as a
        # statement of the server's own takes, then B must still be asleep.
        direct.execute("select pg_sleep(0.3)")
        assert _sleeping(direct, "B after A") == a_pid and not outcome
        b.cancel_safe(timeout=TIMEOUT)
        thread.join(TIMEOUT)
        assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.QueryCanceled)
        assert scalar(b, "select 'still usable'") == "still usable"
    assert proxy.proxy.stats.cancel_requests == 2


def test_client_vanishes_mid_statement(start_pool: StartPool, live_db: PostgresCluster,
                                       direct: Conn) -> None:
    """The client hangs up while its statement runs: that connection is never
    handed out again; the next client gets a fresh one."""
    proxy = start_pool(PoolConfig(mode="transaction", max_size=1), PASSWORDS)
    with raw_client(proxy.address) as a:
        a.login()
        pid = int(a.scalar("select pg_backend_pid()"))
        a.send(pw.Query(query="select pg_sleep(30) /* vanishing */"))
        wait_until(lambda: _sleeping(direct, "vanishing") == pid, "the statement to run")
        a.abort()
    try:
        wait_until(lambda: pid not in pool_pids(proxy), "the pool to drop the connection")
        with connect(proxy) as b:
            current, session, b_pid = who(b)
            assert (current, session) == (LOGIN, LOGIN) and b_pid != pid
    finally:
        direct.execute("select pg_terminate_backend(%s)", (pid,))
    row = pool_row(proxy)
    assert row["servers_closed"] == 1 and row["servers_opened"] == 2, row

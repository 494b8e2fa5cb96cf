"""Real clients through pgwire's proxy to a real PostgreSQL, on every adapter.

psql, pgbench, psycopg 3, asyncpg and pg8000 connect to a proxy started with
:func:`pgwire.testing.proxy.running_proxy` (asyncio, trio and blocking
adapters) in front of the ``pg_cluster`` fixture, and do real work: COPY both
ways, prepared statements, pipelines, LISTEN/NOTIFY, cancels, large results,
failed transactions. Then the logins: passthrough of the server's SCRAM,
logins the proxy checks itself (SCRAM, MD5, auth query), TLS on both legs.
Last the faults: the server ends the backend mid-query, the client hangs up
mid-COPY, the client sends garbage; each must end with the right error and
no session left behind in the proxy.

The ``pg_cluster`` fixture trusts every TCP login, which would hide what the
proxy does with passwords. So this module creates a database of its own and
puts one line for it at the top of the cluster's pg_hba.conf: every login to
``pgwire_proxy`` over TCP needs SCRAM-SHA-256, the superuser's too. Other
databases (and so other tests) are untouched; the line goes away at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pg8000.native
import psycopg
import psycopg.errors
import pytest
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

import pgwire as pw
from pgwire.auth import scram_sha_256_secret
from pgwire.proxy import AuthQuery, ProxyAuth, ProxyConfig, UpstreamTLS
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.pki import CertificateAuthority
from pgwire.testing.proxy import ADAPTERS, AdapterName, RunningProxy, running_proxy
from pgwire.tls import load_certificate_der, server_context

from .proxy_wire import TIMEOUT, RawClient, wait_until

# No single test may hang the run: a proxy that never answers fails here.
pytestmark = pytest.mark.timeout(60)

DB = "pgwire_proxy"
ROLE = "pgwire_proxy_role"  # exists in PostgreSQL, with ROLE_PASSWORD
ROLE_PASSWORD = "r0le-secret"
PROXY_USER = "proxy_only_alice"  # known to the proxy only (ProxyAuth.users)
PROXY_PASSWORD = "alice-s3cret"
NO_PASSFILE = str(Path(__file__).with_name("no-such-pgpass"))
HBA_LINE = f"host {DB} all 127.0.0.1/32 scram-sha-256  # pgwire proxy tests\n"


# ---------------------------------------------------------------------------
# the cluster, the proxy, the clients


@pytest.fixture(scope="module")
def pg(pg_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """``pg_cluster`` with database DB, role ROLE, and SCRAM required for DB."""
    hba = pg_cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    pg_cluster.sql(f"drop database if exists {DB} with (force)")
    pg_cluster.sql(f"drop role if exists {ROLE}")
    pg_cluster.sql(f"create database {DB}")
    pg_cluster.sql(f"create role {ROLE} login password '{ROLE_PASSWORD}'")
    pg_cluster.sql(f"grant all on schema public to {ROLE}", dbname=DB)
    hba.write_text(HBA_LINE + original)  # rewriting in place keeps owner and mode
    try:
        pg_cluster.sql("select pg_reload_conf()")
        wait_until(lambda: _refused_without_password(pg_cluster),
                   "the server to ask for passwords after reloading pg_hba.conf")
        yield pg_cluster
    finally:
        hba.write_text(original)
        pg_cluster.sql("select pg_reload_conf()")
        pg_cluster.sql(f"drop database if exists {DB} with (force)")
        pg_cluster.sql(f"drop role if exists {ROLE}")


def _refused_without_password(cluster: PostgresCluster) -> bool:
    try:
        psycopg.connect(**cluster.connect_kwargs(dbname=DB, password="", passfile=NO_PASSFILE,
                                                 sslmode="disable", connect_timeout=10)).close()
    except psycopg.OperationalError:
        return True
    return False


@pytest.fixture(scope="module")
def proxy_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """A CA of the proxy's own, so a client that verifies it knows whom it talks to."""
    return CertificateAuthority.create(tmp_path_factory.mktemp("proxy-pki"),
                                       "pgwire proxy test CA")


@pytest.fixture(scope="module")
def proxy_cert(proxy_ca: CertificateAuthority) -> tuple[Path, Path]:
    return proxy_ca.issue_server_certificate("proxy")


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> AdapterName:
    name: AdapterName = request.param
    return name


StartProxy = Callable[..., RunningProxy]


@pytest.fixture
def start_proxy(adapter: AdapterName, pg: PostgresCluster) -> Iterator[StartProxy]:
    """Start a proxy in front of ``pg`` with ProxyConfig keywords; at the end of the
    test every one of its sessions must be gone and nothing may have failed inside."""
    with contextlib.ExitStack() as stack:
        started: list[RunningProxy] = []

        def start(**config: Any) -> RunningProxy:
            running = stack.enter_context(running_proxy(
                ProxyConfig(upstream=(pg.host, pg.port), **config), adapter=adapter))
            started.append(running)
            return running

        yield start
        for running in started:
            assert_drained(running)
            assert running.proxy.stats.internal_errors == 0


def assert_drained(running: RunningProxy) -> None:
    """Every session of the proxy ends soon (the clients are gone)."""
    wait_until(lambda: len(running.proxy) == 0,
               f"the proxy to forget its sessions: {list(running.proxy.sessions)}")


def libpq(pg: PostgresCluster, proxy: RunningProxy, user: str | None = None,
          **extra: Any) -> dict[str, Any]:
    """libpq keywords for a login through the proxy (superuser by default)."""
    options = {"sslmode": "disable", "gssencmode": "disable", "connect_timeout": 10,
               "passfile": NO_PASSFILE, **extra}
    return pg.connect_kwargs(user, dbname=DB, host=proxy.host, port=proxy.port, **options)


def connect(pg: PostgresCluster, proxy: RunningProxy, user: str | None = None,
            autocommit: bool = True, **extra: Any) -> psycopg.Connection[Any]:
    # The server stops a statement after 20 s: a cancel that never arrives shows
    # as "statement timeout", not as a hang.
    extra.setdefault("options", "-c statement_timeout=20000")
    return psycopg.connect(**libpq(pg, proxy, user, **extra), autocommit=autocommit)


def direct(pg: PostgresCluster) -> psycopg.Connection[Any]:
    """A superuser connection straight to PostgreSQL, bypassing the proxy."""
    return psycopg.connect(**pg.connect_kwargs(dbname=DB, sslmode="disable", connect_timeout=10,
                                               passfile=NO_PASSFILE), autocommit=True)


def backend_state(conn: psycopg.Connection[Any], pid: int) -> tuple[str, str] | None:
    row = conn.execute("select state, query from pg_stat_activity where pid = %s",
                       (pid,)).fetchone()
    return None if row is None else (row[0], row[1])


def wait_sleeping(conn: psycopg.Connection[Any], pid: int) -> None:
    """Wait until backend ``pid`` runs a pg_sleep."""
    def sleeping() -> bool:
        state = backend_state(conn, pid)
        return state is not None and state[0] == "active" and "pg_sleep" in state[1]
    wait_until(sleeping, f"backend {pid} to run pg_sleep")


def wait_backend_gone(conn: psycopg.Connection[Any], pid: int) -> None:
    wait_until(lambda: backend_state(conn, pid) is None, f"backend {pid} to exit")


def in_thread(work: Callable[[], None]) -> Callable[[], None]:
    """Start ``work`` in a thread; the returned join re-raises what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> None:
        thread.join(TIMEOUT * 2)
        assert not thread.is_alive(), "the helper thread did not finish"
        if errors:
            raise errors[0]
    return join


def program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not on PATH: install the PostgreSQL client programs "
                    "(e.g. apt-get install postgresql-client)")
    return found


def client_env(password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env |= {"PGPASSWORD": password, "PGPASSFILE": NO_PASSFILE, "PGSSLMODE": "disable",
            "PGGSSENCMODE": "disable", "PGCONNECT_TIMEOUT": "10", "PGCLIENTENCODING": "UTF8"}
    return env


def conninfo(params: dict[str, Any]) -> str:
    def quote(value: object) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return " ".join(f"{key}={quote(value)}" for key, value in params.items())


def run(argv: list[str], env: dict[str, str], timeout: float = 30
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, encoding="utf-8", env=env,
                          timeout=timeout, check=False)


def asyncpg_kwargs(pg: PostgresCluster, proxy: RunningProxy, user: str | None = None,
                   password: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"host": proxy.host, "port": proxy.port, "user": user or pg.superuser,
            "password": password if user else pg.superuser_password, "database": DB,
            "ssl": False, "timeout": TIMEOUT, "passfile": NO_PASSFILE,
            "server_settings": {"statement_timeout": "20000"}, **extra}


# ---------------------------------------------------------------------------
# psql and pgbench


def test_psql_command(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    proxy = start_proxy()
    params = libpq(pg, proxy)
    result = run([program("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1",
                  "-c", "select current_user, current_database(), 6 * 7",
                  conninfo({k: v for k, v in params.items() if k != "password"})],
                 client_env(pg.superuser_password))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{pg.superuser}|{DB}|42\n"


def test_psql_script_with_copy_both_ways(start_proxy: StartProxy, pg: PostgresCluster,
                                         tmp_path: Path) -> None:
    proxy = start_proxy()
    rows = [f'{i},"name {i}, with ""quotes"" and ü",{"" if i % 7 else "x"}'
            for i in range(1, 2001)]
    source = tmp_path / "in.csv"
    source.write_text("\n".join(rows) + "\n", encoding="utf-8")
    target = tmp_path / "out.csv"
    script = tmp_path / "script.sql"
    script.write_text(
        "create temp table t (id int primary key, name text, flag text);\n"
        f"\\copy t from '{source}' with (format csv)\n"
        "select count(*), sum(id), count(flag) from t;\n"
        f"\\copy (select * from t order by id) to '{target}' with (format csv)\n"
        "select 'done';\n", encoding="utf-8")
    params = {k: v for k, v in libpq(pg, proxy).items() if k != "password"}
    result = run([program("psql"), "-X", "-At", "-q", "-v", "ON_ERROR_STOP=1",
                  "-f", str(script), conninfo(params)], client_env(pg.superuser_password))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"2000|{2000 * 2001 // 2}|{2000 // 7}\ndone\n"
    assert target.read_text(encoding="utf-8") == source.read_text(encoding="utf-8")


def test_pgbench(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    proxy = start_proxy()
    base = [program("pgbench"), "-h", proxy.host, "-p", str(proxy.port), "-U", pg.superuser]
    env = client_env(pg.superuser_password)
    init = run([*base, "-i", "-s", "1", "-q", DB], env, timeout=60)
    assert init.returncode == 0, init.stderr
    failures = []
    for mode in ("simple", "extended", "prepared"):
        result = run([*base, "-n", "-t", "50", "-c", "4", "-M", mode, DB], env, timeout=60)
        if result.returncode != 0 or (
            "number of transactions actually processed: 200/200" not in result.stdout
        ):
            failures.append(f"-M {mode}: exit {result.returncode}\n{result.stdout}"
                            f"{result.stderr}")
    assert not failures, "\n".join(failures)
    with direct(pg) as conn:
        history = conn.execute("select count(*) from pgbench_history").fetchone()
    assert history == (600,)


# ---------------------------------------------------------------------------
# psycopg


def test_psycopg_queries_and_pipeline(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    proxy = start_proxy()
    with connect(pg, proxy) as conn:
        row = conn.execute(
            "select %s::int + 1, %s::text, %s::text is null, %s::bytea, %s::jsonb, "
            "current_database(), session_user",
            (41, "Zoë 宮本", None, b"\x00\xff", Jsonb({"a": [1, 2]})),
        ).fetchone()
        assert row == (42, "Zoë 宮本", True, b"\x00\xff", {"a": [1, 2]}, DB, pg.superuser)
        conn.execute("create temp table p (id int, name text)")
        with conn.cursor() as cur:
            cur.executemany("insert into p values (%s, %s)", [(i, f"n{i}") for i in range(200)])
        with conn.pipeline() as pipeline:
            first = conn.execute("select count(*) from p")
            second = conn.execute("select max(id) from p where name like %s", ("n1%",))
            pipeline.sync()
            third = conn.execute("select 'after sync'")
        assert first.fetchone() == (200,)
        assert second.fetchone() == (199,)
        assert third.fetchone() == ("after sync",)
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("do $$ begin raise notice 'hello through the proxy'; end $$")
        assert notices == ["hello through the proxy"]


def test_psycopg_server_side_prepared_statements(start_proxy: StartProxy,
                                                 pg: PostgresCluster) -> None:
    proxy = start_proxy()
    with connect(pg, proxy) as conn:
        query = "select %s::int * 2, 'prepared'"
        for i in range(5):
            assert conn.execute(query, (i,), prepare=True).fetchone() == (i * 2, "prepared")
        statements = conn.execute(
            "select name, statement from pg_prepared_statements").fetchall()
        assert len(statements) == 1, statements
        name, text = statements[0]
        assert name.startswith("_pg3_") and "* 2, 'prepared'" in text
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1 / %s::int", (0,), prepare=True)
        assert conn.execute(query, (21,), prepare=True).fetchone() == (42, "prepared")


def test_psycopg_copy_both_ways(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    proxy = start_proxy()
    rows = [(i, f"row {i}\twith tab, ü", None if i % 3 else b"\x00\x01") for i in range(10_000)]
    with connect(pg, proxy) as conn, conn.cursor() as cur:
        cur.execute("create temp table c (id int, name text, data bytea)")
        with cur.copy("copy c (id, name, data) from stdin") as copy:
            for row in rows:
                copy.write_row(row)
        assert cur.execute("select count(*), sum(id) from c").fetchone() == (
            10_000, sum(range(10_000)))
        with cur.copy("copy (select id, name, data from c order by id) to stdout") as copy:
            copy.set_types(["int4", "text", "bytea"])
            back = list(copy.rows())
        assert back == rows
        # Binary COPY, and an error inside a COPY FROM that the server raises.
        with cur.copy("copy (select id from c where id < 5 order by id) to stdout "
                      "(format binary)") as copy:
            copy.set_types(["int4"])
            assert list(copy.rows()) == [(i,) for i in range(5)]
        with pytest.raises(psycopg.errors.InvalidTextRepresentation), cur.copy(
            "copy c (id) from stdin"
        ) as copy:
            copy.write("1\nnot a number\n")
        assert cur.execute("select count(*) from c").fetchone() == (10_000,)


def test_psycopg_listen_notify(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    proxy = start_proxy()
    with connect(pg, proxy) as listener, connect(pg, proxy) as notifier:
        listener.execute("listen pgwire_channel")
        listener_pid = listener.execute("select pg_backend_pid()").fetchone()
        notifier.execute("select pg_notify('pgwire_channel', 'payload ü')")
        notifier.execute("notify pgwire_channel, 'second'")
        received = list(listener.notifies(timeout=TIMEOUT, stop_after=2))
        assert [(n.channel, n.payload) for n in received] == [
            ("pgwire_channel", "payload ü"), ("pgwire_channel", "second")]
        # The sender's process id is the server's own (the proxy does not hide it).
        notifier_pid = notifier.execute("select pg_backend_pid()").fetchone()
        assert listener_pid is not None and notifier_pid is not None
        assert {n.pid for n in received} == {notifier_pid[0]}


def test_psycopg_cancel(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    """``conn.cancel()`` (libpq's PQcancel) from another thread, in a child process:
    see proxy_cancel_client.py for why."""
    proxy = start_proxy()
    through_proxy = conninfo(libpq(pg, proxy, options="-c statement_timeout=20000"))
    direct_dsn = conninfo(pg.connect_kwargs(dbname=DB, sslmode="disable", connect_timeout=10,
                                            passfile=NO_PASSFILE))
    child = run([sys.executable, str(Path(__file__).with_name("proxy_cancel_client.py")),
                 through_proxy, direct_dsn], dict(os.environ), timeout=40)
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result == {"error": {"type": "QueryCanceled", "sqlstate": "57014",
                                "message": "canceling statement due to user request"},
                      "problems": [], "after": "still usable"}
    assert proxy.proxy.stats.cancel_requests == 1


def test_psycopg_cancel_safe(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    proxy = start_proxy()
    with connect(pg, proxy) as conn, direct(pg) as watcher:
        pid = conn.execute("select pg_backend_pid()").fetchone()
        assert pid is not None

        def cancel_when_sleeping() -> None:
            wait_sleeping(watcher, pid[0])
            conn.cancel_safe(timeout=TIMEOUT)

        join = in_thread(cancel_when_sleeping)
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            conn.execute("select pg_sleep(30)")
        join()
        assert info.value.diag.message_primary == "canceling statement due to user request"
        assert conn.execute("select 'still usable'").fetchone() == ("still usable",)
    assert proxy.proxy.stats.cancel_requests == 1


def test_psycopg_large_result(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    proxy = start_proxy()
    with connect(pg, proxy) as conn:
        rows = conn.execute("select g, repeat('x', g % 100) from generate_series(1, 100000) g"
                            ).fetchall()
        assert len(rows) == 100_000
        assert rows[-1] == (100_000, "")
        assert sum(r[0] for r in rows) == 100_000 * 100_001 // 2
        assert sum(len(r[1]) for r in rows) == 1000 * sum(range(100))
        # and a server-side cursor over the same rows
        with conn.transaction(), conn.cursor(name="big") as cur:
            cur.itersize = 7000
            cur.execute("select g from generate_series(1, 100000) g")
            assert sum(r[0] for r in cur) == 100_000 * 100_001 // 2


def status(conn: psycopg.Connection[Any]) -> TransactionStatus:
    return conn.info.transaction_status


def test_psycopg_error_in_transaction(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    proxy = start_proxy()
    with connect(pg, proxy, autocommit=False) as conn:
        conn.execute("create temp table e (id int primary key)")
        conn.execute("insert into e values (1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("insert into e values (1)")
        assert status(conn) is TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert status(conn) is TransactionStatus.IDLE
        assert conn.execute("select 'good'").fetchone() == ("good",)
        conn.commit()


# ---------------------------------------------------------------------------
# asyncpg


def test_asyncpg_queries_and_prepared(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    proxy = start_proxy()

    async def main() -> None:
        conn = await asyncpg.connect(**asyncpg_kwargs(pg, proxy))
        try:
            assert await conn.fetchval("select $1::int + $2::int", 40, 2, timeout=TIMEOUT) == 42
            row = await conn.fetchrow("select $1::text as t, $2::bytea as b, $3::int as n",
                                      "Zoë", b"\x00", None, timeout=TIMEOUT)
            assert row is not None and tuple(row) == ("Zoë", b"\x00", None)
            statement = await conn.prepare("select $1::int * 3", timeout=TIMEOUT)
            assert [await statement.fetchval(i, timeout=TIMEOUT) for i in range(4)] == [
                0, 3, 6, 9]
            await conn.execute("create temp table a (id int primary key, v text)")
            await conn.executemany("insert into a values ($1, $2)",
                                   [(i, str(i)) for i in range(100)], timeout=TIMEOUT)
            assert await conn.fetchval("select count(*) from a") == 100
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute("insert into a values (200, 'x')")
                    await conn.execute("insert into a values (1, 'dup')")
            assert await conn.fetchval("select count(*) from a", timeout=TIMEOUT) == 100
            async with conn.transaction():
                cursor_rows = [r[0] async for r in conn.cursor(
                    "select id from a order by id", prefetch=30)]
            assert cursor_rows == list(range(100))
        finally:
            await conn.close(timeout=TIMEOUT)

    asyncio.run(main())


def test_asyncpg_copy(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    proxy = start_proxy()
    records = [(i, f"record {i}", i % 5 == 0) for i in range(10_000)]

    async def main() -> bytes:
        conn = await asyncpg.connect(**asyncpg_kwargs(pg, proxy))
        try:
            await conn.execute("create temp table r (id int, name text, flag bool)")
            status = await conn.copy_records_to_table("r", records=records, timeout=TIMEOUT)
            assert status == "COPY 10000"
            assert await conn.fetchval("select sum(id) from r") == sum(range(10_000))
            output = io.BytesIO()
            status = await conn.copy_from_query(
                "select id, name, flag from r order by id", output=output, format="csv",
                timeout=TIMEOUT)
            assert status == "COPY 10000"
            return output.getvalue()
        finally:
            await conn.close(timeout=TIMEOUT)

    data = asyncio.run(main())
    expected = "".join(f"{i},record {i},{'t' if i % 5 == 0 else 'f'}\n" for i in range(10_000))
    assert data.decode() == expected


def test_asyncpg_cancel_on_timeout(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    proxy = start_proxy()

    async def main() -> None:
        conn = await asyncpg.connect(**asyncpg_kwargs(pg, proxy))
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.fetchval("select pg_sleep(30)"), 0.5)
            # A cancel that did not arrive leaves pg_sleep running: this times out.
            assert await conn.fetchval("select 'usable'", timeout=TIMEOUT) == "usable"
        finally:
            await conn.close(timeout=TIMEOUT)

    asyncio.run(main())
    assert proxy.proxy.stats.cancel_requests == 1


# ---------------------------------------------------------------------------
# pg8000


def test_pg8000(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    proxy = start_proxy()
    conn = pg8000.native.Connection(pg.superuser, host=proxy.host, port=proxy.port,
                                    database=DB, password=pg.superuser_password,
                                    timeout=TIMEOUT)
    try:
        assert conn.run("select :a::int + :b::int, :t::text", a=40, b=2, t="Zoë") == [
            [42, "Zoë"]]
        conn.run("create temp table g (id int primary key)")
        conn.run("begin")
        conn.run("insert into g values (:id)", id=1)
        with pytest.raises(pg8000.native.DatabaseError) as info:
            conn.run("select 1 / :zero::int", zero=0)
        assert info.value.args[0]["C"] == "22012"
        with pytest.raises(pg8000.native.DatabaseError) as info:
            conn.run("select 1")
        assert info.value.args[0]["C"] == "25P02"
        conn.run("rollback")
        assert conn.run("select count(*) from g") == [[0]]
        statement = conn.prepare("select :x::int * 2")
        assert [statement.run(x=i)[0][0] for i in range(3)] == [0, 2, 4]
        statement.close()
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# logins


def asyncpg_login_error(**kwargs: Any) -> asyncpg.PostgresError:
    async def main() -> asyncpg.PostgresError:
        try:
            conn = await asyncpg.connect(**kwargs)
        except asyncpg.PostgresError as exc:
            return exc
        await conn.close()
        pytest.fail("asyncpg logged in")
    return asyncio.run(main())


def pg8000_login_error(**kwargs: Any) -> dict[str, str]:
    with pytest.raises(pg8000.native.DatabaseError) as info:
        pg8000.native.Connection(**kwargs, timeout=TIMEOUT).close()
    fields: dict[str, str] = info.value.args[0]
    return fields


def test_passthrough_relays_the_servers_scram(start_proxy: StartProxy,
                                              pg: PostgresCluster) -> None:
    proxy = start_proxy()
    # require_auth: libpq refuses the login unless the server asked for SCRAM.
    with connect(pg, proxy, ROLE, password=ROLE_PASSWORD, require_auth="scram-sha-256"
                 ) as conn:
        assert conn.execute("select current_user, session_user").fetchone() == (ROLE, ROLE)
        assert conn.pgconn.used_password
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(pg, proxy, ROLE, password="wrong")
    error = asyncpg_login_error(**asyncpg_kwargs(pg, proxy, ROLE, "wrong"))
    assert error.sqlstate == "28P01"
    fields = pg8000_login_error(user=ROLE, host=proxy.host, port=proxy.port, database=DB,
                                password="wrong")
    assert fields["C"] == "28P01"
    assert f'password authentication failed for user "{ROLE}"' in fields["M"]

    async def asyncpg_login() -> object:
        conn = await asyncpg.connect(**asyncpg_kwargs(pg, proxy, ROLE, ROLE_PASSWORD))
        try:
            return await conn.fetchval("select current_user", timeout=TIMEOUT)
        finally:
            await conn.close(timeout=TIMEOUT)

    assert asyncio.run(asyncpg_login()) == ROLE


@pytest.mark.parametrize("secret", ["scram", "plaintext"])
def test_proxy_auth_scram_with_shared_upstream_user(start_proxy: StartProxy,
                                                    pg: PostgresCluster, secret: str) -> None:
    stored = scram_sha_256_secret(PROXY_PASSWORD) if secret == "scram" else PROXY_PASSWORD
    proxy = start_proxy(auth=ProxyAuth(
        method="scram-sha-256", users={PROXY_USER: stored}, upstream_user=pg.superuser,
        upstream_password=pg.superuser_password))
    with connect(pg, proxy, PROXY_USER, password=PROXY_PASSWORD,
                 require_auth="scram-sha-256") as conn:
        # The client is alice to the proxy; upstream every client is the superuser.
        assert conn.execute("select session_user, current_database()").fetchone() == (
            pg.superuser, DB)
    with pytest.raises(psycopg.OperationalError,
                       match=f'password authentication failed for user "{PROXY_USER}"'):
        connect(pg, proxy, PROXY_USER, password="wrong")
    error = asyncpg_login_error(**asyncpg_kwargs(pg, proxy, PROXY_USER, "wrong"))
    assert error.sqlstate == "28P01"
    # An unknown user gets the same answer as a wrong password.
    error = asyncpg_login_error(**asyncpg_kwargs(pg, proxy, "nobody_here", PROXY_PASSWORD))
    assert error.sqlstate == "28P01"
    assert 'password authentication failed for user "nobody_here"' in str(error)
    fields = pg8000_login_error(user="nobody_here", host=proxy.host, port=proxy.port,
                                database=DB, password="x")
    assert fields["C"] == "28P01"
    assert proxy.proxy.stats.login_failures == 4


def test_proxy_auth_md5_logs_in_upstream_as_the_same_user(start_proxy: StartProxy,
                                                         pg: PostgresCluster) -> None:
    proxy = start_proxy(auth=ProxyAuth(method="md5", users={ROLE: ROLE_PASSWORD}))
    with connect(pg, proxy, ROLE, password=ROLE_PASSWORD, require_auth="md5") as conn:
        assert conn.execute("select session_user").fetchone() == (ROLE,)
    fields = pg8000_login_error(user=ROLE, host=proxy.host, port=proxy.port, database=DB,
                                password="wrong")
    assert fields["C"] == "28P01"
    error = asyncpg_login_error(**asyncpg_kwargs(pg, proxy, "nobody_here", "x"))
    assert error.sqlstate == "28P01"


def test_auth_query(start_proxy: StartProxy, pg: PostgresCluster) -> None:
    # The query finds no row if the client's settings reached its connection.
    query = ("SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1 "
             "AND current_setting('search_path') NOT LIKE '%client_path%' "
             "AND current_setting('application_name') <> 'client-app'")
    proxy = start_proxy(auth=ProxyAuth(method="scram-sha-256", auth_query=AuthQuery(
        user=pg.superuser, password=pg.superuser_password, database=DB, query=query)))
    with connect(pg, proxy, ROLE, password=ROLE_PASSWORD, require_auth="scram-sha-256",
                 options="-c search_path=client_path", application_name="client-app"
                 ) as conn:
        # Upstream as the client's own role, with the keys its SCRAM login gave.
        assert conn.execute("select session_user, current_setting('search_path'), "
                            "current_setting('application_name')").fetchone() == (
            ROLE, "client_path", "client-app")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(pg, proxy, ROLE, password="wrong")
    error = asyncpg_login_error(**asyncpg_kwargs(pg, proxy, "nobody_here", "x"))
    assert error.sqlstate == "28P01"
    assert proxy.proxy.stats.auth_query_failures == 0


def tls_proxy_auth_config(pg: PostgresCluster, proxy_cert: tuple[Path, Path]
                          ) -> dict[str, Any]:
    """SCRAM on both legs, TLS on both legs, the server's certificate checked."""
    return {
        "auth": ProxyAuth(method="scram-sha-256", users={PROXY_USER: PROXY_PASSWORD},
                          upstream_user=pg.superuser, upstream_password=pg.superuser_password),
        "client_tls": server_context(*proxy_cert),
        "client_tls_certificate": load_certificate_der(proxy_cert[0]),
        "require_client_tls": True,
        "upstream_tls": UpstreamTLS(sslmode="verify-full", sslrootcert=str(pg.ca_cert),
                                    server_hostname="localhost"),
    }


def test_tls_both_legs_with_proxy_auth(start_proxy: StartProxy, pg: PostgresCluster,
                                       proxy_ca: CertificateAuthority,
                                       proxy_cert: tuple[Path, Path]) -> None:
    proxy = start_proxy(**tls_proxy_auth_config(pg, proxy_cert))
    tls: dict[str, Any] = {"sslmode": "verify-full", "sslrootcert": str(proxy_ca.certificate)}
    # channel_binding=require: SCRAM-SHA-256-PLUS, bound to the proxy's certificate.
    with connect(pg, proxy, PROXY_USER, password=PROXY_PASSWORD, channel_binding="require",
                 require_auth="scram-sha-256", **tls) as conn:
        assert conn.pgconn.ssl_in_use
        # The server sees a TLS connection from the proxy, logged in as the superuser
        # (pg_hba.conf lets it in to DB by SCRAM only).
        assert conn.execute("select ssl, session_user from pg_stat_ssl "
                            "join pg_stat_activity using (pid) where pid = pg_backend_pid()"
                            ).fetchone() == (True, pg.superuser)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(pg, proxy, PROXY_USER, password="wrong", **tls)
    with pytest.raises(psycopg.OperationalError, match="requires TLS"):
        connect(pg, proxy, PROXY_USER, password=PROXY_PASSWORD, sslmode="disable")

    async def asyncpg_login() -> object:
        context = ssl.create_default_context(cafile=str(proxy_ca.certificate))
        conn = await asyncpg.connect(**asyncpg_kwargs(pg, proxy, PROXY_USER, PROXY_PASSWORD,
                                                      ssl=context))
        try:
            return await conn.fetchval("select ssl from pg_stat_ssl "
                                       "where pid = pg_backend_pid()", timeout=TIMEOUT)
        finally:
            await conn.close(timeout=TIMEOUT)

    assert asyncio.run(asyncpg_login()) is True


def test_cancel_over_tls(start_proxy: StartProxy, pg: PostgresCluster,
                         proxy_ca: CertificateAuthority, proxy_cert: tuple[Path, Path]) -> None:
    """libpq 17+'s cancel API (cancel_safe) encrypts the CancelRequest like the session.

    It waits for the peer to close the cancel connection, and takes an end of
    the TLS stream without close_notify as a failure, as OpenSSL 3 does:
    PostgreSQL sends close_notify, so must the proxy."""
    proxy = start_proxy(**tls_proxy_auth_config(pg, proxy_cert))
    with connect(pg, proxy, PROXY_USER, password=PROXY_PASSWORD, sslmode="verify-full",
                 sslrootcert=str(proxy_ca.certificate)) as conn, direct(pg) as watcher:
        pid = conn.execute("select pg_backend_pid()").fetchone()
        assert pid is not None

        def cancel_when_sleeping() -> None:
            wait_sleeping(watcher, pid[0])
            conn.cancel_safe(timeout=TIMEOUT)

        join = in_thread(cancel_when_sleeping)
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(30)")
        join()
        assert conn.execute("select 'still usable'").fetchone() == ("still usable",)
    assert proxy.proxy.stats.cancel_requests == 1


def test_tls_both_legs_passthrough(start_proxy: StartProxy, pg: PostgresCluster,
                                   proxy_ca: CertificateAuthority,
                                   proxy_cert: tuple[Path, Path]) -> None:
    proxy = start_proxy(
        client_tls=server_context(*proxy_cert),
        upstream_tls=UpstreamTLS(sslmode="verify-full", sslrootcert=str(pg.ca_cert),
                                 server_hostname="127.0.0.1"))
    # Channel binding cannot cross the proxy (see pgwire.proxy.Passthrough).
    with connect(pg, proxy, ROLE, password=ROLE_PASSWORD, sslmode="verify-full",
                 sslrootcert=str(proxy_ca.certificate), channel_binding="disable",
                 require_auth="scram-sha-256") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()"
                            ).fetchone() == (True,)


def test_upstream_certificate_for_another_host_is_refused(start_proxy: StartProxy,
                                                          pg: PostgresCluster) -> None:
    proxy = start_proxy(upstream_tls=UpstreamTLS(
        sslmode="verify-full", sslrootcert=str(pg.ca_cert), server_hostname="db.example.com"))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(pg, proxy)


# ---------------------------------------------------------------------------
# faults


def raw_client(pg: PostgresCluster, proxy: RunningProxy) -> RawClient:
    return RawClient(proxy.address, user=pg.superuser, database=DB,
                     password=pg.superuser_password, sslmode="disable")


def test_upstream_terminated_mid_query_raw(start_proxy: StartProxy,
                                           pg: PostgresCluster) -> None:
    proxy = start_proxy()
    with raw_client(pg, proxy) as client, direct(pg) as killer:
        client.login()
        pid = int(client.scalar("select pg_backend_pid()"))
        client.send(pw.Query(query="select pg_sleep(30)"))
        wait_sleeping(killer, pid)
        assert killer.execute("select pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        events = client.rest_of_stream()
        errors = [e for e in events if isinstance(e, pw.ErrorResponse)]
        assert [(e.severity, e.code) for e in errors] == [("FATAL", "57P01")], events
        assert errors[0].message == "terminating connection due to administrator command"
        assert isinstance(events[-1], pw.ConnectionClosed)
        assert_drained(proxy)


def test_upstream_terminated_mid_query_psycopg(start_proxy: StartProxy,
                                               pg: PostgresCluster) -> None:
    proxy = start_proxy()
    with connect(pg, proxy) as conn, direct(pg) as killer:
        pid = conn.execute("select pg_backend_pid()").fetchone()
        assert pid is not None

        def terminate() -> None:
            wait_sleeping(killer, pid[0])
            killer.execute("select pg_terminate_backend(%s)", pid)

        join = in_thread(terminate)
        with pytest.raises(psycopg.errors.AdminShutdown):
            conn.execute("select pg_sleep(30)")
        join()
        assert conn.closed
    assert_drained(proxy)


@pytest.mark.parametrize("hang_up", ["close", "reset"])
def test_client_hangs_up_mid_copy_from(start_proxy: StartProxy, pg: PostgresCluster,
                                       hang_up: str) -> None:
    proxy = start_proxy()
    table = f"copy_hangup_{hang_up}"
    with direct(pg) as watcher:
        watcher.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(table)))
        watcher.execute(sql.SQL("create table {} (id int)").format(sql.Identifier(table)))
        client = raw_client(pg, proxy)
        client.login()
        pid = int(client.scalar("select pg_backend_pid()"))
        client.send(pw.Query(query=f"copy {table} from stdin"))
        events = client.events_until(lambda e: isinstance(e, pw.CopyInResponse))
        assert isinstance(events[-1], pw.CopyInResponse), events
        client.send(*(pw.CopyData(data=f"{i}\n".encode()) for i in range(1000)))
        if hang_up == "reset":
            client.abort()
        else:
            client.sock.close()
        wait_backend_gone(watcher, pid)
        count = watcher.execute(sql.SQL("select count(*) from {}").format(
            sql.Identifier(table))).fetchone()
        assert count == (0,)
        watcher.execute(sql.SQL("drop table {}").format(sql.Identifier(table)))
    assert_drained(proxy)


GARBAGE = {
    "unknown-type": b"!\x00\x00\x00\x08abcd",
    "short-length": b"Q\x00\x00\x00\x02",
    "startup-again": pw.StartupMessage.from_dict({"user": "x"}).encode(),
    "zero-type-zero-length": bytes(8),
}


@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
def test_garbage_after_login(start_proxy: StartProxy, pg: PostgresCluster,
                             garbage: str) -> None:
    proxy = start_proxy()
    with raw_client(pg, proxy) as client, direct(pg) as watcher:
        client.login()
        pid = int(client.scalar("select pg_backend_pid()"))
        client.send_bytes(GARBAGE[garbage])
        events = client.rest_of_stream()
        errors = [e for e in events if isinstance(e, pw.ErrorResponse)]
        assert [(e.severity, e.code) for e in errors] == [("FATAL", "08P01")], events
        assert isinstance(events[-1], pw.ConnectionClosed)
        wait_backend_gone(watcher, pid)
    assert proxy.proxy.stats.client_protocol_errors == 1
    assert_drained(proxy)


def test_connection_refused_upstream(adapter: AdapterName, pg: PostgresCluster) -> None:
    """A proxy whose server is not there answers 08006 at once, without hanging."""
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]  # bound, not listening: connections fail
        config = ProxyConfig(upstream=("127.0.0.1", port), connect_timeout=5)
        with running_proxy(config, adapter=adapter) as proxy:
            with raw_client(pg, proxy) as client:
                client.conn.start()
                client.flush()
                events = client.rest_of_stream()
            errors = [e for e in events if isinstance(e, pw.ErrorResponse)]
            assert [(e.severity, e.code) for e in errors] == [("FATAL", "08006")], events
            assert_drained(proxy)

"""Real clients through the whole role chain, on every adapter.

Each test starts a proxy whose chain is the one docs/roles.md recommends,
``[Audit(JsonLinesSink(file)), RoleRewrite(), RoleGuard("drop_only", graph=...)]``,
in front of the shared test cluster, and drives it with a real client:

- asyncpg: its named prepared statements, ``set_config('role', $1, false)``
  with the role as a parameter (checked by the guard at each Bind), a
  refusal inside ``async with conn.transaction()`` (checked against what a
  direct connection finds committed), ``executemany`` after a refusal and
  with a refusal in the middle of its batch;
- pg8000, native and DB-API: unnamed statements with parameters (and the
  native interface's named ones), the same allowed and refused pair, a
  refusal inside a transaction then COMMIT (the server answers ROLLBACK);
- psql: a script file (``-f``) with ``ON_ERROR_STOP`` off, mixing allowed
  and refused role changes, ``\\gset`` and ``\\echo``;
- pgbench: ``-S`` in the simple and the prepared protocol side by side, no
  failed transaction (and, marked slow, a script that drops to the group
  and back in every transaction).

Two smaller asyncpg tests (asyncio adapter only: what they check is the
middleware's, not the adapter's) pin the audit's ``effective_role`` down: a
bound role change inside a transaction block, and the completion of a role
change in the simple and in the extended protocol.

After the proxy has shut down (which flushes the audit), the audit file
must verify with :func:`pgwire.audit.verify_chain`, hold a ``role_decision``
with ``allowed: false`` for each refusal, and its completion records must
name the effective role the server itself reported at that moment.

Roles (prefix ``rc5_``, unique to this module; the cluster trusts them):
``rc5_app`` LOGIN, a member of ``rc5_grp`` (NOLOGIN, the role it may drop
to) and of ``rc5_boss`` (NOLOGIN SUPERUSER, which drop_only must refuse).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pg8000.dbapi
import pg8000.native
import psycopg
import pytest

from pgwire.audit import JsonLinesSink, verify_chain
from pgwire.middleware import Middleware
from pgwire.middleware.audit import Audit
from pgwire.middleware.rewrite import RoleRewrite
from pgwire.middleware.roles import RoleGuard
from pgwire.proxy import ProxyConfig
from pgwire.roles._graph import RoleGraphSource
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import ADAPTERS, AdapterName, RunningProxy, running_proxy

TIMEOUT = 15
APP = "rc5_app"
GRP = "rc5_grp"
BOSS = "rc5_boss"
TABLE = "rc5_items"
BENCH_DB = "rc5_bench"
DENIED = f'permission denied to set role "{BOSS}"'
SUPERUSER_REASON = f'role "{BOSS}" has SUPERUSER, which "{APP}" does not have'
HINT = "pgwire role guard, policy drop_only"
WHO = "select current_user"
SET_CONFIG = "select set_config('role', $1, false)"

SETUP = f"""
    CREATE ROLE {GRP} NOLOGIN;
    CREATE ROLE {BOSS} NOLOGIN SUPERUSER;
    CREATE ROLE {APP} LOGIN;
    GRANT {GRP}, {BOSS} TO {APP};
    CREATE TABLE {TABLE} (client text NOT NULL, n int NOT NULL);
    GRANT ALL ON {TABLE} TO {GRP};
"""
TEARDOWN = f"""
    DROP TABLE IF EXISTS {TABLE};
    DROP DATABASE IF EXISTS {BENCH_DB};
    DROP ROLE IF EXISTS {APP};
    DROP ROLE IF EXISTS {BOSS};
    DROP ROLE IF EXISTS {GRP};
"""

adapters = pytest.mark.parametrize("adapter", ADAPTERS)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph(pg_cluster: PostgresCluster) -> Iterator[RoleGraphSource]:
    """The role hierarchy, and the role graph loaded after it was made."""
    pg_cluster.sql(TEARDOWN)
    pg_cluster.sql(SETUP)
    source = RoleGraphSource((pg_cluster.host, pg_cluster.port), pg_cluster.superuser,
                             password=pg_cluster.superuser_password)
    loaded = source.load()
    assert loaded.drop_only(APP, GRP)[0]
    assert loaded.drop_only(APP, BOSS) == (False, SUPERUSER_REASON)
    yield source
    pg_cluster.sql(TEARDOWN)


@contextlib.contextmanager
def chained_proxy(pg: PostgresCluster, graph: RoleGraphSource, audit_path: Path,
                  adapter: AdapterName) -> Iterator[RunningProxy]:
    """A proxy with the whole role chain; leaving it shuts down and flushes the audit."""
    chain: list[Middleware[Any]] = [Audit(JsonLinesSink(audit_path)), RoleRewrite(),
                                    RoleGuard("drop_only", graph=graph)]
    config = ProxyConfig(upstream=(pg.host, pg.port), middleware=chain)
    with running_proxy(config, adapter=adapter) as proxy:
        yield proxy


def committed_rows(pg: PostgresCluster, client: str) -> list[int]:
    """What a direct connection to the cluster (not through the proxy) finds committed."""
    with psycopg.connect(**pg.connect_kwargs(sslmode="disable"), autocommit=True) as conn:
        rows = conn.execute(f"SELECT n FROM {TABLE} WHERE client = %s ORDER BY n",
                            [client]).fetchall()
    return [n for (n,) in rows]


# -- the audit file ------------------------------------------------------------------------


def audit_records(path: Path) -> list[dict[str, Any]]:
    """The records of a file the (stopped) proxy wrote, once its chain verified."""
    result = verify_chain(path)
    assert result.ok, f"{path}: line {result.bad_line}: {result.reason}"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert result.records == len(records) > 0
    return records


def refused_targets(records: list[dict[str, Any]]) -> list[str | None]:
    refused = [r for r in records if r["event"] == "role_decision" and not r["allowed"]]
    for record in refused:
        assert (record["policy"], record["reason"]) == ("drop_only", SUPERUSER_REASON)
        assert record["startup_user"] == record["upstream_role"] == APP
    return [r["target"] for r in refused]


def roles_at(records: list[dict[str, Any]], sql: str) -> list[str | None]:
    """``effective_role`` of each completion of ``sql``, in order."""
    return [r["effective_role"] for r in records
            if r["event"] == "complete" and r["sql"] == sql]


def check_audit(path: Path, *, refused: list[str | None], sql: str,
                seen: list[str]) -> list[dict[str, Any]]:
    """The audit verifies, records each refusal, and each completion of ``sql``
    names the role the server reported for it (``seen``)."""
    records = audit_records(path)
    assert refused_targets(records) == refused
    recorded = roles_at(records, sql)
    assert recorded == seen, (
        f"completions of {sql!r}: the audit's effective_role {recorded} differs from "
        f"current_user as the server reported it {seen}")
    assert GRP in seen  # an allowed switch was made and recorded
    disconnects = [r for r in records if r["event"] == "disconnect"]
    assert len(disconnects) == 1
    assert all(r["status"] != "unfinished" for r in records if r["event"] == "complete")
    return records


# -- asyncpg -------------------------------------------------------------------------------


@adapters
def test_asyncpg(pg_cluster: PostgresCluster, graph: RoleGraphSource, tmp_path: Path,
                 adapter: AdapterName) -> None:
    marker = f"asyncpg-{adapter}"
    path = tmp_path / "audit.jsonl"
    seen: list[str] = []
    refusals: list[asyncpg.PostgresError] = []

    async def who(conn: asyncpg.Connection) -> str:
        value = await conn.fetchval(WHO)
        assert isinstance(value, str)
        seen.append(value)
        return value

    async def refused(coroutine: Any) -> None:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as info:
            await coroutine
        refusals.append(info.value)

    async def main(proxy: RunningProxy) -> None:
        conn = await asyncpg.connect(host=proxy.host, port=proxy.port, user=APP,
                                     database="postgres", ssl=False, timeout=TIMEOUT)
        try:
            assert await who(conn) == APP
            # A named prepared statement, the role bound as its parameter.
            assert await conn.fetchval(SET_CONFIG, GRP) == GRP
            assert await who(conn) == GRP
            # The same statement (asyncpg reuses its name: Bind and Execute only).
            await refused(conn.fetchval(SET_CONFIG, BOSS))
            assert await who(conn) == GRP
            await conn.execute("RESET ROLE")
            assert await who(conn) == APP

            # A refused SET ROLE (simple protocol) inside a transaction block,
            # caught, and the block left normally: asyncpg sends COMMIT, which
            # must not commit the row the client was told nothing about.
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, 1)", marker)
                await refused(conn.execute(f"SET ROLE {BOSS}"))
                with pytest.raises(asyncpg.InFailedSQLTransactionError):
                    await conn.fetchval("select 1")
            assert committed_rows(pg_cluster, marker) == []
            assert await who(conn) == APP

            # A refusal at Bind inside a block, propagating: asyncpg rolls back.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, 2)", marker)
                    assert await conn.fetchval(SET_CONFIG, GRP) == GRP
                    await conn.fetchval(SET_CONFIG, BOSS)
            assert committed_rows(pg_cluster, marker) == []
            assert await who(conn) == APP  # the block's SET rolled back with it

            # executemany right after a refusal works.
            await conn.executemany(f"INSERT INTO {TABLE} VALUES ($1, $2)",
                                   [(marker, n) for n in range(10, 15)])
            assert committed_rows(pg_cluster, marker) == [10, 11, 12, 13, 14]
            # executemany whose batch switches to the group, then is refused:
            # one implicit transaction, so the switch is undone with it.
            await refused(conn.executemany(SET_CONFIG, [(GRP,), (BOSS,), (GRP,)]))
            assert await who(conn) == APP
            await conn.executemany(SET_CONFIG, [(GRP,)])
            assert await who(conn) == GRP
            assert await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE client = $1",
                                       marker) == 5
        finally:
            await conn.close()

    with chained_proxy(pg_cluster, graph, path, adapter) as proxy:
        asyncio.run(main(proxy))

    for error in refusals:
        assert error.sqlstate == "42501"
        assert error.message == DENIED
        assert error.detail == SUPERUSER_REASON
        assert error.hint == HINT
    assert len(refusals) == 3
    # Four refusals recorded: the one at Bind inside the second block too.
    check_audit(path, refused=[BOSS] * 4, sql=WHO, seen=seen)


def run_asyncpg(pg: PostgresCluster, graph: RoleGraphSource, path: Path,
                script: Any) -> None:
    """Run ``script(conn)`` on an asyncpg connection through the chain (asyncio adapter)."""
    async def main(proxy: RunningProxy) -> None:
        conn = await asyncpg.connect(host=proxy.host, port=proxy.port, user=APP,
                                     database="postgres", ssl=False, timeout=TIMEOUT)
        try:
            await script(conn)
        finally:
            await conn.close()

    with chained_proxy(pg, graph, path, "asyncio") as proxy:
        asyncio.run(main(proxy))


def test_bound_role_change_inside_a_block_is_audited(pg_cluster: PostgresCluster,
                                                     graph: RoleGraphSource,
                                                     tmp_path: Path) -> None:
    """Statements after ``set_config('role', $1, false)`` in a transaction block
    ran as the group: their completion records must say so, not only after
    the block ends (when the tracker's verification query catches up)."""
    marker = "asyncpg-bound-in-block"
    path = tmp_path / "audit.jsonl"
    seen: list[str] = []

    async def script(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            assert await conn.fetchval(SET_CONFIG, GRP) == GRP
            seen.append(await conn.fetchval(WHO))
            await conn.execute(f"INSERT INTO {TABLE} VALUES ($1, 1)", marker)
        seen.append(await conn.fetchval(WHO))

    run_asyncpg(pg_cluster, graph, path, script)
    assert seen == [GRP, GRP]
    assert committed_rows(pg_cluster, marker) == [1]
    records = audit_records(path)
    inserted = f"INSERT INTO {TABLE} VALUES ($1, 1)"
    assert (roles_at(records, WHO), roles_at(records, inserted)) == (seen, [GRP])


def test_role_change_completions_agree_across_protocols(pg_cluster: PostgresCluster,
                                                        graph: RoleGraphSource,
                                                        tmp_path: Path) -> None:
    """The same SET ROLE / RESET ROLE, as a simple Query and as a prepared
    statement: each completion record names ``current_user`` at that moment
    (docs/audit.md), so after SET ROLE the group and after RESET ROLE the
    login role, whichever protocol carried it."""
    path = tmp_path / "audit.jsonl"
    seen: list[str] = []

    async def script(conn: asyncpg.Connection) -> None:
        for run in (conn.execute, conn.fetch):  # simple Query, then Parse/Bind/Execute
            await run(f"SET ROLE {GRP}")
            seen.append(await conn.fetchval(WHO))
            await run("RESET ROLE")
            seen.append(await conn.fetchval(WHO))

    run_asyncpg(pg_cluster, graph, path, script)
    assert seen == [GRP, APP, GRP, APP]
    records = audit_records(path)
    kinds = {r["sql"]: r["kind"] for r in records if r["event"] == "complete"}
    assert kinds[f"SET ROLE {GRP}"] == "execute"  # the later one, prepared
    assert roles_at(records, WHO) == seen
    assert roles_at(records, f"SET ROLE {GRP}") == [GRP, GRP]
    assert roles_at(records, "RESET ROLE") == [APP, APP]


# -- pg8000 --------------------------------------------------------------------------------


def pg8000_sqlstate(error: BaseException) -> str:
    fields = error.args[0]
    assert isinstance(fields, dict), error
    return str(fields["C"])


@adapters
def test_pg8000_native(pg_cluster: PostgresCluster, graph: RoleGraphSource, tmp_path: Path,
                       adapter: AdapterName) -> None:
    marker = f"pg8000-native-{adapter}"
    path = tmp_path / "audit.jsonl"
    seen: list[str] = []
    set_config = "select set_config('role', :r, false)"

    with chained_proxy(pg_cluster, graph, path, adapter) as proxy:
        conn = pg8000.native.Connection(APP, host=proxy.host, port=proxy.port,
                                        database="postgres", timeout=TIMEOUT)

        def who() -> str:
            value = conn.run(WHO)[0][0]
            seen.append(value)
            return str(value)

        def refused(sql: str, **params: Any) -> None:
            with pytest.raises(pg8000.native.DatabaseError) as info:
                conn.run(sql, **params)
            fields = info.value.args[0]
            assert (fields["C"], fields["M"], fields["D"], fields["H"]) == (
                "42501", DENIED, SUPERUSER_REASON, HINT)

        try:
            assert who() == APP
            assert conn.run(set_config, r=GRP) == [[GRP]]
            assert who() == GRP
            refused(set_config, r=BOSS)
            assert who() == GRP
            refused(f"SET ROLE {BOSS}")
            assert who() == GRP
            conn.run("RESET ROLE")
            assert who() == APP
            # pg8000's named statements: the value is checked at each Bind.
            statement = conn.prepare(set_config)
            assert statement.run(r=GRP) == [[GRP]]
            assert who() == GRP
            with pytest.raises(pg8000.native.DatabaseError) as info:
                statement.run(r=BOSS)
            assert pg8000_sqlstate(info.value) == "42501"
            assert who() == GRP
            statement.close()
            conn.run("RESET ROLE")
            assert who() == APP

            conn.run("BEGIN")
            conn.run(f"INSERT INTO {TABLE} VALUES (:c, 1)", c=marker)
            refused(set_config, r=BOSS)
            with pytest.raises(pg8000.native.DatabaseError) as info:
                conn.run("select 1")
            assert pg8000_sqlstate(info.value) == "25P02"
            # The server answers COMMIT with ROLLBACK; pg8000 reports that as an
            # error of its own (it does the same without a proxy).
            with pytest.raises(pg8000.native.InterfaceError, match="in failed transaction"):
                conn.run("COMMIT")
            assert committed_rows(pg_cluster, marker) == []
            assert who() == APP
            conn.run(f"INSERT INTO {TABLE} VALUES (:c, 2)", c=marker)
            assert committed_rows(pg_cluster, marker) == [2]
        finally:
            conn.close()

    check_audit(path, refused=[BOSS] * 4, sql=WHO, seen=seen)


@adapters
def test_pg8000_dbapi(pg_cluster: PostgresCluster, graph: RoleGraphSource, tmp_path: Path,
                      adapter: AdapterName) -> None:
    marker = f"pg8000-dbapi-{adapter}"
    path = tmp_path / "audit.jsonl"
    seen: list[str] = []
    set_config = "select set_config('role', %s, false)"

    with chained_proxy(pg_cluster, graph, path, adapter) as proxy:
        conn = pg8000.dbapi.connect(APP, host=proxy.host, port=proxy.port,
                                    database="postgres", timeout=TIMEOUT)
        cursor = conn.cursor()

        def who() -> str:
            cursor.execute(WHO)
            row = cursor.fetchone()
            assert row is not None
            seen.append(row[0])
            return str(row[0])

        def refused(sql: str, *params: Any) -> None:
            with pytest.raises(pg8000.dbapi.DatabaseError) as info:
                cursor.execute(sql, params)
            fields = info.value.args[0]
            assert (fields["C"], fields["M"], fields["D"]) == ("42501", DENIED,
                                                               SUPERUSER_REASON)

        try:
            assert who() == APP
            # The DB-API opens a transaction block: a plain SET in it survives COMMIT.
            cursor.execute(set_config, (GRP,))
            assert cursor.fetchall() == ([GRP],)
            conn.commit()
            assert who() == GRP
            refused(set_config, BOSS)
            conn.rollback()
            assert who() == GRP

            cursor.execute(f"INSERT INTO {TABLE} VALUES (%s, 1)", (marker,))
            refused(set_config, BOSS)
            with pytest.raises(pg8000.dbapi.InterfaceError, match="in failed transaction"):
                conn.commit()  # the server answers ROLLBACK (pg8000 raises, as without a proxy)
            assert committed_rows(pg_cluster, marker) == []
            assert who() == GRP

            # (who() opened that block.) Back to the login role, committed.
            cursor.execute("RESET ROLE")
            conn.commit()
            assert who() == APP
            # A switch made in a block that is then refused is undone with it.
            cursor.execute(set_config, (GRP,))
            assert who() == GRP
            refused(f"SET ROLE {BOSS}")
            conn.rollback()
            assert who() == APP
            cursor.execute(f"INSERT INTO {TABLE} VALUES (%s, 2)", (marker,))
            conn.commit()
            assert committed_rows(pg_cluster, marker) == [2]
        finally:
            conn.close()

    check_audit(path, refused=[BOSS] * 3, sql=WHO, seen=seen)


# -- psql ----------------------------------------------------------------------------------


def program(pg: PostgresCluster, name: str) -> str:
    path = pg.bindir / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is needed (it comes with the PostgreSQL client programs)"
    return found


def client_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    return {**env, "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10", **extra}


PSQL_SCRIPT = f"""\\set ON_ERROR_STOP off
SELECT current_user AS who \\gset
\\echo start :who
SET ROLE {GRP};
SELECT current_user AS who \\gset
\\echo after-set :who
SET ROLE {BOSS};
\\echo after-refused :who
SELECT current_user;
SELECT set_config('role', '{BOSS}', false);
SELECT current_user;
RESET ROLE;
SELECT current_user;
SELECT set_config('role', '{GRP}', false) AS who \\gset
\\echo set-config :who
BEGIN;
INSERT INTO {TABLE} VALUES (:'marker', 1);
SET ROLE {BOSS};
SELECT 1;
COMMIT;
SELECT current_user;
SELECT count(*) FROM {TABLE} WHERE client = :'marker';
"""


@adapters
def test_psql_script(pg_cluster: PostgresCluster, graph: RoleGraphSource, tmp_path: Path,
                     adapter: AdapterName) -> None:
    marker = f"psql-{adapter}"
    script = tmp_path / "roles.sql"
    script.write_text(PSQL_SCRIPT)
    path = tmp_path / "audit.jsonl"
    with chained_proxy(pg_cluster, graph, path, adapter) as proxy:
        result = subprocess.run(
            [program(pg_cluster, "psql"), "-X", "-A", "-t", "-v", f"marker={marker}",
             "-f", str(script),
             f"host={proxy.host} port={proxy.port} user={APP} dbname=postgres"],
            capture_output=True, text=True, timeout=60, env=client_env(), check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"start {APP}",
        "SET",
        f"after-set {GRP}",
        f"after-refused {GRP}",
        GRP,
        GRP,
        "RESET",
        APP,
        f"set-config {GRP}",
        "BEGIN",
        "INSERT 0 1",
        "ROLLBACK",
        GRP,
        "0",
    ]
    errors = [line.split(": ", 1)[1] for line in result.stderr.splitlines()
              if line.startswith(f"psql:{script}:")]
    assert errors == [
        f'ERROR:  {DENIED}',
        f'ERROR:  {DENIED}',
        f'ERROR:  {DENIED}',
        "ERROR:  current transaction is aborted, commands ignored until end of "
        "transaction block",
    ], result.stderr
    assert result.stderr.count(f"DETAIL:  {SUPERUSER_REASON}") == 3
    assert result.stderr.count(f"HINT:  {HINT}") == 3
    assert committed_rows(pg_cluster, marker) == []

    records = audit_records(path)
    assert refused_targets(records) == [BOSS] * 3
    assert roles_at(records, "SELECT current_user;") == [GRP, GRP, APP, GRP]
    assert roles_at(records, "SELECT current_user AS who ") == [APP, GRP]


# -- pgbench -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_database(pg_cluster: PostgresCluster, graph: RoleGraphSource) -> str:
    """pgbench's tables at scale 1, made directly on the cluster, readable by the group."""
    pg_cluster.sql(f"DROP DATABASE IF EXISTS {BENCH_DB}")
    pg_cluster.sql(f"CREATE DATABASE {BENCH_DB}")
    subprocess.run([program(pg_cluster, "pgbench"), "-i", "-s", "1", "-q",
                    "-h", pg_cluster.host, "-p", str(pg_cluster.port),
                    "-U", pg_cluster.superuser, BENCH_DB],
                   env=client_env(PGPASSWORD=pg_cluster.superuser_password),
                   check=True, capture_output=True, timeout=120)
    pg_cluster.sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {GRP}", dbname=BENCH_DB)
    return BENCH_DB


BENCH_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = "
PROCESSED = re.compile(r"number of transactions actually processed: (\d+)\n")
FAILED = re.compile(r"number of failed transactions: (\d+) ")


def run_pgbench(pg: PostgresCluster, proxy: RunningProxy, database: str,
                *arguments: str) -> list[subprocess.Popen[str]]:
    """Start pgbench once per protocol (simple and prepared), side by side."""
    return [subprocess.Popen(
        [program(pg, "pgbench"), "-n", *arguments, "-M", mode, "-h", proxy.host,
         "-p", str(proxy.port), "-U", APP, database],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env())
        for mode in ("simple", "prepared")]


def finished(runs: list[subprocess.Popen[str]]) -> int:
    """Wait for the runs; each must end well with no failed transaction."""
    total = 0
    for run in runs:
        stdout, stderr = run.communicate(timeout=60)
        assert run.returncode == 0, stderr
        processed, failed = PROCESSED.search(stdout), FAILED.search(stdout)
        assert processed is not None and failed is not None, stdout
        assert int(failed.group(1)) == 0, stdout
        assert int(processed.group(1)) > 0, stdout
        total += int(processed.group(1))
    return total


@adapters
def test_pgbench_select_only(pg_cluster: PostgresCluster, graph: RoleGraphSource,
                             bench_database: str, tmp_path: Path,
                             adapter: AdapterName) -> None:
    path = tmp_path / "audit.jsonl"
    with chained_proxy(pg_cluster, graph, path, adapter) as proxy:
        processed = finished(run_pgbench(pg_cluster, proxy, bench_database,
                                         "-S", "-T", "2", "-c", "2"))
    records = audit_records(path)
    assert refused_targets(records) == []
    completions = [r for r in records if r["event"] == "complete"]
    bench = [r for r in completions if r["sql"].startswith(BENCH_SELECT)]
    assert len(bench) == processed
    assert all((r["status"], r["rows"]) == ("ok", 1) for r in bench)
    assert {r["effective_role"] for r in completions} == {APP}
    assert {r["sql"][len(BENCH_SELECT):] for r in bench} >= {"$1;"}


PGBENCH_SCRIPT = f"""\\set aid random(1, 100000)
SET ROLE {GRP};
SELECT current_user;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
RESET ROLE;
"""


@pytest.mark.slow
@adapters
def test_pgbench_switching_roles(pg_cluster: PostgresCluster, graph: RoleGraphSource,
                                 bench_database: str, tmp_path: Path,
                                 adapter: AdapterName) -> None:
    """Every transaction drops to the group, reads as it, and comes back."""
    script = tmp_path / "switch.sql"
    script.write_text(PGBENCH_SCRIPT)
    path = tmp_path / "audit.jsonl"
    with chained_proxy(pg_cluster, graph, path, adapter) as proxy:
        processed = finished(run_pgbench(pg_cluster, proxy, bench_database,
                                         "-f", str(script), "-T", "3", "-c", "4"))
    records = audit_records(path)
    assert refused_targets(records) == []
    completions = [r for r in records if r["event"] == "complete"]
    reads = [r for r in completions if r["sql"].startswith(BENCH_SELECT)]
    assert len(reads) == processed
    assert {r["effective_role"] for r in reads} == {GRP}
    # Each completion names current_user once the statement has run (docs/audit.md).
    assert {r["effective_role"] for r in completions
            if r["sql"].startswith("SET ROLE")} == {GRP}
    assert {r["effective_role"] for r in completions
            if r["sql"].startswith("RESET ROLE")} == {APP}

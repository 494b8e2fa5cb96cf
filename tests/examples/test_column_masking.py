"""examples/column_masking.py through a real proxy, PostgreSQL, psycopg, asyncpg and a
raw protocol client: simple and extended protocol, text and binary, several result
sets, portals described earlier and run in pieces, COPY, and what it cannot catch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import asyncpg
import psycopg
import psycopg.errors
import pytest

import pgwire as pw
from pgwire.middleware import Reject
from pgwire.proxy import ProxyConfig
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import RunningProxy, running_proxy
from tests.interop.proxy_wire import RawClient, load_example

from .programs import running_example, stop

column_masking = load_example("column_masking")
ColumnMasking = column_masking.ColumnMasking

USER = "ex_mask_user"
TABLE = "ex_mask_people"
# id, email, ssn, password_hash, note, work_email (varchar), ssn_number (bigint)
ROWS = [(1, "jane@example.com", "123-45-6789", "hash1", "first", "jd@corp.example", 123456789),
        (2, "bob@example.org", None, "hash2", "second", None, 987654321)]
MASKED = [(1, "j***@example.com", "***-**-6789", None, "first", "j***@corp.example", None),
          (2, "b***@example.org", None, None, "second", None, None)]
SELECT = f"SELECT * FROM {TABLE} ORDER BY id"


@pytest.fixture(scope="module")
def people(pg_cluster: PostgresCluster) -> Iterator[None]:
    with psycopg.connect(**pg_cluster.connect_kwargs(), autocommit=True) as conn:
        conn.execute(f"""
            DROP TABLE IF EXISTS {TABLE};
            DROP ROLE IF EXISTS {USER};
            CREATE ROLE {USER} LOGIN;
            CREATE TABLE {TABLE} (id int, email text, ssn text, password_hash text,
                                  note text, work_email varchar(50), ssn_number bigint);
            GRANT SELECT ON {TABLE} TO {USER};
        """)
        with conn.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s, %s, %s, %s)",
                               ROWS)
    yield
    with psycopg.connect(**pg_cluster.connect_kwargs(), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}; DROP ROLE IF EXISTS {USER}")


def masking() -> Any:
    rules = {**column_masking.DEFAULT_RULES, "ssn*": column_masking.mask_ssn}
    return ColumnMasking(rules, exempt={"postgres"})


@pytest.fixture(scope="module")
def proxy(pg_cluster: PostgresCluster, people: None) -> Iterator[RunningProxy]:
    config = ProxyConfig(upstream=(pg_cluster.host, pg_cluster.port), middleware=[masking()])
    with running_proxy(config) as running:
        yield running


def through(cluster: PostgresCluster, port: int, user: str = USER) -> psycopg.Connection[Any]:
    return psycopg.connect(**cluster.connect_kwargs(user=user, host="127.0.0.1", port=port,
                                                    sslmode="disable"), autocommit=True)


def test_the_masks() -> None:
    assert column_masking.mask_email("jane@example.com") == "j***@example.com"
    assert column_masking.mask_email("no at sign") == "***"
    assert column_masking.mask_ssn("123-45-6789") == "***-**-6789"
    assert column_masking.mask_ssn("12") == "***"


def test_simple_protocol_masks_and_exempt_users_see_everything(
    pg_cluster: PostgresCluster, proxy: RunningProxy,
) -> None:
    with through(pg_cluster, proxy.port) as conn, psycopg.ClientCursor(conn) as cursor:
        assert cursor.execute(SELECT).fetchall() == MASKED
    with through(pg_cluster, proxy.port, pg_cluster.superuser) as conn:
        assert conn.execute(SELECT).fetchall() == ROWS


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_extended_protocol_in_text_and_binary(pg_cluster: PostgresCluster, proxy: RunningProxy,
                                              binary: bool) -> None:
    with through(pg_cluster, proxy.port) as conn:
        cursor = conn.cursor(binary=binary)
        # Masked text columns keep their text in binary format; the bigint becomes NULL.
        assert cursor.execute(SELECT + " LIMIT %s", [10]).fetchall() == MASKED
        assert cursor.execute(f"SELECT * FROM {TABLE} WHERE id = %s", [1],
                              prepare=True).fetchall() == MASKED[:1]
        assert cursor.execute(f"SELECT * FROM {TABLE} WHERE id = %s", [1],
                              prepare=True).fetchall() == MASKED[:1]


def test_every_result_set_of_one_query_is_masked(pg_cluster: PostgresCluster,
                                                 proxy: RunningProxy) -> None:
    with through(pg_cluster, proxy.port) as conn, psycopg.ClientCursor(conn) as cursor:
        cursor.execute(f"SELECT email, note FROM {TABLE} ORDER BY id; SELECT 'x' AS note, "
                       f"ssn FROM {TABLE} ORDER BY id; SELECT 1 AS email")
        assert cursor.fetchall() == [("j***@example.com", "first"),
                                     ("b***@example.org", "second")]
        assert cursor.nextset()
        assert cursor.fetchall() == [("x", "***-**-6789"), ("x", None)]
        assert cursor.nextset()
        assert cursor.fetchall() == [(None,)]      # an int named email: NULL
        assert not cursor.nextset()


def test_asyncpg_describes_statements_and_reads_binary(pg_cluster: PostgresCluster,
                                                       proxy: RunningProxy) -> None:
    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user=USER,
                                     database="postgres", ssl=False)
        try:
            statement = await conn.prepare(SELECT)
            rows = [tuple(r) for r in await statement.fetch()]
            async with conn.transaction():      # a cursor: Execute with a row limit
                rows += [tuple(r) async for r in statement.cursor(prefetch=1)]
            return rows
        finally:
            await conn.close()

    assert asyncio.run(fetch()) == MASKED + MASKED


def raw(pg_cluster: PostgresCluster, proxy: RunningProxy) -> RawClient:
    client = RawClient(proxy.address, user=USER, database="postgres", sslmode="disable")
    client.login()
    return client


def until_ready(client: RawClient) -> list[Any]:
    return client.events_until(lambda e: isinstance(e, pw.ReadyForQuery))


def rows_of(events: list[Any]) -> list[tuple[bytes | None, ...]]:
    return [tuple(None if v is None else bytes(v) for v in e.values)
            for e in events if isinstance(e, pw.DataRow)]


def test_portals_described_earlier_and_run_in_pieces(pg_cluster: PostgresCluster,
                                                     proxy: RunningProxy) -> None:
    query = f"SELECT id, email, ssn_number FROM {TABLE} ORDER BY id"
    with raw(pg_cluster, proxy) as client:
        client.query("BEGIN")            # named portals outlive a Sync inside a block
        # The statement is described (formats unknown there: all text) ...
        client.send(pw.Parse(statement="s", query=query), pw.Describe(kind="S", name="s"),
                    pw.Sync())
        until_ready(client)
        # ... one portal is described in one batch and run, in pieces, in later ones.
        client.send(pw.Bind(portal="p", statement="s", result_formats=(0,)),
                    pw.Describe(kind="P", name="p"), pw.Sync())
        until_ready(client)
        client.send(pw.Execute(portal="p", max_rows=1), pw.Sync())
        first = until_ready(client)
        assert any(isinstance(e, pw.PortalSuspended) for e in first)
        client.send(pw.Execute(portal="p"), pw.Sync())
        rest = until_ready(client)
        assert rows_of(first + rest) == [(b"1", b"j***@example.com", None),
                                         (b"2", b"b***@example.org", None)]
        # A portal never described itself: the statement's Describe and the Bind's
        # formats (binary) tell the proxy which columns travel how.
        client.send(pw.Bind(portal="q", statement="s", result_formats=(1,)),
                    pw.Execute(portal="q"), pw.Sync())
        assert rows_of(until_ready(client)) == [
            ((1).to_bytes(4, "big"), b"j***@example.com", None),
            ((2).to_bytes(4, "big"), b"b***@example.org", None)]
        client.query("COMMIT")


def test_execute_with_no_describe_at_all_is_refused(pg_cluster: PostgresCluster,
                                                    proxy: RunningProxy) -> None:
    with raw(pg_cluster, proxy) as client:
        client.send(pw.Parse(query=f"SELECT email FROM {TABLE}"), pw.Bind(),
                    pw.Execute(), pw.Sync())
        events = until_ready(client)
        errors = [e for e in events if isinstance(e, pw.ErrorResponse)]
        assert [e.code for e in errors] == ["42501"]
        assert rows_of(events) == []
        assert events[-1] == pw.ReadyForQuery(status=pw.TransactionStatus.IDLE)
        assert client.scalar("SELECT 'still usable'") == "still usable"


def test_copy_out_is_refused(pg_cluster: PostgresCluster, proxy: RunningProxy) -> None:
    with through(pg_cluster, proxy.port) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="COPY"), (
            conn.cursor().copy(f"COPY {TABLE} TO STDOUT")
        ) as copy:
            list(copy.rows())
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"COPY (SELECT email FROM {TABLE} WHERE id = %s) TO STDOUT", [1])
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_copy_out_that_slips_through_ends_the_session() -> None:
    # No statement starts a COPY without the word COPY; the server-side backstop is
    # checked directly on the middleware.
    middleware = masking()
    ctx = SimpleNamespace(state=column_masking.MaskState())
    verdict = middleware.on_server_message(ctx, pw.CopyOutResponse(format=0,
                                                                   column_formats=(0,)))
    assert isinstance(verdict, Reject) and verdict.sqlstate == "42501"
    stray = middleware.on_server_message(ctx, pw.DataRow(values=(b"x",)))
    assert isinstance(stray, Reject)


def test_what_a_proxy_cannot_stop(pg_cluster: PostgresCluster, proxy: RunningProxy) -> None:
    # The weaknesses the example's docstring names, kept true by this test.
    with through(pg_cluster, proxy.port) as conn:
        assert conn.execute(f"SELECT email AS x FROM {TABLE} WHERE id = 1").fetchone() == (
            "jane@example.com",)
        assert conn.execute(f"SELECT lower(email) FROM {TABLE} WHERE id = 1").fetchone() == (
            "jane@example.com",)
        assert conn.execute(f"SELECT id FROM {TABLE} WHERE email LIKE 'jane@%'").fetchone() == (
            1,)


def test_it_runs_as_a_program(pg_cluster: PostgresCluster, people: None) -> None:
    upstream = f"{pg_cluster.host}:{pg_cluster.port}"
    with running_example("column_masking", "--upstream", upstream,
                         "--exempt", pg_cluster.superuser) as (process, port):
        with through(pg_cluster, port) as conn:
            assert conn.execute(f"SELECT email, ssn FROM {TABLE} WHERE id = 1").fetchone() == (
                "j***@example.com", "***-**-6789")
        with through(pg_cluster, port, pg_cluster.superuser) as conn:
            assert conn.execute(f"SELECT email FROM {TABLE} WHERE id = 1").fetchone() == (
                "jane@example.com",)
        stdout, stderr = stop(process)
    assert process.returncode == 0, stderr
    assert stdout.strip() == "stopped"

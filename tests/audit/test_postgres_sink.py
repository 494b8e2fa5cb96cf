"""The PostgreSQL sink against a real server: its table, a lost connection, a lost answer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest

from pgwire.audit import AuditQueue, PostgresSink, QueryRecord, quote_identifier
from pgwire.sqlclient import SQLConnection
from pgwire.testing.cluster import PostgresCluster

from .helpers import TIMEOUT

SCHEMA = "audit sink schema"
TABLE = 'audit "odd" records'  # quoted as an identifier, whatever it holds


@pytest.fixture
def target(pg_cluster: PostgresCluster) -> Iterator[str]:
    qualified = f"{quote_identifier(SCHEMA)}.{quote_identifier(TABLE)}"
    pg_cluster.sql(f"DROP SCHEMA IF EXISTS {quote_identifier(SCHEMA)} CASCADE; "
                   f"CREATE SCHEMA {quote_identifier(SCHEMA)}")
    yield qualified
    pg_cluster.sql(f"DROP SCHEMA IF EXISTS {quote_identifier(SCHEMA)} CASCADE")


def sink_for(pg: PostgresCluster, cls: type[PostgresSink] = PostgresSink) -> PostgresSink:
    return cls(f"{pg.host}:{pg.port}", pg.superuser, password=pg.superuser_password,
               schema=SCHEMA, table=TABLE, batch_size=10, flush_interval=0.0)


def record(n: int) -> QueryRecord:
    return QueryRecord(time="2024-05-01T12:00:00.000001Z", session_id=7, request=n,
                       sql=f"select {n} -- 'quoted' \"text\"", startup_user="alice",
                       backend_pid=1234)


def stored(pg: PostgresCluster, qualified: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(**pg.connect_kwargs()) as conn:
        return conn.execute(f"SELECT request, sql, event, startup_user, backend_pid, details, "
                            f"time FROM {qualified} ORDER BY id").fetchall()


def write_all(queue: AuditQueue, numbers: Sequence[int]) -> None:
    for n in numbers:
        queue.put(record(n))
    assert queue.flush(TIMEOUT)


def test_records_land_in_columns_and_details(pg_cluster: PostgresCluster, target: str) -> None:
    queue = AuditQueue(sink_for(pg_cluster))
    write_all(queue, range(1, 26))
    queue.close()
    rows = stored(pg_cluster, target)
    assert [row[0] for row in rows] == list(range(1, 26))
    _, sql, event, user, pid, details, when = rows[0]
    assert (sql, event, user, pid) == ("select 1 -- 'quoted' \"text\"", "query", "alice", 1234)
    assert details == {}  # every field of a query record has a column
    assert when.microsecond == 1 and when.utcoffset().total_seconds() == 0


def test_a_lost_connection_is_reopened_and_nothing_is_lost(pg_cluster: PostgresCluster,
                                                           target: str) -> None:
    queue = AuditQueue(sink_for(pg_cluster), retry_delay=0.01, max_retry_delay=0.02)
    write_all(queue, range(1, 11))
    killed = pg_cluster.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name = 'pgwire audit'")
    assert killed == "1"
    write_all(queue, range(11, 21))
    queue.close()
    assert [row[0] for row in stored(pg_cluster, target)] == list(range(1, 21))
    assert queue.stats.failed_batches >= 1 and queue.stats.lost == 0


class AnswerLost(PostgresSink):
    """The first INSERT commits, then its answer never arrives (the link drops)."""

    lose_next = True

    def _connection(self) -> SQLConnection:
        conn = super()._connection()
        if self.lose_next:
            self.lose_next = False
            query = conn.query

            def commit_then_drop(sql: str, parameters: Sequence[str | None] = ()) -> Any:
                query(sql, parameters)
                raise ConnectionError("the connection dropped before the answer arrived")

            conn.query = commit_then_drop  # type: ignore[method-assign]
        return conn


def test_a_batch_whose_answer_was_lost_is_not_written_twice(pg_cluster: PostgresCluster,
                                                            target: str) -> None:
    queue = AuditQueue(sink_for(pg_cluster, AnswerLost), retry_delay=0.01)
    write_all(queue, range(1, 6))
    queue.close()
    assert queue.stats.failed_batches == 1
    assert [row[0] for row in stored(pg_cluster, target)] == [1, 2, 3, 4, 5]

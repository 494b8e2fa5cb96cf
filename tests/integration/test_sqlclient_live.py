"""pgwire.sqlclient.SQLConnection against PostgreSQL, in the clear and over TLS."""

from __future__ import annotations

import pytest

from pgwire.sqlclient import QueryError, SQLConnection
from pgwire.testing.cluster import PostgresCluster
from pgwire.tls import client_context


@pytest.mark.parametrize("sslmode", ["disable", "prefer", "require"])
def test_logs_in_and_queries(pg_cluster: PostgresCluster, sslmode: str) -> None:
    with SQLConnection.connect((pg_cluster.host, pg_cluster.port), user=pg_cluster.superuser,
                               password=pg_cluster.superuser_password,
                               sslmode=sslmode, timeout=10) as conn:  # type: ignore[arg-type]
        [(ssl,)] = conn.query("select ssl::text from pg_stat_ssl where pid = pg_backend_pid()")
        assert ssl == ("false" if sslmode == "disable" else "true")
        assert conn.query("select $1::int + 1", ["41"]) == [("42",)]


def test_verify_full_checks_the_servers_certificate(pg_cluster: PostgresCluster) -> None:
    context = client_context("verify-full", sslrootcert=pg_cluster.ca_cert)
    with SQLConnection.connect((pg_cluster.host, pg_cluster.port), user=pg_cluster.superuser,
                               password=pg_cluster.superuser_password, sslmode="verify-full",
                               ssl_context=context, server_hostname="localhost") as conn:
        assert conn.execute("select 1; select 2") == [("1",), ("2",)]
        with pytest.raises(QueryError) as error:
            conn.execute("select 1/0")
        assert error.value.sqlstate == "22012"
        assert conn.execute("select 3") == [("3",)]

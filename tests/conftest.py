"""Fixtures shared by the whole test suite."""

from collections.abc import Iterator

import pytest

from pgwire.testing.cluster import PostgresCluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A real PostgreSQL server with TLS, started once per test session.

    Needs the server binaries (see `find_postgres_bindir`); without them every test
    using this fixture fails with the install instructions, it is never skipped.
    """
    with PostgresCluster(ssl=True) as cluster:
        yield cluster

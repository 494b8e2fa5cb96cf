"""Fixtures shared by the whole test suite.

The PostgreSQL cluster comes from pgwire's own pytest plugin
(`pgwire.testing.plugin`, loaded through its ``pytest11`` entry point, so
``pip install -e .[dev]`` is needed): this file only chooses its options.
"""

import pytest

from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.plugin import ClusterOptions

# pytester runs pytest inside the tests of the plugin (tests/testing/). It must
# be listed here, in the top conftest: pytest refuses pytest_plugins elsewhere.
pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("pgwire"):
        raise pytest.UsageError(
            "pgwire's pytest plugin is not registered (it comes with the package's "
            "pytest11 entry point): run pip install -e '.[dev]' (./run does), and do not "
            "pass -p no:pgwire")


@pytest.fixture(scope="session")
def pgwire_cluster_options() -> ClusterOptions:
    """The suite's cluster has TLS (the integration tests use it); trust auth."""
    return ClusterOptions(ssl=True)


@pytest.fixture(scope="session")
def pg_cluster(pgwire_cluster: PostgresCluster) -> PostgresCluster:
    """A real PostgreSQL server with TLS, started once per test session.

    The plugin's ``pgwire_cluster`` under its historical name. Needs the server
    binaries (see `find_postgres_bindir`); without them every test using it
    fails with the install instructions, it is never skipped.
    """
    return pgwire_cluster

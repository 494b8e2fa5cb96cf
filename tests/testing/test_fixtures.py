"""pgwire's own tests on the plugin's fixtures: the suite's cluster (tests/conftest.py
sets its options), a proxy with a middleware of the test's choosing, and a client
that speaks the protocol by hand."""

from __future__ import annotations

import pytest

import pgwire as pw
from pgwire.middleware import Context, Middleware, Reject, Verdict
from pgwire.proxy import ProxyConfig
from pgwire.sqlclient import QueryError
from pgwire.testing.client import FrontendClient
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.plugin import Login
from pgwire.testing.proxy import ADAPTERS, RunningProxy


class NoDrop(Middleware[None]):
    """Refuse any Query or Parse that mentions DROP."""

    client_messages = frozenset({b"Q", b"P"})

    def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        assert isinstance(message, pw.Query | pw.Parse)
        if "drop" in message.query.lower():
            return Reject("42501", "DROP is not allowed through this proxy")
        return None


@pytest.fixture
def pgwire_proxy_config(pgwire_cluster: PostgresCluster) -> ProxyConfig:
    return ProxyConfig(upstream=(pgwire_cluster.host, pgwire_cluster.port), middleware=[NoDrop])


@pytest.fixture
def pgwire_login(pgwire_cluster: PostgresCluster) -> Login:
    return Login(user=pgwire_cluster.superuser, password=pgwire_cluster.superuser_password,
                 parameters={"application_name": "plg_fixtures"})


def test_the_suite_cluster_is_the_plugins(pg_cluster: PostgresCluster,
                                          pgwire_cluster: PostgresCluster) -> None:
    assert pg_cluster is pgwire_cluster
    assert pg_cluster.ca_cert.exists()  # tests/conftest.py asks for TLS


@pytest.mark.parametrize("pgwire_adapter", ADAPTERS, indirect=True)
def test_the_middleware_refuses_drop_on_every_adapter(pgwire_frontend: FrontendClient,
                                                       pgwire_proxy: RunningProxy,
                                                       pgwire_adapter: str) -> None:
    assert pgwire_proxy.adapter == pgwire_adapter
    with pytest.raises(QueryError) as refused:
        pgwire_frontend.execute("drop table if exists plg_nothing")
    assert refused.value.sqlstate == "42501"
    assert pgwire_frontend.execute("show application_name") == [("plg_fixtures",)]


def test_a_pipeline_with_a_refused_parse_skips_to_sync(pgwire_frontend: FrontendClient) -> None:
    unnamed = dict(portal="", statement="", parameter_formats=(), result_formats=())
    pgwire_frontend.send(
        pw.Parse(query="select 1", parameter_types=()), pw.Bind(parameters=(), **unnamed),
        pw.Execute(portal="", max_rows=0), pw.Sync(),
        pw.Parse(query="drop table plg_nothing", parameter_types=()),
        pw.Bind(parameters=(), **unnamed), pw.Execute(portal="", max_rows=0), pw.Sync(),
    )
    first = pgwire_frontend.receive_until_ready()
    second = pgwire_frontend.receive_until_ready()
    assert [type(e).__name__ for e in first] == [
        "ParseComplete", "BindComplete", "DataRow", "CommandComplete", "ReadyForQuery"]
    assert [(type(e).__name__, getattr(e, "code", None)) for e in second] == [
        ("ErrorResponse", "42501"), ("ReadyForQuery", None)]
    assert pgwire_frontend.frontend.pending_syncs == 0
    assert pgwire_frontend.query("select $1::int + 1", ["41"]) == [("42",)]

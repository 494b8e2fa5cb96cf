"""The pytest plugin, run the way its users run it: pytest inside pytest (pytester).

Two inner sessions start a cluster of their own (~3 s each): one uses every
fixture with ``--pgwire-adapter all``, one declares roles with hostile names
behind SCRAM. The other inner sessions never get as far as a cluster.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest

# What the inner sessions use, imported here once: pytester forgets the modules
# an inner session imports, so they would be imported (and rewritten) again each time.
import pgwire.adapters.asyncio
import pgwire.adapters.blocking
import pgwire.adapters.trio
import pgwire.testing.client  # noqa: F401
from pgwire.testing import plugin
from pgwire.testing.proxy import ADAPTERS

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # Without hypothesis's plugin the inner sessions start faster.
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                                        "-q", *args)


def test_the_entry_point_names_the_plugin_module() -> None:
    [entry] = [e for e in entry_points(group="pytest11") if e.name == "pgwire"]
    assert entry.value == "pgwire.testing.plugin"
    assert plugin.ADAPTER_NAMES == ADAPTERS


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    heavy = ("hypothesis", "pglast", "trio", "psycopg", "pgwire.proxy", "pgwire.testing.cluster")
    code = ("import sys, pgwire.testing.plugin, pgwire.testing.harness\n"
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    # The harness needs the proxy (not hypothesis); the plugin alone needs neither.
    assert done.stdout.split() == ["pgwire.proxy"]
    code = ("import sys, pgwire.testing.plugin\n"
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.split() == []


def test_every_fixture_and_all_adapters(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=textwrap.dedent("""
        import pytest
        import pgwire as pw
        from pgwire.testing.client import FrontendClient

        def test_cluster(pgwire_cluster, pgwire_cluster_options):
            assert pgwire_cluster_options.ssl is False and pgwire_cluster_options.auth == "trust"
            assert pgwire_cluster.sql("select 40 + 2") == "42"

        def test_proxy_config(pgwire_proxy_config, pgwire_cluster):
            assert pgwire_proxy_config.upstream == (pgwire_cluster.host, pgwire_cluster.port)

        def test_frontend(pgwire_frontend, pgwire_proxy, pgwire_adapter, pgwire_login):
            assert isinstance(pgwire_frontend, FrontendClient)
            assert pgwire_proxy.adapter == pgwire_adapter
            assert pgwire_frontend.query("select current_user") == [(pgwire_login.user,)]
            pgwire_frontend.send(pw.Query(query="begin"), pw.Query(query="select 1/0"))
            first = pgwire_frontend.receive_until_ready()
            second = pgwire_frontend.receive_until_ready()
            assert first[-1] == pw.ReadyForQuery(status=pw.TransactionStatus.IN_TRANSACTION)
            assert [e.code for e in second if isinstance(e, pw.ErrorResponse)] == ["22012"]
            assert pgwire_frontend.frontend.transaction_status == "E"
            assert pgwire_frontend.execute("rollback") == []
            print("ran on", pgwire_adapter)

        @pytest.mark.parametrize("pgwire_adapter", ["blocking"], indirect=True)
        def test_chosen_adapter(pgwire_proxy):
            assert pgwire_proxy.adapter == "blocking"
    """))
    result = run(pytester, "--pgwire-adapter", "all", "-v", "-v")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*test_frontend?asyncio? PASSED*", "*test_frontend?trio? PASSED*",
                                 "*test_frontend?blocking? PASSED*",
                                 "*test_chosen_adapter?blocking? PASSED*"])


def test_declared_roles_behind_scram(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(textwrap.dedent('''
        import pytest
        from pgwire.testing.plugin import ClusterOptions, Login, Role, quote_identifier

        HOSTILE = 'we"ird; DROP ROLE x --'
        GROUP = "O'Brien \\\\ gr\u00fcppe"

        @pytest.fixture(scope="session")
        def pgwire_cluster_options():
            return ClusterOptions(auth="scram-sha-256", roles={
                HOSTILE: Role(login=True, password="pa'ss\\\\wo\\"rd", member_of=[GROUP],
                              createdb=True, inherit=False),
                GROUP: {"bypassrls": True},
            }, setup_sql=["create table plg_t (x int)", "insert into plg_t values (7)",
                          f"grant select on plg_t to {quote_identifier(HOSTILE)}"])

        @pytest.fixture
        def pgwire_login():
            return Login(user=HOSTILE, password="pa'ss\\\\wo\\"rd")
    '''))
    pytester.makepyfile(test_roles=textwrap.dedent("""
        from conftest import GROUP, HOSTILE

        def test_the_roles_exist_as_declared(pgwire_frontend, pgwire_adapter):
            assert pgwire_adapter == "asyncio"  # the default
            rows = pgwire_frontend.query(
                "select rolname, rolcanlogin, rolcreatedb, rolinherit, rolbypassrls"
                " from pg_roles where rolname = any($1) order by rolname",
                ["{" + ",".join('"' + n.replace('\\\\', '\\\\\\\\').replace('"', '\\\\"') + '"'
                                for n in (HOSTILE, GROUP)) + "}"])
            assert sorted(rows) == sorted([(HOSTILE, "t", "t", "f", "f"),
                                           (GROUP, "f", "f", "t", "t")])
            assert pgwire_frontend.query("select pg_has_role(current_user, $1, 'member')",
                                         [GROUP]) == [("t",)]

        def test_setup_sql_ran_and_scram_logged_in(pgwire_frontend):
            assert pgwire_frontend.execute("select current_user, x from plg_t") == [
                (HOSTILE, "7")]
            assert pgwire_frontend.connection.authentication_method == "scram-sha-256"
    """))
    result = run(pytester)
    result.assert_outcomes(passed=2)


def test_without_server_binaries_a_test_using_the_cluster_fails_with_the_fix(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("""
        [pytest]
        pgwire_cluster_ssl = true
        pgwire_cluster_auth = md5
    """)
    pytester.makepyfile(test_bindir="""
        def test_needs_cluster(pgwire_frontend):
            pass

        def test_needs_no_cluster(pgwire_cluster_options, pgwire_adapter):
            assert pgwire_cluster_options.ssl is True
            assert pgwire_cluster_options.auth == "md5"
            assert pgwire_adapter == "trio"
    """)
    result = run(pytester, "--pgwire-bindir", "/nonexistent/bin", "--pgwire-adapter", "trio")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ClusterUnavailable: /nonexistent/bin does not contain*",
                                 "*apt-get install postgresql*"])


def test_a_wrong_adapter_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_nothing="def test_x(): pass")
    result = run(pytester, "--pgwire-adapter", "twisted")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--pgwire-adapter*invalid choice*twisted*"])


@pytest.mark.parametrize("name", ["", "a\x00b", "x" * 64])
def test_unusable_role_names_are_refused_before_the_server_sees_them(name: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        plugin.role_statements({name: plugin.Role()})


def test_role_statements_quote_names_and_passwords() -> None:
    statements = plugin.role_statements({
        'a"b': plugin.Role(login=True, password="it's \\ here", member_of=["g'1"]),
    })
    assert statements == [
        'CREATE ROLE "a""b" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT '
        "NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1 PASSWORD E'it''s \\\\ here'",
        'GRANT "g\'1" TO "a""b"',
    ]
    with pytest.raises(TypeError, match="list of role names"):
        plugin.role_statements({"a": plugin.Role(member_of="readers")})

"""The role graph (pgwire/roles/_graph.py): hand-built graphs, properties, a real server.

* Hand-built graphs pin the semantics: chains, cycles (hostile data: PostgreSQL
  refuses them), PostgreSQL 16 grants with ``SET FALSE``, superuser logins,
  the *drop only* verdicts and their reasons, the precedence of login defaults.
* Hypothesis checks the graph against a naive fixpoint on random graphs with
  cycles and self-grants, and that nothing loops.
* Against the real PostgreSQL of ``pg_cluster``: a role hierarchy with group
  roles, a SUPERUSER group, a BYPASSRLS role, ``ALTER ROLE ... [IN DATABASE]
  SET role``; every ``can_set_role`` answer is checked by really running
  ``SET ROLE`` as each login, every ``default_role`` by logging in and reading
  ``current_user``. The graph loaded by an unprivileged role equals the
  superuser's.
* RoleGraphSource with real connections: refresh after a change, a failing
  load keeps the last graph, concurrent refreshes load once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import psycopg
import psycopg.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from pgwire.roles._graph import (
    PRIVILEGED_ATTRIBUTES,
    Membership,
    RoleGraph,
    RoleGraphSource,
    RoleInfo,
    RoleSetting,
    load_role_graph,
)
from pgwire.sqlclient import SQLConnection
from pgwire.testing.cluster import PostgresCluster

TIMEOUT = 15.0

# ---------------------------------------------------------------------------
# Hand-built graphs


def test_role_attributes() -> None:
    plain = RoleInfo(name="app", oid=1, login=True)
    assert plain.attributes == frozenset()
    assert plain.inherit is True
    rich = RoleInfo(name="x", oid=2, createrole=True, bypassrls=True, replication=True)
    assert rich.attributes == {"CREATEROLE", "BYPASSRLS", "REPLICATION"}
    assert rich.effective_attributes == rich.attributes
    boss = RoleInfo(name="boss", oid=3, superuser=True)
    assert boss.attributes == {"SUPERUSER"}
    assert boss.effective_attributes == set(PRIVILEGED_ATTRIBUTES)


def test_from_rows_reads_create_role_words() -> None:
    graph = RoleGraph.from_rows(
        [("admin", "SUPERUSER LOGIN NOINHERIT"), "grp", ("app", "login createdb")],
        [("grp", "app"), ("admin", "grp", "ADMIN TRUE, INHERIT FALSE, SET FALSE")],
        [("app", None, "role=grp"), (None, "db", "ROLE=x=y")])
    admin = graph.role("admin")
    assert admin is not None
    assert (admin.superuser, admin.login, admin.inherit, admin.createdb) == (
        True, True, False, False)
    assert graph.role("app") == RoleInfo(name="app", oid=16386, login=True, createdb=True)
    assert graph.role("Grp") is None
    assert graph.memberships == (
        Membership(role="grp", member="app"),
        Membership(role="admin", member="grp", admin_option=True, inherit_option=False,
                   set_option=False))
    assert graph.settings == (RoleSetting(role="app", database=None, name="role", value="grp"),
                              RoleSetting(role=None, database="db", name="role", value="x=y"))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"roles": [("a", "SUPERUSER ROOT")]}, "unknown role option 'ROOT'"),
    ({"roles": ["a"], "memberships": [("a", "b", "SET MAYBE")]}, "grant option 'SET MAYBE'"),
    ({"roles": ["a"], "settings": [("a", None, "role")]}, "not name=value"),
    ({"roles": ["a", "a"]}, "role 'a' appears twice"),
])
def test_from_rows_refuses_nonsense(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoleGraph.from_rows(**kwargs)  # type: ignore[arg-type]


def test_membership_chain() -> None:
    graph = RoleGraph.from_rows(["top", "mid", "low", "app", "other"],
                                [("top", "mid"), ("mid", "low"), ("low", "app")])
    assert graph.can_set_role("app", "top")
    assert graph.can_set_role("app", "app")
    assert not graph.can_set_role("top", "app")
    assert not graph.can_set_role("app", "other")
    assert not graph.can_set_role("app", "ghost")
    assert not graph.can_set_role("ghost", "app")
    assert graph.reachable("app") == {"app", "low", "mid", "top"}
    assert graph.reachable("mid") == {"mid", "top"}
    assert graph.reachable("ghost") == frozenset()
    assert graph.groups("app") == {"low", "mid", "top"}
    assert graph.groups("top") == frozenset()
    assert graph.cycles() == []


def test_cycles_do_not_loop() -> None:
    graph = RoleGraph.from_rows(
        ["a", "b", "c", "self", "app", "x"],
        [("b", "a"), ("c", "b"), ("a", "c"), ("self", "self"), ("a", "app"), ("x", "c")])
    assert graph.reachable("app") == {"app", "a", "b", "c", "x"}
    assert graph.reachable("b") == {"a", "b", "c", "x"}
    assert graph.groups("a") == {"b", "c", "x"}
    assert graph.reachable("self") == {"self"}
    assert graph.groups("self") == frozenset()
    assert graph.cycles() == [["a", "b", "c"], ["self"]]


def test_long_chain_needs_no_recursion() -> None:
    names = [f"r{i}" for i in range(5000)]
    memberships = [(names[i + 1], names[i]) for i in range(len(names) - 1)]
    memberships.append((names[0], names[-1]))  # and close the loop
    graph = RoleGraph.from_rows(names, memberships)
    assert graph.can_set_role("r0", "r4999")
    assert len(graph.reachable("r2500")) == 5000
    assert graph.cycles() == [sorted(names)]


def test_grants_naming_unknown_roles_are_harmless() -> None:
    graph = RoleGraph(roles=[RoleInfo(name="app", oid=1), RoleInfo(name="top", oid=2)],
                      memberships=[Membership(role="gone", member="app"),
                                   Membership(role="top", member="gone")])
    assert graph.can_set_role("app", "top")  # the missing role is only a waypoint
    assert graph.reachable("app") == {"app", "top"}
    assert graph.groups("app") == {"top"}
    assert not graph.can_set_role("app", "gone")


def test_superuser_may_set_any_existing_role() -> None:
    graph = RoleGraph.from_rows([("root", "SUPERUSER LOGIN"), ("rls", "BYPASSRLS"), "grp", "x"],
                                [("grp", "root")])
    for target in ("rls", "grp", "x", "root"):
        assert graph.can_set_role("root", target)
        assert graph.drop_only("root", target)[0]
    assert not graph.can_set_role("root", "ghost")
    assert graph.reachable("root") == {"root", "rls", "grp", "x"}
    assert graph.groups("root") == {"grp"}  # a superuser is not a member of everything
    assert graph.drop_only("root", "ghost") == (False, 'role "ghost" does not exist')
    assert graph.drop_only("root", "rls") == (
        True, '"root" is a superuser and "rls" has no more attributes')


def test_superuser_status_is_not_inherited() -> None:
    # Reaching a superuser role does not let its members become anyone: SET ROLE
    # checks the session user, never the current role.
    graph = RoleGraph.from_rows([("admins", "SUPERUSER"), "app", "other"], [("admins", "app")])
    assert graph.can_set_role("app", "admins")
    assert not graph.can_set_role("app", "other")
    assert graph.reachable("app") == {"app", "admins"}


def test_drop_only_verdicts_and_reasons() -> None:
    graph = RoleGraph.from_rows(
        [("app", "LOGIN CREATEDB"), ("admin", "SUPERUSER"), ("rls", "BYPASSRLS"),
         ("maker", "CREATEDB"), ("many", "CREATEROLE REPLICATION BYPASSRLS"),
         ("two", "CREATEROLE BYPASSRLS"), "readers", "outside"],
        [("admin", "app"), ("rls", "app"), ("maker", "app"), ("many", "app"), ("two", "app"),
         ("readers", "app")])
    assert graph.drop_only("app", "readers") == (
        True, '"app" is a member of "readers", which has no attribute "app" lacks')
    assert graph.drop_only("app", "maker")[0]          # CREATEDB: app has it too
    assert graph.drop_only("app", "app") == (True, '"app" is the login role itself')
    assert graph.drop_only("app", "admin") == (
        False, 'role "admin" has SUPERUSER, which "app" does not have')
    assert graph.drop_only("app", "rls") == (
        False, 'role "rls" has BYPASSRLS, which "app" does not have')
    assert graph.drop_only("app", "two") == (
        False, 'role "two" has CREATEROLE and BYPASSRLS, which "app" does not have')
    assert graph.drop_only("app", "many") == (
        False, 'role "many" has CREATEROLE, REPLICATION and BYPASSRLS, which "app" '
               'does not have')
    assert graph.drop_only("app", "outside") == (False, '"app" is not a member of "outside"')
    assert graph.drop_only("app", "ghost") == (False, 'role "ghost" does not exist')
    assert graph.drop_only("ghost", "app") == (False, 'role "ghost" does not exist')


def test_drop_only_between_equally_privileged_roles() -> None:
    graph = RoleGraph.from_rows([("ops", "LOGIN BYPASSRLS CREATEROLE"), ("rls", "BYPASSRLS")],
                                [("rls", "ops")])
    assert graph.drop_only("ops", "rls")[0]
    assert not graph.drop_only("rls", "ops")[0]


def test_pg16_set_false_grants_block_set_role() -> None:
    graph = RoleGraph.from_rows(
        ["app", "viewer", "top", "side", "both", "inheritonly"],
        [("viewer", "app", "SET FALSE"),         # app may not SET ROLE viewer
         ("top", "viewer", "SET TRUE"),           # ... nor go through it
         ("side", "app", "INHERIT FALSE"),        # INHERIT does not matter for SET ROLE
         ("both", "app", "SET FALSE"), ("both", "app", "SET TRUE"),  # two grantors
         ("inheritonly", "side", "INHERIT TRUE, SET FALSE")])
    assert not graph.can_set_role("app", "viewer")
    assert not graph.can_set_role("app", "top")
    assert graph.can_set_role("viewer", "top")
    assert graph.can_set_role("app", "side")
    assert graph.can_set_role("app", "both")
    assert not graph.can_set_role("app", "inheritonly")
    assert graph.reachable("app") == {"app", "side", "both"}
    assert graph.groups("app") == {"viewer", "top", "side", "both", "inheritonly"}
    assert graph.drop_only("app", "top") == (
        False, '"app" is a member of "top", but no chain of grants to it allows SET ROLE '
               '(SET FALSE)')


def test_pg16_set_false_edge_bypassed_by_another_path() -> None:
    graph = RoleGraph.from_rows(["app", "a", "b", "goal"],
                                [("goal", "a", "SET FALSE"), ("a", "app"), ("b", "app"),
                                 ("goal", "b", "SET TRUE")])
    assert graph.can_set_role("app", "goal")


def test_pg_database_owner_depends_on_the_database() -> None:
    graph = RoleGraph.from_rows(["pg_database_owner", "owners", "app", "other", "x"],
                                [("owners", "app"), ("x", "pg_database_owner")],
                                database_owners={"shop": "owners", "postgres": "other"})
    assert graph.can_set_role("app", "pg_database_owner", database="shop")
    assert graph.can_set_role("app", "x", database="shop")  # and on through its grants
    assert not graph.can_set_role("app", "pg_database_owner", database="postgres")
    assert not graph.can_set_role("app", "pg_database_owner")
    assert "pg_database_owner" in graph.groups("app", database="shop")
    assert graph.reachable("owners", database="shop") == {"owners", "pg_database_owner", "x"}


def test_default_precedence() -> None:
    roles = ["app", "specific", "per_role", "per_db", "everyone"]
    memberships = [(name, "app") for name in roles[1:]]
    every_level = [("app", "shop", "role=specific"), ("app", None, "role=per_role"),
                   (None, "shop", "role=per_db"), (None, None, "role=everyone")]
    for skip in range(4):
        graph = RoleGraph.from_rows(roles, memberships, every_level[skip:])
        expected = every_level[skip][2].removeprefix("role=")
        assert graph.default_role("app", "shop") == expected
        assert graph.default_setting("app", "shop", "role") == expected
    graph = RoleGraph.from_rows(roles, memberships, every_level)
    assert graph.default_role("app", "elsewhere") == "per_role"
    assert graph.default_role("app", "SHOP") == "per_role"  # names are case-sensitive
    assert RoleGraph.from_rows(roles, memberships).default_role("app", "shop") is None


def test_default_role_skips_what_the_server_refuses() -> None:
    graph = RoleGraph.from_rows(
        ["app", "grp", ("admin", "SUPERUSER"), ("root", "SUPERUSER LOGIN"), "other"],
        [("grp", "app")],
        [("app", "shop", "role=other"), ("app", None, "role=grp"),
         ("app", "mall", "role=ghost"),
         ("other", "shop", "role=none"), ("other", None, "role=grp"), (None, None, "role=grp"),
         ("root", None, "role=admin")])
    assert graph.default_role("app", "shop") == "grp"    # not a member of other
    assert graph.default_role("app", "mall") == "grp"    # ghost does not exist
    assert graph.default_setting("app", "shop", "role") == "other"
    assert graph.default_role("other", "shop") is None   # none ends the search
    assert graph.default_role("other", "mall") is None   # not a member of grp anywhere
    assert graph.default_role("root", "shop") == "admin"


def test_default_setting_names() -> None:
    graph = RoleGraph.from_rows(["app"], [], [("app", None, "session_authorization=x")])
    assert graph.default_setting("app", "db", "SESSION_AUTHORIZATION") == "x"
    assert graph.default_setting("app", "db", "role") is None
    with pytest.raises(ValueError, match="keeps only"):
        graph.default_setting("app", "db", "search_path")


def test_graph_equality_ignores_order() -> None:
    one = RoleGraph.from_rows(["a", "b"], [("a", "b"), ("b", "a")])
    two = RoleGraph(roles=list(one.roles.values()), memberships=reversed(one.memberships))
    assert one == two
    assert one != RoleGraph.from_rows(["a", "b"], [("a", "b")])
    assert one != RoleGraph.from_rows(["a", "b"], [("a", "b"), ("b", "a")],
                                      settings_complete=False)
    assert repr(one) == "<RoleGraph 2 roles, 2 memberships, 0 settings>"


# ---------------------------------------------------------------------------
# Properties on random graphs

NAMES = [f"r{i}" for i in range(7)]


@st.composite
def role_graphs(draw: st.DrawFn) -> RoleGraph:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=len(NAMES),
                          unique=True))
    roles = [RoleInfo(name=name, oid=index, superuser=draw(st.integers(0, 4)) == 0,
                      createrole=draw(st.booleans()), createdb=draw(st.booleans()),
                      replication=draw(st.booleans()), bypassrls=draw(st.booleans()))
             for index, name in enumerate(names)]
    # Grants may name roles that do not exist, loop, or point at themselves.
    endpoints = st.sampled_from([*names, "ghost"])
    memberships = draw(st.lists(st.builds(
        lambda role, member, set_option: Membership(role=role, member=member,
                                                    set_option=set_option),
        endpoints, endpoints, st.sampled_from([None, True, False])), max_size=16))
    owners = draw(st.dictionaries(st.sampled_from(["d1", "d2"]), st.sampled_from(names)))
    return RoleGraph(roles=roles, memberships=memberships, database_owners=owners)


def naive_closure(graph: RoleGraph, member: str, *, set_role: bool,
                  database: str | None = None) -> set[str]:
    """Repeat "add what a reached role was granted" until nothing changes."""
    reached = {member}
    owner = graph.database_owners.get(database) if database else None
    while True:
        more = {grant.role for grant in graph.memberships
                if grant.member in reached and (grant.allows_set_role or not set_role)}
        if owner in reached:
            more.add("pg_database_owner")
        if more <= reached:
            return reached
        reached |= more


GRAPHS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@GRAPHS
@given(role_graphs(), st.sampled_from([None, "d1", "d2"]))
def test_reachable_matches_a_naive_fixpoint(graph: RoleGraph, database: str | None) -> None:
    for member, info in graph.roles.items():
        reachable = graph.reachable(member, database=database)
        assert member in reachable
        if info.superuser:
            assert reachable == set(graph.roles)
        else:
            expected = naive_closure(graph, member, set_role=True, database=database)
            assert reachable == expected & set(graph.roles)
        groups = graph.groups(member, database=database)
        expected_groups = naive_closure(graph, member, set_role=False, database=database)
        assert groups == (expected_groups & set(graph.roles)) - {member}
        if not info.superuser:
            assert reachable <= groups | {member}
        for target in [*graph.roles, "ghost"]:
            assert graph.can_set_role(member, target, database=database) == (
                target in reachable)


@GRAPHS
@given(role_graphs())
def test_reachable_is_transitive(graph: RoleGraph) -> None:
    for member, info in graph.roles.items():
        if info.superuser:
            continue
        reachable = graph.reachable(member)
        for other in reachable:
            if not graph.roles[other].superuser:
                assert graph.reachable(other) <= reachable


@GRAPHS
@given(role_graphs())
def test_drop_only_implies_membership_and_no_new_attribute(graph: RoleGraph) -> None:
    for login, login_info in graph.roles.items():
        for target in [*graph.roles, "ghost"]:
            allowed, reason = graph.drop_only(login, target)
            assert reason
            target_info = graph.role(target)
            expected = (target_info is not None and graph.can_set_role(login, target)
                        and target_info.attributes <= login_info.effective_attributes)
            assert allowed == expected, reason


@GRAPHS
@given(role_graphs())
def test_cycles_are_the_mutually_reachable_groups(graph: RoleGraph) -> None:
    nodes = {name for grant in graph.memberships for name in (grant.role, grant.member)}
    closure = {node: naive_closure(graph, node, set_role=False) for node in nodes}
    for component in graph.cycles():
        assert component == sorted(component)
        for node in component:
            assert set(component) <= closure[node]
            if len(component) == 1:
                assert any(g.role == node == g.member for g in graph.memberships)
    grouped = {node for component in graph.cycles() for node in component}
    for node in nodes:
        others = {o for o in closure[node] if o != node and node in closure[o]}
        if others:
            assert node in grouped


# ---------------------------------------------------------------------------
# A real server

PREFIX = "rgraph_"
PASSWORD = "rgraph-secret"
DATABASE = "rgraph_db"
LOGINS = ["app", "ops", "creator", "noinherit", "loner", "super", "defaulted", "fallback",
          "none"]

HIERARCHY = f"""
CREATE ROLE rgraph_base NOLOGIN;
CREATE ROLE rgraph_mid NOLOGIN IN ROLE rgraph_base;
CREATE ROLE rgraph_admins NOLOGIN SUPERUSER;
CREATE ROLE rgraph_rls NOLOGIN BYPASSRLS;
CREATE ROLE rgraph_dbmaker NOLOGIN CREATEDB IN ROLE rgraph_base;
CREATE ROLE "rgraph_Mixed Case" NOLOGIN;
CREATE ROLE rgraph_app LOGIN PASSWORD '{PASSWORD}' IN ROLE rgraph_mid, rgraph_rls, rgraph_dbmaker;
CREATE ROLE rgraph_ops LOGIN CREATEDB PASSWORD '{PASSWORD}'
    IN ROLE rgraph_admins, rgraph_mid, rgraph_dbmaker;
CREATE ROLE rgraph_creator LOGIN CREATEROLE PASSWORD '{PASSWORD}' IN ROLE rgraph_base;
CREATE ROLE rgraph_noinherit LOGIN NOINHERIT PASSWORD '{PASSWORD}' IN ROLE rgraph_mid;
CREATE ROLE rgraph_loner LOGIN PASSWORD '{PASSWORD}' IN ROLE "rgraph_Mixed Case";
CREATE ROLE rgraph_super LOGIN SUPERUSER PASSWORD '{PASSWORD}';
CREATE ROLE rgraph_defaulted LOGIN PASSWORD '{PASSWORD}' IN ROLE rgraph_mid;
CREATE ROLE rgraph_fallback LOGIN PASSWORD '{PASSWORD}' IN ROLE rgraph_base;
CREATE ROLE rgraph_none LOGIN PASSWORD '{PASSWORD}' IN ROLE rgraph_base;
CREATE DATABASE {DATABASE} OWNER rgraph_mid;
ALTER ROLE rgraph_defaulted SET role = rgraph_mid;
ALTER ROLE rgraph_defaulted IN DATABASE {DATABASE} SET role = rgraph_base;
ALTER ROLE rgraph_fallback SET role = rgraph_base;
ALTER ROLE rgraph_fallback IN DATABASE {DATABASE} SET role = rgraph_rls;
ALTER ROLE rgraph_none SET role = rgraph_base;
ALTER ROLE rgraph_none IN DATABASE {DATABASE} SET role = none;
ALTER ROLE rgraph_loner SET role = "rgraph_Mixed Case";
ALTER DATABASE {DATABASE} SET role = rgraph_base;
"""


def drop_everything(pg_cluster: PostgresCluster) -> None:
    names = pg_cluster.sql(f"SELECT rolname FROM pg_roles WHERE rolname LIKE '{PREFIX}%'")
    statements = [f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE);"]
    statements += [f'DROP ROLE "{name}";' for name in names.splitlines() if name]
    pg_cluster.sql("\n".join(statements))


@pytest.fixture(scope="module")
def hierarchy(pg_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    drop_everything(pg_cluster)
    pg_cluster.sql(HIERARCHY)
    yield pg_cluster
    drop_everything(pg_cluster)


def sql_connection(cluster: PostgresCluster, user: str | None = None,
                   database: str = "postgres") -> SQLConnection:
    password = cluster.superuser_password if user is None else PASSWORD
    return SQLConnection.connect((cluster.host, cluster.port), user=user or cluster.superuser,
                                 password=password, database=database)


def load_as(cluster: PostgresCluster, user: str | None = None) -> RoleGraph:
    with sql_connection(cluster, user) as conn:
        return load_role_graph(conn)


def psycopg_login(cluster: PostgresCluster, login: str, database: str) -> psycopg.Connection:
    extra = {} if login == cluster.superuser else {"password": PASSWORD}
    return psycopg.connect(**cluster.connect_kwargs(user=login, dbname=database,
                                                    sslmode="disable", **extra),
                           autocommit=True)


def login_names(cluster: PostgresCluster) -> list[str]:
    return [PREFIX + name for name in LOGINS] + [cluster.superuser]


def test_catalog_shapes(hierarchy: PostgresCluster) -> None:
    graph = load_as(hierarchy)
    assert graph.server_version_num is not None
    assert graph.server_version_num >= 150000
    pg16 = graph.server_version_num >= 160000
    assert graph.settings_complete
    for grant in graph.memberships:
        assert (grant.set_option is None) == (not pg16)
        assert (grant.inherit_option is None) == (not pg16)
    app = graph.role("rgraph_app")
    assert app is not None
    assert app.login and app.inherit and app.attributes == frozenset()
    assert graph.role("rgraph_noinherit") == RoleInfo(
        name="rgraph_noinherit", oid=graph.roles["rgraph_noinherit"].oid, login=True,
        inherit=False)
    assert graph.roles["rgraph_admins"].attributes == {"SUPERUSER"}
    assert graph.roles["rgraph_rls"].attributes == {"BYPASSRLS"}
    assert graph.database_owners[DATABASE] == "rgraph_mid"
    assert graph.groups("rgraph_app") == {"rgraph_mid", "rgraph_base", "rgraph_rls",
                                          "rgraph_dbmaker"}
    mine = {s for s in graph.settings if (s.role or "").startswith(PREFIX)
            or s.database == DATABASE}
    assert RoleSetting(role="rgraph_loner", database=None, name="role",
                       value="rgraph_Mixed Case") in mine
    assert RoleSetting(role="rgraph_none", database=DATABASE, name="role", value="none") in mine
    assert RoleSetting(role=None, database=DATABASE, name="role", value="rgraph_base") in mine
    assert len(mine) == 8
    assert graph.cycles() == []


def test_unprivileged_login_loads_the_same_graph(hierarchy: PostgresCluster) -> None:
    assert load_as(hierarchy, "rgraph_loner") == load_as(hierarchy)


def test_without_pg_db_role_setting_the_graph_says_so(hierarchy: PostgresCluster) -> None:
    full = load_as(hierarchy)
    hierarchy.sql("REVOKE SELECT ON pg_catalog.pg_db_role_setting FROM PUBLIC")
    try:
        partial = load_as(hierarchy, "rgraph_loner")
    finally:
        hierarchy.sql("GRANT SELECT ON pg_catalog.pg_db_role_setting TO PUBLIC")
    assert not partial.settings_complete
    assert set(partial.settings) == {s for s in full.settings
                                     if s.role is not None and s.database is None}
    assert partial.default_role("rgraph_defaulted", "postgres") == "rgraph_mid"
    assert dict(partial.roles) == dict(full.roles)
    assert set(partial.memberships) == set(full.memberships)


def test_can_set_role_matches_the_server(hierarchy: PostgresCluster) -> None:
    graph = load_as(hierarchy)
    targets = sorted(name for name in graph.roles
                     if name.startswith((PREFIX, "pg_")) or name == hierarchy.superuser)
    targets.append("rgraph_missing")
    checked = 0
    for database in ("postgres", DATABASE):
        for login in login_names(hierarchy):
            with psycopg_login(hierarchy, login, database) as conn:
                for target in targets:
                    try:
                        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(target)))
                    except psycopg.Error as exc:
                        assert exc.sqlstate in ("42501", "22023"), exc
                        server_allows = False
                    else:
                        server_allows = True
                        conn.execute("RESET ROLE")
                    assert graph.can_set_role(login, target, database=database) == (
                        server_allows), (login, target, database)
                    allowed, reason = graph.drop_only(login, target, database=database)
                    assert not allowed or server_allows, reason
                    checked += 1
    assert checked == 2 * len(login_names(hierarchy)) * len(targets)
    # The cases the hierarchy was built for:
    assert graph.can_set_role("rgraph_noinherit", "rgraph_base")   # NOINHERIT: still allowed
    assert graph.can_set_role("rgraph_app", "pg_database_owner", database=DATABASE)
    assert not graph.can_set_role("rgraph_app", "pg_database_owner", database="postgres")
    assert graph.drop_only("rgraph_ops", "rgraph_admins") == (
        False, 'role "rgraph_admins" has SUPERUSER, which "rgraph_ops" does not have')
    assert graph.drop_only("rgraph_app", "rgraph_rls") == (
        False, 'role "rgraph_rls" has BYPASSRLS, which "rgraph_app" does not have')
    assert graph.drop_only("rgraph_app", "rgraph_dbmaker")[0] is False
    assert graph.drop_only("rgraph_ops", "rgraph_dbmaker")[0] is True
    assert graph.drop_only("rgraph_app", "rgraph_base")[0] is True
    assert graph.drop_only("rgraph_super", "rgraph_admins")[0] is True


def test_default_role_matches_the_server(hierarchy: PostgresCluster) -> None:
    graph = load_as(hierarchy)
    expected = {
        ("rgraph_defaulted", "postgres"): "rgraph_mid",
        ("rgraph_defaulted", DATABASE): "rgraph_base",
        ("rgraph_fallback", DATABASE): "rgraph_base",     # rgraph_rls is refused, skipped
        ("rgraph_none", "postgres"): "rgraph_base",
        ("rgraph_none", DATABASE): None,                  # none wins
        ("rgraph_loner", "postgres"): "rgraph_Mixed Case",
        ("rgraph_loner", DATABASE): "rgraph_Mixed Case",
        ("rgraph_app", DATABASE): "rgraph_base",          # ALTER DATABASE ... SET role
        ("rgraph_app", "postgres"): None,
        (hierarchy.superuser, DATABASE): "rgraph_base",
    }
    for database in ("postgres", DATABASE):
        for login in login_names(hierarchy):
            with psycopg_login(hierarchy, login, database) as conn:
                row = conn.execute("SELECT current_user, session_user").fetchone()
            assert row is not None
            current_user, session_user = row
            assert session_user == login
            default = graph.default_role(login, database)
            assert (default or login) == current_user, (login, database)
            if (login, database) in expected:
                assert default == expected[login, database]
    assert graph.default_setting("rgraph_fallback", DATABASE, "role") == "rgraph_rls"


# ---------------------------------------------------------------------------
# RoleGraphSource against the real server


@pytest.fixture
def source_roles(hierarchy: PostgresCluster) -> Iterator[PostgresCluster]:
    hierarchy.sql("CREATE ROLE rgraph_src_group NOLOGIN; CREATE ROLE rgraph_src_member LOGIN;")
    yield hierarchy
    hierarchy.sql("DROP ROLE rgraph_src_member; DROP ROLE rgraph_src_group;")


def make_source(cluster: PostgresCluster, refresh_seconds: float) -> RoleGraphSource:
    return RoleGraphSource((cluster.host, cluster.port), cluster.superuser,
                           password=cluster.superuser_password, refresh_seconds=refresh_seconds)


def test_source_loads_and_refreshes_after_a_change(source_roles: PostgresCluster) -> None:
    cluster = source_roles
    source = make_source(cluster, refresh_seconds=0)
    assert source.current() is None
    assert source.stale()
    first = source.refresh_if_stale()
    assert first is not None and source.current() is first
    assert source.loaded_at is not None and source.last_error is None
    assert not first.can_set_role("rgraph_src_member", "rgraph_src_group")
    assert source.stale()  # refresh_seconds=0: always old
    cluster.sql("GRANT rgraph_src_group TO rgraph_src_member")
    second = source.refresh_if_stale()
    assert second is not None and second is not first
    assert second.can_set_role("rgraph_src_member", "rgraph_src_group")
    assert source.load().can_set_role("rgraph_src_member", "rgraph_src_group")


def test_source_keeps_a_fresh_graph(hierarchy: PostgresCluster) -> None:
    source = make_source(hierarchy, refresh_seconds=3600)
    graph = source.load()
    assert not source.stale()
    assert source.refresh_if_stale() is graph
    assert source.current() is graph


def counting(connect: Callable[[], SQLConnection]) -> tuple[Callable[[], SQLConnection],
                                                            list[int]]:
    calls = [0]

    def wrapper() -> SQLConnection:
        calls[0] += 1
        return connect()
    return wrapper, calls


def test_a_failing_load_keeps_the_last_graph(hierarchy: PostgresCluster) -> None:
    broken = threading.Event()

    def connect() -> SQLConnection:
        if broken.is_set():  # a real refusal: the server knows no such role
            return SQLConnection.connect((hierarchy.host, hierarchy.port),
                                         user="rgraph_missing", database="postgres")
        return sql_connection(hierarchy)

    wrapper, calls = counting(connect)
    source = RoleGraphSource(connect=wrapper, refresh_seconds=0, retry_seconds=0)
    graph = source.load()
    broken.set()
    with pytest.raises(ConnectionError, match="rgraph_missing"):
        source.load()
    assert source.current() is graph
    assert isinstance(source.last_error, ConnectionError)
    assert source.refresh_if_stale() is graph   # does not raise
    assert calls[0] == 3
    broken.clear()
    fresh = source.refresh_if_stale()
    assert fresh is not None and fresh is not graph and fresh == graph
    assert source.last_error is None


def test_a_failed_load_waits_before_retrying(hierarchy: PostgresCluster) -> None:
    def connect() -> SQLConnection:
        return SQLConnection.connect((hierarchy.host, hierarchy.port),
                                     user="rgraph_missing", database="postgres")

    wrapper, calls = counting(connect)
    source = RoleGraphSource(connect=wrapper, refresh_seconds=0, retry_seconds=3600)
    assert source.refresh_if_stale() is None
    assert isinstance(source.last_error, ConnectionError)
    assert source.refresh_if_stale() is None
    assert calls[0] == 1
    with pytest.raises(ConnectionError):
        source.load()  # an explicit load always tries
    assert calls[0] == 2


def test_concurrent_refreshes_load_once(hierarchy: PostgresCluster) -> None:
    threads_count = 8
    release = threading.Event()
    finished = threading.Semaphore(0)

    def connect() -> SQLConnection:
        # Hold the one load open until every other caller has returned.
        assert release.wait(TIMEOUT), "the other callers did not return"
        return sql_connection(hierarchy)

    wrapper, calls = counting(connect)
    source = RoleGraphSource(connect=wrapper, refresh_seconds=3600)
    start = threading.Barrier(threads_count)
    results: list[RoleGraph | None] = []
    lock = threading.Lock()

    def caller() -> None:
        start.wait(TIMEOUT)
        result = source.refresh_if_stale()
        with lock:
            results.append(result)
        finished.release()

    threads = [threading.Thread(target=caller) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for _ in range(threads_count - 1):
        assert finished.acquire(timeout=TIMEOUT)
    release.set()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    assert calls[0] == 1
    graphs = [result for result in results if result is not None]
    assert len(graphs) == 1 and results.count(None) == threads_count - 1
    assert source.current() is graphs[0]
    assert source.refresh_if_stale() is graphs[0]
    assert calls[0] == 1


def test_static_source() -> None:
    graph = RoleGraph.from_rows(["app"])
    source = RoleGraphSource.static(graph)
    assert source.current() is graph
    assert not source.stale()
    assert source.refresh_if_stale() is graph
    assert source.load() is graph
    assert source.last_error is None


def test_source_needs_somewhere_to_load_from() -> None:
    with pytest.raises(ValueError, match="address and user, or connect"):
        RoleGraphSource(("127.0.0.1", 5432))
    with pytest.raises(ValueError, match=">= 0"):
        RoleGraphSource(("127.0.0.1", 5432), "app", refresh_seconds=-1)

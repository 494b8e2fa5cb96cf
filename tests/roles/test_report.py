"""The role report (pgwire/roles/report.py), on hand-built role graphs: no server.

* Reach: SET ROLE and inherited-privilege chains with PostgreSQL 15 rules
  (the member's INHERIT attribute, at every step) and PostgreSQL 16 rules
  (per-grant INHERIT and SET options); SET ROLE reach always agrees with
  ``RoleGraph.reachable``.
* Every warning code, including the cases that must *not* warn.
* The proxy mapping for each RoleRewrite mode and each RoleGuard policy.
* Writers: JSON round trip and schema, Markdown cells that stay cells, Mermaid
  and DOT that hostile role names cannot break out of (hypothesis).
* The connection-string parser, ``--ignore`` and the configuration reader.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgwire.middleware.rewrite import RoleRewrite
from pgwire.middleware.roles import RoleGuard
from pgwire.proxy import PoolConfig, ProxyAuth, ProxyConfig
from pgwire.proxy.config_file import ConfigError
from pgwire.roles import Membership, RoleGraph, RoleInfo
from pgwire.roles._report_command import _ignored
from pgwire.roles._report_dsn import DSNError, parse_dsn, resolve_conninfo
from pgwire.roles.report import (
    SCHEMA_VERSION,
    WARNING_CODES,
    GraphvizUnavailable,
    RoleReport,
    build_report,
    load_proxy_for_report,
    report_from_json,
    to_dot,
    to_json,
    to_markdown,
    to_mermaid,
    to_svg,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def codes(report: RoleReport) -> set[tuple[str, str]]:
    return {(w.code, w.subject) for w in report.warnings}


def entry(report: RoleReport, login: str, role: str):  # type: ignore[no-untyped-def]
    reach = next(r for r in report.reach if r.login == login)
    return next((e for e in reach.entries if e.role == role), None)


# ---------------------------------------------------------------------------
# Reach


def test_pg15_chains_follow_the_inherit_attribute_at_every_step() -> None:
    # joe (INHERIT) -> admin (NOINHERIT) -> wheel: the example of the
    # PostgreSQL 15 docs: joe has admin's privileges, not wheel's; SET ROLE to both.
    graph = RoleGraph.from_rows(
        [("joe", "LOGIN"), ("admin", "NOINHERIT"), "wheel", ("island", "LOGIN NOINHERIT")],
        [("admin", "joe"), ("wheel", "admin"), ("admin", "island")])
    report = build_report(graph)
    assert not report.grant_options
    admin = entry(report, "joe", "admin")
    wheel = entry(report, "joe", "wheel")
    assert admin is not None and wheel is not None
    assert admin.set_chain == ("joe", "admin") and admin.inherit_chain == ("joe", "admin")
    assert wheel.set_chain == ("joe", "admin", "wheel")
    assert wheel.inherit_chain is None
    assert wheel.member_chain == ("joe", "admin", "wheel")
    # A NOINHERIT login inherits nothing, but may SET ROLE along every grant.
    island = entry(report, "island", "admin")
    assert island is not None and island.inherit_chain is None
    assert island.set_chain == ("island", "admin")
    assert entry(report, "island", "wheel") is not None


def test_pg16_chains_follow_each_grants_options() -> None:
    graph = RoleGraph.from_rows(
        [("alice", "LOGIN NOINHERIT"), "reporting", "audit", "vault"],
        [("reporting", "alice", "SET FALSE"),          # inherits, cannot SET ROLE
         ("audit", "reporting", "INHERIT FALSE"),      # SET only
         ("vault", "alice", "ADMIN TRUE, INHERIT FALSE, SET TRUE")])
    report = build_report(graph)
    assert report.grant_options
    reporting = entry(report, "alice", "reporting")
    assert reporting is not None
    # The per-grant option wins over the member's NOINHERIT attribute on 16+.
    assert reporting.inherit_chain == ("alice", "reporting") and reporting.set_chain is None
    audit = entry(report, "alice", "audit")
    assert audit is not None and audit.set_chain is None and audit.inherit_chain is None
    assert audit.member_chain == ("alice", "reporting", "audit")
    vault = entry(report, "alice", "vault")
    assert vault is not None and vault.set_chain == ("alice", "vault")
    assert vault.inherit_chain is None
    rows = {(m.member, m.role): m for m in report.memberships}
    assert rows["alice", "vault"].admin_option
    assert rows["alice", "reporting"].set_option is False


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.booleans(),
                          st.booleans()), max_size=12))
def test_set_role_reach_agrees_with_the_graph(grants: list[tuple[int, int, bool, bool]]) -> None:
    names = [f"r{index}" for index in range(6)]
    graph = RoleGraph(
        roles=[RoleInfo(name=name, oid=100 + index, login=True)
               for index, name in enumerate(names)],
        memberships=[Membership(role=names[role], member=names[member],
                                inherit_option=inherit, set_option=settable)
                     for role, member, inherit, settable in grants])
    report = build_report(graph)
    for reach in report.reach:
        settable = {e.role for e in reach.entries if e.set_chain is not None}
        assert settable | {reach.login} == graph.reachable(reach.login)
        for item in reach.entries:
            for chain in (item.set_chain, item.inherit_chain, item.member_chain):
                if chain is not None:
                    assert chain[0] == reach.login and chain[-1] == item.role
                    assert len(set(chain)) == len(chain)


def test_database_owner_reaches_pg_database_owner_only_in_its_database() -> None:
    graph = RoleGraph.from_rows([("owner", "LOGIN"), "pg_database_owner"],
                                database_owners={"app": "owner"})
    in_app = build_report(graph, database="app")
    owned = entry(in_app, "owner", "pg_database_owner")
    assert owned is not None and owned.set_chain == ("owner", "pg_database_owner")
    assert any(m.implicit for m in in_app.memberships)
    assert entry(build_report(graph, database="postgres"), "owner", "pg_database_owner") is None


# ---------------------------------------------------------------------------
# Warnings


def test_attribute_warnings_use_set_role_reach() -> None:
    graph = RoleGraph(roles=[
        RoleInfo(name="postgres", oid=10, login=True, superuser=True),
        RoleInfo(name="root2", oid=20, login=True, superuser=True),
        RoleInfo(name="alice", oid=21, login=True),
        RoleInfo(name="bob", oid=22, login=True),
        RoleInfo(name="carol", oid=23, login=True, createdb=True),
        RoleInfo(name="boss", oid=30, superuser=True),
        RoleInfo(name="rls", oid=31, bypassrls=True),
        RoleInfo(name="maker", oid=32, createrole=True, createdb=True),
        RoleInfo(name="repl", oid=33, replication=True),
        RoleInfo(name="files", oid=34),
        RoleInfo(name="pg_read_server_files", oid=35),
    ], memberships=[
        Membership(role="boss", member="alice", inherit_option=True, set_option=True),
        Membership(role="rls", member="alice", inherit_option=True, set_option=True),
        Membership(role="maker", member="files", inherit_option=True, set_option=True),
        Membership(role="files", member="alice", inherit_option=True, set_option=True),
        Membership(role="repl", member="alice", inherit_option=True, set_option=True),
        # bob only inherits from boss: attributes are never inherited, so no warning.
        Membership(role="boss", member="bob", inherit_option=True, set_option=False),
        # ...but membership of a file-reading predefined role is privileges: warn.
        Membership(role="pg_read_server_files", member="bob", inherit_option=True,
                   set_option=False),
        Membership(role="maker", member="carol", inherit_option=True, set_option=True),
    ], server_version_num=160004)
    report = build_report(graph)
    found = codes(report)
    assert ("login-is-superuser", "root2") in found
    assert ("login-is-superuser", "postgres") not in found  # the bootstrap superuser
    assert ("login-reaches-superuser", "alice") in found
    assert ("login-reaches-bypassrls", "alice") in found
    assert ("login-reaches-createrole", "alice") in found
    assert ("login-reaches-createdb", "alice") in found
    assert ("login-reaches-replication", "alice") in found
    assert ("login-reaches-privileged-role", "bob") in found
    assert not any(code == "login-reaches-superuser" and who == "bob" for code, who in found)
    # carol has CREATEDB herself: only CREATEROLE is gained.
    assert ("login-reaches-createrole", "carol") in found
    assert ("login-reaches-createdb", "carol") not in found
    # Superuser logins get one warning, not one per reachable role.
    assert {c for c, who in found if who == "root2"} == {"login-is-superuser"}
    chain = next(w.chain for w in report.warnings
                 if w.code == "login-reaches-createrole" and w.subject == "alice")
    assert chain == ("alice", "files", "maker")
    assert "alice -> files -> maker" in next(
        w.message for w in report.warnings if w.chain == chain)
    severities = [w.severity for w in report.warnings]
    assert severities == sorted(severities, key=("high", "medium", "low").index)
    for warning in report.warnings:
        assert WARNING_CODES[warning.code][0] == warning.severity


def test_cycles_and_unused_group_roles() -> None:
    graph = RoleGraph.from_rows(
        [("login", "LOGIN"), "a", "b", "c", "unused", "owner_only", "used", "pg_monitor"],
        [("a", "b"), ("b", "c"), ("c", "a"), ("used", "login")],
        database_owners={"app": "owner_only"})
    report = build_report(graph)
    found = codes(report)
    assert ("membership-cycle", "a, b, c") in found
    assert ("unused-group-role", "unused") in found
    for quiet in ("owner_only", "used", "pg_monitor", "login", "a"):
        assert ("unused-group-role", quiet) not in found
    # A cycle does not make anything loop, and its members reach each other.
    cyclic = RoleGraph.from_rows([("x", "LOGIN"), "y"], [("y", "x"), ("x", "y")])
    assert entry(build_report(cyclic), "x", "y") is not None


# ---------------------------------------------------------------------------
# The proxy


GRAPH = RoleGraph.from_rows(
    [("alice", "LOGIN"), ("bob", "LOGIN"), ("intern_1", "LOGIN"), ("pool", "LOGIN NOINHERIT"),
     ("fat_pool", "LOGIN"), "reporting", "readers", "staff", ("boss", "SUPERUSER"),
     ("locked", "NOLOGIN"), "pg_execute_server_program", "danger"],
    [("reporting", "pool"), ("readers", "pool"), ("reporting", "alice"), ("staff", "alice"),
     ("readers", "intern_1"), ("boss", "fat_pool"), ("reporting", "fat_pool"),
     ("pg_execute_server_program", "danger"), ("danger", "alice")])


def proxy(*middleware: object, **kwargs: object) -> ProxyConfig:
    return ProxyConfig(upstream=("127.0.0.1", 5432), middleware=list(middleware),  # type: ignore[arg-type]
                       **kwargs)  # type: ignore[arg-type]


def mapping(report: RoleReport, user: str):  # type: ignore[no-untyped-def]
    assert report.proxy is not None
    return next(m for m in report.proxy.mappings if m.startup_user == user)


def test_preserve_and_no_guard() -> None:
    report = build_report(GRAPH, proxy=proxy(RoleRewrite()), database="app")
    alice = mapping(report, "alice")
    assert (alice.outcome, alice.upstream_login, alice.effective_role) == ("ok", "alice", "alice")
    assert "reporting" in alice.switch_to and "no RoleGuard" in alice.switch_note
    assert report.proxy is not None and report.proxy.guard is None
    assert {m.startup_user for m in report.proxy.mappings} == {
        "alice", "bob", "intern_1", "pool", "fat_pool"}


def test_map_mode_rules_and_unmapped_users() -> None:
    rewrite = RoleRewrite("map", rules=[{"user": "intern_*", "role": "bob"},
                                        {"user": "alice", "role": "locked"},
                                        {"user": "bob", "role": "ghost"}])
    report = build_report(GRAPH, proxy=proxy(rewrite), database="app")
    intern = mapping(report, "intern_1")
    assert (intern.outcome, intern.upstream_login) == ("ok", "bob")
    assert intern.rule == "rule 0: intern_* -> bob"
    assert mapping(report, "pool").outcome == "refused"  # unmapped = reject
    assert mapping(report, "alice").outcome == "fails"   # NOLOGIN target
    found = codes(report)
    assert ("mapped-role-unusable", "rule 1 (alice -> locked)") in found
    assert ("mapped-role-missing", "rule 2 (bob -> ghost)") in found
    assert report.proxy is not None and report.proxy.rewrite is not None
    assert report.proxy.rewrite.rules[0].matches == ("intern_1",)
    lenient = build_report(GRAPH, proxy=proxy(RoleRewrite(
        "map", rules=[{"user": "x", "role": "bob"}], unmapped="preserve")))
    kept = mapping(lenient, "pool")
    assert (kept.outcome, kept.upstream_login, kept.rule) == ("ok", "pool",
                                                              "unmapped = preserve")


def test_fixed_mode_and_pool_role_warnings() -> None:
    report = build_report(GRAPH, proxy=proxy(RoleRewrite("fixed", login_role="fat_pool")))
    bob = mapping(report, "bob")
    assert (bob.upstream_login, bob.effective_role, bob.how) == ("fat_pool", "fat_pool",
                                                                  "fixed")
    assert ("pool-role-reaches-privileged", "fat_pool") in codes(report)
    missing = build_report(GRAPH, proxy=proxy(RoleRewrite("fixed", login_role="nobody")))
    assert ("pool-role-missing", "nobody") in codes(missing)
    assert mapping(missing, "bob").outcome == "fails"
    nologin = build_report(GRAPH, proxy=proxy(RoleRewrite("fixed", login_role="locked")))
    assert ("pool-role-not-login", "locked") in codes(nologin)


def test_set_role_mode_maps_through_the_pool_role() -> None:
    rewrite = RoleRewrite("set_role", login_role="pool", unmapped="preserve",
                          rules=[{"user": "alice", "role": "reporting"},
                                 {"user": "intern_*", "role": "readers"},
                                 {"user": "bob", "role": "staff"}])
    report = build_report(GRAPH, proxy=proxy(rewrite, RoleGuard("deny")), database="app")
    alice = mapping(report, "alice")
    assert (alice.upstream_login, alice.effective_role) == ("pool", "reporting")
    assert alice.switch_to == () and alice.switch_note.startswith("deny")
    bob = mapping(report, "bob")
    assert bob.outcome == "fails" and "42501" in bob.note  # pool is not a member of staff
    assert ("mapped-role-unusable", "rule 2 (bob -> staff)") in codes(report)
    # unmapped = preserve: becomes itself, which the pool role cannot SET ROLE to.
    assert mapping(report, "fat_pool").outcome == "fails"
    assert not any(code == "set-role-without-guard" for code, _ in codes(report))
    assert not any(code == "pool-role-inherits" for code, _ in codes(report))  # NOINHERIT

    unguarded = build_report(GRAPH, proxy=proxy(RoleRewrite(
        "set_role", login_role="fat_pool", rules=[{"user": "*", "role": "reporting"}])))
    found = codes(unguarded)
    assert ("set-role-without-guard", "login_role fat_pool") in found
    assert ("pool-role-inherits", "fat_pool") in found


def test_guard_policies() -> None:
    drop = build_report(GRAPH, proxy=proxy(RoleGuard("drop_only", graph=GRAPH)))
    fat = mapping(drop, "fat_pool")
    assert fat.switch_to == ("reporting",)  # never boss (SUPERUSER)
    alice = mapping(drop, "alice")
    assert "danger" not in alice.switch_to  # belongs to pg_execute_server_program
    assert "pg_execute_server_program" not in alice.switch_to
    assert {"reporting", "staff"} <= set(alice.switch_to)

    allow = RoleGuard("allowlist", graph=GRAPH,
                      allow={"alice": ["report*", "ghost_*"], "@readers": ["readers"],
                             "fat_pool": ["boss"], "bob": ["danger"]})
    report = build_report(GRAPH, proxy=proxy(allow))
    assert mapping(report, "alice").switch_to == ("reporting",)
    assert mapping(report, "intern_1").switch_to == ("readers",)  # through @readers
    assert mapping(report, "bob").switch_to == ()        # the server refuses: not a member
    assert mapping(report, "fat_pool").switch_to == ("boss",)
    found = codes(report)
    assert ("guard-allows-privileged", "allow[fat_pool] boss") in found
    assert ("guard-allows-privileged", "allow[bob] danger") in found
    assert ("guard-allowlist-matches-nothing", "allow[alice] ghost_*") in found
    assert report.proxy is not None and report.proxy.guard is not None
    assert [e.key for e in report.proxy.guard.allow] == ["@readers", "alice", "bob",
                                                         "fat_pool"]


def test_group_allowlist_resolves_through_memberships() -> None:
    graph = RoleGraph.from_rows([("intern", "LOGIN"), "readers", "archive"],
                                [("readers", "intern"), ("archive", "intern")])
    guard = RoleGuard("allowlist", graph=graph, allow={"@readers": ["arch*"]})
    report = build_report(graph, proxy=proxy(guard))
    assert mapping(report, "intern").switch_to == ("archive",)
    assert "arch*" in mapping(report, "intern").switch_note


def test_pool_and_proxy_users() -> None:
    auth = ProxyAuth(method="scram-sha-256", users={"app_user": "secret", "alice": "x"})
    config = proxy(RoleRewrite("fixed", login_role="pool"), auth=auth,
                   pool=PoolConfig(mode="transaction", session_state={"role": "refuse"}))
    report = build_report(GRAPH, proxy=config)
    assert report.proxy is not None and report.proxy.pool is not None
    assert (report.proxy.pool.mode, report.proxy.pool.role_state) == ("transaction", "refuse")
    assert report.proxy.auth == "proxy scram-sha-256"
    user = mapping(report, "app_user")
    assert (user.source, user.upstream_login) == ("proxy-user", "pool")
    assert mapping(report, "alice").source == "login-role"
    assert "secret" not in to_json(report)


def test_upstream_user_overrides_a_rewrite() -> None:
    auth = ProxyAuth(method="trust", upstream_user="bob")
    report = build_report(GRAPH, proxy=proxy(RoleRewrite("fixed", login_role="pool"),
                                             auth=auth))
    assert mapping(report, "alice").outcome == "refused"
    plain = build_report(GRAPH, proxy=proxy(auth=auth))
    assert mapping(plain, "alice").upstream_login == "bob"


# ---------------------------------------------------------------------------
# Writers


HOSTILE = ['a"b', "x|y", "new\nline", "back\\slash", "<script>", "end", "1 --> 2", "#35;",
           "[]()", "{x}", "tab\there", "ünïcode", "🦄", "*_`~", "--", 'he said "hi" |']


def hostile_graph(names: list[str]) -> RoleGraph:
    roles: list[str | tuple[str, str]] = [(name, "LOGIN") if i % 2 else name
                                          for i, name in enumerate(names)]
    grants = [(names[i], names[i + 1]) for i in range(len(names) - 1)]
    return RoleGraph.from_rows([*roles, ("boss", "SUPERUSER"), "pg_monitor"],
                               [*grants, ("boss", names[0]), ("pg_monitor", names[-1])])


def test_json_round_trip_and_schema() -> None:
    rewrite = RoleRewrite("set_role", login_role="pool", rules=[{"user": "*",
                                                                "role": "reporting"}])
    guard = RoleGuard("allowlist", graph=GRAPH, allow={"alice": ["staff"]})
    report = build_report(GRAPH, proxy=proxy(rewrite, guard, auth=ProxyAuth(method="trust"),
                                             pool=PoolConfig()), database="app")
    text = to_json(report)
    assert report_from_json(text) == report
    data = json.loads(text)
    assert data["version"] == SCHEMA_VERSION == 1
    assert set(data) == {"version", "server_version_num", "database", "grant_options",
                         "include_predefined", "roles", "memberships", "reach", "warnings",
                         "proxy"}
    assert set(data["roles"][0]) == {
        "name", "oid", "login", "superuser", "createrole", "createdb", "bypassrls",
        "replication", "inherit", "connection_limit", "password_set", "valid_until",
        "predefined", "bootstrap"}
    assert set(data["warnings"][0]) == {"code", "severity", "subject", "message", "chain"}
    assert set(data["proxy"]) == {"middleware", "auth", "upstream_user", "rewrite", "guard",
                                  "pool", "mappings"}
    hostile = build_report(hostile_graph(HOSTILE))
    assert report_from_json(to_json(hostile)) == hostile
    with pytest.raises(ValueError, match="schema version"):
        report_from_json(json.dumps({**data, "version": 2}))
    broken = dict(data, roles=[{**data["roles"][0], "login": "yes"}])
    with pytest.raises(ValueError, match=r"roles\[0\]\.login"):
        report_from_json(json.dumps(broken))


_CELL_BREAK = re.compile(r"(?<!\\)\|")


def test_markdown_cells_stay_cells() -> None:
    report = build_report(hostile_graph(HOSTILE), include_predefined=True)
    text = to_markdown(report)
    tables = re.findall(r"((?:^\|.*\n)+)", text, flags=re.MULTILINE)
    assert len(tables) >= 4
    for table in tables:  # every row as wide as its header: no name adds a cell
        widths = {len(_CELL_BREAK.split(row)) for row in table.rstrip("\n").split("\n")}
        assert len(widths) == 1, table
    assert "<script>" not in text and "&lt;script>" in text
    assert "x\\|y" in text and "new line" in text
    assert "pg\\_monitor" in text.split("## Memberships")[0]  # include_predefined
    plain = to_markdown(build_report(hostile_graph(HOSTILE)))
    assert "pg\\_monitor" not in plain.split("## Memberships")[0]
    assert "pg\\_monitor" in plain.split("## Memberships")[1]  # memberships keep it
    assert "ADMIN only" in text  # PostgreSQL 15 membership options, said once


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1,
                        max_size=10), min_size=2, max_size=5, unique=True).filter(
    lambda names: "boss" not in names and "pg_monitor" not in names))
def test_markdown_tables_keep_their_width(names: list[str]) -> None:
    text = to_markdown(build_report(hostile_graph(names), include_predefined=True))
    for table in re.findall(r"((?:^\|.*\n)+)", text, flags=re.MULTILINE):
        rows = table.rstrip("\n").split("\n")
        assert len({len(_CELL_BREAK.split(row)) for row in rows}) == 1, table
    assert "<" not in text.replace("<br/>", "")


_NODE = re.compile(r'^    (r\d+)(?:\("(.*)"\)|\["(.*)"\])$')
_EDGE = re.compile(r'^    (r\d+) (?:-->|-\.->)(?:\|"([^"]*)"\|)? (r\d+)$')


def _unmermaid(label: str) -> str:
    name = label.split("<br/>", 1)[0]
    return re.sub(r"#(\d+);", lambda m: chr(int(m.group(1))), name)


def check_mermaid(report: RoleReport) -> None:
    text = to_mermaid(report)
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    nodes: dict[str, str] = {}
    edges: list[tuple[str, str]] = []
    for line in lines[1:]:
        node = _NODE.match(line)
        if node:
            label = node.group(2) if node.group(2) is not None else node.group(3)
            assert '"' not in label and "\n" not in label
            assert re.fullmatch(r"[A-Za-z0-9 _.\-#;]*(<br/><small>[A-Z ]+</small>)?", label)
            nodes[node.group(1)] = _unmermaid(label)
            continue
        edge = _EDGE.match(line)
        if edge:
            edges.append((nodes[edge.group(1)], nodes[edge.group(3)]))
            continue
        assert line.startswith(("    classDef ", "    class ")), line
    shown = [m for m in report.memberships if report.include_predefined
             or not (m.role.startswith("pg_") and m.member.startswith("pg_"))]
    drawn = {r.name for r in report.roles
             if report.include_predefined or not r.predefined
             or any(r.name in (m.role, m.member) for m in shown)}
    assert sorted(nodes.values()) == sorted(drawn)
    assert sorted(edges) == sorted((m.member, m.role) for m in shown)


def test_mermaid_structure_with_hostile_names() -> None:
    report = build_report(hostile_graph(HOSTILE))
    check_mermaid(report)
    text = to_mermaid(report)
    assert "classDef privileged" in text and "class r" in text


role_names = st.text(st.characters(codec="utf-8", exclude_characters="\0"),
                     min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(role_names, min_size=2, max_size=6, unique=True).filter(
    lambda names: "boss" not in names and "pg_monitor" not in names))
def test_mermaid_labels_never_break_out(names: list[str]) -> None:
    check_mermaid(build_report(hostile_graph(names)))


def test_pg16_edge_labels() -> None:
    graph = RoleGraph.from_rows([("a", "LOGIN"), "b", "c"],
                                [("b", "a", "ADMIN TRUE, SET FALSE"), ("c", "b", "INHERIT FALSE")])
    text = to_mermaid(build_report(graph))
    assert '-->|"ADMIN NOSET"|' in text and '-->|"NOINHERIT"|' in text
    dot = to_dot(build_report(graph))
    assert 'label="ADMIN NOSET"' in dot
    markdown = to_markdown(build_report(graph))
    assert "per grant (ADMIN, INHERIT, SET" in markdown and "n/a (PG15)" not in markdown
    assert "| a | b | yes | yes | no | - |" in markdown


def _undot(text: str) -> str:
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            following = text[index + 1]
            out.append("\n" if following == "n" else following)
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


def test_dot_strings_escape_everything() -> None:
    report = build_report(hostile_graph(HOSTILE))
    dot = to_dot(report)
    labels = re.findall(r'\[label="((?:[^"\\]|\\.)*)", shape=', dot)
    shown = sorted(_undot(label).split("\n")[0] for label in labels)

    def display(name: str) -> str:
        return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 else c for c in name)

    assert shown == sorted(display(r.name) for r in report.roles if not r.predefined
                           or r.name == "pg_monitor")
    assert "new\\\\x0aline" in dot  # a control character is shown, not obeyed


def test_svg_needs_dot_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GraphvizUnavailable, match="install Graphviz"):
        to_svg(build_report(GRAPH))


# ---------------------------------------------------------------------------
# Connection strings, --ignore, the configuration reader


@pytest.mark.parametrize(("dsn", "expected"), [
    ("host=db port=6543 user=alice dbname=app", {"host": "db", "port": "6543",
                                                 "user": "alice", "dbname": "app"}),
    ("  host = db   password='it''s' ", None),
    ("user=a'b", None),
    ("password='a b\\'c\\\\d' user=x", {"password": "a b'c\\d", "user": "x"}),
    ("user=a\\ b", {"user": "a b"}),
    ("postgresql://", {}),
    ("postgresql://al%40ice:p%3Ass@db.example:5433/my%20db?sslmode=require&application_name=r",
     {"user": "al@ice", "password": "p:ss", "host": "db.example", "port": "5433",
      "dbname": "my db", "sslmode": "require", "application_name": "r"}),
    ("postgres://[::1]:6000/app", {"host": "::1", "port": "6000", "dbname": "app"}),
    ("postgresql://Host/db", {"host": "Host", "dbname": "db"}),
])
def test_parse_dsn(dsn: str, expected: dict[str, str] | None) -> None:
    if expected is None:
        with pytest.raises(DSNError, match=r"quote inside|after the closing quote"):
            parse_dsn(dsn)
    else:
        assert parse_dsn(dsn) == expected


@pytest.mark.parametrize(("dsn", "message"), [
    ("host=db bogus=1", "unknown connection keyword 'bogus'"),
    ("host=db host=other", "'host' appears twice"),
    ("host db", 'missing "=" after'),
    ("password='open", "unterminated quoted value"),
    ("=x", "without a keyword"),
    ("postgresql://a,b/db", "several hosts"),
    ("postgresql://db:99999/x", "bad host or port"),
    ("postgresql://db/x?nope=1", "unknown connection keyword 'nope'"),
    ("postgresql://db/x#frag", "no #fragment"),
])
def test_parse_dsn_errors(dsn: str, message: str) -> None:
    with pytest.raises(DSNError, match=message):
        parse_dsn(dsn)


def test_resolve_conninfo_precedence() -> None:
    env = {"PGHOST": "envhost", "PGPORT": "7000", "PGUSER": "envuser", "PGPASSWORD": "pw",
           "PGDATABASE": "envdb"}
    info = resolve_conninfo("host=dsnhost user=dsnuser", port=7100, environ=env)
    assert (info.host, info.port, info.user, info.dbname, info.password) == (
        "dsnhost", 7100, "dsnuser", "envdb", "pw")
    assert "pw" not in repr(info)
    bare = resolve_conninfo(None, user="u", environ={})
    assert (bare.host, bare.port, bare.dbname, bare.sslmode) == ("127.0.0.1", 5432, "u",
                                                                 "prefer")
    assert resolve_conninfo("host=/tmp/sock port=5433 user=u", environ={}).address == (
        "/tmp/sock/.s.PGSQL.5433")
    for bad, message in (("port=0", "port must be"), ("sslmode=maybe", "sslmode must be"),
                         ("connect_timeout=x", "connect_timeout"), ("host=a,b", "several")):
        with pytest.raises(DSNError, match=message):
            resolve_conninfo(bad + " user=u", environ={})


def test_ignore_values() -> None:
    assert _ignored(["unused-group-role", "login-reaches-superuser:alice",
                     "login-reaches-superuser:bob"]) == {
        "unused-group-role": None, "login-reaches-superuser": {"alice", "bob"}}
    assert _ignored(["membership-cycle:x", "membership-cycle"]) == {"membership-cycle": None}
    with pytest.raises(ValueError, match="unknown warning code"):
        _ignored(["no-such-code"])
    with pytest.raises(ValueError, match="subject after the colon"):
        _ignored(["membership-cycle:"])


def test_config_for_a_report_has_no_side_effects(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PGWIRE_GRAPH_PASSWORD", raising=False)
    loaded = load_proxy_for_report(EXAMPLES / "roles.toml", GRAPH)
    chain = loaded.config.middleware
    assert [type(m).__name__ for m in chain] == ["NotAnalysed", "RoleRewrite", "RoleGuard"]
    guard = chain[2]
    assert isinstance(guard, RoleGuard) and guard.graph is not None
    assert guard.graph.current() is GRAPH  # the report's graph: no connection opened
    assert not list(tmp_path.iterdir())  # the audit sink's file was not created
    report = build_report(GRAPH, proxy=loaded)
    assert report.proxy is not None
    assert report.proxy.middleware[0] == "pgwire.middleware.audit:Audit (not analysed)"
    assert report.proxy.guard is not None and report.proxy.guard.policy == "drop_only"

    bad = tmp_path / "bad.toml"
    bad.write_text('[[middleware]]\nclass = "pgwire.middleware.rewrite:RoleRewrite"\n'
                   'mode = "sideways"\n')
    with pytest.raises(ConfigError, match=r"middleware\[0\]\.class.*mode must be"):
        load_proxy_for_report(bad, GRAPH)
    missing = tmp_path / "missing.toml"
    missing.write_text('[[middleware]]\nclass = "no_such_module_x:Thing"\n')
    with pytest.raises(ConfigError, match="cannot import no_such_module_x"):
        load_proxy_for_report(missing, GRAPH)

"""Reading scenario files: every key's checks, the messages that name file and
key, hostile values, and a property: whatever the loader accepts comes back
equal through TOML, and whatever it refuses is a ScenarioError.

No database here: these run in milliseconds.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgwire.proxy.config_file import ConfigError, Override
from pgwire.scenarios import (
    KNOWN_KEYS,
    ClientStep,
    Membership,
    ScenarioError,
    ScenarioFile,
    StatementCheck,
    load_scenario_file,
    parse_scenarios,
    quote_identifier,
    quote_literal,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "scenarios.toml"


def load_text(text: str, **kwargs: Any) -> ScenarioFile:
    return parse_scenarios(tomllib.loads(text), source="t.toml", **kwargs)


def error_of(text: str, **kwargs: Any) -> str:
    with pytest.raises(ScenarioError) as caught:
        load_text(text, **kwargs)
    return str(caught.value)


MINIMAL = """
[[scenario]]
name = "one"
user = "alice"
"""


def test_minimal_file_has_the_documented_defaults() -> None:
    spec = load_text(MINIMAL)
    assert spec.database is None
    assert spec.cluster.auth == "trust" and spec.cluster.ssl is False
    assert spec.proxy == {"auth": {"mode": "passthrough"}}
    assert not spec.pooled
    (scenario,) = spec.scenarios
    assert scenario.name == "one" and scenario.key == "scenario[0]"
    assert scenario.clients == (ClientStep(user="alice"),)
    client = scenario.clients[0]
    assert client.database == "postgres" and client.login == "ok"
    assert client.password is None and dict(client.parameters) == {}


def test_the_example_file_loads() -> None:
    spec = load_scenario_file(EXAMPLE)
    assert spec.pooled
    names = [s.name for s in spec.scenarios]
    assert len(names) == 5
    reuse = spec.scenarios[-1]
    assert len(reuse.clients) == 2 and reuse.clients[1].same_connection is True
    assert {r.name for r in spec.roles} >= {"shop_pool", "shop_app", "shop_reporting"}
    guard = spec.proxy["middleware"][1]
    assert guard["graph"]["address"] == "{upstream}"


def test_full_file_reads_every_key() -> None:
    spec = load_text("""
databases = ["app", { name = "shop", owner = "owner1" }]
setup = ["CREATE TABLE t (x int)", { sql = "SELECT 1", database = "shop" }]

[cluster]
auth = "md5"
ssl = true
settings = { log_min_messages = "warning", max_connections = 50, jit = false }

[roles.owner1]
login = true
password = "pw"
superuser = false
createdb = true
createrole = true
inherit = false
replication = true
bypassrls = true
connection_limit = 5
member_of = ["grp", { role = "other", admin = true, inherit = false, set = true }]
settings = { search_path = "app", statement_timeout = 1000, jit = true }

[proxy.auth]
mode = "proxy"
users = { alice = "secret" }
[proxy.pool]
max_size = 1

[[scenario]]
name = "full"
user = "alice"
password = "secret"
database = "app"
parameters = { application_name = "t", options = "-c work_mem=64kB" }
expect = { login = "ok", session_user = "alice", current_user = "alice" }
[[scenario.statements]]
sql = "SELECT 1, 'x'"
rows = [[1, "x"]]
session_user = "alice"
current_user = "alice"
[[scenario.statements]]
sql = "SET ROLE nobody"
expect = "blocked"
sqlstate = "22023"
[scenario.next]
user = "alice"
password = "secret"
expect = { same_connection = false }
[scenario.next.next]
user = "bob"
expect = { login = "refused", sqlstate = "28P01" }
""")
    assert [d.name for d in spec.databases] == ["app", "shop"]
    assert spec.databases[1].owner == "owner1"
    assert [(s.sql, s.database) for s in spec.setup] == [
        ("CREATE TABLE t (x int)", None), ("SELECT 1", "shop")]
    assert spec.cluster.auth == "md5" and spec.cluster.ssl
    assert dict(spec.cluster.settings) == {"log_min_messages": "warning",
                                           "max_connections": 50, "jit": False}
    (role,) = spec.roles
    assert (role.login, role.createdb, role.createrole, role.inherit, role.replication,
            role.bypassrls, role.connection_limit) == (True, True, True, False, True, True, 5)
    assert role.member_of == (Membership(role="grp"),
                              Membership(role="other", admin=True, inherit=False, set=True))
    assert dict(role.settings) == {"search_path": "app", "statement_timeout": "1000",
                                   "jit": "on"}
    (scenario,) = spec.scenarios
    first, second, third = scenario.clients
    assert first.parameters == {"application_name": "t", "options": "-c work_mem=64kB"}
    assert first.statements == (
        StatementCheck(sql="SELECT 1, 'x'", rows=(("1", "x"),), session_user="alice",
                       current_user="alice"),
        StatementCheck(sql="SET ROLE nobody", expect="blocked", sqlstate="22023"))
    assert second.same_connection is False and second.database == "postgres"
    assert third.login == "refused" and third.sqlstate == "28P01"


# -- mistakes: each names the file, the key, and what was expected ----------------------

@pytest.mark.parametrize(("text", "message"), [
    # unknown keys, with the closest known one
    (MINIMAL + 'usr = "x"\n',
     't.toml: scenario[0].usr: unknown key (did you mean "user"?)'),
    ('scenarios = []\n', 't.toml: scenarios: unknown key (did you mean "scenario"?)'),
    (MINIMAL + 'expect = { same_connection = true }\n',
     "same_connection belongs in the expect table of a [next] client"),
    ('[roles.a]\nlogn = true\n', 't.toml: roles.a.logn: unknown key (did you mean "login"?)'),
    ('[roles.a]\ndatabases = ["x"]\n',
     "if databases is meant as a top-level key, move it above the first [table] header"),
    ('[proxy]\nmidleware = []\n',
     't.toml: proxy.midleware: unknown key (did you mean "middleware"?)'),
    # types
    ('[roles.a]\nlogin = "yes"\n', 't.toml: roles.a.login: expected true or false, got "yes"'),
    ('[roles.a]\nconnection_limit = -2\n',
     "t.toml: roles.a.connection_limit: expected a whole number from -1 to"),
    ('[roles.a]\nmember_of = "grp"\n', "t.toml: roles.a.member_of: expected an array"),
    ('[roles.a]\nmember_of = [{ admin = true }]\n',
     "t.toml: roles.a.member_of[0].role: missing"),
    ('[roles.a]\nmember_of = ["a"]\n', "roles.a.member_of[0]: a role cannot be a member of"),
    ('[roles.a]\nmember_of = ["b", "b"]\n', 'roles.a.member_of[1]: "b" is listed twice'),
    ('roles = ["a"]\n', "t.toml: roles: expected a table of [roles.NAME] tables"),
    ('[cluster]\nauth = "peer"\n', 't.toml: cluster.auth: expected one of "trust"'),
    ('[cluster]\nsettings = { "bad name" = 1 }\n',
     'cluster.settings."bad name": not a PostgreSQL setting name'),
    ('[cluster]\nsettings = { x = "a\\nb" }\n', "control characters"),
    ('databases = [1]\n', "t.toml: databases[0]: expected a table, got 1"),
    ('databases = ["a", "a"]\n', 't.toml: databases[1]: "a" is listed twice'),
    ('setup = ["  "]\n', "t.toml: setup[0]: expected SQL to run, got nothing"),
    ('setup = [{ database = "x" }]\n', "t.toml: setup[0]: expected SQL to run"),
    # required keys
    ('[[scenario]]\nuser = "a"\n', "t.toml: scenario[0].name: missing"),
    ('[[scenario]]\nname = "a"\n', "t.toml: scenario[0].user: missing"),
    ('[[scenario]]\nname = " "\nuser = "a"\n', "scenario[0].name: expected a name"),
    ('[[scenario]]\nname = "a\\nb"\nuser = "a"\n', "control characters"),
    (MINIMAL + MINIMAL, 't.toml: scenario[1].name: "one" is also the name of scenario[0]'),
    (MINIMAL + '[[scenario.statements]]\nexpect = "allowed"\n',
     "t.toml: scenario[0].statements[0].sql: missing"),
    ('scenario = { name = "a" }\n', "t.toml: scenario: expected [[scenario]] tables"),
    # values that contradict each other
    (MINIMAL + 'expect = { login = "refused", current_user = "x" }\n',
     "scenario[0].expect.current_user: a refused login has no session"),
    (MINIMAL + 'expect = { login = "refused" }\nstatements = [{ sql = "SELECT 1" }]\n',
     "scenario[0].statements: a refused login runs no statements"),
    (MINIMAL + 'expect = { sqlstate = "28P01" }\n',
     "scenario[0].expect.sqlstate: only a refused login has a SQLSTATE"),
    (MINIMAL + 'expect = { login = "refused", sqlstate = "28p01" }\n',
     "scenario[0].expect.sqlstate: expected a SQLSTATE"),
    (MINIMAL + 'expect = { login = "maybe" }\n', 'scenario[0].expect.login: expected one of'),
    (MINIMAL + 'statements = [{ sql = "x", sqlstate = "42501" }]\n',
     'scenario[0].statements[0].sqlstate: only a blocked statement has a SQLSTATE'),
    (MINIMAL + 'statements = [{ sql = "x", expect = "blocked", rows = [] }]\n',
     "scenario[0].statements[0].rows: a blocked statement returns no rows"),
    (MINIMAL + 'statements = [{ sql = "x", rows = [[true]] }]\n',
     'scenario[0].statements[0].rows[0][0]: expected a string or a whole number'),
    (MINIMAL + 'statements = [{ sql = "x", rows = ["a"] }]\n',
     'scenario[0].statements[0].rows[0]: expected a row'),
    (MINIMAL + 'statements = [{ sql = "x", expect = "denied" }]\n',
     'scenario[0].statements[0].expect: expected one of "allowed", "blocked"'),
    (MINIMAL + '[scenario.next]\nuser = "b"\nexpect = { same_connection = true }\n',
     "scenario[0].next.expect.same_connection: needs a pool: add [proxy.pool]"),
    (MINIMAL + 'parameters = { user = "x" }\n',
     "scenario[0].parameters.user: give user as the client's own key"),
    (MINIMAL + 'parameters = { application_name = 1 }\n',
     "scenario[0].parameters.application_name: expected a string without NUL"),
    # the database
    ('[database]\naddress = "127.0.0.1:5432"\n[cluster]\nssl = true\n',
     "t.toml: cluster: [cluster] sets up a throwaway cluster, but [database]"),
    ('[database]\nuser = "x"\n', "t.toml: database.address: missing"),
    ('[database]\naddress = "/tmp/sock"\n', "database.address: expected host:port"),
    ('[database]\naddress = "h:99999"\n', "database.address: expected host:port"),
    ('[database]\naddress = "h:1"\nsslmode = "maybe"\n', "database.sslmode: expected one of"),
    ('[database]\naddress = "h:1"\npassword = "a"\npassword_env = "B"\n',
     "database.password: give password or password_env, not both"),
    ('[database]\naddress = "h:1"\npassword_env = "CHK_NOT_SET_ANYWHERE"\n',
     "database.password_env: the environment variable CHK_NOT_SET_ANYWHERE is not set"),
    # the proxy
    ('[proxy]\nlisten = "127.0.0.1:1"\n', "t.toml: proxy.listen: not in a scenario file"),
    ('[proxy]\nupstream = "127.0.0.1:1"\n', "proxy.upstream: not in a scenario file"),
    ('[proxy]\nadapter = "trio"\n', "proxy.adapter: not in a scenario file: choose adapters"),
    ('proxy = 1\n', "t.toml: proxy: expected a table"),
    ('[proxy.auth]\nmode = "both"\n', 't.toml: proxy.auth.mode: expected one of'),
    ('[proxy.pool]\nmax_size = 1\n', "t.toml: proxy.pool: a pool needs [auth]"),
    ('[[proxy.middleware]]\nclass = "no.such.module:X"\n',
     "t.toml: proxy.middleware[0].class: cannot import no.such.module"),
    ('[[proxy.middleware]]\nclass = "pgwire.middleware.rewrite:Nope"\n',
     "proxy.middleware[0].class: pgwire.middleware.rewrite has no Nope"),
    ('[[proxy.middleware]]\nclass = "pgwire.middleware.rewrite:RoleRewrite"\nbogus = 1\n',
     "proxy.middleware[0].class: pgwire.middleware.rewrite:RoleRewrite does not take"),
    ('[[proxy.middleware]]\nmode = "x"\n', 'proxy.middleware[0].class: expected "module:Class"'),
])
def test_mistakes_name_the_key(text: str, message: str) -> None:
    assert message in error_of(text)


def test_errors_are_config_errors_with_parts() -> None:
    with pytest.raises(ConfigError) as caught:  # the proxy file's error type, so one except
        load_text('[roles.a]\nlogin = 1\n')
    error = caught.value
    assert isinstance(error, ScenarioError)
    assert (error.source, error.key) == ("t.toml", "roles.a.login")
    assert error.problem == "expected true or false, got 1"


def test_unreadable_and_non_toml_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"missing\.toml: cannot read the file"):
        load_scenario_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[scenario]\n")
    with pytest.raises(ScenarioError, match=r"bad\.toml: not valid TOML"):
        load_scenario_file(bad)


def test_passwords_from_the_environment() -> None:
    spec = load_text(MINIMAL + 'password_env = "CHK_PW"\n[roles.a]\npassword_env = "CHK_R"\n',
                     environ={"CHK_PW": "from-env", "CHK_R": "role-pw"})
    assert spec.scenarios[0].clients[0].password == "from-env"
    assert spec.roles[0].password == "role-pw"
    assert "role-pw" not in repr(spec) and "from-env" not in repr(spec)


def test_command_line_overrides_name_their_flag() -> None:
    spec = load_text('[cluster]\nssl = true\n' + MINIMAL, overrides=[
        Override("database.address", "127.0.0.1:6000", "--database"),
        Override("database.apply_setup", True, "--apply-setup")])
    assert spec.database is not None and spec.database.address == ("127.0.0.1", 6000)
    assert spec.database.apply_setup
    with pytest.raises(ScenarioError) as caught:
        load_text(MINIMAL, overrides=[Override("database.address", "nohost:x", "--database")])
    assert str(caught.value).startswith("command line: --database: expected host:port")
    with pytest.raises(ScenarioError) as caught:
        load_text(MINIMAL, overrides=[Override("database.user", "x", "--database-user")])
    assert str(caught.value) == ("command line: --database-user: t.toml has no [database]: "
                                 "give its address with --database HOST:PORT")


# -- hostile values -----------------------------------------------------------------------

def test_names_that_look_like_sql_are_just_names() -> None:
    name = 'a"; drop role x; --'
    spec = load_text(f'[roles.{json.dumps(name)}]\nlogin = true\npassword = "it\'s \\\\ x"\n'
                     f'member_of = [{json.dumps(name + "2")}]\n')
    assert spec.roles[0].name == name
    assert quote_identifier(name) == '"a""; drop role x; --"'
    assert quote_literal("it's \\ x") == "E'it''s \\\\ x'"


@pytest.mark.parametrize(("text", "message"), [
    ('[roles."a\\u0000b"]\n', 'roles."a\\u0000b": a role name contains a NUL character'),
    ('[roles.pg_mine]\n', 'roles.pg_mine: role names beginning with "pg_" are reserved'),
    ('[roles.PG_mine]\n', 'role names beginning with "pg_" are reserved'),
    ('[roles.' + "x" * 64 + ']\n', "a role name is longer than 63 bytes"),
    ('[roles."' + "é" * 32 + '"]\n', "a role name is longer than 63 bytes"),
    ('[roles.""]\n', "expected a role name, got an empty string"),
    ('[roles.a]\npassword = "a\\u0000"\n', "roles.a.password: contains a NUL character"),
    (MINIMAL.replace('"alice"', '"al\\u0000ice"'), "scenario[0].user: a user name contains a NUL"),
    (MINIMAL + 'statements = [{ sql = "SELECT \\u0000" }]\n',
     "scenario[0].statements[0].sql: contains a NUL character"),
    ('setup = ["SELECT \\u0000"]\n', "setup[0]: contains a NUL character"),
    (MINIMAL + 'parameters = { "a\\u0000" = "b" }\n', "expected a parameter name without NUL"),
])
def test_hostile_values_are_refused_clearly(text: str, message: str) -> None:
    assert message in error_of(text)


def test_huge_values_are_accepted_where_postgresql_takes_them() -> None:
    sql = "SELECT '" + "x" * 2_000_000 + "'"
    spec = load_text(MINIMAL + f"statements = [{{ sql = {json.dumps(sql)} }}]\n")
    assert spec.scenarios[0].clients[0].statements[0].sql == sql
    name = "é" * 31  # 62 bytes: fits
    assert load_text(f'[roles."{name}"]\n').roles[0].name == name


# -- the property: accepted files round-trip, refused ones raise ScenarioError only -----

def to_toml(data: dict[str, Any]) -> str:
    """A tiny TOML writer for the data these tests make (inline tables only)."""
    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int):
            return str(item)
        if isinstance(item, float):
            return repr(item) if math.isfinite(item) else ("nan" if math.isnan(item) else
                                                           ("inf" if item > 0 else "-inf"))
        if isinstance(item, str):
            return string(item)
        if isinstance(item, list):
            return "[" + ", ".join(value(v) for v in item) + "]"
        assert isinstance(item, dict)
        return "{" + ", ".join(f"{string(k)} = {value(v)}" for k, v in item.items()) + "}"

    def string(text: str) -> str:  # JSON escapes suit TOML, but DEL must be escaped too
        return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")
    return "".join(f"{string(key)} = {value(item)}\n" for key, item in data.items())


NAMES = st.text(st.characters(codec="utf-8"), min_size=0, max_size=12)
HOSTILE = st.sampled_from(['a"; drop role x; --', "O'Brien", "\\", "é" * 31, "x" * 64,
                           "pg_x", "", " ", "a\nb", "a\x00b", "{upstream}", "ROLE"])
GOOD = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1,
               max_size=10).filter(lambda t: t.strip() and not t.lower().startswith("pg_"))
TEXTS = st.one_of(GOOD, GOOD, GOOD, GOOD, GOOD, GOOD, NAMES, HOSTILE)
SCALARS = st.one_of(TEXTS, st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False))
ALL_KEYS = sorted({k for keys in KNOWN_KEYS.values() for k in keys} | {"usr", "rows2"})


def junk(depth: int = 2) -> st.SearchStrategy[Any]:
    if depth == 0:
        return SCALARS
    inner = junk(depth - 1)
    return st.one_of(SCALARS, st.lists(inner, max_size=3),
                     st.dictionaries(st.sampled_from(ALL_KEYS) | TEXTS, inner, max_size=4))


statements = st.lists(st.fixed_dictionaries(
    {"sql": TEXTS},
    optional={"expect": st.sampled_from(["allowed", "blocked", "nope"]),
              "sqlstate": st.sampled_from(["42501", "28P01", "4250"]),
              "rows": st.lists(st.lists(st.one_of(TEXTS, st.integers()), max_size=3),
                               max_size=3),
              "current_user": TEXTS, "session_user": TEXTS}), max_size=3)

client_tables = st.fixed_dictionaries(
    {"user": TEXTS},
    optional={"password": TEXTS, "database": TEXTS,
              "parameters": st.dictionaries(TEXTS, TEXTS, max_size=2),
              "expect": st.fixed_dictionaries({}, optional={
                  "login": st.sampled_from(["ok", "refused"]),
                  "sqlstate": st.sampled_from(["28P01", "bad"]),
                  "session_user": TEXTS, "current_user": TEXTS,
                  "same_connection": st.booleans()}),
              "statements": statements})

scenario_files = st.fixed_dictionaries({}, optional={
    "cluster": st.fixed_dictionaries({}, optional={
        "auth": st.sampled_from(["trust", "md5", "scram-sha-256", "peer"]),
        "ssl": st.booleans(),
        "settings": st.dictionaries(st.sampled_from(["work_mem", "bad name", "jit"]), SCALARS,
                                    max_size=2)}),
    "roles": st.dictionaries(TEXTS, st.fixed_dictionaries({}, optional={
        "login": st.booleans(), "password": TEXTS, "inherit": st.booleans(),
        "connection_limit": st.integers(-2, 5),
        "member_of": st.lists(st.one_of(TEXTS, st.fixed_dictionaries(
            {"role": TEXTS}, optional={"admin": st.booleans(), "set": st.booleans()})),
            max_size=2),
        "settings": st.dictionaries(st.sampled_from(["role", "search_path"]), SCALARS,
                                    max_size=2)}), max_size=3),
    "databases": st.lists(st.one_of(TEXTS, st.fixed_dictionaries(
        {"name": TEXTS}, optional={"owner": TEXTS})), max_size=2),
    "setup": st.lists(st.one_of(TEXTS, st.fixed_dictionaries(
        {"sql": TEXTS}, optional={"database": TEXTS})), max_size=2),
    "proxy": st.sampled_from([{}, {"auth": {"mode": "passthrough"}},
                              {"auth": {"mode": "proxy", "users": {"a": "b"}},
                               "pool": {"max_size": 1}},
                              {"pool": {"max_size": 1}}, {"listen": "x"}]),
    "scenario": st.lists(st.builds(
        lambda name, client, following: {"name": name, **client,
                                         **({"next": following} if following else {})},
        TEXTS, client_tables, st.none() | client_tables), max_size=3),
})


@st.composite
def valid_files(draw: st.DrawFn) -> dict[str, Any]:
    """Files the loader must accept: every value within its rules."""
    names = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")),
                    min_size=1, max_size=8).filter(
        lambda t: t.strip() and not t.lower().startswith("pg_") and len(t.encode()) <= 63)
    sqlstates = st.sampled_from(["42501", "28P01", "0A000", "XX000"])
    pooled = draw(st.booleans())
    data: dict[str, Any] = {}
    roles = draw(st.lists(names, unique=True, max_size=3))
    data["roles"] = {}
    for role in roles:
        groups = draw(st.lists(names.filter(role.__ne__), unique=True, max_size=2))
        data["roles"][role] = {
            "login": draw(st.booleans()), "password": draw(names),
            "connection_limit": draw(st.integers(-1, 9)),
            "member_of": [draw(st.sampled_from([g, {"role": g, "admin": True},
                                                 {"role": g, "set": False}])) for g in groups],
            "settings": draw(st.dictionaries(st.sampled_from(["role", "search_path"]),
                                             st.one_of(names, st.integers(), st.booleans()),
                                             max_size=2))}
    data["databases"] = draw(st.lists(st.one_of(names, st.builds(
        lambda n, o: {"name": n, "owner": o}, names, names)), max_size=2,
        unique_by=lambda d: d if isinstance(d, str) else d["name"]))
    data["setup"] = draw(st.lists(st.one_of(names, st.builds(
        lambda q, d: {"sql": q, "database": d}, names, names)), max_size=2))
    data["cluster"] = {"auth": draw(st.sampled_from(["trust", "md5", "password"])),
                       "settings": draw(st.dictionaries(st.sampled_from(["work_mem", "jit"]),
                                                        st.one_of(names, st.integers()),
                                                        max_size=2))}
    data["proxy"] = ({"auth": {"mode": "proxy", "users": {"a": "b"}}, "pool": {"max_size": 1}}
                     if pooled else {"auth": {"mode": "passthrough"}})

    def client(first: bool, before_ok: bool) -> dict[str, Any]:
        table: dict[str, Any] = {"user": draw(names), "database": draw(names),
                                 "parameters": draw(st.dictionaries(
                                     names.filter(lambda n: n not in ("user", "database")),
                                     names, max_size=2))}
        refused = draw(st.booleans())
        if refused:
            table["expect"] = {"login": "refused", "sqlstate": draw(sqlstates)}
            return table
        expect: dict[str, Any] = {"session_user": draw(names), "current_user": draw(names)}
        if pooled and not first and before_ok:
            expect["same_connection"] = draw(st.booleans())
        table["expect"] = expect
        table["statements"] = [
            draw(st.sampled_from([
                {"sql": draw(names), "expect": "blocked", "sqlstate": draw(sqlstates)},
                {"sql": draw(names), "rows": draw(st.lists(st.lists(
                    st.one_of(names, st.integers()), max_size=2), max_size=2)),
                 "current_user": draw(names)}]))
            for _ in range(draw(st.integers(0, 2)))]
        return table

    scenarios = []
    for name in draw(st.lists(names, unique=True, max_size=3)):
        first = client(True, True)
        table = {"name": name, **first}
        if draw(st.booleans()):
            ok = first["expect"].get("login") != "refused"
            table["next"] = client(False, ok)
        scenarios.append(table)
    data["scenario"] = scenarios
    return data


def check_round_trip(data: dict[str, Any]) -> None:
    text = to_toml(data)
    try:
        spec = parse_scenarios(tomllib.loads(text), source="p.toml")
    except ScenarioError as exc:
        assert exc.source in ("p.toml", "command line")
        return
    again = parse_scenarios(tomllib.loads(to_toml(spec.to_data())), source="p.toml")
    assert again == spec


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario_files)
def test_accepted_files_round_trip_and_the_rest_raise_scenario_error(
        data: dict[str, Any]) -> None:
    check_round_trip(data)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(ALL_KEYS) | TEXTS, junk(), max_size=5))
def test_any_structure_gives_a_file_or_a_scenario_error(data: dict[str, Any]) -> None:
    check_round_trip(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_files())
def test_valid_files_are_accepted_and_round_trip(data: dict[str, Any]) -> None:
    spec = parse_scenarios(tomllib.loads(to_toml(data)), source="p.toml")
    assert len(spec.scenarios) == len(data["scenario"])
    assert [r.name for r in spec.roles] == list(data["roles"])
    again = parse_scenarios(tomllib.loads(to_toml(spec.to_data())), source="p.toml")
    assert again == spec


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(scenario_files, valid_files()))
def test_round_trip_long_run(data: dict[str, Any]) -> None:
    check_round_trip(data)


def test_the_example_round_trips() -> None:
    spec = load_scenario_file(EXAMPLE)
    again = parse_scenarios(tomllib.loads(to_toml(spec.to_data())), source=str(EXAMPLE),
                            base_dir=EXAMPLE.parent)
    assert again == spec


def test_every_key_is_documented() -> None:
    page = (EXAMPLE.parents[1] / "docs" / "scenarios.md").read_text()
    for table, keys in KNOWN_KEYS.items():
        for key in keys:
            assert f"`{key}`" in page, (table, key)
    assert '--8<-- "examples/scenarios.toml"' in page  # the example, included whole

"""Scenario files the live tests share, pointed at the session's PostgreSQL.

Every role and database is named ``chk_...`` (the cluster is shared with the
whole suite); :func:`drop_everything` removes them again.
"""

from __future__ import annotations

import json

from pgwire.scenarios import quote_identifier
from pgwire.sqlclient import SQLConnection
from pgwire.testing.cluster import PostgresCluster

#: A role name that would be an injection if anything built SQL without quoting.
HOSTILE_ROLE = 'chk_a"; drop role chk_victim; --'
HOSTILE_PASSWORD = "it's \\ a 'secret'"
PASSWORD_ENV = "CHK_PG_PASSWORD"


def database_table(cluster: PostgresCluster, *, apply_setup: bool = True) -> str:
    return f"""
[database]
address = "{cluster.host}:{cluster.port}"
user = "{cluster.superuser}"
password_env = "{PASSWORD_ENV}"
sslmode = "disable"
apply_setup = {"true" if apply_setup else "false"}
"""


#: Roles, a database and a proxy like examples/scenarios.toml, on the shared cluster.
POOLED_SETUP = """
databases = [{ name = "chk_shop", owner = "chk_app" }]
setup = [{ database = "chk_shop", sql = \"\"\"
    CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY);
    INSERT INTO items VALUES (1), (2) ON CONFLICT DO NOTHING;
    ALTER TABLE items OWNER TO chk_app;
    GRANT SELECT ON items TO chk_readonly;
\"\"\" }]

[roles.chk_pool]
login = true
password = "chk-pool-pw"
inherit = false
member_of = ["chk_reporting", "chk_app"]
[roles.chk_readonly]
[roles.chk_reporting]
member_of = ["chk_readonly"]
[roles.chk_app]
member_of = ["chk_readonly"]
[roles.chk_graph]
login = true
password = "chk-graph-pw"

[proxy.auth]
mode = "proxy"
method = "scram-sha-256"
upstream_password = "chk-pool-pw"
users = { alice = "alice-pw", carol = "carol-pw", bob = "bob-pw" }

[proxy.pool]
mode = "transaction"
max_size = 1

[[proxy.middleware]]
class = "pgwire.middleware.rewrite:RoleRewrite"
mode = "set_role"
login_role = "chk_pool"
rules = [{ user = "alice", role = "chk_reporting" }, { user = "carol", role = "chk_reporting" },
         { user = "bob", role = "chk_app" }]

[[proxy.middleware]]
class = "pgwire.middleware.roles:RoleGuard"
policy = "drop_only"
graph = { address = "{upstream}", user = "chk_graph", password = "chk-graph-pw" }
"""

PASSING_SCENARIOS = """
[[scenario]]
name = "alice maps to reporting"
user = "alice"
password = "alice-pw"
database = "chk_shop"
expect = { session_user = "chk_pool", current_user = "chk_reporting" }
statements = [
    { sql = "SELECT id FROM items ORDER BY id", rows = [["1"], [2]] },
    { sql = "SET ROLE chk_pool", expect = "blocked", sqlstate = "42501" },
    { sql = "SET ROLE chk_readonly", current_user = "chk_readonly", session_user = "chk_pool" },
  { sql = "SELECT coalesce(NULL, 'n'), '', 'a,\\"b\\"\\nc'", rows = [["n", "", "a,\\"b\\"\\nc"]] },
]

[[scenario]]
name = "bob is refused with a wrong password"
user = "bob"
password = "not-bob-pw"
database = "chk_shop"
expect = { login = "refused" }

[[scenario]]
name = "a dropped role does not reach the next client"
user = "alice"
password = "alice-pw"
database = "chk_shop"
statements = [{ sql = "SET ROLE chk_readonly", current_user = "chk_readonly" }]
[scenario.next]
user = "carol"
password = "carol-pw"
database = "chk_shop"
expect = { same_connection = true, session_user = "chk_pool", current_user = "chk_reporting" }
"""

#: Every scenario but the last fails, each in its own way; the comment says how.
FAILING_SCENARIOS = """
[[scenario]]  # 0: the wrong role
name = "wrong current user"
user = "alice"
password = "alice-pw"
database = "chk_shop"
expect = { current_user = "chk_app" }

[[scenario]]  # 1: allowed, but the guard blocks it
name = "allowed but blocked"
user = "bob"
password = "bob-pw"
database = "chk_shop"
statements = [{ sql = "SELECT 1" }, { sql = "SET ROLE chk_pool", expect = "allowed" },
              { sql = "SELECT 1", expect = "blocked" }]

[[scenario]]  # 2: blocked, but it runs
name = "blocked but allowed"
user = "bob"
password = "bob-pw"
database = "chk_shop"
statements = [{ sql = "SELECT 1", expect = "blocked" }]

[[scenario]]  # 3: blocked, with another SQLSTATE
name = "wrong sqlstate"
user = "bob"
password = "bob-pw"
database = "chk_shop"
statements = [{ sql = "SET ROLE chk_pool", expect = "blocked", sqlstate = "0A000" }]

[[scenario]]  # 4: other rows
name = "wrong rows"
user = "bob"
password = "bob-pw"
database = "chk_shop"
statements = [{ sql = "SELECT id FROM items ORDER BY id", rows = [["1"], ["3"]] }]

[[scenario]]  # 5: refused expected, but the login works
name = "login expected refused"
user = "bob"
password = "bob-pw"
database = "chk_shop"
expect = { login = "refused" }

[[scenario]]  # 6: a login expected to work is refused
name = "login expected ok"
user = "bob"
password = "wrong"
database = "chk_shop"

[[scenario]]  # 7: another pool key, so another connection
name = "same connection across pool keys"
user = "alice"
password = "alice-pw"
database = "chk_shop"
[scenario.next]
user = "alice"
password = "alice-pw"
database = "chk_shop"
parameters = { application_name = "another key" }
expect = { same_connection = true }

[[scenario]]  # 8: passes
name = "this one passes"
user = "bob"
password = "bob-pw"
database = "chk_shop"
expect = { current_user = "chk_app" }
"""

#: The failure each failing scenario must report: (key, expected, start of actual).
EXPECTED_FAILURES = [
    ("scenario[0].expect.current_user", 'current_user "chk_app"', 'current_user "chk_reporting"'),
    ("scenario[1].statements[1].expect", "allowed", "blocked (42501: "),
    ("scenario[2].statements[0].expect", "blocked", "allowed (1 rows)"),
    ("scenario[3].statements[0].sqlstate", "0A000", "42501: "),
    ("scenario[4].statements[0].rows", '[["1"], ["3"]]', '[["1"], ["2"]]'),
    ("scenario[5].expect.login", "login refused", "login ok"),
    ("scenario[6].expect.login", "login ok", "login refused ("),
    ("scenario[7].next.expect.same_connection", "the backend of the client before (pid ",
     "backend pid "),
]

#: Passthrough to the server as the client's own role: the hostile name logs in.
HOSTILE = f"""
[roles.{json.dumps(HOSTILE_ROLE)}]
login = true
password = {json.dumps(HOSTILE_PASSWORD)}
[roles.chk_victim]

[[scenario]]
name = "a role name full of SQL is only a name"
user = {json.dumps(HOSTILE_ROLE)}
password = "ignored under trust"
expect = {{ session_user = {json.dumps(HOSTILE_ROLE)} }}
[[scenario.statements]]
sql = "SELECT current_user, (SELECT count(*) FROM pg_roles WHERE rolname = 'chk_victim')"
rows = [[{json.dumps(HOSTILE_ROLE)}, 1]]
"""


def drop_everything(cluster: PostgresCluster) -> None:
    """Remove the chk_ databases and roles (owned objects first)."""
    with SQLConnection.connect((cluster.host, cluster.port), user=cluster.superuser,
                               password=cluster.superuser_password) as conn:
        for (name,) in conn.query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'chk\\_%'"):
            assert name is not None
            conn.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)} WITH (FORCE)")
        roles = [name for (name,) in conn.query(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'chk\\_%'") if name is not None]
        if roles:
            listed = ", ".join(quote_identifier(r) for r in roles)
            conn.execute(f"DROP OWNED BY {listed}")
            conn.execute(f"DROP ROLE {listed}")

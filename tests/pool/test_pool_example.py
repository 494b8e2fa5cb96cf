"""examples/pool.toml, run as documented: ``pgwire proxy --config`` in a
subprocess in front of the session's PostgreSQL, psql through it, psql
against its admin console, a GET of its metrics, and SIGTERM.

The example keeps no password: its users are SCRAM secrets. The roles are
created here with those very secrets, and a pg_hba.conf line makes the server
ask the two login roles for SCRAM, so every login of the pool upstream must
use the keys its client's own SCRAM login revealed to the proxy. The copy
the proxy runs differs from the example in its addresses only.

Roles (prefix ``shop_``, unique to this module): the ones the example's
header names, plus ``shop_owner`` (BYPASSRLS, granted to ``shop_app``), a
role the example's RoleGuard must refuse to switch to.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import psycopg.errors
import pytest

from pgwire.auth import ScramSecret, password_type
from pgwire.middleware.roles import RoleGuard
from pgwire.proxy import DEFAULT_SESSION_STATE, ProxyAuth
from pgwire.proxy.config_file import load_config
from pgwire.testing.cluster import PostgresCluster
from tests.interop.proxy_wire import read_line, wait_until

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "pool.toml"
APP, REPORT, READONLY, OWNER, GRAPH = (
    "shop_app", "shop_report", "shop_readonly", "shop_owner", "shop_role_graph")
#: The demo passwords the example's comments give for its secrets.
PASSWORDS = {APP: "shop-app-demo-password", REPORT: "shop-report-demo-password"}
OPS_PASSWORD = "ops-demo-password"
HBA_LINE = f"host all {APP},{REPORT} 127.0.0.1/32 scram-sha-256  # pgwire pool example\n"
ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "PGCLIENTENCODING": "UTF8",
       "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"}
#: The lines of the example that name addresses, and what the copy has instead
#: ({upstream}: the test cluster; port 0: a free port, which the proxy prints).
ADDRESS_LINES = {
    'listen = ["127.0.0.1:6432"]': 'listen = ["127.0.0.1:0"]',
    'upstream = "127.0.0.1:5432"': 'upstream = "{upstream}"',
    'graph = { address = "127.0.0.1:5432", ': 'graph = { address = "{upstream}", ',
    'listen = "127.0.0.1:6433"': 'listen = "127.0.0.1:0"',
    'listen = "127.0.0.1:9127"': 'listen = "127.0.0.1:0"',
}


def example_secrets() -> dict[str, str]:
    with EXAMPLE.open("rb") as file:
        users: dict[str, str] = tomllib.load(file)["auth"]["users"]
    return users


# -- the file itself ---------------------------------------------------------------------


def test_the_example_loads_unchanged_as_a_role_safe_transaction_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGWIRE_GRAPH_PASSWORD", "unused")
    settings = load_config(EXAMPLE)
    config = settings.config
    pool = config.pool
    assert pool is not None
    assert (pool.mode, pool.max_size, pool.min_idle, pool.checkout_timeout) == (
        "transaction", 20, 2, 10.0)
    assert dict(pool.session_state) == {**DEFAULT_SESSION_STATE, "role": "refuse"}
    assert isinstance(config.auth, ProxyAuth)
    assert config.auth.method == "scram-sha-256"
    assert config.auth.upstream_user is None and config.auth.upstream_password is None
    # No password in the file: SCRAM secrets only, of the documented demo passwords.
    assert set(config.auth.users) == set(PASSWORDS)
    for user, secret in config.auth.users.items():
        assert password_type(secret) == "scram-sha-256", user
        parsed = ScramSecret.parse(secret)
        assert ScramSecret.from_password(PASSWORDS[user], salt=parsed.salt,
                                         iterations=parsed.iterations) == parsed, user
    assert settings.admin is not None and set(settings.admin.users) == {"ops"}
    ops = ScramSecret.parse(settings.admin.users["ops"])
    assert ScramSecret.from_password(OPS_PASSWORD, salt=ops.salt,
                                     iterations=ops.iterations) == ops
    assert [type(m) for m in config.middleware] == [RoleGuard]
    guard = config.middleware[0]
    assert isinstance(guard, RoleGuard) and guard.policy == "drop_only"
    assert settings.listen == (("127.0.0.1", 6432),)
    assert config.upstream == ("127.0.0.1", 5432)
    assert settings.admin.listen == ("127.0.0.1", 6433)
    assert settings.metrics_listen == ("127.0.0.1", 9127)
    assert settings.auth_summary == "proxy auth scram-sha-256, transaction pool of 20"
    text = EXAMPLE.read_text()
    for line in ADDRESS_LINES:  # what the copy below rewrites is there, once
        assert text.count(line) == 1, line


# -- the example running ----------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_cluster(pg_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """``pg_cluster`` with the example's roles, their passwords the example's
    secrets, and SCRAM required of the two login roles."""
    secrets = example_secrets()
    _drop_roles(pg_cluster)
    pg_cluster.sql(f"""
        CREATE ROLE {READONLY} NOLOGIN;
        CREATE ROLE {OWNER} NOLOGIN BYPASSRLS;
        CREATE ROLE {APP} LOGIN PASSWORD '{secrets[APP]}';
        GRANT {READONLY} TO {APP};
        GRANT {OWNER} TO {APP};
        CREATE ROLE {REPORT} LOGIN PASSWORD '{secrets[REPORT]}';
        CREATE ROLE {GRAPH} LOGIN;
    """)
    hba = pg_cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(HBA_LINE + original)  # rewriting in place keeps owner and mode
    try:
        pg_cluster.sql("SELECT pg_reload_conf()")
        wait_until(lambda: _asks_for_a_password(pg_cluster),
                   "the server to ask the example's roles for passwords")
        yield pg_cluster
    finally:
        hba.write_text(original)
        pg_cluster.sql("SELECT pg_reload_conf()")
        _drop_roles(pg_cluster)


def _drop_roles(cluster: PostgresCluster) -> None:
    cluster.sql(f"DROP ROLE IF EXISTS {APP}, {REPORT}, {READONLY}, {OWNER}, {GRAPH}")


def _asks_for_a_password(cluster: PostgresCluster) -> bool:
    try:
        psycopg.connect(host=cluster.host, port=cluster.port, user=APP, dbname="postgres",
                        password="not-the-password", sslmode="disable",
                        connect_timeout=10).close()
    except psycopg.OperationalError:
        return True
    return False


@dataclass
class ExampleProxy:
    process: subprocess.Popen[str]
    port: int
    admin_port: int
    metrics_url: str
    stderr: str | None = None

    def stop(self) -> str:
        """SIGTERM, as a service manager would; the proxy drains and exits 0.
        Returns what it wrote to stderr."""
        if self.stderr is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                _, self.stderr = self.process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                _, self.stderr = self.process.communicate()
                pytest.fail(f"still running 30 s after SIGTERM; stderr:\n{self.stderr}")
        assert self.process.returncode == 0, self.stderr
        return self.stderr



@pytest.fixture
def example_proxy(shop_cluster: PostgresCluster, tmp_path: Path) -> Iterator[ExampleProxy]:
    upstream = f"{shop_cluster.host}:{shop_cluster.port}"
    text = EXAMPLE.read_text()
    for line, replacement in ADDRESS_LINES.items():
        assert text.count(line) == 1, line
        text = text.replace(line, replacement.replace("{upstream}", upstream))
    config = tmp_path / "pool.toml"
    config.write_text(text)
    process = subprocess.Popen(
        [sys.executable, "-m", "pgwire", "proxy", "--config", str(config)],
        cwd=tmp_path, env={**ENV, "PGWIRE_GRAPH_PASSWORD": "unused-with-trust",
                           "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    try:
        port = read_line(process, r"^pgwire proxy listening on 127\.0\.0\.1:(\d+), upstream "
                                   r"\S+ \(proxy auth scram-sha-256, transaction pool of 20, "
                                   r"asyncio\)$").group(1)
        admin = read_line(process, r"^pgwire admin console listening on "
                                    r"127\.0\.0\.1:(\d+)$").group(1)
        metrics = read_line(process, r"^pgwire metrics listening on "
                                      r"(http://127\.0\.0\.1:\d+/metrics)$").group(1)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.communicate()
        raise
    proxy = ExampleProxy(process, int(port), int(admin), metrics)
    try:
        yield proxy
    finally:
        proxy.stop()


def psql_program(cluster: PostgresCluster) -> str:
    program = cluster.bindir / "psql"
    found = str(program) if program.exists() else shutil.which("psql")
    assert found, "psql is needed (it comes with the PostgreSQL client)"
    return found


def psql(cluster: PostgresCluster, port: int, *commands: str, user: str = APP,
         password: str | None = None, database: str = "postgres",
         ) -> subprocess.CompletedProcess[str]:
    """psql -c each command, unaligned, tuples only, SQLSTATEs in its errors."""
    argv = [psql_program(cluster), "-X", "-A", "-t", "-F", "|", "-v", "VERBOSITY=verbose",
            "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", database]
    for command in commands:
        argv += ["-c", command]
    secret = PASSWORDS[user] if password is None else password
    return subprocess.run(argv, capture_output=True, text=True, encoding="utf-8",
                          timeout=30, check=False, env={**ENV, "PGPASSWORD": secret})


def test_clients_take_turns_on_the_pools_backends_as_their_own_role(
    shop_cluster: PostgresCluster, example_proxy: ExampleProxy,
) -> None:
    seen: list[tuple[str, str, str]] = []
    # min_idle = 2: with one client at a time the pool opens at most three
    # connections, so four clients in turn share at least one backend.
    for _ in range(4):
        result = psql(shop_cluster, example_proxy.port,
                      "SELECT pg_backend_pid(), current_user, session_user")
        assert result.returncode == 0, result.stderr
        pid, current, session = result.stdout.strip().split("|")
        seen.append((pid, current, session))
    assert {(current, session) for _, current, session in seen} == {(APP, APP)}
    pids = [pid for pid, _, _ in seen]
    assert len(set(pids)) < len(pids), pids
    # Another user: a pool key (and backends) of its own.
    report = psql(shop_cluster, example_proxy.port, "SELECT pg_backend_pid(), current_user",
                  user=REPORT)
    assert report.returncode == 0, report.stderr
    pid, current = report.stdout.strip().split("|")
    assert current == REPORT and pid not in pids
    # The proxy checks passwords itself.
    wrong = psql(shop_cluster, example_proxy.port, "SELECT 1", password="wrong")
    assert wrong.returncode != 0
    assert f'password authentication failed for user "{APP}"' in wrong.stderr


def test_set_role_is_refused_and_set_local_role_is_guarded(
    shop_cluster: PostgresCluster, example_proxy: ExampleProxy,
) -> None:
    result = psql(shop_cluster, example_proxy.port,
                  f"SET ROLE {READONLY}",
                  "SELECT current_user",
                  f"BEGIN; SET LOCAL ROLE {READONLY}; SELECT current_user; COMMIT",
                  "BEGIN", f"SET LOCAL ROLE {OWNER}", "ROLLBACK",
                  "SELECT current_user")
    assert result.stdout.split() == [APP, "BEGIN", "SET", READONLY, "COMMIT",
                                     "BEGIN", "ROLLBACK", APP]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert errors == [
        "ERROR:  0A000: SET ROLE / SESSION AUTHORIZATION is not allowed through this "
        "transaction-mode pool",
        f'ERROR:  42501: permission denied to set role "{OWNER}"',
    ], result.stderr
    assert "pgwire role guard, policy drop_only" in result.stderr
    # The same through psycopg: the SQLSTATE of the pool's refusal.
    with psycopg.connect(host="127.0.0.1", port=example_proxy.port, user=APP,
                         password=PASSWORDS[APP], dbname="postgres", sslmode="disable",
                         connect_timeout=10, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
            conn.execute(f"SET ROLE {READONLY}")
        assert refused.value.sqlstate == "0A000"
        row = conn.execute("SELECT current_user").fetchone()
        assert row == (APP,)


def test_the_console_and_the_metrics_watch_the_pool_and_sigterm_exits_0(
    shop_cluster: PostgresCluster, example_proxy: ExampleProxy,
) -> None:
    queries = psql(shop_cluster, example_proxy.port, "SELECT 1", "SELECT 2",
                   f"SET ROLE {READONLY}")
    assert queries.stdout.split() == ["1", "2"], queries.stderr
    pools = psql(shop_cluster, example_proxy.admin_port, "SHOW POOLS", user="ops",
                 password=OPS_PASSWORD, database="pgwire")
    assert pools.returncode == 0, pools.stderr
    rows = [line.split("|") for line in pools.stdout.splitlines()]
    assert [row[:3] for row in rows] == [[APP, "postgres", "transaction"]], rows
    wrong = psql(shop_cluster, example_proxy.admin_port, "SHOW POOLS", user="ops",
                 password="wrong", database="pgwire")
    assert 'password authentication failed for user "ops"' in wrong.stderr
    with urllib.request.urlopen(example_proxy.metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    labels = f'{{user="{APP}",database="postgres",mode="transaction"}}'

    def value(name: str) -> float:
        found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", metrics, re.MULTILINE)
        assert found is not None, f"{name} not in\n{metrics}"
        return float(found.group(1))

    assert value("pgwire_pool_checkouts_total") >= 2  # two queries, at least
    assert value("pgwire_pool_refused_statements_total") == 1
    assert value("pgwire_pool_failed_verifications_total") == 0
    assert re.search(r"^pgwire_internal_errors_total 0$", metrics, re.MULTILINE), metrics
    stderr = example_proxy.stop()
    assert "Traceback" not in stderr, stderr

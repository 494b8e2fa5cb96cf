"""``pgwire proxy`` with a pool, an admin console and metrics: the TOML tables
``[pool]``, ``[admin]`` and ``[metrics]``, their flags, and the command itself.

The configuration tests read real files from ``tmp_path`` and compare whole
error messages. The command tests start ``python -m pgwire proxy`` in front
of the session's PostgreSQL for each adapter, use it with psql, ask its admin
console and its metrics endpoint what happened, and stop it with SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pgwire.auth import scram_sha_256_secret
from pgwire.cli import _build_parser, main, proxy_overrides
from pgwire.proxy import DEFAULT_SESSION_STATE, PoolConfig, ProxyAuth
from pgwire.proxy.config_file import (
    KNOWN_KEYS,
    AdminSettings,
    ConfigError,
    Override,
    load_config,
    parse_config,
)
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.proxy import ADAPTERS
from tests.interop.proxy_wire import read_line

ROOT = Path(__file__).resolve().parent.parent
PROXY_AUTH = 'upstream = "127.0.0.1:5432"\n[auth]\nmode = "proxy"\n[auth.users]\napp = "pw"\n'
ADMIN = '[admin]\nlisten = "127.0.0.1:6433"\n[admin.users]\nops = "ops-pw"\n'


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pgwire.toml"
    path.write_text(text)
    return path


def config_error(tmp_path: Path, text: str, overrides: tuple[Override, ...] = ()) -> str:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides=overrides)
    return str(caught.value).removeprefix(f"{path}: ")


# -- the tables --------------------------------------------------------------------------


def test_every_pool_setting_and_the_consoles_load_from_the_file(tmp_path: Path) -> None:
    secret = scram_sha_256_secret("ops-pw")
    settings = load_config(write_config(tmp_path, PROXY_AUTH + f"""
[pool]
mode = "session"
max_size = 5
min_idle = 2
checkout_timeout = 2.5
health_check_after = 10
server_idle_timeout = 0
server_lifetime = 120
reset = "discard_all"
maintenance_interval = 0.5

[pool.session_state]
settings = "refuse"
temp = "reset"

[admin]
listen = "[::1]:7001"
users = {{ ops = "{secret}", viewer = "plain-pw" }}

[metrics]
listen = "127.0.0.1:9100"
"""))
    pool = settings.config.pool
    assert pool == PoolConfig(
        mode="session", max_size=5, min_idle=2, checkout_timeout=2.5, health_check_after=10.0,
        server_idle_timeout=None, server_lifetime=120.0, reset="discard_all",
        maintenance_interval=0.5,
        session_state={**DEFAULT_SESSION_STATE, "settings": "refuse", "temp": "reset"})
    assert settings.admin == AdminSettings(listen=("::1", 7001),
                                           users={"ops": secret, "viewer": "plain-pw"})
    assert "plain-pw" not in repr(settings.admin) and secret not in repr(settings.admin)
    assert settings.metrics_listen == ("127.0.0.1", 9100)
    assert settings.auth_summary == "proxy auth scram-sha-256, session pool of 5"


def test_an_empty_pool_table_turns_the_pool_on_with_the_defaults(tmp_path: Path) -> None:
    settings = load_config(write_config(tmp_path, PROXY_AUTH + "[pool]\n"))
    assert settings.config.pool == PoolConfig()
    assert (settings.admin, settings.metrics_listen) == (None, None)
    assert load_config(write_config(tmp_path, PROXY_AUTH)).config.pool is None


def test_the_new_tables_are_known_keys() -> None:
    assert {"pool", "admin", "metrics"} <= set(KNOWN_KEYS[""])
    assert set(KNOWN_KEYS["pool.session_state"]) == set(DEFAULT_SESSION_STATE)
    assert "session_state" in KNOWN_KEYS["pool"]


@pytest.mark.parametrize(("text", "expected"), [
    ('upstream = "127.0.0.1:5432"\n[pool]\n',
     'pool: a pool needs [auth] mode = "proxy" (or --auth proxy): it logs in upstream on '
     "its own and reuses the connection for many clients, so the proxy must check each "
     "client itself"),
    (PROXY_AUTH + '[pool]\nmode = "statement"\n',
     'pool.mode: expected one of "session", "transaction", got "statement"'),
    (PROXY_AUTH + "[pool]\nmax_size = 0\n",
     "pool.max_size: expected a whole number of at least 1, got 0"),
    (PROXY_AUTH + "[pool]\nmax_size = 2.5\n",
     "pool.max_size: expected a whole number of at least 1, got 2.5"),
    (PROXY_AUTH + "[pool]\nmax_size = 3\nmin_idle = 4\n",
     "pool.min_idle: expected at most pool.max_size (3), got 4"),
    (PROXY_AUTH + '[pool]\ncheckout_timeout = "1s"\n',
     'pool.checkout_timeout: expected a positive number of seconds, got "1s"'),
    (PROXY_AUTH + "[pool]\nhealth_check_after = 0\n",
     "pool.health_check_after: expected a positive number of seconds, got 0"),
    (PROXY_AUTH + "[pool]\nserver_lifetime = -1\n",
     "pool.server_lifetime: expected a number of seconds (0 turns it off), got -1"),
    (PROXY_AUTH + '[pool]\nreset = "all"\n',
     'pool.reset: expected one of "minimal", "discard_all", got "all"'),
    (PROXY_AUTH + "[pool]\nsession_state = 1\n", "pool.session_state: expected a table, got 1"),
    (PROXY_AUTH + '[pool.session_state]\nsetting = "pin"\n',
     'pool.session_state.setting: unknown key (did you mean "settings"?); this table takes: '
     "settings, role, prepare, listen, temp, cursor, advisory, sequence, unknown"),
    (PROXY_AUTH + '[pool.session_state]\nrole = "ignore"\n',
     'pool.session_state.role: expected one of "pin", "refuse", "reset", got "ignore"'),
    (PROXY_AUTH + "[pool]\nsize = 3\n",
     'pool.size: unknown key (did you mean "max_size"?); this table takes: mode, max_size, '),
    ("pool = true\n" + PROXY_AUTH, "pool: expected a table, got true"),
    (PROXY_AUTH + '[admin]\n[admin.users]\nops = "x"\n',
     'admin.listen: missing: where the admin console listens, e.g. listen = '
     '"127.0.0.1:6433" (or --admin)'),
    (PROXY_AUTH + '[admin]\nlisten = "127.0.0.1:6433"\n',
     'admin.users: missing: who may log in to the admin console, e.g. [admin.users] ops = '
     '"SCRAM-SHA-256$..." (a SCRAM secret, or a password)'),
    (PROXY_AUTH + '[admin]\nlisten = "127.0.0.1:6433"\nusers = {}\n',
     'admin.users: empty: nobody could log in; add user = "SCRAM secret or password"'),
    (PROXY_AUTH + '[admin]\nlisten = "127.0.0.1:6433"\nusers = ["ops"]\n',
     'admin.users: expected a table of user = "SCRAM secret or password", got an array'),
    (PROXY_AUTH + '[admin]\nlisten = "127.0.0.1:6433"\nusers = { ops = "" }\n',
     'admin.users.ops: expected a SCRAM secret or a password, got ""'),
    (PROXY_AUTH + f'[admin]\nlisten = "127.0.0.1:6433"\nusers = {{ ops = "md5{"0" * 32}" }}\n',
     "admin.users.ops: an MD5 secret cannot log in with SCRAM-SHA-256, which the admin "
     "console uses: give a SCRAM secret (or a password)"),
    (PROXY_AUTH + '[admin]\nlisten = "127.0.0.1:6433"\nusers = { ops = "SCRAM-SHA-256$x" }\n',
     "admin.users.ops: looks like a SCRAM secret but is not one: "),
    (PROXY_AUTH + '[admin]\nlisten = "localhost:x"\nusers = { ops = "x" }\n',
     "admin.listen: expected host:port, [ipv6]:port or a Unix socket path (/...), got "
     '"localhost:x"'),
    ('listen = "127.0.0.1:6433"\n' + PROXY_AUTH + ADMIN,
     "admin.listen: the proxy itself listens on 127.0.0.1:6433: give the admin console an "
     "address of its own"),
    (PROXY_AUTH + ADMIN + "[admin.extra]\n", "admin.extra: unknown key; this table takes: "
     "listen, users"),
    (PROXY_AUTH + "[metrics]\n", 'metrics.listen: missing: where GET /metrics is served, '
     'e.g. listen = "127.0.0.1:9127" (or --metrics)'),
    (PROXY_AUTH + '[metrics]\nlisten = "/run/pgwire/metrics.sock"\n',
     'metrics.listen: expected host:port (HTTP over TCP), got "/run/pgwire/metrics.sock"'),
    (PROXY_AUTH + ADMIN + '[metrics]\nlisten = "127.0.0.1:6433"\n',
     "metrics.listen: 127.0.0.1:6433 is taken by the proxy or its admin console: give the "
     "metrics an address of their own"),
    ('workers = 2\n' + PROXY_AUTH + '[metrics]\nlisten = "127.0.0.1:9100"\n',
     "workers: [admin] and [metrics] show one process; each worker process has sessions "
     "and a pool of its own: use workers = 1 with them"),
])
def test_mistakes_in_the_new_tables_name_the_key_and_what_was_expected(
    tmp_path: Path, text: str, expected: str,
) -> None:
    assert config_error(tmp_path, text).startswith(expected)


def test_the_flags_set_the_pool_and_the_consoles_over_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, PROXY_AUTH + '[pool]\nmode = "session"\nmax_size = 5\n'
                                  + ADMIN + '[metrics]\nlisten = "127.0.0.1:9100"\n')
    args = _build_parser().parse_args([
        "proxy", "--config", str(path), "--pool-mode", "transaction", "--pool-size", "7",
        "--admin", "127.0.0.1:0", "--metrics", "[::1]:0"])
    settings = load_config(path, overrides=proxy_overrides(args))
    assert settings.config.pool is not None
    assert (settings.config.pool.mode, settings.config.pool.max_size) == ("transaction", 7)
    assert settings.admin is not None and settings.admin.listen == ("127.0.0.1", 0)
    assert dict(settings.admin.users) == {"ops": "ops-pw"}  # the users stay the file's
    assert settings.metrics_listen == ("::1", 0)


def test_a_pool_flag_alone_turns_the_pool_on(tmp_path: Path) -> None:
    args = _build_parser().parse_args(["proxy", "--upstream", "db", "--auth", "proxy",
                                       "--pool-size", "3", "--metrics", "127.0.0.1:9100"])
    settings = parse_config({"auth": {"users": {"app": "pw"}}},
                            overrides=proxy_overrides(args))
    assert settings.config.pool == PoolConfig(max_size=3)
    assert isinstance(settings.config.auth, ProxyAuth)
    assert settings.metrics_listen == ("127.0.0.1", 9100)


@pytest.mark.parametrize(("argv", "expected"), [
    (["--pool-size", "0"],
     "command line: --pool-size: expected a whole number of at least 1, got 0"),
    (["--auth", "passthrough", "--pool-mode", "session"],
     'command line: --pool-mode: a pool needs [auth] mode = "proxy" (or --auth proxy): '),
    (["--auth", "passthrough", "--pool-size", "2"],
     'command line: --pool-size: a pool needs [auth] mode = "proxy"'),
    (["--metrics", "somewhere:x"], "command line: --metrics: expected host:port, "),
    (["--admin", "127.0.0.1:6433"], "pgwire.toml: admin.users: missing: who may log in "),
])
def test_the_command_reports_flag_mistakes_under_the_flag_with_status_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], expected: str,
) -> None:
    path = write_config(tmp_path, PROXY_AUTH)
    assert main(["proxy", "--config", str(path), *argv]) == 2
    error = capsys.readouterr().err.replace(str(path), "pgwire.toml")
    assert error.startswith(f"pgwire proxy: {expected}"), error


def test_an_unknown_pool_mode_flag_is_refused_by_the_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["proxy", "--upstream", "db", "--pool-mode", "statement"])
    assert caught.value.code == 2
    assert "invalid choice: 'statement'" in capsys.readouterr().err


# -- the command, in front of PostgreSQL ---------------------------------------------------

CLI_USER = "cli_pool_app"
CLI_PASSWORD = "cli-pool-app-pw"
OPS_PASSWORD = "cli-pool-ops-pw"
ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "PGCLIENTENCODING": "UTF8"}


@pytest.fixture(scope="module")
def cluster(pg_cluster: PostgresCluster) -> PostgresCluster:
    pg_cluster.sql(f"DROP ROLE IF EXISTS {CLI_USER}; "
                   f"CREATE ROLE {CLI_USER} LOGIN PASSWORD '{CLI_PASSWORD}'")
    return pg_cluster



def psql(cluster: PostgresCluster, port: int, command: str, *, user: str, password: str,
         database: str) -> str:
    result = subprocess.run(
        [str(cluster.bindir / "psql"), "-X", "-A", "-t", "-F", "|", "-h", "127.0.0.1",
         "-p", str(port), "-U", user, "-d", database, "-c", command],
        env={**ENV, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"},
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_command_runs_the_pool_with_its_console_and_metrics_then_exits_0_on_sigterm(
    cluster: PostgresCluster, tmp_path: Path, adapter: str,
) -> None:
    config = write_config(tmp_path, f"""
listen = "127.0.0.1:0"
upstream = "{cluster.host}:{cluster.port}"
adapter = "{adapter}"

[auth]
mode = "proxy"
method = "scram-sha-256"
users = {{ {CLI_USER} = "{CLI_PASSWORD}" }}

[pool]
mode = "transaction"
max_size = 2

[admin]
listen = "127.0.0.1:0"
users = {{ ops = "{scram_sha_256_secret(OPS_PASSWORD)}" }}

[limits]
shutdown_timeout = 10
""")
    process = subprocess.Popen(
        [sys.executable, "-m", "pgwire", "proxy", "--config", str(config),
         "--metrics", "127.0.0.1:0"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        encoding="utf-8")
    try:
        listening = read_line(process, r"^pgwire proxy listening on 127\.0\.0\.1:(\d+), "
                                       r"upstream \S+ \((.*)\)$")
        assert listening.group(2) == (f"proxy auth scram-sha-256, transaction pool of 2, "
                                      f"{adapter}")
        admin_port = int(read_line(process, r"^pgwire admin console listening on "
                                            r"127\.0\.0\.1:(\d+)$").group(1))
        metrics_url = read_line(process, r"^pgwire metrics listening on "
                                         r"(http://127\.0\.0\.1:\d+/metrics)$").group(1)
        port = int(listening.group(1))
        for number in range(3):
            assert psql(cluster, port, f"select {number} + 1", user=CLI_USER,
                        password=CLI_PASSWORD, database="postgres") == f"{number + 1}\n"
        pools = psql(cluster, admin_port, "SHOW POOLS", user="ops", password=OPS_PASSWORD,
                     database="pgwire")
        user, database, mode, *_ = pools.splitlines()[0].split("|")
        assert (user, database, mode) == (CLI_USER, "postgres", "transaction")
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            text = response.read().decode()
        labels = f'{{user="{CLI_USER}",database="postgres",mode="transaction"}}'
        checkouts = re.search(rf"^pgwire_pool_checkouts_total{re.escape(labels)} (\d+)$", text,
                              re.MULTILINE)
        assert checkouts is not None, text
        assert int(checkouts.group(1)) >= 6  # three logins and three queries
        assert re.search(r"^pgwire_logins_total 3$", text, re.MULTILINE), text
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
            pytest.fail(f"still running 30 s after SIGTERM; stderr:\n{stderr}")
    assert process.returncode == 0, stderr


@pytest.mark.parametrize(("adapter", "flag"), [
    ("asyncio", "--admin"), ("asyncio", "--metrics"), ("trio", "--admin"),
    ("trio", "--metrics"), ("trio", "--listen"), ("blocking", "--admin"),
    ("blocking", "--metrics"),
])
def test_a_port_in_use_stops_the_command_with_status_1_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    adapter: str, flag: str,
) -> None:
    # In this process (the signal handlers need the main thread), without
    # touching the test run's logging.
    monkeypatch.setattr("pgwire.adapters.serve.configure_logging", lambda *args: None)
    path = write_config(tmp_path, PROXY_AUTH + '[admin.users]\nops = "pw"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        addresses = {"--admin": "127.0.0.1:0", "--metrics": "127.0.0.1:0",
                     "--listen": "127.0.0.1:0", flag: busy}
        status = main(["proxy", "--config", str(path), "--adapter", adapter,
                       *(item for pair in addresses.items() for item in pair)])
    out, err = capsys.readouterr()
    assert status == 1, err
    assert err == f"pgwire proxy: cannot listen on {busy}: Address already in use\n"
    assert "listening" not in out

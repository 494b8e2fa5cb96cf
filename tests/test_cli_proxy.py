"""``pgwire proxy`` and ``pgwire demo``: the TOML file, the command line, the demo.

The configuration tests read real files from ``tmp_path`` and compare the
whole error message, since saying which key is wrong, and how, is the point.
The command tests start ``python -m pgwire`` as a subprocess in front of the
session's PostgreSQL and talk to it with psycopg (libpq) and pgwire's own
client, then signal it the way an init system would.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.errors
import pytest

import pgwire as pw
from pgwire.auth import scram_sha_256_secret
from pgwire.cli import main
from pgwire.demo_proxy import DemoClient, _write_verb
from pgwire.proxy import (
    CANCEL_LINK,
    CloseClient,
    OpenUpstream,
    Passthrough,
    Proxy,
    ProxyAuth,
    ProxyConfig,
    SendToUpstream,
    UpstreamKey,
    instance_of,
)
from pgwire.proxy.config_file import (
    KNOWN_KEYS,
    ConfigError,
    Override,
    load_config,
)
from pgwire.testing.cluster import PostgresCluster
from tests.interop.proxy_wire import read_line

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "PGCLIENTENCODING": "UTF8"}
SCRAM = ("SCRAM-SHA-256$4096:UGe0Ho2Fb5aGR2ZqBv3Zbw==$qPzSRfk/W25+m08QHPrLZ5gk2nj0Xwd2i5o5"
         "wmdDd8c=:x3X/WujXOu3tnFKl+CWfc8ZL/UOBcyhYHq1fbJ7fmuk=")


def write_config(tmp_path: Path, text: str, name: str = "pgwire.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(tmp_path: Path, text: str, **kwargs: object) -> str:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    prefix = f"{path}: "
    return message.removeprefix(prefix) if message.startswith(prefix) else message


# -- the configuration file -------------------------------------------------------------


def test_a_full_file_loads_with_paths_from_its_own_directory(
    tmp_path: Path, pg_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    directory = tmp_path / "etc"
    directory.mkdir()
    (directory / "userlist.txt").write_text(f'"alice" "{SCRAM}"\n"bob" "plain-pw"\n')
    path = write_config(directory, f"""
listen = ["127.0.0.1:7000", "[::1]:7001"]
upstream = "db.internal"
log_level = "debug"
check_protocol = true

[auth]
mode = "proxy"
method = "scram-sha-256"
userlist = "userlist.txt"
upstream_user = "app"
upstream_password_env = "TEST_UPSTREAM_PW"

[client_tls]
cert = "{pg_cluster.server_cert}"
key = "{pg_cluster.server_key}"
require = true

[upstream_tls]
sslmode = "verify-full"
rootcert = "{pg_cluster.ca_cert}"

[limits]
max_clients = 5
max_message_size = 1048576
login_timeout = 2.5
connect_timeout = 3
idle_timeout = 0
idle_in_transaction_timeout = 60
shutdown_timeout = 0

[cancel]
instance_id = 3
peers = {{ "4" = "10.0.0.2:6432", "5" = "/run/pgwire/cancel.sock" }}

[[middleware]]
class = "pgwire.demo_proxy:ReadOnly"
users = ["reporting"]
""")
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the cwd
    settings = load_config(path, environ={"TEST_UPSTREAM_PW": "from-env"})
    config = settings.config
    assert settings.listen == (("127.0.0.1", 7000), ("::1", 7001))
    assert (settings.adapter, settings.workers, settings.log_level) == ("asyncio", 1, "debug")
    assert config.upstream == ("db.internal", 5432)
    assert isinstance(config.auth, ProxyAuth)
    assert dict(config.auth.users) == {"alice": SCRAM, "bob": "plain-pw"}
    assert (config.auth.upstream_user, config.auth.upstream_password) == ("app", "from-env")
    assert config.client_tls is not None and config.require_client_tls
    assert config.client_tls_certificate is not None
    assert config.upstream_tls.sslmode == "verify-full"
    assert config.upstream_tls.server_hostname == "db.internal"
    assert config.upstream_tls.context is not None
    assert (config.max_clients, config.max_message_size) == (5, 1048576)
    assert (config.login_timeout, config.connect_timeout) == (2.5, 3.0)
    assert (config.idle_timeout, config.idle_in_transaction_timeout) == (None, 60.0)
    assert config.shutdown_timeout == 0
    assert config.check_protocol
    assert config.instance_id == 3
    assert dict(config.peers) == {4: ("10.0.0.2", 6432), 5: "/run/pgwire/cancel.sock"}
    # One instance, shared by every session (per-session data lives in ctx.state).
    (made,) = config.middleware
    assert type(made).__name__ == "ReadOnly" and made.users == frozenset({"reporting"})
    assert settings.auth_summary == "proxy auth scram-sha-256"


def test_upstream_password_comes_from_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGWIRE_TEST_SECRET", "s3cret")
    path = write_config(tmp_path, """
upstream = "127.0.0.1:5432"
[auth]
mode = "proxy"
method = "trust"
upstream_password_env = "PGWIRE_TEST_SECRET"
[auth.query]
user = "pgbouncer"
password_env = "PGWIRE_TEST_SECRET"
""")
    auth = load_config(path).config.auth
    assert isinstance(auth, ProxyAuth)
    assert auth.upstream_password == "s3cret"
    assert auth.auth_query is not None and auth.auth_query.password == "s3cret"
    assert auth.auth_query.query.startswith("SELECT usename, passwd")


def test_the_example_file_loads() -> None:
    settings = load_config(ROOT / "examples" / "pgwire.toml")
    assert settings.listen == (("127.0.0.1", 6432),)
    assert isinstance(settings.config.auth, Passthrough)
    assert settings.config.idle_timeout is None
    assert [type(m).__name__ for m in settings.config.middleware] == ["QueryLog", "ReadOnly"]


def test_every_key_is_documented() -> None:
    text = (ROOT / "docs" / "proxy.md").read_text()
    for table, keys in KNOWN_KEYS.items():
        for key in keys:
            dotted = f"{table}.{key}" if table else key
            assert f"`{dotted}`" in text, dotted


UPSTREAM = 'upstream = "127.0.0.1:5432"\n'


@pytest.mark.parametrize(("text", "expected"), [
    (UPSTREAM + '[limits]\nlogin_timeout = "abc"\n',
     'limits.login_timeout: expected a positive number of seconds, got "abc"'),
    (UPSTREAM + "[limits]\nconnect_timeout = 0\n",
     "limits.connect_timeout: expected a positive number of seconds, got 0"),
    (UPSTREAM + "[limits]\nidle_timeout = -1\n",
     "limits.idle_timeout: expected a number of seconds (0 turns it off), got -1"),
    (UPSTREAM + "[limits]\nshutdown_timeout = true\n",
     "limits.shutdown_timeout: expected a number of seconds, 0 or more, got true"),
    (UPSTREAM + "[limits]\nmax_clients = 0\n",
     "limits.max_clients: expected a whole number of at least 1, got 0"),
    (UPSTREAM + "limits = 3\n", "limits: expected a table, got 3"),
    ('listen = "127.0.0.1:6432"\n', 'upstream: missing: say where PostgreSQL is, e.g. '
     'upstream = "127.0.0.1:5432" (or --upstream)'),
    ('upstream = "db:port"\n',
     'upstream: expected host:port, [ipv6]:port or a Unix socket path (/...), got "db:port"'),
    ("upstream = 5432\n",
     "upstream: expected host:port, [ipv6]:port or a Unix socket path (/...), got 5432"),
    (UPSTREAM + "listen = []\n",
     'listen: expected an address or a list of them, such as ["127.0.0.1:6432"], '
     "got an array"),
    (UPSTREAM + 'adapter = "twisted"\n',
     'adapter: expected one of "asyncio", "trio", "blocking", got "twisted"'),
    (UPSTREAM + "workers = 0\n", "workers: expected a whole number from 1 to 128, got 0"),
    (UPSTREAM + 'workers = 2\nadapter = "trio"\n',
     'workers: more than one worker needs adapter = "asyncio", not "trio"'),
    (UPSTREAM + 'workers = 2\nlisten = ["/tmp/pgwire.sock"]\n',
     "workers: worker processes share TCP ports; a Unix socket in listen cannot be "
     "shared: use one worker"),
    (UPSTREAM + '[auth]\nmethod = "md5"\n',
     "auth.method: only used with mode = \"proxy\"; passthrough relays the client's own "
     "login to the server"),
    (UPSTREAM + '[auth]\nmode = "proxied"\n',
     'auth.mode: expected one of "passthrough", "proxy", got "proxied"'),
    (UPSTREAM + '[auth]\nmode = "proxy"\n',
     'auth.method: "scram-sha-256" needs secrets to check: set userlist, [auth.users] or '
     "[auth.query]"),
    (UPSTREAM + '[auth]\nmode = "proxy"\nmethod = "kerberos"\n',
     'auth.method: expected one of "trust", "password", "md5", "scram-sha-256", "cert", '
     'got "kerberos"'),
    (UPSTREAM + '[auth]\nmode = "proxy"\nmethod = "cert"\n',
     'auth.method: "cert" needs client_tls.cert and client_tls.key (and client_tls.ca to '
     "check client certificates)"),
    (UPSTREAM + '[auth]\nmode = "proxy"\n[auth.users]\nalice = "SCRAM-SHA-256$4096:abc"\n',
     "auth.users.alice: looks like a SCRAM secret but is not one: "),
    (UPSTREAM + '[auth]\nmode = "proxy"\n[auth.users]\nalice = 42\n',
     "auth.users.alice: expected a SCRAM or MD5 secret or a password, got 42"),
    (UPSTREAM + '[auth]\nmode = "proxy"\n[auth.query]\ndatabase = "postgres"\n',
     "auth.query.user: missing: the role the proxy logs in as to look secrets up"),
    (UPSTREAM + '[auth]\nmode = "proxy"\nmethod = "trust"\nupstream_password_env = "NOPE"\n',
     "auth.upstream_password_env: the environment variable NOPE is not set"),
    (UPSTREAM + '[auth]\nmode = "proxy"\nmethod = "trust"\nupstream_password = "a"\n'
     'upstream_password_env = "B"\n',
     "auth.upstream_password: give upstream_password or upstream_password_env, not both"),
    (UPSTREAM + '[client_tls]\nkey = "/etc/hostname"\n',
     "client_tls.key: needs client_tls.cert (the proxy's certificate)"),
    (UPSTREAM + '[client_tls]\ncert = "missing.crt"\n', "client_tls.cert: no such file: "),
    (UPSTREAM + '[upstream_tls]\nsslmode = "verify-full"\n',
     'upstream_tls.rootcert: sslmode = "verify-full" needs the CA certificate that signed '
     "the server's"),
    (UPSTREAM + '[upstream_tls]\nsslmode = "on"\n',
     'upstream_tls.sslmode: expected one of "disable", "allow", "prefer", "require", '
     '"verify-ca", "verify-full", got "on"'),
    (UPSTREAM + "[cancel]\ninstance_id = 200\n",
     "cancel.instance_id: expected a whole number from 0 to 127, got 200"),
    (UPSTREAM + '[cancel]\npeers = { "one" = "10.0.0.1:6432" }\n',
     "cancel.peers.one: expected an instance id from 0 to 127 as the key"),
    (UPSTREAM + '[cancel]\ninstance_id = 1\npeers = { "1" = "10.0.0.1:6432" }\n',
     "cancel.peers.1: instance 1 is this proxy (instance_id 1, 1 worker(s)), not a peer"),
    (UPSTREAM + '[cancel]\npeers = { "1" = 6432 }\n',
     "cancel.peers.1: expected host:port, [ipv6]:port or a Unix socket path (/...), got 6432"),
    (UPSTREAM + "workers = 3\n[cancel]\ninstance_id = 126\n",
     "cancel.instance_id: with 3 workers the ids run up to 128; the most is 127"),
    (UPSTREAM + '[[middleware]]\nclass = "QueryLog"\n',
     'middleware[0].class: expected "module:Class", got "QueryLog"'),
    (UPSTREAM + '[[middleware]]\nclass = "pgwire.nosuch:QueryLog"\n',
     "middleware[0].class: cannot import pgwire.nosuch: No module named 'pgwire.nosuch'"),
    (UPSTREAM + '[[middleware]]\nclass = "pgwire.demo_proxy:Nope"\n',
     "middleware[0].class: pgwire.demo_proxy has no Nope"),
    (UPSTREAM + '[[middleware]]\nclass = "pgwire.demo_proxy:ReadOnly"\ncolour = "red"\n',
     "middleware[0].class: pgwire.demo_proxy:ReadOnly does not take these settings: got an "
     "unexpected keyword argument 'colour'"),
    (UPSTREAM + '[[middleware]]\nclass = "pgwire.demo_proxy:DemoClient"\n',
     "middleware[0].class: pgwire.demo_proxy:DemoClient does not take these settings: "
     "missing a required argument: 'address'"),
    (UPSTREAM + '[[middleware]]\nclass = "collections:OrderedDict"\n',
     "middleware[0].class: collections:OrderedDict made OrderedDict, not a Middleware"),
    (UPSTREAM + "middleware = 1\n", "middleware: expected [[middleware]] tables, got 1"),
    (UPSTREAM + "[limits\n", "not valid TOML: "),
])
def test_mistakes_name_the_file_the_key_and_what_was_expected(
    tmp_path: Path, text: str, expected: str,
) -> None:
    assert config_error(tmp_path, text).startswith(expected)


@pytest.mark.parametrize(("text", "expected"), [
    (UPSTREAM + "listn = []\n", 'listn: unknown key (did you mean "listen"?); this table '
     "takes: listen, upstream, adapter, workers, log_level, check_protocol, auth, client_tls, "
     "upstream_tls, limits, cancel, middleware"),
    (UPSTREAM + "[limits]\nlogin_timout = 3\n",
     'limits.login_timout: unknown key (did you mean "login_timeout"?)'),
    (UPSTREAM + "[upstream_tls]\nsslrootcert = 'ca.crt'\n",
     'upstream_tls.sslrootcert: unknown key (did you mean "rootcert"?)'),
    (UPSTREAM + '[auth]\nmode = "proxy"\n[auth.query]\nusr = "x"\n',
     'auth.query.usr: unknown key (did you mean "user"?)'),
    (UPSTREAM + "colour = 1\n", "colour: unknown key; this table takes: "),
    (UPSTREAM + "[pool]\nsize = 3\n", 'pool.size: unknown key (did you mean "max_size"?)'),
])
def test_unknown_keys_are_errors_with_a_suggestion(
    tmp_path: Path, text: str, expected: str,
) -> None:
    assert config_error(tmp_path, text).startswith(expected)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read the file: No such file"):
        load_config(tmp_path / "nope.toml")


def test_userlist_errors_name_the_userlist_line(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text('"alice" "x"\nbob secret\n')
    message = config_error(tmp_path, UPSTREAM + '[auth]\nmode = "proxy"\n'
                                     'userlist = "users.txt"\n')
    assert message == (f"auth.userlist: {tmp_path / 'users.txt'}, line 2: expected \"user\" "
                       '"secret" with both fields in double quotes')


def test_flags_override_the_file_and_their_errors_name_the_flag(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'listen = "127.0.0.1:7000"\nupstream = "db:5432"\n'
                                  '[auth]\nmode = "proxy"\nmethod = "trust"\n')
    settings = load_config(path, overrides=[
        Override("listen", ["127.0.0.1:0"], "--listen"),
        Override("auth", {"mode": "passthrough"}, "--auth"),
        Override("workers", 2, "--workers"),
    ])
    assert settings.listen == (("127.0.0.1", 0),)
    assert isinstance(settings.config.auth, Passthrough)
    assert settings.workers == 2
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides=[Override("upstream", "db:x", "--upstream")])
    assert str(caught.value) == ('command line: --upstream: expected host:port, [ipv6]:port '
                                 'or a Unix socket path (/...), got "db:x"')


def test_the_command_reports_configuration_mistakes_with_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["proxy", "--listen", "127.0.0.1:0"]) == 2
    assert capsys.readouterr().err == (
        "pgwire proxy: command line: upstream: missing: say where PostgreSQL is, e.g. "
        'upstream = "127.0.0.1:5432" (or --upstream)\n')
    assert main(["proxy", "--upstream", "127.0.0.1:5432", "--workers", "0"]) == 2
    assert capsys.readouterr().err == (
        "pgwire proxy: command line: --workers: expected a whole number from 1 to 128, got 0\n")


@pytest.mark.parametrize(("sql", "verb"), [
    ("select 1", None),
    ("  -- note\n/* c */ INSERT into t values (1)", "INSERT"),
    ("select 1; delete from t", "DELETE"),
    ("with gone as (delete from t returning *) select * from gone", "DELETE"),
    ("with x as (select 1) select * from x", None),
    ("explain select 1", None),
    ("explain analyze update t set a = 1", "UPDATE"),
    ("copy t to stdout", None),
    ("copy t from stdin", "COPY FROM"),
    ("create table t (a int)", "CREATE"),
    ("", None),
])
def test_the_demo_read_only_rule_finds_writing_statements(sql: str, verb: str | None) -> None:
    assert _write_verb(sql) == verb


# -- the command, in front of PostgreSQL ------------------------------------------------


def start(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pgwire", *argv], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, encoding="utf-8",
    )


def stop(process: subprocess.Popen[str], timeout: float,
         sig: int | None = signal.SIGTERM) -> tuple[str, str]:
    """Signal ``process`` (unless ``sig`` is None: it was signalled already) and
    wait for it to exit; a second signal would mean "stop at once"."""
    if sig is not None and process.poll() is None:
        process.send_signal(sig)
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"still running {timeout} s after the signal; stderr:\n{stderr}")



LISTENING = r"^pgwire proxy listening on 127\.0\.0\.1:(\d+), upstream 127\.0\.0\.1:\d+ \((.*)\)$"


@pytest.fixture
def proxy_process(pg_cluster: PostgresCluster,
                  tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    config = write_config(tmp_path, "[limits]\nshutdown_timeout = 20\n")
    process = start("proxy", "--config", str(config), "--listen", "127.0.0.1:0",
                    "--upstream", f"{pg_cluster.host}:{pg_cluster.port}")
    match = read_line(process, LISTENING)
    assert match.group(2) == "passthrough auth, asyncio"
    yield process, int(match.group(1))
    if process.poll() is None:
        process.kill()
        process.communicate()


def wait_until_refused(port: int) -> None:
    """Connect until the proxy no longer accepts: it has closed its listening socket."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.02)
    pytest.fail("the proxy kept accepting connections after SIGTERM")


def test_the_proxy_serves_then_drains_and_exits_0_on_sigterm(
    pg_cluster: PostgresCluster, proxy_process: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = proxy_process
    through_proxy = pg_cluster.connect_kwargs(host="127.0.0.1", port=port, sslmode="disable")
    busy = DemoClient(("127.0.0.1", port), user=pg_cluster.superuser,
                      password=pg_cluster.superuser_password)
    with psycopg.connect(**through_proxy, autocommit=True) as idle:
        assert idle.execute("select current_user").fetchall() == [(pg_cluster.superuser,)]
        busy.connect()
        busy.query("begin")
        assert busy.conn.frontend.transaction_status == "T"
        process.send_signal(signal.SIGTERM)
        wait_until_refused(port)
        # The open transaction may finish; then the session ends, as idle ones did at once.
        assert isinstance(busy.query("commit")[-1], pw.ReadyForQuery)
        ending = busy.receive()
        assert [type(e) for e in ending] == [pw.ErrorResponse, pw.ConnectionClosed]
        assert isinstance(ending[0], pw.ErrorResponse) and ending[0].code == "57P01"
        with pytest.raises(psycopg.OperationalError):
            idle.execute("select 1")
    busy.close()
    _, stderr = stop(process, timeout=20 + 10, sig=None)
    assert process.returncode == 0, stderr
    assert "SIGTERM: shutting down" in stderr


def test_the_proxy_offers_tls_with_a_certificate_from_the_command_line(
    pg_cluster: PostgresCluster,
) -> None:
    process = start("proxy", "--listen", "127.0.0.1:0",
                    "--upstream", f"{pg_cluster.host}:{pg_cluster.port}",
                    "--tls-cert", str(pg_cluster.server_cert),
                    "--tls-key", str(pg_cluster.server_key), "--log-level", "warning")
    port = int(read_line(process, LISTENING).group(1))
    try:
        with psycopg.connect(**pg_cluster.connect_kwargs(
            host="127.0.0.1", port=port, sslmode="verify-full", sslrootcert=pg_cluster.ca_cert,
        )) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("select 1").fetchall() == [(1,)]
    finally:
        _, stderr = stop(process, timeout=40)
    assert process.returncode == 0, stderr
    assert stderr == ""  # --log-level warning: no INFO lines


def test_proxy_auth_from_a_file_with_the_upstream_password_in_the_environment(
    pg_cluster: PostgresCluster, tmp_path: Path,
) -> None:
    config = write_config(tmp_path, f"""
listen = "127.0.0.1:0"
upstream = "{pg_cluster.host}:{pg_cluster.port}"
[auth]
mode = "proxy"
method = "scram-sha-256"
upstream_user = "{pg_cluster.superuser}"
upstream_password_env = "PGWIRE_TEST_UPSTREAM_PASSWORD"
[auth.users]
carol = "{scram_sha_256_secret('carol-pw')}"
""")
    process = subprocess.Popen(
        [sys.executable, "-m", "pgwire", "proxy", "--config", str(config)], cwd=ROOT,
        env={**ENV, "PGWIRE_TEST_UPSTREAM_PASSWORD": pg_cluster.superuser_password},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    match = read_line(process, LISTENING)
    assert match.group(2) == "proxy auth scram-sha-256, asyncio"
    port = int(match.group(1))
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="carol", password="carol-pw",
                             dbname="postgres", sslmode="disable") as conn:
            # The proxy checked carol; the server sees the role the proxy logged in as.
            assert conn.execute("select current_user").fetchall() == [(pg_cluster.superuser,)]
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(host="127.0.0.1", port=port, user="carol", password="wrong",
                            dbname="postgres", sslmode="disable")
    finally:
        _, stderr = stop(process, timeout=40)
    assert process.returncode == 0, stderr
    assert pg_cluster.superuser_password not in stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_reported_with_status_1(workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "pgwire", "proxy", "--listen", f"127.0.0.1:{port}",
             "--upstream", "127.0.0.1:5432", "--workers", workers],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(f"pgwire proxy: cannot listen on 127.0.0.1:{port}: ")
    assert "address already in use" in result.stderr.lower()


@pytest.mark.parametrize("adapter", ["trio", "blocking"])
def test_the_other_adapters_run_from_the_command_line_too(
    pg_cluster: PostgresCluster, adapter: str,
) -> None:
    process = start("proxy", "--listen", "127.0.0.1:0", "--adapter", adapter,
                    "--upstream", f"{pg_cluster.host}:{pg_cluster.port}")
    match = read_line(process, LISTENING)
    assert match.group(2) == f"passthrough auth, {adapter}"
    try:
        with psycopg.connect(**pg_cluster.connect_kwargs(
            host="127.0.0.1", port=int(match.group(1)), sslmode="disable",
        )) as conn:
            assert conn.execute("select 41 + 1").fetchall() == [(42,)]
    finally:
        _, stderr = stop(process, timeout=40)
    assert process.returncode == 0, stderr


def wait_until_running(pg_cluster: PostgresCluster, tag: str) -> None:
    """Until the server runs the query marked ``tag``: a cancel sent earlier is lost."""
    deadline = time.monotonic() + 20
    with psycopg.connect(**pg_cluster.connect_kwargs(sslmode="disable"),
                         autocommit=True) as watcher:
        while time.monotonic() < deadline:
            found = watcher.execute(
                "select count(*) from pg_stat_activity where state = 'active' "
                "and pid <> pg_backend_pid() and query like %s", [f"%{tag}%"]).fetchone()
            if found == (1,):
                return
            time.sleep(0.02)
        sessions = watcher.execute(
            "select pid, state, query from pg_stat_activity where backend_type = "
            "'client backend' and pid <> pg_backend_pid()").fetchall()
    pytest.fail(f"the query {tag!r} never started; the server's sessions: {sessions}")


def test_workers_route_every_cancel_to_the_worker_that_owns_the_session(
    pg_cluster: PostgresCluster,
) -> None:
    process = start("proxy", "--listen", "127.0.0.1:0", "--workers", "2",
                    "--upstream", f"{pg_cluster.host}:{pg_cluster.port}")
    match = read_line(process, LISTENING)
    assert match.group(2) == "passthrough auth, asyncio, 2 workers"
    port = int(match.group(1))
    cancel_ports = {}
    for _ in range(2):
        worker = read_line(process, r"^  worker \d: pid \d+, instance (\d+), forwarded "
                                    r"cancel requests on 127\.0\.0\.1:(\d+)$")
        cancel_ports[int(worker.group(1))] = int(worker.group(2))
    assert sorted(cancel_ports) == [0, 1]
    owners = set()
    try:
        # libpq's own cancel, to the shared port: the kernel picks the worker.
        through_proxy = pg_cluster.connect_kwargs(host="127.0.0.1", port=port,
                                                  sslmode="disable")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            for attempt in range(4):
                with psycopg.connect(**through_proxy, autocommit=True) as conn:
                    owners.add(instance_of(conn.info.backend_pid))
                    tag = f"libpq cancel {attempt}"
                    running = pool.submit(conn.execute, f"select pg_sleep(60) -- {tag}")
                    wait_until_running(pg_cluster, tag)
                    conn.cancel()
                    with pytest.raises(psycopg.errors.QueryCanceled):
                        running.result(timeout=30)
        # pgwire's client, cancelling through each worker's own port in turn: one
        # of them owns the session, the other must forward the request. One session
        # per cancel: PostgreSQL signals a cancelled backend twice (the process, then
        # its process group), and on a busy machine the second SIGINT can land after
        # the error, cancelling whatever that backend runs next.
        for session in range(2):
            for instance, cancel_port in sorted(cancel_ports.items()):
                client = DemoClient(("127.0.0.1", port), user=pg_cluster.superuser,
                                    password=pg_cluster.superuser_password)
                client.connect()
                assert client.backend_key is not None
                owners.add(instance_of(client.backend_key[0]))
                tag = f"pgwire cancel {session} via {instance}"
                client.send(pw.Query(query=f"select pg_sleep(60) -- {tag}"))
                wait_until_running(pg_cluster, tag)
                client.send_cancel(("127.0.0.1", cancel_port))
                codes = [e.code for e in client.receive() if isinstance(e, pw.ErrorResponse)]
                assert codes == ["57014"], (session, instance)
                client.close()
    finally:
        # SIGINT, as Ctrl-C sends: the parent passes it on and the workers drain.
        _, stderr = stop(process, timeout=40, sig=signal.SIGINT)
    assert process.returncode == 0, stderr
    assert owners <= {0, 1}
    assert "SIGINT: stopping the workers" in stderr
    assert stderr.count("INFO pgwire.proxy: stopped") == 2


# -- pgwire demo ------------------------------------------------------------------------


def test_demo_runs_its_script_through_the_proxy_and_exits() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pgwire", "demo", "--no-wait"], cwd=ROOT, env=ENV,
        capture_output=True, text=True, encoding="utf-8", timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert any(re.fullmatch(LISTENING.strip("^$"), line) for line in lines), lines
    assert "server> AuthenticationSASL(mechanisms=('SCRAM-SHA-256',))" in lines
    assert any(re.fullmatch(r"proxy>  \[query-log\] demo \d+\.\d ms  select id, body from "
                            r"notes order by id", line) for line in lines)
    assert "server> DataRow('Zoë')" in lines
    assert any("code='25006'" in line for line in lines)
    assert "server> ReadyForQuery(status='E')" in lines
    assert any("code='57014'" in line for line in lines)
    assert any(re.fullmatch(r'PGPASSWORD=\S+ psql "host=127\.0\.0\.1 port=\d+ user=demo '
                            r'dbname=postgres"', line) for line in lines)
    assert lines[-1] == "stopped; the throwaway PostgreSQL is gone"


def test_demo_waits_for_ctrl_c_and_its_psql_line_works() -> None:
    process = start("demo")
    assert process.stdout is not None
    hint = None
    for line in process.stdout:
        hint = re.search(r'PGPASSWORD=(\S+) psql "host=(\S+) port=(\d+) user=(\w+) '
                         r'dbname=(\w+)"', line) or hint
        if line.startswith("Press Ctrl-C"):
            break
    assert hint is not None
    password, host, port, user, dbname = hint.groups()
    try:
        with psycopg.connect(host=host, port=int(port), user=user, dbname=dbname,
                             password=password, autocommit=True) as conn:
            assert conn.execute("select count(*) from notes").fetchone() == (3,)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("delete from notes")
        if shutil.which("psql"):
            result = subprocess.run(
                ["psql", "-X", "-At", "-c", "select body from notes where id = 2",
                 f"host={host} port={port} user={user} dbname={dbname}"],
                env={**ENV, "PGPASSWORD": password}, capture_output=True, text=True,
                timeout=60, check=False)
            assert (result.stdout, result.returncode) == ("Zoë\n", 0), result.stderr
    finally:
        stdout, stderr = stop(process, timeout=60, sig=signal.SIGINT)
    assert process.returncode == 0, stderr
    assert "stopped; the throwaway PostgreSQL is gone" in stdout


def test_demo_without_postgresql_says_how_to_get_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pgwire", "demo", "--no-wait"], cwd=ROOT,
        env={**ENV, "PGWIRE_PG_BINDIR": str(tmp_path)}, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert result.returncode == 1
    assert "does not contain initdb, postgres, pg_ctl" in result.stderr
    assert "apt-get install postgresql" in result.stderr
    assert "pgwire demo --fake-server" in result.stderr


def test_a_cancel_client_that_closes_before_delivery_does_not_stall_the_session() -> None:
    # A forwarding worker closes its link right after writing the CancelRequest,
    # while the owner is still connecting to the server to deliver it.
    proxy = Proxy(ProxyConfig(upstream=("127.0.0.1", 5432)))
    process_id, secret = proxy.cancel_keys.issue(pw.PROTOCOL_3_0)
    proxy.cancel_keys.bind(process_id, UpstreamKey(("127.0.0.1", 5432), 77, b"abcd"))
    session = proxy.new_session(("127.0.0.1", 50000))
    session.start()
    request = pw.CancelRequest(process_id=process_id, secret_key=secret)
    opened = session.client_data(request.encode())
    assert [type(a) for a in opened] == [OpenUpstream]
    assert session.client_data(b"") == []  # returns: the client's end is noted, no more
    delivered = session.upstream_connected(CANCEL_LINK)
    assert delivered == [SendToUpstream(
        pw.CancelRequest(process_id=77, secret_key=b"abcd").encode(), CANCEL_LINK)]
    assert isinstance(session.upstream_data(b"", CANCEL_LINK)[-1], CloseClient)

"""The throwaway PostgreSQL cluster that every integration test stands on."""

import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgwire.testing import cluster as cluster_module
from pgwire.testing.cluster import (
    BINDIR_ENV_VAR,
    ClusterError,
    ClusterUnavailable,
    PostgresCluster,
    find_postgres_bindir,
)


def test_answers_sql_as_the_superuser(pg_cluster: PostgresCluster) -> None:
    assert pg_cluster.running
    assert pg_cluster.sql("select current_user") == pg_cluster.superuser == "postgres"


def test_sql_returns_unaligned_rows_and_reports_errors(pg_cluster: PostgresCluster) -> None:
    assert pg_cluster.sql("select 1, 'a b' union all select 2, 'c'") == "1|a b\n2|c"
    with pytest.raises(ClusterError, match="no_such_column"):
        pg_cluster.sql("select no_such_column")


def test_listens_on_a_free_high_loopback_port(pg_cluster: PostgresCluster) -> None:
    assert pg_cluster.host == "127.0.0.1"
    assert pg_cluster.port >= 1024
    assert pg_cluster.port != 5432
    assert pg_cluster.sql("show port") == str(pg_cluster.port)
    assert pg_cluster.sql("show listen_addresses") == "127.0.0.1"
    with socket.create_connection((pg_cluster.host, pg_cluster.port), timeout=5):
        pass


def test_keeps_its_files_in_its_own_directory(pg_cluster: PostgresCluster) -> None:
    assert pg_cluster.datadir.parent == pg_cluster.socket_dir
    assert (pg_cluster.socket_dir / f".s.PGSQL.{pg_cluster.port}").exists()
    assert pg_cluster.log_path.parent == pg_cluster.datadir
    assert pg_cluster.log_path.exists()


def test_tls_is_on(pg_cluster: PostgresCluster) -> None:
    assert pg_cluster.sql("show ssl") == "on"


def test_psycopg_verifies_the_server_certificate(pg_cluster: PostgresCluster) -> None:
    dsn = pg_cluster.dsn(host="localhost", sslmode="verify-full", sslrootcert=pg_cluster.ca_cert)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
    assert row == (True,)


def test_client_certificates_are_signed_by_the_same_ca(pg_cluster: PostgresCluster) -> None:
    cert, key = pg_cluster.make_client_cert("alice")
    assert key.stat().st_mode & 0o077 == 0
    kwargs = pg_cluster.connect_kwargs(
        sslmode="verify-ca", sslrootcert=pg_cluster.ca_cert, sslcert=cert, sslkey=key
    )
    with psycopg.connect(**kwargs) as conn:
        row = conn.execute("select client_dn from pg_stat_ssl where pid = pg_backend_pid()")
        assert row.fetchone() == ("/CN=alice",)


def test_cert_authentication_with_custom_hba_lines() -> None:
    hba_lines = [
        "host     all  postgres  127.0.0.1/32  scram-sha-256",
        "hostssl  all  all       127.0.0.1/32  cert",
    ]
    with PostgresCluster(hba_lines=hba_lines) as cluster:
        cluster.sql("create role alice login")
        cert, key = cluster.make_client_cert("alice")
        dsn = cluster.dsn(
            user="alice", sslmode="verify-full", host="localhost", sslrootcert=cluster.ca_cert
        )
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=10).close()
        with psycopg.connect(f"{dsn} sslcert={cert} sslkey={key}", connect_timeout=10) as conn:
            assert conn.execute("select current_user").fetchone() == ("alice",)


def test_password_auth_still_lets_sql_in() -> None:
    with PostgresCluster(ssl=False, auth="scram-sha-256") as cluster:
        assert cluster.sql("select current_user") == "postgres"
        cluster.sql("create role bob login password 'hunter2'")
        assert cluster.sql("select current_user", user="bob", password="hunter2") == "bob"
        with pytest.raises(ClusterError, match="password authentication failed"):
            cluster.sql("select 1", user="bob", password="wrong")


def test_a_second_cluster_runs_alongside_and_stops_cleanly(pg_cluster: PostgresCluster) -> None:
    other = PostgresCluster(ssl=False, settings={"work_mem": "7MB"})
    with other:
        assert other.port != pg_cluster.port
        assert other.sql("show ssl") == "off"
        assert other.sql("show work_mem") == "7MB"
        assert pg_cluster.sql("select 1") == "1"
        tempdir, port = other.socket_dir, other.port
    assert not other.running
    assert not tempdir.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    other.stop()  # a second stop is harmless
    with pytest.raises(ClusterError, match="stopped"):
        other.sql("select 1")
    assert pg_cluster.sql("select 2") == "2"


def test_find_postgres_bindir_uses_the_env_var(
    pg_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BINDIR_ENV_VAR, str(pg_cluster.bindir))
    monkeypatch.setenv("PATH", "")
    assert find_postgres_bindir(search_system=False) == pg_cluster.bindir


def test_a_wrong_env_var_is_an_error_that_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BINDIR_ENV_VAR, str(tmp_path))
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ClusterUnavailable) as caught:
        find_postgres_bindir(search_system=False)
    message = str(caught.value)
    assert isinstance(caught.value, RuntimeError)
    assert f"{BINDIR_ENV_VAR}={tmp_path}" in message
    assert "initdb" in message
    assert "apt-get install postgresql" in message


def test_nothing_found_is_an_error_that_says_how_to_fix_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(BINDIR_ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ClusterUnavailable) as caught:
        find_postgres_bindir(search_system=False)
    message = str(caught.value)
    assert "apt-get install postgresql" in message
    assert BINDIR_ENV_VAR in message


def test_runs_the_server_as_postgres_when_root(pg_cluster: PostgresCluster) -> None:
    owner = pg_cluster.datadir.stat().st_uid
    if os.geteuid() == 0:
        assert owner == pwd.getpwnam("postgres").pw_uid
        assert pg_cluster.server_key.stat().st_uid == owner
    else:
        assert owner == os.geteuid()
    assert pg_cluster.server_key.stat().st_mode & 0o777 == 0o600


def test_a_port_clash_is_retried_on_another_port(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy_port = squatter.getsockname()[1]
        offered = iter([busy_port])
        real_free_port = cluster_module._free_port
        monkeypatch.setattr(
            cluster_module, "_free_port", lambda: next(offered, None) or real_free_port()
        )
        with PostgresCluster(ssl=False) as cluster:
            assert cluster.port != busy_port
            assert cluster.sql("select 1") == "1"


def test_a_taken_explicit_port_fails_with_the_server_log() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        cluster = PostgresCluster(ssl=False, port=squatter.getsockname()[1])
        with pytest.raises(ClusterError, match="Address already in use"):
            cluster.start()
    assert not cluster.running


def test_a_cluster_left_by_a_killed_process_is_reaped_by_the_next_start() -> None:
    # os._exit skips atexit and finalizers, as SIGKILL or a hard timeout would.
    script = (
        "import os\n"
        "from pgwire.testing.cluster import PostgresCluster\n"
        "cluster = PostgresCluster(ssl=False).start()\n"
        "print(cluster.socket_dir, cluster.port, flush=True)\n"
        "os._exit(0)\n"
    )
    crashed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    left_dir, left_port = crashed.stdout.split()
    assert Path(left_dir).exists()
    socket.create_connection(("127.0.0.1", int(left_port)), timeout=5).close()

    with PostgresCluster(ssl=False):
        assert not Path(left_dir).exists()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(left_port)), timeout=5).close()

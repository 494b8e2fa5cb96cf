"""The runnable programs: examples/fake_server.py and ``python -m pgwire demo --fake-server``.

Each runs as a subprocess, the way a reader would start it; real clients
(psycopg, psql) then talk to it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.errors
import pytest

from pgwire.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAKE_SERVER = ROOT / "examples" / "fake_server.py"
ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "PGCLIENTENCODING": "UTF8"}


def start(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *argv], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, encoding="utf-8",
    )


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[str, str]:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


def read_port(process: subprocess.Popen[str]) -> int:
    assert process.stdout is not None
    first_line = process.stdout.readline()
    match = re.search(r"listening on 127\.0\.0\.1:(\d+)", first_line)
    if match is None:
        _, stderr = stop(process)
        pytest.fail(f"no port in the first line {first_line!r}; stderr:\n{stderr}")
    return int(match.group(1))


@pytest.fixture
def fake_server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    process = start(str(FAKE_SERVER), "--port", "0")
    port = read_port(process)
    yield process, port
    stop(process)


def test_fake_server_example_answers_select_1(
    fake_server: tuple[subprocess.Popen[str], int],
) -> None:
    _, port = fake_server
    with psycopg.connect(host="127.0.0.1", port=port, user="demo", dbname="demo",
                         autocommit=True) as conn:
        assert conn.info.parameter_status("server_version") == "15.0"
        assert conn.execute("select 1").fetchall() == [(1,)]
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="I only know select 1"):
            conn.execute("select 2")
        # An extended query gets the same error at its Sync.
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("select %s", [1])
        assert conn.execute("SELECT 1;").fetchall() == [(1,)]


def test_fake_server_example_answers_psql(
    fake_server: tuple[subprocess.Popen[str], int],
) -> None:
    _, port = fake_server
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql is not on PATH: install the PostgreSQL client")
    result = subprocess.run(
        [psql, "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "demo", "-c", "select 1"],
        capture_output=True, text=True, env=ENV, timeout=60, check=False,
    )
    assert (result.stdout, result.stderr, result.returncode) == ("1\n", "", 0)


def test_fake_server_demo_runs_the_whole_conversation() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pgwire", "demo", "--fake-server"], cwd=ROOT, env=ENV,
        capture_output=True, text=True, encoding="utf-8", timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    expected = [
        "client> StartupMessage(user='demo', database='demo', application_name='pgwire demo')",
        "server> AuthenticationOk()",
        "server> ParameterStatus(name='server_version', value='15.0')",
        "server> RowDescription(id int4, name text, email text, active bool)",
        "server> DataRow('2', 'Zoë', NULL, 'f')",
        "server> DataRow('3', 'Ünal 宮本', 'unal@example.jp', 't')",
        "client> Bind(parameters=(b'2',))",
        "server> DataRow('Zoë', NULL)",
        "server> ErrorResponse(severity='ERROR', severity_nonlocalized='ERROR', code='42P01', "
        "message='relation \"nosuch\" does not exist', position='15')",
        "(3 ReadyForQuery owed)",
        "server> DataRow('42')",
        "server> ReadyForQuery(status='T')",
        "server> ReadyForQuery(status='E')",
        "server> CommandComplete(tag='ROLLBACK')",
        "client> Terminate()",
    ]
    for line in expected:
        assert line in lines
    # The pipeline's failed batch is answered by its error and its ReadyForQuery only.
    owed = lines.index("(3 ReadyForQuery owed)")
    assert lines[owed + 6].startswith("server> ErrorResponse(severity='ERROR', "
                                      "severity_nonlocalized='ERROR', code='42601'")
    assert lines[owed + 7: owed + 9] == ["server> ReadyForQuery(status='I')",
                                         "server> ParseComplete()"]
    if shutil.which("psql"):
        assert "2 | Zoë       |                   | f" in lines
        assert "(3 rows)" in lines


def test_fake_server_demo_keep_running_serves_until_interrupted() -> None:
    process = start("-m", "pgwire", "demo", "--fake-server", "--keep-running")
    port = read_port(process)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("Press Ctrl-C"):
            break
    with psycopg.connect(host="127.0.0.1", port=port, user="me", dbname="demo",
                         autocommit=True) as conn:
        assert conn.execute("select current_user").fetchall() == [("me",)]
    stdout, stderr = stop(process, signal.SIGINT)
    assert process.returncode == 0, stderr
    assert stdout.strip() == "stopped"


def test_pgwire_without_a_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out

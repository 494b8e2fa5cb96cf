"""``pgwire check``: the example on its own throwaway cluster (as a subprocess),
then failing files, JUnit XML and usage errors in-process against the
session's PostgreSQL (``--database ... --apply-setup``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwire.cli import main
from pgwire.testing.cluster import PostgresCluster

from .files import (
    EXPECTED_FAILURES,
    FAILING_SCENARIOS,
    PASSING_SCENARIOS,
    PASSWORD_ENV,
    POOLED_SETUP,
    drop_everything,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "scenarios.toml"


@pytest.fixture(scope="module")
def cluster(pg_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    yield pg_cluster
    drop_everything(pg_cluster)


def database_flags(cluster: PostgresCluster) -> list[str]:
    return ["--database", f"{cluster.host}:{cluster.port}", "--database-sslmode", "disable",
            "--database-password-env", PASSWORD_ENV, "--apply-setup"]


def test_the_example_passes_on_a_throwaway_cluster(tmp_path: Path) -> None:
    junit = tmp_path / "example.xml"
    done = subprocess.run([sys.executable, "-m", "pgwire", "check", str(EXAMPLE),
                           "--junit-xml", str(junit)],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["scenario", "adapter", "result", "detail"]
    rows = [line for line in lines[2:] if line.strip()][:-1]
    assert len(rows) == 5 and all(row.split()[-2:] == ["asyncio", "ok"] for row in rows)
    assert lines[-1].startswith("5 passed in ")
    progress = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert progress[0].startswith(
        "[1/5] asyncio  alice is mapped to shop_reporting through the pool role ... ok (")
    assert len(progress) == 5
    suite = ET.parse(junit).getroot()
    assert (suite.tag, suite.get("tests"), suite.get("failures")) == ("testsuites", "5", "0")


def test_failures_give_exit_1_a_table_and_junit(
        cluster: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(PASSWORD_ENV, cluster.superuser_password)
    path = tmp_path / "failing.toml"
    path.write_text(POOLED_SETUP + FAILING_SCENARIOS)
    junit = tmp_path / "junit.xml"
    status = main(["check", str(path), *database_flags(cluster), "--junit-xml", str(junit)])
    out, err = capsys.readouterr()
    assert status == 1, out + err
    lines = out.splitlines()
    table = lines[2:2 + len(EXPECTED_FAILURES) + 1]
    for line, (key, expected, actual) in zip(table, EXPECTED_FAILURES, strict=False):
        adapter, verdict, detail = re.split(r"\s{2,}", line, maxsplit=3)[1:]
        assert (adapter, verdict) == ("asyncio", "FAILED"), line
        assert detail.startswith(f"{key}: expected {expected}"), line
        assert f", got {actual}" in detail, line
    assert re.split(r"\s{2,}", table[-1]) == ["this one passes", "asyncio", "ok"]
    assert lines[-1].startswith("1 passed, 8 failed in ")
    assert "[9/9] asyncio  this one passes ... ok (" in err

    root = ET.parse(junit).getroot()
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "9", "8")
    (suite,) = root
    assert suite.get("name") == f"{path} [asyncio]"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("9", "8", "0")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases][-1] == "this one passes"
    assert {c.get("classname") for c in cases} == {"failing.asyncio"}
    assert cases[-1].find("failure") is None
    for case, (key, expected, actual) in zip(cases, EXPECTED_FAILURES, strict=False):
        failure = case.find("failure")
        assert failure is not None
        message = failure.get("message") or ""
        assert message.startswith(f"{key}: expected {expected}")
        assert f"got {actual}" in message
        assert f"  expected: {expected}" in (failure.text or "")


def test_quiet_and_k_select_what_is_shown(
        cluster: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(PASSWORD_ENV, cluster.superuser_password)
    path = tmp_path / "mixed.toml"
    path.write_text(POOLED_SETUP + PASSING_SCENARIOS + FAILING_SCENARIOS)
    status = main(["check", str(path), *database_flags(cluster), "-k", "WRONG", "--quiet",
                   "--adapter", "blocking"])
    out, err = capsys.readouterr()
    assert status == 1
    assert err == ""
    rows = out.splitlines()[2:-2]
    assert [row.split("  ")[0] for row in rows] == [
        "wrong current user", "wrong sqlstate", "wrong rows"]
    assert out.splitlines()[-1].startswith("1 passed, 3 failed in ")  # a wrong password

    status = main(["check", str(path), *database_flags(cluster), "-k", "alice maps"])
    out, err = capsys.readouterr()
    assert status == 0, out + err
    assert out.splitlines()[-1].startswith("1 passed in ")


@pytest.mark.parametrize(("text", "argv", "message"), [
    ("[[scenario]]\nname = 'a'\nusr = 'x'\n", [],
     '{path}: scenario[0].usr: unknown key (did you mean "user"?)'),
    ("[[scenario]]\nname = 'a'\nuser = 'x'\n", ["-k", "zzz"],
     'no scenario whose name contains "zzz" in {path}'),
    ("", [], "no scenario in {path}"),
    ("[[scenario]]\nname = 'a'\nuser = 'x'\nexpect = { login = 'refused', sqlstate = '28P01' }\n",
     ["--client", "psql"], "{path}: scenario[0].expect.sqlstate: psql cannot tell the SQLSTATE"),
    ("[[scenario]]\nname = 'a'\nuser = 'x'\n", ["--database-user", "u"],
     "command line: --database-user: {path} has no [database]"),
    ("[[scenario]]\nname = 'a'\nuser = 'x'\n", ["--database", "h:x"],
     "command line: --database: expected host:port"),
])
def test_mistakes_exit_2_before_anything_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, argv: list[str],
        message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["check", str(path), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("pgwire check: " + message.format(path=path)), err


def test_usage_errors_are_argparse_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["check", str(EXAMPLE), "--adapter", "twisted"])
    assert caught.value.code == 2
    assert "invalid choice: 'twisted'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["check"])
    assert "the following arguments are required: FILE" in capsys.readouterr().err


def test_a_missing_client_is_exit_2_not_a_skip(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails
    path = tmp_path / "one.toml"
    path.write_text("[[scenario]]\nname = 'a'\nuser = 'x'\n")
    assert main(["check", str(path), "--client", "psycopg"]) == 2
    assert capsys.readouterr().err == (
        "pgwire check: the psycopg client needs psycopg 3: pip install 'psycopg[binary]'\n")

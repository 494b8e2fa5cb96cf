"""``pgwire audit verify FILE``, run as a program."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgwire.audit import JsonLinesSink, QueryRecord

KEY = "cli test key"


def run(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgwire", "audit", "verify", *arguments],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def audit_file(tmp_path: Path) -> tuple[Path, tuple[int, str]]:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesSink(path, key=KEY)
    sink.write([QueryRecord(time="2024-05-01T12:00:00.000000Z", session_id=1, request=n,
                            sql=f"select {n}") for n in range(1, 6)])
    anchor = sink.anchor
    assert anchor is not None
    sink.close()
    return path, anchor


def test_an_intact_file_exits_0_with_the_count_and_last_hash(
        audit_file: tuple[Path, tuple[int, str]]) -> None:
    path, (seq, digest) = audit_file
    result = run(str(path), "--key-env", "TEST_AUDIT_CLI_KEY",
                 env={"TEST_AUDIT_CLI_KEY": KEY})
    assert result.returncode == 0, result.stderr
    assert "5 records" in result.stdout
    assert f"last seq {seq}" in result.stdout and digest in result.stdout


def test_an_edited_file_exits_1_with_the_first_bad_line(
        audit_file: tuple[Path, tuple[int, str]]) -> None:
    path, _ = audit_file
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("select 3", "select 9")
    path.write_text("".join(lines))
    result = run(str(path), "--key-env", "TEST_AUDIT_CLI_KEY",
                 env={"TEST_AUDIT_CLI_KEY": KEY})
    assert result.returncode == 1
    assert "line 3:" in result.stdout and "hash does not match" in result.stdout
    assert "the 2 records before it are intact" in result.stdout


def test_a_deleted_line_exits_1(audit_file: tuple[Path, tuple[int, str]]) -> None:
    path, _ = audit_file
    lines = path.read_text().splitlines(keepends=True)
    del lines[1]
    path.write_text("".join(lines))
    result = run(str(path), "--key-env", "TEST_AUDIT_CLI_KEY",
                 env={"TEST_AUDIT_CLI_KEY": KEY})
    assert result.returncode == 1 and "line 2:" in result.stdout


def test_without_the_key_a_keyed_file_does_not_verify(
        audit_file: tuple[Path, tuple[int, str]]) -> None:
    path, _ = audit_file
    result = run(str(path))
    assert result.returncode == 1 and "line 1:" in result.stdout and "key" in result.stdout


def test_the_anchor_catches_a_cut_tail(audit_file: tuple[Path, tuple[int, str]]) -> None:
    path, (seq, digest) = audit_file
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))
    env = {"TEST_AUDIT_CLI_KEY": KEY}
    assert run(str(path), "--key-env", "TEST_AUDIT_CLI_KEY", env=env).returncode == 0
    result = run(str(path), "--key-env", "TEST_AUDIT_CLI_KEY", "--anchor", f"{seq}:{digest}",
                 env=env)
    assert result.returncode == 1 and "cut off the end" in result.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    missing = run(str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    (tmp_path / "empty.jsonl").write_text("")
    unset = run(str(tmp_path / "empty.jsonl"), "--key-env", "TEST_AUDIT_CLI_UNSET")
    assert unset.returncode == 2 and "TEST_AUDIT_CLI_UNSET" in unset.stderr
    anchor = run(str(tmp_path / "empty.jsonl"), "--anchor", "x")
    assert anchor.returncode == 2 and "SEQ:HASH" in anchor.stderr
    empty = run(str(tmp_path / "empty.jsonl"))
    assert empty.returncode == 0 and "0 records" in empty.stdout

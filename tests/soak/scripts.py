"""Running the reliability scripts (reliability/*.py) from tests, and reading their reports.

Each script test file has a smoke run, unmarked (the script end to end for
a few seconds or a few hundred connections; each starts its own PostgreSQL
and proxy), which must print the report and pass every criterion a short
run can judge (a memory trend or a TPS ratio needs the full length), and a
full run marked ``soak`` (``nox -s soak``, or ``pytest -m soak -n 0 -s
tests/soak`` to see the reports) with the issue's parameters, where every
criterion must pass. ``test_rig.py`` tests their pure parts in memory.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

from tests.interop.proxy_wire import load_module

__all__ = ["assert_judged", "criteria", "full_run", "run", "script"]

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "reliability"
#: "  PASS  name of the criterion   what was measured"
CRITERION = re.compile(r"^  (PASS|FAIL)  (\S.*?)  +(.*)$", re.MULTILINE)


def script(name: str) -> ModuleType:
    """reliability/<name>.py as a module."""
    return load_module(SCRIPTS / f"{name}.py", f"reliability_{name}")


def run(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run reliability/<name>.py with ``args``; it must not end in a traceback.

    Past ``timeout`` the script gets SIGTERM, so that it stops the proxy and
    the cluster it started (SIGKILL would leave them running), and the test fails.
    """
    argv = [sys.executable, str(SCRIPTS / f"{name}.py"), *args]
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                stdout, stderr = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
            pytest.fail(f"{name}.py did not finish within {timeout:g} s\n{stdout}\n{stderr}")
    result = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def criteria(output: str) -> dict[str, bool]:
    """The report's criteria, by name: passed or not."""
    return {name: verdict == "PASS" for verdict, name, _ in CRITERION.findall(output)}


def assert_judged(result: subprocess.CompletedProcess[str], expected: Sequence[str],
                  *, too_short_to_judge: Sequence[str] = ()) -> None:
    """Every ``expected`` criterion is in the report and passed, except those a
    short run cannot judge (present, either way); the exit status and the
    result line agree with the verdicts."""
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    found = criteria(result.stdout)
    assert sorted(found) == sorted(expected), report
    failed = [name for name, passed in found.items()
              if not passed and name not in too_short_to_judge]
    assert not failed, f"failed: {failed}\n{report}"
    all_passed = all(found.values())
    assert result.returncode == (0 if all_passed else 1), report
    assert f"result: {'PASS' if all_passed else 'FAIL'}" in result.stdout, report


def full_run(name: str, *args: str, timeout: float, expected: Sequence[str]) -> None:
    """A full-length run: every criterion must pass; the report goes to stdout (-s)."""
    result = run(name, *args, timeout=timeout)
    print(result.stdout)
    assert_judged(result, expected)

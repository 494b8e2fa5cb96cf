"""benchmarks/bench_roles.py still runs end to end and prints its report (no timing is asserted).

The micro part needs no server: it runs with tiny counts, once plain and once
with ``--profile``. The whole script (micro and pgbench through the proxy
with and without the role middleware) runs for one second per pgbench run; it
starts its own PostgreSQL and is skipped without the server binaries and
pgbench. A row may say "skipped" only while what it needs is missing here
(pglast, or a middleware module).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_bench_proxy_run import pgbench_or_skip

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_roles.py"
QUICK = ("--statements", "200", "--logins", "20", "--repeat", "1")

MICRO = r"\d+\.\d\d"
RATIO = r"\d+\.\d\dx"
TPS = r"[\d,]+\.\d"

ANALYSIS_ROWS = ("first time (a new literal each)", "cached (the same text)")
SIMPLE_ROWS = ("none (baseline)", "none, check_protocol = true", "RoleRewrite (map)",
               "no-op reading the guard's types", "RoleGuard deny, first time",
               "RoleGuard deny, cached", "Audit, sink discards, cached",
               "Audit (JSON Lines), first time", "Audit (JSON Lines), cached",
               "all three, first time", "all three, cached")
EXTENDED_ROWS = ("none (baseline)", "none, check_protocol = true",
                 "no-op reading the guard's types", "RoleGuard deny", "Audit, sink discards",
                 "Audit (JSON Lines)", "all three")
LOGIN_ROWS = ("none (baseline)", "RoleRewrite (map, 3 rules)",
              "RoleGuard deny (+ its login query)", "Audit (JSON Lines)", "all three")
TARGETS = ("direct", "pgwire, no middleware", "pgwire, rewrite+guard+audit")
MODES = ("simple", "prepared")


def run(*arguments: str, timeout: float) -> str:
    result = subprocess.run([sys.executable, str(SCRIPT), *QUICK, *arguments], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{result.stderr}\n{result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def table(output: str, title_start: str) -> list[str]:
    """The rows of the table whose title line starts with ``title_start``."""
    found = re.search(rf"^{re.escape(title_start)}.*\n(.*\n)((?:  .*\n)*)", output, re.MULTILINE)
    assert found is not None, f"no table {title_start!r} in:\n{output}"
    return found.group(2).splitlines()


def row(rows: list[str], label: str) -> str:
    matching = [line for line in rows if line.startswith(f"  {label}  ")]
    assert len(matching) == 1, f"no single {label!r} row in:\n" + "\n".join(rows)
    return matching[0]


def middleware_present() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in (
        "pglast", "pgwire.middleware.roles", "pgwire.middleware.rewrite",
        "pgwire.middleware.audit"))


def check_micro(output: str) -> None:
    """Every micro table has every row, each with a time (and a ratio where there
    is a baseline), or "skipped" while a piece is missing."""
    measured = middleware_present()
    analysis = table(output, "(a) pgwire.roles._sql.analyze")
    for label in ANALYSIS_ROWS:
        line = row(analysis, label)
        if measured:
            assert re.fullmatch(rf"  {re.escape(label)} +{MICRO}", line), line
        else:
            assert re.fullmatch(rf"  {re.escape(label)} +skipped: .+", line), line
    if measured:
        assert re.search(r"^  first time / cached: \d+x$", output, re.MULTILINE)
    tables = (("(b, d) simple protocol", SIMPLE_ROWS),
              ("(b, d) extended protocol", EXTENDED_ROWS),
              ("(c) login", LOGIN_ROWS))
    for title, labels in tables:
        rows = table(output, title)
        assert re.fullmatch(rf"  none \(baseline\) +{MICRO} +1\.00x",
                            row(rows, "none (baseline)"))
        for label in labels:
            line = row(rows, label)
            assert (re.fullmatch(rf"  {re.escape(label)} +{MICRO} +{RATIO}", line)
                    or (not measured and "skipped: " in line)), line


def test_micro_only_prints_every_table_and_the_profile() -> None:
    output = run("--micro-only", "--profile", timeout=120)
    lines = output.splitlines()
    assert lines[0] == "role middleware benchmark: micro (200 statements, 20 logins per run)"
    assert re.fullmatch(r"Python 3\.\d+\.\d+ \(\w+\), \d+ CPUs, .+; best of 1 runs; "
                        r"gc enabled during timed runs", lines[1])
    check_micro(output)
    if middleware_present():
        assert "cProfile of (b) RoleGuard deny, first time, 200 statements:" in output
        assert re.search(r"roles\.py:\d+\(on_client_message\)|_sql\.py:\d+\(", output)
    assert "pgbench -S" not in output and "TPS" not in output
    assert re.search(r"^total time: \d+ s$", output, re.MULTILINE)


@pytest.mark.slow  # a real benchmark run, end to end: about 10 s
def test_quick_run_reports_micro_and_pgbench_through_the_middleware() -> None:
    pgbench_or_skip()
    output = run("--seconds", "1", "--clients", "2", timeout=300)
    check_micro(output)
    assert re.search(r"^pgbench -S \(select-only\), scale 1, 2 clients, 2 threads, "
                     r"1 s per run, 1 round, TLS off$", output, re.MULTILINE)
    for mode in MODES:
        rows = table(output, f"-M {mode} (")
        assert re.fullmatch(rf"  direct +{TPS} +1\.00x +{RATIO} +-", row(rows, "direct"))
        assert re.fullmatch(rf"  pgwire, no middleware +{TPS} +{RATIO} +1\.00x +\d+\.\d",
                            row(rows, "pgwire, no middleware"))
        line = row(rows, "pgwire, rewrite+guard+audit")
        if middleware_present():
            assert re.fullmatch(rf"  pgwire, rewrite\+guard\+audit +{TPS} +{RATIO} +{RATIO}"
                                r" +\d+\.\d", line)
        else:
            assert "skipped" in line
    final = RATIO if middleware_present() else rf"({RATIO}|n/a)"
    assert re.search(rf"^all three/no middleware: simple {final}, prepared {final}$",
                     output, re.MULTILINE), output
    if middleware_present():
        # The proxy really ran the audit: two records or more per transaction.
        found = re.search(r"^audit records written by the proxy: ([\d,]+)$", output, re.MULTILINE)
        assert found is not None and int(found.group(1).replace(",", "")) > 100, output
    assert re.search(r"^total time: \d+ s$", output, re.MULTILINE)

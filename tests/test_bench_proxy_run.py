"""benchmarks/bench_proxy.py still runs end to end and prints its report (no timing is asserted).

It starts its own PostgreSQL and runs pgbench for one second per target and
mode, so it needs the server binaries and pgbench; without them it is skipped.
The PgBouncer row must have numbers when PgBouncer is installed, and say how to
install it otherwise. The pgwire proxy row may say "skipped" only while
``python -m pgwire proxy --help`` fails, i.e. while the command does not exist.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pgwire.testing.cluster import ClusterUnavailable, find_postgres_bindir
from tests.interop.proxy_wire import load_module

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_proxy.py"

TPS = r"[\d,]+\.\d"
RATIO = r"\d+\.\d\dx"
MODES = ("simple", "prepared")


def pgbench_or_skip() -> None:
    try:
        bindir = find_postgres_bindir()
    except ClusterUnavailable as exc:
        pytest.skip(f"no PostgreSQL server binaries: {exc}".partition("\n")[0])
    if not (bindir / "pgbench").exists() and shutil.which("pgbench") is None:
        pytest.skip(f"pgbench is neither in {bindir} nor on PATH")


def pgwire_proxy_exists() -> bool:
    result = subprocess.run([sys.executable, "-m", "pgwire", "proxy", "--help"], cwd=ROOT,
                            capture_output=True, timeout=60, check=False)
    return result.returncode == 0


def pgbouncer_installed() -> bool:
    return shutil.which("pgbouncer") is not None or os.access("/usr/sbin/pgbouncer", os.X_OK)


def row(output: str, mode: str, label: str) -> str:
    """The report line for ``label`` in the table of ``mode``."""
    table = output.partition(f"\n-M {mode} (")[2].partition("\n\n")[0]
    lines = [line for line in table.splitlines() if line.startswith(f"  {label}  ")]
    assert len(lines) == 1, f"no single {label!r} row in the -M {mode} table:\n{table}"
    return lines[0]


@pytest.mark.slow  # a real benchmark run, end to end: about 10 s
def test_quick_run_reports_every_target_in_both_modes() -> None:
    pgbench_or_skip()
    proxy_exists = pgwire_proxy_exists()
    bouncer = pgbouncer_installed()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "1", "--clients", "2", "--scale", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    output = result.stdout
    assert result.returncode == 0, f"{result.stderr}\n{output}"
    assert "Traceback" not in result.stderr, result.stderr

    lines = output.splitlines()
    assert lines[0] == ("proxy benchmark: pgbench -S (select-only), scale 1, 2 clients, "
                        "2 threads, 1 s per run, 1 round, TLS off")
    assert re.fullmatch(r"Python 3\.\d+\.\d+ \(\w+\), \d+ CPUs, pgbench \(PostgreSQL\) .+, "
                        r"PostgreSQL \d+.*, (PgBouncer .+|PgBouncer not installed)", lines[1])
    assert lines[2] == f"pgwire proxy command: {sys.executable} -m pgwire proxy"

    measured = rf" +{TPS} +{RATIO} +"
    cpu = r" +\d+\.\d"  # the serving process's CPU microseconds per transaction
    for mode in MODES:
        assert re.fullmatch(rf"  direct +{TPS} +1\.00x +({RATIO}|n/a) +-",
                            row(output, mode, "direct"))
        assert re.fullmatch(rf"  asyncio relay \(baseline\){measured}({RATIO}|n/a){cpu}",
                            row(output, mode, "asyncio relay (baseline)"))
        bouncer_row = row(output, mode, "pgbouncer (session)")
        if bouncer:
            assert re.fullmatch(rf"  pgbouncer \(session\){measured}1\.00x{cpu}", bouncer_row)
        else:
            assert "skipped" in bouncer_row and "apt-get install pgbouncer" in bouncer_row
        pgwire_row = row(output, mode, "pgwire proxy")
        roles_row = row(output, mode, "pgwire + rewrite, guard, audit")
        if proxy_exists:
            assert re.fullmatch(rf"  pgwire proxy{measured}({RATIO}|n/a){cpu}", pgwire_row)
            assert re.fullmatch(rf"  pgwire \+ rewrite, guard, audit{measured}({RATIO}|n/a)"
                                rf"{cpu}", roles_row)
        else:
            assert re.fullmatch(r"  pgwire proxy +skipped +\(.*--help` exited \d+\)", pgwire_row)

    final = r"(\d+\.\d\dx)" if proxy_exists and bouncer else r"(\d+\.\d\dx|n/a)"
    assert re.search(rf"^pgwire/pgbouncer: simple {final}, prepared {final}$",
                     output, re.MULTILINE), output
    assert re.search(rf"^pgwire/pgbouncer CPU per txn: simple {final}, prepared {final}$",
                     output, re.MULTILINE), output
    for title, target in (("pgwire\\+roles/pgbouncer", ">= 0.90x"),
                          ("pgwire\\+roles/relay", ">= 0.95x"),
                          ("pgwire\\+roles/pgbouncer CPU per txn", "<= 1.30x")):
        assert re.search(rf"^{title}: simple {final}, prepared {final} \(target {target}\)$",
                         output, re.MULTILINE), output
    assert re.search(r"^total time: \d+ s$", output, re.MULTILINE)


def load_script() -> ModuleType:
    """benchmarks/bench_proxy.py as a module."""
    return load_module(SCRIPT, "bench_proxy")


@pytest.mark.parametrize(("output", "expected"), [
    # pgbench 14 and later
    ("latency average = 0.093 ms\ninitial connection time = 2.110 ms\n"
     "tps = 21436.812744 (without initial connection time)\n", 21436.812744),
    # pgbench 13 and earlier print both; the rate without connecting counts
    ("tps = 20901.338271 (including connections establishing)\n"
     "tps = 20954.119270 (excluding connections establishing)\n", 20954.119270),
    ("pgbench: error: connection to server failed\n", None),
], ids=["pgbench-14+", "pgbench-13", "no-rate"])
def test_tps_is_read_from_both_pgbench_output_formats(output: str,
                                                       expected: float | None) -> None:
    assert load_script().parse_tps(output) == expected

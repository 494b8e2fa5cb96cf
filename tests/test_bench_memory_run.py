"""benchmarks/bench_memory.py: its arithmetic, and a small end-to-end run (no memory
amount is asserted: only that every target ran and the report has numbers).

The end-to-end run starts its own PostgreSQL and three proxies, so it is
marked slow and skipped without the server binaries.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pgwire.testing.cluster import ClusterUnavailable, find_postgres_bindir
from tests.interop.proxy_wire import load_module

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_memory.py"
NUMBER = r"-?\d+\.\d"


def load_script() -> ModuleType:
    """benchmarks/bench_memory.py as a module."""
    return load_module(SCRIPT, "bench_memory")


def test_memory_of_this_process_is_read_from_proc() -> None:
    bench = load_script()
    memory = bench.Memory.of(os.getpid())
    assert memory.rss > 1024  # KiB: a Python process has more than 1 MiB resident
    assert memory.uss is None or 0 < memory.uss <= memory.rss


def test_per_session_and_marginal_cost() -> None:
    bench = load_script()
    reading = bench.Reading("x", before=bench.Memory(1000, 900),
                            at={100: bench.Memory(3000, 2900), 300: bench.Memory(6000, None)})
    assert reading.per_session(100, "rss") == 20.0
    assert reading.per_session(300, "rss") == 5000 / 300
    assert reading.per_session(300, "uss") is None
    assert reading.per_session(200, "rss") is None
    assert reading.marginal("rss") == 3000 / 200
    assert reading.marginal("uss") is None
    assert bench.Reading("y", before=bench.Memory(1, 1), at={5: bench.Memory(2, 2)}).marginal(
        "rss") is None


def test_sessions_argument() -> None:
    bench = load_script()
    assert bench.parse_args(["--sessions", "2000,500,500"]).counts == [500, 2000]
    with pytest.raises(SystemExit):
        bench.parse_args(["--sessions", "0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--sessions", "many"])


@pytest.mark.slow
def test_small_run_reports_every_target() -> None:
    try:
        find_postgres_bindir()
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--sessions", "10,30", "--adapter", "asyncio",
         "--adapter", "trio", "--adapter", "blocking", "--tracemalloc", "--top", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    table = output.partition("Proxy memory per idle session")[2]
    for label in ("asyncio relay (baseline)", "pgwire asyncio", "pgwire trio",
                  "pgwire blocking"):
        row = re.search(rf"^  {re.escape(label)} +(\d+\.\d) MiB((?: +\S+)+)$", table,
                        re.MULTILINE)
        assert row is not None, f"no row for {label}:\n{output}"
        cells = row.group(2).split()
        assert re.fullmatch(NUMBER, cells[0]) and re.fullmatch(NUMBER, cells[1]), row.group(0)
    middleware = re.search(r"^  pgwire asyncio, rewrite\+guard\+audit +(.*)$", table,
                           re.MULTILINE)
    assert middleware is not None, output
    assert "MiB" in middleware.group(1) or middleware.group(1).startswith("skipped: "), output
    assert "failed" not in middleware.group(1), output
    traced = output.partition("tracemalloc, pgwire asyncio, 30 idle sessions")[2]
    assert re.search(r"total \d+\.\d\d KiB per session", traced), output
    assert "pgwire/" in traced, output

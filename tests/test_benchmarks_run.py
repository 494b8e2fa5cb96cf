"""The benchmark scripts still run and print their report (no timing is asserted).

Each script checks, before it times anything, that every decoder it compares
returns exactly the messages that were encoded; a wrong decoder makes it exit
non-zero. Here they run on a tiny stream, once whole and once cut into 7-byte
chunks so that every message straddles a cut.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

RATE = r"[\d,]+ msg/s +[\d.]+ MB/s +[\d.]+ s"
RATIO = r"\d+\.\d\dx"


def run_script(name: str, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), "--rows", "200", "--repeat", "1", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        # No node column here: it may npm-install pg-protocol, which is no test's business.
        env={**os.environ, "PGWIRE_BENCH_NODE": "0"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.mark.parametrize("chunking", [(), ("--chunk-size", "7")], ids=["64KiB", "7B"])
def test_bench_decode_prints_every_variant_and_the_ratio(chunking: tuple[str, ...]) -> None:
    output = run_script("bench_decode.py", *chunking)
    assert output.startswith("decode benchmark: 200 DataRows, 203 messages, ")
    assert re.search(r"^Python 3\.\d+\.\d+ .*best of 1 runs; gc enabled during timed runs$",
                     output, re.MULTILINE)
    for variant in ("(a) pgwire Frontend", "(b) pygwire BackendMessageDecoder",
                    "(c) pgwire Frontend, decode={T,C,Z}", "(d) pygwire FrontendConnection"):
        assert re.search(rf"^  {re.escape(variant)}.* {RATE}$", output, re.MULTILINE), variant
    assert re.search(rf"^ratio pgwire/pygwire: {RATIO}$", output, re.MULTILINE)
    assert re.search(r"^  target >= 5x: (met|NOT met)$", output, re.MULTILINE)
    assert re.search(r"^\(e\) node pg-protocol skipped: .*PGWIRE_BENCH_NODE", output,
                     re.MULTILINE), output


@pytest.mark.parametrize("chunking", [(), ("--chunk-size", "7")], ids=["64KiB", "7B"])
def test_bench_framing_prints_both_framers_and_the_ratio(chunking: tuple[str, ...]) -> None:
    output = run_script("bench_framing.py", *chunking)
    assert output.startswith("framing benchmark: 203 messages, ")
    for variant in ("pgwire ReceiveBuffer.next_frame()", "naive bytearray framer (baseline)"):
        assert re.search(rf"^  {re.escape(variant)} +{RATE}$", output, re.MULTILINE), variant
    assert re.search(rf"^ratio pgwire/naive: {RATIO}$", output, re.MULTILINE)
    assert re.search(r"^  target >= 2,000,000 msg/s: (met|NOT met)$", output, re.MULTILINE)


def test_disabling_gc_is_announced() -> None:
    output = run_script("bench_framing.py", "--disable-gc")
    assert "gc DISABLED during timed runs" in output


def test_profile_option_prints_the_hot_functions() -> None:
    output = run_script("bench_framing.py", "--profile")
    assert re.search(r"_framing\.py:\d+\(next_frame\)", output)

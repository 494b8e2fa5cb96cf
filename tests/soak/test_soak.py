"""reliability/soak.py: mixed pgbench through the proxy with every middleware, nothing leaking."""

from __future__ import annotations

import re

import pytest

from tests.soak.scripts import assert_judged, full_run, run

CRITERIA = (
    "zero client errors", "RSS flat after warm-up (within 10%)",
    "no session left between phases", "fd count flat", "thread count flat",
    "proxy counted no error", "proxy logged no warning or error", "proxy exits 0 on SIGTERM",
    "pgwire audit verify passes", "a connect and a disconnect record per session",
    "every request completed ok", "audit completions match pgbench's transactions",
)


def test_a_short_soak_runs_every_phase_and_checks_the_audit_file() -> None:
    result = run("soak", "--minutes", "0.05", "--phase-seconds", "1", "--clients", "2",
                 timeout=120)
    assert_judged(result, CRITERIA, too_short_to_judge=["RSS flat after warm-up (within 10%)"])
    rows = re.findall(r"^ +(\d) +(\S+/\S+) +1 +[\d,.]+ +[\d,]+ +0 ", result.stdout, re.MULTILINE)
    assert [label for _, label in rows] == ["select-only/simple", "tpcb/simple",
                                            "mixed/extended", "mixed/prepared"], result.stdout


@pytest.mark.soak
@pytest.mark.timeout(3600)  # 10 minutes of load, then verifying a 3 GiB audit file (~6 min)
def test_ten_minutes_of_mixed_pgbench() -> None:
    full_run("soak", "--minutes", "10", timeout=3500, expected=CRITERIA)

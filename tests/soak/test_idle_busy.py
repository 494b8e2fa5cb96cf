"""reliability/idle_busy.py: idle sessions do not slow busy ones down."""

from __future__ import annotations

import re

import pytest

from tests.soak.scripts import assert_judged, full_run, run

CRITERIA = (
    "zero client errors", "every idle session still answers after the busy run",
    "busy TPS with idle sessions within 20%",
    "proxy CPU per transaction with idle sessions within 20%",
    "no session or backend left once the idle sessions closed",
    "fds back after the idle sessions closed", "proxy counted no error",
    "proxy exits 0 on SIGTERM",
)


def test_idle_sessions_stay_logged_in_through_a_busy_run() -> None:
    result = run("idle_busy", "--idle", "40", "--clients", "2", "--seconds", "1", "--rounds",
                 "1", timeout=120)
    assert_judged(result, ("40 idle sessions logged in", *CRITERIA),
                  too_short_to_judge=["busy TPS with idle sessions within 20%",
                                      "proxy CPU per transaction with idle sessions within 20%"])
    runs = re.findall(r"^ +(without 0|with idle 1|without 1) +(\d+) +[\d,.]+ ", result.stdout,
                      re.MULTILINE)
    assert runs == [("without 0", "0"), ("with idle 1", "40"), ("without 1", "0")], \
        result.stdout


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_two_thousand_idle_sessions_beside_eight_busy_clients() -> None:
    full_run("idle_busy", "--idle", "2000", "--clients", "8", timeout=1700,
             expected=("2,000 idle sessions logged in", *CRITERIA))

"""reliability/storm.py: connects and disconnects, many cut short, leave nothing behind."""

from __future__ import annotations

import re

import pytest

from tests.soak.scripts import assert_judged, full_run, run

CRITERIA = (
    "every connection went as its kind expects", "no session left in the proxy",
    "no backend left in PostgreSQL", "fds back to the baseline", "threads back to the baseline",
    "RSS within 10% of the baseline", "the proxy counted every connection and login",
    "no internal, upstream or login error", "proxy logged no error", "proxy exits 0 on SIGTERM",
    "pgwire audit verify passes", "audit: a disconnect per connect, an auth per login",
)


def test_a_small_storm_runs_every_kind_of_connection_and_finds_no_leak() -> None:
    result = run("storm", "--connections", "70", "--warm-up", "20", "--batch", "10",
                 timeout=120)
    assert_judged(result, CRITERIA, too_short_to_judge=["RSS within 10% of the baseline"])
    kinds = dict(re.findall(r"^ +([a-z ]+?) +(\d+) +\d+ +0$", result.stdout, re.MULTILINE))
    assert kinds == {"login": "28", "tls login": "7", "ssl request": "7", "half startup": "7",
                     "before password": "7", "reset handshake": "7", "reset query": "7"}, \
        result.stdout


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_ten_thousand_connections() -> None:
    full_run("storm", "--connections", "10000", timeout=1700, expected=CRITERIA)

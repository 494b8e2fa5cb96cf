"""The reliability scripts' pure parts: pgbench's report, audit counts, criteria, readings."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

import pgwire as pw
from tests.soak.scripts import criteria, script

PGBENCH_TWO_SCRIPTS = """\
pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: multiple scripts
scaling factor: 1
query mode: simple
number of clients: 2
number of threads: 1
maximum number of tries: 1
duration: 1 s
number of transactions actually processed: 643
number of failed transactions: 0 (0.000%)
latency average = 3.053 ms
initial connection time = 22.819 ms
tps = 655.194480 (without initial connection time)
SQL script 1: <builtin: select only>
 - weight: 1 (targets 50.0% of total)
 - 319 transactions (49.6% of total, tps = 325.049827)
 - number of failed transactions: 0 (0.000%)
SQL script 2: <builtin: TPC-B (sort of)>
 - weight: 1 (targets 50.0% of total)
 - 324 transactions (50.4% of total, tps = 330.144652)
 - number of failed transactions: 0 (0.000%)
"""

PGBENCH_ONE_SCRIPT = """\
transaction type: <builtin: select only>
number of transactions actually processed: 21527
number of failed transactions: 0 (0.000%)
tps = 7234.038120 (without initial connection time)
"""

# A client aborted: pgbench counts no failed transaction, says so on stderr, exits 2.
PGBENCH_ABORTED = """\
transaction type: /tmp/bad.sql
number of transactions actually processed: 0
number of failed transactions: 0 (NaN%)
pgbench: error: client 0 script 0 aborted in command 1 query 0: ERROR:  division by zero
pgbench: error: Run was aborted; the above results are incomplete.
"""


def test_a_pgbench_report_gives_rate_counts_and_transactions_per_script() -> None:
    rig = script("_rig")
    mixed = rig.PgbenchRun.parse(["pgbench"], 0, PGBENCH_TWO_SCRIPTS)
    assert (mixed.tps, mixed.transactions, mixed.failed) == (655.19448, 643, 0)
    assert mixed.by_script == {"select only": 319, "TPC-B (sort of)": 324}
    assert mixed.clean
    single = rig.PgbenchRun.parse(["pgbench"], 0, PGBENCH_ONE_SCRIPT)
    assert single.by_script == {"select only": 21527}
    assert single.clean


def test_an_aborted_client_or_a_failed_transaction_makes_a_run_unclean() -> None:
    rig = script("_rig")
    aborted = rig.PgbenchRun.parse(["pgbench"], 2, PGBENCH_ABORTED)
    assert aborted.aborted and aborted.failed == 0 and not aborted.clean
    assert "division by zero" in aborted.problem()
    failed = rig.PgbenchRun.parse(["pgbench"], 0, PGBENCH_ONE_SCRIPT.replace(
        "failed transactions: 0", "failed transactions: 3"))
    assert failed.failed == 3 and not failed.clean


def test_pgbench_statements_are_keyed_by_their_first_words() -> None:
    soak = script("soak")
    keys = {soak.statement_key(sql) for sql in (
        "BEGIN;", "END;", "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7;",
        "UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 1;",
        "UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 7, 1, "
        "CURRENT_TIMESTAMP);")}
    assert keys == {soak.SELECT, *soak.TPCB}
    assert soak.statement_key(None) == ""


def test_the_expected_completions_follow_the_transactions_per_script() -> None:
    soak, rig = script("soak"), script("_rig")
    runs = [rig.PgbenchRun.parse(["pgbench"], 0, text)
            for text in (PGBENCH_TWO_SCRIPTS, PGBENCH_ONE_SCRIPT)]
    phases = [soak.Phase(i, "label", 1, r, None, rig.Reading(1, 1, 1), True)
              for i, r in enumerate(runs)]
    expected = soak.expected_completions(phases)
    assert expected[soak.SELECT] == 319 + 324 + 21527
    assert all(expected[key] == 324 for key in soak.TPCB)


def test_audit_counts_read_events_statements_and_statuses(tmp_path: Path) -> None:
    def line(**fields: object) -> str:  # canonical JSON, as the JSON Lines sink writes
        return json.dumps({"hash": "0", "seq": 1, **fields}, sort_keys=True,
                          separators=(",", ":")) + "\n"

    path = tmp_path / "audit.jsonl"
    path.write_text("".join([
        line(event="connect"),
        line(event="query", sql="BEGIN;"),
        line(event="complete", sql="BEGIN;", status="ok"),
        line(event="complete", sql='SELECT abalance FROM "x" WHERE aid = 1;', status="ok"),
        line(event="complete", sql="END;", status="error"),
        line(event="disconnect"),
    ]))
    counts = script("soak").AuditCounts.read(path)
    assert counts.records == 6
    assert counts.events == {"connect": 1, "query": 1, "complete": 3, "disconnect": 1}
    assert counts.ok("begin") == 1 and counts.ok("select abalance") == 1
    assert counts.ok("end") == 0 and counts.not_ok() == 1
    assert script("_rig").audit_events(path) == counts.events


def test_the_criteria_decide_the_result_and_print_parseably(
        capsys: pytest.CaptureFixture[str]) -> None:
    checks = script("_rig").Criteria()
    checks.check("fd count flat", True, "16, 16")
    assert checks.passed
    checks.check("RSS flat after warm-up (within 10%)", False, "40.0 -> 50.0 MiB (+25.0%)")
    assert not checks.passed
    checks.print()
    output = capsys.readouterr().out
    assert criteria(output) == {"fd count flat": True,
                                "RSS flat after warm-up (within 10%)": False}
    assert output.endswith("result: FAIL\n")


def test_a_reading_counts_the_open_descriptors_and_threads(tmp_path: Path) -> None:
    rig = script("_rig")
    before = rig.Reading.of(os.getpid())
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    with (tmp_path / "f").open("w"):
        thread.start()
        try:
            during = rig.Reading.of(os.getpid())
        finally:
            stop.set()
            thread.join()
    assert during.fds == before.fds + 1
    assert during.threads == before.threads + 1
    assert during.rss_kib > 0


READY = pw.ReadyForQuery(status=pw.TransactionStatus.IDLE).encode()


@pytest.mark.parametrize(("answer", "alive"), [
    (pw.RowDescription(fields=()).encode() + pw.DataRow(values=(b"1",)).encode()
     + pw.CommandComplete(tag="SELECT 1").encode() + READY, True),
    (pw.ErrorResponse(severity="ERROR", code="57014", message="canceled").encode() + READY,
     False),
    (b"", False),  # the proxy closed the session
], ids=["a row", "an error", "closed"])
def test_an_idle_session_is_alive_when_select_1_gets_a_row(answer: bytes, alive: bool) -> None:
    idle_busy = script("idle_busy")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(10)
        # One byte at a time: the check must reassemble frames.
        def serve() -> None:
            assert theirs.recv(64)
            for offset in range(len(answer)):
                theirs.sendall(answer[offset:offset + 1])
            theirs.shutdown(socket.SHUT_WR)

        server = threading.Thread(target=serve)
        server.start()
        assert idle_busy.still_answers(ours) is alive
        server.join()



"""benchmarks/bench_pool.py still runs end to end and prints its report (no timing is asserted).

It starts its own PostgreSQL and runs pgbench for one second per target and
workload, so it needs the server binaries and pgbench; without them it is
skipped. The PgBouncer column must have numbers when PgBouncer is installed
(but for ``-M prepared`` before PgBouncer 1.21, which must say why not), and
say how to install it otherwise. The counters must show that the transaction
pool handed out a connection per transaction, the session pool one per client.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from test_bench_proxy_run import pgbench_or_skip, pgbouncer_installed

from tests.interop.proxy_wire import load_module

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_pool.py"

TPS = r"[\d,]+\.\d"
RATIO = r"\d+\.\d\dx"
WORKLOADS = (("simple", "select-only"), ("simple", "tpcb-like"),
             ("prepared", "select-only"), ("prepared", "tpcb-like"))
PGWIRE_LABELS = ("pgwire tx", "pgwire session", "pgwire no pool")
COUNTER_HEADINGS = ("transactions", "checkouts", "verifications", "resets", "discard_alls",
                    "reprepared", "pinned", "opened", "checkouts/txn", "cpu_us/txn")


def load_script() -> ModuleType:
    """benchmarks/bench_pool.py as a module."""
    return load_module(SCRIPT, "bench_pool")


def bouncer_version() -> str | None:
    """``PgBouncer 1.18.0``, or None when PgBouncer is not installed."""
    if not pgbouncer_installed():
        return None
    binary = load_script().bench_proxy.find_pgbouncer()
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                            check=False)
    return (result.stdout or result.stderr).strip().partition("\n")[0]


def tps_rows(output: str) -> dict[tuple[str, str], list[str]]:
    """The TPS table: (protocol, script) -> the cells after them, split on 2+ spaces."""
    table = output.partition("\nTPS (")[2].partition("\n\n")[0]
    rows: dict[tuple[str, str], list[str]] = {}
    for line in table.splitlines()[2:]:
        if line.startswith("  ["):
            continue  # a footnote
        protocol, script, rest = line.split(maxsplit=2)
        rows[protocol, script] = re.split(r" {2,}", rest.strip())
    return rows


def counter_rows(output: str) -> dict[tuple[str, str, str], dict[str, str]]:
    """The counters table: (protocol, script, pool label) -> heading -> value."""
    table = output.partition("\npgwire counters (")[2].partition("\n\n")[0]
    lines = table.splitlines()
    assert lines[1].split()[3:] == list(COUNTER_HEADINGS), lines[1]
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    for line in lines[2:]:
        protocol, script, rest = line.split(maxsplit=2)
        label = next(label for label in PGWIRE_LABELS if rest.startswith(label + " "))
        values = rest.removeprefix(label).split()
        rows[protocol, script, label] = dict(zip(COUNTER_HEADINGS, values, strict=True))
    return rows


def number(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.mark.slow  # a real benchmark run, end to end: about 10 s
def test_quick_run_reports_every_target_and_the_pool_counters() -> None:
    pgbench_or_skip()
    version = bouncer_version()
    bouncer_prepared = version is not None and load_script().bouncer_has_prepared(version)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--transactions", "30", "--clients", "2", "--scale", "1",
         "--protocols", "simple,prepared"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    output = result.stdout
    assert result.returncode == 0, f"{result.stderr}\n{output}"
    assert "Traceback" not in result.stderr, result.stderr

    lines = output.splitlines()
    assert lines[0] == ("pool benchmark: pgbench select-only and tpcb-like, -M simple,prepared, "
                        "scale 1, 2 clients, 2 threads, 30 transactions per client per run, "
                        "1 round, TLS off")
    assert re.fullmatch(r"Python 3\.\d+\.\d+ \(\w+\), \d+ CPUs, \w+, pgbench \(PostgreSQL\) .+, "
                        r"PostgreSQL \d+.*, (PgBouncer .+|PgBouncer not installed)", lines[1])
    assert lines[2].startswith("pool size 8 (PgBouncer default_pool_size, pool_mode = "
                               "transaction"), lines[2]
    assert lines[3] == ("pgwire no pool: ProxyConfig(upstream=...) with passthrough auth and no "
                        "middleware (python -m pgwire proxy), one server connection per client")
    assert re.fullmatch(r"pgwire commit ([0-9a-f]{4,}(, with uncommitted changes in pgwire/)?|"
                        r"unknown \(not a git checkout\))", lines[4]), lines[4]

    rows = tps_rows(output)
    assert sorted(rows) == sorted(WORKLOADS), output
    for (protocol, script), cells in rows.items():
        direct, bouncer, transaction, session, no_pool, ratio = cells
        for value in (direct, transaction, session, no_pool):
            assert re.fullmatch(TPS, value), f"{protocol} {script}: {cells}"
        if version is not None and (protocol != "prepared" or bouncer_prepared):
            assert re.fullmatch(TPS, bouncer), f"{protocol} {script}: {cells}"
            assert re.fullmatch(RATIO, ratio), f"{protocol} {script}: {cells}"
        else:
            assert re.fullmatch(r"skipped \[\d\]", bouncer), f"{protocol} {script}: {cells}"
            assert ratio == "n/a"
    if version is None:
        assert "apt-get install pgbouncer" in output
    elif not bouncer_prepared:
        assert re.search(rf"^  \[1\] pgbouncer tx: {re.escape(version)} has no "
                         r"max_prepared_statements \(1\.21 and later\)", output, re.MULTILINE)

    counters = counter_rows(output)
    assert sorted(counters) == sorted(
        (protocol, script, pool) for protocol, script in WORKLOADS
        for pool in PGWIRE_LABELS), output
    for (protocol, script, pool), values in counters.items():
        transactions = number(values["transactions"])
        assert transactions > 0, values
        assert re.fullmatch(r"\d+\.\d", values["cpu_us/txn"]), values
        if pool == "pgwire no pool":
            assert set(values.values()) == {values["transactions"], "-",
                                             values["cpu_us/txn"]}, values
            continue
        checkouts = number(values["checkouts"])
        assert number(values["opened"]) >= 1, values
        assert number(values["pinned"]) == 0, values  # pgbench leaves no session state
        if pool == "pgwire tx":
            # A connection per transaction (pgbench's own setup queries add a few).
            assert checkouts >= transactions, (protocol, script, values)
            assert re.fullmatch(r"1\.\d\d\d", values["checkouts/txn"]), values
        else:
            # A connection per client for its whole session.
            assert 0 < checkouts < transactions, (protocol, script, values)

    final = (r"(\d+\.\d\dx)" if version is not None else "n/a")
    final_prepared = final if bouncer_prepared else "n/a"
    assert re.search(rf"^pgwire tx/pgbouncer tx: simple select-only {final}, simple tpcb-like "
                     rf"{final}, prepared select-only {final_prepared}, prepared tpcb-like "
                     rf"{final_prepared}$", output, re.MULTILINE), output
    assert "pgwire internal errors" not in output
    assert re.search(r"^total time: \d+ s$", output, re.MULTILINE)


PGBENCH_15_OUTPUT = """\
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 1
query mode: prepared
number of clients: 8
number of threads: 8
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 41234
number of failed transactions: 0 (0.000%)
latency average = 1.938 ms
initial connection time = 12.512 ms
tps = 4127.613950 (without initial connection time)
"""


def test_pgbench_counts_are_read_from_its_output() -> None:
    script = load_script()
    assert script.parse_count(script.PROCESSED_LINE, PGBENCH_15_OUTPUT) == 41234
    assert script.parse_count(script.FAILED_LINE, PGBENCH_15_OUTPUT) == 0
    assert script.parse_count(script.FAILED_LINE, "pgbench: error: connection failed\n") is None


@pytest.mark.parametrize(("version", "expected"), [
    ("PgBouncer 1.18.0", False),
    ("PgBouncer 1.9.0", False),
    ("PgBouncer 1.21.0", True),
    ("PgBouncer 1.23.1", True),
    ("PgBouncer 2.0.0", True),
    ("PgBouncer not installed", False),
])
def test_prepared_statements_need_pgbouncer_1_21(version: str, expected: bool) -> None:
    assert load_script().bouncer_has_prepared(version) is expected


def test_threads_and_scale_default_to_the_client_count() -> None:
    args = load_script().parse_args(["--clients", "6"])
    assert (args.clients, args.threads, args.scale, args.protocols) == (6, 6, 6, ("simple",))


def test_prepared_with_fewer_threads_than_clients_and_a_smaller_pool_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script()
    with pytest.raises(SystemExit):
        script.parse_args(["--protocols", "simple,prepared", "--clients", "16", "--threads",
                           "4", "--pool-size", "8"])
    assert "deadlocks" in capsys.readouterr().err
    # A pool as large as the client count gives every client its own connection.
    args = script.parse_args(["--protocols", "prepared", "--clients", "8", "--threads", "2"])
    assert args.threads == 2
    # Without -M prepared, fewer threads are fine.
    assert script.parse_args(["--clients", "16", "--threads", "4"]).threads == 4


def test_unknown_protocols_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_script().parse_args(["--protocols", "simple,fast"])
    assert "expected a comma-separated list of simple, extended, prepared" in (
        capsys.readouterr().err)


def test_a_tally_keeps_the_best_rate_sums_the_counters_and_lets_a_failure_win() -> None:
    script = load_script()
    result = script.bench_proxy.Result
    tally = script.Tally()
    tally.add(script.Run(result(tps=100.0), 1000, {"checkouts": 1005, "verifications": 3,
                                                   "cpu_seconds": 0.5}))
    tally.add(script.Run(result(tps=80.0), 800, {"checkouts": 801, "reprepared": 2,
                                                 "cpu_seconds": 0.25}))
    assert tally.result == result(tps=100.0)
    assert tally.transactions == 1800
    assert tally.counters == {"checkouts": 1806, "verifications": 3, "reprepared": 2,
                              "cpu_seconds": 0.75}
    assert tally.spread() == "20%"
    assert not tally.done
    tally.add(script.Run(result(failed="pgbench exit 1"), internal_errors=1))
    assert tally.result == result(failed="pgbench exit 1")
    assert tally.done and tally.internal_errors == 1
    tally.add(script.Run(result(tps=500.0), 10))  # never replaces the failure
    assert tally.result == result(failed="pgbench exit 1")


def test_a_single_round_has_no_spread() -> None:
    script = load_script()
    tally = script.Tally()
    assert tally.spread() == "-"
    tally.add(script.Run(script.bench_proxy.Result(tps=10.0)))
    assert tally.spread() == "-"

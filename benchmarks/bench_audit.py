"""Audit sink throughput: JSON Lines records per second, hash chain included.

What the audit queue's thread spends per record, which it takes from the data
path's share of the GIL. Records are pgbench -S's pair: a ``query`` record
and its ``complete`` record, with realistic who-and-where fields. The file is
a fresh one in a temporary directory for every run; the clock covers making
the lines, hashing them and writing them.

- ``seal() per record``: the chain's definition written out, line by line:
  ``seal(record.as_dict(), ...)`` (canonical JSON with ``json.dumps``), as
  the sink wrote records before it had its own encoder. The baseline.
- ``JsonLinesSink.write, records``: the sink, batches of 500 records.
- ``JsonLinesSink.write, facts``: the same batches as the data path hands
  them over since the Audit middleware stopped building records: the facts
  a record is built from (:data:`pgwire.audit._records.Fact`).
- ``..., HMAC key``: the same with a key (HMAC-SHA-256 chain).

Every variant's file is checked to verify, and all variants' lines to be
identical. ``--rows`` is ten times the records per run (default 20,000
records). Run with no arguments::

    .venv/bin/python benchmarks/bench_audit.py
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from _harness import Runner, measure, parse_options, print_environment, profile

from pgwire.audit import GENESIS, CompletionRecord, JsonLinesSink, QueryRecord, seal, verify_chain
from pgwire.audit._records import AuditRecord, Fact, build_record

BATCH = 500
KEY = b"a key kept apart from the audit file"
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"

#: A run's outcome: (lines written, the file's last hash) against the expected pair.
Written = tuple[tuple[int, str], tuple[int, str]]


def make_facts(count: int) -> list[Fact]:
    """``count`` facts: query/complete pairs of one session, a new literal in each."""
    who = (17, os.getpid(), "127.0.0.1:51234", "bench", "bench", 4242, "bench")
    start = time.time_ns()
    facts: list[Fact] = []
    for n in range(count // 2):
        sql = SQL.format(aid=1_000_000 + n)
        facts.append((QueryRecord, start + 2000 * n, who, "bench", "pgbench", (n + 1, sql)))
        facts.append((CompletionRecord, start + 2000 * n + 900, who, "bench", "pgbench",
                      (n + 1, "query", sql, "ok", 0.000123 + n * 1e-9, 1, ("SELECT 1",), None)))
    return facts


def seal_runner(records: Sequence[AuditRecord], key: bytes | None, directory: Path,
                expected: tuple[int, str]) -> Runner[Written]:
    def run(_: list[bytes]) -> tuple[Written, float]:
        path = directory / f"seal-{time.perf_counter_ns()}.jsonl"
        with open(path, "w", encoding="ascii") as file:
            start = time.perf_counter()
            prev = GENESIS
            for first in range(0, len(records), BATCH):
                lines = []
                for seq, record in enumerate(records[first:first + BATCH], first + 1):
                    line, prev = seal(record.as_dict(), seq, prev, key)
                    lines.append(line)
                file.write("".join(lines))
                file.flush()
            seconds = time.perf_counter() - start
        return (check(path, key), expected), seconds

    return run


def sink_runner(items: Sequence[AuditRecord | Fact], key: bytes | None, directory: Path,
                expected: tuple[int, str]) -> Runner[Written]:
    def run(_: list[bytes]) -> tuple[Written, float]:
        path = directory / f"sink-{time.perf_counter_ns()}.jsonl"
        sink = JsonLinesSink(path, key)
        write: Callable[[Sequence[AuditRecord | Fact]], None] = sink.write
        start = time.perf_counter()
        for first in range(0, len(items), BATCH):
            write(items[first:first + BATCH])
        seconds = time.perf_counter() - start
        sink.close()
        return (check(path, key), expected), seconds

    return run


def check(path: Path, key: bytes | None) -> tuple[int, str]:
    result = verify_chain(path, key)
    if not result.ok or result.last_hash is None:
        raise SystemExit(f"{path} does not verify: {result}")
    path.unlink()
    return result.records, result.last_hash


def check_outcome(name: str, outcome: Written) -> None:
    done, expected = outcome
    if done != expected:
        raise SystemExit(f"{name}: wrote {done!r}, expected {expected!r}")


def main(argv: list[str] | None = None) -> None:
    options = parse_options(__doc__ or "", argv, fed_by="(unused)",
                            profiled="JsonLinesSink.write of facts")
    count = max(2, options.rows // 10)
    facts = make_facts(count)
    records = [build_record(fact) for fact in facts]
    directory = Path(tempfile.mkdtemp(prefix="pgwire-bench-audit-"))
    expected: dict[bytes | None, tuple[int, str]] = {}
    for key in (None, KEY):
        path = directory / "expected.jsonl"
        prev = GENESIS
        with open(path, "w", encoding="ascii") as file:
            for seq, record in enumerate(records, 1):
                line, prev = seal(record.as_dict(), seq, prev, key)
                file.write(line)
        expected[key] = (len(records), prev)
        path.unlink()
    runners: dict[str, Runner[Written]] = {
        "seal() per record": seal_runner(records, None, directory, expected[None]),
        "JsonLinesSink.write, records": sink_runner(records, None, directory, expected[None]),
        "JsonLinesSink.write, facts": sink_runner(facts, None, directory, expected[None]),
        "seal() per record, HMAC key": seal_runner(records, KEY, directory, expected[KEY]),
        "JsonLinesSink.write, facts, HMAC key": sink_runner(facts, KEY, directory,
                                                            expected[KEY]),
    }
    print_environment(f"{count:,} records per run in batches of {BATCH}", options)
    best = measure(runners, [], options.repeat, options.disable_gc, check_outcome)
    width = max(map(len, runners)) + 2
    baselines = {"": best["seal() per record"], "HMAC": best["seal() per record, HMAC key"]}
    print(f"  {'variant':<{width}} {'records/s':>12} {'µs/record':>10}  vs seal()")
    for name, seconds in best.items():
        against = baselines["HMAC" if "HMAC" in name else ""]
        print(f"  {name:<{width}} {count / seconds:>12,.0f} {seconds / count * 1e6:>10.2f}"
              f"  {against / seconds:>7.2f}x")
    if options.profile:
        profile(runners["JsonLinesSink.write, facts"], [])
    directory.rmdir()


if __name__ == "__main__":
    main()

"""seal_records, the JSON Lines sink's fast writer, spells every line exactly as
seal(record.as_dict(), ...) does: same bytes, same hashes, same errors, for
every record class and any values a record may hold. Files written before it
(line by line with seal) and after it form one chain that verifies."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgwire.audit import (
    EVENTS,
    GENESIS,
    AuditQueue,
    JsonLinesSink,
    QueryRecord,
    seal,
    verify_chain,
)
from pgwire.audit._chain import seal_records
from pgwire.audit._records import AuditRecord, Fact, build_record, format_time

from .helpers import TIMEOUT, ListSink

KEY = b"an audit key kept apart from the file"


class Level(enum.IntEnum):
    LOW = 1


class Text(str):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class OddRecord(AuditRecord):
    """A record of someone's own, with keys that sort around the chain's."""

    event = "odd % event \u00e9"

    aaa: Any = None
    hash_like: Any = None
    percent: Any = None
    zzz: Any = None


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**80), 2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e300, 5e-324, 1.5, 0.1]),
    st.text(),  # any code point, lone surrogates included
    st.text(st.sampled_from('%s%%"\\\n\x00\x7f\u2028\U0001f600ab')),
    st.builds(Text, st.text(max_size=5)),
    st.just(Level.LOW),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.tuples(inner, inner), st.lists(inner, max_size=3).map(tuple),
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)
classes = st.sampled_from([*EVENTS.values(), OddRecord])


@st.composite
def records(draw: st.DrawFn) -> AuditRecord:
    cls = draw(classes)
    data = {f.name: draw(values) for f in fields(cls)}
    record: AuditRecord = cls(**data)
    return record


COMMON = [f.name for f in fields(AuditRecord)]


@st.composite
def facts(draw: st.DrawFn) -> Fact:
    """A fact and nothing else: the record it stands for is made by build_record."""
    cls = draw(classes)
    who = tuple(draw(values) for _ in range(7))
    own = tuple(draw(values) for f in fields(cls) if f.name not in COMMON)
    nanoseconds = draw(st.integers(0, 2**62))
    return (cls, nanoseconds, who, draw(values), draw(values), own)


def sealed_one_by_one(batch: list[AuditRecord], seq: int, prev: str,
                      key: bytes | None) -> tuple[list[str], int, str]:
    lines = []
    for record in batch:
        seq += 1
        line, prev = seal(record.as_dict(), seq, prev, key)
        lines.append(line)
    return lines, seq, prev


record_batches = st.lists(records(), min_size=1, max_size=6)
seqs = st.integers(0, 10**9)
prevs = st.sampled_from([GENESIS, "ab" * 32, 'odd "prev" \u00e9'])
keys = st.sampled_from([None, KEY])


def check_lines(batch: list[AuditRecord], seq: int, prev: str, key: bytes | None) -> None:
    assert seal_records(batch, seq, prev, key) == sealed_one_by_one(batch, seq, prev, key)


@settings(max_examples=60, deadline=None)
@given(record_batches, seqs, prevs, keys)
def test_lines_are_those_of_seal(batch: list[AuditRecord], seq: int, prev: str,
                                 key: bytes | None) -> None:
    check_lines(batch, seq, prev, key)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@settings(max_examples=1500, deadline=None)
@given(record_batches, seqs, prevs, keys)
def test_lines_are_those_of_seal_at_length(batch: list[AuditRecord], seq: int, prev: str,
                                           key: bytes | None) -> None:
    check_lines(batch, seq, prev, key)


mixed_batches = st.lists(st.one_of(facts(), records()), min_size=1, max_size=6)


def check_facts(batch: list[AuditRecord | Fact], key: bytes | None) -> None:
    built = [item if isinstance(item, AuditRecord) else build_record(item) for item in batch]
    assert seal_records(batch, 0, GENESIS, key) == sealed_one_by_one(built, 0, GENESIS, key)


@settings(max_examples=60, deadline=None)
@given(mixed_batches, keys)
def test_a_fact_is_written_as_the_record_it_stands_for(batch: list[AuditRecord | Fact],
                                                       key: bytes | None) -> None:
    check_facts(batch, key)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@settings(max_examples=1500, deadline=None)
@given(mixed_batches, keys)
def test_a_fact_is_written_as_the_record_it_stands_for_at_length(
        batch: list[AuditRecord | Fact], key: bytes | None) -> None:
    check_facts(batch, key)


def test_facts_sharing_an_equal_but_differently_spelled_who_are_each_spelled_right() -> None:
    sql = "select 1"
    one = (QueryRecord, 0, (1, 2, None, None, None, 1, None), None, None, (1, sql))
    true = (QueryRecord, 0, (True, 2, None, None, None, 1.0, None), None, None, (1, sql))
    for batch in ([one, true], [true, one], [one, true, one]):
        check_facts(batch, None)  # type: ignore[arg-type]


@given(facts())
def test_build_record_is_the_constructor(fact: Fact) -> None:
    cls, nanoseconds, who, effective_role, application_name, own = fact
    names = [f.name for f in fields(cls) if f.name not in COMMON]
    made = cls(time=format_time(nanoseconds), session_id=who[0], proxy_pid=who[1],
               client_address=who[2], startup_user=who[3], upstream_role=who[4],
               effective_role=effective_role, backend_pid=who[5], database=who[6],
               application_name=application_name, **dict(zip(names, own, strict=True)))
    record = build_record(fact)
    assert type(record) is cls
    assert record == made
    assert record.as_dict() == made.as_dict()


def test_a_fact_with_the_wrong_number_of_values_is_refused() -> None:
    who = (1, 2, None, None, None, None, None)
    with pytest.raises(ValueError):
        build_record((QueryRecord, 0, who, None, None, (1,)))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, (1, math.nan), [math.inf]])
def test_numbers_json_cannot_carry_are_refused_alike(bad: Any) -> None:
    record = QueryRecord(time="t", session_id=1, request=1, sql="x", backend_pid=bad)
    with pytest.raises(ValueError):
        seal(record.as_dict(), 1, GENESIS)
    with pytest.raises(ValueError):
        seal_records([record], 0, GENESIS)


def test_a_record_with_a_chain_field_is_refused() -> None:
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Clash(AuditRecord):
        event = "clash"
        seq: int = 0

    record = Clash(time="t", session_id=1)
    with pytest.raises(ValueError, match="seq"):
        seal(record.as_dict(), 1, GENESIS)
    with pytest.raises(ValueError, match="seq"):
        seal_records([record], 0, GENESIS)


@pytest.mark.parametrize("key", [None, KEY])
def test_a_file_begun_line_by_line_and_continued_by_the_sink_verifies(
        tmp_path: Path, key: bytes | None) -> None:
    def query(n: int) -> QueryRecord:
        return QueryRecord(time="2024-05-01T12:00:00.000000Z", session_id=n, request=n,
                           sql=f"select {n} -- \u00e9\U0001f600", effective_role="r\u00f6le")

    path = tmp_path / "audit.jsonl"
    old, seq, prev = sealed_one_by_one([query(n) for n in range(5)], 0, GENESIS, key)
    path.write_text("".join(old), encoding="ascii")
    sink = JsonLinesSink(path, key)
    sink.write([query(n) for n in range(5, 12)])
    sink.close()
    result = verify_chain(path, key)
    assert result.ok, result
    assert result.records == 12
    written = path.read_text(encoding="ascii").splitlines(keepends=True)
    assert written[5:] == sealed_one_by_one([query(n) for n in range(5, 12)], seq, prev, key)[0]


# -- facts through the queue ------------------------------------------------------------


def test_the_queue_builds_the_records_of_facts_for_a_sink_that_takes_records(
        caplog: pytest.LogCaptureFixture) -> None:
    sink = ListSink()
    queue = AuditQueue(sink)
    who = (3, 77, "127.0.0.1:5000", "alice", "app", 4242, "db")
    good = (QueryRecord, 1_700_000_000_123_456_789, who, "alice", "psql", (1, "select 1"))
    broken = (QueryRecord, 0, who, None, None, (2,))  # a value short: a bug
    try:
        assert queue.put(good)
        assert queue.put(broken)
        assert queue.put(QueryRecord(time="t", session_id=3, request=3, sql="select 3"))
        assert queue.flush(TIMEOUT)
    finally:
        queue.close()
    assert [type(r) for r in sink.records] == [QueryRecord, QueryRecord]
    assert sink.records[0] == QueryRecord(
        time="2023-11-14T22:13:20.123456Z", session_id=3, proxy_pid=77,
        client_address="127.0.0.1:5000", startup_user="alice", upstream_role="app",
        effective_role="alice", backend_pid=4242, database="db", application_name="psql",
        request=1, sql="select 1")
    assert sink.records[1].request == 3  # type: ignore[attr-defined]
    stats = queue.stats
    assert (stats.accepted, stats.written, stats.lost, stats.queued) == (3, 2, 1, 0)
    assert "could not build a record" in caplog.text


def test_the_json_lines_sink_gets_facts_as_they_are_and_writes_their_records(
        tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesSink(path)
    assert sink.takes_facts
    who = (3, 77, "127.0.0.1:5000", "alice", "app", 4242, "db")
    fact = (QueryRecord, 1_700_000_000_123_456_789, who, "alice", "psql", (1, "select 1"))
    queue = AuditQueue(sink)
    try:
        assert queue.put(fact)
        assert queue.flush(TIMEOUT)
    finally:
        queue.close()
    [line] = path.read_text(encoding="ascii").splitlines(keepends=True)
    assert [line] == sealed_one_by_one([build_record(fact)], 0, GENESIS, None)[0]
    assert verify_chain(path).ok

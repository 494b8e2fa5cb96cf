"""The hash chain of JSON Lines audit files: valid files verify, any single
edit, deletion, insertion or swap is caught at the right line, and what a
chain cannot catch (lines cut off the end) is caught with an anchor."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgwire.audit import (
    GENESIS,
    ChainError,
    CompletionRecord,
    ErrorRecord,
    JsonLinesSink,
    QueryRecord,
    canonical_json,
    chain_hash,
    seal,
    verify_chain,
)
from pgwire.audit._records import AuditRecord

KEY = b"an audit key kept apart from the file"

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
roles = st.one_of(st.none(), st.sampled_from(["alice", "bob", "Ünïcode", 'quo"te']))


@st.composite
def audit_records(draw: st.DrawFn) -> AuditRecord:
    common: dict[str, Any] = {
        "time": "2024-05-01T12:00:00.000000Z",
        "session_id": draw(st.integers(1, 10)),
        "client_address": "127.0.0.1:5000",
        "startup_user": draw(roles),
        "upstream_role": draw(roles),
        "effective_role": draw(roles),
        "backend_pid": draw(st.one_of(st.none(), st.integers(1, 2**31 - 1))),
        "database": "app",
        "application_name": draw(st.one_of(st.none(), texts)),
    }
    kind = draw(st.sampled_from(["query", "complete", "error"]))
    if kind == "query":
        return QueryRecord(**common, request=draw(st.integers(1, 99)), sql=draw(texts))
    if kind == "complete":
        return CompletionRecord(
            **common, request=draw(st.integers(1, 99)), kind="query", sql=draw(texts),
            status=draw(st.sampled_from(["ok", "error", "skipped"])),
            duration=draw(st.floats(0, 100, allow_nan=False)),
            rows=draw(st.one_of(st.none(), st.integers(0, 10**12))),
            command_tags=tuple(draw(st.lists(texts, max_size=3))))
    return ErrorRecord(**common, request=None, sql=None, severity="ERROR", sqlstate="22012",
                       message=draw(texts))


record_lists = st.lists(audit_records(), min_size=1, max_size=8)


def chain_lines(records: list[AuditRecord], key: bytes | None = None) -> list[bytes]:
    lines: list[bytes] = []
    prev = GENESIS
    for seq, record in enumerate(records, 1):
        line, prev = seal(record.as_dict(), seq, prev, key)
        lines.append(line.encode("ascii"))
    return lines


def check(path: Path, lines: list[bytes], key: bytes | None = None) -> Any:
    path.write_bytes(b"".join(lines))
    return verify_chain(path, key)


def fixture_settings() -> Any:
    return settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- valid files --------------------------------------------------------------------------


@fixture_settings()
@given(records=record_lists, keyed=st.booleans())
def test_a_valid_file_always_verifies(tmp_path: Path, records: list[AuditRecord],
                                      keyed: bool) -> None:
    key = KEY if keyed else None
    result = check(tmp_path / "a.jsonl", chain_lines(records, key), key)
    assert result.ok, result
    assert result.records == result.last_seq == len(records)


def test_the_sink_writes_the_chain_and_continues_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = [QueryRecord(time="t", session_id=1, request=n, sql=f"select {n}") for n in (1, 2)]
    sink = JsonLinesSink(path, key=KEY)
    sink.write(first)
    assert sink.anchor is not None and sink.anchor[0] == 2
    sink.close()
    again = JsonLinesSink(path, key=KEY)
    again.write([QueryRecord(time="t", session_id=2, request=1, sql="select 3")])
    anchor = again.anchor
    again.close()
    result = verify_chain(path, KEY)
    assert result.ok and result.records == 3
    assert anchor == (result.last_seq, result.last_hash)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert lines[0]["prev"] == GENESIS
    assert lines[2]["prev"] == lines[1]["hash"]
    body = {k: v for k, v in lines[1].items() if k != "hash"}
    assert lines[1]["hash"] == chain_hash(canonical_json(body), KEY)


def test_closing_logs_the_anchor(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = JsonLinesSink(tmp_path / "audit.jsonl")
    sink.write([QueryRecord(time="t", session_id=1, request=1, sql="select 1")])
    with caplog.at_level(logging.INFO, logger="pgwire.audit"):
        sink.close()
    result = verify_chain(tmp_path / "audit.jsonl")
    [logged] = [r for r in caplog.records if hasattr(r, "audit_anchor")]
    assert logged.audit_anchor["seq"] == 1
    assert logged.audit_anchor["hash"] == result.last_hash
    assert result.last_hash in logged.getMessage()


def test_the_file_is_private_to_its_owner(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path / "audit.jsonl")
    sink.write([QueryRecord(time="t", session_id=1, request=1, sql="select 1")])
    sink.close()
    assert (tmp_path / "audit.jsonl").stat().st_mode & 0o777 == 0o600


def test_pid_in_the_path_gives_each_process_its_file(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path / "audit-{pid}.jsonl")
    sink.write([QueryRecord(time="t", session_id=1, request=1, sql="select 1")])
    sink.close()
    [path] = tmp_path.iterdir()
    assert path.name.startswith("audit-") and path.name[6:-6].isdigit()


def test_two_writers_on_one_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    record = QueryRecord(time="t", session_id=1, request=1, sql="select 1")
    first = JsonLinesSink(path)
    first.write([record])
    second = JsonLinesSink(path)
    with pytest.raises(ChainError, match="another audit writer"):
        second.write([record])
    first.close()
    second.write([record])
    second.close()
    assert verify_chain(path).records == 2


def test_a_file_ending_in_a_partial_line_is_not_continued(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = chain_lines([QueryRecord(time="t", session_id=1, request=1, sql="select 1")])
    path.write_bytes(lines[0] + b'{"event":"qu')
    with pytest.raises(ChainError, match="incomplete line"):
        JsonLinesSink(path)


def test_a_file_written_with_another_key_is_not_continued(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(chain_lines(
        [QueryRecord(time="t", session_id=1, request=1, sql="select 1")], KEY)))
    with pytest.raises(ChainError, match="does not verify"):
        JsonLinesSink(path, key=b"another key")
    JsonLinesSink(path, key=KEY).close()


# -- tampering ----------------------------------------------------------------------------


@fixture_settings()
@given(records=record_lists, data=st.data(), keyed=st.booleans())
def test_any_changed_byte_is_caught(tmp_path: Path, records: list[AuditRecord],
                                    data: st.DataObject, keyed: bool) -> None:
    key = KEY if keyed else None
    lines = chain_lines(records, key)
    blob = bytearray(b"".join(lines))
    position = data.draw(st.integers(0, len(blob) - 1))
    blob[position] = data.draw(st.integers(0, 255).filter(lambda b: b != blob[position]))
    (tmp_path / "a.jsonl").write_bytes(bytes(blob))
    result = verify_chain(tmp_path / "a.jsonl", key)
    assert not result.ok
    line_of_position = bytes(blob[:position]).count(b"\n") + 1
    assert result.bad_line is not None and result.bad_line <= line_of_position + 1


@fixture_settings()
@given(records=record_lists, data=st.data())
def test_an_edited_field_is_caught_at_its_line(tmp_path: Path, records: list[AuditRecord],
                                               data: st.DataObject) -> None:
    lines = chain_lines(records)
    index = data.draw(st.integers(0, len(lines) - 1))
    fields = json.loads(lines[index])
    name = data.draw(st.sampled_from(sorted(k for k in fields if k not in ("seq", "prev",
                                                                           "hash"))))
    value = data.draw(st.one_of(st.none(), st.integers(), texts).filter(
        lambda v: v != fields[name]))
    fields[name] = value
    lines[index] = (canonical_json(fields) + "\n").encode()  # a careful, canonical edit
    result = check(tmp_path / "a.jsonl", lines)
    assert not result.ok and result.bad_line == index + 1
    assert "hash does not match" in (result.reason or "")


@fixture_settings()
@given(records=st.lists(audit_records(), min_size=2, max_size=8), data=st.data())
def test_a_deleted_line_is_caught(tmp_path: Path, records: list[AuditRecord],
                                  data: st.DataObject) -> None:
    lines = chain_lines(records)
    index = data.draw(st.integers(0, len(lines) - 2))  # the last line: see truncation
    del lines[index]
    result = check(tmp_path / "a.jsonl", lines)
    assert not result.ok and result.bad_line == index + 1


@fixture_settings()
@given(records=st.lists(audit_records(), min_size=2, max_size=8), data=st.data())
def test_swapped_lines_are_caught(tmp_path: Path, records: list[AuditRecord],
                                  data: st.DataObject) -> None:
    lines = chain_lines(records)
    first = data.draw(st.integers(0, len(lines) - 2))
    second = data.draw(st.integers(first + 1, len(lines) - 1))
    lines[first], lines[second] = lines[second], lines[first]
    result = check(tmp_path / "a.jsonl", lines)
    assert not result.ok and result.bad_line == first + 1


@fixture_settings()
@given(records=record_lists, data=st.data(), keyed=st.booleans())
def test_an_inserted_line_is_caught(tmp_path: Path, records: list[AuditRecord],
                                    data: st.DataObject, keyed: bool) -> None:
    key = KEY if keyed else None
    lines = chain_lines(records, key)
    index = data.draw(st.integers(0, len(lines)))
    intruder = data.draw(st.one_of(
        st.sampled_from(lines),                                   # a copy of a real line
        st.builds(lambda r: chain_lines([r], key)[0], audit_records()),  # a fresh chain's line
        st.just(b"{}\n"),
        st.just(b"\n"),
    ))
    lines.insert(index, intruder)
    result = check(tmp_path / "a.jsonl", lines, key)
    assert not result.ok and result.bad_line is not None
    # An intruder that happens to fit its place (a copy of the line it lands on,
    # a first line at the top) moves the break to the line after it.
    assert index + 1 <= result.bad_line <= index + 2


def test_a_forged_line_at_the_end_needs_the_key(tmp_path: Path) -> None:
    records = [QueryRecord(time="t", session_id=1, request=n, sql=f"select {n}")
               for n in (1, 2)]
    lines = chain_lines(records, KEY)
    last = json.loads(lines[-1])
    forged_body = QueryRecord(time="t", session_id=1, request=3, sql="drop table evidence")
    # Someone without the key computes the next line as best they can.
    line, _ = seal(forged_body.as_dict(), 3, last["hash"], None)
    result = check(tmp_path / "a.jsonl", [*lines, line.encode()], KEY)
    assert not result.ok and result.bad_line == 3
    # Without a key, the same forgery is a valid chain: that is what the key is for.
    plain = chain_lines(records)
    line, _ = seal(forged_body.as_dict(), 3, json.loads(plain[-1])["hash"], None)
    assert check(tmp_path / "b.jsonl", [*plain, line.encode()]).ok


def test_the_wrong_key_fails_at_the_first_line(tmp_path: Path) -> None:
    lines = chain_lines([QueryRecord(time="t", session_id=1, request=1, sql="select 1")], KEY)
    result = check(tmp_path / "a.jsonl", lines, b"wrong")
    assert not result.ok and result.bad_line == 1 and "key" in (result.reason or "")
    unkeyed = check(tmp_path / "a.jsonl", lines)
    assert not unkeyed.ok and "written with a key" in (unkeyed.reason or "")


def test_cut_lines_are_caught_only_with_an_anchor(tmp_path: Path) -> None:
    records = [QueryRecord(time="t", session_id=1, request=n, sql=f"select {n}")
               for n in range(1, 6)]
    lines = chain_lines(records)
    full = check(tmp_path / "a.jsonl", lines)
    assert full.ok
    anchor = (full.last_seq, full.last_hash)
    assert check(tmp_path / "a.jsonl", lines[:3]).ok  # cut: still a valid chain
    cut = verify_chain(tmp_path / "a.jsonl", anchor=anchor)
    assert not cut.ok and cut.bad_line == 4 and "cut off the end" in (cut.reason or "")
    # The file kept growing after the anchor was taken: still fine.
    more = chain_lines([*records, QueryRecord(time="t", session_id=1, request=6, sql="x")])
    (tmp_path / "a.jsonl").write_bytes(b"".join(more))
    assert verify_chain(tmp_path / "a.jsonl", anchor=anchor).ok


def test_a_rewritten_chain_is_caught_by_the_anchor(tmp_path: Path) -> None:
    records = [QueryRecord(time="t", session_id=1, request=n, sql=f"select {n}")
               for n in range(1, 4)]
    anchor_result = check(tmp_path / "a.jsonl", chain_lines(records))
    anchor = (anchor_result.last_seq, anchor_result.last_hash)
    records[0] = QueryRecord(time="t", session_id=1, request=1, sql="select 'rewritten'")
    assert check(tmp_path / "a.jsonl", chain_lines(records)).ok
    result = verify_chain(tmp_path / "a.jsonl", anchor=anchor)
    assert not result.ok and result.bad_line == 3 and "anchor" in (result.reason or "")


def test_a_non_canonical_but_equal_line_is_caught(tmp_path: Path) -> None:
    lines = chain_lines([QueryRecord(time="t", session_id=1, request=1, sql="select 'é'")])
    spaced = json.dumps(json.loads(lines[0]), sort_keys=True).encode() + b"\n"
    result = check(tmp_path / "a.jsonl", [spaced])
    assert not result.ok and "canonical" in (result.reason or "")


def test_an_empty_file_is_a_valid_empty_chain(tmp_path: Path) -> None:
    result = check(tmp_path / "a.jsonl", [])
    assert result.ok and result.records == 0 and result.last_hash is None


def test_records_may_not_use_the_chain_field_names() -> None:
    with pytest.raises(ValueError, match="seq"):
        seal({"event": "x", "seq": 1}, 1, GENESIS)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(audit_records(), min_size=2, max_size=12), data=st.data(),
       keyed=st.booleans(), tampering=st.sampled_from(["byte", "delete", "swap", "insert"]))
def test_any_single_tampering_is_caught_long_run(tmp_path: Path, records: list[AuditRecord],
                                                 data: st.DataObject, keyed: bool,
                                                 tampering: str) -> None:
    key = KEY if keyed else None
    lines = chain_lines(records, key)
    if tampering == "byte":
        blob = bytearray(b"".join(lines))
        position = data.draw(st.integers(0, len(blob) - 1))
        blob[position] ^= data.draw(st.integers(1, 255))
        lines = [bytes(blob)]
    elif tampering == "delete":
        del lines[data.draw(st.integers(0, len(lines) - 2))]
    elif tampering == "swap":
        first = data.draw(st.integers(0, len(lines) - 2))
        second = data.draw(st.integers(first + 1, len(lines) - 1))
        lines[first], lines[second] = lines[second], lines[first]
    else:
        lines.insert(data.draw(st.integers(0, len(lines))), data.draw(st.sampled_from(lines)))
    assert not check(tmp_path / "a.jsonl", lines, key).ok

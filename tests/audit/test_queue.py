"""The bounded queue in front of a sink: its three policies when full, retries
of a failing sink, and nothing accepted lost at close.

Sinks that fall behind are real classes (tests/audit/helpers.py): one holds
each write at a gate the test opens, one fails its first writes.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from pgwire.audit import (
    AuditQueue,
    JsonLinesSink,
    LoggingSink,
    QueryRecord,
    Sink,
    make_sink,
    verify_chain,
)
from pgwire.middleware.audit import Audit

from .helpers import TIMEOUT, FlakySink, GateSink, ListSink


def record(n: int) -> QueryRecord:
    return QueryRecord(time="t", session_id=1, request=n, sql=f"select {n}")


def stuck_queue(sink: GateSink, capacity: int, policy: str) -> AuditQueue:
    """A queue whose writer is stuck on record 0 and whose queue holds ``capacity`` more."""
    queue = AuditQueue(sink, capacity=capacity, when_full=policy)  # type: ignore[arg-type]
    assert queue.put(record(0))
    assert sink.waiting.wait(TIMEOUT)
    for n in range(1, capacity + 1):
        assert queue.put(record(n))
    return queue


def test_drop_counts_what_it_throws_away() -> None:
    sink = GateSink()
    queue = stuck_queue(sink, 3, "drop")
    assert not queue.put(record(4))
    assert not queue.put(record(5), refusable=True)
    assert queue.stats.dropped == 2
    sink.open()
    queue.close()
    assert [r.request for r in sink.records] == [0, 1, 2, 3]
    stats = queue.stats
    assert (stats.accepted, stats.written, stats.dropped, stats.queued) == (4, 4, 2, 0)


def test_reject_refuses_only_refusable_records() -> None:
    sink = GateSink()
    queue = stuck_queue(sink, 2, "reject")
    assert not queue.put(record(3), refusable=True)
    assert queue.put(record(4))  # an outcome of an accepted statement: taken, above capacity
    assert queue.stats.refused == 1
    assert queue.stats.queued == 4
    sink.open()
    queue.close()
    assert [r.request for r in sink.records] == [0, 1, 2, 4]


def test_block_waits_for_room() -> None:
    sink = GateSink()
    queue = stuck_queue(sink, 2, "block")
    done = threading.Event()

    def put_one_more() -> None:
        queue.put(record(3))
        done.set()

    thread = threading.Thread(target=put_one_more)
    thread.start()
    assert not done.wait(0.3)  # the writer is stuck: no room, so put waits
    sink.open()
    assert done.wait(TIMEOUT)
    thread.join(TIMEOUT)
    queue.close()
    assert [r.request for r in sink.records] == [0, 1, 2, 3]
    assert queue.stats.dropped == queue.stats.refused == 0


def test_a_failing_sink_is_retried_until_it_writes() -> None:
    sink = FlakySink(failures=3)
    queue = AuditQueue(sink, retry_delay=0.001, max_retry_delay=0.002)
    for n in range(5):
        queue.put(record(n))
    assert queue.flush(TIMEOUT)
    queue.close()
    assert [r.request for r in sink.records] == [0, 1, 2, 3, 4]
    assert queue.stats.failed_batches == 3
    assert queue.stats.written == 5 and queue.stats.lost == 0


def test_close_gives_up_on_a_dead_sink_and_counts_the_loss(caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    sink = FlakySink(failures=-1)
    queue = AuditQueue(sink, close_timeout=0.0, retry_delay=0.001, max_retry_delay=0.001)
    for n in range(3):
        queue.put(record(n))
    with caplog.at_level(logging.ERROR, logger="pgwire.audit"):
        queue.close()
    stats = queue.stats
    assert stats.lost == 3 and stats.written == 0 and stats.queued == 0
    assert any("3 lost" in r.getMessage() for r in caplog.records)


def test_close_writes_everything_accepted_then_closes_the_sink(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path / "audit.jsonl")
    queue = AuditQueue(sink, capacity=10)
    for n in range(300):
        queue.put(record(n))
    queue.close()
    result = verify_chain(tmp_path / "audit.jsonl")
    assert result.ok and result.records == 300
    # Closed means closed: the file is unlocked, so another writer may continue it.
    again = JsonLinesSink(tmp_path / "audit.jsonl")
    again.write([record(300)])
    again.close()
    assert verify_chain(tmp_path / "audit.jsonl").records == 301


def test_a_closed_queue_starts_again_with_the_next_record() -> None:
    sink = ListSink()
    queue = AuditQueue(sink)
    queue.put(record(1))
    queue.close()
    queue.put(record(2))
    queue.close()
    assert [r.request for r in sink.records] == [1, 2]
    assert sink.closed == 2


def test_a_sink_may_ask_for_batches() -> None:
    class Batched(ListSink):
        batch_size = 4
        flush_interval = 30.0  # close() cuts the wait short

    sink = Batched()
    queue = AuditQueue(sink)
    for n in range(10):
        queue.put(record(n))
    queue.close()
    assert [r.request for r in sink.records] == list(range(10))
    assert sink.batches == 3


def test_logging_sink_puts_the_record_in_extra(caplog: pytest.LogCaptureFixture) -> None:
    sink = LoggingSink("pgwire.audit.test", "WARNING")
    with caplog.at_level(logging.WARNING, logger="pgwire.audit.test"):
        sink.write([record(7)])
    [logged] = caplog.records
    assert logged.levelno == logging.WARNING
    assert logged.audit["event"] == "query" and logged.audit["request"] == 7
    assert '"sql":"select 7"' in logged.getMessage()


def test_sinks_come_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_AUDIT_KEY", "secret")
    jsonl = make_sink({"type": "jsonl", "path": str(tmp_path / "a.jsonl"),
                       "key_env": "TEST_AUDIT_KEY"})
    assert isinstance(jsonl, JsonLinesSink)
    jsonl.write([record(1)])
    jsonl.close()
    assert verify_chain(tmp_path / "a.jsonl", "secret").ok
    assert not verify_chain(tmp_path / "a.jsonl").ok
    assert isinstance(make_sink("logging"), LoggingSink)
    custom = make_sink({"type": f"{ListSink.__module__}:ListSink"})
    assert isinstance(custom, ListSink) and isinstance(custom, Sink)
    with pytest.raises(ValueError, match="not set"):
        make_sink({"type": "jsonl", "path": "x", "key_env": "TEST_AUDIT_NO_SUCH_VARIABLE"})
    with pytest.raises(ValueError, match="unknown audit sink type"):
        make_sink({"type": "kafka"})
    with pytest.raises(TypeError, match="write"):
        make_sink({"type": "builtins:dict"})


def test_the_middleware_refuses_bad_queue_settings() -> None:
    with pytest.raises(ValueError, match="when_full"):
        Audit(ListSink(), when_full="spill")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity"):
        Audit(ListSink(), queue_size=0)

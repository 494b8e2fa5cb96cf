"""The bounded queue between the data path and a sink, and its one writer thread.

Hooks put records in (:meth:`AuditQueue.put`, never blocking unless the
policy is ``block``), or the facts a record is built from (a
:data:`~pgwire.audit._records.Fact`, cheaper to make); one background
thread per queue takes them out in batches, builds the records of the
facts, and hands each batch to the sink, retrying a batch that fails
until it is written. :meth:`AuditQueue.close` writes everything accepted,
then closes the sink.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, cast

from ._records import AuditRecord, Fact, build_record
from ._sinks import Sink

__all__ = ["WHEN_FULL", "AuditQueue", "AuditStats", "WhenFull"]

logger = logging.getLogger("pgwire.audit")

WhenFull = Literal["block", "drop", "reject"]
#: The policies for a full queue.
WHEN_FULL: Final[tuple[WhenFull, ...]] = ("block", "drop", "reject")
_DEFAULT_BATCH_SIZE: Final = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditStats:
    """Counters of one audit queue since it was made.

    - ``accepted``: records taken into the queue;
    - ``written``: records the sink wrote;
    - ``dropped``: records thrown away because the queue was full (``drop``);
    - ``refused``: statements refused because the queue was full (``reject``);
    - ``failed_batches``: calls to the sink's ``write`` that raised (each retried);
    - ``lost``: accepted records given up at close because the sink kept failing
      past ``close_timeout`` (and, were there a bug, records that could not be
      built from their facts);
    - ``queued``: records accepted and not yet written, now.
    """

    accepted: int
    written: int
    dropped: int
    refused: int
    failed_batches: int
    lost: int
    queued: int


class AuditQueue:
    """A bounded queue of records feeding one sink from one background thread.

    ``capacity`` bounds the records waiting (the batch being written is
    extra). When the queue is full, ``when_full`` says what :meth:`put` does:

    - ``block``: wait for room. The caller's thread stops: on a proxy, every
      session of that worker process waits (hooks run on the event loop, or
      under the blocking adapter's engine lock), and nothing runs unaudited;
    - ``drop``: throw the record away and count it (``stats.dropped``);
    - ``reject``: refuse a *refusable* record (the first record of a
      statement) so the caller can refuse the statement; other records
      (outcomes of statements already accepted) are taken anyway, above
      capacity, so the overshoot is bounded by the statements in flight.

    The thread starts with the first record and after :meth:`close` starts
    again with the next one (the sink reopens). A batch whose ``write``
    raises is retried, waiting ``retry_delay`` seconds and doubling up to
    ``max_retry_delay``; nothing accepted is lost, except at :meth:`close`
    after ``close_timeout`` seconds (None: wait for ever).
    """

    def __init__(self, sink: Sink, *, capacity: int = 10_000, when_full: WhenFull = "block",
                 close_timeout: float | None = 30.0, retry_delay: float = 0.1,
                 max_retry_delay: float = 5.0, name: str = "pgwire-audit") -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be at least 1, not {capacity!r}")
        if when_full not in WHEN_FULL:
            raise ValueError(f"when_full must be one of {', '.join(WHEN_FULL)}, "
                             f"not {when_full!r}")
        if close_timeout is not None and close_timeout < 0:
            raise ValueError(f"close_timeout must be >= 0 or None, not {close_timeout!r}")
        if not retry_delay > 0 or max_retry_delay < retry_delay:
            raise ValueError("retry delays must be positive, max_retry_delay >= retry_delay")
        self.sink = sink
        self.capacity = capacity
        self.when_full: WhenFull = when_full
        self.close_timeout = close_timeout
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.name = name
        self._batch_size = max(1, int(getattr(sink, "batch_size", _DEFAULT_BATCH_SIZE)))
        self._flush_interval = max(0.0, float(getattr(sink, "flush_interval", 0.0)))
        self._takes_facts = getattr(sink, "takes_facts", False) is True
        self._records: deque[AuditRecord | Fact] = deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._close_deadline: float | None = None
        self._in_flight = 0
        self._dropping = False
        self._accepted = self._written = self._dropped = self._refused = 0
        self._failed_batches = self._lost = 0

    # -- the data path -----------------------------------------------------------------

    def put(self, record: AuditRecord | Fact, *, refusable: bool = False) -> bool:
        """Queue ``record`` (or the fact it is built from); False when the policy
        threw it away (drop) or refused it (reject, and ``refusable``)."""
        with self._lock:  # the condition's lock: cheaper to enter than the condition
            if len(self._records) >= self.capacity:
                policy = self.when_full
                if policy == "block":
                    self._changed.wait_for(lambda: len(self._records) < self.capacity)
                elif policy == "drop":
                    self._dropped += 1
                    if not self._dropping:
                        self._dropping = True
                        logger.warning("audit queue %s is full (%d records): dropping records "
                                       "until it drains (when_full = drop)", self.name,
                                       self.capacity)
                    return False
                elif refusable:
                    self._refused += 1
                    return False
            if self._dropping:
                self._dropping = False
                logger.warning("audit queue %s: dropped %d records so far", self.name,
                               self._dropped)
            records = self._records
            records.append(record)
            self._accepted += 1
            if self._thread is None:
                self._start()
            elif len(records) == 1 or len(records) == self._batch_size:
                # The writer waits for a first record, or for a batch to fill.
                self._changed.notify_all()
            return True

    @property
    def stats(self) -> AuditStats:
        """A snapshot of the counters."""
        with self._lock:
            return AuditStats(accepted=self._accepted, written=self._written,
                              dropped=self._dropped, refused=self._refused,
                              failed_batches=self._failed_batches, lost=self._lost,
                              queued=len(self._records) + self._in_flight)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record accepted so far is written (or given up); False on timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._records and not self._in_flight, timeout)

    def close(self) -> None:
        """Write everything accepted (within ``close_timeout``), stop the thread,
        close the sink. Safe to call twice; a later :meth:`put` starts over."""
        with self._changed:
            thread = self._thread
            self._closing = True
            if self.close_timeout is not None:
                self._close_deadline = time.monotonic() + self.close_timeout
            self._changed.notify_all()
        try:
            if thread is not None:
                thread.join()
        finally:
            with self._changed:
                self._thread = None
                self._closing = False
                self._close_deadline = None
            try:
                self.sink.close()
            finally:
                stats = self.stats
                level = logging.ERROR if stats.lost else logging.INFO
                logger.log(level, "audit queue %s closed: %d written, %d dropped, %d refused, "
                           "%d failed batches, %d lost", self.name, stats.written,
                           stats.dropped, stats.refused, stats.failed_batches, stats.lost)

    # -- the writer thread -------------------------------------------------------------

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread = thread
        _LIVE.add(self)
        thread.start()

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            records = batch if self._takes_facts else self._build(batch)
            if records:
                self._deliver(records)

    def _build(self, batch: list[AuditRecord | Fact]) -> list[AuditRecord]:
        """The batch with each fact built into its record (one that cannot be is lost)."""
        records: list[AuditRecord] = []
        lost = 0
        for item in batch:
            if isinstance(item, AuditRecord):
                records.append(item)
                continue
            try:
                records.append(build_record(item))
            except Exception as exc:  # a bug: say so, and keep the thread and the rest
                lost += 1
                logger.error("audit queue %s could not build a record from %r: %s: %s",
                             self.name, item, type(exc).__name__, exc)
        if lost:
            with self._lock:
                self._lost += lost
                self._in_flight -= lost
                self._changed.notify_all()
        return records

    def _next_batch(self) -> list[AuditRecord | Fact] | None:
        with self._changed:
            self._changed.wait_for(lambda: bool(self._records) or self._closing)
            if not self._records:
                return None
            if self._flush_interval and not self._closing:
                # Let a batch fill up, for sinks that prefer few large writes.
                deadline = time.monotonic() + self._flush_interval
                while len(self._records) < self._batch_size and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
            count = min(self._batch_size, len(self._records))
            batch = [self._records.popleft() for _ in range(count)]
            self._in_flight = count
            self._changed.notify_all()  # room for a blocked put
            return batch

    def _deliver(self, batch: Sequence[AuditRecord | Fact]) -> None:
        # Facts only reach a sink that takes them (see _run).
        records = cast("Sequence[AuditRecord]", batch)
        delay = self.retry_delay
        while True:
            try:
                self.sink.write(records)
            except Exception as exc:
                with self._changed:
                    self._failed_batches += 1
                    deadline = self._close_deadline
                    if self._closing and deadline is not None and time.monotonic() >= deadline:
                        self._lost += len(batch)
                        self._in_flight = 0
                        self._changed.notify_all()
                        logger.error("audit sink %r failed while closing; %d records lost: %s",
                                     self.sink, len(batch), exc)
                        return
                logger.error("audit sink %r failed to write %d records (retrying in %g s): "
                             "%s: %s", self.sink, len(batch), delay, type(exc).__name__, exc)
                self._pause(delay)
                delay = min(delay * 2, self.max_retry_delay)
                continue
            with self._changed:
                self._written += len(batch)
                self._in_flight = 0
                self._changed.notify_all()
            return

    def _pause(self, seconds: float) -> None:
        """Wait before a retry; a close() with a deadline cuts the wait short."""
        until = time.monotonic() + seconds
        with self._changed:
            while True:
                deadline = self._close_deadline
                end = until if deadline is None else min(until, deadline)
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(remaining)


# Queues with a thread, closed at interpreter exit if nobody closed them.
_LIVE: weakref.WeakSet[AuditQueue] = weakref.WeakSet()


@atexit.register
def _close_live_queues() -> None:
    for queue in list(_LIVE):
        if queue._thread is not None:
            try:
                queue.close()
            except Exception as exc:  # exiting anyway; say what was lost
                logger.error("closing audit queue %s at exit failed: %s", queue.name, exc)

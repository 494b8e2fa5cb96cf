"""Shared pieces of the audit tests: small real sinks, and a sans-IO wire.

The sinks are real classes satisfying :class:`pgwire.audit.Sink`: one keeps
records in a list, one holds every write until a gate opens (to fill a
queue on purpose), one fails its first writes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pgwire as pw
from pgwire.audit import AuditRecord
from pgwire.middleware.audit import Audit
from pgwire.proxy import Action, Proxy, ProxyConfig
from pgwire.testing.harness import SessionHarness, drain

UPSTREAM = ("127.0.0.1", 5432)  # never connected to: the test plays the server
SERVER_PID = 4242
SERVER_KEY = (SERVER_PID, b"\x0a\x0b\x0c\x0d")
TIMEOUT = 15.0


class ListSink:
    """Keeps every record it is given, in order."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []
        self.batches = 0
        self.closed = 0

    def write(self, records: Sequence[AuditRecord]) -> None:
        self.batches += 1
        self.records.extend(records)

    def close(self) -> None:
        self.closed += 1

    def dicts(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.records]


class GateSink(ListSink):
    """Holds each write until :meth:`open` (a sink that has fallen behind)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        #: Set once a write is waiting at the gate.
        self.waiting = threading.Event()

    def write(self, records: Sequence[AuditRecord]) -> None:
        self.waiting.set()
        if not self.gate.wait(TIMEOUT):
            raise TimeoutError("the test never opened the gate")
        super().write(records)

    def open(self) -> None:
        self.gate.set()


class FlakySink(ListSink):
    """Raises on its first ``failures`` writes, then writes (forever failing with -1)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    def write(self, records: Sequence[AuditRecord]) -> None:
        self.attempts += 1
        if self.failures < 0 or self.attempts <= self.failures:
            raise OSError(f"write {self.attempts} failed on purpose")
        super().write(records)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as file:
        return [json.loads(line) for line in file]


def events(records: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] in names]


class Wire(SessionHarness):
    """One Audit session between a Frontend client and a Backend server.

    The server reads what reaches it as it arrives, so it knows which answers it
    owes; `server_events` returns everything it read since last asked.
    """

    def __init__(self, audit: Audit, proxy: Proxy | None = None, **settings: Any) -> None:
        if proxy is None:  # (an empty Proxy is falsy: it has no sessions yet)
            proxy = Proxy(ProxyConfig(upstream=UPSTREAM, middleware=[audit], **settings))
        super().__init__(proxy=proxy)
        self.received: list[object] = []

    def client_sends(self, *messages: pw.Message) -> list[Action]:
        actions = super().client_sends(*messages)
        self.received.extend(drain(self.server))
        return actions

    def server_events(self) -> list[object]:
        found = [*self.received, *drain(self.server)]
        self.received.clear()
        return found

    def login(self, user: str = "alice", database: str = "app",  # type: ignore[override]
              **options: Any) -> list[object]:
        """A passthrough login that the server accepts without a password."""
        return super().login(user=user, database=database,
                             parameters=(("application_name", "wire-test"),),
                             server_key=SERVER_KEY,
                             server_parameters=(("client_encoding", "UTF8"),
                                                ("application_name", "wire-test")),
                             **options)



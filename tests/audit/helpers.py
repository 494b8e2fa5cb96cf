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
from pgwire.proxy import (
    Action,
    CloseClient,
    CloseUpstream,
    OpenUpstream,
    Proxy,
    ProxyConfig,
    SendToClient,
    SendToUpstream,
)
from pgwire.proxy._actions import MAIN_LINK

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


class Wire:
    """One proxy session with a Frontend as the client and a Backend as the server."""

    def __init__(self, audit: Audit, proxy: Proxy | None = None, **settings: Any) -> None:
        if proxy is None:  # (an empty Proxy is falsy: it has no sessions yet)
            proxy = Proxy(ProxyConfig(upstream=UPSTREAM, middleware=[audit], **settings))
        self.proxy = proxy
        self.session = self.proxy.new_session(("127.0.0.1", 50000))
        self.client = pw.Frontend()
        self.server = pw.Backend()
        self.client_closed = False
        self.received: list[object] = []

    def feed(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendToClient):
                self.client.receive_data(action.data)
            elif isinstance(action, SendToUpstream) and action.link == MAIN_LINK:
                self.server.receive_data(action.data)
            elif isinstance(action, CloseClient):
                self.client_closed = True
                self.client.receive_data(b"")
            elif isinstance(action, CloseUpstream) and action.link == MAIN_LINK:
                self.server.receive_data(b"")

    def client_sends(self, *messages: pw.Message) -> None:
        self.feed(self.session.client_data(b"".join(self.client.send(m) for m in messages)))
        # The server reads what arrived, so it knows which answers it owes.
        self.received.extend(drain(self.server))

    def server_sends(self, *messages: pw.Message) -> None:
        self.feed(self.session.upstream_data(b"".join(self.server.send(m) for m in messages)))

    def client_events(self) -> list[object]:
        return drain(self.client)

    def server_events(self) -> list[object]:
        found = [*self.received, *drain(self.server)]
        self.received.clear()
        return found

    def login(self, user: str = "alice", database: str = "app") -> list[object]:
        """A passthrough login that the server accepts without a password."""
        self.feed(self.session.start())
        startup = pw.StartupMessage.from_dict({"user": user, "database": database,
                                               "application_name": "wire-test"})
        actions = self.session.client_data(self.client.send(startup))
        self.feed(actions)
        if not any(isinstance(a, OpenUpstream) for a in actions):
            return self.client_events()  # refused before reaching upstream
        self.feed(self.session.upstream_connected(MAIN_LINK))
        self.server_events()
        self.server_sends(
            pw.AuthenticationOk(),
            pw.ParameterStatus(name="client_encoding", value="UTF8"),
            pw.ParameterStatus(name="application_name", value="wire-test"),
            pw.BackendKeyData(process_id=SERVER_KEY[0], secret_key=SERVER_KEY[1]),
            pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))
        return self.client_events()


def drain(connection: pw.Frontend | pw.Backend) -> list[object]:
    found: list[object] = []
    while (event := connection.next_event()) is not pw.NEED_DATA:
        found.append(event)
        if isinstance(event, pw.ConnectionClosed):
            break
    return found

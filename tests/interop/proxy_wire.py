"""Helpers for tests/interop/test_proxy_clients.py: a raw protocol client and polling.

`RawClient` drives one :class:`pgwire.client.ClientConnection` over a
blocking socket, so a test can do what no driver does on demand: hang up in
the middle of a COPY, write garbage after the login, or watch for the exact
ErrorResponse and end of stream the proxy sends. Every socket operation
times out, so a proxy that never answers fails the test instead of hanging it.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import pgwire as pw
from pgwire.client import ClientConnection

__all__ = ["TIMEOUT", "RawClient", "load_example", "load_module", "read_line", "wait_until"]

#: Seconds any one client operation may take.
TIMEOUT = 10.0
#: The repository's examples/ directory.
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

Event = pw.FrontendEvent


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` every few milliseconds; fail the test if it stays false."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


class RawClient:
    """A ClientConnection on a blocking loopback socket."""

    def __init__(self, address: tuple[str, int], **connection: Any) -> None:
        self.conn = ClientConnection(**connection)
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.closed = False

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send(self, *messages: pw.Message) -> None:
        for message in messages:
            self.conn.send(message)
        self.flush()

    def send_bytes(self, data: bytes) -> None:
        """Bytes on the wire, past the connection's state machine."""
        self.sock.sendall(data)

    def next_event(self) -> Event:
        while True:
            event = self.conn.next_event()
            self.flush()
            if event is not pw.NEED_DATA:
                if isinstance(event, pw.ConnectionClosed):
                    self.closed = True
                return event
            self.conn.receive_data(self.sock.recv(65536))

    def events_until(self, predicate: Callable[[Event], bool]) -> list[Event]:
        """Events up to the first that matches ``predicate``, or the end of the stream."""
        events: list[Event] = []
        while True:
            event = self.next_event()
            events.append(event)
            if predicate(event) or isinstance(event, pw.ConnectionClosed):
                return events

    def login(self) -> list[Event]:
        self.conn.start()
        self.flush()
        events = self.events_until(lambda e: isinstance(e, pw.ReadyForQuery))
        assert isinstance(events[-1], pw.ReadyForQuery), events
        return events

    def query(self, sql: str) -> list[Event]:
        self.send(pw.Query(query=sql))
        return self.events_until(lambda e: isinstance(e, pw.ReadyForQuery))

    def scalar(self, sql: str) -> str:
        """The one value of a simple query that must succeed."""
        events = self.query(sql)
        rows = [e.values for e in events if isinstance(e, pw.DataRow)]
        assert len(rows) == 1 and rows[0][0] is not None, events
        return bytes(rows[0][0]).decode()

    def rest_of_stream(self) -> list[Event]:
        """Everything the peer sends until it closes the connection."""
        return self.events_until(lambda e: False)

    def abort(self) -> None:
        """Hang up with a TCP reset (SO_LINGER 0), as a crashed client does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def read_line(process: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    """The next line a subprocess prints, which must match ``pattern`` (else the
    test fails with what it printed instead and its stderr)."""
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(pattern, line)
    if match is None:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"expected {pattern!r}, got {line!r}; stderr:\n{stderr}")
    return match


def load_module(path: Path, name: str) -> ModuleType:
    """Import the file ``path`` as module ``name`` (examples/ and benchmarks/ are
    not packages); its directory goes on ``sys.path`` first, so that it finds its
    neighbours (bench_pool imports bench_proxy). Importing it twice gives the
    same module."""
    if name in sys.modules:
        return sys.modules[name]
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py from its path, as ``example_<name>``."""
    return load_module(EXAMPLES / f"{name}.py", f"example_{name}")

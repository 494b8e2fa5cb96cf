"""``pgwire demo --fake-server``: a scripted conversation with the in-memory server.

It starts the in-memory server of :mod:`pgwire.demo_server` on a free
loopback port, then plays a scripted conversation with it through a
:class:`pgwire.Frontend` on a plain socket — start-up, a simple query, an
extended query with a parameter, errors, pipelining, a transaction — printing
every message each side sends. If ``psql`` is on ``PATH`` it finally runs
``psql ... -c "select * from users"`` against the same server, to show that a
real client accepts it. ``--keep-running`` then leaves the server up until
Ctrl-C so you can try your own client.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import threading
from typing import TextIO

from .demo_server import DemoServer
from .protocol import (
    NEED_DATA,
    Bind,
    ConnectionClosed,
    DataRow,
    Describe,
    Execute,
    Frontend,
    Message,
    Parse,
    Query,
    RawMessage,
    ReadyForQuery,
    RowDescription,
    StartupMessage,
    Sync,
    Terminate,
)

__all__ = ["describe", "run_fake_demo"]

_TYPE_NAMES = {16: "bool", 20: "int8", 21: "int2", 23: "int4", 25: "text", 1043: "varchar"}


def describe(message: Message | RawMessage, encoding: str = "utf-8") -> str:
    """One readable line for a message: its name and the fields that are set.

    Rows are shown as text values (NULL for SQL nulls), row descriptions as
    ``name type`` pairs, start-up packets as their parameters.
    """
    if isinstance(message, RawMessage):
        return repr(message)
    name = type(message).__name__
    if isinstance(message, DataRow):
        values = ("NULL" if v is None else repr(v.decode(encoding, "replace"))
                  for v in message.values)
        return f"{name}({', '.join(values)})"
    if isinstance(message, RowDescription):
        columns = (f"{f.name} {_TYPE_NAMES.get(f.data_type_oid, f'oid {f.data_type_oid}')}"
                   + (" binary" if f.format else "") for f in message.fields)
        return f"{name}({', '.join(columns)})"
    if isinstance(message, StartupMessage):
        pairs = (f"{key}={value!r}" for key, value in message.parameters)
        return f"{name}({', '.join(pairs)})"
    if isinstance(message, ReadyForQuery):
        return f"{name}(status={message.status.value!r})"
    shown: list[str] = []
    assert dataclasses.is_dataclass(message)
    for spec in dataclasses.fields(message):
        value = getattr(message, spec.name)
        if spec.default is not dataclasses.MISSING and value == spec.default:
            continue
        if spec.default_factory is not dataclasses.MISSING and value == spec.default_factory():
            continue
        shown.append(f"{spec.name}={value!r}")
    return f"{name}({', '.join(shown)})"


class _ScriptedClient:
    """A Frontend on a socket that prints every message it sends and receives."""

    def __init__(self, sock: socket.socket, out: TextIO) -> None:
        self.sock = sock
        self.out = out
        self.frontend = Frontend()

    def send(self, *messages: Message) -> None:
        """Send ``messages`` in one write (several make a pipeline)."""
        data = b"".join(self.frontend.send(message) for message in messages)
        for message in messages:
            self.out.write(f"  client> {describe(message, self.frontend.encoding)}\n")
        self.sock.sendall(data)

    def receive(self) -> list[Message | RawMessage]:
        """Print and return the server's messages until the requests sent so far
        are all answered (one ReadyForQuery per Query or Sync), or the server closes."""
        events: list[Message | RawMessage] = []
        while True:
            event = self.frontend.next_event()
            if event is NEED_DATA:
                self.frontend.receive_data(self.sock.recv(65536))
                continue
            if isinstance(event, ConnectionClosed):
                self.out.write("  server closed the connection\n")
                return events
            assert not isinstance(event, type)
            events.append(event)
            self.out.write(f"  server> {describe(event, self.frontend.encoding)}\n")
            if isinstance(event, ReadyForQuery) and not self.frontend.busy:
                return events

    def exchange(self, *messages: Message) -> list[Message | RawMessage]:
        self.send(*messages)
        return self.receive()


def _heading(out: TextIO, text: str) -> None:
    out.write(f"\n== {text}\n")


def _conversation(port: int, out: TextIO) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        client = _ScriptedClient(sock, out)

        _heading(out, "Start-up: trust authentication, then the settings drivers read")
        client.exchange(StartupMessage.from_dict(
            {"user": "demo", "database": "demo", "application_name": "pgwire demo"}))

        _heading(out, "Simple query: one Query message, rows in text format")
        client.exchange(Query(query="select * from users"))

        _heading(out, "Two statements in one Query, each with its own CommandComplete")
        client.exchange(Query(query="select version(); show server_version"))

        _heading(out, "Extended query: Parse, Bind a parameter, Describe, Execute, Sync")
        client.exchange(
            Parse(query="select name, email from users where id = $1"),
            Bind(parameters=(b"2",)),
            Describe(kind="P"),
            Execute(),
            Sync(),
        )

        _heading(out, "An error: the server names the SQLSTATE and the character position")
        client.exchange(Query(query="select * from nosuch"))

        _heading(out, "Pipelining: three batches in one write; the failed one does not "
                      "affect the others")
        client.send(
            Parse(query="select $1::int as answer"), Bind(parameters=(b"42",)), Execute(), Sync(),
            Parse(query="selec 1"), Bind(), Execute(), Sync(),
            Parse(query="select current_user"), Bind(), Describe(kind="P"), Execute(), Sync(),
        )
        out.write(f"  ({client.frontend.pending_syncs} ReadyForQuery owed)\n")
        client.receive()

        _heading(out, "A transaction: ReadyForQuery reports the status (I idle, T in a "
                      "block, E failed)")
        client.exchange(Query(query="begin"))
        client.exchange(Query(query="select 1"))
        client.exchange(Query(query="select * from nosuch"))
        client.exchange(Query(query="commit"))

        _heading(out, "Terminate")
        client.send(Terminate())


def _psql_command(port: int) -> list[str]:
    return ["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "demo", "-d", "demo"]


def _run_psql(port: int, out: TextIO) -> bool:
    psql = shutil.which("psql")
    _heading(out, "A real client: psql")
    if psql is None:
        out.write("  psql is not on PATH; skipped\n")
        return True
    argv = [psql, *_psql_command(port)[1:], "-c", "select * from users"]
    out.write(f"  $ psql -X -h 127.0.0.1 -p {port} -U demo -d demo -c "
              '"select * from users"\n')
    env = dict(os.environ)
    env.setdefault("PGCLIENTENCODING", "UTF8")
    env.pop("PGPASSWORD", None)
    result = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8",
                            errors="replace", env=env, timeout=60, check=False)
    for line in (result.stdout + result.stderr).splitlines():
        out.write(f"  {line}\n")
    if result.returncode != 0:
        out.write(f"  psql failed with exit code {result.returncode}\n")
        return False
    return True


def run_fake_demo(host: str = "127.0.0.1", port: int = 0, *, keep_running: bool = False,
                  out: TextIO | None = None) -> int:
    """Run ``pgwire demo --fake-server``; return the exit status."""
    out = out or sys.stdout
    with DemoServer(host, port) as server:
        out.write(f"pgwire demo server listening on {host}:{server.port}\n")
        _conversation(server.port, out)
        ok = _run_psql(server.port, out)
        out.flush()
        if keep_running:
            command = " ".join(_psql_command(server.port))
            out.write(f"\nThe server is still running. Try:\n  {command}\n"
                      "Press Ctrl-C to stop.\n")
            out.flush()
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                out.write("stopped\n")
        if server.errors:
            out.write(f"the server failed: {server.errors!r}\n")
            ok = False
    return 0 if ok else 1

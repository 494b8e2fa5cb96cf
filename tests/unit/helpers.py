"""Shared helpers for the protocol-core unit tests.

Byte builders (:func:`frame`, :func:`packet`), a checker for the exact error
class and SQLSTATE (:func:`protocol_error`), and functions that take a
Frontend or a Backend through startup to the ready phase by feeding and
sending the messages a real peer would.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import pytest

import pgwire as pw

Event = pw.FrontendEvent | pw.BackendEvent
Connection = pw.Frontend | pw.Backend


def frame(type_code: bytes, body: bytes = b"") -> bytes:
    """A typed message: type byte, Int32 length (itself included), body."""
    return type_code + struct.pack("!i", len(body) + 4) + body


def header(type_code: bytes, length: int) -> bytes:
    """Only the type byte and a length word (for lengths that lie)."""
    return type_code + struct.pack("!i", length)


def packet(body: bytes) -> bytes:
    """An untyped startup-phase packet: Int32 length (itself included), body."""
    return struct.pack("!i", len(body) + 4) + body


def int16(value: int) -> bytes:
    return struct.pack("!h", value)


def int32(value: int) -> bytes:
    return struct.pack("!i", value)


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


@contextmanager
def protocol_error(
    error_class: type[pw.ProtocolError], sqlstate: str, match: str | None = None
) -> Iterator[pytest.ExceptionInfo[Any]]:
    """Expect exactly ``error_class`` (not a subclass, not its sibling) with ``sqlstate``."""
    with pytest.raises(pw.ProtocolError, match=match) as info:
        yield info
    assert type(info.value) is error_class, f"{type(info.value).__name__}: {info.value}"
    assert info.value.sqlstate == sqlstate, str(info.value)


class EventSource(Protocol):
    """Anything with next_event(): Frontend, Backend, ClientConnection, ServerConnection."""

    def next_event(self) -> Any: ...


def drain(connection: EventSource) -> list[Any]:
    """Every event available now (NEED_DATA excluded; stops after ConnectionClosed)."""
    events: list[Any] = []
    while True:
        event = connection.next_event()
        if event is pw.NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, pw.ConnectionClosed):
            return events


def feed(connection: Connection, *messages: pw.Message | bytes) -> list[Event]:
    """Feed messages (encoded with the connection's encoding) or raw bytes; drain."""
    for message in messages:
        data = message if isinstance(message, bytes) else message.encode(connection.encoding)
        connection.receive_data(data)
    return drain(connection)


def startup_message(
    protocol_version: int = pw.PROTOCOL_3_0, **parameters: str
) -> pw.StartupMessage:
    return pw.StartupMessage.from_dict(
        parameters or {"user": "alice", "database": "shop"}, protocol_version
    )


def ready_frontend(
    *,
    protocol_version: int = pw.PROTOCOL_3_0,
    secret_key: bytes = b"\x00\x00\x00\x2a",
    parameters: Mapping[str, str] | None = None,
    decode: set[bytes] | None = None,
    max_message_size: int | None = pw.DEFAULT_MAX_MESSAGE_SIZE,
) -> pw.Frontend:
    """A Frontend that sent a StartupMessage and received a trust login, in READY."""
    frontend = pw.Frontend(decode=decode, max_message_size=max_message_size)
    frontend.send(startup_message(protocol_version))
    session: list[pw.Message] = [pw.AuthenticationOk()]
    for name, value in (parameters or {"client_encoding": "UTF8"}).items():
        session.append(pw.ParameterStatus(name=name, value=value))
    session.append(pw.BackendKeyData(process_id=4242, secret_key=secret_key))
    session.append(pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))
    feed(frontend, *session)
    assert frontend.phase is pw.Phase.READY
    return frontend


def ready_backend(
    *,
    startup: pw.StartupMessage | None = None,
    decode: set[bytes] | None = None,
    max_message_size: int | None = pw.DEFAULT_MAX_MESSAGE_SIZE,
) -> pw.Backend:
    """A Backend that received a StartupMessage and answered with a trust login."""
    backend = pw.Backend(decode=decode, max_message_size=max_message_size)
    events = feed(backend, (startup or startup_message()).encode())
    assert isinstance(events[0], pw.StartupMessage)
    if backend.protocol_negotiation is not None:
        backend.send(backend.protocol_negotiation)
    backend.send(pw.AuthenticationOk())
    backend.send(pw.ParameterStatus(name="client_encoding", value="UTF8"))
    key = b"\x00\x00\x00\x2a" if backend.protocol_version & 0xFFFF < 2 else bytes(range(32))
    backend.send(pw.BackendKeyData(process_id=4242, secret_key=key))
    backend.send(pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))
    assert backend.phase is pw.Phase.READY
    return backend


class Pair:
    """A Frontend and a Backend joined by an in-memory wire.

    Each ``client``/``server`` call sends a message through its own side's
    ``send`` (so that side checks it) and feeds the bytes to the other side,
    returning what the other side saw. Both sides must agree on the phase.
    """

    def __init__(self) -> None:
        self.frontend = pw.Frontend()
        self.backend = pw.Backend()

    def client(self, *messages: pw.Message) -> list[Event]:
        for message in messages:
            self.backend.receive_data(self.frontend.send(message))
        events = drain(self.backend)
        self.check_agree()
        return events

    def server(self, *messages: pw.Message) -> list[Event]:
        for message in messages:
            self.frontend.receive_data(self.backend.send(message))
        events = drain(self.frontend)
        self.check_agree()
        return events

    def check_agree(self) -> None:
        assert self.frontend.phase is self.backend.phase
        assert self.frontend.pending_syncs == self.backend.pending_syncs
        assert self.frontend.transaction_status == self.backend.transaction_status

    @property
    def phase(self) -> pw.Phase:
        return self.frontend.phase

    def login(self, protocol_version: int = pw.PROTOCOL_3_0) -> Pair:
        self.client(startup_message(protocol_version))
        self.server(pw.AuthenticationOk())
        key = b"\x00\x00\x00\x2a" if protocol_version & 0xFFFF < 2 else bytes(range(32))
        self.server(
            pw.ParameterStatus(name="client_encoding", value="UTF8"),
            pw.BackendKeyData(process_id=4242, secret_key=key),
            pw.ReadyForQuery(status=pw.TransactionStatus.IDLE),
        )
        assert self.phase is pw.Phase.READY
        return self

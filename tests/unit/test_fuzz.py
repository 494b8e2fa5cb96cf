"""Fuzzing the protocol core: any input is accepted or raises our protocol error.

Whatever bytes a peer sends, a Frontend or Backend either returns events or
raises :class:`pgwire.RemoteProtocolError` (and then raises the same error on
every later ``next_event``); a decoder returns a message or raises
RemoteProtocolError. Anything else — IndexError, struct.error, TypeError,
UnicodeDecodeError, a hang — fails. Inputs are random bytes, streams built
of frames with plausible type bytes and lying lengths, and valid
conversations with bits flipped, bytes inserted or deleted.

A length word claiming up to 1 GiB must not make a connection allocate it
before the bytes arrive.

Each fuzz test has a ``slow`` twin with 20,000 examples (``pytest -m slow``).
"""

from __future__ import annotations

import contextlib
import struct
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pgwire as pw
from pgwire.protocol import _messages
from pgwire.testing import strategies as ps
from pgwire.testing.strategies import split

Connection = pw.Frontend | pw.Backend
Event = pw.FrontendEvent | pw.BackendEvent

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# The slow twins together stay within the suite's 10-minute budget on 2 cores.
SLOW = settings(FUZZ, max_examples=3000)
# Conversations cost far more per example than raw bytes.
FUZZ_STREAMS = settings(FUZZ, max_examples=60)
SLOW_STREAMS = settings(FUZZ, max_examples=750)
slow = pytest.mark.slow
slow_timeout = pytest.mark.timeout(900)

MESSAGE_CLASSES = sorted(
    (
        obj for name in pw.__all__
        if isinstance(obj := getattr(pw, name), type) and issubclass(obj, pw.Message)
    ),
    key=lambda cls: cls.__name__,
)

# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------

_LENGTHS = st.one_of(
    st.sampled_from([-1, 0, 3, 4, 5, 8, 0x7FFFFFFF, -(2**31), 10000, 10001, 30000, 2**30]),
    st.integers(-(2**31), 2**31 - 1),
)


@st.composite
def frames(draw: st.DrawFn, type_codes: bytes) -> bytes:
    """One typed frame: a plausible type byte, a body, and a length that usually tells the truth."""
    code = draw(st.one_of(st.sampled_from([bytes([c]) for c in type_codes]),
                          st.binary(min_size=1, max_size=1)))
    body = draw(st.binary(max_size=40))
    length = len(body) + 4 if draw(st.integers(0, 4)) else draw(_LENGTHS)
    return code + struct.pack("!i", length) + body


def streams(type_codes: bytes, valid: st.SearchStrategy[pw.Message],
            prefix: bytes = b"") -> st.SearchStrategy[bytes]:
    """Random bytes; a run of frames with plausible type bytes and junk; or
    valid messages in any order (after ``prefix``), intact or corrupted."""
    framed = st.lists(st.one_of(frames(type_codes), st.binary(max_size=6)), max_size=8).map(
        b"".join)
    messages = st.lists(valid, max_size=8).map(
        lambda ms: prefix + b"".join(m.encode() for m in ms))
    return st.one_of(st.binary(max_size=200), framed, messages,
                     messages.flatmap(lambda data: ps.mutations(data, max_edits=2)))


CLIENT_CODES = b"QPBDECSHFXdcfp"
SERVER_CODES = b"RSKZTDCIENG1234HWVnstvdcA"
# What a trusting server sends after the StartupMessage.
LOGIN = b"".join(m.encode() for m in (
    pw.AuthenticationOk(), pw.ParameterStatus(name="client_encoding", value="UTF8"),
    pw.BackendKeyData(process_id=1, secret_key=b"\0\0\0\1"), pw.ReadyForQuery()))
CLIENT_STREAMS = streams(CLIENT_CODES, ps.frontend_messages())
SERVER_STREAMS = st.one_of(streams(SERVER_CODES, ps.backend_messages()),
                           streams(SERVER_CODES, ps.backend_messages(), LOGIN))


@st.composite
def startup_streams(draw: st.DrawFn) -> bytes:
    """Bytes for a server in the startup phase: random, packet-shaped, or a real
    packet followed by more."""
    code = draw(st.one_of(
        st.sampled_from([196608, 196610, 0x00040000, 80877102, 80877103, 80877104]),
        st.integers(-(2**31), 2**31 - 1)))
    body = struct.pack("!i", code) + draw(st.binary(max_size=60))
    length = len(body) + 4 if draw(st.integers(0, 3)) else draw(_LENGTHS)
    packet = struct.pack("!i", length) + body
    real = draw(ps.startup_packets()).encode()
    return draw(st.one_of(
        st.binary(max_size=100),
        st.just(packet),
        st.tuples(st.just(real), CLIENT_STREAMS).map(b"".join),
        st.just(packet + real),
        st.builds(lambda tail: b"\x16\x03\x01" + tail, st.binary(max_size=20)),
    ))


# ---------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------


def respond_as_server(backend: pw.Backend, event: Event) -> None:
    """What a minimal trusting server answers, so fuzzing reaches later phases."""
    if isinstance(event, pw.SSLRequest):
        backend.send(pw.SSLResponse(accepted=False))
    elif isinstance(event, pw.GSSENCRequest):
        backend.send(pw.GSSENCResponse(accepted=False))
    elif isinstance(event, pw.StartupMessage):
        if backend.protocol_negotiation is not None:
            backend.send(backend.protocol_negotiation)
        backend.send(pw.AuthenticationOk())
        key = b"\0\0\0\1" if backend.protocol_version & 0xFFFF < 2 else bytes(32)
        backend.send(pw.BackendKeyData(process_id=1, secret_key=key))
        backend.send(pw.ReadyForQuery())
    elif isinstance(event, (pw.Query, pw.Sync, pw.FunctionCall)):
        backend.send(pw.ReadyForQuery())


_PASSWORD_ANSWERS: dict[type, pw.Message] = {
    pw.AuthenticationCleartextPassword: pw.PasswordMessage(password=b"secret"),
    pw.AuthenticationMD5Password: pw.PasswordMessage(password=b"md5" + b"0" * 32),
    pw.AuthenticationSASL: pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=b"n,,n=,r=x"),
    pw.AuthenticationSASLContinue: pw.SASLResponse(data=b"c=biws,r=x,p=x"),
    pw.AuthenticationGSS: pw.GSSResponse(data=b"token"),
    pw.AuthenticationSSPI: pw.GSSResponse(data=b"token"),
}


def respond_as_client(frontend: pw.Frontend, event: Event) -> None:
    """What a minimal client answers, so fuzzing reaches later phases."""
    answer = _PASSWORD_ANSWERS.get(type(event))
    if answer is not None:
        frontend.send(answer)
    elif isinstance(event, pw.ReadyForQuery) and not frontend.busy:
        frontend.send(pw.Query(query="select 1"))
    elif isinstance(event, pw.CopyInResponse):
        frontend.send(pw.CopyData(data=b"1\n"))
        frontend.send(pw.CopyDone())
    elif isinstance(event, pw.CopyBothResponse):
        frontend.send(pw.CopyDone())


def pump(connection: Connection, respond: Callable[[Event], None] | None = None,
         events: list[Event] | None = None) -> list[Event]:
    """Take events until NEED_DATA or ConnectionClosed (bounded: each event
    consumes input), appending them to ``events`` as they come."""
    events = [] if events is None else events
    for _ in range(100000):
        event = connection.next_event()
        if event is pw.NEED_DATA:
            return events
        assert isinstance(event, (pw.Message, pw.RawMessage, pw.ConnectionClosed,
                                  pw.DirectTLSHandshake)), event
        events.append(event)
        if isinstance(event, pw.ConnectionClosed):
            assert connection.phase is pw.Phase.CLOSED
            return events
        if respond is not None:
            respond(event)
    raise AssertionError("next_event() never ran out of events")


def accepted_or_protocol_error(
    connection: Connection, chunks: Iterator[bytes] | list[bytes], eof: bool,
    respond: Callable[[Event], None] | None = None,
) -> pw.ProtocolError | None:
    """Feed and drain; a ProtocolError is fine, anything else propagates and fails."""
    try:
        for chunk in chunks:
            connection.receive_data(chunk)
            pump(connection, respond)
        if eof:
            connection.receive_data(b"")
            events = pump(connection, respond)
            assert events and isinstance(events[-1], pw.ConnectionClosed)
    except pw.ProtocolError as exc:
        check_protocol_error(connection, exc)
        return exc
    return None


def check_protocol_error(connection: Connection, exc: pw.ProtocolError) -> None:
    assert len(exc.sqlstate) == 5 and exc.sqlstate.isalnum(), exc.sqlstate
    assert exc.message
    assert isinstance(exc, (pw.RemoteProtocolError, pw.LocalProtocolError))
    pw.error_response(exc).encode()  # a proxy can always report it
    if isinstance(exc, pw.RemoteProtocolError):
        # The connection is latched in its error state.
        for _ in range(2):
            with pytest.raises(pw.RemoteProtocolError) as again:
                connection.next_event()
            assert again.value is exc


cut = split


CHUNK_SIZES = st.lists(st.integers(1, 64), max_size=8)


def ready_backend() -> pw.Backend:
    """A Backend after StartupMessage, AuthenticationOk and ReadyForQuery."""
    backend = pw.Backend()
    backend.receive_data(pw.StartupMessage.from_dict({"user": "alice"}).encode())
    assert isinstance(backend.next_event(), pw.StartupMessage)
    backend.send(pw.AuthenticationOk())
    backend.send(pw.BackendKeyData(process_id=1, secret_key=b"\0\0\0\1"))
    backend.send(pw.ReadyForQuery())
    assert backend.phase is pw.Phase.READY
    return backend


def started_frontend(**options: object) -> pw.Frontend:
    """A Frontend that sent its StartupMessage."""
    frontend = pw.Frontend(**options)  # type: ignore[arg-type]
    frontend.send(pw.StartupMessage.from_dict({"user": "alice"}))
    return frontend


def busy_frontend(**options: object) -> pw.Frontend:
    """A Frontend in the ready phase with a simple Query in flight."""
    frontend = started_frontend(**options)
    for message in (pw.AuthenticationOk(), pw.ParameterStatus(name="client_encoding", value="UTF8"),
                    pw.BackendKeyData(process_id=1, secret_key=b"\0\0\0\1"), pw.ReadyForQuery()):
        frontend.receive_data(message.encode())
        event = frontend.next_event()
        assert event == message or bytes(event) == message.encode()  # type: ignore[arg-type]
    frontend.send(pw.Query(query="select 1"))
    assert frontend.busy
    return frontend


def busy_frontend_with_rows() -> pw.Frontend:
    """A Frontend receiving a result set of two columns."""
    frontend = busy_frontend()
    description = pw.RowDescription(fields=(pw.FieldDescription(name="a"),
                                            pw.FieldDescription(name="b")))
    frontend.receive_data(description.encode())
    assert frontend.next_event() == description
    return frontend


# ---------------------------------------------------------------------------
# Connections fed arbitrary bytes
# ---------------------------------------------------------------------------


def fuzz_backend_startup(data: bytes, sizes: list[int], eof: bool) -> None:
    backend = pw.Backend()
    accepted_or_protocol_error(backend, cut(data, sizes), eof,
                               lambda event: respond_as_server(backend, event))


@FUZZ
@example(data=b"\0\0\0\x08\x04\xd2\x16/", sizes=[], eof=False)  # SSLRequest alone
@example(data=b"\0\0\0\x08\x04\xd2\x16/\0", sizes=[], eof=False)  # ... with a byte after it
@given(data=startup_streams(), sizes=CHUNK_SIZES, eof=st.booleans())
def test_backend_in_startup(data: bytes, sizes: list[int], eof: bool) -> None:
    fuzz_backend_startup(data, sizes, eof)


@slow
@slow_timeout
@SLOW
@given(data=startup_streams(), sizes=CHUNK_SIZES, eof=st.booleans())
def test_backend_in_startup_slow(data: bytes, sizes: list[int], eof: bool) -> None:
    fuzz_backend_startup(data, sizes, eof)


def fuzz_ready_backend(data: bytes, sizes: list[int], eof: bool, decode: bool) -> None:
    backend = ready_backend()
    if not decode:
        backend = pw.Backend(decode=set())
        backend.receive_data(pw.StartupMessage.from_dict({"user": "alice"}).encode())
        respond_as_server(backend, backend.next_event())
    accepted_or_protocol_error(backend, cut(data, sizes), eof,
                               lambda event: respond_as_server(backend, event))


@FUZZ
@given(data=CLIENT_STREAMS, sizes=CHUNK_SIZES, eof=st.booleans(),
       decode=st.booleans())
def test_backend_after_login(data: bytes, sizes: list[int], eof: bool, decode: bool) -> None:
    fuzz_ready_backend(data, sizes, eof, decode)


@slow
@slow_timeout
@SLOW
@given(data=CLIENT_STREAMS, sizes=CHUNK_SIZES, eof=st.booleans(),
       decode=st.booleans())
def test_backend_after_login_slow(data: bytes, sizes: list[int], eof: bool, decode: bool) -> None:
    fuzz_ready_backend(data, sizes, eof, decode)




def fuzz_started_frontend(data: bytes, sizes: list[int], eof: bool) -> None:
    frontend = started_frontend()
    accepted_or_protocol_error(frontend, cut(data, sizes), eof,
                               lambda event: respond_as_client(frontend, event))


@FUZZ
@given(data=SERVER_STREAMS, sizes=CHUNK_SIZES, eof=st.booleans())
def test_frontend_after_startup(data: bytes, sizes: list[int], eof: bool) -> None:
    fuzz_started_frontend(data, sizes, eof)


@slow
@slow_timeout
@SLOW
@given(data=SERVER_STREAMS, sizes=CHUNK_SIZES, eof=st.booleans())
def test_frontend_after_startup_slow(data: bytes, sizes: list[int], eof: bool) -> None:
    fuzz_started_frontend(data, sizes, eof)


@st.composite
def result_streams(draw: st.DrawFn) -> bytes:
    """A valid-looking result (rows of 2 columns) with some frames corrupted."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["row", "row", "row", "other", "junk"]))
        if kind == "row":
            parts.append(draw(ps.data_rows(draw(st.sampled_from([2, 2, 0, 3])),
                                           allow_max_count=False)).encode())
        elif kind == "other":
            parts.append(draw(ps.backend_messages()).encode())
        else:
            parts.append(draw(frames(b"D")))
    stream = b"".join(parts)
    if stream and draw(st.booleans()):
        stream = draw(ps.mutations(stream))
    return stream


def fuzz_busy_frontend(data: bytes, sizes: list[int], eof: bool, rows: bool) -> None:
    frontend = busy_frontend_with_rows() if rows else busy_frontend()
    accepted_or_protocol_error(frontend, cut(data, sizes), eof,
                               lambda event: respond_as_client(frontend, event))


@FUZZ
@given(data=st.one_of(SERVER_STREAMS, result_streams()), sizes=CHUNK_SIZES,
       eof=st.booleans(), rows=st.booleans())
def test_frontend_with_a_query_in_flight(
    data: bytes, sizes: list[int], eof: bool, rows: bool
) -> None:
    fuzz_busy_frontend(data, sizes, eof, rows)


@slow
@slow_timeout
@SLOW
@given(data=st.one_of(SERVER_STREAMS, result_streams()), sizes=CHUNK_SIZES,
       eof=st.booleans(), rows=st.booleans())
def test_frontend_with_a_query_in_flight_slow(
    data: bytes, sizes: list[int], eof: bool, rows: bool
) -> None:
    fuzz_busy_frontend(data, sizes, eof, rows)


Outcome = tuple[list[Event], tuple[type, str, str] | None]


def outcome(make: Callable[[], Connection], chunks: list[bytes]) -> Outcome:
    """The events a fresh connection returns for ``chunks`` then EOF, and the
    protocol error that stopped it (class, SQLSTATE, message), if any."""
    connection = make()

    def respond(event: Event) -> None:
        if isinstance(connection, pw.Frontend):
            respond_as_client(connection, event)
        else:
            respond_as_server(connection, event)

    events: list[Event] = []
    try:
        for chunk in [*chunks, b""]:
            connection.receive_data(chunk)
            pump(connection, respond, events)
    except pw.ProtocolError as exc:
        return events, (type(exc), exc.sqlstate, exc.message)
    return events, None


def check_same_outcome(make: Callable[[], Connection], data: bytes, sizes: list[int]) -> None:
    at_once = outcome(make, [data] if data else [])
    assert outcome(make, cut(data, sizes)) == at_once
    assert outcome(make, [data[i : i + 1] for i in range(len(data))]) == at_once


MAKERS: dict[str, Callable[[], Connection]] = {
    "frontend-after-startup": started_frontend,
    "frontend-reading-rows": busy_frontend_with_rows,
    "frontend-raw-rows": lambda: busy_frontend(decode=set()),
    "backend-after-login": ready_backend,
}
INPUTS = {
    "frontend-after-startup": SERVER_STREAMS,
    "frontend-reading-rows": st.one_of(SERVER_STREAMS, result_streams()),
    "frontend-raw-rows": st.one_of(SERVER_STREAMS, result_streams()),
    "backend-after-login": CLIENT_STREAMS,
}


@pytest.mark.parametrize("case", sorted(MAKERS))
@settings(FUZZ, max_examples=100)
@given(data=st.data(), sizes=CHUNK_SIZES)
def test_outcome_does_not_depend_on_how_bytes_are_cut(
    case: str, data: st.DataObject, sizes: list[int]
) -> None:
    """Events and the final error are the same for any cut of any input.

    (Not in the startup phase: there, bytes that arrive together with an
    SSLRequest are refused, by design, and a TLS handshake takes what is buffered.)
    """
    check_same_outcome(MAKERS[case], data.draw(INPUTS[case]), sizes)


@pytest.mark.parametrize("cut_into", ["whole", "bytes"])
def test_a_truncated_data_row_is_judged_by_its_own_bytes(cut_into: str) -> None:
    """A DataRow announcing a column it does not contain, followed by more bytes.

    Its error must not depend on the bytes after the frame (here: what looks
    like a column length of -2**31), so it must not depend on the cut either.
    """
    row = b"D" + struct.pack("!i", 6) + b"\x00\x01"  # one column, no length word
    data = row + b"\x80\x00\x00\x00"
    chunks = [data] if cut_into == "whole" else [data[i : i + 1] for i in range(len(data))]
    events, error = outcome(busy_frontend_with_rows, chunks)
    assert events == []
    assert error == (pw.RemoteProtocolError, "08P01", "insufficient data left in message")


@slow
@slow_timeout
@pytest.mark.parametrize("case", sorted(MAKERS))
@settings(SLOW, max_examples=750)
@given(data=st.data(), sizes=CHUNK_SIZES)
def test_outcome_does_not_depend_on_how_bytes_are_cut_slow(
    case: str, data: st.DataObject, sizes: list[int]
) -> None:
    check_same_outcome(MAKERS[case], data.draw(INPUTS[case]), sizes)


# ---------------------------------------------------------------------------
# Decoders fed arbitrary bytes
# ---------------------------------------------------------------------------


def bodies(cls: type[pw.Message]) -> st.SearchStrategy[bytes]:
    """Random bytes, or a valid body of ``cls`` (when it has one) mutated."""
    random = st.binary(max_size=120)
    try:
        valid = ps.strategy_for(cls)
    except KeyError:
        return random
    if cls in (pw.SSLResponse, pw.GSSENCResponse):
        return st.one_of(random, valid.map(lambda m: m.encode()))
    untyped = cls in (pw.StartupMessage, pw.SSLRequest, pw.GSSENCRequest, pw.CancelRequest)
    body = valid.map(lambda m: m.encode()[4:] if untyped else m.encode()[5:])
    return st.one_of(random, body, body.flatmap(ps.mutations))


def fuzz_decode(cls: type[pw.Message], body: bytes) -> None:
    try:
        message = cls.decode(body)
    except pw.RemoteProtocolError as exc:
        assert exc.sqlstate
        return
    assert isinstance(message, cls)


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=[c.__name__ for c in MESSAGE_CLASSES])
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_decode_of_every_message_class(cls: type[pw.Message], data: st.DataObject) -> None:
    fuzz_decode(cls, data.draw(bodies(cls)))


@slow
@slow_timeout
@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=[c.__name__ for c in MESSAGE_CLASSES])
@settings(SLOW, max_examples=600)
@given(data=st.data())
def test_decode_of_every_message_class_slow(cls: type[pw.Message], data: st.DataObject) -> None:
    fuzz_decode(cls, data.draw(bodies(cls)))


def fuzz_connection_decode(code: bytes, body: bytes) -> None:
    frame = code + struct.pack("!i", len(body) + 4) + body
    raw = pw.RawMessage(code, frame, 5, len(frame))
    for connection in (pw.Frontend(), pw.Backend()):
        with contextlib.suppress(pw.RemoteProtocolError):
            assert isinstance(connection.decode(raw), pw.Message)


@FUZZ
@given(code=st.binary(min_size=1, max_size=1), body=st.binary(max_size=80))
def test_decode_of_any_raw_frame(code: bytes, body: bytes) -> None:
    fuzz_connection_decode(code, body)


@slow
@slow_timeout
@SLOW
@given(code=st.binary(min_size=1, max_size=1), body=st.binary(max_size=80))
def test_decode_of_any_raw_frame_slow(code: bytes, body: bytes) -> None:
    fuzz_connection_decode(code, body)


def fuzz_replication(payload: bytes) -> None:
    with contextlib.suppress(pw.RemoteProtocolError):
        assert isinstance(pw.decode_replication(payload), pw.ReplicationMessage)


@FUZZ
@given(payload=st.one_of(
    st.binary(max_size=60),
    st.tuples(st.sampled_from([b"w", b"k", b"r", b"h"]), st.binary(max_size=40)).map(b"".join),
    ps.replication_messages().map(lambda m: m.payload()).flatmap(ps.mutations),
))
def test_decode_of_any_replication_payload(payload: bytes) -> None:
    fuzz_replication(payload)


# ---------------------------------------------------------------------------
# The C accelerator agrees with the pure-Python row decoder
# ---------------------------------------------------------------------------

def decode_rows_both_ways(
    data: bytes, pos: int, limit: int, columns: int, max_rows: int
) -> None:
    speedups = pytest.importorskip("pgwire.protocol._speedups",
                                   reason="the optional C accelerator is not built")
    expected = _messages._decode_data_rows_py(data, pos, len(data), limit, columns, max_rows,
                                              pw.DataRow)
    actual = speedups.decode_data_rows(data, pos, len(data), limit, columns, max_rows,
                                        pw.DataRow)
    assert actual == expected
    assert all(type(row) is pw.DataRow for row in actual[0])


@st.composite
def row_runs(draw: st.DrawFn) -> bytes:
    stream = b"".join(draw(st.lists(st.one_of(
        ps.data_rows(allow_max_count=False).map(lambda m: m.encode()),
        frames(b"D"),
        st.binary(max_size=8),
    ), max_size=6)))
    return draw(ps.mutations(stream)) if stream and draw(st.booleans()) else stream


ROW_DECODE_ARGS = {
    "data": row_runs(),
    "pos": st.integers(0, 8),
    "limit": st.sampled_from([0, 4, 16, 64, 1 << 30]),
    "columns": st.sampled_from([-1, -1, 0, 1, 2, 3]),
    "max_rows": st.sampled_from([0, 1, 2, 1024]),
}


@FUZZ
@given(**ROW_DECODE_ARGS)
def test_c_row_decoder_matches_python(
    data: bytes, pos: int, limit: int, columns: int, max_rows: int
) -> None:
    decode_rows_both_ways(data, pos, limit, columns, max_rows)


@slow
@slow_timeout
@SLOW
@given(**ROW_DECODE_ARGS)
def test_c_row_decoder_matches_python_slow(
    data: bytes, pos: int, limit: int, columns: int, max_rows: int
) -> None:
    decode_rows_both_ways(data, pos, limit, columns, max_rows)


# ---------------------------------------------------------------------------
# Valid conversations, corrupted
# ---------------------------------------------------------------------------


def next_event_or_none(connection: Connection, chunks: Iterator[bytes]) -> Event | None:
    while True:
        event = connection.next_event()
        if event is not pw.NEED_DATA:
            return event
        chunk = next(chunks, None)
        if chunk is None:
            return None
        connection.receive_data(chunk)


def replay_corrupted(transcript: ps.Transcript, role: str, chunks: list[bytes]) -> None:
    """Replay one side of a conversation whose incoming stream was corrupted.

    Sends that side's messages at their steps; a LocalProtocolError there
    means the corruption moved the state machine elsewhere (fine). Events
    are not compared: they may legitimately differ.
    """
    connection: Connection = pw.Frontend() if role == "client" else pw.Backend()
    pending = iter(chunks)
    try:
        for side, message in transcript.steps:
            if side == role:
                connection.send(message)
            elif next_event_or_none(connection, pending) is None:
                break
    except pw.ProtocolError as exc:
        check_protocol_error(connection, exc)
        return
    accepted_or_protocol_error(connection, pending, transcript.eof)


def fuzz_corrupted_conversation(transcript: ps.Transcript, data: st.DataObject) -> None:
    for role, stream in (("client", transcript.server_bytes()),
                         ("server", transcript.client_bytes())):
        if not stream:
            continue
        corrupted = data.draw(ps.mutations(stream, max_edits=3))
        replay_corrupted(transcript, role, data.draw(ps.chunkings(corrupted, max_chunks=8)))


@FUZZ_STREAMS
@given(transcript=ps.conversations(max_cycles=3), data=st.data())
def test_corrupted_conversations(transcript: ps.Transcript, data: st.DataObject) -> None:
    fuzz_corrupted_conversation(transcript, data)


@slow
@slow_timeout
@SLOW_STREAMS
@given(transcript=ps.conversations(), data=st.data())
def test_corrupted_conversations_slow(transcript: ps.Transcript, data: st.DataObject) -> None:
    fuzz_corrupted_conversation(transcript, data)


# ---------------------------------------------------------------------------
# Memory: a huge length word allocates nothing
# ---------------------------------------------------------------------------

GIB = 1 << 30
MIB = 1 << 20
# The largest length word the protocol allows (PostgreSQL's 0x3fffffff).
LARGEST = 0x3FFFFFFF


def peak_while(action: Callable[[], None]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def busy_frontend_with_rows_unlimited() -> pw.Frontend:
    frontend = busy_frontend(max_message_size=None)
    description = pw.RowDescription(fields=(pw.FieldDescription(name="a"),))
    frontend.receive_data(description.encode())
    assert frontend.next_event() == description
    return frontend


def ready_backend_unlimited() -> pw.Backend:
    backend = pw.Backend(max_message_size=None)
    backend.receive_data(pw.StartupMessage.from_dict({"user": "alice"}).encode())
    respond_as_server(backend, backend.next_event())
    assert backend.phase is pw.Phase.READY
    return backend


WAITING_FOR_A_GIGABYTE: dict[str, tuple[Callable[[], Connection], bytes]] = {
    # Nothing lower than the protocol's own ceiling: the body could come.
    "frontend-rows": (busy_frontend_with_rows_unlimited, b"D"),
    "frontend-copy-data": (lambda: busy_frontend(max_message_size=None), b"d"),
    "frontend-error": (lambda: started_frontend(max_message_size=None), b"E"),
    "backend-query": (ready_backend_unlimited, b"Q"),
    "backend-copy-data": (ready_backend_unlimited, b"d"),
}


@pytest.mark.parametrize("case", sorted(WAITING_FOR_A_GIGABYTE))
def test_a_gigabyte_length_word_allocates_nothing(case: str) -> None:
    make, code = WAITING_FOR_A_GIGABYTE[case]
    connection = make()
    fed = 0

    def feed_header_and_some_body() -> None:
        nonlocal fed
        header = code + struct.pack("!i", LARGEST)
        connection.receive_data(header)
        fed += len(header)
        assert connection.next_event() is pw.NEED_DATA
        for _ in range(256):  # 256 KiB of the promised gigabyte, 1 KiB at a time
            connection.receive_data(bytes(1024))
            fed += 1024
            assert connection.next_event() is pw.NEED_DATA

    peak = peak_while(feed_header_and_some_body)
    assert connection.buffered == fed
    assert peak < MIB, f"peak of {peak} bytes while waiting for a 1 GiB body"


def test_a_gigabyte_length_word_alone_allocates_nothing() -> None:
    connection = busy_frontend(max_message_size=None)

    def feed_header() -> None:
        connection.receive_data(b"D" + struct.pack("!i", LARGEST))
        for _ in range(3):
            assert connection.next_event() is pw.NEED_DATA

    assert peak_while(feed_header) < MIB
    assert connection.buffered == 5


REFUSED_AT_ONCE: dict[str, tuple[Callable[[], Connection], bytes]] = {
    # Over a cap: refused as soon as the length word is read, body never awaited.
    "frontend-default-limit": (busy_frontend_with_rows, b"D" + struct.pack("!i", GIB)),
    "frontend-short-type": (lambda: busy_frontend(max_message_size=None),
                            b"C" + struct.pack("!i", GIB)),
    "frontend-over-protocol-ceiling": (lambda: busy_frontend(max_message_size=None),
                                       b"D" + struct.pack("!i", LARGEST + 1)),
    "backend-default-limit": (ready_backend, b"Q" + struct.pack("!i", GIB)),
    "backend-sync": (ready_backend_unlimited, b"S" + struct.pack("!i", GIB)),
    "backend-startup-packet": (pw.Backend, struct.pack("!i", GIB)),
    "backend-negative-length": (ready_backend, b"Q" + struct.pack("!i", -GIB)),
}


@pytest.mark.parametrize("case", sorted(REFUSED_AT_ONCE))
def test_a_gigabyte_length_word_over_a_limit_is_refused_at_once(case: str) -> None:
    make, header = REFUSED_AT_ONCE[case]
    connection = make()
    connection.receive_data(header)
    with pytest.raises(pw.RemoteProtocolError) as info:
        connection.next_event()
    assert info.value.sqlstate in ("08P01", "54000")


@settings(FUZZ, max_examples=25)
@given(length=st.integers(MIB, LARGEST), body=st.binary(max_size=4096), sizes=CHUNK_SIZES,
       code=st.sampled_from([b"D", b"d", b"E", b"N", b"T"]))
def test_memory_follows_the_bytes_received_not_the_length_word(
    length: int, body: bytes, sizes: list[int], code: bytes
) -> None:
    connection = busy_frontend(max_message_size=None)
    chunks = cut(code + struct.pack("!i", length) + body, sizes)

    def feed() -> None:
        for chunk in chunks:
            connection.receive_data(chunk)
            assert connection.next_event() is pw.NEED_DATA

    assert peak_while(feed) < MIB
    assert connection.buffered == 5 + len(body)

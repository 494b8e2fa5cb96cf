"""Property tests of the protocol core.

* Every message survives ``decode(encode(m)) == m`` through the decoder of its
  direction, and decoding is canonical: whatever a decoder accepts re-encodes
  to the very bytes it read.
* A Frontend and a Backend fed a whole valid conversation return the same
  events whether the stream arrives at once, in arbitrary chunks or one byte
  at a time — and those events are the messages the peer sent.
* Undecoded delivery (``decode=set()``) loses nothing: the raw frames
  reassemble the stream and decode to what a decoding connection returns.
* Driven through the same conversation, a Frontend and a Backend never raise
  and agree on phase, transaction status and pending syncs at every step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pgwire as pw
from pgwire.testing import strategies as ps

Event = pw.FrontendEvent | pw.BackendEvent

PER_CLASS = settings(max_examples=30, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
STREAMS = settings(max_examples=60, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW_STREAMS = settings(STREAMS, max_examples=450)

# Every concrete message class pgwire exports.
MESSAGE_CLASSES = sorted(
    (
        obj for name in pw.__all__
        if isinstance(obj := getattr(pw, name), type) and issubclass(obj, pw.Message)
        and obj not in (pw.Message, pw.Authentication)
    ),
    key=lambda cls: cls.__name__,
)
UNTYPED = (pw.StartupMessage, pw.SSLRequest, pw.GSSENCRequest, pw.CancelRequest)
ONE_BYTE = (pw.SSLResponse, pw.GSSENCResponse)
PASSWORD_CLASSES = (pw.PasswordMessage, pw.SASLInitialResponse, pw.SASLResponse, pw.GSSResponse)
# Decoding ErrorResponse/NoticeResponse normalises field order and duplicates.
NOT_CANONICAL = (pw.ErrorResponse, pw.NoticeResponse)


def body_of(message: pw.Message) -> bytes:
    """The bytes ``Cls.decode`` takes: after the length word (and type byte);
    the one-byte answers are their own body."""
    frame = message.encode()
    if isinstance(message, ONE_BYTE):
        return frame
    return frame[4:] if isinstance(message, UNTYPED) else frame[5:]


def names(classes: Iterable[type[pw.Message]]) -> list[str]:
    return [cls.__name__ for cls in classes]


# ---------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------


def test_every_message_class_has_a_strategy() -> None:
    for cls in MESSAGE_CLASSES:
        assert ps.strategy_for(cls) is not None
    assert set(pw.FRONTEND_TYPED_CLASSES) | set(pw.BACKEND_TYPED_CLASSES) <= set(MESSAGE_CLASSES)


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=names(MESSAGE_CLASSES))
@PER_CLASS
@given(data=st.data())
def test_class_decode_inverts_encode(cls: type[pw.Message], data: st.DataObject) -> None:
    message = data.draw(ps.strategy_for(cls))
    assert type(message) is cls
    frame = message.encode()
    if cls in ONE_BYTE:
        assert len(frame) == 1
    elif cls in UNTYPED:
        assert int.from_bytes(frame[:4], "big") == len(frame)
    else:
        assert frame[:1] == cls.type_code
        assert int.from_bytes(frame[1:5], "big") == len(frame) - 1
    assert cls.decode(body_of(message)) == message


def raw(frame: bytes) -> pw.RawMessage:
    return pw.RawMessage(frame[:1], frame, 5, len(frame))


@settings(PER_CLASS, max_examples=300)
@given(ps.frontend_messages())
def test_a_backend_decodes_client_messages_by_type_byte(message: pw.Message) -> None:
    frame = message.encode()
    if frame[:1] == b"p":
        # Which 'p' message it is depends on the authentication exchange.
        assert b"p" not in pw.FRONTEND_MESSAGES
        return
    assert pw.Backend().decode(raw(frame)) == message


@settings(PER_CLASS, max_examples=300)
@given(ps.backend_messages())
def test_a_frontend_decodes_server_messages_by_type_byte(message: pw.Message) -> None:
    assert pw.Frontend().decode(raw(message.encode())) == message


@settings(PER_CLASS, max_examples=200)
@given(st.one_of(ps.startup_messages(pq_options=None), ps.cancel_requests(),
                 ps.ssl_requests(), ps.gssenc_requests()))
def test_a_backend_reads_each_startup_packet(packet: pw.Message) -> None:
    backend = pw.Backend()
    backend.receive_data(packet.encode())
    assert backend.next_event() == packet
    if isinstance(packet, pw.StartupMessage):
        assert backend.startup == packet
        assert backend.phase is pw.Phase.AUTHENTICATION
        needs_negotiation = packet.minor_version > 2 or any(
            key.startswith("_pq_.") for key, _ in packet.parameters)
        assert (backend.protocol_negotiation is not None) == needs_negotiation


@PER_CLASS
@given(ps.ssl_responses(), st.booleans())
def test_a_frontend_reads_the_one_byte_answers(answer: pw.SSLResponse, gss: bool) -> None:
    frontend = pw.Frontend()
    if gss:
        frontend.send(pw.GSSENCRequest())
        expected: pw.Message = pw.GSSENCResponse(accepted=answer.accepted)
    else:
        frontend.send(pw.SSLRequest())
        expected = answer
    frontend.receive_data(expected.encode())
    assert frontend.next_event() == expected
    assert frontend.phase is pw.Phase.STARTUP


def backend_awaiting(kind: type[pw.Message]) -> pw.Backend:
    """A Backend whose last authentication request is answered by a ``kind`` message."""
    backend = pw.Backend()
    backend.receive_data(pw.StartupMessage.from_dict({"user": "alice"}).encode())
    assert isinstance(backend.next_event(), pw.StartupMessage)
    if kind is pw.PasswordMessage:
        backend.send(pw.AuthenticationMD5Password(salt=b"\0\1\2\3"))
    elif kind is pw.GSSResponse:
        backend.send(pw.AuthenticationGSS())
    else:
        backend.send(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",)))
        if kind is pw.SASLResponse:
            first = pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=b"n,,n=,r=abc")
            backend.receive_data(first.encode())
            assert backend.next_event() == first
            backend.send(pw.AuthenticationSASLContinue(data=b"r=abcdef,s=c2FsdA==,i=4096"))
    return backend


@pytest.mark.parametrize("cls", PASSWORD_CLASSES, ids=names(PASSWORD_CLASSES))
@PER_CLASS
@given(data=st.data())
def test_a_backend_decodes_p_by_the_request_it_answers(
    cls: type[pw.Message], data: st.DataObject
) -> None:
    message = data.draw(ps.strategy_for(cls))
    backend = backend_awaiting(cls)
    backend.receive_data(message.encode())
    assert backend.next_event() == message


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=names(MESSAGE_CLASSES))
@PER_CLASS
@given(data=st.data())
def test_what_a_decoder_accepts_re_encodes_to_the_same_bytes(
    cls: type[pw.Message], data: st.DataObject
) -> None:
    body = data.draw(ps.strategy_for(cls).map(body_of).flatmap(ps.mutations))
    try:
        decoded = cls.decode(body)
    except pw.RemoteProtocolError:
        return
    if isinstance(decoded, NOT_CANONICAL):
        # Not byte-identical (fields are re-ordered), but decoding is idempotent.
        assert cls.decode(body_of(decoded)) == decoded
    else:
        assert body_of(decoded) == body


@example(body=b"\xe9abc\0\0")  # a field code outside ASCII
@settings(PER_CLASS, max_examples=200)
@given(body=st.binary(max_size=64).map(lambda b: b + b"\0"))
def test_a_decoded_error_response_can_be_encoded_again(body: bytes) -> None:
    """A proxy re-encodes what it decoded: any field code it accepts must encode."""
    try:
        decoded = pw.ErrorResponse.decode(body)
    except pw.RemoteProtocolError:
        return
    assert pw.ErrorResponse.decode(body_of(decoded)) == decoded


@settings(PER_CLASS, max_examples=200)
@given(ps.replication_messages())
def test_replication_payloads_round_trip(message: pw.ReplicationMessage) -> None:
    assert pw.decode_replication(message.to_copy_data()) == message
    assert pw.decode_replication(message.payload()) == message


# ---------------------------------------------------------------------------
# Replaying conversations
# ---------------------------------------------------------------------------


def next_event(connection: pw.Frontend | pw.Backend, chunks: Iterator[bytes]) -> Event:
    """The next event, feeding chunks one at a time while the connection needs data."""
    while True:
        event = connection.next_event()
        if event is not pw.NEED_DATA:
            return event
        chunk = next(chunks, None)
        assert chunk is not None, "the connection wants more bytes than the peer sent"
        connection.receive_data(chunk)


def replay_frontend(
    transcript: ps.Transcript, chunks: Iterable[bytes], decode: set[bytes] | None = None
) -> tuple[list[Event], pw.Frontend]:
    """Play the client: send its messages, take one event per server message."""
    frontend = pw.Frontend(decode=decode)
    pending = iter(chunks)
    events: list[Event] = []
    for side, message in transcript.steps:
        if side == "client":
            assert frontend.send(message) == message.encode()
        else:
            events.append(next_event(frontend, pending))
    assert next(pending, None) is None, "bytes left over after the last server message"
    assert frontend.buffered == 0
    if transcript.eof:
        frontend.receive_data(b"")
        events.append(next_event(frontend, pending))
    return events, frontend


def replay_backend(
    transcript: ps.Transcript, chunks: Iterable[bytes], decode: set[bytes] | None = None
) -> tuple[list[Event], pw.Backend]:
    """Play the server: take one event per client message, send its messages."""
    backend = pw.Backend(decode=decode)
    pending = iter(chunks)
    events: list[Event] = []
    for side, message in transcript.steps:
        if side == "client":
            events.append(next_event(backend, pending))
        else:
            assert backend.send(message) == message.encode()
    assert next(pending, None) is None, "bytes left over after the last client message"
    assert backend.buffered == 0
    if transcript.eof:
        backend.receive_data(b"")
        events.append(next_event(backend, pending))
    return events, backend


def expected_events(transcript: ps.Transcript, side: ps.Side) -> list[object]:
    messages: list[object] = [m for s, m in transcript.steps if s == side]
    if transcript.eof:
        messages.append(pw.ConnectionClosed())
    return messages


def whole(stream: bytes) -> list[bytes]:
    return [stream] if stream else []


def bytewise(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


def check_chunking_invariance(transcript: ps.Transcript, data: st.DataObject) -> None:
    server_stream = transcript.server_bytes()
    at_once, _ = replay_frontend(transcript, whole(server_stream))
    assert at_once == expected_events(transcript, "server")
    chunked, _ = replay_frontend(transcript, data.draw(ps.chunkings(server_stream)))
    assert chunked == at_once
    one_by_one, _ = replay_frontend(transcript, bytewise(server_stream))
    assert one_by_one == at_once

    client_stream = transcript.client_bytes()
    at_once, _ = replay_backend(transcript, whole(client_stream))
    assert at_once == expected_events(transcript, "client")
    chunked, _ = replay_backend(transcript, data.draw(ps.chunkings(client_stream)))
    assert chunked == at_once
    one_by_one, _ = replay_backend(transcript, bytewise(client_stream))
    assert one_by_one == at_once


@STREAMS
@given(transcript=ps.conversations(), data=st.data())
def test_events_do_not_depend_on_how_the_stream_is_cut(
    transcript: ps.Transcript, data: st.DataObject
) -> None:
    check_chunking_invariance(transcript, data)


@pytest.mark.slow
@pytest.mark.timeout(900)
@SLOW_STREAMS
@given(transcript=ps.conversations(max_cycles=8), data=st.data())
def test_events_do_not_depend_on_how_the_stream_is_cut_slow(
    transcript: ps.Transcript, data: st.DataObject
) -> None:
    check_chunking_invariance(transcript, data)


@settings(STREAMS, max_examples=40)
@given(transcript=ps.conversations(), data=st.data())
def test_many_rows_in_one_chunk_and_across_chunks(
    transcript: ps.Transcript, data: st.DataObject
) -> None:
    """Result sets long enough for batched row decoding to stop mid-run, and
    longer than one batch (1024 rows)."""
    if data.draw(st.booleans()):
        rows = data.draw(st.lists(ps.data_rows(3, allow_max_count=False), max_size=40))
    else:
        count = data.draw(st.sampled_from([1023, 1024, 1025, 2049]))
        rows = [pw.DataRow(values=(str(i).encode(), None, b"")) for i in range(count)]
    steps = list(transcript.steps)
    description = pw.RowDescription(fields=tuple(
        pw.FieldDescription(name=f"c{i}") for i in range(3)))
    # Insert a whole result cycle right after the first ReadyForQuery.
    for index, (side, message) in enumerate(steps):
        if side == "server" and isinstance(message, pw.ReadyForQuery):
            status = message.status
            cycle: list[ps.Step] = [
                ("client", pw.Query(query="select a, b, c from t")),
                ("server", description),
                *(("server", row) for row in rows),
                ("server", pw.CommandComplete(tag=f"SELECT {len(rows)}")),
                ("server", pw.ReadyForQuery(status=status)),
            ]
            steps[index + 1 : index + 1] = cycle
            break
    else:
        return
    check_chunking_invariance(ps.Transcript(steps=tuple(steps), eof=transcript.eof), data)


BACKEND_CODES = sorted({cls.type_code for cls in pw.BACKEND_TYPED_CLASSES})
FRONTEND_CODES = sorted({cls.type_code for cls in pw.FRONTEND_TYPED_CLASSES})


def check_raw_delivery(
    events: list[Event], decoded: list[Event], connection: pw.Frontend | pw.Backend,
    decode: set[bytes], stream: bytes,
) -> None:
    assert len(events) == len(decoded)
    pieces = []
    for event, full in zip(events, decoded, strict=True):
        if isinstance(event, pw.RawMessage):
            assert isinstance(full, pw.Message)
            assert event.type_code not in decode
            assert connection.decode(event) == full
            assert bytes(event) == bytes(event.frame) == full.encode()
            pieces.append(bytes(event))
        else:
            assert event == full
            if isinstance(event, pw.Message):
                pieces.append(event.encode())
    assert b"".join(pieces) == stream


@STREAMS
@example(transcript=ps.Transcript(steps=(
    ("client", pw.StartupMessage.from_dict({"user": "u"})),
    ("server", pw.AuthenticationOk()),
    ("server", pw.ParameterStatus(name="client_encoding", value="UTF8")),
    ("server", pw.BackendKeyData(process_id=1, secret_key=b"abcd")),
    ("server", pw.ReadyForQuery()),
    ("client", pw.Query(query="select 1")),
    ("server", pw.RowDescription(fields=(pw.FieldDescription(name="?column?"),))),
    ("server", pw.DataRow(values=(b"1",))),
    ("server", pw.CommandComplete(tag="SELECT 1")),
    ("server", pw.ReadyForQuery()),
)), data=None, decode=set())
@given(transcript=ps.conversations(), data=st.data(),
       decode=st.one_of(st.just(set()), st.sets(st.sampled_from(BACKEND_CODES))))
def test_a_frontend_delivering_raw_frames_loses_nothing(
    transcript: ps.Transcript, data: st.DataObject | None, decode: set[bytes]
) -> None:
    stream = transcript.server_bytes()
    chunks = data.draw(ps.chunkings(stream)) if data is not None else whole(stream)
    events, frontend = replay_frontend(transcript, chunks, decode=decode)
    decoded, _ = replay_frontend(transcript, whole(stream))
    check_raw_delivery(events, decoded, frontend, decode, stream)
    if not decode:
        assert not any(isinstance(event, pw.Message) for event in events)


@STREAMS
@given(transcript=ps.conversations(), data=st.data(),
       decode=st.one_of(st.just(set()), st.sets(st.sampled_from(FRONTEND_CODES))))
def test_a_backend_delivering_raw_frames_loses_nothing(
    transcript: ps.Transcript, data: st.DataObject, decode: set[bytes]
) -> None:
    stream = transcript.client_bytes()
    events, backend = replay_backend(transcript, data.draw(ps.chunkings(stream)), decode=decode)
    decoded, _ = replay_backend(transcript, whole(stream))
    check_raw_delivery(events, decoded, backend, decode, stream)
    for event in events:
        # Startup packets and 'p' messages are always decoded: their meaning
        # depends on the connection's state, not on a type byte.
        if isinstance(event, pw.Message):
            assert isinstance(event, (*UNTYPED, *PASSWORD_CLASSES)) or event.type_code in decode


# ---------------------------------------------------------------------------
# The state machine agrees with itself
# ---------------------------------------------------------------------------


def is_fatal(message: pw.Message) -> bool:
    return isinstance(message, pw.ErrorResponse) and bool(
        {message.severity, message.severity_nonlocalized} & {"FATAL", "PANIC"})


def check_lockstep(transcript: ps.Transcript) -> None:
    frontend = pw.Frontend()
    backend = pw.Backend()
    parameters: dict[str, str] = {}
    key: tuple[int, bytes] | None = None
    status = "I"
    for side, message in transcript.steps:
        if side == "client":
            backend.receive_data(frontend.send(message))
            assert backend.next_event() == message
        else:
            frontend.receive_data(backend.send(message))
            assert frontend.next_event() == message
            if isinstance(message, pw.ParameterStatus):
                parameters[message.name] = message.value
            elif isinstance(message, pw.BackendKeyData):
                key = (message.process_id, message.secret_key)
            elif isinstance(message, pw.ReadyForQuery):
                status = message.status.value
        assert frontend.phase is backend.phase
        assert frontend.transaction_status == backend.transaction_status == status
        assert frontend.pending_syncs == backend.pending_syncs
        assert frontend.busy == backend.busy
        assert frontend.protocol_version == backend.protocol_version
    assert frontend.next_event() is pw.NEED_DATA
    assert backend.next_event() is pw.NEED_DATA
    assert frontend.parameters == parameters
    assert frontend.backend_key == key

    last = transcript.steps[-1][1]
    if isinstance(last, pw.CancelRequest):
        assert frontend.phase is pw.Phase.CANCEL
    elif isinstance(last, pw.Terminate) or is_fatal(last):
        assert frontend.phase is pw.Phase.CLOSED
    else:
        assert frontend.phase is pw.Phase.READY
    if transcript.eof:
        frontend.receive_data(b"")
        backend.receive_data(b"")
        assert frontend.next_event() == pw.ConnectionClosed()
        assert backend.next_event() == pw.ConnectionClosed()
        assert frontend.phase is backend.phase is pw.Phase.CLOSED


@STREAMS
@given(ps.conversations())
def test_frontend_and_backend_agree_at_every_step(transcript: ps.Transcript) -> None:
    check_lockstep(transcript)


@pytest.mark.slow
@pytest.mark.timeout(900)
@SLOW_STREAMS
@given(ps.conversations(max_cycles=10))
def test_frontend_and_backend_agree_at_every_step_slow(transcript: ps.Transcript) -> None:
    check_lockstep(transcript)


def int4_columns(count: int) -> pw.RowDescription:
    return pw.RowDescription(fields=tuple(
        pw.FieldDescription(name="?column?", data_type_oid=23, data_type_size=4)
        for _ in range(count)))


# Batches where a RowDescription describes one statement or portal and the
# rows that follow belong to another, each with the server's answer exactly as
# PostgreSQL 15 sent it (seen on a real server).
OTHER_STATEMENT_ROWS = {
    "describe-statement-then-execute-another": (
        [pw.Parse(statement="s1", query="select 1,2,3,4"), pw.Describe(kind="S", name="s1"),
         pw.Parse(statement="s2", query="select 1"), pw.Bind(portal="p2", statement="s2"),
         pw.Execute(portal="p2"), pw.Sync()],
        [pw.ParseComplete(), pw.ParameterDescription(parameter_types=()), int4_columns(4),
         pw.ParseComplete(), pw.BindComplete(), pw.DataRow(values=(b"1",)),
         pw.CommandComplete(tag="SELECT 1"), pw.ReadyForQuery()],
    ),
    "describe-portal-then-execute-another": (
        [pw.Parse(statement="s1", query="select 1,2,3,4"),
         pw.Parse(statement="s2", query="select 1"), pw.Bind(portal="p1", statement="s1"),
         pw.Bind(portal="p2", statement="s2"), pw.Describe(kind="P", name="p1"),
         pw.Execute(portal="p2"), pw.Sync()],
        [pw.ParseComplete(), pw.ParseComplete(), pw.BindComplete(), pw.BindComplete(),
         int4_columns(4), pw.DataRow(values=(b"1",)), pw.CommandComplete(tag="SELECT 1"),
         pw.ReadyForQuery()],
    ),
}


@pytest.mark.parametrize("name", sorted(OTHER_STATEMENT_ROWS))
def test_rows_of_a_statement_described_by_no_row_description_are_accepted(name: str) -> None:
    """A RowDescription from Describe does not announce the next Execute's rows."""
    batch, answers = OTHER_STATEMENT_ROWS[name]
    transcript = ps.Transcript(steps=(
        ("client", pw.StartupMessage.from_dict({"user": "postgres"})),
        ("server", pw.AuthenticationOk()),
        ("server", pw.BackendKeyData(process_id=7, secret_key=b"\0\0\0\1")),
        ("server", pw.ReadyForQuery()),
        *(("client", message) for message in batch),
        *(("server", message) for message in answers),
    ))
    check_lockstep(transcript)


def test_a_statement_with_10000_parameters_can_be_described() -> None:
    """PostgreSQL allows 65535 parameters; describing 10,000 of them gives a
    40,006-byte ParameterDescription (seen from PostgreSQL 15.18; libpq 18
    reads it, libpq 15 reported lost synchronization)."""
    types = (23,) * 10000
    check_lockstep(ps.Transcript(steps=(
        ("client", pw.StartupMessage.from_dict({"user": "postgres"})),
        ("server", pw.AuthenticationOk()),
        ("server", pw.ReadyForQuery()),
        ("client", pw.Parse(statement="s", query="select coalesce($1, ...)",
                            parameter_types=types)),
        ("client", pw.Describe(kind="S", name="s")),
        ("client", pw.Sync()),
        ("server", pw.ParseComplete()),
        ("server", pw.ParameterDescription(parameter_types=types)),
        ("server", int4_columns(1)),
        ("server", pw.ReadyForQuery()),
    )))


# ---------------------------------------------------------------------------
# The strategies themselves
# ---------------------------------------------------------------------------


@settings(PER_CLASS, max_examples=100)
@given(data=st.data(), stream=st.binary(max_size=300))
def test_chunkings_cover_the_stream_exactly(data: st.DataObject, stream: bytes) -> None:
    chunks = data.draw(ps.chunkings(stream, max_chunks=10))
    assert b"".join(chunks) == stream
    assert all(chunks)
    assert len(chunks) <= 10

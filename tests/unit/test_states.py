"""The state machine (pgwire.protocol._states): every transition, and the cycle rules.

Transitions are driven on a bare Conversation (both sides' messages, no
bytes parsing) and, where a real exchange can reach them, through a
Frontend and a Backend joined by an in-memory wire that must agree on
phase, pending ReadyForQuery count and transaction status at every step.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

import pgwire as pw
from pgwire.protocol._states import (
    BACKEND_ALLOWED,
    FRONTEND_ALLOWED,
    TRANSITIONS,
    Conversation,
    Phase,
    Side,
    Violation,
)

from .helpers import Pair, frame, protocol_error

FE = Side.FRONTEND
BE = Side.BACKEND
FATAL = pw.ErrorResponse(severity="FATAL", severity_nonlocalized="FATAL", code="57P01",
                         message="terminating connection due to administrator command")
ERROR = pw.ErrorResponse(severity="ERROR", severity_nonlocalized="ERROR", code="42601",
                         message="syntax error")
UNTYPED = ("SSLRequest", "GSSENCRequest", "DirectTLS", "StartupMessage", "CancelRequest")


# ---------------------------------------------------------------------------
# Driving a bare Conversation
# ---------------------------------------------------------------------------


def server(conversation: Conversation, message: pw.Message | bytes) -> None:
    data = message if isinstance(message, bytes) else message.encode()
    conversation.backend_message(data[0], data, 5, len(data))


def client(conversation: Conversation, message: pw.Message) -> None:
    if isinstance(message, (pw.SSLRequest, pw.GSSENCRequest, pw.CancelRequest)):
        conversation.frontend_packet(type(message).__name__)
    elif isinstance(message, pw.StartupMessage):
        conversation.frontend_packet("StartupMessage", message.protocol_version)
    else:
        conversation.frontend_message(message.encode()[0], type(message).__name__)


def reach(phase: Phase) -> Conversation:
    """A Conversation brought to ``phase`` by a legal exchange."""
    conversation = Conversation()
    if phase is Phase.STARTUP:
        return conversation
    if phase is Phase.SSL_NEGOTIATION:
        client(conversation, pw.SSLRequest())
    elif phase is Phase.GSSENC_NEGOTIATION:
        client(conversation, pw.GSSENCRequest())
    elif phase is Phase.CANCEL:
        client(conversation, pw.CancelRequest(process_id=1, secret_key=b"abcd"))
    elif phase is Phase.CLOSED:
        conversation.end_of_stream()
    else:
        client(conversation, pw.StartupMessage.from_dict({"user": "u"}))
        if phase is not Phase.AUTHENTICATION:
            server(conversation, pw.AuthenticationOk())
        if phase not in (Phase.AUTHENTICATION, Phase.SESSION_SETUP):
            server(conversation, pw.ReadyForQuery())
        copy = {Phase.COPY_IN: pw.CopyInResponse(), Phase.COPY_OUT: pw.CopyOutResponse(),
                Phase.COPY_BOTH: pw.CopyBothResponse()}.get(phase)
        if copy is not None:
            client(conversation, pw.Query(query="copy"))
            server(conversation, copy)
    assert conversation.phase is phase
    return conversation


def fire(conversation: Conversation, side: Side, event: str) -> None:
    """Make ``side`` produce the TRANSITIONS event named ``event``."""
    if event == "EOF":
        conversation.end_of_stream()
    elif side is FE and event in UNTYPED:
        conversation.frontend_packet(event)
    elif side is BE and event in ("SSLResponse", "GSSENCResponse"):
        conversation.negotiation_answer(event, accepted=False)
    elif side is BE and event == "ErrorResponse:FATAL":
        server(conversation, FATAL)
    elif side is BE and event == "ErrorResponse":
        server(conversation, ERROR)
    elif side is BE and event == "AuthenticationOk":
        server(conversation, pw.AuthenticationOk())
    elif side is BE and event == "ReadyForQuery":
        server(conversation, pw.ReadyForQuery())
    elif side is BE and event in ("CopyInResponse", "CopyOutResponse", "CopyBothResponse"):
        client(conversation, pw.Query(query="copy"))
        server(conversation, getattr(pw, event)())
    elif side is FE and event == "Terminate":
        client(conversation, pw.Terminate())
    elif side is FE and event == "CopyDone":
        client(conversation, pw.CopyDone())
    elif side is FE and event == "CopyFail":
        client(conversation, pw.CopyFail(message="abort"))
    elif side is BE and event == "CopyDone":
        server(conversation, pw.CopyDone())
    elif event == "CopyDone+CopyDone":
        # The other side finished first; this side's CopyDone completes the COPY.
        if side is FE:
            server(conversation, pw.CopyDone())
            client(conversation, pw.CopyDone())
        else:
            client(conversation, pw.CopyDone())
            server(conversation, pw.CopyDone())
    else:
        raise AssertionError(f"no way to fire {event} from the {side.value}")


def _key_id(key: tuple[Phase, Side, str]) -> str:
    phase, side, event = key
    return f"{phase.name}-{'C' if side is FE else 'S'}-{event}"


TRANSITION_KEYS = sorted(TRANSITIONS, key=_key_id)


@pytest.mark.parametrize("key", TRANSITION_KEYS, ids=_key_id)
def test_every_transition_is_reachable(key: tuple[Phase, Side, str]) -> None:
    phase, side, event = key
    conversation = reach(phase)
    fire(conversation, side, event)
    assert conversation.phase is TRANSITIONS[key]


@pytest.mark.parametrize("key", [k for k in TRANSITION_KEYS if k[2] != "EOF"], ids=_key_id)
def test_every_transition_is_drawn_in_the_docs(key: tuple[Phase, Side, str]) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "state-machine.md").read_text()
    phase, side, event = key
    label = ("C: " if side is FE else "S: ") + event
    edge = f"{phase.name} --> {TRANSITIONS[key].name}: "
    assert any(line.strip().startswith(edge) and label in line.split(": ", 1)[1].split(" / ")
               for line in docs.splitlines()), f"{edge}{label} missing from the diagram"


SINGLE_EVENTS = sorted({(side, event) for _, side, event in TRANSITIONS
                        if event != "CopyDone+CopyDone"}, key=lambda k: (k[0].value, k[1]))
NON_TRANSITIONS = [
    (phase, side, event)
    for phase in Phase
    for side, event in SINGLE_EVENTS
    if (phase, side, event) not in TRANSITIONS
]


@pytest.mark.parametrize("key", NON_TRANSITIONS, ids=_key_id)
def test_no_phase_change_outside_the_table(key: tuple[Phase, Side, str]) -> None:
    phase, side, event = key
    conversation = reach(phase)
    with contextlib.suppress(Violation):
        fire(conversation, side, event)
    assert conversation.phase is phase


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.name)
def test_frontend_types_outside_the_phase_table_are_refused(phase: Phase) -> None:
    allowed = FRONTEND_ALLOWED.get(phase, frozenset())
    for code in b"QPBDECSHFXdcfp":
        if code in allowed:
            continue
        conversation = reach(phase)
        with pytest.raises(Violation):
            conversation.frontend_message(code)
        assert conversation.phase is phase


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.name)
def test_backend_types_outside_the_phase_table_are_refused(phase: Phase) -> None:
    allowed = BACKEND_ALLOWED.get(phase, frozenset())
    for code in b"123ACDEGHIKNRSTVWZcdnstv":
        if code in allowed:
            continue
        conversation = reach(phase)
        with pytest.raises(Violation):
            conversation.backend_message(code, b"\0" * 16, 5, 16)
        assert conversation.phase is phase


# ---------------------------------------------------------------------------
# FATAL closes everywhere
# ---------------------------------------------------------------------------

SERVER_PHASES = [p for p in Phase if p not in (Phase.CANCEL, Phase.CLOSED)]


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(FATAL, id="FATAL"),
        pytest.param(pw.ErrorResponse(severity="PANIC", code="XX000"), id="PANIC"),
        pytest.param(pw.ErrorResponse(severity="СБОЙ", severity_nonlocalized="FATAL",
                                      code="28P01"), id="localized-S-with-V-FATAL"),
        pytest.param(frame(b"E", b"C28P01\x00Mm\x00SFATAL\x00\x00"), id="S-after-other-fields"),
        pytest.param(frame(b"E", b"Zx\x00VPANIC\x00\x00"), id="only-V-PANIC"),
    ],
)
@pytest.mark.parametrize("phase", SERVER_PHASES, ids=lambda p: p.name)
def test_fatal_error_closes_in_every_phase(phase: Phase, error: pw.Message | bytes) -> None:
    conversation = reach(phase)
    server(conversation, error)
    assert conversation.phase is Phase.CLOSED
    with pytest.raises(Violation, match="after the connection was closed"):
        server(conversation, pw.ReadyForQuery())


@pytest.mark.parametrize("phase", [Phase.CANCEL, Phase.CLOSED], ids=lambda p: p.name)
def test_no_server_message_after_cancel_or_close(phase: Phase) -> None:
    conversation = reach(phase)
    with pytest.raises(Violation):
        server(conversation, FATAL)


def _pair_in(phase: Phase) -> Pair:
    pair = Pair()
    pair.client(pw.StartupMessage.from_dict({"user": "u"}))
    if phase is Phase.AUTHENTICATION:
        return pair
    pair.server(pw.AuthenticationOk())
    if phase is Phase.SESSION_SETUP:
        return pair
    pair.server(pw.ReadyForQuery())
    if phase is Phase.READY:
        pair.client(pw.Query(query="select pg_sleep(10)"))
        return pair
    pair.client(pw.Query(query="copy"))
    pair.server({Phase.COPY_IN: pw.CopyInResponse(), Phase.COPY_OUT: pw.CopyOutResponse(),
                 Phase.COPY_BOTH: pw.CopyBothResponse()}[phase])
    return pair


@pytest.mark.parametrize(
    "phase",
    [Phase.AUTHENTICATION, Phase.SESSION_SETUP, Phase.READY, Phase.COPY_IN, Phase.COPY_OUT,
     Phase.COPY_BOTH],
    ids=lambda p: p.name,
)
def test_fatal_error_closes_both_sides(phase: Phase) -> None:
    pair = _pair_in(phase)
    assert pair.phase is phase
    assert pair.server(FATAL) == [FATAL]
    assert pair.phase is Phase.CLOSED
    with protocol_error(pw.LocalProtocolError, "08P01", "after the connection was closed"):
        pair.backend.send(pw.ReadyForQuery())
    with protocol_error(pw.LocalProtocolError, "08P01", "after the connection was closed"):
        pair.frontend.send(pw.Query(query="select 1"))


def test_error_during_authentication_closes_even_if_not_fatal() -> None:
    pair = _pair_in(Phase.AUTHENTICATION)
    pair.server(pw.AuthenticationCleartextPassword())
    pair.client(pw.PasswordMessage(password=b"wrong"))
    pair.server(ERROR)
    assert pair.phase is Phase.CLOSED


# ---------------------------------------------------------------------------
# The query cycle through a Frontend and a Backend in lockstep
# ---------------------------------------------------------------------------


def _batch(pair: Pair, query: str = "select 1") -> None:
    pair.client(pw.Parse(query=query), pw.Bind(), pw.Describe(kind="P"), pw.Execute(),
                pw.Sync())


def _batch_answer(pair: Pair, status: pw.TransactionStatus = pw.TransactionStatus.IDLE) -> None:
    pair.server(pw.ParseComplete(), pw.BindComplete(), pw.NoData(),
                pw.CommandComplete(tag="SELECT 0"), pw.ReadyForQuery(status=status))


def test_pending_syncs_over_a_pipeline() -> None:
    pair = Pair().login()
    for _ in range(3):
        _batch(pair)
    pair.client(pw.Flush())
    assert pair.frontend.pending_syncs == 3
    _batch_answer(pair, pw.TransactionStatus.IN_TRANSACTION)
    assert pair.frontend.pending_syncs == 2
    assert pair.frontend.transaction_status == "T"
    # The second batch fails: the server skips to its Sync.
    pair.server(pw.ParseComplete(), ERROR)
    with protocol_error(pw.LocalProtocolError, "08P01", "after an error"):
        pair.backend.send(pw.BindComplete())
    pair.server(pw.NoticeResponse(severity="NOTICE", message="still allowed"))
    pair.server(pw.ReadyForQuery(status=pw.TransactionStatus.FAILED))
    assert pair.frontend.pending_syncs == 1
    assert pair.frontend.transaction_status == "E"
    _batch_answer(pair)
    assert pair.frontend.pending_syncs == 0
    assert not pair.frontend.busy
    with protocol_error(pw.LocalProtocolError, "08P01", "no request was in flight"):
        pair.backend.send(pw.ReadyForQuery())


def test_query_after_pipelined_syncs_is_queued_behind_them() -> None:
    pair = Pair().login()
    _batch(pair)
    pair.client(pw.Query(query="select 2"))
    assert pair.frontend.pending_syncs == 2
    _batch_answer(pair)
    # Now the oldest request is the simple Query: extended replies are refused.
    with protocol_error(pw.LocalProtocolError, "08P01", "cannot answer a simple Query"):
        pair.backend.send(pw.ParseComplete())
    pair.server(pw.EmptyQueryResponse(), pw.ReadyForQuery())
    assert pair.frontend.pending_syncs == 0


def test_flush_and_unsynced_batch_make_busy_without_pending_syncs() -> None:
    pair = Pair().login()
    pair.client(pw.Parse(query="select 1"), pw.Flush())
    assert pair.frontend.busy
    assert pair.frontend.pending_syncs == 0
    pair.server(pw.ParseComplete())
    pair.client(pw.Sync())
    assert pair.frontend.pending_syncs == 1
    pair.server(pw.ReadyForQuery())
    assert not pair.frontend.busy


def test_ready_for_query_needs_a_sync() -> None:
    pair = Pair().login()
    pair.client(pw.Parse(query="select 1"), pw.Flush())
    pair.server(pw.ParseComplete())
    with protocol_error(pw.LocalProtocolError, "08P01"):
        pair.backend.send(pw.ReadyForQuery())
    assert pair.frontend.busy


def test_portal_suspended_and_execute_again() -> None:
    pair = Pair().login()
    pair.client(pw.Parse(query="select generate_series(1, 3)"), pw.Bind(),
                pw.Execute(max_rows=2), pw.Sync())
    pair.server(pw.ParseComplete(), pw.BindComplete(), pw.DataRow(values=(b"1",)),
                pw.DataRow(values=(b"2",)), pw.PortalSuspended(),
                pw.ReadyForQuery(status=pw.TransactionStatus.IN_TRANSACTION))
    pair.client(pw.Execute(max_rows=2), pw.Sync())
    pair.server(pw.DataRow(values=(b"3",)), pw.CommandComplete(tag="SELECT 1"),
                pw.ReadyForQuery(status=pw.TransactionStatus.IN_TRANSACTION))
    assert pair.frontend.transaction_status == "T"


# ---------------------------------------------------------------------------
# COPY
# ---------------------------------------------------------------------------


def test_extended_copy_from_swallows_the_batch_sync() -> None:
    pair = Pair().login()
    pair.client(pw.Parse(query="copy t from stdin"), pw.Bind(), pw.Execute(), pw.Sync())
    assert pair.frontend.pending_syncs == 1
    pair.server(pw.ParseComplete(), pw.BindComplete(), pw.CopyInResponse())
    # PostgreSQL reads (and ignores) that Sync while in COPY FROM STDIN.
    assert pair.phase is Phase.COPY_IN
    assert pair.frontend.pending_syncs == 0
    assert pair.frontend.busy
    pair.client(pw.CopyData(data=b"1\n"), pw.Sync(), pw.Flush())
    assert pair.frontend.pending_syncs == 0
    pair.client(pw.CopyDone())
    assert pair.phase is Phase.READY
    pair.server(pw.CommandComplete(tag="COPY 1"))
    # The client must send another Sync to get its ReadyForQuery (libpq does).
    with protocol_error(pw.LocalProtocolError, "08P01", "send Sync first"):
        pair.frontend.send(pw.Query(query="select 1"))
    pair.client(pw.Sync())
    assert pair.frontend.pending_syncs == 1
    pair.server(pw.ReadyForQuery())
    assert not pair.frontend.busy


def test_extended_copy_from_refuses_ready_for_query_before_the_second_sync() -> None:
    pair = Pair().login()
    pair.client(pw.Parse(query="copy t from stdin"), pw.Bind(), pw.Execute(), pw.Sync())
    pair.server(pw.ParseComplete(), pw.BindComplete(), pw.CopyInResponse())
    pair.client(pw.CopyDone())
    pair.server(pw.CommandComplete(tag="COPY 0"))
    with protocol_error(pw.LocalProtocolError, "08P01"):
        pair.backend.send(pw.ReadyForQuery())


def test_extended_copy_from_before_the_sync_was_sent() -> None:
    pair = Pair().login()
    pair.client(pw.Parse(query="copy t from stdin"), pw.Bind(), pw.Execute(), pw.Flush())
    pair.server(pw.ParseComplete(), pw.BindComplete(), pw.CopyInResponse())
    assert pair.frontend.pending_syncs == 0
    pair.client(pw.CopyData(data=b"x\n"), pw.CopyDone(), pw.Sync())
    assert pair.frontend.pending_syncs == 1
    pair.server(pw.CommandComplete(tag="COPY 1"), pw.ReadyForQuery())
    assert not pair.frontend.busy


def test_simple_copy_from_keeps_the_query_pending() -> None:
    pair = Pair().login()
    pair.client(pw.Query(query="copy t from stdin"))
    pair.server(pw.CopyInResponse())
    assert pair.frontend.pending_syncs == 1
    pair.client(pw.CopyData(data=b"1\n"), pw.CopyFail(message="nope"))
    assert pair.phase is Phase.READY
    pair.server(pw.ErrorResponse(severity="ERROR", code="57014"), pw.ReadyForQuery())
    assert pair.frontend.pending_syncs == 0


def test_copy_in_error_from_the_server_returns_to_ready() -> None:
    pair = Pair().login()
    pair.client(pw.Query(query="copy t from stdin"))
    pair.server(pw.CopyInResponse())
    pair.client(pw.CopyData(data=b"bad\n"))
    pair.server(pw.ErrorResponse(severity="ERROR", code="22P02"))
    assert pair.phase is Phase.READY
    # The client's CopyData still in flight is ignored by the server: allowed.
    pair.client(pw.CopyData(data=b"late\n"), pw.CopyDone())
    pair.server(pw.ReadyForQuery())
    assert not pair.frontend.busy


def test_copy_out_then_more_results() -> None:
    pair = Pair().login()
    pair.client(pw.Query(query="copy t to stdout; select 1"))
    pair.server(pw.CopyOutResponse(), pw.CopyData(data=b"1\n"), pw.CopyDone())
    assert pair.phase is Phase.READY
    pair.server(pw.CommandComplete(tag="COPY 1"),
                pw.RowDescription(fields=(pw.FieldDescription(name="x"),)),
                pw.DataRow(values=(b"1",)), pw.CommandComplete(tag="SELECT 1"),
                pw.ReadyForQuery())
    assert not pair.frontend.busy


@pytest.mark.parametrize("first", ["client", "server"])
def test_copy_both_ends_when_both_sides_sent_copy_done(first: str) -> None:
    pair = Pair().login()
    pair.client(pw.Query(query="START_REPLICATION 0/0"))
    pair.server(pw.CopyBothResponse())
    pair.client(pw.CopyData(data=b"r..."))
    pair.server(pw.CopyData(data=b"w..."))
    if first == "client":
        pair.client(pw.CopyDone())
        assert pair.phase is Phase.COPY_BOTH
        with protocol_error(pw.LocalProtocolError, "08P01", "CopyData after its CopyDone"):
            pair.frontend.send(pw.CopyData(data=b"late"))
        pair.server(pw.CopyData(data=b"still streaming"))
        pair.server(pw.CopyDone())
    else:
        pair.server(pw.CopyDone())
        assert pair.phase is Phase.COPY_BOTH
        with protocol_error(pw.LocalProtocolError, "08P01", "CopyData after its CopyDone"):
            pair.backend.send(pw.CopyData(data=b"late"))
        with protocol_error(pw.LocalProtocolError, "08P01", "CopyDone twice"):
            pair.backend.send(pw.CopyDone())
        pair.client(pw.CopyData(data=b"still streaming"))
        pair.client(pw.CopyDone())
    assert pair.phase is Phase.READY
    pair.server(pw.CommandComplete(tag="START_REPLICATION"), pw.ReadyForQuery())
    assert not pair.frontend.busy


def test_copy_both_refuses_queries_and_server_copy_data_after_its_done() -> None:
    conversation = reach(Phase.COPY_BOTH)
    with pytest.raises(Violation, match="unexpected message type 'Q'"):
        client(conversation, pw.Query(query="select 1"))
    server(conversation, pw.CopyDone())
    with pytest.raises(Violation, match="server sent CopyData after its CopyDone"):
        server(conversation, pw.CopyData(data=b"x"))
    with pytest.raises(Violation, match="server sent CopyDone twice"):
        server(conversation, pw.CopyDone())


def test_copy_both_error_returns_to_ready() -> None:
    pair = Pair().login()
    pair.client(pw.Query(query="START_REPLICATION 0/0"))
    pair.server(pw.CopyBothResponse())
    pair.server(pw.ErrorResponse(severity="ERROR", code="58P01"))
    assert pair.phase is Phase.READY
    pair.server(pw.ReadyForQuery())


# ---------------------------------------------------------------------------
# A whole session through both machines
# ---------------------------------------------------------------------------


def test_full_session_in_lockstep() -> None:
    pair = Pair()
    pair.client(pw.SSLRequest())
    assert pair.phase is Phase.SSL_NEGOTIATION
    pair.frontend.receive_data(pair.backend.send(pw.SSLResponse(accepted=False)))
    assert pair.frontend.next_event() == pw.SSLResponse(accepted=False)
    pair.check_agree()
    pair.client(pw.StartupMessage.from_dict({"user": "alice"}, pw.PROTOCOL_3_2))
    pair.server(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",)))
    assert pair.client(pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=b"n,,n=,r=a")) == [
        pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=b"n,,n=,r=a")
    ]
    pair.server(pw.AuthenticationSASLContinue(data=b"r=ab,s=c2FsdA==,i=4096"))
    assert pair.client(pw.SASLResponse(data=b"c=biws,r=ab,p=x")) == [
        pw.SASLResponse(data=b"c=biws,r=ab,p=x")
    ]
    pair.server(pw.AuthenticationSASLFinal(data=b"v=y"), pw.AuthenticationOk())
    pair.server(pw.ParameterStatus(name="server_version", value="18.0"),
                pw.BackendKeyData(process_id=7, secret_key=bytes(32)),
                pw.ReadyForQuery())
    assert pair.frontend.backend_key == (7, bytes(32))
    pair.client(pw.Query(query="begin; select 1"))
    pair.server(pw.CommandComplete(tag="BEGIN"),
                pw.RowDescription(fields=(pw.FieldDescription(name="?column?"),)),
                pw.DataRow(values=(b"1",)), pw.CommandComplete(tag="SELECT 1"),
                pw.ReadyForQuery(status=pw.TransactionStatus.IN_TRANSACTION))
    pair.client(pw.FunctionCall(function_oid=1598))
    pair.server(pw.FunctionCallResponse(result=b"r"),
                pw.ReadyForQuery(status=pw.TransactionStatus.IN_TRANSACTION))
    assert pair.backend.transaction_status == "T"
    pair.client(pw.Terminate())
    assert pair.phase is Phase.CLOSED


@pytest.mark.parametrize(
    "message",
    [pw.CopyData(data=b"x"), pw.CopyDone(), pw.CopyFail(message="m")],
    ids=lambda m: type(m).__name__,
)
def test_copy_messages_outside_copy_are_ignored_like_postgresql(message: pw.Message) -> None:
    # PostgreSQL accepts and drops CopyData/CopyDone/CopyFail outside COPY.
    pair = Pair().login()
    assert pair.client(message) == [message]
    assert pair.phase is Phase.READY
    assert not pair.frontend.busy


def test_local_violation_is_a_violation_subclass_free_of_state_change() -> None:
    conversation = reach(Phase.READY)
    client(conversation, pw.Parse(query="x"))
    with pytest.raises(Violation, match="send Sync first"):
        client(conversation, pw.Query(query="y"))
    assert conversation.cycle_kind == "X"
    assert conversation.pending_syncs == 0
    assert conversation.busy


def test_transitions_table_shape() -> None:
    # Every phase can end with EOF from either side; nothing leaves CLOSED.
    for phase in Phase:
        assert TRANSITIONS[(phase, FE, "EOF")] is Phase.CLOSED
        assert TRANSITIONS[(phase, BE, "EOF")] is Phase.CLOSED
    leaving_closed: list[Any] = [
        k for k, v in TRANSITIONS.items() if k[0] is Phase.CLOSED and v is not Phase.CLOSED
    ]
    assert leaving_closed == []

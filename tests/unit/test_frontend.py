"""pgwire.Frontend (you are the client): what a server may send when, and what you may send.

A server that breaks the protocol gets RemoteProtocolError (latched: every
later next_event raises it again); a caller that breaks it gets
LocalProtocolError before any byte is produced, and the state is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import pgwire as pw

from .helpers import (
    drain,
    feed,
    frame,
    header,
    int16,
    int32,
    protocol_error,
    ready_frontend,
    startup_message,
)

FD = pw.FieldDescription
ONE_COLUMN = pw.RowDescription(fields=(FD(name="n", data_type_oid=23),))


def fresh() -> pw.Frontend:
    return pw.Frontend()


def started(*requests: pw.Message, protocol_version: int = pw.PROTOCOL_3_0) -> pw.Frontend:
    frontend = pw.Frontend()
    frontend.send(startup_message(protocol_version))
    feed(frontend, *requests)
    return frontend


def in_query() -> pw.Frontend:
    frontend = ready_frontend()
    frontend.send(pw.Query(query="select 1"))
    return frontend


def in_batch(sync: bool = True) -> pw.Frontend:
    frontend = ready_frontend()
    frontend.send(pw.Parse(query="select $1", parameter_types=(23,)))
    frontend.send(pw.Bind(parameters=(b"1",)))
    frontend.send(pw.Execute())
    if sync:
        frontend.send(pw.Sync())
    return frontend


# ---------------------------------------------------------------------------
# Before and during encryption negotiation
# ---------------------------------------------------------------------------


def test_server_data_before_any_client_packet() -> None:
    frontend = fresh()
    frontend.receive_data(pw.AuthenticationOk().encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", "before the client's startup packet"):
        frontend.next_event()


def test_nothing_received_before_startup_is_need_data_then_eof_closes() -> None:
    frontend = fresh()
    assert frontend.next_event() is pw.NEED_DATA
    frontend.receive_data(b"")
    assert frontend.next_event() == pw.ConnectionClosed()
    assert frontend.phase is pw.Phase.CLOSED


def test_ssl_accepted_alone() -> None:
    frontend = fresh()
    assert frontend.send(pw.SSLRequest()) == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert frontend.phase is pw.Phase.SSL_NEGOTIATION
    assert frontend.next_event() is pw.NEED_DATA
    frontend.receive_data(b"S")
    assert frontend.next_event() == pw.SSLResponse(accepted=True)
    assert frontend.phase is pw.Phase.STARTUP
    # After the TLS handshake the StartupMessage goes through the same Frontend.
    frontend.send(startup_message())
    assert feed(frontend, pw.AuthenticationOk()) == [pw.AuthenticationOk()]


def test_ssl_refused_then_plaintext_startup() -> None:
    frontend = fresh()
    frontend.send(pw.SSLRequest())
    frontend.receive_data(b"N")
    assert frontend.next_event() == pw.SSLResponse(accepted=False)
    frontend.send(startup_message())
    assert frontend.phase is pw.Phase.AUTHENTICATION


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(pw.AuthenticationOk().encode(), id="AuthenticationOk"),
        pytest.param(b"\x00", id="one-byte"),
        pytest.param(b"\x16\x03\x01", id="start-of-a-TLS-record"),
    ],
)
def test_ssl_accept_with_extra_bytes_in_the_same_read_cve_2021_23222(extra: bytes) -> None:
    frontend = fresh()
    frontend.send(pw.SSLRequest())
    frontend.receive_data(b"S" + extra)
    with protocol_error(pw.RemoteProtocolError, "08P01", "unencrypted data"):
        frontend.next_event()


def test_ssl_refusal_with_extra_bytes_in_the_same_read_is_refused_too() -> None:
    frontend = fresh()
    frontend.send(pw.SSLRequest())
    frontend.receive_data(b"N" + pw.AuthenticationOk().encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", "unencrypted data"):
        frontend.next_event()


def test_error_answer_to_ssl_request_is_refused_without_its_text() -> None:
    frontend = fresh()
    frontend.send(pw.SSLRequest())
    error = pw.ErrorResponse(severity="FATAL", code="28000", message="visit evil.example")
    frontend.receive_data(error.encode())
    with protocol_error(pw.RemoteProtocolError, "08P01") as info:
        frontend.next_event()
    assert "evil.example" not in str(info.value)
    assert "not authenticated" in info.value.message


@pytest.mark.parametrize(
    ("request_message", "answer", "match"),
    [
        pytest.param(pw.SSLRequest(), b"G", "SSL negotiation: b'G'", id="SSL-answered-G"),
        pytest.param(pw.SSLRequest(), b"\x00", "SSL negotiation", id="SSL-answered-NUL"),
        pytest.param(pw.GSSENCRequest(), b"S", "GSSAPI negotiation: b'S'", id="GSS-answered-S"),
        pytest.param(pw.GSSENCRequest(), b"R", "GSSAPI negotiation", id="GSS-answered-R"),
    ],
)
def test_invalid_answer_byte(request_message: pw.Message, answer: bytes, match: str) -> None:
    frontend = fresh()
    frontend.send(request_message)
    frontend.receive_data(answer)
    with protocol_error(pw.RemoteProtocolError, "08P01", match):
        frontend.next_event()


def test_gssenc_accepted() -> None:
    frontend = fresh()
    frontend.send(pw.GSSENCRequest())
    frontend.receive_data(b"G")
    assert frontend.next_event() == pw.GSSENCResponse(accepted=True)
    with protocol_error(pw.LocalProtocolError, "0A000", "already negotiated"):
        frontend.send(pw.SSLRequest())


def test_eof_instead_of_ssl_answer_closes() -> None:
    frontend = fresh()
    frontend.send(pw.SSLRequest())
    frontend.receive_data(b"")
    assert frontend.next_event() == pw.ConnectionClosed()


def test_server_data_after_cancel_request() -> None:
    frontend = fresh()
    frontend.send(pw.CancelRequest(process_id=1, secret_key=b"abcd"))
    assert frontend.phase is pw.Phase.CANCEL
    frontend.receive_data(b"N")
    with protocol_error(pw.RemoteProtocolError, "08P01", "after a CancelRequest"):
        frontend.next_event()


# ---------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------


def test_sasl_exchange_accepted_in_order() -> None:
    frontend = started(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",)))
    frontend.send(pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=b"n,,n=,r=a"))
    feed(frontend, pw.AuthenticationSASLContinue(data=b"r=ab,s=c2FsdA==,i=4096"))
    frontend.send(pw.SASLResponse(data=b"c=biws,r=ab,p=proof"))
    feed(frontend, pw.AuthenticationSASLFinal(data=b"v=sig"))
    assert feed(frontend, pw.AuthenticationOk()) == [pw.AuthenticationOk()]
    assert frontend.phase is pw.Phase.SESSION_SETUP


def _sasl_until_continue_answered() -> pw.Frontend:
    frontend = started(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",)))
    frontend.send(pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=b"n,,n=,r=a"))
    feed(frontend, pw.AuthenticationSASLContinue(data=b"r=ab,s=c2FsdA==,i=4096"))
    frontend.send(pw.SASLResponse(data=b"c=biws,r=ab,p=proof"))
    return frontend


def _password_answered() -> pw.Frontend:
    frontend = started(pw.AuthenticationCleartextPassword())
    frontend.send(pw.PasswordMessage(password=b"pw"))
    return frontend


def _sasl_final_received() -> pw.Frontend:
    frontend = _sasl_until_continue_answered()
    feed(frontend, pw.AuthenticationSASLFinal(data=b"v=sig"))
    return frontend


AUTH_VIOLATIONS: list[Any] = [
    pytest.param(_sasl_until_continue_answered, pw.AuthenticationOk(),
                 "AuthenticationOk before AuthenticationSASLFinal",
                 id="Ok-before-SASLFinal"),
    pytest.param(started, pw.AuthenticationSASLContinue(data=b"x"),
                 "outside a SASL exchange", id="SASLContinue-without-SASL"),
    pytest.param(_password_answered, pw.AuthenticationSASLContinue(data=b"x"),
                 "outside a SASL exchange", id="SASLContinue-during-password"),
    pytest.param(started, pw.AuthenticationSASLFinal(data=b"x"),
                 "outside a SASL exchange", id="SASLFinal-without-SASL"),
    pytest.param(_sasl_final_received, pw.AuthenticationSASLContinue(data=b"x"),
                 "outside a SASL exchange", id="SASLContinue-after-SASLFinal"),
    pytest.param(_password_answered, pw.AuthenticationMD5Password(salt=b"salt"),
                 "after authentication with password had begun",
                 id="MD5-after-cleartext-password"),
    pytest.param(_sasl_until_continue_answered, pw.AuthenticationSASL(mechanisms=("X",)),
                 "after authentication with sasl had begun", id="SASL-restarted"),
    pytest.param(_password_answered, pw.AuthenticationGSS(),
                 "after authentication with password had begun", id="GSS-after-password"),
    pytest.param(lambda: started(pw.AuthenticationCleartextPassword()),
                 pw.AuthenticationOk(), "before the client answered",
                 id="Ok-before-password-sent"),
    pytest.param(started, pw.AuthenticationGSSContinue(data=b"t"),
                 "outside a GSSAPI/SSPI exchange", id="GSSContinue-without-GSS"),
    pytest.param(started, pw.ReadyForQuery(), "unexpected message type 'Z'",
                 id="ReadyForQuery-before-AuthenticationOk"),
    pytest.param(started, pw.BackendKeyData(process_id=1, secret_key=b"abcd"),
                 "unexpected message type 'K'", id="BackendKeyData-before-AuthenticationOk"),
    pytest.param(lambda: started(pw.AuthenticationOk()), pw.AuthenticationOk(),
                 "unexpected message type 'R'", id="second-AuthenticationOk"),
]


@pytest.mark.parametrize(("setup", "message", "match"), AUTH_VIOLATIONS)
def test_authentication_out_of_order(
    setup: Callable[[], pw.Frontend], message: pw.Message, match: str
) -> None:
    frontend = setup()
    frontend.receive_data(message.encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", match):
        frontend.next_event()


def test_unknown_authentication_subtype_is_0a000() -> None:
    frontend = started()
    frontend.receive_data(frame(b"R", int32(6)))
    with protocol_error(pw.RemoteProtocolError, "0A000", "authentication method 6"):
        frontend.next_event()


def test_gss_continue_may_end_without_client_answer() -> None:
    frontend = started(pw.AuthenticationGSS())
    frontend.send(pw.GSSResponse(data=b"t1"))
    feed(frontend, pw.AuthenticationGSSContinue(data=b"t2"))
    assert feed(frontend, pw.AuthenticationOk()) == [pw.AuthenticationOk()]


# ---------------------------------------------------------------------------
# Protocol version negotiation and BackendKeyData
# ---------------------------------------------------------------------------


def test_backend_key_of_8_bytes_refused_on_3_0() -> None:
    frontend = started(pw.AuthenticationOk())
    frontend.receive_data(frame(b"K", int32(1) + b"12345678"))
    with protocol_error(pw.RemoteProtocolError, "08P01", "8 bytes on protocol 3.0"):
        frontend.next_event()


@pytest.mark.parametrize("key_size", [4, 8, 32, 256], ids=lambda n: f"key-{n}-bytes")
def test_backend_key_accepted_on_3_2(key_size: int) -> None:
    frontend = started(pw.AuthenticationOk(), protocol_version=pw.PROTOCOL_3_2)
    assert frontend.protocol_version == pw.PROTOCOL_3_2
    key = bytes(range(key_size % 256)) if key_size < 256 else b"k" * 256
    assert feed(frontend, pw.BackendKeyData(process_id=7, secret_key=key)) == [
        pw.BackendKeyData(process_id=7, secret_key=key)
    ]
    assert frontend.backend_key == (7, key)


def test_backend_key_of_257_bytes_refused_on_3_2() -> None:
    frontend = started(pw.AuthenticationOk(), protocol_version=pw.PROTOCOL_3_2)
    frontend.receive_data(frame(b"K", int32(1) + b"k" * 257))
    with protocol_error(pw.RemoteProtocolError, "08P01", "257 bytes"):
        frontend.next_event()


def test_second_backend_key_refused() -> None:
    frontend = started(pw.AuthenticationOk(), pw.BackendKeyData(process_id=1, secret_key=b"abcd"))
    frontend.receive_data(pw.BackendKeyData(process_id=2, secret_key=b"abcd").encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", "second BackendKeyData"):
        frontend.next_event()


def test_negotiation_down_to_3_0_then_short_key_required() -> None:
    frontend = started(protocol_version=pw.PROTOCOL_3_2)
    assert feed(frontend, pw.NegotiateProtocolVersion(newest_minor_version=0)) == [
        pw.NegotiateProtocolVersion(newest_minor_version=0)
    ]
    assert frontend.protocol_version == pw.PROTOCOL_3_0
    feed(frontend, pw.AuthenticationOk())
    frontend.receive_data(pw.BackendKeyData(process_id=1, secret_key=bytes(32)).encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", "32 bytes on protocol 3.0"):
        frontend.next_event()


def test_negotiation_rejecting_a_requested_option_at_the_same_version() -> None:
    frontend = pw.Frontend()
    frontend.send(pw.StartupMessage.from_dict({"user": "u", "_pq_.compression": "on"}))
    answer = pw.NegotiateProtocolVersion(
        newest_minor_version=0, unrecognized_options=("_pq_.compression",)
    )
    assert feed(frontend, answer) == [answer]
    assert frontend.protocol_version == pw.PROTOCOL_3_0


NEGOTIATION_VIOLATIONS: list[Any] = [
    pytest.param(pw.PROTOCOL_3_2, (), pw.NegotiateProtocolVersion(newest_minor_version=2),
                 "offered protocol 3.2 for a requested 3.2", id="same-version-no-options"),
    pytest.param(pw.PROTOCOL_3_2, (), pw.NegotiateProtocolVersion(newest_minor_version=3),
                 "offered protocol 3.3 for a requested 3.2", id="newer-version"),
    pytest.param(pw.PROTOCOL_3_0, (), pw.NegotiateProtocolVersion(newest_minor_version=0),
                 "offered protocol 3.0 for a requested 3.0", id="3.0-nothing-to-negotiate"),
    pytest.param(pw.PROTOCOL_3_2, (),
                 pw.NegotiateProtocolVersion(newest_minor_version=0,
                                             unrecognized_options=("_pq_.x",)),
                 "option '_pq_.x', which the client did not request",
                 id="rejects-an-option-not-requested"),
    pytest.param(pw.PROTOCOL_3_0, ("_pq_.a",),
                 pw.NegotiateProtocolVersion(newest_minor_version=0,
                                             unrecognized_options=("_pq_.b",)),
                 "option '_pq_.b'", id="rejects-a-different-option"),
    pytest.param(pw.PROTOCOL_3_2, (), frame(b"v", int32(0) + int32(0)),
                 "only major version 3 exists", id="bare-minor-as-in-the-docs-wording"),
    pytest.param(pw.PROTOCOL_3_2, (), frame(b"v", int32(2 << 16) + int32(0)),
                 "offers protocol 2.0", id="major-2"),
]


@pytest.mark.parametrize(("version", "options", "answer", "match"), NEGOTIATION_VIOLATIONS)
def test_negotiation_answer_refused(
    version: int, options: tuple[str, ...], answer: pw.Message | bytes, match: str
) -> None:
    frontend = pw.Frontend()
    parameters = {"user": "u", **dict.fromkeys(options, "on")}
    frontend.send(pw.StartupMessage.from_dict(parameters, version))
    frontend.receive_data(answer if isinstance(answer, bytes) else answer.encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", match):
        frontend.next_event()


def test_second_negotiation_or_negotiation_after_auth_began_refused() -> None:
    frontend = started(pw.NegotiateProtocolVersion(newest_minor_version=0),
                       protocol_version=pw.PROTOCOL_3_2)
    frontend.receive_data(pw.NegotiateProtocolVersion(newest_minor_version=0).encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", "after authentication began"):
        frontend.next_event()
    frontend = started(pw.AuthenticationCleartextPassword(), protocol_version=pw.PROTOCOL_3_2)
    frontend.receive_data(pw.NegotiateProtocolVersion(newest_minor_version=0).encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", "after authentication began"):
        frontend.next_event()


def test_malformed_negotiation_is_a_protocol_violation() -> None:
    frontend = started(protocol_version=pw.PROTOCOL_3_2)
    frontend.receive_data(frame(b"v", int32(3 << 16) + int32(1)))
    with protocol_error(pw.RemoteProtocolError, "08P01"):
        frontend.next_event()


# ---------------------------------------------------------------------------
# The query cycle
# ---------------------------------------------------------------------------


def test_simple_query_cycle() -> None:
    frontend = in_query()
    assert frontend.busy
    assert frontend.pending_syncs == 1
    events = feed(
        frontend,
        ONE_COLUMN,
        pw.DataRow(values=(b"1",)),
        pw.CommandComplete(tag="SELECT 1"),
        pw.ReadyForQuery(status=pw.TransactionStatus.IN_TRANSACTION),
    )
    assert [type(e).__name__ for e in events] == [
        "RowDescription", "DataRow", "CommandComplete", "ReadyForQuery"
    ]
    assert not frontend.busy
    assert frontend.transaction_status == "T"


CYCLE_VIOLATIONS: list[Any] = [
    pytest.param(ready_frontend, pw.DataRow(values=(b"1",)),
                 "while no request was in flight", id="DataRow-with-nothing-in-flight"),
    pytest.param(ready_frontend, pw.ReadyForQuery(), "while no request was in flight",
                 id="ReadyForQuery-with-nothing-pending"),
    pytest.param(ready_frontend, pw.CommandComplete(tag="SELECT 1"),
                 "while no request was in flight", id="CommandComplete-unasked"),
    pytest.param(in_query, pw.ParseComplete(), "cannot answer a simple Query",
                 id="ParseComplete-for-a-simple-Query"),
    pytest.param(in_query, pw.PortalSuspended(), "cannot answer a simple Query",
                 id="PortalSuspended-for-a-simple-Query"),
    pytest.param(in_query, pw.FunctionCallResponse(result=None),
                 "cannot answer a simple Query", id="FunctionCallResponse-for-a-Query"),
    pytest.param(in_query, frame(b"X"), "unexpected message type 'X'",
                 id="type-X-from-the-server"),
    pytest.param(in_query, frame(b"?", b"abc"), "unexpected message type '?'",
                 id="unknown-type-from-the-server"),
    pytest.param(in_query, pw.AuthenticationOk(), "unexpected message type 'R'",
                 id="Authentication-after-login"),
    pytest.param(in_query, pw.BackendKeyData(process_id=1, secret_key=b"abcd"),
                 "unexpected message type 'K'", id="BackendKeyData-after-login"),
    pytest.param(in_query, pw.CopyData(data=b"x"), "unexpected message type 'd'",
                 id="CopyData-outside-COPY"),
    pytest.param(in_batch, pw.FunctionCallResponse(result=None),
                 "cannot answer a extended query", id="FunctionCallResponse-for-a-batch"),
    pytest.param(in_batch, frame(b"Z", b"X"), "invalid ReadyForQuery",
                 id="ReadyForQuery-status-X"),
    pytest.param(in_batch, frame(b"Z", b"II"), "invalid ReadyForQuery",
                 id="ReadyForQuery-two-bytes"),
]


@pytest.mark.parametrize(("setup", "message", "match"), CYCLE_VIOLATIONS)
def test_server_message_out_of_cycle(
    setup: Callable[[], pw.Frontend], message: pw.Message | bytes, match: str
) -> None:
    frontend = setup()
    frontend.receive_data(message if isinstance(message, bytes) else message.encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", match):
        frontend.next_event()


def test_ready_for_query_for_a_batch_without_sync_is_refused() -> None:
    # Parse/Bind/Execute with no Sync: the server owes no ReadyForQuery yet.
    frontend = in_batch(sync=False)
    feed(frontend, pw.ParseComplete(), pw.BindComplete(), pw.CommandComplete(tag="SELECT 1"))
    assert frontend.pending_syncs == 0
    frontend.receive_data(pw.ReadyForQuery().encode())
    with protocol_error(pw.RemoteProtocolError, "08P01"):
        frontend.next_event()


def test_function_call_cycle_refuses_rows() -> None:
    frontend = ready_frontend()
    frontend.send(pw.FunctionCall(function_oid=1598))
    frontend.receive_data(pw.DataRow(values=(b"x",)).encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", "cannot answer a FunctionCall"):
        frontend.next_event()
    frontend = ready_frontend()
    frontend.send(pw.FunctionCall(function_oid=1598))
    events = feed(frontend, pw.FunctionCallResponse(result=b"x"), pw.ReadyForQuery())
    assert events == [pw.FunctionCallResponse(result=b"x"), pw.ReadyForQuery()]


@pytest.mark.parametrize(
    ("setup", "message", "allowed"),
    [
        pytest.param(in_batch, pw.ReadyForQuery(status=pw.TransactionStatus.FAILED), True,
                     id="ReadyForQuery"),
        pytest.param(in_batch, pw.NoticeResponse(severity="NOTICE", message="n"), True,
                     id="NoticeResponse"),
        pytest.param(in_batch, pw.NotificationResponse(process_id=1, channel="c"), True,
                     id="NotificationResponse"),
        pytest.param(in_batch, pw.ParameterStatus(name="TimeZone", value="UTC"), True,
                     id="ParameterStatus"),
        pytest.param(in_batch, pw.ErrorResponse(severity="ERROR", code="57014"), True,
                     id="second-ErrorResponse"),
        pytest.param(in_batch, pw.BindComplete(), False, id="BindComplete"),
        pytest.param(in_batch, pw.CommandComplete(tag="SELECT 1"), False,
                     id="CommandComplete"),
        pytest.param(in_query, ONE_COLUMN, False, id="RowDescription"),
        pytest.param(in_query, pw.DataRow(values=(b"1",)), False, id="DataRow"),
        pytest.param(in_query, pw.EmptyQueryResponse(), False, id="EmptyQueryResponse"),
        pytest.param(in_query, pw.CopyInResponse(), False, id="CopyInResponse"),
    ],
)
def test_after_an_error_only_ready_for_query_and_async_messages(
    setup: Callable[[], pw.Frontend], message: pw.Message, allowed: bool
) -> None:
    frontend = setup()
    feed(frontend, pw.ErrorResponse(severity="ERROR", code="42601", message="syntax"))
    frontend.receive_data(message.encode())
    if allowed:
        assert frontend.next_event() == message
    else:
        with protocol_error(pw.RemoteProtocolError, "08P01", "after an error"):
            frontend.next_event()


def test_error_cycle_ends_with_ready_for_query() -> None:
    frontend = in_query()
    feed(frontend, pw.ErrorResponse(severity="ERROR", code="42601"),
         pw.ReadyForQuery(status=pw.TransactionStatus.FAILED))
    assert frontend.transaction_status == "E"
    assert not frontend.busy
    frontend.send(pw.Query(query="rollback"))
    assert feed(frontend, pw.CommandComplete(tag="ROLLBACK"), pw.ReadyForQuery())[0] == (
        pw.CommandComplete(tag="ROLLBACK")
    )


@pytest.mark.parametrize(
    ("columns", "values"),
    [
        pytest.param(1, (b"1", b"2"), id="one-announced-two-sent"),
        pytest.param(2, (b"1",), id="two-announced-one-sent"),
        pytest.param(1, (), id="one-announced-none-sent"),
    ],
)
def test_data_row_column_count_must_match_row_description(
    columns: int, values: tuple[bytes, ...]
) -> None:
    frontend = in_query()
    feed(frontend, pw.RowDescription(fields=tuple(FD(name=f"c{i}") for i in range(columns))))
    frontend.receive_data(pw.DataRow(values=values).encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", "RowDescription announced"):
        frontend.next_event()


def test_extended_query_row_description_does_not_bind_the_next_execute() -> None:
    # In the extended protocol a RowDescription answers a Describe; the next
    # Execute may run another portal with another shape, so no count is enforced.
    frontend = in_batch()
    feed(frontend, pw.ParseComplete(), pw.BindComplete(), ONE_COLUMN)
    assert feed(frontend, pw.DataRow(values=(None, None))) == [pw.DataRow(values=(None, None))]


def test_malformed_data_row_while_rows_are_allowed() -> None:
    frontend = in_query()
    feed(frontend, ONE_COLUMN)
    frontend.receive_data(frame(b"D", int16(1) + int32(100) + b"short"))
    with protocol_error(pw.RemoteProtocolError, "08P01", "insufficient data"):
        frontend.next_event()


def test_undecoded_data_row_is_raw_and_still_checked_for_order() -> None:
    frontend = ready_frontend(decode={b"Z"})
    frontend.send(pw.Query(query="select 1"))
    events = feed(frontend, ONE_COLUMN, pw.DataRow(values=(b"1",)),
                  pw.CommandComplete(tag="SELECT 1"), pw.ReadyForQuery())
    assert [type(e).__name__ for e in events] == [
        "RawMessage", "RawMessage", "RawMessage", "ReadyForQuery"
    ]
    raw_row = events[1]
    assert isinstance(raw_row, pw.RawMessage)
    assert frontend.decode(raw_row) == pw.DataRow(values=(b"1",))
    frontend.receive_data(pw.DataRow(values=(b"1",)).encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", "no request was in flight"):
        frontend.next_event()


# ---------------------------------------------------------------------------
# Sizes: libpq's 30,000-byte rule and max_message_size
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("type_code", [b"C", b"Z", b"S", b"1", b"G", b"K", b"?"],
                         ids=lambda c: c.decode())
def test_short_type_over_30000_bytes_refused_from_its_header(type_code: bytes) -> None:
    frontend = in_query()
    frontend.receive_data(header(type_code, 30001))
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid message length 30001"):
        frontend.next_event()


def test_parameter_description_for_10000_parameters_is_accepted() -> None:
    # 40 KB: above libpq's 30,000-byte rule, but PostgreSQL sends it.
    frontend = in_batch()
    description = pw.ParameterDescription(parameter_types=(23,) * 10000)
    assert feed(frontend, pw.ParseComplete(), description)[1] == description


def test_short_type_of_exactly_30000_bytes_is_framed() -> None:
    frontend = in_query()
    value = "x" * (30000 - 4 - len("application_name\0") - 1)
    status = pw.ParameterStatus(name="application_name", value=value)
    assert len(status.encode()) == 30001  # the length word counts 30000
    assert feed(frontend, status) == [status]


@pytest.mark.parametrize("type_code", [b"D", b"T", b"E", b"N", b"A", b"V", b"d"],
                         ids=lambda c: c.decode())
def test_long_types_over_30000_bytes_are_not_refused(type_code: bytes) -> None:
    frontend = in_query()
    frontend.receive_data(header(type_code, 100_004))
    assert frontend.next_event() is pw.NEED_DATA


def test_data_row_of_100_kb_accepted() -> None:
    frontend = in_query()
    feed(frontend, ONE_COLUMN)
    row = pw.DataRow(values=(b"x" * 100_000,))
    assert feed(frontend, row) == [row]


def test_max_message_size_refuses_large_rows_with_54000() -> None:
    frontend = ready_frontend(max_message_size=1000)
    frontend.send(pw.Query(query="select"))
    frontend.receive_data(header(b"D", 1005))
    with protocol_error(pw.RemoteProtocolError, "54000", "maximum message size of 1000"):
        frontend.next_event()


def test_max_message_size_below_30000_applies_to_short_types_too() -> None:
    frontend = ready_frontend(max_message_size=1000)
    frontend.send(pw.Query(query="select"))
    frontend.receive_data(pw.ParameterStatus(name="x", value="y" * 5000).encode())
    with protocol_error(pw.RemoteProtocolError, "54000"):
        frontend.next_event()


# ---------------------------------------------------------------------------
# End of stream and error latching
# ---------------------------------------------------------------------------


def test_eof_in_the_middle_of_a_message() -> None:
    frontend = in_query()
    frontend.receive_data(pw.CommandComplete(tag="SELECT 1").encode()[:-3])
    assert frontend.next_event() is pw.NEED_DATA
    frontend.receive_data(b"")
    with protocol_error(pw.RemoteProtocolError, "08P01", "in the middle of a message"):
        frontend.next_event()


def test_eof_in_the_middle_of_a_header() -> None:
    frontend = in_query()
    frontend.receive_data(b"C\x00\x00")
    frontend.receive_data(b"")
    with protocol_error(pw.RemoteProtocolError, "08P01", "3 bytes of it received"):
        frontend.next_event()


def test_eof_at_a_message_boundary() -> None:
    frontend = in_query()
    frontend.receive_data(pw.ErrorResponse(severity="FATAL", code="57P01").encode())
    frontend.receive_data(b"")
    assert isinstance(frontend.next_event(), pw.ErrorResponse)
    assert frontend.next_event() == pw.ConnectionClosed()
    assert frontend.phase is pw.Phase.CLOSED
    assert frontend.next_event() == pw.ConnectionClosed()
    with protocol_error(pw.LocalProtocolError, "08P01", "after end of stream"):
        frontend.receive_data(b"more")


def test_remote_error_is_latched() -> None:
    frontend = ready_frontend()
    frontend.receive_data(pw.DataRow(values=()).encode())
    with pytest.raises(pw.RemoteProtocolError) as first:
        frontend.next_event()
    frontend.receive_data(pw.ReadyForQuery().encode())
    for _ in range(3):
        with pytest.raises(pw.RemoteProtocolError) as again:
            frontend.next_event()
        assert again.value is first.value


# ---------------------------------------------------------------------------
# Local misuse: LocalProtocolError, state unchanged, next valid send works
# ---------------------------------------------------------------------------


def _copy_both() -> pw.Frontend:
    frontend = ready_frontend()
    frontend.send(pw.Query(query="START_REPLICATION 0/0"))
    feed(frontend, pw.CopyBothResponse())
    frontend.send(pw.CopyDone())
    return frontend


def _terminated() -> pw.Frontend:
    frontend = ready_frontend()
    frontend.send(pw.Terminate())
    return frontend


def _latin1() -> pw.Frontend:
    return ready_frontend(parameters={"client_encoding": "LATIN1"})


MISUSE: list[Any] = [
    pytest.param(fresh, pw.Query(query="select 1"), "08P01", "unexpected message type 'Q'",
                 startup_message(), id="Query-before-startup"),
    pytest.param(fresh, pw.PasswordMessage(password=b"pw"), "08P01", "unexpected message",
                 startup_message(), id="PasswordMessage-before-startup"),
    pytest.param(fresh, pw.StartupMessage.from_dict({"user": "u"}, 4 << 16), "0A000",
                 "unsupported frontend protocol 4.0", startup_message(),
                 id="StartupMessage-protocol-4"),
    pytest.param(fresh, pw.StartupMessage.from_dict({"user": "u"}, 2 << 16), "0A000",
                 "unsupported frontend protocol 2.0", startup_message(),
                 id="StartupMessage-protocol-2"),
    pytest.param(started, startup_message(), "08P01", "unexpected StartupMessage",
                 pw.Terminate(), id="second-StartupMessage"),
    pytest.param(started, pw.SSLRequest(), "08P01", "unexpected SSLRequest",
                 pw.Terminate(), id="SSLRequest-after-startup"),
    pytest.param(started, pw.PasswordMessage(password=b"pw"), "08P01",
                 "without an authentication request", pw.Terminate(),
                 id="PasswordMessage-not-asked"),
    pytest.param(lambda: started(pw.AuthenticationCleartextPassword()),
                 pw.SASLResponse(data=b"x"), "08P01",
                 "asks for a PasswordMessage, not a SASLResponse",
                 pw.PasswordMessage(password=b"pw"), id="SASLResponse-when-password-asked"),
    pytest.param(lambda: started(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",))),
                 pw.PasswordMessage(password=b"pw"), "08P01",
                 "asks for a SASLInitialResponse, not a PasswordMessage",
                 pw.SASLInitialResponse(mechanism="SCRAM-SHA-256"),
                 id="PasswordMessage-when-SASL-asked"),
    pytest.param(lambda: started(pw.AuthenticationCleartextPassword()),
                 pw.Query(query="select 1"), "08P01", "unexpected message type 'Q'",
                 pw.PasswordMessage(password=b"pw"), id="Query-during-authentication"),
    pytest.param(ready_frontend, pw.PasswordMessage(password=b"pw"), "08P01",
                 "unexpected message type 'p'", pw.Query(query="select 1"),
                 id="PasswordMessage-after-login"),
    pytest.param(lambda: in_batch(sync=False), pw.Query(query="select 2"), "08P01",
                 "send Sync first", pw.Sync(), id="Query-in-an-unsynced-batch"),
    pytest.param(lambda: in_batch(sync=False), pw.FunctionCall(function_oid=1), "08P01",
                 "send Sync first", pw.Sync(), id="FunctionCall-in-an-unsynced-batch"),
    pytest.param(_terminated, pw.Query(query="select 1"), "08P01",
                 "after the connection was closed", None, id="Query-after-Terminate"),
    pytest.param(_terminated, pw.Terminate(), "08P01", "after the connection was closed",
                 None, id="Terminate-after-Terminate"),
    pytest.param(ready_frontend, pw.ReadyForQuery(), "08P01", "server message",
                 pw.Query(query="select 1"), id="server-message-ReadyForQuery"),
    pytest.param(ready_frontend, pw.DataRow(values=()), "08P01", "server message",
                 pw.Query(query="select 1"), id="server-message-DataRow"),
    pytest.param(fresh, pw.AuthenticationOk(), "08P01", "server message", startup_message(),
                 id="server-message-AuthenticationOk"),
    pytest.param(fresh, pw.SSLResponse(accepted=True), "08P01", "server message",
                 pw.SSLRequest(), id="server-message-SSLResponse"),
    pytest.param(ready_frontend, pw.Query(query="a\x00b"), "22023", "NUL",
                 pw.Query(query="select 1"), id="unencodable-Query"),
    pytest.param(_latin1, pw.Query(query="select '€'"), "22021", "no equivalent",
                 pw.Query(query="select 'é'"), id="Query-not-in-client-encoding"),
    pytest.param(_copy_both, pw.CopyDone(), "08P01", "CopyDone twice", pw.Terminate(),
                 id="CopyDone-twice-in-COPY-BOTH"),
    pytest.param(_copy_both, pw.CopyData(data=b"x"), "08P01", "CopyData after its CopyDone",
                 pw.Terminate(), id="CopyData-after-own-CopyDone"),
    pytest.param(ready_frontend, pw.CancelRequest(process_id=1, secret_key=b"abcd"), "08P01",
                 "unexpected CancelRequest", pw.Query(query="select 1"),
                 id="CancelRequest-on-a-session"),
]


def _state(frontend: pw.Frontend) -> tuple[Any, ...]:
    return (frontend.phase, frontend.pending_syncs, frontend.busy,
            frontend.transaction_status, frontend.protocol_version, frontend.encoding)


@pytest.mark.parametrize(("setup", "message", "sqlstate", "match", "next_valid"), MISUSE)
def test_local_misuse_changes_nothing(
    setup: Callable[[], pw.Frontend],
    message: pw.Message,
    sqlstate: str,
    match: str,
    next_valid: pw.Message | None,
) -> None:
    frontend = setup()
    before = _state(frontend)
    with protocol_error(pw.LocalProtocolError, sqlstate, match):
        frontend.send(message)
    assert _state(frontend) == before
    if next_valid is not None:
        assert frontend.send(next_valid) == next_valid.encode(frontend.encoding)


def test_raw_server_message_through_frontend_send() -> None:
    frontend = ready_frontend()
    buffer = pw.ReceiveBuffer()
    buffer.feed(pw.ReadyForQuery().encode())
    raw = buffer.next_frame()
    assert raw is not None
    with protocol_error(pw.LocalProtocolError, "08P01", "not a frontend message"):
        frontend.send(raw)


def test_raw_client_message_is_forwarded_and_tracked() -> None:
    frontend = ready_frontend()
    buffer = pw.ReceiveBuffer()
    buffer.feed(pw.Query(query="select 1").encode())
    raw = buffer.next_frame()
    assert raw is not None
    assert frontend.send(raw) == pw.Query(query="select 1").encode()
    assert frontend.pending_syncs == 1


# ---------------------------------------------------------------------------
# Session parameters
# ---------------------------------------------------------------------------


def test_parameter_status_client_encoding_changes_the_encoding() -> None:
    frontend = ready_frontend()
    assert frontend.encoding == "utf-8"
    frontend.send(pw.Query(query="set client_encoding to latin1"))
    feed(frontend, pw.ParameterStatus(name="client_encoding", value="LATIN1"),
         pw.CommandComplete(tag="SET"), pw.ReadyForQuery())
    assert frontend.encoding == "latin-1"
    assert frontend.parameters["client_encoding"] == "LATIN1"
    assert frontend.send(pw.Query(query="é")) == b"Q\x00\x00\x00\x06\xe9\x00"
    # Server text is now decoded as latin-1 as well.
    frontend.send(pw.Query(query="select"))
    assert feed(frontend, pw.CommandComplete(tag="caf\xe9"))[0] == pw.CommandComplete(
        tag="café"
    )


def test_parameters_keep_the_latest_value() -> None:
    frontend = ready_frontend(parameters={"TimeZone": "UTC", "is_superuser": "off"})
    frontend.send(pw.Query(query="set timezone to 'Europe/Paris'"))
    feed(frontend, pw.ParameterStatus(name="TimeZone", value="Europe/Paris"))
    assert frontend.parameters == {"TimeZone": "Europe/Paris", "is_superuser": "off"}


def test_backend_key_recorded_even_when_not_decoded() -> None:
    frontend = pw.Frontend(decode={b"Z"})
    frontend.send(startup_message())
    events = feed(frontend, pw.AuthenticationOk(),
                  pw.BackendKeyData(process_id=99, secret_key=b"wxyz"),
                  pw.ParameterStatus(name="a", value="b"), pw.ReadyForQuery())
    assert [type(e).__name__ for e in events] == [
        "RawMessage", "RawMessage", "RawMessage", "ReadyForQuery"
    ]
    assert frontend.backend_key == (99, b"wxyz")
    assert frontend.parameters == {"a": "b"}


def test_one_byte_feeding_gives_the_same_events() -> None:
    messages: list[pw.Message] = [
        pw.AuthenticationOk(),
        pw.ParameterStatus(name="client_encoding", value="UTF8"),
        pw.BackendKeyData(process_id=1, secret_key=b"abcd"),
        pw.ReadyForQuery(),
    ]
    data = b"".join(m.encode() for m in messages)
    frontend = pw.Frontend()
    frontend.send(startup_message())
    events = []
    for byte in data:
        frontend.receive_data(bytes([byte]))
        events.extend(drain(frontend))
    assert events == messages

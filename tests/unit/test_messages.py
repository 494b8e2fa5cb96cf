"""Message encoding and decoding, byte for byte, and every way a body can be wrong.

Expected bytes are written out by hand from the "Message Formats" page of the
PostgreSQL documentation, not produced by the code under test. Decode errors
must be :class:`pgwire.RemoteProtocolError` with PostgreSQL's SQLSTATE (never
IndexError, struct.error or UnicodeError); encode errors must be
:class:`pgwire.LocalProtocolError`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any

import pytest

import pgwire as pw
from pgwire.protocol._messages import _decode_data_rows_py, decode_data_row

from .helpers import cstr, int16, int32, protocol_error

FD = pw.FieldDescription

# ---------------------------------------------------------------------------
# Encoding: exact bytes
# ---------------------------------------------------------------------------

ENCODED: list[Any] = [
    pytest.param(
        pw.Query(query="select 1"),
        b"Q\x00\x00\x00\x0dselect 1\x00",
        id="Query",
    ),
    pytest.param(
        pw.Parse(statement="s1", query="select $1", parameter_types=(23, 3000000000)),
        b"P\x00\x00\x00\x1b"
        b"s1\x00select $1\x00"
        b"\x00\x02\x00\x00\x00\x17\xb2\xd0\x5e\x00",
        id="Parse-with-parameter-types-incl-oid-above-2**31",
    ),
    pytest.param(
        pw.Bind(
            portal="p1",
            statement="s1",
            parameter_formats=(0, 1),
            parameters=(b"42", None),
            result_formats=(1,),
        ),
        b"B\x00\x00\x00\x20"
        b"p1\x00s1\x00"
        b"\x00\x02\x00\x00\x00\x01"
        b"\x00\x02\x00\x00\x00\x0242\xff\xff\xff\xff"
        b"\x00\x01\x00\x01",
        id="Bind-with-NULL-and-formats",
    ),
    pytest.param(
        pw.Bind(),
        b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00",
        id="Bind-unnamed-no-parameters",
    ),
    pytest.param(
        pw.Describe(kind="S", name="s1"),
        b"D\x00\x00\x00\x08Ss1\x00",
        id="Describe-statement",
    ),
    pytest.param(
        pw.Execute(portal="", max_rows=100),
        b"E\x00\x00\x00\x09\x00\x00\x00\x00\x64",
        id="Execute",
    ),
    pytest.param(pw.Close(kind="P", name=""), b"C\x00\x00\x00\x06P\x00", id="Close-portal"),
    pytest.param(pw.Sync(), b"S\x00\x00\x00\x04", id="Sync"),
    pytest.param(pw.Terminate(), b"X\x00\x00\x00\x04", id="Terminate"),
    pytest.param(
        pw.StartupMessage.from_dict({"user": "alice", "database": "shop"}),
        b"\x00\x00\x00\x22\x00\x03\x00\x00user\x00alice\x00database\x00shop\x00\x00",
        id="StartupMessage-3.0",
    ),
    pytest.param(
        pw.StartupMessage.from_dict({"user": "bob"}, pw.PROTOCOL_3_2),
        b"\x00\x00\x00\x12\x00\x03\x00\x02user\x00bob\x00\x00",
        id="StartupMessage-3.2",
    ),
    pytest.param(pw.SSLRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f", id="SSLRequest"),
    pytest.param(pw.GSSENCRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x30", id="GSSENCRequest"),
    pytest.param(
        pw.CancelRequest(process_id=4242, secret_key=b"\x01\x02\x03\x04"),
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x10\x92\x01\x02\x03\x04",
        id="CancelRequest-3.0-4-byte-key",
    ),
    pytest.param(
        pw.CancelRequest(process_id=4242, secret_key=bytes(range(32))),
        b"\x00\x00\x00\x2c\x04\xd2\x16\x2e\x00\x00\x10\x92" + bytes(range(32)),
        id="CancelRequest-3.2-32-byte-key",
    ),
    pytest.param(
        pw.CancelRequest(process_id=1, secret_key=b"k" * 256),
        b"\x00\x00\x01\x0c\x04\xd2\x16\x2e\x00\x00\x00\x01" + b"k" * 256,
        id="CancelRequest-3.2-256-byte-key",
    ),
    pytest.param(
        pw.PasswordMessage(password=b"md5abc"),
        b"p\x00\x00\x00\x0bmd5abc\x00",
        id="PasswordMessage",
    ),
    pytest.param(
        pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=None),
        b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\xff\xff\xff\xff",
        id="SASLInitialResponse-without-data",
    ),
    pytest.param(
        pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=b"n,,n=,r=x"),
        b"p\x00\x00\x00\x1fSCRAM-SHA-256\x00\x00\x00\x00\x09n,,n=,r=x",
        id="SASLInitialResponse-with-data",
    ),
    pytest.param(
        pw.ErrorResponse(
            severity="ERROR",
            severity_nonlocalized="ERROR",
            code="23505",
            message="dup",
            detail="D1",
            hint="H1",
            position="7",
            internal_position="8",
            internal_query="iq",
            where="w",
            schema_name="public",
            table_name="t",
            column_name="c",
            data_type_name="int4",
            constraint_name="t_pkey",
            file="nbtinsert.c",
            line="666",
            routine="_bt_check_unique",
            other=(("Z", "future"), ("y", "")),
        ),
        b"E\x00\x00\x00\x7e"
        b"SERROR\x00VERROR\x00C23505\x00Mdup\x00DD1\x00HH1\x00P7\x00p8\x00qiq\x00"
        b"Ww\x00spublic\x00tt\x00cc\x00dint4\x00nt_pkey\x00Fnbtinsert.c\x00"
        b"L666\x00R_bt_check_unique\x00Zfuture\x00y\x00\x00",
        id="ErrorResponse-all-fields-and-unknown-codes",
    ),
    pytest.param(
        pw.NoticeResponse(severity="WARNING", code="01000", message="m"),
        b"N\x00\x00\x00\x18SWARNING\x00C01000\x00Mm\x00\x00",
        id="NoticeResponse",
    ),
    pytest.param(
        pw.RowDescription(
            fields=(
                FD(
                    name="id",
                    table_oid=16384,
                    column_attribute_number=1,
                    data_type_oid=23,
                    data_type_size=4,
                    type_modifier=-1,
                    format=0,
                ),
                FD(name="", data_type_oid=25, format=1),
            )
        ),
        b"T\x00\x00\x00\x2e\x00\x02"
        b"id\x00\x00\x00\x40\x00\x00\x01\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x01",
        id="RowDescription",
    ),
    pytest.param(
        pw.DataRow(values=(b"1", None, b"")),
        b"D\x00\x00\x00\x13\x00\x03\x00\x00\x00\x011\xff\xff\xff\xff\x00\x00\x00\x00",
        id="DataRow-with-NULL-and-empty",
    ),
    pytest.param(
        pw.ReadyForQuery(status=pw.TransactionStatus.IN_TRANSACTION),
        b"Z\x00\x00\x00\x05T",
        id="ReadyForQuery",
    ),
    pytest.param(
        pw.BackendKeyData(process_id=4242, secret_key=b"\x00\x00\x00\x2a"),
        b"K\x00\x00\x00\x0c\x00\x00\x10\x92\x00\x00\x00\x2a",
        id="BackendKeyData-3.0",
    ),
    pytest.param(
        pw.ParameterStatus(name="TimeZone", value="UTC"),
        b"S\x00\x00\x00\x11TimeZone\x00UTC\x00",
        id="ParameterStatus",
    ),
    pytest.param(
        pw.NegotiateProtocolVersion(newest_minor_version=0, unrecognized_options=("_pq_.x",)),
        b"v\x00\x00\x00\x13\x00\x03\x00\x00\x00\x00\x00\x01_pq_.x\x00",
        id="NegotiateProtocolVersion",
    ),
    pytest.param(
        pw.NegotiateProtocolVersion(newest_minor_version=2),
        b"v\x00\x00\x00\x0c\x00\x03\x00\x02\x00\x00\x00\x00",
        id="NegotiateProtocolVersion-no-options",
    ),
    pytest.param(
        pw.CopyInResponse(format=1, column_formats=(1, 1)),
        b"G\x00\x00\x00\x0b\x01\x00\x02\x00\x01\x00\x01",
        id="CopyInResponse",
    ),
    pytest.param(
        pw.NotificationResponse(process_id=7, channel="ch", payload="hi"),
        b"A\x00\x00\x00\x0e\x00\x00\x00\x07ch\x00hi\x00",
        id="NotificationResponse",
    ),
    pytest.param(
        pw.FunctionCallResponse(result=None),
        b"V\x00\x00\x00\x08\xff\xff\xff\xff",
        id="FunctionCallResponse-NULL",
    ),
    pytest.param(pw.AuthenticationOk(), b"R\x00\x00\x00\x08\x00\x00\x00\x00", id="AuthOk"),
    pytest.param(
        pw.AuthenticationKerberosV5(), b"R\x00\x00\x00\x08\x00\x00\x00\x02", id="AuthKerberosV5"
    ),
    pytest.param(
        pw.AuthenticationCleartextPassword(),
        b"R\x00\x00\x00\x08\x00\x00\x00\x03",
        id="AuthCleartextPassword",
    ),
    pytest.param(
        pw.AuthenticationMD5Password(salt=b"\x01\x02\x03\x04"),
        b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04",
        id="AuthMD5Password",
    ),
    pytest.param(pw.AuthenticationGSS(), b"R\x00\x00\x00\x08\x00\x00\x00\x07", id="AuthGSS"),
    pytest.param(
        pw.AuthenticationGSSContinue(data=b"tok"),
        b"R\x00\x00\x00\x0b\x00\x00\x00\x08tok",
        id="AuthGSSContinue",
    ),
    pytest.param(pw.AuthenticationSSPI(), b"R\x00\x00\x00\x08\x00\x00\x00\x09", id="AuthSSPI"),
    pytest.param(
        pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
        b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00",
        id="AuthSASL",
    ),
    pytest.param(
        pw.AuthenticationSASLContinue(data=b"r=abc"),
        b"R\x00\x00\x00\x0d\x00\x00\x00\x0br=abc",
        id="AuthSASLContinue",
    ),
    pytest.param(
        pw.AuthenticationSASLFinal(data=b"v=xyz"),
        b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=xyz",
        id="AuthSASLFinal",
    ),
]

UNTYPED = (pw.StartupMessage, pw.SSLRequest, pw.GSSENCRequest, pw.CancelRequest)


def _body(message: pw.Message, encoded: bytes) -> bytes:
    return encoded[4:] if isinstance(message, UNTYPED) else encoded[5:]


def _decoder(message: pw.Message) -> Callable[..., pw.Message]:
    if isinstance(message, pw.Authentication):
        return pw.Authentication.decode
    return type(message).decode


@pytest.mark.parametrize(("message", "expected"), ENCODED)
def test_encode_gives_documented_bytes(message: pw.Message, expected: bytes) -> None:
    assert message.encode() == expected


@pytest.mark.parametrize(("message", "expected"), ENCODED)
def test_decode_of_documented_bytes_gives_the_message_back(
    message: pw.Message, expected: bytes
) -> None:
    assert _decoder(message)(_body(message, expected)) == message


def test_error_response_keeps_unknown_field_codes_in_order() -> None:
    body = b"SERROR\x00Zfirst\x00C42000\x00Zsecond\x00\x7fdel\x00Mm\x00\x00"
    error = pw.ErrorResponse.decode(body)
    assert error.other == (("Z", "first"), ("Z", "second"), ("\x7f", "del"))
    assert (error.severity, error.code, error.message, error.sqlstate) == (
        "ERROR", "42000", "m", "42000"
    )


def test_error_response_repeated_known_field_keeps_the_last() -> None:
    error = pw.ErrorResponse.decode(b"Mfirst\x00Msecond\x00\x00")
    assert error.message == "second"


def test_authentication_decode_by_subclass_checks_the_subtype() -> None:
    with protocol_error(pw.RemoteProtocolError, "08P01", "expected AuthenticationOk"):
        pw.AuthenticationOk.decode(int32(3))
    assert pw.AuthenticationCleartextPassword.decode(int32(3)) == (
        pw.AuthenticationCleartextPassword()
    )


def test_decode_in_a_single_byte_encoding() -> None:
    body = b"caf\xe9\x00"
    assert pw.Query.decode(body, "latin-1") == pw.Query(query="café")
    with protocol_error(pw.RemoteProtocolError, "22021"):
        pw.Query.decode(body)


def test_startup_message_keeps_duplicates_and_last_one_wins() -> None:
    body = int32(pw.PROTOCOL_3_0) + cstr("user") + cstr("a") + cstr("user") + cstr("b") + b"\0"
    startup = pw.StartupMessage.decode(body)
    assert startup.parameters == (("user", "a"), ("user", "b"))
    assert startup.get("user") == "b"
    assert startup.as_dict() == {"user": "b"}


# ---------------------------------------------------------------------------
# Decoding: truncation of every decoder
# ---------------------------------------------------------------------------

# (message, shortest body that may still decode). None: every proper prefix fails.
SAMPLES: list[tuple[pw.Message, int | None]] = [
    (pw.Query(query="select 1"), None),
    (pw.Parse(statement="s", query="select $1, $2", parameter_types=(23, 25)), None),
    (pw.Bind(portal="p", statement="s", parameter_formats=(1,), parameters=(b"ab", None),
             result_formats=(0, 1)), None),
    (pw.Describe(kind="P", name="p"), None),
    (pw.Execute(portal="p", max_rows=5), None),
    (pw.Close(kind="S", name="s"), None),
    (pw.FunctionCall(function_oid=1598, argument_formats=(1,), arguments=(b"\x00\x01",),
                     result_format=1), None),
    (pw.CopyData(data=b"1\t2\n"), 0),
    (pw.CopyFail(message="user abort"), None),
    (pw.PasswordMessage(password=b"secret"), None),
    (pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=b"n,,n=,r=abc"), None),
    (pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=None), None),
    (pw.SASLResponse(data=b"c=biws,r=abc,p=xyz"), 0),
    (pw.GSSResponse(data=b"token"), 0),
    (pw.StartupMessage.from_dict({"user": "alice", "database": "shop"}), None),
    (pw.SSLRequest(), None),
    (pw.GSSENCRequest(), None),
    (pw.CancelRequest(process_id=7, secret_key=bytes(range(16))), 12),
    (pw.AuthenticationOk(), None),
    (pw.AuthenticationKerberosV5(), None),
    (pw.AuthenticationCleartextPassword(), None),
    (pw.AuthenticationMD5Password(salt=b"salt"), None),
    (pw.AuthenticationGSS(), None),
    (pw.AuthenticationGSSContinue(data=b"tok"), 4),
    (pw.AuthenticationSSPI(), None),
    (pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",)), None),
    (pw.AuthenticationSASLContinue(data=b"r=x,s=y,i=4096"), 4),
    (pw.AuthenticationSASLFinal(data=b"v=sig"), 4),
    (pw.ParameterStatus(name="DateStyle", value="ISO, MDY"), None),
    (pw.BackendKeyData(process_id=9, secret_key=bytes(range(32))), 8),
    (pw.ReadyForQuery(status=pw.TransactionStatus.FAILED), None),
    (pw.RowDescription(fields=(FD(name="a", data_type_oid=23), FD(name="bb"))), None),
    (pw.DataRow(values=(b"x", None, b"yz")), None),
    (pw.CommandComplete(tag="SELECT 2"), None),
    (pw.ErrorResponse(severity="ERROR", code="42P01", message="no such table"), None),
    (pw.NoticeResponse(severity="NOTICE", code="00000", message="hello"), None),
    (pw.ParameterDescription(parameter_types=(23, 25)), None),
    (pw.CopyInResponse(format=0, column_formats=(0, 0)), None),
    (pw.CopyOutResponse(format=1, column_formats=(1,)), None),
    (pw.CopyBothResponse(format=0, column_formats=()), None),
    (pw.NotificationResponse(process_id=3, channel="jobs", payload="42"), None),
    (pw.FunctionCallResponse(result=b"\x00\x01"), None),
    (pw.NegotiateProtocolVersion(newest_minor_version=0, unrecognized_options=("_pq_.a",)),
     None),
]

EMPTY_BODY_CLASSES = {
    pw.Sync, pw.Flush, pw.Terminate, pw.CopyDone, pw.ParseComplete, pw.BindComplete,
    pw.CloseComplete, pw.NoData, pw.PortalSuspended, pw.EmptyQueryResponse,
}


def test_samples_cover_every_message_class() -> None:
    covered = {type(message) for message, _ in SAMPLES} | EMPTY_BODY_CLASSES
    assert covered >= set(pw.FRONTEND_TYPED_CLASSES | pw.BACKEND_TYPED_CLASSES) | set(UNTYPED)


@pytest.mark.parametrize(
    ("message", "shortest"), [pytest.param(m, s, id=type(m).__name__) for m, s in SAMPLES]
)
def test_every_truncation_is_a_remote_protocol_error(
    message: pw.Message, shortest: int | None
) -> None:
    body = _body(message, message.encode())
    decode = _decoder(message)
    assert decode(body) == message
    for size in range(len(body)):
        if shortest is not None and size >= shortest:
            assert isinstance(decode(body[:size]), type(message))
            continue
        with protocol_error(pw.RemoteProtocolError, "08P01"):
            decode(body[:size])


@pytest.mark.parametrize(
    "message", [pytest.param(m, id=type(m).__name__) for m, s in SAMPLES if s is None]
)
def test_trailing_bytes_are_invalid_message_format(message: pw.Message) -> None:
    body = _body(message, message.encode())
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid|unexpected"):
        _decoder(message)(body + b"\x00")


@pytest.mark.parametrize(
    "cls", sorted(EMPTY_BODY_CLASSES, key=lambda c: c.__name__), ids=lambda c: c.__name__
)
def test_empty_body_message_with_a_body_is_invalid(cls: type[pw.Message]) -> None:
    assert cls.decode(b"") == cls()
    with protocol_error(pw.RemoteProtocolError, "08P01", "invalid message format"):
        cls.decode(b"\x00")


# ---------------------------------------------------------------------------
# Decoding: malformed bodies, with PostgreSQL's SQLSTATE
# ---------------------------------------------------------------------------

BIND_HEAD = cstr("") + cstr("")
SASL = int32(10)

DECODE_ERRORS: list[Any] = [
    pytest.param(pw.Query, b"select 1", "08P01", "invalid string in message",
                 id="Query-missing-terminator"),
    pytest.param(pw.Query, b"sel\x00ect 1\x00", "08P01", "invalid message format",
                 id="Query-embedded-NUL-leaves-trailing-bytes"),
    pytest.param(pw.Parse, cstr("") + b"select 1", "08P01", "invalid string in message",
                 id="Parse-query-missing-terminator"),
    pytest.param(pw.Parse, cstr("") + cstr("select $1") + b"\xff\xff", "08P01",
                 "insufficient data", id="Parse-count-65535-types-missing"),
    pytest.param(pw.Bind, BIND_HEAD + int16(0) + int16(1) + int32(-2) + int16(0), "08P01",
                 "invalid argument length -2", id="Bind-parameter-length-minus-2"),
    pytest.param(pw.Bind, BIND_HEAD + int16(0) + int16(1) + int32(-(2**31)) + int16(0),
                 "08P01", "invalid argument length", id="Bind-parameter-length-min-int32"),
    pytest.param(pw.Bind, BIND_HEAD + int16(0) + int16(1) + int32(10) + b"abc" + int16(0),
                 "08P01", "insufficient data", id="Bind-parameter-longer-than-body"),
    pytest.param(pw.Bind, BIND_HEAD + b"\xff\xff" + int16(0), "08P01", "insufficient data",
                 id="Bind-format-count-65535-unsigned"),
    pytest.param(pw.Bind, BIND_HEAD + int16(2) + int16(0) + int16(0)
                 + int16(3) + (int32(1) + b"1") * 3 + int16(0), "08P01",
                 "2 parameter formats but 3 parameters", id="Bind-format-count-mismatch"),
    pytest.param(pw.Bind, BIND_HEAD + int16(1) + int16(2) + int16(0) + int16(0), "22023",
                 "unsupported format code: 2", id="Bind-parameter-format-2"),
    pytest.param(pw.Bind, BIND_HEAD + int16(0) + int16(0) + int16(1) + int16(-1), "22023",
                 "unsupported format code: -1", id="Bind-result-format-minus-1"),
    pytest.param(pw.Bind, b"\xc3\x28\x00" + cstr("") + int16(0) + int16(0) + int16(0),
                 "22021", "invalid byte sequence", id="Bind-portal-invalid-UTF-8"),
    pytest.param(pw.FunctionCall, int32(1) + int16(0) + int16(0) + int16(7), "22023",
                 "unsupported format code: 7", id="FunctionCall-result-format-7"),
    pytest.param(pw.FunctionCall, int32(1) + int16(2) + int16(0) + int16(1) + int16(1)
                 + int32(-1) + int16(0), "08P01", "2 argument formats but 1 arguments",
                 id="FunctionCall-format-count-mismatch"),
    pytest.param(pw.Describe, b"X" + cstr("s"), "08P01", "invalid DESCRIBE message subtype",
                 id="Describe-kind-X"),
    pytest.param(pw.Close, b"s" + cstr("s"), "08P01", "invalid CLOSE message subtype",
                 id="Close-kind-lowercase-s"),
    pytest.param(pw.Execute, cstr("") + b"\x00\x00", "08P01", "insufficient data",
                 id="Execute-short-max-rows"),
    pytest.param(pw.Query, b"\xff\xfe\x00", "22021", "invalid byte sequence",
                 id="Query-invalid-UTF-8"),
    pytest.param(pw.ParameterStatus, cstr("a") + b"\xed\xa0\x80\x00", "22021",
                 "invalid byte sequence", id="ParameterStatus-UTF-8-surrogate"),
    pytest.param(pw.ErrorResponse, b"Mbad \xc0\xaf\x00\x00", "22021", "invalid byte sequence",
                 id="ErrorResponse-overlong-UTF-8"),
    pytest.param(pw.ErrorResponse, b"SERROR\x00", "08P01", "insufficient data",
                 id="ErrorResponse-missing-final-NUL"),
    pytest.param(pw.ErrorResponse, b"SERROR", "08P01", "invalid string in message",
                 id="ErrorResponse-field-missing-terminator"),
    pytest.param(pw.ReadyForQuery, b"X", "08P01", "transaction status", id="ReadyForQuery-X"),
    pytest.param(pw.ReadyForQuery, b"i", "08P01", "transaction status",
                 id="ReadyForQuery-lowercase-i"),
    pytest.param(pw.Authentication, int32(99), "0A000", "authentication method 99",
                 id="Authentication-unknown-subtype-99"),
    pytest.param(pw.Authentication, int32(-1), "0A000", "authentication method -1",
                 id="Authentication-unknown-subtype-minus-1"),
    pytest.param(pw.Authentication, int32(1), "0A000", "authentication method 1",
                 id="Authentication-unused-subtype-1"),
    pytest.param(pw.Authentication, SASL + b"\x00", "08P01", "no mechanism",
                 id="AuthenticationSASL-no-mechanisms"),
    pytest.param(pw.Authentication, SASL + cstr("SCRAM-SHA-256"), "08P01",
                 "invalid string in message", id="AuthenticationSASL-list-not-terminated"),
    pytest.param(pw.Authentication, int32(5) + b"abc", "08P01", "insufficient data",
                 id="AuthenticationMD5-3-byte-salt"),
    pytest.param(pw.Authentication, int32(5) + b"abcde", "08P01", "trailing",
                 id="AuthenticationMD5-5-byte-salt"),
    pytest.param(pw.Authentication, int32(0) + b"\x00", "08P01", "trailing",
                 id="AuthenticationOk-with-a-body"),
    pytest.param(pw.BackendKeyData, int32(1) + b"abc", "08P01", "cancel key of 3 bytes",
                 id="BackendKeyData-3-byte-key"),
    pytest.param(pw.BackendKeyData, int32(1) + b"k" * 257, "08P01", "cancel key of 257 bytes",
                 id="BackendKeyData-257-byte-key"),
    pytest.param(pw.CancelRequest, int32(80877102) + int32(1) + b"abc", "08P01",
                 "cancel key of 3 bytes", id="CancelRequest-3-byte-key"),
    pytest.param(pw.CancelRequest, int32(80877102) + int32(1) + b"k" * 257, "08P01",
                 "cancel key of 257 bytes", id="CancelRequest-257-byte-key"),
    pytest.param(pw.CancelRequest, int32(80877103) + int32(1) + b"abcd", "08P01",
                 "not a CancelRequest", id="CancelRequest-wrong-code"),
    pytest.param(pw.DataRow, int16(1) + int32(10) + b"abc", "08P01", "insufficient data",
                 id="DataRow-column-longer-than-body"),
    pytest.param(pw.DataRow, int16(2) + int32(1) + b"a", "08P01", "insufficient data",
                 id="DataRow-fewer-columns-than-count"),
    pytest.param(pw.DataRow, int16(1) + int32(-2), "08P01", "invalid column length -2",
                 id="DataRow-column-length-minus-2"),
    pytest.param(pw.DataRow, int16(1) + int32(1) + b"ab", "08P01", "trailing",
                 id="DataRow-trailing-bytes"),
    pytest.param(pw.DataRow, b"\x00", "08P01", "insufficient data", id="DataRow-1-byte-body"),
    pytest.param(pw.FunctionCallResponse, int32(-2), "08P01", "invalid argument length",
                 id="FunctionCallResponse-length-minus-2"),
    pytest.param(pw.SASLInitialResponse, cstr("SCRAM-SHA-256") + int32(-2), "08P01",
                 "invalid argument length", id="SASLInitialResponse-length-minus-2"),
    pytest.param(pw.SASLInitialResponse, cstr("SCRAM-SHA-256") + int32(5) + b"ab", "08P01",
                 "insufficient data", id="SASLInitialResponse-data-shorter-than-length"),
    pytest.param(pw.NegotiateProtocolVersion, int32(3 << 16) + int32(-1), "08P01",
                 "invalid option count -1", id="NegotiateProtocolVersion-count-minus-1"),
    pytest.param(pw.NegotiateProtocolVersion, int32(3 << 16) + int32(2) + cstr("_pq_.a"),
                 "08P01", "invalid string in message",
                 id="NegotiateProtocolVersion-missing-option"),
    pytest.param(pw.NegotiateProtocolVersion, int32(0) + int32(0), "08P01",
                 "only major version 3", id="NegotiateProtocolVersion-bare-minor-0"),
    pytest.param(pw.NegotiateProtocolVersion, int32(4 << 16) + int32(0), "08P01",
                 "offers protocol 4.0", id="NegotiateProtocolVersion-major-4"),
    pytest.param(pw.RowDescription, int16(2) + cstr("a") + bytes(18), "08P01",
                 "insufficient data", id="RowDescription-fewer-fields-than-count"),
    pytest.param(pw.RowDescription, int16(1) + cstr("a") + bytes(17), "08P01",
                 "insufficient data", id="RowDescription-short-field"),
    pytest.param(pw.ParameterDescription, int16(3) + int32(23), "08P01", "insufficient data",
                 id="ParameterDescription-fewer-types-than-count"),
    pytest.param(pw.CopyInResponse, b"\x02" + int16(0), "22023", "COPY format code: 2",
                 id="CopyInResponse-overall-format-2"),
    pytest.param(pw.CopyOutResponse, b"\x00" + int16(1) + int16(5), "22023",
                 "COPY format code: 5", id="CopyOutResponse-column-format-5"),
    pytest.param(pw.StartupMessage, int32(pw.PROTOCOL_3_0) + cstr("user") + cstr("a"), "08P01",
                 "expected terminator as last byte", id="StartupMessage-no-terminator"),
    pytest.param(pw.StartupMessage, int32(pw.PROTOCOL_3_0) + cstr("user") + b"a", "08P01",
                 "expected terminator as last byte", id="StartupMessage-value-not-terminated"),
    pytest.param(pw.StartupMessage, int32(pw.PROTOCOL_3_0) + b"user", "08P01",
                 "invalid string in message", id="StartupMessage-name-not-terminated"),
    pytest.param(pw.StartupMessage, int32(pw.PROTOCOL_3_0) + b"\x00junk", "08P01",
                 "trailing", id="StartupMessage-bytes-after-terminator"),
    pytest.param(pw.SSLRequest, int32(80877102), "08P01", "not an SSLRequest",
                 id="SSLRequest-wrong-code"),
]


@pytest.mark.parametrize(("cls", "body", "sqlstate", "match"), DECODE_ERRORS)
def test_malformed_body(cls: type[pw.Message], body: bytes, sqlstate: str, match: str) -> None:
    with protocol_error(pw.RemoteProtocolError, sqlstate, match):
        cls.decode(body)


# ---------------------------------------------------------------------------
# Decoding: garbage never escapes as anything but RemoteProtocolError
# ---------------------------------------------------------------------------


def _mutations(body: bytes, rng: random.Random) -> list[bytes]:
    out = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 24))) for _ in range(40)]
    for _ in range(80):
        data = bytearray(body)
        for _ in range(rng.randrange(1, 4)):
            action = rng.randrange(4)
            if action == 0 and data:
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            elif action == 1:
                data.insert(rng.randrange(len(data) + 1), rng.choice(b"\x00\xff\x80\x01"))
            elif action == 2 and data:
                del data[rng.randrange(len(data))]
            else:
                data[rng.randrange(len(data) + 1):] = b"\xff\xff\xff\xfe"
        out.append(bytes(data))
    return out


@pytest.mark.parametrize(
    "message", [pytest.param(m, id=type(m).__name__) for m, _ in SAMPLES]
)
def test_mutated_bodies_raise_only_remote_protocol_error(message: pw.Message) -> None:
    rng = random.Random(type(message).__name__)
    body = _body(message, message.encode())
    decode = _decoder(message)
    for mutated in _mutations(body, rng):
        for encoding in ("utf-8", "latin-1", "shift_jis"):
            with contextlib.suppress(pw.RemoteProtocolError):
                decode(mutated, encoding)


# ---------------------------------------------------------------------------
# Encoding errors: LocalProtocolError before any byte is produced
# ---------------------------------------------------------------------------

TOO_MANY = 65536
BAD_KIND: Any = "X"

ENCODE_ERRORS: list[Any] = [
    pytest.param(pw.Query(query="select 1\x00; drop table t"), "22023", "NUL",
                 id="Query-NUL-in-string"),
    pytest.param(pw.Parse(statement="a\x00b", query="select 1"), "22023", "NUL",
                 id="Parse-NUL-in-statement-name"),
    pytest.param(pw.ParameterStatus(name="x", value="\x00"), "22023", "NUL",
                 id="ParameterStatus-NUL-in-value"),
    pytest.param(pw.StartupMessage.from_dict({"user": "a\x00b"}), "22023", "NUL",
                 id="StartupMessage-NUL-in-value"),
    pytest.param(pw.StartupMessage.from_dict({"": "x"}), "22023", "must not be empty",
                 id="StartupMessage-empty-name"),
    pytest.param(pw.PasswordMessage(password=b"se\x00cret"), "22023", "NUL",
                 id="PasswordMessage-NUL"),
    pytest.param(pw.ErrorResponse(message="m", other=(("ZZ", "v"),)), "22023",
                 "field code", id="ErrorResponse-two-char-field-code"),
    pytest.param(pw.ErrorResponse(message="m", other=(("\x00", "v"),)), "22023",
                 "field code", id="ErrorResponse-NUL-field-code"),
    pytest.param(pw.Parse(query="q", parameter_types=(0,) * TOO_MANY), "22023",
                 "does not fit", id="Parse-65536-parameter-types"),
    pytest.param(pw.Bind(parameters=(None,) * TOO_MANY), "22023", "does not fit",
                 id="Bind-65536-parameters"),
    pytest.param(pw.Bind(result_formats=(0,) * TOO_MANY), "22023", "does not fit",
                 id="Bind-65536-result-formats"),
    pytest.param(pw.DataRow(values=(None,) * TOO_MANY), "22023", "does not fit",
                 id="DataRow-65536-columns"),
    pytest.param(pw.RowDescription(fields=(FD(name="a"),) * TOO_MANY), "22023",
                 "does not fit", id="RowDescription-65536-fields"),
    pytest.param(pw.Bind(parameter_formats=(70000,), parameters=(b"",)), "22023",
                 "does not fit", id="Bind-format-code-over-int16"),
    pytest.param(pw.Execute(max_rows=2**31), "22023", "does not fit",
                 id="Execute-max-rows-2**31"),
    pytest.param(pw.Execute(max_rows=-(2**31) - 1), "22023", "does not fit",
                 id="Execute-max-rows-below-int32"),
    pytest.param(pw.BackendKeyData(process_id=2**31, secret_key=b"abcd"), "22023",
                 "does not fit", id="BackendKeyData-process-id-2**31"),
    pytest.param(pw.FunctionCall(function_oid=-1), "22023", "does not fit",
                 id="FunctionCall-negative-oid"),
    pytest.param(pw.Parse(query="q", parameter_types=(2**32,)), "22023", "does not fit",
                 id="Parse-oid-2**32"),
    pytest.param(pw.CopyInResponse(format=300), "22023", "does not fit",
                 id="CopyInResponse-format-300"),
    pytest.param(pw.StartupMessage(protocol_version=2**31, parameters=(("user", "u"),)),
                 "22023", "does not fit", id="StartupMessage-version-2**31"),
    pytest.param(pw.AuthenticationMD5Password(salt=b"abc"), "22023", "4 bytes",
                 id="MD5-salt-3-bytes"),
    pytest.param(pw.AuthenticationMD5Password(salt=b"abcde"), "22023", "4 bytes",
                 id="MD5-salt-5-bytes"),
    pytest.param(pw.AuthenticationSASL(mechanisms=()), "22023", "at least one",
                 id="AuthenticationSASL-no-mechanisms"),
    pytest.param(pw.AuthenticationSASL(mechanisms=("",)), "22023", "must not be empty",
                 id="AuthenticationSASL-empty-mechanism"),
    pytest.param(pw.NegotiateProtocolVersion(newest_minor_version=-1), "22023",
                 "outside 0..65535", id="NegotiateProtocolVersion-minor-minus-1"),
    pytest.param(pw.NegotiateProtocolVersion(newest_minor_version=65536), "22023",
                 "outside 0..65535", id="NegotiateProtocolVersion-minor-65536"),
    pytest.param(pw.CancelRequest(process_id=1, secret_key=b"abc"), "08P01",
                 "cancel key of 3 bytes", id="CancelRequest-3-byte-key"),
    pytest.param(pw.CancelRequest(process_id=1, secret_key=b"k" * 257), "08P01",
                 "cancel key of 257 bytes", id="CancelRequest-257-byte-key"),
    pytest.param(pw.BackendKeyData(process_id=1, secret_key=b""), "08P01",
                 "cancel key of 0 bytes", id="BackendKeyData-empty-key"),
    pytest.param(pw.Describe(kind=BAD_KIND, name=""), "22023", "'S'", id="Describe-kind-X"),
    pytest.param(pw.Close(kind=BAD_KIND, name=""), "22023", "'S'", id="Close-kind-X"),
    pytest.param(
        pw.StartupMessage.from_dict({"user": "u", "options": "x" * 10000}), "54000",
        "exceeds PostgreSQL's limit of 10000", id="StartupMessage-over-10000-bytes",
    ),
]


@pytest.mark.parametrize(("message", "sqlstate", "match"), ENCODE_ERRORS)
def test_unencodable_message(message: pw.Message, sqlstate: str, match: str) -> None:
    with protocol_error(pw.LocalProtocolError, sqlstate, match):
        message.encode()


def test_startup_packet_body_of_exactly_10000_bytes_is_allowed() -> None:
    # PostgreSQL's MAX_STARTUP_PACKET_LENGTH bounds the body after the length word:
    # 4 version + "user\0u\0" (7) + "options\0" (8) + value + NUL + final NUL
    value = "x" * (10000 - 4 - 7 - 8 - 1 - 1)
    encoded = pw.StartupMessage.from_dict({"user": "u", "options": value}).encode()
    assert len(encoded) == 10004
    backend = pw.Backend()
    backend.receive_data(encoded)
    assert isinstance(backend.next_event(), pw.StartupMessage)
    with protocol_error(pw.LocalProtocolError, "54000"):
        pw.StartupMessage.from_dict({"user": "u", "options": value + "x"}).encode()


@pytest.mark.parametrize(
    ("message", "encoding"),
    [
        pytest.param(pw.Query(query="select '€'"), "latin-1", id="Query-euro-in-latin-1"),
        pytest.param(pw.Parse(statement="名", query="q"), "latin-1", id="Parse-name-in-latin-1"),
        pytest.param(pw.ParameterStatus(name="x", value="ü"), "ascii", id="ParameterStatus-ascii"),
        pytest.param(pw.ErrorResponse(message="\u017f"), "koi8-r", id="ErrorResponse-koi8-r"),
    ],
)
def test_character_missing_from_the_connection_encoding(
    message: pw.Message, encoding: str
) -> None:
    with protocol_error(pw.LocalProtocolError, "22021", "no equivalent in encoding"):
        message.encode(encoding)


def test_latin_1_encoding_writes_single_bytes() -> None:
    assert pw.Query(query="café").encode("latin-1") == b"Q\x00\x00\x00\x09caf\xe9\x00"


def test_sasl_mechanism_is_always_utf_8() -> None:
    # The mechanism name is ASCII on the wire whatever client_encoding says.
    encoded = pw.SASLInitialResponse(mechanism="SCRAM-SHA-256", data=None).encode("utf-16")
    assert encoded[5:19] == b"SCRAM-SHA-256\x00"


def test_data_row_reads_stop_at_the_frame_not_the_buffer() -> None:
    # One column announced, its length missing: the bytes after the frame (the
    # next frame's) must not be read as that length. Found by the chunking test.
    stream = b"D\x00\x00\x00\x06\x00\x01" + b"\x80\x00\x00\x00"
    with protocol_error(pw.RemoteProtocolError, "08P01", "insufficient data"):
        decode_data_row(stream, 5, 7)
    assert _decode_data_rows_py(stream, 0, len(stream), 1 << 20, -1, 10, pw.DataRow) == ([], 0)

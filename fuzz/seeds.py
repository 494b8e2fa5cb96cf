"""Synthetic seeds: what the captures cannot hold (fixed-nonce SCRAM, odd phases).

:func:`synthetic` yields ``(harness, input)`` pairs; ``fuzz/capture.py``
writes them beside the captured seeds, and ``tests/fuzz`` replays them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pgwire as pw
from pgwire.auth import ScramClient, ScramServer

from ._common import piece_bytes
from .backend import PHASES as BACKEND_PHASES
from .frontend import PHASES as FRONTEND_PHASES
from .frontend import login_answer
from .scram_client import CLIENT_NONCE
from .scram_server import CHANNEL_BINDING, PASSWORD, SECRET, SERVER_NONCE
from .session import delivery, event

__all__ = ["genuine_scram", "synthetic"]


def genuine_scram(plus: bool) -> tuple[str, bytes, bytes, bytes, bytes]:
    """A successful exchange with the harnesses' fixed nonces and secret:
    (mechanism, client-first, server-first, client-final, server-final)."""
    binding = CHANNEL_BINDING if plus else None
    client = ScramClient(PASSWORD, channel_binding=binding, nonce=CLIENT_NONCE)
    server = ScramServer(SECRET, channel_binding=binding, nonce=SERVER_NONCE)
    client_first = client.client_first()
    server_first = server.receive_client_first(client.mechanism, client_first)
    client_final = client.receive_server_first(server_first)
    server_final = server.receive_client_final(client_final)
    client.receive_server_final(server_final)
    return client.mechanism, client_first, server_first, client_final, server_final


def _encode(*messages: pw.Message) -> bytes:
    return b"".join(m.encode() for m in messages)


def synthetic() -> Iterator[tuple[str, bytes]]:
    """Every synthetic seed, as (harness, input)."""
    for plus in (False, True):
        mechanism, client_first, server_first, client_final, server_final = genuine_scram(plus)
        yield "scram_server", bytes([(1 | 4) if plus else 0]) + piece_bytes(
            b"", client_first) + client_final
        yield "scram_server", bytes([(1 | 8) if plus else 8]) + piece_bytes(
            mechanism.encode(), client_first) + client_final
        for keys in (0, 4):
            control = ((1 | (2 << 3)) if plus else (1 << 3)) | keys
            yield "scram_client", bytes([control]) + piece_bytes(b"", server_first) + server_final
        yield "scram_client", bytes([3 << 3]) + piece_bytes(
            b"SCRAM-SHA-256,OTHER", server_first) + server_final
    query_answer = _encode(
        pw.RowDescription(fields=(pw.FieldDescription(name="one", data_type_oid=23),)),
        pw.DataRow(values=(b"1",)), pw.CommandComplete(tag="SELECT 1"),
        pw.NoticeResponse(severity="NOTICE", code="00000", message="hi"),
        pw.NotificationResponse(process_id=1, channel="c", payload="p"),
        pw.ParameterStatus(name="client_encoding", value="LATIN1"),
        pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))
    extended_answer = _encode(
        pw.ParseComplete(), pw.BindComplete(),
        pw.RowDescription(fields=(pw.FieldDescription(name="int4", data_type_oid=23),)),
        pw.DataRow(values=(b"1",)), pw.CommandComplete(tag="SELECT 1"),
        pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))
    error = _encode(pw.ErrorResponse(severity="ERROR", code="42601", message="syntax"),
                    pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))
    for answer in (b"N", b"S", b"E", b"SX", b"G"):
        yield "frontend", bytes([FRONTEND_PHASES.index("ssl"), 0]) + answer
        yield "frontend", bytes([FRONTEND_PHASES.index("gssenc"), 0]) + answer
    yield "frontend", bytes([FRONTEND_PHASES.index("cancel"), 0])
    yield "frontend", bytes([FRONTEND_PHASES.index("query"), 1]) + query_answer
    yield "frontend", bytes([FRONTEND_PHASES.index("query") | 0x20, 0]) + query_answer
    yield "frontend", bytes([FRONTEND_PHASES.index("extended"), 2]) + extended_answer
    yield "frontend", bytes([FRONTEND_PHASES.index("extended"), 0]) + error
    yield "frontend", bytes([FRONTEND_PHASES.index("idle"), 0]) + query_answer[-60:]
    yield "frontend", bytes([FRONTEND_PHASES.index("startup"), 0]) + _encode(
        pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",)),
        pw.AuthenticationSASLContinue(data=b"r=abc,s=c2FsdA==,i=4096"),
        pw.NegotiateProtocolVersion(newest_minor_version=0, unrecognized_options=("_pq_.x",)))
    startup = pw.StartupMessage(parameters=(("user", "alice"), ("database", "app")))
    yield "backend", bytes([BACKEND_PHASES.index("startup"), 0]) + _encode(pw.SSLRequest())
    yield "backend", bytes([BACKEND_PHASES.index("startup"), 0]) + _encode(
        pw.CancelRequest(process_id=1, secret_key=b"\x00\x00\x00\x02"))
    yield "backend", bytes([BACKEND_PHASES.index("startup"), 0]) + b"\x16\x03\x01\x00\x05hello"
    yield "backend", bytes([BACKEND_PHASES.index("after_ssl_no"), 0]) + startup.encode()
    yield "backend", bytes([BACKEND_PHASES.index("password"), 0]) + _encode(
        pw.PasswordMessage(password=b"secret"))
    yield "backend", bytes([BACKEND_PHASES.index("md5"), 0]) + _encode(
        pw.PasswordMessage(password=b"md5" + b"0" * 32))
    yield "backend", bytes([BACKEND_PHASES.index("ready"), 0]) + _encode(
        pw.Parse(statement="s", query="select $1", parameter_types=(23,)),
        pw.Bind(statement="s", parameter_formats=(1,), parameters=(b"\x00\x00\x00\x01",),
                result_formats=(1,)),
        pw.Describe(kind="P"), pw.Execute(), pw.Close(kind="S", name="s"), pw.Flush(),
        pw.Sync(), pw.FunctionCall(function_oid=1, arguments=(b"x", None)), pw.Terminate())
    yield "backend", bytes([BACKEND_PHASES.index("copy_in"), 0]) + _encode(
        pw.CopyData(data=b"1\n"), pw.CopyFail(message="no"), pw.Sync())
    for options in ("-c role=admin", "--role=x -c search_path=a", "-ecrole=x", "-c a\\ b=c",
                    "-B 12 -F -d 5 -t pa -f s", "-- x", "-c", "--session-authorization=y"):
        body = b"user\0alice\0options\0" + options.encode() + b"\0\0"
        for bits in (0x00, 0x02, 0x0F):
            yield "startup", bytes([bits]) + body
        yield "startup", bytes([0x20]) + options.encode()
        yield "startup", bytes([0x1A]) + body
    for value in ("database", "on", "of", "maybe", "1"):
        yield "startup", bytes([0x30]) + value.encode()
        yield "startup", bytes([0x04]) + b"user\0alice\0replication\0" + value.encode() + b"\0\0"
    raw_query = _encode(pw.Query(query="select 1"))
    raw_set_role = _encode(pw.Query(query="SET ROLE admins"))
    copy = _encode(pw.Query(query="copy t from stdin"))
    for mode in range(3):
        yield "session", bytes([mode, 1]) + delivery(0, raw_query) + delivery(1, query_answer)
        yield "session", bytes([mode, 1]) + delivery(0, raw_set_role) + delivery(
            1, _encode(pw.CommandComplete(tag="SET"),
                       pw.ReadyForQuery(status=pw.TransactionStatus.IDLE))) + event("idle_timer")
        yield "session", bytes([mode, 1]) + delivery(0, copy) + delivery(1, _encode(
            pw.CopyInResponse(format=0, column_formats=(0,)))) + delivery(0, _encode(
                pw.CopyData(data=b"1\n"), pw.CopyFail(message="abort"))) + delivery(1, error)
        yield "session", bytes([mode, 0]) + delivery(0, startup.encode()) + delivery(
            1, login_answer()) + delivery(0, raw_query) + event("server_eof")
        yield "session", bytes([mode, 1]) + delivery(0, raw_query) + event("shutdown") + delivery(
            1, query_answer)
    for control in range(8):
        yield "session_pool", bytes([control]) + delivery(0, raw_query) + delivery(
            1, query_answer) + delivery(0, _encode(pw.Query(query="BEGIN"))) + delivery(
            1, _encode(pw.CommandComplete(tag="BEGIN"),
                       pw.ReadyForQuery(status=pw.TransactionStatus.IN_TRANSACTION))) + event(
            "server_eof") + event("shutdown")

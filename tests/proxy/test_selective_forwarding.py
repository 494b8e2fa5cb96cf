"""Selective forwarding: a session whose middleware reads some message types.

Without ``check_protocol`` such a session delimits frames by their headers,
decodes exactly the types some middleware reads (and the few the session
tracks itself), and forwards everything else, and every message the hooks let
through unchanged, as the bytes received.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgwire as pw
from pgwire.middleware import Context, Middleware, Verdict
from pgwire.proxy import SendToClient, SendToUpstream
from pgwire.testing import strategies as pst
from pgwire.testing.harness import SessionHarness

IDLE = pw.TransactionStatus.IDLE


class Counting(Middleware[None]):
    """Reads Bind and Sync from the client, ErrorResponse and ReadyForQuery from
    the server, changes nothing, and counts what it saw."""

    client_messages = frozenset({b"B", b"S"})
    server_messages = frozenset({b"E", b"Z"})

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def on_client_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        self.seen.append(message.type_code)
        return None

    def on_server_message(self, ctx: Context[None], message: pw.Message) -> Verdict:
        self.seen.append(message.type_code)
        return None


def frame(code: bytes, body: bytes) -> bytes:
    return code + (len(body) + 4).to_bytes(4, "big") + body


def sent_to_client(actions: list[Any]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendToClient))


def sent_upstream(actions: list[Any]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendToUpstream))


def test_a_message_no_hook_changed_reaches_the_client_as_the_server_sent_it() -> None:
    # Fields in an order pgwire's encoder would not write: decoding and
    # encoding again would change the bytes; forwarding must not.
    counting = Counting()
    wire = SessionHarness(counting).logged_in()
    wire.client_sends(pw.Query(query="SELECT 1/0"))
    error = frame(b"E", b"MOops\0SERROR\0C22012\0VERROR\0\0")
    ready = pw.ReadyForQuery(status=IDLE).encode()
    assert pw.ErrorResponse(severity="ERROR", severity_nonlocalized="ERROR", code="22012",
                            message="Oops").encode() != error
    actions = wire.feed(wire.session.upstream_data(error + ready))
    assert sent_to_client(actions) == error + ready
    assert counting.seen == [b"E", b"Z"]
    assert wire.session.transaction_status == "I"


def test_every_frame_of_a_type_a_middleware_reads_reaches_its_hook_in_any_chunking() -> None:
    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        batch = st.lists(st.one_of(pst.parses(), pst.binds(), pst.describes(),
                                   pst.executes(), pst.closes(), pst.flushes()), max_size=4)
        batches = data.draw(st.lists(batch.map(lambda b: [*b, pw.Sync()]), max_size=4))
        messages = [m for b in batches for m in b]
        stream = b"".join(m.encode() for m in messages)
        chunks = data.draw(pst.chunkings(stream))
        counting = Counting()
        wire = SessionHarness(counting).logged_in()
        upstream = b""
        for chunk in chunks:
            upstream += sent_upstream(wire.feed(wire.session.client_data(chunk)))
        assert upstream == stream  # byte for byte, in order
        assert counting.seen == [m.type_code for m in messages if m.type_code in b"BS"]
        assert wire.session._requests_open() == bool(messages)

    check()


def test_a_frame_of_no_server_type_ends_the_session_instead_of_reaching_the_client() -> None:
    wire = SessionHarness(Counting()).logged_in()
    wire.client_sends(pw.Query(query="SELECT 1"))
    actions = wire.feed(wire.session.upstream_data(frame(b"\x00", b"")))
    assert b"\x00\x00\x00\x00\x04" not in sent_to_client(actions)
    assert wire.fatal().code == "08P01"


def test_a_response_with_nothing_in_flight_ends_the_session() -> None:
    wire = SessionHarness(Counting()).logged_in()
    stray = pw.CommandComplete(tag="SELECT 1").encode()
    actions = wire.feed(wire.session.upstream_data(stray))
    assert stray not in sent_to_client(actions)
    assert wire.fatal().code == "08P01"


def test_a_query_inside_an_open_extended_batch_is_refused_as_the_state_machine_does() -> None:
    wire = SessionHarness(Counting()).logged_in()
    # (The harness's client Frontend would refuse to send this: raw bytes.)
    bind = pw.Bind(portal="", statement="s", parameter_formats=(), parameters=(),
                   result_formats=())
    wire.feed(wire.session.client_data(bind.encode() + pw.Query(query="SELECT 1").encode()))
    assert wire.fatal().code == "08P01"
    assert [e for e in wire.server_events() if isinstance(e, pw.Query)] == []

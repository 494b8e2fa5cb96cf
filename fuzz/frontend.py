"""Fuzz the Frontend (you are the client) with bytes from a server.

Input: a phase byte, a chunking byte, then the server's bytes. The phase says
what the client sent before the fuzzed bytes arrive:

0. a StartupMessage (the server's login answer is fuzzed);
1. an SSLRequest (the one-byte answer and what follows it);
2. a GSSENCRequest;
3. a CancelRequest (a server must send nothing back);
4. login done, then a Query;
5. login done, then a Parse/Bind/Describe/Execute/Sync batch;
6. login done, a COPY FROM STDIN Query answered with CopyInResponse (during COPY IN);
7. login done, a COPY TO STDOUT Query answered with CopyOutResponse (during COPY OUT);
8. login done, nothing sent (only asynchronous messages are legal).

Bit 4 of the phase byte makes the Frontend deliver every type raw
(``decode=set()``, the proxy's data path), bit 5 decodes DataRow only.

Allowed: ``pgwire.RemoteProtocolError``. Checked besides: after an error
every ``next_event`` raises the same error; events are messages, raw frames
or ConnectionClosed; the stream cut into chunks gives the same events and
the same error (SQLSTATE) as the stream whole, except around an encryption
answer (see :func:`negotiated`); nothing is buffered beyond what was fed.
"""

from __future__ import annotations

from collections.abc import Callable

import pgwire as pw

from ._common import Finding, Input, chunked, fuzz

__all__ = ["PHASES", "Outcome", "login_answer", "negotiated", "one_input", "prepare"]

PHASES = ("startup", "ssl", "gssenc", "cancel", "query", "extended", "copy_in", "copy_out",
          "idle")


def login_answer() -> bytes:
    """What a trust-authenticating PostgreSQL 15 sends after the StartupMessage."""
    messages: list[pw.Message] = [
        pw.AuthenticationOk(),
        pw.ParameterStatus(name="client_encoding", value="UTF8"),
        pw.ParameterStatus(name="server_version", value="15.0"),
        pw.ParameterStatus(name="standard_conforming_strings", value="on"),
        pw.BackendKeyData(process_id=4242, secret_key=b"\x01\x02\x03\x04"),
        pw.ReadyForQuery(status=pw.TransactionStatus.IDLE),
    ]
    return b"".join(m.encode() for m in messages)


_STARTUP = pw.StartupMessage(parameters=(("user", "alice"), ("database", "app")))
_EXTENDED = (
    pw.Parse(statement="s1", query="select $1::int", parameter_types=(23,)),
    pw.Bind(portal="", statement="s1", parameter_formats=(0,), parameters=(b"1",),
            result_formats=(0,)),
    pw.Describe(kind="P", name=""),
    pw.Execute(portal="", max_rows=0),
    pw.Sync(),
)


def _drain(frontend: pw.Frontend, events: list[object]) -> None:
    while True:
        event = frontend.next_event()
        if event is pw.NEED_DATA:
            return
        if not isinstance(event, pw.Message | pw.RawMessage | pw.ConnectionClosed):
            raise Finding(f"next_event returned {event!r}")
        events.append(event)
        if isinstance(event, pw.ConnectionClosed):
            return


def prepare(phase: int, decode: set[bytes] | None) -> pw.Frontend:
    """A Frontend in ``phase`` (an index into PHASES), ready for the fuzzed bytes."""
    frontend = pw.Frontend(decode=decode)
    name = PHASES[phase]
    if name == "ssl":
        frontend.send(pw.SSLRequest())
        return frontend
    if name == "gssenc":
        frontend.send(pw.GSSENCRequest())
        return frontend
    if name == "cancel":
        frontend.send(pw.CancelRequest(process_id=1, secret_key=b"\x00\x00\x00\x01"))
        return frontend
    frontend.send(_STARTUP)
    if name == "startup":
        return frontend
    frontend.receive_data(login_answer())
    _drain(frontend, [])
    if name == "query":
        frontend.send(pw.Query(query="select 1"))
    elif name == "extended":
        for message in _EXTENDED:
            frontend.send(message)
    elif name in ("copy_in", "copy_out"):
        inbound = name == "copy_in"
        frontend.send(pw.Query(query="copy t from stdin" if inbound else "copy t to stdout"))
        answer = pw.CopyInResponse if inbound else pw.CopyOutResponse
        frontend.receive_data(answer(format=0, column_formats=(0, 0)).encode())
        _drain(frontend, [])
        if inbound:
            frontend.send(pw.CopyData(data=b"1\t2\n"))
    return frontend


Outcome = tuple[list[object], str | None]


def run(phase: int, decode: set[bytes] | None, chunks: list[bytes]) -> Outcome:
    """Feed ``chunks`` then end of stream; the events and the error's SQLSTATE, if any."""
    frontend = prepare(phase, decode)
    events: list[object] = []
    fed = 0
    try:
        for chunk in chunks:
            frontend.receive_data(chunk)
            fed += len(chunk)
            _drain(frontend, events)
            if frontend.buffered > fed:
                raise Finding(f"{frontend.buffered} bytes buffered after {fed} fed")
        frontend.receive_data(b"")
        _drain(frontend, events)
    except pw.RemoteProtocolError as exc:
        _check_latched(frontend.next_event, exc)
        return events, exc.sqlstate
    return events, None


def _check_latched(next_event: Callable[[], object], error: pw.RemoteProtocolError) -> None:
    try:
        event = next_event()
    except pw.RemoteProtocolError as again:
        if again is not error:
            raise Finding(f"a second, different error after {error!r}: {again!r}") from again
        return
    raise Finding(f"next_event returned {event!r} after {error!r}")


def one_input(data: bytes) -> None:
    """One fuzz case (see the module docstring)."""
    source = Input(data)
    control = source.byte()
    seed = source.byte()
    payload = source.rest()
    phase = (control & 0x0F) % len(PHASES)
    decode: set[bytes] | None = None
    if control & 0x10:
        decode = set()
    elif control & 0x20:
        decode = {b"D"}
    whole = run(phase, decode, [payload] if payload else [])
    if seed:
        pieces = run(phase, decode, chunked(payload, seed))
        if pieces != whole and not (negotiated(whole) or negotiated(pieces)):
            raise Finding(f"chunked delivery differs from whole: {pieces!r} != {whole!r}")


_NEGOTIATION = (pw.SSLRequest, pw.GSSENCRequest, pw.SSLResponse, pw.GSSENCResponse)


def negotiated(outcome: Outcome) -> bool:
    """Whether an encryption request or answer was among the events.

    Chunking matters there, on purpose: bytes that arrive in the same read
    as the answer (or the request) are refused (CVE-2021-23222/23214), the
    same bytes in a later read are not.
    """
    return any(isinstance(event, _NEGOTIATION) for event in outcome[0])


if __name__ == "__main__":
    fuzz(one_input)

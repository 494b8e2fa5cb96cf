"""Fuzz the Backend (you are the server) with bytes from a client.

Input: a phase byte, a chunking byte, then the client's bytes. The phase says
where the conversation is when the fuzzed bytes arrive:

0. nothing yet (startup packet, SSLRequest, GSSENCRequest, CancelRequest, direct TLS);
1. SSLRequest answered 'N' (a StartupMessage comes next);
2. StartupMessage received, AuthenticationCleartextPassword sent;
3. ... AuthenticationMD5Password sent;
4. ... AuthenticationSASL sent (a SASLInitialResponse comes next);
5. ... SASLInitialResponse received, AuthenticationSASLContinue sent;
6. login done (ReadyForQuery sent);
7. login done, a COPY FROM STDIN Query answered with CopyInResponse (during COPY IN).

Bit 4 of the phase byte delivers every type raw (``decode=set()``, the
proxy's data path).

Allowed: ``pgwire.RemoteProtocolError``. Checked besides: as for the
Frontend harness (latched errors, event types, chunked == whole, nothing
buffered beyond what was fed).
"""

from __future__ import annotations

import pgwire as pw

from ._common import Finding, Input, chunked, fuzz
from .frontend import _check_latched, negotiated

__all__ = ["PHASES", "one_input", "prepare"]

PHASES = ("startup", "after_ssl_no", "password", "md5", "sasl", "sasl_continue", "ready",
          "copy_in")

_STARTUP = pw.StartupMessage(parameters=(("user", "alice"), ("database", "app")))


def _drain(backend: pw.Backend, events: list[object]) -> None:
    while True:
        event = backend.next_event()
        if event is pw.NEED_DATA:
            return
        if not isinstance(event, pw.Message | pw.RawMessage | pw.ConnectionClosed
                          | pw.DirectTLSHandshake):
            raise Finding(f"next_event returned {event!r}")
        events.append(event)
        if isinstance(event, pw.ConnectionClosed | pw.DirectTLSHandshake):
            return


def _client_says(backend: pw.Backend, *messages: pw.Message) -> None:
    backend.receive_data(b"".join(m.encode() for m in messages))
    _drain(backend, [])


def prepare(phase: int, decode: set[bytes] | None) -> pw.Backend:
    """A Backend in ``phase`` (an index into PHASES), ready for the fuzzed bytes."""
    backend = pw.Backend(decode=decode)
    name = PHASES[phase]
    if name == "startup":
        return backend
    if name == "after_ssl_no":
        _client_says(backend, pw.SSLRequest())
        backend.send(pw.SSLResponse(accepted=False))
        return backend
    _client_says(backend, _STARTUP)
    if name == "password":
        backend.send(pw.AuthenticationCleartextPassword())
        return backend
    if name == "md5":
        backend.send(pw.AuthenticationMD5Password(salt=b"salt"))
        return backend
    if name in ("sasl", "sasl_continue"):
        backend.send(pw.AuthenticationSASL(mechanisms=("SCRAM-SHA-256",)))
        if name == "sasl_continue":
            _client_says(backend, pw.SASLInitialResponse(mechanism="SCRAM-SHA-256",
                                                          data=b"n,,n=,r=abcdef"))
            backend.send(pw.AuthenticationSASLContinue(data=b"r=abcdefgh,s=c2FsdA==,i=4096"))
        return backend
    for message in (pw.AuthenticationOk(), pw.ParameterStatus(name="client_encoding",
                                                              value="UTF8"),
                    pw.BackendKeyData(process_id=1, secret_key=b"\x00\x00\x00\x02"),
                    pw.ReadyForQuery(status=pw.TransactionStatus.IDLE)):
        backend.send(message)
    if name == "copy_in":
        _client_says(backend, pw.Query(query="copy t from stdin"))
        backend.send(pw.CopyInResponse(format=0, column_formats=(0,)))
    return backend


def run(phase: int, decode: set[bytes] | None, chunks: list[bytes]
        ) -> tuple[list[object], str | None]:
    """Feed ``chunks`` then end of stream; the events and the error's SQLSTATE, if any."""
    backend = prepare(phase, decode)
    events: list[object] = []
    fed = 0
    try:
        for chunk in chunks:
            if events and isinstance(events[-1], pw.DirectTLSHandshake | pw.ConnectionClosed):
                break  # the TLS layer takes over; the rest is not ours
            backend.receive_data(chunk)
            fed += len(chunk)
            _drain(backend, events)
            if backend.buffered > fed:
                raise Finding(f"{backend.buffered} bytes buffered after {fed} fed")
        if not (events and isinstance(events[-1], pw.DirectTLSHandshake)):
            backend.receive_data(b"")
            _drain(backend, events)
    except pw.RemoteProtocolError as exc:
        _check_latched(backend.next_event, exc)
        return events, exc.sqlstate
    return events, None


def one_input(data: bytes) -> None:
    """One fuzz case (see the module docstring)."""
    source = Input(data)
    control = source.byte()
    seed = source.byte()
    payload = source.rest()
    phase = (control & 0x0F) % len(PHASES)
    decode: set[bytes] | None = set() if control & 0x10 else None
    whole = run(phase, decode, [payload] if payload else [])
    if seed and not (whole[0] and isinstance(whole[0][0], pw.DirectTLSHandshake)):
        pieces = run(phase, decode, chunked(payload, seed))
        if pieces != whole and not (negotiated(whole) or negotiated(pieces)):
            raise Finding(f"chunked delivery differs from whole: {pieces!r} != {whole!r}")


if __name__ == "__main__":
    fuzz(one_input)

"""Fuzz the SCRAM server (pgwire.auth.ScramServer) with a client's messages.

Input: a control byte, the mechanism (a piece), the client-first message (a
piece), then the client-final message. Control bits: 0 — we have channel
binding data (TLS), 1 — do not offer PLUS even so, 2-3 — the mechanism:
SCRAM-SHA-256, SCRAM-SHA-256-PLUS, the piece's text, or empty. The server
holds a fixed secret for :data:`PASSWORD` and uses a fixed nonce, so a
genuine client (``fuzz/seeds.py``) reaches a successful exchange.

Allowed: ``pgwire.RemoteProtocolError`` (ScramError, AuthenticationFailed).
Checked besides: a successful exchange recovers the password's keys, and
with PLUS the client's channel-binding data is ours.
"""

from __future__ import annotations

import base64

import pgwire as pw
from pgwire.auth import ChannelBinding, ScramKeys, ScramSecret, ScramServer

from ._common import Finding, Input, fuzz

__all__ = ["CHANNEL_BINDING", "PASSWORD", "SECRET", "SERVER_NONCE", "exchange", "one_input"]

PASSWORD = "pencil"
#: Few iterations: the harness checks logic, not PBKDF2's cost.
SECRET = ScramSecret.from_password(PASSWORD, salt=b"fuzz-salt-16byte", iterations=16)
KEYS = ScramKeys.from_password(PASSWORD, b"fuzz-salt-16byte", 16)
SERVER_NONCE = "fuzzServerNonce"
CHANNEL_BINDING = ChannelBinding(data=b"\x5a" * 32)
_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS")


def exchange(data: bytes) -> bool:
    """One fuzz case (see the module docstring); whether it authenticated."""
    source = Input(data)
    control = source.byte()
    mechanism_piece = source.piece()
    client_first = source.piece()
    client_final = source.rest()
    binding = CHANNEL_BINDING if control & 1 else None
    offered_plus = False if control & 2 else None
    choice = (control >> 2) & 3
    if choice < 2:
        mechanism = _MECHANISMS[choice]
    elif choice == 2:
        mechanism = mechanism_piece.decode("utf-8", "replace")
    else:
        mechanism = ""
    server = ScramServer(SECRET, channel_binding=binding, offered_plus=offered_plus,
                         user="alice", nonce=SERVER_NONCE)
    try:
        server.receive_client_first(mechanism, client_first)
        server_final = server.receive_client_final(client_final)
    except pw.RemoteProtocolError:
        if server.authenticated or server.keys is not None:
            raise Finding("the exchange failed but the server says authenticated") from None
        return False
    if not server.authenticated or server.keys != KEYS:
        raise Finding(f"a successful exchange without the password's keys: {server.keys!r}")
    if not server_final.startswith(b"v="):
        raise Finding(f"server-final is {server_final!r}")
    if server.mechanism == "SCRAM-SHA-256-PLUS":
        if binding is None or not server.channel_bound:
            raise Finding("PLUS succeeded without channel binding data")
        cbind = client_final.split(b",", 1)[0][2:]
        if not base64.b64decode(cbind).endswith(binding.data):
            raise Finding(f"PLUS succeeded with foreign channel-binding data {cbind!r}")
    return True


def one_input(data: bytes) -> None:
    """One fuzz case (see the module docstring)."""
    exchange(data)


if __name__ == "__main__":
    fuzz(one_input)

"""Fuzz the SCRAM client (pgwire.auth.ScramClient) with a server's messages.

Input: a control byte, the offered mechanisms (a piece, comma-separated, used
when bits 3-4 say so), the server-first message (a piece), then the
server-final message. Control bits: 0 — we have channel binding data,
1 — require channel binding, 2 — log in with ScramKeys instead of the
password, 3-4 — mechanisms: the default, SCRAM-SHA-256 only, both, or the
piece. The client's nonce is fixed and the iteration cap low (64), so a
genuine server (``fuzz/seeds.py``) completes the exchange cheaply.

Allowed: ``pgwire.RemoteProtocolError`` (ScramError, AuthenticationFailed);
ScramError from the constructor when no offered mechanism fits. Checked
besides: a returning ``receive_server_final`` means authenticated, and
channel-bound exactly when PLUS was used.
"""

from __future__ import annotations

from collections.abc import Collection

import pgwire as pw
from pgwire.auth import ScramClient, ScramError

from ._common import Finding, Input, fuzz
from .scram_server import CHANNEL_BINDING, KEYS, PASSWORD

__all__ = ["CLIENT_NONCE", "MAX_ITERATIONS", "exchange", "one_input"]

CLIENT_NONCE = "fuzzClientNonce"
MAX_ITERATIONS = 64


def exchange(data: bytes) -> bool:
    """One fuzz case (see the module docstring); whether it authenticated."""
    source = Input(data)
    control = source.byte()
    offered = source.piece()
    server_first = source.piece()
    server_final = source.rest()
    binding = CHANNEL_BINDING if control & 1 else None
    require = bool(control & 2) and binding is not None
    password = KEYS if control & 4 else PASSWORD
    choice = (control >> 3) & 3
    mechanisms: Collection[str] | None = (
        None, ("SCRAM-SHA-256",), ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"),
        tuple(offered.decode("utf-8", "replace").split(",")),
    )[choice]
    try:
        client = ScramClient(password, channel_binding=binding, mechanisms=mechanisms,
                             require_channel_binding=require, max_iterations=MAX_ITERATIONS,
                             nonce=CLIENT_NONCE)
    except ScramError:
        return False
    client.client_first()
    try:
        client.receive_server_first(server_first)
        client.receive_server_final(server_final)
    except pw.RemoteProtocolError:
        if client.authenticated or client.state != "failed":
            raise Finding(f"after an error the client is {client.state!r}") from None
        return False
    if not client.authenticated:
        raise Finding(f"receive_server_final returned but the client is {client.state!r}")
    if client.channel_bound != (client.mechanism == "SCRAM-SHA-256-PLUS"):
        raise Finding("channel_bound does not match the mechanism used")
    return True


def one_input(data: bytes) -> None:
    """One fuzz case (see the module docstring)."""
    exchange(data)


if __name__ == "__main__":
    fuzz(one_input)

"""Any bytes fed to the login layer are accepted or refused with our protocol error.

The same property the core's fuzz tests check for Frontend and Backend, for
the objects users drive directly: ClientConnection and ServerConnection, in
every sslmode/method combination that reaches different code.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgwire as pw
from pgwire.auth import md5_secret, scram_sha_256_secret
from pgwire.client import ClientConnection
from pgwire.server import AuthMethod, ServerConnection
from pgwire.testing.strategies import backend_messages, split

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECRETS: dict[AuthMethod, str | None] = {
    "trust": None,
    "password": "pw",
    "md5": md5_secret("pw", "alice"),
    "scram-sha-256": scram_sha_256_secret("pw", iterations=16),
    "cert": None,
}

# Arbitrary bytes, and plausible streams: real server messages, concatenated.
plausible_server_bytes = st.lists(backend_messages(), max_size=6).map(
    lambda messages: b"".join(message.encode() for message in messages)
)
garbage = st.one_of(st.binary(max_size=300), plausible_server_bytes)
cuts = st.lists(st.integers(1, 64), max_size=8)


def drive_client(conn: ClientConnection, data: bytes, sizes: list[int]) -> None:
    conn.start()
    conn.data_to_send()
    try:
        for piece in [*split(data, sizes), b""]:
            conn.receive_data(piece)
            while (event := conn.next_event()) is not pw.NEED_DATA:
                conn.data_to_send()
                if isinstance(event, pw.ConnectionClosed):
                    return
    except pw.ProtocolError:
        with pytest.raises(pw.ProtocolError):  # the error latches
            conn.next_event()


@FUZZ
@given(data=garbage, sizes=cuts, sslmode=st.sampled_from(["disable", "prefer"]),
       channel_binding=st.sampled_from(["disable", "prefer"]))
def test_client_survives_any_server_bytes(
    data: bytes, sizes: list[int], sslmode: str, channel_binding: str
) -> None:
    conn = ClientConnection(
        user="alice", database="db", password="pw", sslmode=sslmode,  # type: ignore[arg-type]
        channel_binding=channel_binding,  # type: ignore[arg-type]
        allow_plaintext_password=True, max_scram_iterations=64,
    )
    drive_client(conn, data, sizes)


client_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda tail: pw.StartupMessage.from_dict({"user": "alice"}).encode() + tail,
        st.binary(max_size=200),
    ),
)


@FUZZ
@given(data=client_bytes, sizes=cuts, method=st.sampled_from(list(SECRETS)))
def test_server_survives_any_client_bytes(
    data: bytes, sizes: list[int], method: AuthMethod
) -> None:
    conn = ServerConnection()
    try:
        for piece in [*split(data, sizes), b""]:
            conn.receive_data(piece)
            while (event := conn.next_event()) is not pw.NEED_DATA:
                if isinstance(event, pw.StartupMessage):
                    conn.authenticate(method, SECRETS[method])
                conn.data_to_send()
                if isinstance(event, pw.ConnectionClosed):
                    return
    except pw.ProtocolError:
        with pytest.raises(pw.ProtocolError):  # the error latches
            conn.next_event()

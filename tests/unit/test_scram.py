"""SCRAM-SHA-256(-PLUS), SASLprep and tls-server-end-point channel binding, without I/O.

The real-server side of the same story is tests/integration/test_auth_primitives_live.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgwire as pw
import pgwire.auth
from pgwire.auth import (
    DEFAULT_MAX_ITERATIONS,
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    AuthenticationFailed,
    ChannelBinding,
    SaslprepError,
    ScramClient,
    ScramError,
    ScramKeys,
    ScramSecret,
    ScramServer,
    UnsupportedCertificate,
    mock_scram_secret,
    prepare_password,
    saslprep,
    tls_server_end_point,
)
from pgwire.auth.channel_binding import signature_hash_name

Mutator = Callable[[int, bytes], bytes]

# A small iteration count keeps the property tests fast; the count does not
# change any code path.
FAST = 3
SALT = b"0123456789abcdef"
CBIND = ChannelBinding(data=hashlib.sha256(b"our certificate").digest())
OTHER_CBIND = ChannelBinding(data=hashlib.sha256(b"a man in the middle").digest())


def fast_secret(password: str | bytes, salt: bytes = SALT) -> ScramSecret:
    return ScramSecret.from_password(password, salt=salt, iterations=FAST)


def run_exchange(
    client: ScramClient, server: ScramServer, mutate: Mutator | None = None
) -> list[bytes]:
    """Pass the four SCRAM messages between the two sides; ``mutate(index, message)``
    may alter message ``index`` (0 client-first ... 3 server-final) in flight."""
    def deliver(index: int, message: bytes) -> bytes:
        return mutate(index, message) if mutate is not None else message

    sent: list[bytes] = [client.client_first()]
    sent.append(server.receive_client_first(client.mechanism, deliver(0, sent[0])))
    sent.append(client.receive_server_first(deliver(1, sent[1])))
    sent.append(server.receive_client_final(deliver(2, sent[2])))
    client.receive_server_final(deliver(3, sent[3]))
    return sent


def expect_error(
    error: type[pw.ProtocolError], sqlstate: str, match: str, action: Callable[[], object]
) -> pw.ProtocolError:
    with pytest.raises(error, match=match) as info:
        action()
    assert type(info.value) is error
    assert info.value.sqlstate == sqlstate
    return info.value


# ---------------------------------------------------------------------------
# Test vector and happy paths


def test_rfc7677_test_vector() -> None:
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    client = ScramClient("pencil", nonce="rOprNGfwEbeRWgbNEkqO", username="user")
    server = ScramServer(
        ScramSecret.from_password("pencil", salt=salt, iterations=4096),
        nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    )
    messages = run_exchange(client, server)
    assert messages == [
        b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
    ]
    assert client.authenticated and server.authenticated
    assert not client.channel_bound and not server.channel_bound


def test_default_messages_look_like_libpq() -> None:
    client = ScramClient("secret")
    first = client.client_first()
    assert client.mechanism == SCRAM_SHA_256
    assert first.startswith(b"n,,n=,r=")
    nonce = first[len(b"n,,n=,r="):]
    assert len(nonce) == 24 and len(base64.b64decode(nonce)) == 18
    assert ScramClient("secret").client_first() != first  # fresh nonce each time
    server = ScramServer(fast_secret("secret"))
    server_first = server.receive_client_first(SCRAM_SHA_256, first)
    assert server_first.startswith(b"r=" + nonce)
    assert server_first.endswith(b",s=" + base64.b64encode(SALT) + b",i=3")


def test_plus_binds_the_channel() -> None:
    client = ScramClient("secret", channel_binding=CBIND, mechanisms=(SCRAM_SHA_256_PLUS,
                                                                       SCRAM_SHA_256))
    server = ScramServer(fast_secret("secret"), channel_binding=CBIND)
    assert server.mechanisms == (SCRAM_SHA_256_PLUS, SCRAM_SHA_256)
    messages = run_exchange(client, server)
    assert messages[0].startswith(b"p=tls-server-end-point,,n=,r=")
    expected_c = base64.b64encode(b"p=tls-server-end-point,," + CBIND.data)
    assert messages[2].startswith(b"c=" + expected_c + b",r=")
    assert client.channel_bound and server.channel_bound


def test_client_with_channel_binding_says_y_when_plus_is_not_offered() -> None:
    client = ScramClient("secret", channel_binding=CBIND, mechanisms=(SCRAM_SHA_256,))
    server = ScramServer(fast_secret("secret"))
    messages = run_exchange(client, server)
    assert messages[0].startswith(b"y,,")
    assert messages[2].startswith(b"c=eSws,")
    assert client.authenticated and not client.channel_bound


def test_server_may_hold_tls_data_without_offering_plus() -> None:
    server = ScramServer(fast_secret("secret"), channel_binding=CBIND, offered_plus=False)
    assert server.mechanisms == (SCRAM_SHA_256,)
    client = ScramClient("secret", channel_binding=CBIND, mechanisms=server.mechanisms)
    run_exchange(client, server)
    assert server.authenticated


@pytest.mark.parametrize(
    ("secret_argument", "password"),
    [
        ("a password", "a password"),
        (b"bytes \xff password", b"bytes \xff password"),
        (str(ScramSecret.from_password("stored", iterations=FAST)), "stored"),
        (ScramSecret.from_password("object", iterations=FAST), "object"),
    ],
    ids=["cleartext", "non-utf8-bytes", "stored-text", "secret-object"],
)
def test_server_accepts_secret_in_each_form(
    secret_argument: ScramSecret | str | bytes, password: str | bytes
) -> None:
    client = ScramClient(password)
    server = ScramServer(secret_argument)
    run_exchange(client, server)
    assert server.authenticated


def test_server_refuses_md5_malformed_and_empty_secrets() -> None:
    with pytest.raises(ValueError, match="MD5 secret cannot be used for SCRAM"):
        ScramServer("md5" + "0" * 32)
    with pytest.raises(ValueError, match="iteration count"):
        ScramServer("SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=")
    with pytest.raises(ValueError, match="needs the channel binding data"):
        ScramServer("pw", offered_plus=True)
    for empty in ("", b""):
        with pytest.raises(ValueError, match="empty password never authenticates"):
            ScramServer(empty)


def test_keys_from_a_server_log_in_to_another_server_with_the_same_secret() -> None:
    secret = fast_secret("client password")
    front = ScramServer(secret)
    assert front.keys is None
    run_exchange(ScramClient("client password"), front)
    keys = front.keys
    assert keys is not None
    assert keys.stored_key == secret.stored_key
    upstream = ScramServer(secret)
    run_exchange(ScramClient(keys), upstream)
    assert upstream.authenticated
    # A server holding a secret with another salt cannot be satisfied by these keys.
    other = ScramServer(fast_secret("client password", salt=b"another salt...."))
    expect_error(AuthenticationFailed, "28P01", "password authentication failed",
                 lambda: run_exchange(ScramClient(keys), other))


def test_mock_secret_fails_like_a_wrong_password_with_a_stable_salt() -> None:
    key = b"k" * 32
    first, second = mock_scram_secret("ghost", key), mock_scram_secret("ghost", key)
    assert first.salt == second.salt != mock_scram_secret("other", key).salt
    assert first.iterations == 4096
    server = ScramServer(first, user="ghost")
    client = ScramClient("any password at all")
    expect_error(AuthenticationFailed, "28P01", 'password authentication failed for user "ghost"',
                 lambda: run_exchange(client, server))


# ---------------------------------------------------------------------------
# Properties


# PostgreSQL passwords are C strings: no NUL. (HMAC zero-pads short keys, so
# "" and "\0" would derive the same keys — a property of HMAC, not a bug.)
passwords = st.one_of(
    st.text(max_size=24).filter(lambda text: "\0" not in text),
    st.binary(max_size=24).filter(lambda data: b"\0" not in data),
)


@settings(max_examples=60, deadline=None)
@given(
    password=passwords,
    salt=st.binary(min_size=1, max_size=32),
    iterations=st.integers(min_value=1, max_value=40),
    plus=st.booleans(),
)
def test_client_and_server_always_agree(
    password: str | bytes, salt: bytes, iterations: int, plus: bool
) -> None:
    secret = ScramSecret.from_password(password, salt=salt, iterations=iterations)
    binding = CBIND if plus else None
    client = ScramClient(password, channel_binding=binding)
    server = ScramServer(secret, channel_binding=binding)
    run_exchange(client, server)
    assert client.authenticated and server.authenticated
    assert client.channel_bound is plus
    assert secret.verify_password(password)


@settings(max_examples=60, deadline=None)
@given(right=passwords, wrong=passwords)
def test_a_different_password_always_fails_with_28p01(
    right: str | bytes, wrong: str | bytes
) -> None:
    if prepare_password(right) == prepare_password(wrong):
        return  # e.g. "a" and "a\u00ad": SASLprep makes them the same password
    server = ScramServer(fast_secret(right))
    client = ScramClient(wrong)
    expect_error(AuthenticationFailed, "28P01", "password authentication failed",
                 lambda: run_exchange(client, server))
    assert not server.authenticated and server.keys is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), plus=st.booleans(), index=st.integers(min_value=0, max_value=3))
def test_any_single_byte_change_fails_cleanly(data: st.DataObject, plus: bool, index: int) -> None:
    binding = CBIND if plus else None
    client = ScramClient("pässword", channel_binding=binding)
    server = ScramServer(fast_secret("pässword"), channel_binding=binding)

    def mutate(at: int, message: bytes) -> bytes:
        if at != index:
            return message
        position = data.draw(st.integers(min_value=0, max_value=len(message) - 1))
        byte = data.draw(st.integers(0, 255).filter(lambda b: b != message[position]))
        return message[:position] + bytes([byte]) + message[position + 1:]

    with pytest.raises((ScramError, AuthenticationFailed)):
        run_exchange(client, server, mutate)
    assert not (client.authenticated and server.authenticated)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), plus=st.booleans(), index=st.integers(min_value=0, max_value=3))
def test_any_truncation_fails_cleanly(data: st.DataObject, plus: bool, index: int) -> None:
    binding = CBIND if plus else None
    client = ScramClient("secret", channel_binding=binding)
    server = ScramServer(fast_secret("secret"), channel_binding=binding)

    def truncate(at: int, message: bytes) -> bytes:
        if at != index:
            return message
        return message[:data.draw(st.integers(min_value=0, max_value=len(message) - 1))]

    with pytest.raises((ScramError, AuthenticationFailed)):
        run_exchange(client, server, truncate)


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=80), plus=st.booleans(),
       mechanism=st.sampled_from([SCRAM_SHA_256, SCRAM_SHA_256_PLUS, "SCRAM-SHA-1", ""]))
def test_arbitrary_client_bytes_are_refused_with_our_errors(
    garbage: bytes, plus: bool, mechanism: str
) -> None:
    server = ScramServer(fast_secret("secret"), channel_binding=CBIND if plus else None)
    try:
        server_first = server.receive_client_first(mechanism, garbage)
    except ScramError:
        return
    with pytest.raises((ScramError, AuthenticationFailed)):
        server.receive_client_final(garbage + b"," + server_first)


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=80))
def test_arbitrary_server_bytes_are_refused_with_our_errors(garbage: bytes) -> None:
    client = ScramClient("secret")
    client.client_first()
    with pytest.raises(ScramError):
        client.receive_server_first(garbage)


# ---------------------------------------------------------------------------
# Malformed and hostile messages, one row each


CLIENT_NONCE = "clientnonce"
SERVER_NONCE = "servernonce"
NONCE = (CLIENT_NONCE + SERVER_NONCE).encode()
GOOD_FIRST = b"n,,n=,r=" + CLIENT_NONCE.encode()
PLUS_FIRST = b"p=tls-server-end-point,,n=,r=" + CLIENT_NONCE.encode()


@pytest.mark.parametrize(
    ("plus_offered", "mechanism", "message", "error", "sqlstate", "match"),
    [
        (False, SCRAM_SHA_256, b"", ScramError, "08P01", "empty"),
        (False, SCRAM_SHA_256, b"n,,n=,r=abc\0", ScramError, "08P01", "NUL"),
        (False, SCRAM_SHA_256, b"x,,n=,r=abc", ScramError, "08P01", "channel-binding flag"),
        (False, SCRAM_SHA_256, b"n", ScramError, "08P01", "comma expected"),
        (False, SCRAM_SHA_256, b"n,n=,r=abc", ScramError, "08P01", "unexpected attribute"),
        (False, SCRAM_SHA_256, b"n,a=alice,n=,r=abc", ScramError, "0A000",
         "authorization identity"),
        (True, SCRAM_SHA_256_PLUS, b"p=tls-server-end-point,a=alice,n=,r=abc", ScramError,
         "0A000", "authorization identity"),
        (False, SCRAM_SHA_256, b"n,,m=ext,n=,r=abc", ScramError, "0A000", "extension"),
        (False, SCRAM_SHA_256, b"n,,", ScramError, "08P01", '"n" missing'),
        (False, SCRAM_SHA_256, b"n,,r=abc", ScramError, "08P01", 'expected attribute "n"'),
        (False, SCRAM_SHA_256, b"n,,n=", ScramError, "08P01", '"r" missing'),
        (False, SCRAM_SHA_256, b"n,,n=,r=", ScramError, "08P01", "nonce is empty"),
        (False, SCRAM_SHA_256, b"n,,n=,r=a\x01b", ScramError, "08P01", "non-printable"),
        (False, SCRAM_SHA_256, b"n,,n=,r=abc,", ScramError, "08P01", "found nothing"),
        (False, SCRAM_SHA_256, b"n,,n=,r=abc,1=x", ScramError, "08P01", "letter=value"),
        (True, SCRAM_SHA_256, b"y,,n=,r=abc", ScramError, "28000",
         "channel binding negotiation error"),
        (False, SCRAM_SHA_256, PLUS_FIRST, ScramError, "08P01", "includes channel binding"),
        (True, SCRAM_SHA_256_PLUS, GOOD_FIRST, ScramError, "08P01",
         "does not include channel binding"),
        (True, SCRAM_SHA_256_PLUS, b"y,,n=,r=abc", ScramError, "08P01",
         "does not include channel binding"),
        (True, SCRAM_SHA_256_PLUS, b"p=tls-unique,,n=,r=abc", ScramError, "08P01",
         "unsupported SCRAM channel-binding type"),
        (True, SCRAM_SHA_256_PLUS, b"p,,n=,r=abc", ScramError, "08P01", 'character "="'),
        (False, SCRAM_SHA_256_PLUS, PLUS_FIRST, ScramError, "08P01", "invalid SASL"),
        (False, "SCRAM-SHA-1", GOOD_FIRST, ScramError, "08P01", "invalid SASL"),
    ],
)
def test_server_refuses_bad_client_first(
    *,
    plus_offered: bool, mechanism: str, message: bytes, error: type[pw.ProtocolError],
    sqlstate: str, match: str,
) -> None:
    server = ScramServer(fast_secret("secret"), channel_binding=CBIND if plus_offered else None)
    expect_error(error, sqlstate, match, lambda: server.receive_client_first(mechanism, message))
    with pytest.raises(pw.LocalProtocolError, match="already failed"):
        server.receive_client_final(b"c=biws,r=x,p=x")


def _proof_for(password: str, client_first: bytes, server_first: bytes,
               without_proof: bytes) -> bytes:
    keys = ScramKeys.from_password(password, SALT, FAST)
    auth = client_first.split(b",", 2)[2] + b"," + server_first + b"," + without_proof
    client_signature = hmac.digest(keys.stored_key, auth, "sha256")
    return base64.b64encode(bytes(a ^ b for a, b in zip(keys.client_key, client_signature,
                                                        strict=True)))


def good_final(server_first: bytes, cbind: bytes = b"biws", nonce: bytes = NONCE,
               client_first: bytes = GOOD_FIRST, password: str = "secret") -> bytes:
    without_proof = b"c=" + cbind + b",r=" + nonce
    return without_proof + b",p=" + _proof_for(password, client_first, server_first,
                                                without_proof)


PLUS_CBIND = base64.b64encode(b"p=tls-server-end-point,," + CBIND.data)
MITM_CBIND = base64.b64encode(b"p=tls-server-end-point,," + OTHER_CBIND.data)
ZERO_PROOF = base64.b64encode(bytes(32))


@pytest.mark.parametrize(
    ("first", "final", "error", "sqlstate", "match"),
    [
        (GOOD_FIRST, lambda sf: b"", ScramError, "08P01", "empty"),
        (GOOD_FIRST, lambda sf: b"c=biws,r=" + NONCE, ScramError, "08P01",
         'end with the proof attribute "p"'),
        (GOOD_FIRST, lambda sf: b"r=" + NONCE + b",c=biws,p=" + ZERO_PROOF, ScramError,
         "08P01", 'expected attribute "c"'),
        (GOOD_FIRST, lambda sf: good_final(sf, cbind=b"eSws"), ScramError, "08P01",
         "unexpected SCRAM channel-binding attribute"),
        (b"y,,n=,r=" + CLIENT_NONCE.encode(), good_final, ScramError, "08P01",
         "unexpected SCRAM channel-binding attribute"),
        (GOOD_FIRST, lambda sf: good_final(sf, nonce=CLIENT_NONCE.encode() + b"tampered!!!"),
         ScramError, "08P01", "nonce does not match"),
        (GOOD_FIRST, lambda sf: good_final(sf, nonce=CLIENT_NONCE.encode()), ScramError,
         "08P01", "nonce does not match"),
        (GOOD_FIRST, lambda sf: b"c=biws,r=" + NONCE + b",p=!!notbase64!!", ScramError,
         "08P01", "malformed proof"),
        (GOOD_FIRST, lambda sf: b"c=biws,r=" + NONCE + b",p=" + base64.b64encode(bytes(31)),
         ScramError, "08P01", "malformed proof"),
        (GOOD_FIRST, lambda sf: good_final(sf) + b",x=trailing", ScramError, "08P01",
         'end with the proof attribute "p"'),
        (GOOD_FIRST, lambda sf: b"c=biws,r=" + NONCE + b",p=x,p=" + ZERO_PROOF, ScramError,
         "08P01", "garbage found after the proof"),
        (GOOD_FIRST, lambda sf: b"c=biws,r=" + NONCE + b",p=" + ZERO_PROOF,
         AuthenticationFailed, "28P01", "password authentication failed"),
        (GOOD_FIRST, lambda sf: good_final(sf, password="wrong"), AuthenticationFailed,
         "28P01", "password authentication failed"),
        (PLUS_FIRST, lambda sf: good_final(sf, cbind=MITM_CBIND, client_first=PLUS_FIRST),
         ScramError, "28000", "channel binding check failed"),
        (PLUS_FIRST, lambda sf: good_final(sf, cbind=b"biws", client_first=PLUS_FIRST),
         ScramError, "28000", "channel binding check failed"),
    ],
    ids=[
        "empty", "no-proof", "attributes-out-of-order", "c-says-y-after-n", "c-says-n-after-y",
        "tampered-nonce", "nonce-without-server-part", "proof-not-base64", "proof-31-bytes",
        "attribute-after-proof", "two-proofs", "zero-proof", "wrong-password",
        "cbind-mismatch", "cbind-dropped",
    ],
)
def test_server_refuses_bad_client_final(
    first: bytes, final: Callable[[bytes], bytes], error: type[pw.ProtocolError],
    sqlstate: str, match: str,
) -> None:
    plus = first.startswith(b"p=")
    server = ScramServer(fast_secret("secret"), channel_binding=CBIND if plus else None,
                         nonce=SERVER_NONCE)
    mechanism = SCRAM_SHA_256_PLUS if plus else SCRAM_SHA_256
    server_first = server.receive_client_first(mechanism, first)
    expect_error(error, sqlstate, match, lambda: server.receive_client_final(final(server_first)))
    assert not server.authenticated and server.keys is None


def test_good_final_helper_really_passes() -> None:
    # Guards the table above: its "good" messages differ from a passing one only
    # where each row says.
    for first, cbind in ((GOOD_FIRST, b"biws"), (PLUS_FIRST, PLUS_CBIND)):
        plus = first is PLUS_FIRST
        server = ScramServer(fast_secret("secret"), channel_binding=CBIND if plus else None,
                             nonce=SERVER_NONCE)
        server_first = server.receive_client_first(
            SCRAM_SHA_256_PLUS if plus else SCRAM_SHA_256, first)
        server.receive_client_final(good_final(server_first, cbind=cbind, client_first=first))
        assert server.authenticated


SALT_B64 = base64.b64encode(SALT)


@pytest.mark.parametrize(
    ("server_first", "error", "sqlstate", "match"),
    [
        (b"", ScramError, "08P01", "empty"),
        (b"r=" + NONCE + b"\0,s=" + SALT_B64 + b",i=3", ScramError, "08P01", "NUL"),
        (b"m=ext,r=" + NONCE + b",s=" + SALT_B64 + b",i=3", ScramError, "0A000", "extension"),
        (b"r=someoneelse" + b",s=" + SALT_B64 + b",i=3", ScramError, "08P01",
         "nonce mismatch"),
        (b"r=" + CLIENT_NONCE.encode() + b",s=" + SALT_B64 + b",i=3", ScramError, "08P01",
         "nonce mismatch"),
        (b"r=" + NONCE + b"\x7f,s=" + SALT_B64 + b",i=3", ScramError, "08P01",
         "non-printable"),
        (b"s=" + SALT_B64 + b",r=" + NONCE + b",i=3", ScramError, "08P01",
         'expected attribute "r"'),
        (b"r=" + NONCE + b",s=" + SALT_B64, ScramError, "08P01", '"i" missing'),
        (b"r=" + NONCE + b",s=,i=3", ScramError, "08P01", "salt"),
        (b"r=" + NONCE + b",s=%%%%,i=3", ScramError, "08P01", "salt"),
        (b"r=" + NONCE + b",s=c2FsdA,i=3", ScramError, "08P01", "salt"),  # no padding
        (b"r=" + NONCE + b",s=c2FsdB==,i=3", ScramError, "08P01", "salt"),  # non-canonical
        (b"r=" + NONCE + b",s=" + SALT_B64 + b",i=0", ScramError, "08P01",
         "invalid iteration count"),
        (b"r=" + NONCE + b",s=" + SALT_B64 + b",i=-1", ScramError, "08P01",
         "invalid iteration count"),
        (b"r=" + NONCE + b",s=" + SALT_B64 + b",i=04096", ScramError, "08P01",
         "invalid iteration count"),
        (b"r=" + NONCE + b",s=" + SALT_B64 + b",i= 4096", ScramError, "08P01",
         "invalid iteration count"),
        (b"r=" + NONCE + b",s=" + SALT_B64 + b",i=", ScramError, "08P01",
         "invalid iteration count"),
        (b"r=" + NONCE + b",s=" + SALT_B64 + b",i=100000000000", ScramError, "54000",
         "more than the limit of 1000000"),
        (b"r=" + NONCE + b",s=" + SALT_B64 + b",i=" + b"9" * 100_000, ScramError, "54000",
         "more than the limit"),
        (b"r=" + NONCE + b",s=" + SALT_B64 + b",i=3,", ScramError, "08P01", "found nothing"),
    ],
    ids=[
        "empty", "nul", "mandatory-extension", "foreign-nonce", "no-server-nonce",
        "non-printable-nonce", "out-of-order", "no-iterations", "empty-salt", "salt-not-base64",
        "salt-unpadded", "salt-non-canonical", "iterations-0", "iterations-negative",
        "iterations-leading-zero", "iterations-space", "iterations-empty", "iterations-1e11",
        "iterations-100k-digits", "trailing-comma",
    ],
)
def test_client_refuses_bad_server_first(
    server_first: bytes, error: type[pw.ProtocolError], sqlstate: str, match: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_hashing(*args: object) -> bytes:
        raise AssertionError("the client started hashing before refusing the message")

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", no_hashing)
    client = ScramClient("secret", nonce=CLIENT_NONCE)
    client.client_first()
    expect_error(error, sqlstate, match, lambda: client.receive_server_first(server_first))
    with pytest.raises(pw.LocalProtocolError, match="already failed"):
        client.receive_server_final(b"v=x")


def test_client_refuses_server_first_extensions_and_honours_its_own_cap() -> None:
    # As libpq: "garbage at end of server-first-message" (PostgreSQL sends none).
    client = ScramClient("secret", nonce=CLIENT_NONCE, max_iterations=FAST)
    client.client_first()
    expect_error(ScramError, "08P01", "garbage at end", lambda: client.receive_server_first(
        b"r=" + NONCE + b",s=" + SALT_B64 + b",i=3,x=future"))
    capped = ScramClient("secret", nonce=CLIENT_NONCE, max_iterations=FAST)
    capped.client_first()
    expect_error(ScramError, "54000", "limit of 3", lambda: capped.receive_server_first(
        b"r=" + NONCE + b",s=" + SALT_B64 + b",i=4"))
    assert DEFAULT_MAX_ITERATIONS >= 4096
    with pytest.raises(ValueError, match="max_iterations"):
        ScramClient("secret", max_iterations=0)


def _client_after_first() -> tuple[ScramClient, ScramServer]:
    client = ScramClient("secret")
    server = ScramServer(fast_secret("secret"))
    server_first = server.receive_client_first(client.mechanism, client.client_first())
    server.receive_client_final(client.receive_server_first(server_first))
    return client, server


@pytest.mark.parametrize(
    ("server_final", "error", "sqlstate", "match"),
    [
        (b"", ScramError, "08P01", "empty"),
        (b"e=invalid-proof", AuthenticationFailed, "28P01", '"invalid-proof"'),
        (b"e=other-error", AuthenticationFailed, "28000", '"other-error"'),
        (b"v=" + base64.b64encode(bytes(32)), AuthenticationFailed, "28000",
         "incorrect server signature"),
        (b"v=abc", ScramError, "08P01", "server signature is not 32 bytes"),
        (b"v=" + base64.b64encode(bytes(33)), ScramError, "08P01", "not 32 bytes"),
        (b"x=" + base64.b64encode(bytes(32)), ScramError, "08P01", 'expected attribute "v"'),
        (b"v", ScramError, "08P01", "letter=value"),
    ],
)
def test_client_refuses_bad_server_final(
    server_final: bytes, error: type[pw.ProtocolError], sqlstate: str, match: str
) -> None:
    client, _ = _client_after_first()
    expect_error(error, sqlstate, match, lambda: client.receive_server_final(server_final))
    assert not client.authenticated


# ---------------------------------------------------------------------------
# Mechanism choice, state, errors


@pytest.mark.parametrize(
    ("binding", "offered", "require", "mechanism", "header"),
    [
        (None, (SCRAM_SHA_256,), False, SCRAM_SHA_256, b"n,,"),
        (None, (SCRAM_SHA_256_PLUS, SCRAM_SHA_256), False, SCRAM_SHA_256, b"n,,"),
        (CBIND, (SCRAM_SHA_256,), False, SCRAM_SHA_256, b"y,,"),
        (CBIND, (SCRAM_SHA_256_PLUS, SCRAM_SHA_256), False, SCRAM_SHA_256_PLUS,
         b"p=tls-server-end-point,,"),
        (CBIND, (SCRAM_SHA_256_PLUS, SCRAM_SHA_256), True, SCRAM_SHA_256_PLUS,
         b"p=tls-server-end-point,,"),
        (CBIND, ("FOO", SCRAM_SHA_256_PLUS), False, SCRAM_SHA_256_PLUS,
         b"p=tls-server-end-point,,"),
    ],
)
def test_client_chooses_the_mechanism_like_libpq(
    binding: ChannelBinding | None, offered: tuple[str, ...], require: bool, mechanism: str,
    header: bytes,
) -> None:
    client = ScramClient("pw", channel_binding=binding, mechanisms=offered,
                         require_channel_binding=require)
    assert client.mechanism == mechanism
    assert client.client_first().startswith(header + b"n=,r=")


def test_client_refuses_to_go_on_without_a_usable_mechanism() -> None:
    expect_error(ScramError, "28000", "did not offer SCRAM-SHA-256-PLUS", lambda: ScramClient(
        "pw", channel_binding=CBIND, mechanisms=(SCRAM_SHA_256,), require_channel_binding=True))
    expect_error(ScramError, "0A000", "no SASL mechanism we support",
                 lambda: ScramClient("pw", mechanisms=("SCRAM-SHA-1", "OAUTHBEARER")))
    expect_error(ScramError, "0A000", "no SASL mechanism we support",
                 lambda: ScramClient("pw", mechanisms=(SCRAM_SHA_256_PLUS,)))
    expect_error(pw.LocalProtocolError, "28000", "no channel binding data",
                 lambda: ScramClient("pw", require_channel_binding=True))
    with pytest.raises(ValueError, match="nonce"):
        ScramClient("pw", nonce="has,comma")


def test_out_of_order_calls_are_local_errors() -> None:
    client = ScramClient("pw")
    with pytest.raises(pw.LocalProtocolError, match="state 'initial'"):
        client.receive_server_first(b"r=x,s=eA==,i=1")
    with pytest.raises(pw.LocalProtocolError):
        client.receive_server_final(b"v=x")
    client.client_first()
    with pytest.raises(pw.LocalProtocolError, match="state 'first-sent'"):
        client.client_first()
    server = ScramServer("pw")
    with pytest.raises(pw.LocalProtocolError, match="state 'initial'"):
        server.receive_client_final(b"c=biws")
    client, server = _client_after_first()
    with pytest.raises(pw.LocalProtocolError, match="state 'done'"):
        server.receive_client_first(SCRAM_SHA_256, GOOD_FIRST)


def test_errors_are_remote_protocol_errors_with_error_responses() -> None:
    assert issubclass(ScramError, pw.RemoteProtocolError)
    assert issubclass(AuthenticationFailed, pw.RemoteProtocolError)
    server = ScramServer(fast_secret("right"), user="alice")
    with pytest.raises(AuthenticationFailed) as info:
        run_exchange(ScramClient("wrong"), server)
    response = pw.error_response(info.value)
    assert (response.severity, response.code) == ("FATAL", "28P01")
    assert response.message == 'password authentication failed for user "alice"'


def test_peer_bytes_in_error_messages_are_sanitised() -> None:
    server = ScramServer("pw")
    error = expect_error(ScramError, "08P01", "channel-binding flag", lambda: (
        server.receive_client_first(SCRAM_SHA_256, "\u202eevil".encode() * 20)))
    assert error.message.isascii()
    client, _ = _client_after_first()
    error = expect_error(AuthenticationFailed, "28000", "error received",
                         lambda: client.receive_server_final(b"e=" + b"\x1b[31m" * 50))
    assert error.message.isascii() and "\x1b" not in error.message
    assert len(error.message) < 120


def test_secret_material_stays_out_of_repr() -> None:
    keys = ScramKeys.from_password("pw", SALT, FAST)
    secret = fast_secret("pw")
    assert "client_key" not in repr(keys) and base64.b64encode(keys.client_key).decode() \
        not in repr(keys)
    assert repr(secret) == f"ScramSecret(iterations={FAST}, salt={SALT!r})"


# ---------------------------------------------------------------------------
# SASLprep, as PostgreSQL's pg_saslprep does it


@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        ("password", "password"),
        ("", ""),
        ("\x07bell", "\x07bell"),  # ASCII skips SASLprep entirely in PostgreSQL
        ("I\u00adX", "IX"),  # RFC 4013 section 3 examples follow
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        ("a\u3000b", "a b"),  # non-ASCII space -> space
        ("\u200bx", " x"),  # in both C.1.2 and B.1: PostgreSQL maps it to a space
        ("x\u200dy\ufe0f", "xy"),  # commonly mapped to nothing
        ("\uff50\uff41\uff53\uff53", "pass"),  # fullwidth letters: NFKC
        ("\u0627\u0628", "\u0627\u0628"),  # right-to-left only: fine
        ("\u05d0 1 \u05d1", "\u05d0 1 \u05d1"),  # RandAL first and last, neutral inside
        ("e\u0301", "\u00e9"),  # composed by NFKC
    ],
)
def test_saslprep_prepares(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared
    assert prepare_password(text) == prepared.encode()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("\x07\u00e9", "C.2"),  # a control character with non-ASCII: no shortcut
        ("\u00ad", "maps to nothing"),
        ("\u0627\u0031", "start and end"),  # RFC 4013 example 7
        ("\u0627a\u0627", "mixes right-to-left and left-to-right"),
        ("\ue000\u00e9", "C.3"),
        ("\U000e0001\u00e9", "C.9"),
        ("\u0221", "A.1"),  # unassigned in Unicode 3.2, assigned later
        ("a\u0340", "C.8"),  # NFKC would turn it into U+0300: PostgreSQL checks before
        ("\ufffe\u00e9", "C.4"),
    ],
)
def test_saslprep_prohibits_and_prepare_password_falls_back_to_raw(
    text: str, match: str
) -> None:
    with pytest.raises(SaslprepError, match=match):
        saslprep(text)
    assert prepare_password(text) == text.encode()


def test_prepare_password_handles_bytes_and_broken_text() -> None:
    assert prepare_password(b"\xff\xfe not utf-8") == b"\xff\xfe not utf-8"
    assert prepare_password("I\u00adX".encode()) == b"IX"
    assert prepare_password("\ud800") == b"\xed\xa0\x80"  # a lone surrogate: raw


# ---------------------------------------------------------------------------
# tls-server-end-point


def der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + content


def oid(dotted: str) -> bytes:
    arcs = [int(part) for part in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body += bytes(reversed(chunk))
    return der(0x06, bytes(body))


def certificate(algorithm: bytes, tbs_size: int = 10) -> bytes:
    """A DER certificate shape: TBS (opaque here), signatureAlgorithm, signature."""
    tbs = der(0x30, der(0x04, bytes(tbs_size)))
    return der(0x30, tbs + der(0x30, algorithm) + der(0x03, b"\x00" + bytes(64)))


NULL = b"\x05\x00"


def pss(hash_oid: str | None) -> bytes:
    params = b"" if hash_oid is None else der(0xA0, der(0x30, oid(hash_oid) + NULL))
    return oid("1.2.840.113549.1.1.10") + der(0x30, params)


@pytest.mark.parametrize(
    ("algorithm", "hash_name"),
    [
        (oid("1.2.840.113549.1.1.4") + NULL, "sha256"),  # md5WithRSA -> SHA-256
        (oid("1.2.840.113549.1.1.5") + NULL, "sha256"),  # sha1WithRSA -> SHA-256
        (oid("1.2.840.113549.1.1.11") + NULL, "sha256"),
        (oid("1.2.840.113549.1.1.12") + NULL, "sha384"),
        (oid("1.2.840.113549.1.1.13") + NULL, "sha512"),
        (oid("1.2.840.113549.1.1.14") + NULL, "sha224"),
        (oid("1.2.840.10045.4.1"), "sha256"),  # ecdsa-with-SHA1 -> SHA-256
        (oid("1.2.840.10045.4.3.2"), "sha256"),
        (oid("1.2.840.10045.4.3.3"), "sha384"),
        (oid("1.2.840.10045.4.3.4"), "sha512"),
        (oid("2.16.840.1.101.3.4.3.10"), "sha3_256"),
        (pss("2.16.840.1.101.3.4.2.1"), "sha256"),
        (pss("2.16.840.1.101.3.4.2.3"), "sha512"),
        (pss("1.3.14.3.2.26"), "sha256"),  # PSS with SHA-1 -> SHA-256
        (pss(None), "sha256"),  # PSS defaults to SHA-1 -> SHA-256
        (oid("1.2.840.113549.1.1.10"), "sha256"),  # PSS, parameters absent
    ],
)
def test_certificate_hash_follows_the_signature_algorithm(
    algorithm: bytes, hash_name: str
) -> None:
    for tbs_size in (10, 300, 70000):  # short, two-byte and three-byte DER lengths
        cert = certificate(algorithm, tbs_size)
        assert signature_hash_name(cert) == hash_name
        assert tls_server_end_point(cert) == hashlib.new(hash_name, cert).digest()
        assert ChannelBinding.from_certificate(cert).data == hashlib.new(hash_name, cert).digest()


@pytest.mark.parametrize(
    ("cert", "match"),
    [
        (certificate(oid("1.3.101.112")), "Ed25519, which has no separate hash"),
        (certificate(oid("1.3.101.113")), "Ed448"),
        (certificate(oid("1.2.643.7.1.1.3.2")), "1.2.643.7.1.1.3.2 is not one"),
        (certificate(pss("1.2.3.4")), "hash algorithm 1.2.3.4"),
        (b"", "truncated"),
        (b"\x30\x80" + bytes(10), "indefinite"),
        (b"\x30\x05\x30\x03", "overruns"),
        (certificate(oid("1.2.840.10045.4.3.2")) + b"\x00", "bytes after the certificate"),
        (der(0x31, b"\x00\x00"), "expected a certificate SEQUENCE"),
        (der(0x30, der(0x30, b"") + der(0x30, der(0x05, b""))), "algorithm OID"),
        (der(0x30, der(0x30, b"") + der(0x30, der(0x06, b"\x2a\x86"))), "object identifier"),
        (der(0x30, der(0x30, b"") + der(0x30, b"\x1f\x01\x00")), "multi-byte DER tag"),
    ],
)
def test_certificate_hash_refuses_what_it_cannot_bind(cert: bytes, match: str) -> None:
    with pytest.raises(UnsupportedCertificate, match=match):
        tls_server_end_point(cert)


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command-line tool is not installed")
@pytest.mark.parametrize(
    ("key_options", "digest_options", "signature_name", "hash_name"),
    [
        (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"], ["-sha384"],
         "ecdsa-with-SHA384", "sha384"),
        (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"], ["-sha1"],
         "ecdsa-with-SHA1", "sha256"),
        (["-newkey", "rsa:1024"], ["-sha512"], "sha512WithRSAEncryption", "sha512"),
        (["-newkey", "rsa:1024"],
         ["-sha384", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-1"],
         "rsassaPss", "sha384"),
    ],
    ids=["ecdsa-sha384", "ecdsa-sha1", "rsa-sha512", "rsa-pss-sha384"],
)
def test_certificate_hash_of_real_openssl_certificates(
    tmp_path: Path, key_options: list[str], digest_options: list[str], signature_name: str,
    hash_name: str,
) -> None:
    assert OPENSSL is not None
    pem, der_path = tmp_path / "cert.pem", tmp_path / "cert.der"
    subprocess.run(
        [OPENSSL, "req", "-x509", *key_options, *digest_options, "-nodes", "-subj", "/CN=t",
         "-days", "1", "-keyout", str(tmp_path / "key.pem"), "-out", str(pem)],
        check=True, capture_output=True, timeout=60,
    )
    subprocess.run([OPENSSL, "x509", "-in", str(pem), "-outform", "DER", "-out", str(der_path)],
                   check=True, capture_output=True, timeout=60)
    text = subprocess.run([OPENSSL, "x509", "-in", str(pem), "-noout", "-text"],
                          check=True, capture_output=True, text=True, timeout=60).stdout
    assert f"Signature Algorithm: {signature_name}" in text
    if signature_name == "rsassaPss":
        assert f"Hash Algorithm: {hash_name}" in text
    cert = der_path.read_bytes()
    assert tls_server_end_point(cert) == hashlib.new(hash_name, cert).digest()


def test_every_public_auth_name_is_documented() -> None:
    missing = [
        name for name in pgwire.auth.__all__
        if callable(getattr(pgwire.auth, name))
        and not (getattr(pgwire.auth, name).__doc__ or "").strip()
    ]
    assert missing == []

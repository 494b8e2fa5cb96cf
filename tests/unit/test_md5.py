"""MD5 password authentication: the client's answer and the server's check."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgwire.auth import md5_password_response, md5_secret, scram_sha_256_secret, verify_md5_response

SALT = b"\x01\x02\x03\x04"


def spec_response(password: bytes, user: bytes, salt: bytes) -> bytes:
    """The formula from the PostgreSQL protocol docs, spelled out independently."""
    inner = hashlib.md5(password + user).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode()


def test_md5_secret_matches_the_well_known_postgres_value() -> None:
    # md5('postgres' || 'postgres'), the secret of user postgres with password postgres.
    assert md5_secret("postgres", "postgres") == "md53175bce1d3201d16594cebf9d7eb3f9d"


def test_response_follows_the_protocol_formula() -> None:
    response = md5_password_response("alice", "s3cret", SALT)
    assert response == spec_response(b"s3cret", b"alice", SALT)
    assert len(response) == 35 and response.startswith(b"md5")
    assert response[3:].decode().isalnum()


def test_client_may_answer_from_a_stored_md5_secret() -> None:
    secret = md5_secret("s3cret", "alice")
    assert md5_password_response("alice", secret, SALT) == md5_password_response(
        "alice", "s3cret", SALT
    )
    # The user name no longer matters: it is inside the secret already.
    assert md5_password_response("bob", secret, SALT) == md5_password_response(
        "alice", "s3cret", SALT
    )


def test_non_utf8_password_and_user_are_hashed_as_bytes() -> None:
    response = md5_password_response(b"\xe9l\xe8ve", b"mot de passe \xff", SALT)
    assert response == spec_response(b"mot de passe \xff", b"\xe9l\xe8ve", SALT)


@pytest.mark.parametrize(
    ("stored", "user", "answer_password", "accepted"),
    [
        (md5_secret("s3cret", "alice"), "alice", "s3cret", True),
        (md5_secret("s3cret", "alice"), "alice", "wrong", False),
        (md5_secret("s3cret", "alice"), "bob", "s3cret", False),  # secret salted with alice
        ("s3cret", "alice", "s3cret", True),  # plaintext stored password
        ("s3cret", "alice", "S3cret", False),
        ("", "alice", "", False),  # empty passwords never authenticate
        (scram_sha_256_secret("s3cret", iterations=2), "alice", "s3cret", False),
    ],
    ids=["md5-right", "md5-wrong", "md5-other-user", "plain-right", "plain-wrong", "empty",
         "scram-cannot-answer-md5"],
)
def test_server_checks_the_response(
    stored: str, user: str, answer_password: str, accepted: bool
) -> None:
    response = md5_password_response(user, answer_password, SALT)
    assert verify_md5_response(stored, user, SALT, response) is accepted


def test_server_refuses_a_response_for_another_salt() -> None:
    stored = md5_secret("s3cret", "alice")
    response = md5_password_response("alice", "s3cret", b"\x00\x00\x00\x00")
    assert not verify_md5_response(stored, "alice", SALT, response)


@pytest.mark.parametrize("salt", [b"", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"])
def test_salt_must_be_four_bytes(salt: bytes) -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        md5_password_response("alice", "pw", salt)
    with pytest.raises(ValueError, match="4 bytes"):
        verify_md5_response("pw", "alice", salt, b"md5" + b"0" * 32)


@settings(max_examples=100, deadline=None)
@given(
    user=st.text(min_size=1, max_size=16),
    password=st.text(max_size=16),
    salt=st.binary(min_size=4, max_size=4),
    flip=st.integers(min_value=0, max_value=34),
)
def test_round_trip_and_any_changed_byte_is_refused(
    user: str, password: str, salt: bytes, flip: int
) -> None:
    stored = md5_secret(password, user)
    response = md5_password_response(user, password, salt)
    assert verify_md5_response(stored, user, salt, response)
    tampered = bytearray(response)
    tampered[flip] ^= 0x01
    assert not verify_md5_response(stored, user, salt, bytes(tampered))
    assert not verify_md5_response(stored, user, salt, response[:-1])

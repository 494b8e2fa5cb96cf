"""Stored secrets in PostgreSQL's formats, password checks, and userlist.txt files."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgwire.auth import (
    DEFAULT_ITERATIONS,
    SALT_LENGTH,
    ScramSecret,
    UserlistError,
    is_md5_secret,
    load_userlist,
    md5_secret,
    parse_scram_secret,
    parse_userlist,
    password_type,
    scram_sha_256_secret,
    verify_password,
)

RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
KEY = "A" * 43 + "="  # 32 zero bytes in base64


def spec_secret(password: bytes, salt: bytes, iterations: int) -> str:
    """RFC 5802 / RFC 5803, spelled out independently of the library."""
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(stored_key).decode()}:{b64(server_key).decode()}")


def test_scram_secret_has_postgresqls_layout() -> None:
    secret = scram_sha_256_secret("pencil", salt=RFC_SALT, iterations=4096)
    assert secret == spec_secret(b"pencil", RFC_SALT, 4096)
    assert secret.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")


def test_scram_secret_defaults_to_a_random_16_byte_salt_and_4096_iterations() -> None:
    first, second = ScramSecret.from_password("pw"), ScramSecret.from_password("pw")
    assert first.iterations == DEFAULT_ITERATIONS == 4096
    assert len(first.salt) == SALT_LENGTH == 16
    assert first.salt != second.salt
    assert scram_sha_256_secret("pw") != scram_sha_256_secret("pw")


def test_scram_secret_applies_saslprep_before_hashing() -> None:
    # U+2168 ROMAN NUMERAL NINE becomes "IX"; U+00AD SOFT HYPHEN disappears.
    assert scram_sha_256_secret("\u2168", salt=b"s", iterations=2) == spec_secret(b"IX", b"s", 2)
    assert scram_sha_256_secret("a\u00adb", salt=b"s", iterations=2) == spec_secret(b"ab", b"s", 2)
    # A prohibited character: PostgreSQL hashes the raw UTF-8 bytes instead.
    raw = "\u0627\u0031"
    assert scram_sha_256_secret(raw, salt=b"s", iterations=2) == spec_secret(
        raw.encode(), b"s", 2
    )


@settings(max_examples=40, deadline=None)
@given(
    password=st.one_of(st.text(max_size=20), st.binary(max_size=20)),
    salt=st.binary(min_size=1, max_size=24),
    iterations=st.integers(min_value=1, max_value=30),
)
def test_secret_text_round_trips_and_verifies(
    password: str | bytes, salt: bytes, iterations: int
) -> None:
    text = scram_sha_256_secret(password, salt=salt, iterations=iterations)
    secret = parse_scram_secret(text)
    assert (secret.salt, secret.iterations) == (salt, iterations)
    assert str(secret) == text
    assert secret.verify_password(password)
    assert verify_password(text, password, user="anyone")
    assert password_type(text) == "scram-sha-256"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "starts with 'SCRAM-SHA-256\\$'"),
        ("scram-sha-256$4096:c2FsdA==$" + KEY + ":" + KEY, "starts with"),
        ("SCRAM-SHA-1$4096:c2FsdA==$" + KEY + ":" + KEY, "starts with"),
        ("SCRAM-SHA-256$4096:c2FsdA==", "no '\\$'"),
        ("SCRAM-SHA-256$4096c2FsdA==$" + KEY + ":" + KEY, "expected SCRAM-SHA-256"),
        ("SCRAM-SHA-256$4096:c2FsdA==$" + KEY + KEY, "expected SCRAM-SHA-256"),
        ("SCRAM-SHA-256$0:c2FsdA==$" + KEY + ":" + KEY, "iteration count '0'"),
        ("SCRAM-SHA-256$-1:c2FsdA==$" + KEY + ":" + KEY, "iteration count"),
        ("SCRAM-SHA-256$+4096:c2FsdA==$" + KEY + ":" + KEY, "iteration count"),
        ("SCRAM-SHA-256$ 4096:c2FsdA==$" + KEY + ":" + KEY, "iteration count"),
        ("SCRAM-SHA-256$99999999999:c2FsdA==$" + KEY + ":" + KEY, "iteration count"),
        ("SCRAM-SHA-256$4294967295:c2FsdA==$" + KEY + ":" + KEY, "between 1 and 2147483647"),
        ("SCRAM-SHA-256$4096:$" + KEY + ":" + KEY, "salt"),
        ("SCRAM-SHA-256$4096:c2FsdA$" + KEY + ":" + KEY, "salt"),
        ("SCRAM-SHA-256$4096:c2F*dA==$" + KEY + ":" + KEY, "salt"),
        ("SCRAM-SHA-256$4096:c2FsdA==$" + KEY[:-2] + "=:" + KEY, "StoredKey"),
        ("SCRAM-SHA-256$4096:c2FsdA==$" + KEY + ":" + "A" * 44, "ServerKey"),
        ("SCRAM-SHA-256$4096:c2FsdA==$" + KEY + ":" + KEY + ":extra", "ServerKey"),
        ("SCRAM-SHA-256$4096:c2FsdA==$" + KEY + ":" + KEY + "\n", "ServerKey"),
    ],
)
def test_scram_secret_parser_is_strict(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_scram_secret(text)


def test_scram_secret_parser_accepts_the_largest_count_postgresql_stores() -> None:
    secret = parse_scram_secret("SCRAM-SHA-256$2147483647:c2FsdA==$" + KEY + ":" + KEY)
    assert secret.iterations == 2**31 - 1
    assert secret.salt == b"salt"
    assert secret.stored_key == bytes(32) == secret.server_key


@pytest.mark.parametrize(
    ("text", "is_md5"),
    [
        ("md5" + "0123456789abcdef" * 2, True),
        ("md5" + "0123456789ABCDEF" * 2, False),  # PostgreSQL wants lowercase
        ("md5" + "0" * 31, False),
        ("md5" + "0" * 33, False),
        ("md5" + "g" * 32, False),
        ("MD5" + "0" * 32, False),
        ("md5" + "0" * 32 + "\n", False),
    ],
)
def test_md5_secret_shape(text: str, is_md5: bool) -> None:
    assert is_md5_secret(text) is is_md5
    assert password_type(text) == ("md5" if is_md5 else "plaintext")


def test_password_type_calls_an_unparsable_scram_secret_plaintext_like_postgresql() -> None:
    assert password_type("SCRAM-SHA-256$broken") == "plaintext"
    assert password_type("hunter2") == "plaintext"


@pytest.mark.parametrize(
    ("stored", "password", "user", "accepted"),
    [
        (md5_secret("pw", "alice"), "pw", "alice", True),
        (md5_secret("pw", "alice"), "pw", "bob", False),
        (md5_secret("pw", "alice"), "Pw", "alice", False),
        ("pw", "pw", "alice", True),
        ("pw", "pw ", "alice", False),
        ("", "", "alice", False),
        (scram_sha_256_secret("pässword", iterations=3), "pässword", "x", True),
        (scram_sha_256_secret("pässword", iterations=3), "pässword".encode(), "x", True),
        (scram_sha_256_secret("pässword", iterations=3), "password", "x", False),
    ],
)
def test_verify_password_against_each_stored_format(
    stored: str, password: str | bytes, user: str, accepted: bool
) -> None:
    assert verify_password(stored, password, user=user) is accepted


# ---------------------------------------------------------------------------
# userlist.txt

SCRAM_TEXT = "SCRAM-SHA-256$4096:c2FsdA==$" + KEY + ":" + KEY


@pytest.mark.parametrize(
    ("text", "users"),
    [
        ("", {}),
        ('"alice" "secret"\n', {"alice": "secret"}),
        ('"alice" "secret"', {"alice": "secret"}),  # no final newline
        ('  "alice"\t"secret"  \n', {"alice": "secret"}),
        ('"alice" "secret"\r\n"bob" "other"\r\n', {"alice": "secret", "bob": "other"}),
        ('; a comment\n\n   ; indented comment\n"alice" "x"\n', {"alice": "x"}),
        ('"al""ice" "se""cret"""\n', {'al"ice': 'se"cret"'}),
        ('"alice" ""\n', {"alice": ""}),
        ('"alice" "secret" "ignored" trailing ; words\n', {"alice": "secret"}),
        ('"alice" "semi;colon and spaces"\n', {"alice": "semi;colon and spaces"}),
        ('"ünïcødé" "pässwörd"\n', {"ünïcødé": "pässwörd"}),
        (f'"alice" "{SCRAM_TEXT}"\n"bob" "md5{"0" * 32}"\n',
         {"alice": SCRAM_TEXT, "bob": "md5" + "0" * 32}),
    ],
    ids=["empty", "one", "no-final-newline", "blanks", "crlf", "comments", "doubled-quotes",
         "empty-secret", "rest-ignored", "semicolon-inside", "unicode", "secret-kinds"],
)
def test_userlist_parses(text: str, users: dict[str, str]) -> None:
    assert parse_userlist(text) == users


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ("alice secret\n", 1, "both fields in double quotes"),
        ('\n\n"alice" secret\n', 3, "secret in double quotes"),
        ('"alice""secret"\n', 1, "blanks and then the secret"),  # user 'alice"secret'
        ('"alice"x"secret"\n', 1, "blanks and then the secret"),
        ('"alice" "secret\n"bob" "x"\n', 1, "secret's closing quote"),
        ('"alice\n', 1, "user name's closing quote"),
        ('"alice"\n', 1, "secret in double quotes"),
        ('"" "secret"\n', 1, "user name is empty"),
        ('"alice" "a"\n; c\n"alice" "b"\n', 3, "already listed on line 1"),
        ('# hash comments are not PgBouncer syntax\n', 1, "double quotes"),
    ],
    ids=["unquoted", "unquoted-secret", "no-separator", "junk-separator", "unterminated-secret",
         "unterminated-user", "no-secret", "empty-user", "duplicate", "hash-comment"],
)
def test_userlist_errors_name_the_line(text: str, line: int, match: str) -> None:
    with pytest.raises(UserlistError, match=match) as info:
        parse_userlist(text, source="users.txt")
    assert info.value.line == line
    assert str(info.value).startswith(f"users.txt, line {line}: ")


def test_load_userlist_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "userlist.txt"
    path.write_text('"alice" "secret"\n"bob" "md5' + "a" * 32 + '"\n', encoding="utf-8")
    assert load_userlist(path) == {"alice": "secret", "bob": "md5" + "a" * 32}
    assert load_userlist(str(path)) == load_userlist(path)


def test_load_userlist_names_the_line_with_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "userlist.txt"
    path.write_bytes(b'"alice" "ok"\n"bob" "\xff"\n')
    with pytest.raises(UserlistError, match="line 2: the file is not valid UTF-8") as info:
        load_userlist(path)
    assert info.value.line == 2
    assert isinstance(info.value, ValueError)


def test_load_userlist_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_userlist(tmp_path / "absent.txt")

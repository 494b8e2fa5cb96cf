"""MD5 password authentication (AuthenticationMD5Password), both sides.

The client answers the server's 4-byte salt with
``"md5" + md5(md5(password + user).hex() + salt).hex()``. The server checks
that answer against a stored MD5 secret (``"md5" + md5(password + user).hex()``)
or a plaintext password, without needing the password itself in the first
case. Note what this implies: the stored MD5 secret is as good as the password
for logging in with MD5 — keep it as secret as a password.

MD5 authentication is deprecated in PostgreSQL 18. Prefer SCRAM.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from .stored import is_md5_secret, md5_secret, password_type

__all__ = ["md5_password_response", "verify_md5_response"]

_SALT_LENGTH: Final = 4


def _salted(md5_secret_text: str, salt: bytes) -> bytes:
    """``"md5" + hex(md5(secret hex digits + salt))`` as bytes."""
    digest = hashlib.md5(md5_secret_text[3:].encode("ascii") + bytes(salt)).hexdigest()
    return b"md5" + digest.encode("ascii")


def _check_salt(salt: bytes) -> None:
    if len(salt) != _SALT_LENGTH:
        raise ValueError(f"the MD5 salt is 4 bytes, not {len(salt)}")


def md5_password_response(user: str | bytes, password: str | bytes, salt: bytes) -> bytes:
    """The PasswordMessage payload answering AuthenticationMD5Password(``salt``).

    ``password`` is the cleartext password, or an MD5 secret (``md5`` + 32
    lowercase hex digits, e.g. from a user list) which is used as is — the
    same rule PostgreSQL applies when it stores a password of that shape.
    Returns ``b"md5"`` + 32 hex digits, without the terminating NUL (the
    :class:`~pgwire.PasswordMessage` adds it).

    Raises:
        ValueError: ``salt`` is not 4 bytes.
    """
    _check_salt(salt)
    if isinstance(password, str) and is_md5_secret(password):
        secret = password
    else:
        secret = md5_secret(password, user)
    return _salted(secret, salt)


def verify_md5_response(stored: str, user: str | bytes, salt: bytes, response: bytes) -> bool:
    """True if the client's MD5 ``response`` proves knowledge of ``stored`` for ``user``.

    ``stored`` is an MD5 secret or a plaintext password. A SCRAM secret
    cannot answer an MD5 challenge, and an empty stored password never
    matches: both return False, as PostgreSQL fails such logins (choose SCRAM
    for a user whose secret is SCRAM). The comparison is constant-time.

    Raises:
        ValueError: ``salt`` is not 4 bytes.
    """
    _check_salt(salt)
    if not stored:
        return False
    kind = password_type(stored)
    if kind == "scram-sha-256":
        return False
    secret = stored if kind == "md5" else md5_secret(stored, user)
    return hmac.compare_digest(_salted(secret, salt), bytes(response))

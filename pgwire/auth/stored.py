"""Stored password secrets in PostgreSQL's formats, and PgBouncer-style user lists.

PostgreSQL keeps one of these in ``pg_authid.rolpassword``:

* ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (RFC 5803
  layout, base64 fields) — :class:`ScramSecret`;
* ``md5`` followed by 32 lowercase hex digits, the MD5 of password + user
  name — :func:`md5_secret`.

A server-side verifier authenticates a client from either without knowing the
password. :func:`load_userlist` reads the ``userlist.txt`` files PgBouncer uses
to hold such secrets (or plaintext passwords) per user.

Every comparison of secret material here runs in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Final, Literal

from .saslprep import prepare_password

__all__ = [
    "DEFAULT_ITERATIONS",
    "SALT_LENGTH",
    "ScramKeys",
    "ScramSecret",
    "UserlistError",
    "is_md5_secret",
    "load_userlist",
    "md5_secret",
    "mock_scram_secret",
    "parse_scram_secret",
    "parse_userlist",
    "password_type",
    "scram_sha_256_secret",
    "verify_password",
]

#: PostgreSQL's default iteration count (``scram_iterations``, PostgreSQL 16+).
DEFAULT_ITERATIONS: Final = 4096
#: Salt length PostgreSQL uses for new secrets, in bytes.
SALT_LENGTH: Final = 16
#: Largest iteration count PostgreSQL can store (a C ``int``).
_MAX_STORED_ITERATIONS: Final = 2**31 - 1
_KEY_LENGTH: Final = 32
_SCRAM_PREFIX: Final = "SCRAM-SHA-256$"
_MD5_SECRET: Final = re.compile(r"md5[0-9a-f]{32}")
_POSITIVE_NUMBER: Final = re.compile(r"[1-9][0-9]{0,9}")


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def b64decode_strict(text: str | bytes) -> bytes | None:
    """Decode canonical, padded base64; None when ``text`` is anything else.

    Canonical means re-encoding gives back ``text`` exactly, so no two
    spellings decode to the same bytes (unused low bits must be zero).
    """
    data = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if base64.b64encode(decoded) == data else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class ScramKeys:
    """The two keys that stand in for a password in SCRAM-SHA-256.

    ``client_key`` proves knowledge of the password to a server (its SHA-256
    is the StoredKey); ``server_key`` lets a server prove itself. A
    :class:`~pgwire.auth.scram.ScramClient` can log in with these instead of
    a password, and a :class:`~pgwire.auth.scram.ScramServer` recovers them
    from a successful exchange — which is how a proxy passes a client's SCRAM
    login through to an upstream server holding the same secret.
    They are as sensitive as the password, so ``repr`` hides them.
    """

    client_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.client_key) != _KEY_LENGTH or len(self.server_key) != _KEY_LENGTH:
            raise ValueError("SCRAM-SHA-256 keys are 32 bytes each")

    @property
    def stored_key(self) -> bytes:
        """SHA-256 of the ClientKey: what the server stores and checks proofs against."""
        return hashlib.sha256(self.client_key).digest()

    @classmethod
    def from_password(cls, password: str | bytes, salt: bytes, iterations: int) -> ScramKeys:
        """Derive the keys: SASLprep (with PostgreSQL's fallback), then PBKDF2-HMAC-SHA-256.

        Costs ``iterations`` HMAC rounds; callers facing untrusted counts must
        cap them first.
        """
        if iterations < 1:
            raise ValueError(f"the SCRAM iteration count must be at least 1, not {iterations}")
        salted = hashlib.pbkdf2_hmac("sha256", prepare_password(password), salt, iterations)
        return cls(client_key=_hmac(salted, b"Client Key"), server_key=_hmac(salted, b"Server Key"))


@dataclass(frozen=True, slots=True)
class ScramSecret:
    """A SCRAM-SHA-256 secret as PostgreSQL stores it; ``str()`` gives the stored text.

    Build one with :meth:`from_password`, read one with :meth:`parse`. The
    StoredKey and ServerKey are hidden from ``repr``: the ServerKey lets its
    holder impersonate the server to clients.
    """

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.iterations <= _MAX_STORED_ITERATIONS:
            raise ValueError(
                f"the SCRAM iteration count must be between 1 and {_MAX_STORED_ITERATIONS}, "
                f"not {self.iterations}"
            )
        if not self.salt:
            raise ValueError("a SCRAM secret needs a non-empty salt")
        if len(self.stored_key) != _KEY_LENGTH or len(self.server_key) != _KEY_LENGTH:
            raise ValueError("the StoredKey and ServerKey of SCRAM-SHA-256 are 32 bytes each")

    def __str__(self) -> str:
        return (
            f"{_SCRAM_PREFIX}{self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )

    @classmethod
    def from_password(
        cls,
        password: str | bytes,
        *,
        salt: bytes | None = None,
        iterations: int = DEFAULT_ITERATIONS,
    ) -> ScramSecret:
        """The secret PostgreSQL would store for ``password``.

        ``salt`` defaults to 16 random bytes from :mod:`secrets`. The password
        goes through SASLprep with PostgreSQL's raw-bytes fallback.
        """
        if salt is None:
            salt = secrets.token_bytes(SALT_LENGTH)
        keys = ScramKeys.from_password(password, salt, iterations)
        return cls(
            iterations=iterations,
            salt=salt,
            stored_key=keys.stored_key,
            server_key=keys.server_key,
        )

    @classmethod
    def parse(cls, text: str) -> ScramSecret:
        """Read ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``.

        Strict: the iteration count is a plain positive decimal, every field is
        canonical padded base64, both keys decode to 32 bytes, and nothing else
        may appear.

        Raises:
            ValueError: the text is not such a secret; the message says which part is wrong.
        """
        if not text.startswith(_SCRAM_PREFIX):
            raise ValueError(
                f"a SCRAM secret starts with {_SCRAM_PREFIX!r}; this one starts with "
                f"{text[:len(_SCRAM_PREFIX)]!r}"
            )
        body = text[len(_SCRAM_PREFIX):]
        parameters, dollar, keys = body.partition("$")
        if not dollar:
            raise ValueError("malformed SCRAM secret: no '$' between the salt and the keys")
        iterations_text, colon, salt_text = parameters.partition(":")
        stored_text, colon2, server_text = keys.partition(":")
        if not colon or not colon2:
            raise ValueError(
                "malformed SCRAM secret: expected "
                "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
            )
        if not _POSITIVE_NUMBER.fullmatch(iterations_text):
            raise ValueError(
                f"malformed SCRAM secret: the iteration count {iterations_text[:20]!r} "
                "is not a positive decimal number"
            )
        salt = b64decode_strict(salt_text)
        if not salt:
            raise ValueError("malformed SCRAM secret: the salt is not non-empty base64")
        stored_key = b64decode_strict(stored_text)
        server_key = b64decode_strict(server_text)
        if stored_key is None or len(stored_key) != _KEY_LENGTH:
            raise ValueError("malformed SCRAM secret: the StoredKey is not 32 bytes of base64")
        if server_key is None or len(server_key) != _KEY_LENGTH:
            raise ValueError("malformed SCRAM secret: the ServerKey is not 32 bytes of base64")
        return cls(
            iterations=int(iterations_text),
            salt=salt,
            stored_key=stored_key,
            server_key=server_key,
        )

    def verify_password(self, password: str | bytes) -> bool:
        """True if ``password`` matches this secret (for cleartext password login).

        Like PostgreSQL's ``scram_verify_plain_password``: derives the
        ServerKey and compares it in constant time. Costs ``iterations``
        rounds of hashing.
        """
        keys = ScramKeys.from_password(password, self.salt, self.iterations)
        return hmac.compare_digest(keys.server_key, self.server_key)


def scram_sha_256_secret(
    password: str | bytes,
    salt: bytes | None = None,
    iterations: int = DEFAULT_ITERATIONS,
) -> str:
    """The text PostgreSQL stores for ``password`` with ``password_encryption = scram-sha-256``.

    ``SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>``; ``salt`` defaults to
    16 random bytes.
    """
    return str(ScramSecret.from_password(password, salt=salt, iterations=iterations))


def parse_scram_secret(text: str) -> ScramSecret:
    """Parse a stored SCRAM-SHA-256 secret; see :meth:`ScramSecret.parse`."""
    return ScramSecret.parse(text)


def mock_scram_secret(user: str, mock_key: bytes) -> ScramSecret:
    """A secret no password matches, with a salt that is stable per ``user``.

    For a server asked to authenticate a user it does not know (or one whose
    secret cannot do SCRAM): run the exchange with this secret and it fails
    like a wrong password, while the salt a prober sees for the same name
    stays the same on every attempt — as PostgreSQL does, so that probing
    does not reveal which users exist. ``mock_key`` is a random server-wide
    key, kept for the server's lifetime (e.g. ``secrets.token_bytes(32)``).
    """
    salt = _hmac(mock_key, user.encode("utf-8", "surrogatepass"))[:SALT_LENGTH]
    return ScramSecret(
        iterations=DEFAULT_ITERATIONS,
        salt=salt,
        stored_key=secrets.token_bytes(_KEY_LENGTH),
        server_key=secrets.token_bytes(_KEY_LENGTH),
    )


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)


def md5_secret(password: str | bytes, user: str | bytes) -> str:
    """``"md5"`` + hex MD5 of password followed by user name, as PostgreSQL stores it."""
    return "md5" + hashlib.md5(_as_bytes(password) + _as_bytes(user)).hexdigest()


def is_md5_secret(text: str) -> bool:
    """True if ``text`` has the shape of a stored MD5 secret (``md5`` + 32 lowercase hex).

    PostgreSQL uses the same test: a password of this shape given to
    ``CREATE ROLE ... PASSWORD`` is stored as an MD5 secret, not hashed again.
    """
    return _MD5_SECRET.fullmatch(text) is not None


def password_type(stored: str) -> Literal["md5", "scram-sha-256", "plaintext"]:
    """What a stored password is, decided like PostgreSQL's ``get_password_type``.

    A text that starts like a SCRAM secret but does not parse counts as
    ``"plaintext"`` here, as in PostgreSQL; :meth:`ScramSecret.parse` says why.
    """
    if is_md5_secret(stored):
        return "md5"
    if stored.startswith(_SCRAM_PREFIX):
        try:
            ScramSecret.parse(stored)
        except ValueError:
            return "plaintext"
        return "scram-sha-256"
    return "plaintext"


def verify_password(stored: str, password: str | bytes, *, user: str | bytes) -> bool:
    """True if the cleartext ``password`` matches ``stored`` for ``user``.

    ``stored`` may be a SCRAM secret, an MD5 secret (which depends on the
    ``user`` name) or a plaintext password. All comparisons are constant-time.
    An empty stored password never matches: PostgreSQL refuses empty
    passwords too.
    """
    if not stored:
        return False
    kind = password_type(stored)
    if kind == "scram-sha-256":
        return ScramSecret.parse(stored).verify_password(password)
    if kind == "md5":
        return hmac.compare_digest(md5_secret(password, user), stored)
    return hmac.compare_digest(_as_bytes(password), _as_bytes(stored))


# ---------------------------------------------------------------------------
# userlist.txt


class UserlistError(ValueError):
    """A line of a user list cannot be read; ``line`` is its 1-based number."""

    def __init__(self, source: str, line: int, problem: str) -> None:
        super().__init__(f"{source}, line {line}: {problem}")
        self.source = source
        self.line = line
        self.problem = problem


def _quoted_field(text: str, start: int) -> tuple[str, int] | None:
    """Read a double-quoted field at ``text[start]``; ``""`` inside stands for ``"``.

    Returns (value, index after the closing quote), or None if unterminated.
    """
    value: list[str] = []
    index = start + 1
    while True:
        quote = text.find('"', index)
        if quote < 0:
            return None
        value.append(text[index:quote])
        if text.startswith('"', quote + 1):
            value.append('"')
            index = quote + 2
            continue
        return "".join(value), quote + 1


def parse_userlist(text: str, *, source: str = "userlist") -> dict[str, str]:
    """Read a PgBouncer ``userlist.txt``: a dict from user name to stored password.

    One entry per line: ``"user" "secret"``, each field in double quotes,
    with a doubled quote (``""``) standing for a quote inside a field; the
    rest of the line after the second field is ignored, as in PgBouncer. A
    line whose first non-blank character is ``;`` is a comment; blank lines
    are skipped. The secret is kept as written — a SCRAM secret, an MD5
    secret or a plaintext password (see :func:`password_type`).

    Stricter than PgBouncer, which skips what it cannot read: a malformed
    line, an empty user name or a user listed twice is an error.

    Raises:
        UserlistError: naming ``source`` and the line number.
    """
    users: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.removesuffix("\r")
        stripped = line.lstrip()
        if not stripped or stripped.startswith(";"):
            continue
        if not stripped.startswith('"'):
            raise UserlistError(
                source, number, 'expected "user" "secret" with both fields in double quotes'
            )
        user_field = _quoted_field(stripped, 0)
        if user_field is None:
            raise UserlistError(source, number, "the user name's closing quote is missing")
        user, after_user = user_field
        rest = stripped[after_user:]
        secret_start = len(rest) - len(rest.lstrip())
        if secret_start == 0 or not rest[secret_start:].startswith('"'):
            raise UserlistError(
                source, number,
                "expected blanks and then the secret in double quotes after the user name",
            )
        secret_field = _quoted_field(rest, secret_start)
        if secret_field is None:
            raise UserlistError(source, number, "the secret's closing quote is missing")
        if not user:
            raise UserlistError(source, number, "the user name is empty")
        if user in users:
            raise UserlistError(
                source, number, f"user {user!r} is already listed on line {first_seen[user]}"
            )
        users[user] = secret_field[0]
        first_seen[user] = number
    return users


def load_userlist(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a PgBouncer ``userlist.txt`` file (UTF-8); see :func:`parse_userlist`.

    Raises:
        UserlistError: a malformed line, or bytes that are not UTF-8 (naming the line).
        OSError: the file cannot be read.
    """
    source = os.fspath(path)
    with open(path, "rb") as file:
        data = file.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserlistError(source, line, "the file is not valid UTF-8") from None
    return parse_userlist(text, source=source)

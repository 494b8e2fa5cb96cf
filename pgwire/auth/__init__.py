"""Authentication primitives: SCRAM-SHA-256(-PLUS), MD5, SASLprep and stored secrets.

Pure functions and sans-IO state objects, with no I/O and no dependencies
beyond the standard library:

* :class:`ScramClient` / :class:`ScramServer` — one SCRAM exchange each side,
  with ``tls-server-end-point`` channel binding (:class:`ChannelBinding`);
* :func:`md5_password_response` / :func:`verify_md5_response` — MD5 auth;
* :class:`ScramSecret`, :func:`scram_sha_256_secret`, :func:`md5_secret`,
  :func:`verify_password` — PostgreSQL's stored password formats;
* :func:`load_userlist` — PgBouncer-style ``userlist.txt`` files;
* :func:`saslprep` / :func:`prepare_password` — SASLprep as PostgreSQL does it.
"""

from .channel_binding import ChannelBinding, UnsupportedCertificate, tls_server_end_point
from .md5 import md5_password_response, verify_md5_response
from .saslprep import SaslprepError, prepare_password, saslprep
from .scram import (
    DEFAULT_MAX_ITERATIONS,
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    SQLSTATE_INVALID_PASSWORD,
    AuthenticationFailed,
    ScramClient,
    ScramError,
    ScramServer,
)
from .stored import (
    DEFAULT_ITERATIONS,
    SALT_LENGTH,
    ScramKeys,
    ScramSecret,
    UserlistError,
    is_md5_secret,
    load_userlist,
    md5_secret,
    mock_scram_secret,
    parse_scram_secret,
    parse_userlist,
    password_type,
    scram_sha_256_secret,
    verify_password,
)

__all__ = [
    "DEFAULT_ITERATIONS",
    "DEFAULT_MAX_ITERATIONS",
    "SALT_LENGTH",
    "SCRAM_SHA_256",
    "SCRAM_SHA_256_PLUS",
    "SQLSTATE_INVALID_PASSWORD",
    "AuthenticationFailed",
    "ChannelBinding",
    "SaslprepError",
    "ScramClient",
    "ScramError",
    "ScramKeys",
    "ScramSecret",
    "ScramServer",
    "UnsupportedCertificate",
    "UserlistError",
    "is_md5_secret",
    "load_userlist",
    "md5_password_response",
    "md5_secret",
    "mock_scram_secret",
    "parse_scram_secret",
    "parse_userlist",
    "password_type",
    "prepare_password",
    "saslprep",
    "scram_sha_256_secret",
    "tls_server_end_point",
    "verify_md5_response",
    "verify_password",
]

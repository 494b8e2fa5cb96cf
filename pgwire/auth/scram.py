"""SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677) as sans-IO state objects.

:class:`ScramClient` logs in to a server; :class:`ScramServer` checks a client
against a stored secret. Neither touches a socket: they turn the payloads of
the SASL messages into the payloads to send back, and raise when the peer
cheats. How the payloads travel::

    client                                      server
    SASLInitialResponse(mechanism, client-first)  ->
                       <-  AuthenticationSASLContinue(server-first)
    SASLResponse(client-final)                    ->
                       <-  AuthenticationSASLFinal(server-final), AuthenticationOk

The rules are PostgreSQL's (``src/backend/libpq/auth-scram.c`` and
``src/interfaces/libpq/fe-auth-scram.c``): the user name inside SCRAM is
empty (the StartupMessage's counts), authorization identities and extensions
are refused, channel binding is ``tls-server-end-point`` only, passwords go
through SASLprep with the raw-bytes fallback, and errors carry the SQLSTATE
PostgreSQL reports. Where libpq is lenient the client here is stricter:
garbage after the server's messages, an empty server nonce or salt,
non-canonical base64 and an iteration count above ``max_iterations`` are all
refused. Nonces come from :mod:`secrets`; every comparison of secret material
is constant-time.

Errors: a peer's malformed or hostile message raises :class:`ScramError`, a
failed proof raises :class:`AuthenticationFailed` (both
:class:`~pgwire.RemoteProtocolError`, so :func:`pgwire.error_response` turns
them into the ErrorResponse PostgreSQL would send). Calling a method out of
order raises :class:`~pgwire.LocalProtocolError`. After any error the object
is finished: make a new one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Collection
from typing import Final

from ..protocol._errors import (
    SQLSTATE_FEATURE_NOT_SUPPORTED,
    SQLSTATE_INVALID_AUTHORIZATION_SPECIFICATION,
    SQLSTATE_PROGRAM_LIMIT_EXCEEDED,
    SQLSTATE_PROTOCOL_VIOLATION,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from .channel_binding import ChannelBinding
from .stored import (
    DEFAULT_ITERATIONS,
    ScramKeys,
    ScramSecret,
    b64decode_strict,
    is_md5_secret,
)

__all__ = [
    "DEFAULT_MAX_ITERATIONS",
    "SCRAM_SHA_256",
    "SCRAM_SHA_256_PLUS",
    "SQLSTATE_INVALID_PASSWORD",
    "AuthenticationFailed",
    "ScramClient",
    "ScramError",
    "ScramServer",
]

SCRAM_SHA_256: Final = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS: Final = "SCRAM-SHA-256-PLUS"
#: 28P01 — the password (or SCRAM proof) is wrong.
SQLSTATE_INVALID_PASSWORD: Final = "28P01"
#: The largest iteration count a :class:`ScramClient` accepts by default.
#: PostgreSQL's default is 4096; a million rounds take about a quarter of a
#: second with OpenSSL's PBKDF2, so a hostile server can waste at most that
#: much of our time per attempt, while strong settings (OWASP suggests 600,000)
#: still work. Raise it with ``max_iterations`` if your servers use more.
DEFAULT_MAX_ITERATIONS: Final = 1_000_000

_KEY_LENGTH: Final = 32
_NONCE_BYTES: Final = 18  # PostgreSQL's SCRAM_RAW_NONCE_LEN: 24 base64 characters
_CBIND_NAME: Final = ChannelBinding.type.encode("ascii")
_PRINTABLE: Final = re.compile(rb"[\x21-\x2b\x2d-\x7e]+")
_POSITIVE_NUMBER: Final = re.compile(rb"[1-9][0-9]*")
_ATTRIBUTE: Final = re.compile(rb"([A-Za-z])=(.*)", re.DOTALL)


class ScramError(RemoteProtocolError):
    """The peer sent a SCRAM message that is malformed, hostile or not supported.

    ``sqlstate`` is what PostgreSQL reports for the same fault: 08P01 for a
    malformed message or a nonce mismatch, 0A000 for an authorization
    identity or extension, 28000 for a channel-binding failure or downgrade,
    54000 for an iteration count above the client's limit.
    """


class AuthenticationFailed(RemoteProtocolError):
    """The peer failed to prove it knows the password.

    Raised by :class:`ScramServer` when the client's proof is wrong (SQLSTATE
    28P01, "password authentication failed"), and by :class:`ScramClient`
    when the server rejects our proof (28P01) or the server's own signature is
    wrong (28000: the server does not know the password — an impostor).
    """

    def __init__(self, message: str, sqlstate: str = SQLSTATE_INVALID_PASSWORD) -> None:
        super().__init__(message, sqlstate)


def _malformed(detail: str) -> ScramError:
    return ScramError(f"malformed SCRAM message: {detail}", SQLSTATE_PROTOCOL_VIOLATION)


def _show(value: bytes) -> str:
    """Peer bytes made safe for an error message: printable ASCII, at most 30 characters."""
    text = "".join(chr(b) if 0x21 <= b <= 0x7E else "?" for b in value[:30])
    return f'"{text}"' + ("..." if len(value) > 30 else "")


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def _check_payload(data: bytes, what: str) -> bytes:
    data = bytes(data)
    if not data:
        raise _malformed(f"the {what} is empty")
    if b"\0" in data:
        raise _malformed(f"the {what} contains a NUL byte")
    return data


def _attributes(message: bytes, what: str) -> list[tuple[bytes, bytes]]:
    """Split ``a=value,b=value`` into (attribute, value) pairs, refusing anything else."""
    pairs: list[tuple[bytes, bytes]] = []
    for item in message.split(b","):
        match = _ATTRIBUTE.fullmatch(item)
        if match is None:
            found = _show(item) if item else "nothing"
            raise _malformed(f"expected an attribute (letter=value) in the {what}, found {found}")
        pairs.append((match.group(1), match.group(2)))
    return pairs


def _expect_attribute(
    pairs: list[tuple[bytes, bytes]], index: int, name: bytes, what: str
) -> bytes:
    if index >= len(pairs):
        raise _malformed(f'attribute "{name.decode()}" missing from the {what}')
    found, value = pairs[index]
    if found != name:
        raise _malformed(
            f'expected attribute "{name.decode()}" in the {what}, found "{found.decode()}"'
        )
    return value


def _expect_end(pairs: list[tuple[bytes, bytes]], count: int, what: str) -> None:
    """Refuse attributes after the last one the message may carry (as libpq:
    "garbage at end of server-first-message")."""
    if len(pairs) > count:
        raise _malformed(f'garbage at end of the {what}: "{pairs[count][0].decode()}=..."')


def _new_nonce() -> bytes:
    return base64.b64encode(secrets.token_bytes(_NONCE_BYTES))


def _nonce_argument(nonce: str | None) -> bytes:
    if nonce is None:
        return _new_nonce()
    encoded = nonce.encode("ascii", "replace")
    if not _PRINTABLE.fullmatch(encoded):
        raise ValueError("a SCRAM nonce is printable ASCII without commas, and not empty")
    return encoded


def _escape_username(username: str) -> bytes:
    return username.encode("utf-8").replace(b"=", b"=3D").replace(b",", b"=2C")


class ScramClient:
    """The client side of one SCRAM-SHA-256(-PLUS) exchange.

    Typical use against AuthenticationSASL(``mechanisms``)::

        client = ScramClient(password, mechanisms=auth.mechanisms, channel_binding=cb)
        send(SASLInitialResponse(mechanism=client.mechanism, data=client.client_first()))
        send(SASLResponse(data=client.receive_server_first(continue_.data)))
        client.receive_server_final(final.data)     # raises unless the server proved itself
        # only now accept AuthenticationOk: check client.authenticated

    ``password`` is the cleartext password (``str`` is UTF-8; ``bytes`` for
    passwords in another encoding) or the :class:`~pgwire.auth.stored.ScramKeys`
    recovered by a :class:`ScramServer` (a proxy passing a SCRAM login through
    to a server that holds the same secret).

    Mechanism choice follows libpq: with ``channel_binding`` (we are on TLS
    and know the server certificate's hash) and SCRAM-SHA-256-PLUS among the
    server's ``mechanisms``, use PLUS with the ``p=tls-server-end-point`` flag;
    otherwise SCRAM-SHA-256, flagged ``y`` ("I could bind, but you did not
    offer it") when we have channel binding data and ``n`` when we do not.
    ``mechanisms`` defaults to what a PostgreSQL server offers: PLUS too when
    ``channel_binding`` is given. ``require_channel_binding`` refuses to go on
    without PLUS, like libpq's ``channel_binding=require``.

    ``max_iterations`` caps the iteration count the server may demand; a
    larger count is refused before any hashing. ``nonce`` and ``username``
    exist for test vectors: PostgreSQL ignores the SCRAM user name, and a
    fixed nonce destroys SCRAM's replay protection.

    Raises:
        ScramError: the server offers no mechanism we can use (0A000), or not
            PLUS while ``require_channel_binding`` (28000).
        LocalProtocolError: ``require_channel_binding`` without ``channel_binding``.
        ValueError: an invalid ``nonce`` or ``max_iterations``.
    """

    __slots__ = (
        "_auth_message",
        "_cbind_data",
        "_client_first_bare",
        "_gs2_header",
        "_keys",
        "_max_iterations",
        "_nonce",
        "_password",
        "_server_signature",
        "_state",
        "_username",
        "mechanism",
    )

    def __init__(
        self,
        password: str | bytes | ScramKeys,
        *,
        channel_binding: ChannelBinding | None = None,
        mechanisms: Collection[str] | None = None,
        require_channel_binding: bool = False,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
        nonce: str | None = None,
        username: str = "",
    ) -> None:
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be at least 1, not {max_iterations}")
        if mechanisms is None:
            plus_too = channel_binding is not None
            mechanisms = (SCRAM_SHA_256_PLUS, SCRAM_SHA_256) if plus_too else (SCRAM_SHA_256,)
        if require_channel_binding and channel_binding is None:
            raise LocalProtocolError(
                "channel binding is required but there is no channel binding data: connect "
                "with TLS and pass ChannelBinding.from_certificate(server certificate)",
                SQLSTATE_INVALID_AUTHORIZATION_SPECIFICATION,
            )
        cbind_data = b""
        if channel_binding is not None and SCRAM_SHA_256_PLUS in mechanisms:
            mechanism = SCRAM_SHA_256_PLUS
            gs2_header = b"p=" + _CBIND_NAME + b",,"
            cbind_data = channel_binding.data
        elif require_channel_binding:
            raise ScramError(
                "channel binding is required, but the server did not offer "
                f"{SCRAM_SHA_256_PLUS} (offered: {', '.join(mechanisms) or 'nothing'}); "
                "a man in the middle may have removed it",
                SQLSTATE_INVALID_AUTHORIZATION_SPECIFICATION,
            )
        elif SCRAM_SHA_256 in mechanisms:
            mechanism = SCRAM_SHA_256
            gs2_header = b"y,," if channel_binding is not None else b"n,,"
        else:
            raise ScramError(
                "the server offers no SASL mechanism we support "
                f"(offered: {', '.join(mechanisms) or 'nothing'}; supported: "
                f"{SCRAM_SHA_256}, and {SCRAM_SHA_256_PLUS} with channel binding data)",
                SQLSTATE_FEATURE_NOT_SUPPORTED,
            )
        #: The mechanism to name in SASLInitialResponse.
        self.mechanism = mechanism
        self._gs2_header = gs2_header
        self._cbind_data = cbind_data
        self._password = password
        self._max_iterations = max_iterations
        self._nonce = _nonce_argument(nonce)
        self._username = _escape_username(username)
        self._client_first_bare = b""
        self._keys: ScramKeys | None = None
        self._auth_message = b""
        self._server_signature = b""
        self._state = "initial"

    @property
    def state(self) -> str:
        """Where the exchange is: ``initial``, ``first-sent`` (awaiting the
        server-first message), ``final-sent`` (awaiting server-final), ``done``
        or ``failed``."""
        return self._state

    @property
    def authenticated(self) -> bool:
        """True once the server's final message proved it knows the password.

        Accept AuthenticationOk only when this is True: a server (or a man in
        the middle) that skips AuthenticationSASLFinal has proved nothing.
        """
        return self._state == "done"

    @property
    def channel_bound(self) -> bool:
        """True once an exchange with SCRAM-SHA-256-PLUS completed successfully."""
        return self.authenticated and self.mechanism == SCRAM_SHA_256_PLUS

    def _advance(self, expected: str, action: str) -> None:
        if self._state != expected:
            if self._state == "failed":
                raise LocalProtocolError(
                    "this SCRAM exchange already failed; start a new one with a new ScramClient"
                )
            raise LocalProtocolError(
                f"cannot {action} now: the SCRAM client is in state {self._state!r}"
            )

    def client_first(self) -> bytes:
        """The client-first message: the payload of SASLInitialResponse."""
        self._advance("initial", "build the client-first message")
        self._client_first_bare = b"n=" + self._username + b",r=" + self._nonce
        self._state = "first-sent"
        return self._gs2_header + self._client_first_bare

    def receive_server_first(self, data: bytes) -> bytes:
        """Check the server-first message (AuthenticationSASLContinue); return client-final.

        Raises:
            ScramError: malformed message, nonce not extending ours, bad salt,
                or an iteration count of 0 or above ``max_iterations``.
        """
        self._advance("first-sent", "receive the server-first message")
        try:
            return self._server_first(data)
        except ProtocolError:
            self._state = "failed"
            raise

    def _server_first(self, data: bytes) -> bytes:
        what = "server-first-message"
        message = _check_payload(data, what)
        if message.startswith(b"m="):
            raise ScramError(
                "the server requires a SCRAM extension, which is not supported",
                SQLSTATE_FEATURE_NOT_SUPPORTED,
            )
        pairs = _attributes(message, what)
        nonce = _expect_attribute(pairs, 0, b"r", what)
        salt_text = _expect_attribute(pairs, 1, b"s", what)
        iterations_text = _expect_attribute(pairs, 2, b"i", what)
        _expect_end(pairs, 3, what)
        ours = self._nonce
        if len(nonce) <= len(ours) or not hmac.compare_digest(nonce[:len(ours)], ours):
            raise ScramError(
                "invalid SCRAM response: the server's nonce does not extend the client's "
                "(nonce mismatch)"
            )
        if not _PRINTABLE.fullmatch(nonce):
            raise _malformed("non-printable characters in the server's nonce")
        salt = b64decode_strict(salt_text)
        if not salt:
            raise _malformed("the salt is not non-empty base64")
        if not _POSITIVE_NUMBER.fullmatch(iterations_text):
            raise _malformed(
                f"invalid iteration count {_show(iterations_text)}: "
                "a positive decimal number is required"
            )
        # Compare lengths first: the text could be millions of digits long.
        limit = self._max_iterations
        if len(iterations_text) > len(str(limit)) or int(iterations_text) > limit:
            raise ScramError(
                f"the server asks for {_show(iterations_text)} SCRAM iterations, more than "
                f"the limit of {limit}; raise max_iterations if this server is trusted",
                SQLSTATE_PROGRAM_LIMIT_EXCEEDED,
            )
        iterations = int(iterations_text)
        password = self._password
        if isinstance(password, ScramKeys):
            keys = password
        else:
            keys = ScramKeys.from_password(password, salt, iterations)
        cbind_input = self._gs2_header + self._cbind_data
        without_proof = b"c=" + base64.b64encode(cbind_input) + b",r=" + nonce
        auth_message = self._client_first_bare + b"," + message + b"," + without_proof
        client_signature = _hmac(keys.stored_key, auth_message)
        proof = _xor(keys.client_key, client_signature)
        self._keys = keys
        self._server_signature = _hmac(keys.server_key, auth_message)
        self._auth_message = auth_message
        self._state = "final-sent"
        return without_proof + b",p=" + base64.b64encode(proof)

    def receive_server_final(self, data: bytes) -> None:
        """Check the server-final message (AuthenticationSASLFinal).

        Returns only when the server proved it knows the password (and, with
        PLUS, that it is the TLS endpoint we talk to).

        Raises:
            AuthenticationFailed: the server reported an error (``e=...``;
                28P01 for ``invalid-proof``), or its signature is wrong (28000).
            ScramError: malformed message.
        """
        self._advance("final-sent", "receive the server-final message")
        try:
            self._server_final(data)
        except ProtocolError:
            self._state = "failed"
            raise
        self._state = "done"

    def _server_final(self, data: bytes) -> None:
        what = "server-final-message"
        message = _check_payload(data, what)
        pairs = _attributes(message, what)
        if pairs[0][0] == b"e":
            reason = pairs[0][1]
            raise AuthenticationFailed(
                f"error received from server in SCRAM exchange: {_show(reason)}",
                SQLSTATE_INVALID_PASSWORD if reason == b"invalid-proof"
                else SQLSTATE_INVALID_AUTHORIZATION_SPECIFICATION,
            )
        signature = b64decode_strict(_expect_attribute(pairs, 0, b"v", what))
        _expect_end(pairs, 1, what)
        if signature is None or len(signature) != _KEY_LENGTH:
            raise _malformed("the server signature is not 32 bytes of base64")
        if not hmac.compare_digest(signature, self._server_signature):
            raise AuthenticationFailed(
                "incorrect server signature: the server does not know the password, so it "
                "may be an impostor; do not trust this connection",
                SQLSTATE_INVALID_AUTHORIZATION_SPECIFICATION,
            )


class ScramServer:
    """The server side of one SCRAM-SHA-256(-PLUS) exchange, checked like PostgreSQL.

    Typical use::

        server = ScramServer(secret, channel_binding=cb)      # cb: None without TLS
        send(AuthenticationSASL(mechanisms=server.mechanisms))
        first = server.receive_client_first(initial.mechanism, initial.data)
        send(AuthenticationSASLContinue(data=first))
        final = server.receive_client_final(response.data)    # raises unless proven
        send(AuthenticationSASLFinal(data=final)); send(AuthenticationOk())

    If a SASLInitialResponse carries no data, PostgreSQL answers with an empty
    AuthenticationSASLContinue; do the same and pass the next SASLResponse's
    data to :meth:`receive_client_first`.

    ``secret`` is a :class:`~pgwire.auth.stored.ScramSecret`; or a ``str``
    starting with ``SCRAM-SHA-256$``, parsed strictly as a stored secret; or
    any other ``str``/``bytes``, taken as the cleartext password (a secret
    with a fresh salt and 4096 iterations is made from it). An MD5 secret
    cannot do SCRAM: for such users, and for users that do not exist, use
    :func:`~pgwire.auth.stored.mock_scram_secret` so the exchange fails like
    a wrong password without revealing which case it was.

    ``channel_binding`` is the hash of *our* TLS certificate; with it, PLUS
    is offered (unless ``offered_plus=False``). ``user`` only names the user
    in the 28P01 message, as PostgreSQL does. ``nonce`` is the server's part
    of the nonce, for test vectors only.

    Raises:
        ValueError: a malformed stored secret, an MD5 secret, an empty
            password, or ``offered_plus=True`` without ``channel_binding``.
    """

    __slots__ = (
        "_cbind_data",
        "_cbind_flag",
        "_client_first_bare",
        "_client_nonce",
        "_gs2_header",
        "_keys",
        "_offered_plus",
        "_secret",
        "_server_first",
        "_server_nonce",
        "_state",
        "_user",
        "mechanism",
    )

    def __init__(
        self,
        secret: ScramSecret | str | bytes,
        *,
        channel_binding: ChannelBinding | None = None,
        offered_plus: bool | None = None,
        user: str | None = None,
        nonce: str | None = None,
    ) -> None:
        if offered_plus is None:
            offered_plus = channel_binding is not None
        if offered_plus and channel_binding is None:
            raise ValueError("offering SCRAM-SHA-256-PLUS needs the channel binding data")
        if isinstance(secret, str) and secret.startswith("SCRAM-SHA-256$"):
            secret = ScramSecret.parse(secret)
        elif isinstance(secret, str) and is_md5_secret(secret):
            raise ValueError(
                "an MD5 secret cannot be used for SCRAM authentication; authenticate this "
                "user with MD5, or store a SCRAM secret (or use mock_scram_secret to fail "
                "the exchange like a wrong password)"
            )
        elif not isinstance(secret, ScramSecret):
            if not secret:
                raise ValueError(
                    "an empty password never authenticates (PostgreSQL refuses them too); "
                    "use mock_scram_secret to fail the exchange like a wrong password"
                )
            secret = ScramSecret.from_password(secret, iterations=DEFAULT_ITERATIONS)
        self._secret = secret
        self._cbind_data = channel_binding.data if channel_binding is not None else b""
        self._offered_plus = offered_plus
        self._user = user
        self._server_nonce = _nonce_argument(nonce)
        #: The mechanism the client chose, once known.
        self.mechanism: str | None = None
        self._cbind_flag = b""
        self._gs2_header = b""
        self._client_first_bare = b""
        self._client_nonce = b""
        self._server_first = b""
        self._keys: ScramKeys | None = None
        self._state = "initial"

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """The mechanisms to offer in AuthenticationSASL, PLUS first as PostgreSQL does."""
        if self._offered_plus:
            return (SCRAM_SHA_256_PLUS, SCRAM_SHA_256)
        return (SCRAM_SHA_256,)

    @property
    def authenticated(self) -> bool:
        """True once the client's proof was verified."""
        return self._state == "done"

    @property
    def channel_bound(self) -> bool:
        """True once a SCRAM-SHA-256-PLUS client proved it sees our certificate."""
        return self.authenticated and self.mechanism == SCRAM_SHA_256_PLUS

    @property
    def keys(self) -> ScramKeys | None:
        """The client's ClientKey and our ServerKey after a successful exchange, else None.

        With these a proxy can log in upstream as this user (see
        :class:`ScramClient`), if the upstream server stores the same secret.
        """
        return self._keys if self._state == "done" else None

    def _advance(self, expected: str, action: str) -> None:
        if self._state != expected:
            if self._state == "failed":
                raise LocalProtocolError(
                    "this SCRAM exchange already failed; start a new one with a new ScramServer"
                )
            raise LocalProtocolError(
                f"cannot {action} now: the SCRAM server is in state {self._state!r}"
            )

    def receive_client_first(self, mechanism: str, data: bytes) -> bytes:
        """Check the client's choice and client-first message; return server-first.

        Raises:
            ScramError: an unoffered mechanism or malformed message (08P01), an
                authorization identity or extension (0A000), or ``y`` while we
                offered PLUS — a downgrade (28000).
        """
        self._advance("initial", "receive the client-first message")
        try:
            return self._client_first(mechanism, data)
        except ProtocolError:
            self._state = "failed"
            raise

    def _client_first(self, mechanism: str, data: bytes) -> bytes:
        if mechanism == SCRAM_SHA_256_PLUS and self._offered_plus:
            plus = True
        elif mechanism == SCRAM_SHA_256:
            plus = False
        else:
            raise ScramError("client selected an invalid SASL authentication mechanism")
        self.mechanism = mechanism
        what = "client-first-message"
        message = _check_payload(data, what)
        flag = message[:1]
        if flag in (b"n", b"y"):
            if plus:
                raise _malformed(
                    f"the client selected {SCRAM_SHA_256_PLUS}, but the SCRAM message does "
                    "not include channel binding data"
                )
            if flag == b"y" and self._offered_plus:
                raise ScramError(
                    "SCRAM channel binding negotiation error: the client supports SCRAM "
                    "channel binding but thinks the server does not; this server does "
                    "(a man in the middle may have removed SCRAM-SHA-256-PLUS)",
                    SQLSTATE_INVALID_AUTHORIZATION_SPECIFICATION,
                )
            if message[1:2] != b",":
                raise _malformed(f"comma expected after the channel-binding flag in the {what}")
            position = 2
        elif flag == b"p":
            if not plus:
                raise _malformed(
                    f"the client selected {SCRAM_SHA_256} without channel binding, but the "
                    "SCRAM message includes channel binding data"
                )
            comma = message.find(b",")
            end = comma if comma >= 0 else len(message)
            if not message.startswith(b"p="):
                raise _malformed(f'expected character "=" after "p" in the {what}')
            cbind_name = message[2:end]
            if cbind_name != _CBIND_NAME:
                raise ScramError(f"unsupported SCRAM channel-binding type {_show(cbind_name)}")
            position = end + 1 if comma >= 0 else end
        else:
            raise _malformed(f"unexpected channel-binding flag {_show(flag)}")
        if message[position:position + 1] == b"a":
            raise ScramError(
                "client uses authorization identity, but it is not supported",
                SQLSTATE_FEATURE_NOT_SUPPORTED,
            )
        if message[position:position + 1] != b",":
            raise _malformed(f"unexpected attribute after the channel-binding flag in the {what}")
        gs2_header = message[:position + 1]
        bare = message[position + 1:]
        if bare.startswith(b"m"):
            raise ScramError(
                "client requires an unsupported SCRAM extension", SQLSTATE_FEATURE_NOT_SUPPORTED
            )
        pairs = _attributes(bare, what) if bare else []
        _expect_attribute(pairs, 0, b"n", what)  # ignored: the StartupMessage's user counts
        client_nonce = _expect_attribute(pairs, 1, b"r", what)
        if not _PRINTABLE.fullmatch(client_nonce):
            raise _malformed("the client nonce is empty or has non-printable characters")
        self._cbind_flag = flag
        self._gs2_header = gs2_header
        self._client_first_bare = bare
        self._client_nonce = client_nonce
        secret = self._secret
        self._server_first = (
            b"r=" + client_nonce + self._server_nonce
            + b",s=" + base64.b64encode(secret.salt)
            + b",i=" + str(secret.iterations).encode("ascii")
        )
        self._state = "first-received"
        return self._server_first

    def receive_client_final(self, data: bytes) -> bytes:
        """Check the client-final message and its proof; return server-final.

        Raises:
            ScramError: malformed message or nonce mismatch (08P01), channel
                binding data that does not match ours (28000).
            AuthenticationFailed: the proof is wrong (28P01).
        """
        self._advance("first-received", "receive the client-final message")
        try:
            result = self._client_final(data)
        except ProtocolError:
            self._state = "failed"
            raise
        self._state = "done"
        return result

    def _client_final(self, data: bytes) -> bytes:
        what = "client-final-message"
        message = _check_payload(data, what)
        proof_at = message.rfind(b",p=")
        pairs = _attributes(message, what)
        channel_binding = _expect_attribute(pairs, 0, b"c", what)
        expected_cbind = base64.b64encode(
            self._gs2_header + (self._cbind_data if self._cbind_flag == b"p" else b"")
        )
        if not hmac.compare_digest(channel_binding, expected_cbind):
            if self._cbind_flag == b"p":
                raise ScramError(
                    "SCRAM channel binding check failed: the client saw a different server "
                    "certificate (a man in the middle, or a TLS-terminating proxy)",
                    SQLSTATE_INVALID_AUTHORIZATION_SPECIFICATION,
                )
            raise ScramError(
                "unexpected SCRAM channel-binding attribute in client-final-message"
            )
        final_nonce = _expect_attribute(pairs, 1, b"r", what)
        if len(pairs) < 3 or pairs[-1][0] != b"p":
            raise _malformed(f'the {what} must end with the proof attribute "p"')
        if any(name == b"p" for name, _ in pairs[2:-1]):
            raise _malformed(f'garbage found after the proof in the {what}')
        proof = b64decode_strict(pairs[-1][1])
        if proof is None or len(proof) != _KEY_LENGTH:
            raise _malformed(f"malformed proof in {what}")
        expected_nonce = self._client_nonce + self._server_nonce
        if not hmac.compare_digest(final_nonce, expected_nonce):
            raise ScramError("invalid SCRAM response: nonce does not match")
        without_proof = message[:proof_at]
        auth_message = self._client_first_bare + b"," + self._server_first + b"," + without_proof
        secret = self._secret
        client_signature = _hmac(secret.stored_key, auth_message)
        client_key = _xor(proof, client_signature)
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), secret.stored_key):
            who = f' for user "{self._user}"' if self._user is not None else ""
            raise AuthenticationFailed(f"password authentication failed{who}")
        self._keys = ScramKeys(client_key=client_key, server_key=secret.server_key)
        server_signature = _hmac(secret.server_key, auth_message)
        return b"v=" + base64.b64encode(server_signature)

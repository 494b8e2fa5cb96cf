"""SASLprep (RFC 4013) the way PostgreSQL applies it to SCRAM passwords.

PostgreSQL (``src/common/saslprep.c``) departs from the RFC in ways that decide
whether a password hashes to the same key on both sides, so we copy its
behaviour, not the RFC's letter:

* A pure-ASCII password is used unchanged — control characters included, and
  the empty password too. Only a password with a non-ASCII character goes
  through the steps below.
* Mapping: non-ASCII spaces (RFC 3454 table C.1.2) become U+0020, and the
  "commonly mapped to nothing" characters (table B.1) are removed.
* Normalisation: NFKC of the mapped string.
* The prohibited-output, unassigned-code-point (table A.1, Unicode 3.2) and
  bidirectional checks are made on the *mapped* string before NFKC, not on the
  normalised output. A string that maps to nothing is prohibited.

Where SASLprep fails — the password is not valid UTF-8, or it contains a
prohibited character — PostgreSQL hashes the raw bytes instead (a password in
another encoding must still work). :func:`prepare_password` does the same;
:func:`saslprep` is the strict step that raises.
"""

from __future__ import annotations

import stringprep
import unicodedata

__all__ = ["SaslprepError", "prepare_password", "saslprep"]


class SaslprepError(ValueError):
    """The string contains a character SASLprep prohibits, or maps to nothing.

    :func:`prepare_password` catches this and falls back to the raw bytes, as
    PostgreSQL does; only callers of :func:`saslprep` see it.
    """


def _prohibited(char: str) -> str | None:
    """Name of the RFC 3454 table that prohibits ``char`` in SASLprep output, or None."""
    checks = (
        (stringprep.in_table_c12, "C.1.2 (non-ASCII space)"),
        (stringprep.in_table_c21_c22, "C.2 (control character)"),
        (stringprep.in_table_c3, "C.3 (private use)"),
        (stringprep.in_table_c4, "C.4 (non-character code point)"),
        (stringprep.in_table_c5, "C.5 (surrogate code point)"),
        (stringprep.in_table_c6, "C.6 (inappropriate for plain text)"),
        (stringprep.in_table_c7, "C.7 (inappropriate for canonical representation)"),
        (stringprep.in_table_c8, "C.8 (changes display properties or deprecated)"),
        (stringprep.in_table_c9, "C.9 (tagging character)"),
        (stringprep.in_table_a1, "A.1 (unassigned in Unicode 3.2)"),
    )
    for in_table, name in checks:
        if in_table(char):
            return name
    return None


def saslprep(text: str) -> str:
    """Prepare ``text`` with SASLprep exactly as PostgreSQL's ``pg_saslprep`` does.

    Returns the prepared string. Pure ASCII comes back unchanged, as in
    PostgreSQL (the RFC would reject control characters; PostgreSQL skips the
    whole algorithm for ASCII input).

    Raises:
        SaslprepError: a prohibited or unassigned character, a bidirectional
            rule broken, or a string that maps to nothing.
    """
    if text.isascii():
        return text
    mapped = "".join(
        " " if stringprep.in_table_c12(char) else char
        for char in text
        if stringprep.in_table_c12(char) or not stringprep.in_table_b1(char)
    )
    if not mapped:
        raise SaslprepError("the password maps to nothing under SASLprep")
    normalized = unicodedata.normalize("NFKC", mapped)
    # PostgreSQL checks the mapped string, not the normalised one (see module doc).
    for char in mapped:
        table = _prohibited(char)
        if table is not None:
            raise SaslprepError(
                f"U+{ord(char):04X} is prohibited by SASLprep (RFC 3454 table {table})"
            )
    if any(stringprep.in_table_d1(char) for char in mapped):
        if any(stringprep.in_table_d2(char) for char in mapped):
            raise SaslprepError(
                "the password mixes right-to-left and left-to-right characters"
            )
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            raise SaslprepError(
                "a password with right-to-left characters must start and end with one"
            )
    return normalized


def prepare_password(password: str | bytes) -> bytes:
    """The bytes SCRAM hashes for ``password``, as PostgreSQL computes them.

    A ``str`` is encoded as UTF-8 (lone surrogates pass through as their
    three-byte forms, which are not valid UTF-8 and so are hashed raw). When
    the bytes are valid UTF-8 and :func:`saslprep` accepts them, the result is
    the prepared string in UTF-8; otherwise it is the bytes unchanged — the
    fallback PostgreSQL's server and libpq both apply.
    """
    raw = password.encode("utf-8", "surrogatepass") if isinstance(password, str) else password
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(raw)
    try:
        return saslprep(text).encode("utf-8")
    except SaslprepError:
        return bytes(raw)

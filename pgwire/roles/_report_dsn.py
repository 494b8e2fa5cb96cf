"""Connection strings for ``pgwire roles``: libpq keyword/value and URI forms.

Both forms follow libpq's `Connection Strings
<https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING>`_:

- ``host=db.internal port=5432 user=report dbname=app sslmode=require``:
  ``key = value`` pairs separated by spaces; a value with spaces is quoted
  with single quotes, and ``\\'`` and ``\\\\`` escape a quote and a backslash;
- ``postgresql://user:secret@host:5432/app?sslmode=require`` (or
  ``postgres://``), with percent-encoding and ``[::1]`` for IPv6 hosts.

Strict on purpose: an unknown keyword, a duplicate, a missing ``=``, an
unterminated quote, a bad port or several hosts is a :class:`DSNError`, not a
guess. Only the keywords this tool uses are accepted.
"""

from __future__ import annotations

import getpass
import os
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ..sqlclient import Address, SQLConnection
from ..tls import SSLMODES, SSLMode, client_context

__all__ = ["KEYWORDS", "ConnInfo", "DSNError", "parse_dsn", "resolve_conninfo"]

#: The keywords accepted, in both forms.
KEYWORDS: Final = ("host", "hostaddr", "port", "user", "dbname", "password", "sslmode",
                   "sslrootcert", "sslcert", "sslkey", "connect_timeout", "application_name")


class DSNError(ValueError):
    """A connection string that cannot be read; the message says where and why."""


def parse_dsn(text: str) -> dict[str, str]:
    """The keywords of a connection string (either form), unchecked values as text.

    Raises:
        DSNError: the string is malformed or names an unknown keyword.
    """
    if text.startswith(("postgresql://", "postgres://")):
        return _parse_uri(text)
    return _parse_keywords(text)


def _parse_keywords(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    position = 0
    length = len(text)
    while True:
        while position < length and text[position].isspace():
            position += 1
        if position >= length:
            return found
        start = position
        while position < length and not text[position].isspace() and text[position] != "=":
            position += 1
        key = text[start:position]
        while position < length and text[position].isspace():
            position += 1
        if position >= length or text[position] != "=":
            raise DSNError(f'missing "=" after {key!r} in the connection string')
        position += 1
        while position < length and text[position].isspace():
            position += 1
        value_chars: list[str] = []
        if position < length and text[position] == "'":
            position += 1
            while True:
                if position >= length:
                    raise DSNError(f"unterminated quoted value for {key!r}")
                char = text[position]
                if char == "\\" and position + 1 < length:
                    value_chars.append(text[position + 1])
                    position += 2
                    continue
                position += 1
                if char == "'":
                    break
                value_chars.append(char)
            if position < length and not text[position].isspace():
                raise DSNError(f"text right after the closing quote of {key!r}; separate "
                               "pairs with spaces, and write a quote inside a value as \\'")
        else:
            while position < length and not text[position].isspace():
                char = text[position]
                if char == "\\" and position + 1 < length:
                    value_chars.append(text[position + 1])
                    position += 2
                    continue
                if char == "'":
                    raise DSNError(f"a quote inside the unquoted value of {key!r}; quote the "
                                   "whole value: key='...'")
                value_chars.append(char)
                position += 1
        _add(found, key, "".join(value_chars))


def _add(found: dict[str, str], key: str, value: str) -> None:
    if not key:
        raise DSNError('a value without a keyword (" =" ) in the connection string')
    if key not in KEYWORDS:
        raise DSNError(f"unknown connection keyword {key!r}; pgwire roles takes: "
                       f"{', '.join(KEYWORDS)}")
    if key in found:
        raise DSNError(f"{key!r} appears twice in the connection string")
    if "\0" in value:
        raise DSNError(f"the value of {key!r} contains a NUL character")
    found[key] = value


def _parse_uri(text: str) -> dict[str, str]:
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as exc:
        raise DSNError(f"not a valid connection URI: {exc}") from None
    if parts.fragment:
        raise DSNError("a connection URI takes no #fragment")
    found: dict[str, str] = {}
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        hostport, userinfo = netloc, ""
    if "," in hostport:
        raise DSNError("several hosts in one URI are not supported: give one host")
    if userinfo:
        user, colon, password = userinfo.partition(":")
        if user:
            _add(found, "user", urllib.parse.unquote(user, errors="strict"))
        if colon:
            _add(found, "password", urllib.parse.unquote(password, errors="strict"))
    try:
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise DSNError(f"bad host or port in the URI: {exc}") from None
    if host:
        # urlsplit lower-cases the host; keep what was written (minus brackets).
        written = hostport.rsplit("]", 1)[0].lstrip("[") if hostport.startswith("[") else (
            hostport.rsplit(":", 1)[0] if port is not None else hostport)
        _add(found, "host", urllib.parse.unquote(written, errors="strict"))
    if port is not None:
        _add(found, "port", str(port))
    path = parts.path
    if path not in ("", "/"):
        _add(found, "dbname", urllib.parse.unquote(path[1:], errors="strict"))
    if parts.query:
        try:
            pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True,
                                           strict_parsing=True, errors="strict")
        except (ValueError, UnicodeDecodeError) as exc:
            raise DSNError(f"bad query string in the URI: {exc}") from None
        for key, value in pairs:
            _add(found, key, value)
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnInfo:
    """Where and how to connect, every default filled in."""

    host: str
    port: int
    user: str
    dbname: str
    password: str | None = None
    sslmode: SSLMode = "prefer"
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    connect_timeout: float = 10.0
    application_name: str = "pgwire roles"

    def __repr__(self) -> str:  # never show the password
        return (f"ConnInfo(host={self.host!r}, port={self.port}, user={self.user!r}, "
                f"dbname={self.dbname!r}, sslmode={self.sslmode!r})")

    @property
    def address(self) -> Address:
        """``(host, port)``, or the Unix socket path for a host starting with ``/``."""
        if self.host.startswith("/"):
            return f"{self.host.rstrip('/')}/.s.PGSQL.{self.port}"
        return (self.host, self.port)

    def describe(self) -> str:
        """``user@host:port/dbname`` for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}/{self.dbname}"

    def connect(self) -> SQLConnection:
        """Log in (blocking). Raises what :meth:`SQLConnection.connect` raises."""
        context: ssl.SSLContext | None = None
        sslmode = self.sslmode
        unix = self.host.startswith("/")
        if unix:
            sslmode = "disable"  # as libpq: no TLS over a Unix socket
        elif self.sslrootcert or self.sslcert:
            context = client_context(sslmode, sslrootcert=self.sslrootcert,
                                     sslcert=self.sslcert, sslkey=self.sslkey)
        return SQLConnection.connect(
            self.address, user=self.user, password=self.password, database=self.dbname,
            sslmode=sslmode, ssl_context=context,
            server_hostname=None if unix else self.host,
            parameters={"application_name": self.application_name},
            timeout=self.connect_timeout)


def resolve_conninfo(dsn: str | None = None, *, host: str | None = None,
                     port: int | None = None, user: str | None = None,
                     dbname: str | None = None,
                     environ: Mapping[str, str] | None = None) -> ConnInfo:
    """Combine a connection string, flags and libpq's environment variables.

    Flags win over the string, the string over ``PGHOST``, ``PGPORT``,
    ``PGUSER``, ``PGDATABASE``, ``PGPASSWORD`` and ``PGSSLMODE``; then the
    defaults: host 127.0.0.1, port 5432, user the OS user, dbname the user.

    Raises:
        DSNError: a malformed string or a value out of range.
    """
    env = os.environ if environ is None else environ
    given = parse_dsn(dsn) if dsn else {}
    for key, value in (("host", host), ("port", None if port is None else str(port)),
                       ("user", user), ("dbname", dbname)):
        if value is not None:
            given[key] = value
    for key, variable in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"),
                          ("dbname", "PGDATABASE"), ("password", "PGPASSWORD"),
                          ("sslmode", "PGSSLMODE")):
        if key not in given and env.get(variable):
            given[key] = env[variable]
    target = given.get("hostaddr") or given.get("host") or "127.0.0.1"
    if "," in target:
        raise DSNError("several hosts are not supported: give one host")
    port_text = given.get("port", "5432")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise DSNError(f"port must be a number from 1 to 65535, not {port_text!r}")
    sslmode = given.get("sslmode", "prefer")
    if sslmode not in SSLMODES:
        raise DSNError(f"sslmode must be one of {', '.join(SSLMODES)}, not {sslmode!r}")
    timeout_text = given.get("connect_timeout", "10")
    if not timeout_text.isdigit() or int(timeout_text) == 0:
        raise DSNError(f"connect_timeout must be a positive whole number of seconds, not "
                       f"{timeout_text!r}")
    os_user = given.get("user") or _os_user()
    return ConnInfo(host=target, port=int(port_text), user=os_user,
                    dbname=given.get("dbname") or os_user,
                    password=given.get("password"), sslmode=sslmode,
                    sslrootcert=given.get("sslrootcert"), sslcert=given.get("sslcert"),
                    sslkey=given.get("sslkey"), connect_timeout=float(timeout_text),
                    application_name=given.get("application_name", "pgwire roles"))


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise DSNError("no user given and the OS user is unknown: pass --user") from None

"""Errors and events shared by the client and server login logic."""

from __future__ import annotations

from dataclasses import dataclass

from .protocol import RemoteProtocolError

__all__ = ["Authenticated", "LoginFailed", "LoginRefused"]


class LoginRefused(RemoteProtocolError):
    """We refuse to go on with a login: the peer asked for something our
    policy forbids (a cleartext password over plaintext, no TLS under
    ``sslmode=require``, no channel binding under ``channel_binding=require``)
    or that we do not support (GSSAPI). ``sqlstate`` says which class of fault:
    08001 cannot establish a connection, 28000 authorization, 0A000 unsupported.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class Authenticated:
    """Server-side event: the client proved who it is.

    ``method`` is ``trust``, ``password``, ``md5``, ``scram-sha-256``,
    ``scram-sha-256-plus`` or ``cert``; ``channel_bound`` says whether SCRAM
    was bound to the TLS channel. Next, send ParameterStatus messages,
    BackendKeyData and ReadyForQuery.
    """

    user: str
    database: str
    method: str
    channel_bound: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginFailed:
    """Server-side event: the login was refused and the client was sent this
    FATAL error. Send what ``data_to_send()`` holds, then close."""

    sqlstate: str
    message: str

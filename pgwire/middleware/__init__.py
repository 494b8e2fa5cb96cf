"""Middleware for the proxy: the API every middleware is written against.

See :mod:`pgwire.middleware.base` and ``docs/middleware.md``.
"""

from .base import (
    FORWARD,
    AuthResult,
    Context,
    Forward,
    Inject,
    JobOutcome,
    Middleware,
    QueryResult,
    Reject,
    Replace,
    Respond,
    SessionInfo,
    StartupVerdict,
    Verdict,
)

__all__ = [
    "FORWARD",
    "AuthResult",
    "Context",
    "Forward",
    "Inject",
    "JobOutcome",
    "Middleware",
    "QueryResult",
    "Reject",
    "Replace",
    "Respond",
    "SessionInfo",
    "StartupVerdict",
    "Verdict",
]

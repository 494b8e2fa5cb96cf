"""Audit records: one frozen dataclass per kind of event.

Every record carries the same who-and-where fields (:class:`AuditRecord`);
each subclass adds what its event needs. :meth:`AuditRecord.as_dict` gives
the JSON-ready form that every sink writes, with the event's name under
``"event"``.

The data path does not build records: the Audit middleware captures a
:data:`Fact` (a tuple: the record class, the clock in nanoseconds, the
session's fixed fields, the values that change) and the queue's thread
turns it into the record with :func:`build_record`, formatting the time
there. Turning a record into JSON happens in that thread too.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, TypeAlias

__all__ = [
    "EVENTS",
    "AuditRecord",
    "AuthRecord",
    "BindRecord",
    "CompletionRecord",
    "ConnectRecord",
    "DisconnectRecord",
    "ErrorRecord",
    "ExecuteRecord",
    "Fact",
    "FunctionCallRecord",
    "ParseRecord",
    "QueryRecord",
    "RoleChangeRecord",
    "RoleDecisionRecord",
    "RoleMappingRecord",
    "TLSRecord",
    "Who",
    "build_record",
    "format_time",
    "rows_from_tag",
    "utc_now",
]


# The formatted second, cached: records are made on the data path.
_second_cache: tuple[int, str] = (-1, "")


def format_time(nanoseconds: int) -> str:
    """``time.time_ns()`` as UTC ISO 8601 with microseconds: ``2024-05-01T12:00:00.123456Z``."""
    global _second_cache  # noqa: PLW0603 - a one-entry cache; a tuple swap is atomic
    second, nanoseconds = divmod(nanoseconds, 1_000_000_000)
    cached_second, prefix = _second_cache
    if second != cached_second:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache = (second, prefix)
    return f"{prefix}.{nanoseconds // 1000:06d}Z"


def utc_now() -> str:
    """The current time as UTC ISO 8601 with microseconds: ``2024-05-01T12:00:00.123456Z``."""
    return format_time(time.time_ns())


def rows_from_tag(tag: str) -> int | None:
    """The row count of a CommandComplete tag, or None when the tag has none.

    ``INSERT 0 5`` -> 5, ``SELECT 3`` -> 3, ``COPY 7`` -> 7, ``CREATE TABLE`` -> None.
    """
    _, _, last = tag.rpartition(" ")
    if last.isdigit() and last.isascii():
        return int(last)
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """What every record says: when, which session, and who.

    - ``time``: UTC, ISO 8601 with microseconds;
    - ``session_id``: the proxy's number for the session (unique per proxy process);
    - ``proxy_pid``: that proxy process (one per worker);
    - ``client_address``: ``host:port`` (``[v6]:port``) or a Unix socket path;
    - ``startup_user``: the ``user`` of the client's own StartupMessage;
    - ``upstream_role``: the role the proxy logged in as upstream;
    - ``effective_role``: ``current_user`` at that moment, when a role tracker
      (the RoleGuard's) keeps it; None when nobody tracks it;
    - ``backend_pid``: the upstream server process, once logged in;
    - ``database``: the upstream database;
    - ``application_name``: as the server reports it now (or as the client
      asked for it, before login).
    """

    #: The event's name in the ``event`` field.
    event: ClassVar[str] = ""

    time: str
    session_id: int
    #: The proxy process (worker) the session ran in: with ``session_id`` it
    #: names a session uniquely across the workers of one host.
    proxy_pid: int = field(default_factory=os.getpid)
    client_address: str | None = None
    startup_user: str | None = None
    upstream_role: str | None = None
    effective_role: str | None = None
    backend_pid: int | None = None
    database: str | None = None
    application_name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data: ``event`` first, then every field."""
        data: dict[str, Any] = {"event": self.event}
        for name in _field_names(type(self)):
            value = getattr(self, name)
            data[name] = list(value) if isinstance(value, tuple) else value
        return data


_FIELD_NAMES: dict[type[AuditRecord], tuple[str, ...]] = {}


def _field_names(cls: type[AuditRecord]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectRecord(AuditRecord):
    """A client connected (before TLS or its startup packet; cancel requests too)."""

    event: ClassVar[str] = "connect"


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSRecord(AuditRecord):
    """The client's TLS handshake finished: what it established.

    ``server_name`` is the SNI the client sent; the client certificate fields
    are set only when it presented one (the subject's commonName only when
    the certificate was verified).
    """

    event: ClassVar[str] = "tls"

    tls_version: str | None = None
    cipher: str | None = None
    alpn_protocol: str | None = None
    server_name: str | None = None
    client_certificate_cn: str | None = None
    client_certificate_sha256: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthRecord(AuditRecord):
    """The login ended: ``ok``, the client's authentication ``method`` as the
    proxy saw it (``passthrough`` when the server's exchange was relayed),
    and on failure the ``sqlstate`` and ``message``."""

    event: ClassVar[str] = "auth"

    ok: bool
    method: str
    sqlstate: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleMappingRecord(AuditRecord):
    """Who the client said it was, and which role the proxy logged in as.

    ``startup_user`` -> ``upstream_role`` (the common fields), with
    ``client_database`` (what the client asked for) -> ``database``;
    ``mapped`` is True when the role differs from the startup user.
    """

    event: ClassVar[str] = "role_mapping"

    client_database: str | None = None
    mapped: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryRecord(AuditRecord):
    """A simple-protocol Query: the text as sent (literals included).

    ``request`` numbers the session's requests (Query, Execute, FunctionCall);
    its :class:`CompletionRecord` carries the same number.
    """

    event: ClassVar[str] = "query"

    request: int
    sql: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ParseRecord(AuditRecord):
    """A Parse: the prepared statement's name (``""`` is the unnamed one), its
    text, and the parameter type OIDs the client declared (0: left to the server)."""

    event: ClassVar[str] = "parse"

    statement_name: str
    sql: str
    parameter_types: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BindRecord(AuditRecord):
    """A Bind: which statement goes into which portal, and its parameters.

    ``parameter_types`` are the OIDs the statement's Parse declared (0:
    unspecified), ``parameter_formats`` ``text`` or ``binary`` per parameter.
    ``parameters`` holds the values as the redaction policy (``redaction``)
    allows: None when values are redacted, else one string (or None for
    NULL) per parameter. ``sql`` is None when the statement was prepared
    before the proxy saw it (or forgotten).
    """

    event: ClassVar[str] = "bind"

    portal: str
    statement_name: str
    sql: str | None
    parameter_count: int
    parameter_types: tuple[int, ...] = ()
    parameter_formats: tuple[str, ...] = ()
    parameters: tuple[str | None, ...] | None = None
    redaction: str = "all"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecuteRecord(AuditRecord):
    """An Execute: the portal and the statement text it runs (``max_rows`` 0: all rows)."""

    event: ClassVar[str] = "execute"

    request: int
    portal: str
    statement_name: str | None
    sql: str | None
    max_rows: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionCallRecord(AuditRecord):
    """A FunctionCall (the protocol's fast path): a function by OID, with arguments
    redacted like Bind parameters."""

    event: ClassVar[str] = "function_call"

    request: int
    function_oid: int
    argument_count: int
    arguments: tuple[str | None, ...] | None = None
    redaction: str = "all"


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionRecord(AuditRecord):
    """A request's outcome: one per :class:`QueryRecord`, :class:`ExecuteRecord`
    and :class:`FunctionCallRecord`, with the same ``request`` number.

    ``status``:

    - ``ok``: it ran (``command_tags`` has a tag per statement it ran);
    - ``error``: the server (or a middleware's rejection) refused it; ``sqlstate``;
    - ``empty``: an empty query string;
    - ``suspended``: an Execute stopped at ``max_rows`` (the portal lives on);
    - ``skipped``: an Execute after an earlier error of its extended-protocol
      batch: the server skipped it and it never ran;
    - ``unfinished``: the session ended before the answer came.

    ``duration`` is in seconds from when the proxy got the request to when it
    got the answer (for pipelined requests it includes the wait behind the
    earlier ones). ``rows`` is the sum of the counts in the command tags (the
    last number of ``INSERT 0 5``, ``SELECT 3``...), None when no tag has one.
    """

    event: ClassVar[str] = "complete"

    request: int
    kind: str
    sql: str | None
    status: str
    duration: float
    rows: int | None = None
    command_tags: tuple[str, ...] = ()
    sqlstate: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorRecord(AuditRecord):
    """An ErrorResponse the client got, with the request it answered (None when
    it answered none: a batch's Parse or Bind, or a FATAL at any time)."""

    event: ClassVar[str] = "error"

    request: int | None
    sql: str | None
    severity: str | None
    sqlstate: str | None
    message: str | None
    detail: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleDecisionRecord(AuditRecord):
    """The role guard allowed or refused a role-changing statement.

    ``kind`` (``set_role``, ``set_config``...), ``target`` (the role asked
    for, when the statement names one), ``reason`` and ``policy`` come from
    the guard.
    """

    event: ClassVar[str] = "role_decision"

    sql: str
    kind: str
    target: str | None
    allowed: bool
    reason: str
    policy: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleChangeRecord(AuditRecord):
    """The effective role or session user changed (``verified``: asked of the server)."""

    event: ClassVar[str] = "role_change"

    before_current: str | None
    after_current: str | None
    before_session: str | None
    after_session: str | None
    sql: str | None
    verified: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DisconnectRecord(AuditRecord):
    """The session ended: why, and its counters.

    ``statements`` counts requests (Query, Execute, FunctionCall), ``errors``
    the ErrorResponses the client got, ``rows`` the rows of every command
    tag, ``duration`` the session's length in seconds.
    """

    event: ClassVar[str] = "disconnect"

    reason: str
    statements: int = 0
    errors: int = 0
    rows: int = 0
    duration: float = 0.0


#: Every record class by its event name.
EVENTS: Final[dict[str, type[AuditRecord]]] = {
    cls.event: cls for cls in (
        ConnectRecord, TLSRecord, AuthRecord, RoleMappingRecord, QueryRecord, ParseRecord,
        BindRecord, ExecuteRecord, FunctionCallRecord, CompletionRecord, ErrorRecord,
        RoleDecisionRecord, RoleChangeRecord, DisconnectRecord,
    )
}


#: A session's fields that stay put once it is logged in, in this order:
#: ``session_id``, ``proxy_pid``, ``client_address``, ``startup_user``,
#: ``upstream_role``, ``backend_pid``, ``database``.
Who: TypeAlias = tuple[int, int, str | None, str | None, str | None, int | None, str | None]
#: A record as the data path captures it: its class, ``time.time_ns()``, the
#: session's :data:`Who`, ``effective_role``, ``application_name``, and the
#: class's own fields (those :class:`AuditRecord` lacks) in declaration order.
Fact: TypeAlias = tuple[type[AuditRecord], int, Who, str | None, str | None, tuple[Any, ...]]

_SETTERS: dict[type[AuditRecord], tuple[Any, ...]] = {}


def fact_values(fact: Fact) -> tuple[Any, ...]:
    """The values of the record a :data:`Fact` stands for, in field order."""
    _, nanoseconds, who, effective_role, application_name, own = fact
    return (format_time(nanoseconds), who[0], who[1], who[2], who[3], who[4], effective_role,
            who[5], who[6], application_name, *own)


def build_record(fact: Fact) -> AuditRecord:
    """The record a :data:`Fact` stands for.

    Its fields are set through their slots, as the dataclass's own
    ``__init__`` would set them, without the keyword arguments' dict.
    """
    cls = fact[0]
    setters = _SETTERS.get(cls)
    if setters is None:
        setters = _SETTERS[cls] = tuple(_slot_setter(cls, name) for name in _field_names(cls))
    values = fact_values(fact)
    if len(values) != len(setters):
        raise ValueError(f"a {cls.__name__} has {len(setters)} fields, the fact "
                         f"{len(values)} values")
    record = object.__new__(cls)
    for setter, value in zip(setters, values, strict=True):
        setter(record, value)
    return record


def _slot_setter(cls: type[AuditRecord], name: str) -> Any:
    for klass in cls.__mro__:
        slot = klass.__dict__.get(name)
        if slot is not None:
            return slot.__set__
    raise TypeError(f"{cls.__name__} has no slot {name!r}")  # pragma: no cover

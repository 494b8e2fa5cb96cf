"""Audit: a record of who ran what, as which role, and what came of it.

:class:`Audit` watches a session and writes records (:mod:`pgwire.audit`)
for its connection, TLS, login, role mapping, every statement of the simple
and extended protocols, every outcome and error, role decisions and changes
the role guard publishes, and its end. Records go through a bounded queue to
a sink on a background thread, never on the data path.

Put it first in the chain: it then sees what the client really sent and
what the client really got (the role guard's rejections included). See
``docs/audit.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..audit._queue import AuditQueue, AuditStats, WhenFull
from ..audit._records import (
    AuditRecord,
    AuthRecord,
    BindRecord,
    CompletionRecord,
    ConnectRecord,
    DisconnectRecord,
    ErrorRecord,
    ExecuteRecord,
    Fact,
    FunctionCallRecord,
    ParseRecord,
    QueryRecord,
    RoleChangeRecord,
    RoleDecisionRecord,
    RoleMappingRecord,
    TLSRecord,
    Who,
    rows_from_tag,
    utc_now,
)
from ..audit._sinks import Sink, make_sink
from ..protocol import (
    Bind,
    Close,
    CommandComplete,
    ErrorResponse,
    Execute,
    FunctionCall,
    Message,
    Parse,
    Query,
    StartupMessage,
    python_encoding,
)
from ..roles._state import RoleChange, RoleDecision, RoleEvent
from ..roles._tracker import RoleTracker
from .base import AuthResult, Context, Middleware, Reject, SessionInfo, StartupVerdict, Verdict
from .roles import start_tracking, track_server

__all__ = ["REFUSED_SQLSTATE", "Audit", "AuditSession", "Redactor"]

#: The SQLSTATE of a statement refused because the audit queue is full
#: (``when_full = "reject"``): insufficient_resources.
REFUSED_SQLSTATE: Final = "53000"
#: Prepared statements and portals remembered per session (for their text).
_REMEMBERED: Final = 10_000

#: A redaction function: (statement text or None, parameter index, raw value or
#: None for NULL) -> what to record (None records null).
Redactor = Callable[[str | None, int, bytes | None], str | None]


class _Pending:
    """A request sent upstream whose answer has not come yet."""

    __slots__ = ("error", "kind", "recorded", "request", "sql", "started", "tags")

    def __init__(self, kind: str, request: int, sql: str | None, recorded: bool) -> None:
        self.kind = kind                  # query, execute, function_call, sync
        self.request = request
        self.sql = sql
        self.recorded = recorded          # False: refused for want of room; no records
        self.started = time.perf_counter()
        self.tags: list[str] = []
        self.error: str | None = None     # its SQLSTATE ("" when the error had none)


def _sync_mark() -> _Pending:
    return _Pending("sync", 0, None, False)


@dataclass(slots=True, kw_only=True)
class AuditSession:
    """What :class:`Audit` keeps for one session (its ``ctx.state``)."""

    client_address: str | None
    started: float = field(default_factory=time.perf_counter)
    #: Requests awaiting their answer, oldest first (Syncs included).
    pending: deque[_Pending] = field(default_factory=deque)
    #: Prepared statement name -> (text, declared parameter types).
    statements: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    #: Portal name -> (statement name, text).
    portals: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    startup_user: str | None = None
    client_database: str | None = None
    application_name: str | None = None
    requests: int = 0
    errors: int = 0
    rows: int = 0
    refuse_login: bool = False
    subscribed: bool = False
    #: This session's role tracker, when the audit keeps ctx.roles current.
    tracker: RoleTracker | None = None
    #: The common fields that stay put once the session is logged in.
    fixed: Who | None = None


def _format_address(address: tuple[str, int] | str | None) -> str | None:
    if address is None or isinstance(address, str):
        return address
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _load_redactor(name: str) -> Redactor:
    module_name, _, attribute = name.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        found = getattr(found, part)
    if not callable(found):
        raise TypeError(f"redact = {name!r} is not callable")
    redactor: Redactor = found
    return redactor


class Audit(Middleware[AuditSession]):
    """Write an audit record for every event of every session.

    - ``sink``: a :class:`~pgwire.audit.Sink` (:class:`~pgwire.audit.JsonLinesSink`,
      :class:`~pgwire.audit.LoggingSink`, :class:`~pgwire.audit.PostgresSink`,
      your own), or settings for :func:`~pgwire.audit.make_sink` (a TOML table
      such as ``{type = "jsonl", path = "audit.jsonl", key_env = "AUDIT_KEY"}``).
    - ``queue_size`` and ``when_full`` (``block``, ``drop`` or ``reject``): the
      bounded queue in front of the sink and what happens when it is full
      (see :class:`~pgwire.audit.AuditQueue`); ``reject`` refuses statements
      with SQLSTATE 53000 and new connections with a FATAL 53000.
    - ``redact``: Bind parameters and FunctionCall arguments. ``"all"``
      (default) records their count, types and formats only; ``"none"``
      records each value as text when it is text in the session's encoding,
      else as ``\\x`` and hex; or a function ``(sql, index, value) -> str |
      None`` (or its ``"module:function"`` name) deciding per value.
    - ``close_timeout``: how long :meth:`close` keeps trying a failing sink.
    - ``max_sql_length``: statement texts longer than this many characters
      are recorded as their beginning, the number of characters cut, and the
      SHA-256 of the whole text, so one record (and the queue, at most
      ``queue_size`` records) stays bounded in memory. ``None``: no limit.
    - ``track_roles``: keep ``ctx.roles`` (the effective role in every record)
      current when no other middleware does, as the
      :class:`~pgwire.middleware.roles.RoleGuard` would (needs pglast; without
      it, or with ``False``, ``effective_role`` is null unless a guard runs).

    One instance serves every session of a proxy (one queue, one thread, one
    sink): give the proxy an instance (TOML entries are), not the class.
    """

    client_messages = frozenset({b"Q", b"P", b"B", b"E", b"C", b"S", b"F"})
    server_messages = frozenset({b"C", b"E", b"Z", b"I", b"s", b"G"})

    def __init__(self, sink: Sink | Mapping[str, Any] | str, *, queue_size: int = 10_000,
                 when_full: WhenFull = "block",
                 redact: Literal["all", "none"] | Redactor | str = "all",
                 close_timeout: float | None = 30.0, retry_delay: float = 0.1,
                 max_retry_delay: float = 5.0, track_roles: bool = True,
                 max_sql_length: int | None = 16_384) -> None:
        if max_sql_length is not None and max_sql_length < 1:
            raise ValueError(f"max_sql_length must be positive or None, not {max_sql_length!r}")
        #: Longest statement text recorded whole (None: no limit).
        self.max_sql_length = max_sql_length
        self.track_roles = track_roles and importlib.util.find_spec("pglast") is not None
        if not isinstance(sink, Sink):
            sink = make_sink(sink)
        self.sink = sink
        self.queue = AuditQueue(sink, capacity=queue_size, when_full=when_full,
                                close_timeout=close_timeout, retry_delay=retry_delay,
                                max_retry_delay=max_retry_delay)
        self._redactor: Redactor | None
        if redact in ("all", "none"):
            self.redaction = str(redact)
            self._redactor = None
        elif isinstance(redact, str):
            if ":" not in redact:
                raise ValueError('redact must be "all", "none", a function, or '
                                 f'"module:function", not {redact!r}')
            self.redaction = "custom"
            self._redactor = _load_redactor(redact)
        elif callable(redact):
            self.redaction = "custom"
            self._redactor = redact
        else:
            raise TypeError(f"redact must be a policy name or a function, not {redact!r}")

    # -- administration ----------------------------------------------------------------

    @property
    def stats(self) -> AuditStats:
        """The queue's counters: written, dropped, refused, failed batches, lost, queued."""
        return self.queue.stats

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record so far is written; False if ``timeout`` ran out."""
        return self.queue.flush(timeout)

    def close(self) -> None:
        """Write everything queued, then close the sink (the proxy calls this at shutdown)."""
        self.queue.close()

    # -- session lifecycle -------------------------------------------------------------

    def create_state(self, info: SessionInfo) -> AuditSession:
        state = AuditSession(client_address=_format_address(info.client_address))
        record = ConnectRecord(time=utc_now(), session_id=info.session_id,
                               client_address=state.client_address)
        if not self.queue.put(record, refusable=True):
            state.refuse_login = self._rejecting
        return state

    def on_startup(self, ctx: Context[AuditSession], startup: StartupMessage) -> StartupVerdict:
        state = ctx.state
        if state.refuse_login:
            return Reject(REFUSED_SQLSTATE, "connection refused: the audit queue is full",
                          hint="Try again later.")
        state.startup_user = startup.get("user")
        state.client_database = startup.get("database") or state.startup_user
        state.application_name = startup.get("application_name")
        tls = ctx.tls_info
        if tls is not None:
            certificate = tls.peer_certificate
            self._emit(TLSRecord(
                **self._who(ctx), tls_version=tls.version, cipher=tls.cipher,
                alpn_protocol=tls.alpn_protocol, server_name=tls.server_hostname,
                client_certificate_cn=tls.peer_common_name,
                client_certificate_sha256=(hashlib.sha256(certificate).hexdigest()
                                           if certificate is not None else None)))
        return None

    def on_authenticated(self, ctx: Context[AuditSession], result: AuthResult) -> Reject | None:
        state = ctx.state
        if result.ok and self.track_roles:
            state.tracker = start_tracking(ctx, self)
        who = self._who(ctx)
        if result.ok:
            who["upstream_role"] = who["upstream_role"] or result.upstream_user
        self._emit(AuthRecord(**who, ok=result.ok, method=result.method,
                              sqlstate=result.sqlstate, message=result.message))
        if result.ok:
            self._emit(RoleMappingRecord(
                **who, client_database=state.client_database,
                mapped=who["upstream_role"] != who["startup_user"]))
            if not state.subscribed:
                state.subscribed = True
                ctx.roles.subscribe(lambda event: self._role_event(ctx, event))
        return None

    def on_session_end(self, ctx: Context[AuditSession], reason: str) -> None:
        state = ctx.state
        if state.refuse_login:
            return  # its connect record was refused: it leaves no trace, nor overshoot
        while state.pending:
            entry = state.pending.popleft()
            if entry.kind != "sync":
                self._complete(ctx, entry, "unfinished")
        self._emit(DisconnectRecord(**self._who(ctx), reason=reason,
                                    statements=state.requests, errors=state.errors,
                                    rows=state.rows,
                                    duration=time.perf_counter() - state.started))

    # -- requests ----------------------------------------------------------------------

    def on_client_message(self, ctx: Context[AuditSession], message: Message) -> Verdict:
        verdict = self._client_message(ctx, message)
        tracker = ctx.state.tracker
        if tracker is not None:
            tracker.observe_client(message, rejected=verdict is not None)
        return verdict

    def _client_message(self, ctx: Context[AuditSession], message: Message) -> Verdict:
        state = ctx.state
        code = message.type_code
        if code == b"S":
            state.pending.append(_sync_mark())
            return None
        if code == b"C":
            assert isinstance(message, Close)
            names = state.statements if message.kind == "S" else state.portals
            names.pop(message.name, None)
            return None
        if code == b"Q":
            assert isinstance(message, Query)
            # A simple query drops the unnamed statement and portal.
            state.statements.pop("", None)
            state.portals.pop("", None)
            state.requests += 1
            sql = self._clip(message.query)
            return self._request(ctx, "query", sql,
                                 self._fact(ctx, QueryRecord, (state.requests, sql)))
        if code == b"P":
            assert isinstance(message, Parse)
            sql = self._clip(message.query)
            fact = self._fact(ctx, ParseRecord,
                              (message.statement, sql, message.parameter_types))
            if not self.queue.put(fact, refusable=True) and self._rejecting:
                return self._refusal()
            _remember(state.statements, message.statement, (sql, message.parameter_types))
            return None
        if code == b"B":
            assert isinstance(message, Bind)
            return self._bind(ctx, message)
        if code == b"E":
            assert isinstance(message, Execute)
            statement_name, portal_sql = state.portals.get(message.portal, (None, None))
            state.requests += 1
            return self._request(ctx, "execute", portal_sql, self._fact(
                ctx, ExecuteRecord, (state.requests, message.portal, statement_name,
                                     portal_sql, message.max_rows)))
        if code == b"F":
            assert isinstance(message, FunctionCall)
            state.requests += 1
            arguments = self._values(ctx, None, message.arguments, message.argument_formats)
            return self._request(ctx, "function_call", None, self._fact(
                ctx, FunctionCallRecord, (state.requests, message.function_oid,
                                          len(message.arguments), arguments, self.redaction)))
        return None

    def _request(self, ctx: Context[AuditSession], kind: str, sql: str | None,
                 record: Fact) -> Verdict:
        state = ctx.state
        recorded = self.queue.put(record, refusable=True)
        state.pending.append(_Pending(kind, state.requests, sql, recorded))
        if not recorded and self._rejecting:
            return self._refusal()
        return None

    def _bind(self, ctx: Context[AuditSession], message: Bind) -> Verdict:
        state = ctx.state
        sql, declared = state.statements.get(message.statement, (None, ()))
        count = len(message.parameters)
        formats = message.parameter_formats
        if len(formats) == 1:
            formats = formats * count
        elif not formats:
            formats = (0,) * count
        types = tuple(declared[i] if i < len(declared) else 0 for i in range(count))
        fact = self._fact(ctx, BindRecord, (
            message.portal, message.statement, sql, count, types,
            tuple(["binary" if f == 1 else "text" for f in formats]),
            self._values(ctx, sql, message.parameters, formats), self.redaction))
        if not self.queue.put(fact, refusable=True) and self._rejecting:
            return self._refusal()
        _remember(state.portals, message.portal, (message.statement, sql))
        return None

    def _values(self, ctx: Context[AuditSession], sql: str | None,
                values: tuple[bytes | None, ...], formats: tuple[int, ...]
                ) -> tuple[str | None, ...] | None:
        if self.redaction == "all":
            return None
        redactor = self._redactor
        if redactor is not None:
            return tuple(redactor(sql, index, None if value is None else bytes(value))
                         for index, value in enumerate(values))
        encoding = python_encoding(ctx.parameters.get("client_encoding", "UTF8"))
        if len(formats) == 1:
            formats = formats * len(values)
        shown: list[str | None] = []
        for index, value in enumerate(values):
            if value is None:
                shown.append(None)
                continue
            raw = bytes(value)
            text = None
            if not (index < len(formats) and formats[index] == 1):
                with contextlib.suppress(UnicodeDecodeError):
                    text = raw.decode(encoding)
            shown.append(self._clip(text if text is not None else "\\x" + raw.hex()))
        return tuple(shown)

    @property
    def _rejecting(self) -> bool:
        return self.queue.when_full == "reject"

    @staticmethod
    def _refusal() -> Reject:
        return Reject(REFUSED_SQLSTATE, "statement refused: the audit queue is full",
                      hint="The proxy's audit sink is behind; try again later.")

    # -- answers -----------------------------------------------------------------------

    def on_server_message(self, ctx: Context[AuditSession], message: Message) -> Verdict:
        tracker = ctx.state.tracker
        if tracker is not None:
            # Before the records, as when a guard later in the chain tracks
            # (it sees server messages first): a completion names the role in
            # effect once its statement completed, in both protocols.
            track_server(ctx, tracker, message)
        self._server_message(ctx, message)
        return None

    def _server_message(self, ctx: Context[AuditSession], message: Message) -> None:
        state = ctx.state
        pending = state.pending
        code = message.type_code
        front = pending[0] if pending else None
        if code == b"C":
            assert isinstance(message, CommandComplete)
            if front is None or front.kind == "sync":
                return None  # nobody's: a middleware answered the request itself
            front.tags.append(message.tag)
            if front.kind == "execute":
                pending.popleft()
                self._complete(ctx, front, "ok")
        elif code == b"Z":
            # A Query's (or FunctionCall's) end; or a Sync's, and then every
            # Execute still waiting before it was skipped after an error.
            while pending:
                entry = pending.popleft()
                if entry.kind == "sync":
                    break
                if entry.kind == "execute":
                    self._complete(ctx, entry, "skipped")
                    continue
                status = "error" if entry.error is not None else (
                    "ok" if entry.tags or entry.kind == "function_call" else "empty")
                self._complete(ctx, entry, status)
                break
        elif code == b"E":
            assert isinstance(message, ErrorResponse)
            state.errors += 1
            owner = front if front is not None and front.kind != "sync" else None
            if owner is not None:
                owner.error = message.code or ""
                if owner.kind == "execute":
                    pending.popleft()
                    self._complete(ctx, owner, "error")
            if owner is None or owner.recorded:
                self._emit(self._fact(ctx, ErrorRecord, (
                    owner.request if owner else None, owner.sql if owner else None,
                    message.severity, message.code, message.message, message.detail)))
        elif code == b"I":
            if front is not None and front.kind == "execute":
                pending.popleft()
                self._complete(ctx, front, "empty")
        elif code == b"s" and front is not None and front.kind == "execute":
            pending.popleft()
            self._complete(ctx, front, "suspended")
        elif code == b"G" and front is not None and front.kind == "execute" and (
            len(pending) > 1 and pending[1].kind == "sync"
        ):
            # COPY FROM STDIN by an Execute: PostgreSQL ignores the Sync sent behind
            # it (it arrives during the copy); the one after CopyDone ends the batch.
            del pending[1]
        return None

    def _complete(self, ctx: Context[AuditSession], entry: _Pending, status: str) -> None:
        duration = time.perf_counter() - entry.started
        tags = entry.tags
        if len(tags) == 1:
            rows = rows_from_tag(tags[0])
        else:
            counts = [n for n in map(rows_from_tag, tags) if n is not None]
            rows = sum(counts) if counts else None
        if rows:
            ctx.state.rows += rows
        if not entry.recorded:
            return
        self.queue.put(self._fact(ctx, CompletionRecord, (
            entry.request, entry.kind, entry.sql, status, duration, rows, tuple(tags),
            (entry.error or None) if status == "error" else None)))

    # -- roles -------------------------------------------------------------------------

    def _role_event(self, ctx: Context[AuditSession], event: RoleEvent) -> None:
        if isinstance(event, RoleDecision):
            self._emit(RoleDecisionRecord(
                **self._who(ctx), sql=self._clip(event.statement), kind=event.kind,
                target=event.target,
                allowed=event.allowed, reason=event.reason, policy=event.policy))
        elif isinstance(event, RoleChange):
            self._emit(RoleChangeRecord(
                **self._who(ctx), before_current=event.before_current,
                after_current=event.after_current, before_session=event.before_session,
                after_session=event.after_session,
                sql=None if event.statement is None else self._clip(event.statement),
                verified=event.verified))

    # -- helpers -----------------------------------------------------------------------

    def _clip(self, sql: str) -> str:
        """A statement text (or parameter value) as recorded: past
        ``max_sql_length`` characters, its beginning, how much was cut, and
        the SHA-256 of the whole text."""
        limit = self.max_sql_length
        if limit is None or len(sql) <= limit:
            return sql
        digest = hashlib.sha256(sql.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{sql[:limit]}... [{len(sql) - limit} more characters; sha256 {digest}]"

    def _emit(self, record: AuditRecord | Fact) -> None:
        """Queue a record that follows from something already recorded (never refused)."""
        self.queue.put(record)

    def _fact(self, ctx: Context[AuditSession], cls: type[AuditRecord],
              own: tuple[Any, ...]) -> Fact:
        """A record of ``cls`` made now, as the facts the queue's thread builds it
        from: the clock, not the formatted time; tuples, no dicts. ``own`` holds
        the values of the fields ``cls`` adds, in the order it declares them."""
        state = ctx.state
        who = state.fixed or self._fixed(ctx)
        roles = ctx.roles
        return (cls, time.time_ns(), who, roles.current_user if roles.tracked else None,
                ctx.parameters.get("application_name", state.application_name), own)

    def _fixed(self, ctx: Context[AuditSession]) -> Who:
        """The common fields that stay put once the session is logged in (kept then)."""
        state = ctx.state
        roles = ctx.roles
        who: Who = (ctx.info.session_id, os.getpid(), state.client_address,
                    roles.client_user or state.startup_user, roles.login_role,
                    ctx.backend_pid, roles.database or state.client_database)
        if state.subscribed:  # logged in: these no longer change
            state.fixed = who
        return who

    def _who(self, ctx: Context[AuditSession]) -> dict[str, Any]:
        """The common fields of a record made now (for the records of a session's
        start and end; statements' records are :meth:`_fact` s)."""
        state = ctx.state
        roles = ctx.roles
        session_id, proxy_pid, client_address, startup_user, upstream_role, backend_pid, \
            database = state.fixed or self._fixed(ctx)
        return {
            "time": utc_now(), "session_id": session_id, "proxy_pid": proxy_pid,
            "client_address": client_address, "startup_user": startup_user,
            "upstream_role": upstream_role,
            "effective_role": roles.current_user if roles.tracked else None,
            "backend_pid": backend_pid, "database": database,
            "application_name": ctx.parameters.get("application_name",
                                                   state.application_name),
        }


def _remember(names: dict[str, Any], name: str, value: Any) -> None:
    """Keep ``value`` under ``name``, forgetting the oldest past the bound."""
    names.pop(name, None)
    names[name] = value
    if len(names) > _REMEMBERED:
        del names[next(iter(names))]

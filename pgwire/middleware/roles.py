"""RoleGuard: decide which role changes a session may make, from the SQL itself.

PostgreSQL tells a client nothing when ``SET ROLE`` switches between
ordinary roles, so a proxy that waits for a signal learns of a role change
too late. The guard reads every statement before it goes upstream, with
PostgreSQL's own grammar (:func:`pgwire.roles.analyze`), and refuses the
ones its policy does not allow with SQLSTATE 42501, the way PostgreSQL
refuses a ``SET ROLE`` it does not permit. The proxy's rejection mechanism
makes the server fail in the statement's place, so a transaction block
ends up aborted on both sides and an extended-protocol batch skips to Sync.

Policies (``policy=``):

- ``deny``: no role change at all (returning to the default role is allowed);
- ``allowlist``: only to the roles listed for the startup user, or for a
  group it belongs to (``allow={"alice": ["reporting"], "@staff": ["audit_*"]}``);
- ``drop_only``: only to roles the login role is a member of that carry no
  attribute the login lacks (never to a SUPERUSER, BYPASSRLS or CREATEROLE
  holder), from the role graph the proxy loads from upstream.

The guard also tracks the session's effective role (``ctx.roles``) for the
rest of the chain; see ``docs/roles.md``.
"""

from __future__ import annotations

import fnmatch
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from ..protocol import (
    Bind,
    Close,
    FunctionCall,
    Message,
    Parse,
    Query,
    RemoteProtocolError,
)
from ..roles._graph import RoleGraph, RoleGraphSource
from ..roles._sql import Analysis, RoleAction, analyze_roles, lexing_hazard
from ..roles._state import RoleDecision
from ..roles._tracker import LOGIN_SQL, SERVER_MESSAGES, VERIFY_SQL, RoleTracker
from .base import AuthResult, Context, Middleware, QueryResult, Reject, SessionInfo, Verdict

__all__ = ["PRIVILEGED_PREDEFINED_ROLES", "RoleGuard", "start_tracking", "track_server"]

Policy = Literal["deny", "allowlist", "drop_only"]
Switch = Literal["refuse", "allow"]
FunctionPolicy = Literal["inspect", "refuse", "allow"]

#: pg_proc OID of set_config(text, text, boolean) (fixed in PostgreSQL's
#: catalog, src/include/catalog/pg_proc.dat): a FunctionCall message to it
#: changes a setting without any SQL text to read.
SET_CONFIG_OID: Final = 2078
#: Client encodings whose multibyte characters can contain the bytes of ``\``
#: or ``'``: text in them lexes safely only if it is pure ASCII.
_UNSAFE_ENCODINGS: Final = frozenset({"SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC",
                                      "GB18030", "JOHAB"})
_POLICIES: Final = ("deny", "allowlist", "drop_only")
#: Predefined roles as good as superuser for reading or changing the server's
#: own files and running programs on it (PostgreSQL documentation, "Predefined
#: Roles"): drop_only never switches to them, nor to roles that belong to them.
PRIVILEGED_PREDEFINED_ROLES: Final = frozenset({
    "pg_execute_server_program", "pg_read_server_files", "pg_write_server_files",
})
#: The client messages that carry SQL text (a tuple: ``Query | Parse`` would
#: build a union object on every call).
_SQL_MESSAGES: Final = (Query, Parse)


@dataclass(slots=True)
class GuardState:
    """What the guard keeps per session."""

    tracker: RoleTracker | None = None
    #: Executes sent since the last Sync (they may change lexing for the rest
    #: of the batch).
    batch_executes: int = 0
    refused: int = 0
    #: The session's starting identity (default role) is known.
    identity_known: bool = False
    #: Requests sent and not yet answered (Query, Sync, FunctionCall).
    requests: int = 0
    #: Prepared statements whose role target is a parameter, checked at each Bind.
    parametrized: dict[str, tuple[str, Analysis]] = field(default_factory=dict)


class RoleGuard(Middleware[GuardState]):
    """Refuse role changes the policy does not allow (see the module docstring).

    - ``policy``: ``deny`` (default), ``allowlist`` or ``drop_only``.
    - ``allow``: for ``allowlist``, startup user (or ``@group``) -> role names
      or shell-style patterns it may switch to.
    - ``graph``: where the role graph comes from: a
      :class:`~pgwire.roles.RoleGraphSource` (loaded in the background and
      refreshed), a fixed :class:`~pgwire.roles.RoleGraph`, or a mapping of
      RoleGraphSource arguments (TOML: ``address = "host:port"`` or a Unix
      socket path, ``user``, ``password_env`` naming an environment variable,
      ``database``, ``sslmode``, ``refresh_seconds``). Needed by ``drop_only`` and by
      ``@group`` keys; until it has loaded, decisions that need it refuse.
    - ``unparseable``: ``refuse`` (default) or ``allow`` SQL the parser rejects.
    - ``do_blocks``: ``refuse`` (default) or ``allow`` DO blocks, whose code
      the guard cannot see.
    - ``call``: ``allow`` (default) or ``refuse`` CALL of procedures.
    - ``functions``: ``inspect`` (default: refuse function and procedure
      definitions with a role-setting SET clause or a SQL body that changes
      a role), ``refuse`` every definition, or ``allow`` them all.
    - ``alter_defaults``: ``refuse`` (default) or ``allow`` ALTER ROLE/DATABASE/
      SYSTEM ... SET/RESET of role settings (they change future sessions).
    - ``privileged_roles``: for ``drop_only``, roles that count as privileges
      like the attributes: a target that is one, or belongs to one, is
      refused. Default: the predefined roles that reach the server's files
      and programs (:data:`PRIVILEGED_PREDEFINED_ROLES`).
    - ``verify``: after a role change the statements show, ask the server
      (``SELECT current_user, session_user``, once the session is idle) so
      ``ctx.roles`` is exact; ``"always"`` asks after every request, which
      also catches a function that changes the role where no statement shows
      it (one more query per idle moment); ``False`` never asks.
    """

    client_messages = frozenset({b"Q", b"P", b"B", b"E", b"C", b"S", b"F"})
    server_messages = SERVER_MESSAGES

    def __init__(self, policy: Policy = "deny", *,
                 allow: Mapping[str, Iterable[str]] | None = None,
                 graph: RoleGraphSource | RoleGraph | Mapping[str, object] | None = None,
                 unparseable: Switch = "refuse", do_blocks: Switch = "refuse",
                 call: Literal["allow", "refuse"] = "allow",
                 functions: FunctionPolicy = "inspect",
                 alter_defaults: Switch = "refuse",
                 privileged_roles: Iterable[str] = PRIVILEGED_PREDEFINED_ROLES,
                 verify: bool | Literal["always"] = True) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {', '.join(_POLICIES)}, not {policy!r}")
        for name, value, choices in (("unparseable", unparseable, ("refuse", "allow")),
                                     ("do_blocks", do_blocks, ("refuse", "allow")),
                                     ("call", call, ("refuse", "allow")),
                                     ("functions", functions, ("inspect", "refuse", "allow")),
                                     ("alter_defaults", alter_defaults, ("refuse", "allow"))):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        self.policy: Policy = policy
        self.allow: dict[str, tuple[str, ...]] = {}
        for key, roles in (allow or {}).items():
            if isinstance(roles, str):
                raise ValueError(f"allow[{key!r}] must be a list of roles, not a string")
            self.allow[str(key)] = tuple(str(r) for r in roles)
        if policy == "allowlist" and not self.allow:
            raise ValueError("policy 'allowlist' needs allow={user or @group: [roles]}")
        if isinstance(graph, RoleGraph):
            graph = RoleGraphSource.static(graph)
        elif isinstance(graph, Mapping):
            graph = _graph_source(graph)
        self.graph: RoleGraphSource | None = graph
        needs_graph = policy == "drop_only" or any(k.startswith("@") for k in self.allow)
        if needs_graph and graph is None:
            raise ValueError("policy 'drop_only' and @group allowlist keys need graph= "
                             "(a RoleGraphSource or RoleGraph)")
        self.unparseable = unparseable
        self.do_blocks = do_blocks
        self.call = call
        self.functions = functions
        self.alter_defaults = alter_defaults
        if verify not in (True, False, "always"):
            raise ValueError(f"verify must be true, false or 'always', not {verify!r}")
        self.verify = verify
        if isinstance(privileged_roles, str):
            raise ValueError("privileged_roles must be a list of role names, not a string")
        self.privileged_roles = frozenset(privileged_roles)
        self._loading: threading.Thread | None = None
        if graph is not None and graph.current() is None:
            # Load now, off the caller's thread: the first sessions need it.
            self._loading = threading.Thread(target=self._load_quietly,
                                             name="pgwire-role-graph", daemon=True)
            self._loading.start()

    def wait_ready(self, timeout: float) -> str | None:
        """Wait up to ``timeout`` seconds for the first load of the role graph.

        Returns None when the guard can decide every statement, or why it
        cannot yet (until the graph loads, changes that need it are refused).
        ``pgwire proxy`` calls this before it accepts clients, so the first
        sessions after a start are not refused for want of a graph.
        """
        if self._loading is not None:
            self._loading.join(timeout)
        if self.graph is None or self.graph.current() is not None:
            return None
        error = self.graph.last_error
        return (f"the role graph is not loaded yet ({error})" if error is not None
                else f"the role graph did not load within {timeout:g} s")

    # -- hooks -------------------------------------------------------------------------

    def create_state(self, info: SessionInfo) -> GuardState:
        return GuardState()

    def on_authenticated(self, ctx: Context[GuardState], result: AuthResult) -> Reject | None:
        if not result.ok:
            return None
        state = ctx.state
        roles = ctx.roles
        # The session's starting identity: a startup `role` is applied last by
        # PostgreSQL, else a default from pg_db_role_setting. The server's own
        # answer to the login query (start_tracking) confirms it.
        startup = ctx.startup
        role_key = startup.get("role") if startup is not None else None
        hidden = startup is not None and (
            "role" in (startup.get("options") or "").lower()
            or startup.get("session_authorization") is not None)
        graph = self.graph
        loaded = graph.current() if graph is not None else None
        if role_key is not None and not hidden:
            roles.default_role = None if role_key == "none" else role_key
            state.identity_known = True
        elif loaded is not None and loaded.settings_complete and not hidden:
            roles.default_role = loaded.default_role(roles.login_role or "", roles.database)
            state.identity_known = True
        state.tracker = start_tracking(ctx, self, always_verify=self.verify == "always")
        shared = roles.tracker
        if state.tracker is None and shared is not None and self.verify == "always":
            shared.always_verify = True  # another middleware tracks: ask as often
        if graph is not None and graph.stale():
            ctx.submit(graph.refresh_if_stale)
        return None

    def on_client_message(self, ctx: Context[GuardState], message: Message) -> Verdict:
        state = ctx.state
        tracker = state.tracker
        code = message.type_code
        if isinstance(message, _SQL_MESSAGES):
            verdict, analysis = self._check_sql(ctx, message.query)
            state.requests += code == b"Q"  # after the check: in flight from now on
            if isinstance(message, Parse):
                state.parametrized.pop(message.statement, None)
                if analysis is not None and any(
                    a.parameter is not None for a in analysis.actions
                ):
                    state.parametrized[message.statement] = (message.query, analysis)
            if tracker is not None:
                tracker.observe_client(message, analysis, rejected=verdict is not None)
            return verdict
        if isinstance(message, Bind):
            return self._check_bind(ctx, message)
        verdict = None
        if code == b"S":
            state.requests += 1
            state.batch_executes = 0
        elif code == b"E":
            state.batch_executes += 1
        elif isinstance(message, FunctionCall):
            state.requests += 1
            if message.function_oid == SET_CONFIG_OID:
                verdict = self._refuse(ctx, "set_config called by OID", RoleAction(
                    "dynamic_set_config", detail="FunctionCall"),
                    "a FunctionCall to set_config cannot be checked")
        elif isinstance(message, Close) and message.kind == "S":
            state.parametrized.pop(message.name, None)
        if tracker is not None:
            tracker.observe_client(message)
        return verdict

    def on_server_message(self, ctx: Context[GuardState], message: Message) -> Verdict:
        state = ctx.state
        if message.type_code == b"Z" and state.requests:
            state.requests -= 1
        tracker = state.tracker
        if tracker is not None and tracker.observe_server(message) and self.verify:
            _verify(ctx, tracker)
        return None

    def close(self) -> None:
        """Nothing to flush: the guard keeps no records."""

    # -- decisions ---------------------------------------------------------------------

    def _check_sql(self, ctx: Context[GuardState], sql: str
                   ) -> tuple[Reject | None, Analysis | None]:
        """The verdict on ``sql``, and its analysis when it goes upstream
        (None when it is refused, or unparseable and allowed)."""
        state = ctx.state
        parameters = ctx.parameters
        encoding = parameters.get("client_encoding", "UTF8").upper()
        if encoding in _UNSAFE_ENCODINGS and not sql.isascii():
            return self._refuse_text(ctx, sql, RoleAction("unparseable"),
                                f"in the client encoding {encoding}, a character can hide a "
                                "byte the server lexes as a quote or backslash; send ASCII "
                                "text, or use UTF8")
        # Until every earlier request is answered, standard_conforming_strings or
        # client_encoding may have changed (a function can change them where no
        # statement shows it): the text must lex the same either way.
        uncertain = bool(state.requests or state.batch_executes) or (
            parameters.get("standard_conforming_strings", "on") != "on")
        if uncertain and lexing_hazard(sql):
            return self._refuse_text(ctx, sql, RoleAction("unparseable"),
                                "this text lexes differently when standard_conforming_strings "
                                "is off (a backslash in an ordinary string constant, or after "
                                "a non-ASCII character), and the setting may have changed: "
                                "use E'' strings, or send it when no request is in flight")
        # Text without any role word holds nothing to decide: it needs no parse
        # tree, only (to refuse what does not parse) the parser's syntax check.
        analysis = analyze_roles(sql, check_syntax=self.unparseable == "refuse")
        if analysis.error is not None:
            if self.unparseable == "allow":
                return None, None
            return self._refuse_text(ctx, sql, RoleAction("unparseable"),
                                f"the statement could not be parsed ({analysis.error}), so "
                                "its effect on roles cannot be checked")
        if uncertain and not sql.isascii() and analysis.touches_roles:
            return self._refuse_text(ctx, sql, RoleAction("unparseable"),
                                "a role change with non-ASCII text while client_encoding may "
                                "have changed: the server could read another name")
        verdict = self._check_actions(ctx, sql, analysis)
        return verdict, None if verdict is not None else analysis

    def _refuse_text(self, ctx: Context[GuardState], sql: str, action: RoleAction,
                     reason: str) -> tuple[Reject, None]:
        return self._refuse(ctx, sql, action, reason), None

    def _check_actions(self, ctx: Context[GuardState], sql: str,
                       analysis: Analysis) -> Reject | None:
        for statement in analysis.statements:
            if statement.actions:
                break
        else:
            return None  # nothing to decide (most statements): no allocations
        decisions: list[RoleDecision] = []
        for action in analysis.actions:
            reason = self._reason_to_refuse(ctx, action)
            if reason is not None:
                return self._refuse(ctx, sql, action, reason)
            decisions.append(RoleDecision(statement=sql, kind=action.kind, target=action.target,
                                          allowed=True, reason="allowed", policy=self.policy))
        for decision in decisions:
            ctx.roles.publish(decision)
        return None

    def _check_bind(self, ctx: Context[GuardState], message: Bind) -> Reject | None:
        """A Bind of a statement whose role target is a parameter: check the value."""
        state = ctx.state
        tracker = state.tracker
        found = state.parametrized.get(message.statement)
        if found is None:
            if tracker is not None:
                tracker.observe_client(message)
            return None
        sql, analysis = found
        resolved = _bind_values(analysis, message.parameters)
        if resolved is None:
            return self._refuse(ctx, sql, RoleAction("set_role", detail="Bind"),
                                "a role parameter is missing or not valid UTF-8 text")
        verdict = self._check_actions(ctx, sql, resolved)
        # Whoever tracks (this guard, or an audit earlier in the chain, which
        # has fed the Bind already) learns the value bound.
        shared = tracker or ctx.roles.tracker
        if shared is not None:
            shared.parse("\0bind", None if verdict is not None else resolved, sql)
            shared.bind(message.portal, "\0bind")
        return verdict

    def _reason_to_refuse(self, ctx: Context[GuardState], action: RoleAction) -> str | None:
        kind = action.kind
        if kind in ("set_role", "set_session_authorization"):
            return self._target_refused(ctx, action)
        if kind == "discard_all":
            return None
        if kind == "alter_role_default":
            return None if self.alter_defaults == "allow" else (
                "changing the default role of future sessions is not allowed through "
                "this proxy")
        if kind == "dynamic_set_config":
            return ("set_config with a setting name that is not a literal may change the "
                    "role")
        if kind == "settings_table":
            return "writes to pg_settings run set_config and may change the role"
        if kind == "do_block":
            return None if self.do_blocks == "allow" else (
                "DO blocks are not allowed: their code can change the role")
        if kind == "call":
            return None if self.call == "allow" else "CALL is not allowed through this proxy"
        if kind == "function_definition":
            if self.functions == "allow":
                return None
            if self.functions == "refuse":
                return "defining functions and procedures is not allowed through this proxy"
            if action.detail == "SET clause" or action.detail.startswith("SQL body:"):
                return (f"a function or procedure that changes the role ({action.detail}) "
                        "is not allowed")
            return None
        return f"unknown role action {kind}"  # fail closed on anything new

    def _target_refused(self, ctx: Context[GuardState], action: RoleAction) -> str | None:
        what = "role" if action.kind == "set_role" else "session authorization"
        if action.reset:
            return None  # back to the session's default: nothing gained
        target = action.target
        roles = ctx.roles
        if action.none:
            # SET ROLE NONE: the session user, which is the pool role in
            # RoleRewrite's set_role mode: a change like any other.
            target = roles.session_user or roles.login_role
        if target is None and action.parameter is not None and not action.deferred:
            return None  # a Parse: the value comes with each Bind, checked there
        if target is None:
            return f"the {what} value is not a literal, so it cannot be checked"
        known = ctx.state.identity_known or roles.starting_role_known
        # Who the session started as: its default role, else the login role.
        # Becoming it again gains nothing; anything else is a change. (Not the
        # login role when a default role is set: in RoleRewrite's set_role mode
        # that is the pool role, which must stay out of reach.)
        base = roles.default_role or roles.login_role or ""
        if known and target == base and (action.kind == "set_role"
                                         or base == roles.login_role):
            return None
        if self.policy == "deny":
            return f"changing the {what} is not allowed through this proxy"
        graph = self.graph.current() if self.graph is not None else None
        if self.policy == "drop_only":
            if not known:
                return ("the session's starting role is not known yet (the server has "
                        "not answered the login query), so the change cannot be checked")
            if graph is None:
                return "the role graph is not loaded yet, so the change cannot be checked"
            allowed, reason = graph.drop_only(base, target, database=roles.database)
            if not allowed:
                return reason
            powers = ({target} | graph.groups(target, database=roles.database)) & (
                self.privileged_roles)
            if powers:
                return (f"role {target!r} is or belongs to {', '.join(sorted(powers))}, "
                        "which drop_only treats as privileged (privileged_roles)")
            return None
        for pattern in self._allowed_targets(ctx, graph):
            if fnmatch.fnmatchcase(target, pattern):
                return None
        return f"{target!r} is not in the allowlist of {roles.client_user!r}"

    def _allowed_targets(self, ctx: Context[GuardState],
                         graph: RoleGraph | None) -> Iterable[str]:
        roles = ctx.roles
        users = {roles.client_user, roles.login_role or ""}
        for user in users:
            yield from self.allow.get(user, ())
        if graph is not None:
            groups: set[str] = set()
            for user in users:
                if user and graph.role(user) is not None:
                    groups |= graph.groups(user, database=roles.database)
            for group in groups:
                yield from self.allow.get(f"@{group}", ())

    def _refuse(self, ctx: Context[GuardState], sql: str, action: RoleAction,
                reason: str) -> Reject:
        ctx.state.refused += 1
        ctx.roles.publish(RoleDecision(statement=sql, kind=action.kind, target=action.target,
                                       allowed=False, reason=reason, policy=self.policy))
        if action.kind == "set_role" and action.target is not None:
            message = f'permission denied to set role "{action.target}"'
        elif action.kind == "set_session_authorization" and action.target is not None:
            message = f'permission denied to set session authorization "{action.target}"'
        else:
            message = "statement refused by the role guard"
        return Reject("42501", message, detail=reason,
                      hint=f"pgwire role guard, policy {self.policy}")

    # -- callbacks ---------------------------------------------------------------------

    def _load_quietly(self) -> None:
        graph = self.graph
        assert graph is not None
        try:
            graph.refresh_if_stale()
        except Exception:  # kept in graph.last_error; decisions refuse until it loads
            return


def _bind_values(analysis: Analysis, parameters: tuple[bytes | None, ...]) -> Analysis | None:
    """The analysis with each ``$n`` role target replaced by the Bind's value
    (None when a value is not text)."""
    statements = []
    for statement in analysis.statements:
        actions = []
        for action in statement.actions:
            number = action.parameter
            if number is not None and not action.deferred:
                if number > len(parameters):
                    return None  # the server refuses the Bind too (08P01)
                raw = parameters[number - 1]
                try:
                    value = None if raw is None else bytes(raw).decode("utf-8")
                except UnicodeDecodeError:
                    return None
                none = action.kind == "set_role" and value == "none"
                actions.append(replace(action, target=None if none else value,
                                       reset=value is None, none=none, parameter=None))
            else:
                actions.append(action)
        statements.append(replace(statement, actions=tuple(actions)))
    return Analysis(statements=tuple(statements))


def _graph_source(settings: Mapping[str, object]) -> RoleGraphSource:
    """A RoleGraphSource from configuration-file settings."""
    known = {"address", "user", "password", "password_env", "database", "sslmode",
             "refresh_seconds"}
    unknown = set(settings) - known
    if unknown:
        raise ValueError(f"graph: unknown settings {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(known))})")
    address = settings.get("address")
    if isinstance(address, str) and not address.startswith("/"):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"graph.address must be host:port or a socket path, "
                             f"not {address!r}")
        address = (host.strip("[]"), int(port))
    elif isinstance(address, list | tuple) and len(address) == 2:
        address = (str(address[0]), int(str(address[1])))
    elif not isinstance(address, str):
        raise ValueError("graph.address is required (host:port or a socket path)")
    user = settings.get("user")
    if not isinstance(user, str) or not user:
        raise ValueError("graph.user is required")
    password = settings.get("password")
    variable = settings.get("password_env")
    if isinstance(variable, str):
        password = os.environ.get(variable)
        if password is None:
            raise ValueError(f"graph.password_env: ${variable} is not set")
    refresh = settings.get("refresh_seconds", 60.0)
    return RoleGraphSource(address, user, password=None if password is None else str(password),
                           database=str(settings.get("database", "postgres")),
                           sslmode=str(settings.get("sslmode", "disable")),  # type: ignore[arg-type]
                           refresh_seconds=float(str(refresh)))


# -- tracking, for any middleware that reads the same messages ------------------------------


def start_tracking(ctx: Context[Any], owner: object, *,
                   always_verify: bool = False) -> RoleTracker | None:
    """Keep ``ctx.roles`` current for this session, unless another middleware does.

    Call it from ``on_authenticated``; feed the tracker it returns every
    message of :data:`~pgwire.roles._tracker.CLIENT_MESSAGES` with
    ``tracker.observe_client`` and pass every message of ``SERVER_MESSAGES``
    to :func:`track_server`. It asks the server who the session is right
    away, so ``ctx.roles.default_role`` is exact from the first answer on.
    Returns None when another middleware of the chain tracks already.
    """
    roles = ctx.roles
    if not roles.claim_tracking(owner):
        return None
    tracker = roles.tracker = RoleTracker(roles)
    tracker.always_verify = always_verify

    def logged_in(answer: QueryResult) -> None:
        if answer.ok and answer.rows:
            current, session, setting = _first_row(answer, LOGIN_SQL, 3)
            tracker.login(current, session, setting)

    ctx.query(LOGIN_SQL, logged_in)
    return tracker


def track_server(ctx: Context[Any], tracker: RoleTracker, message: Message, *,
                 verify: bool = True) -> None:
    """Feed a server message to the tracker; ask the server after a change."""
    if tracker.observe_server(message) and verify:
        _verify(ctx, tracker)


def _verify(ctx: Context[Any], tracker: RoleTracker) -> None:
    """Ask the server who the session is now, and tell the tracker."""

    def verified(answer: QueryResult) -> None:
        if answer.ok and answer.rows:
            current, session = _first_row(answer, VERIFY_SQL, 2)
            tracker.verified(current, session)

    ctx.query(VERIFY_SQL, verified)


def _first_row(answer: QueryResult, sql: str, columns: int) -> list[str]:
    """The answer's first row as ``columns`` strings (NULL as ""), or the server is broken.

    PostgreSQL always answers the tracker's own queries with that many columns;
    another shape means something other than PostgreSQL answered, and nobody
    knows who the session is: the session ends as after any protocol breach
    by the server (08P01), never as a proxy bug.
    """
    row = answer.rows[0]
    if len(row) < columns:
        raise RemoteProtocolError(f"the server answered {sql!r} with {len(row)} column(s), "
                                  f"not {columns}")
    return [value or "" for value in row[:columns]]

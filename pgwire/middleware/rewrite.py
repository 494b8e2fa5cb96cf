"""RoleRewrite: choose the role a session logs in as upstream, and clean the startup packet.

Every client's StartupMessage is first sanitized (:func:`pgwire.roles._startup.sanitize_startup`,
policy :class:`~pgwire.roles._startup.StartupPolicy`): duplicate keys are refused, the
parameters that set the role at login (``role``, ``session_authorization``, and every
``options`` switch that sets them, ``-c role=x``, ``-crole=x``, ``--role=x``,
``-ecrole=x``, ``\\-c role=x``...) are refused or stripped, and so is a replication
connection. Then the startup user is rewritten, by mode:

- ``preserve`` (default): the client's user goes upstream unchanged.
- ``map``: :class:`RoleRule` rules map the client's user (exact name or
  fnmatch-style pattern, optionally only on some databases) to an upstream
  login role; the first rule that matches wins; ``unmapped`` says what
  happens to a user no rule matches (``reject``: FATAL 28000, or
  ``preserve``).
- ``fixed``: every client logs in upstream as ``login_role``.
- ``set_role``: every client logs in upstream as the pool role
  ``login_role`` and *becomes* its mapped role (the rules' target, which may
  be a NOLOGIN group role; with ``unmapped="preserve"``, the client's own
  user name) through the startup parameter ``role=<mapped>``.

Why ``set_role`` sends ``role`` in the startup packet instead of running
``SET ROLE`` after login: PostgreSQL applies a startup ``role`` during login,
with the client's authority (``PGC_S_CLIENT``), after checking that the
login role is a member of it (otherwise the login fails with FATAL 42501
``permission denied to set role``, which the client sees unchanged). A
setting from the startup packet is also the session's *default*:
``RESET ROLE`` and ``DISCARD ALL`` return to the mapped role, never to the
pool role, and it overrides any ``ALTER ROLE pool SET role = ...``. A
``SET ROLE`` injected after login would be undone by the client's first
``RESET ROLE`` or ``DISCARD ALL`` (which poolers run between clients),
leaving it with the pool role's rights, and there would be a window between
login and the injected statement.

What it does not close (checked on PostgreSQL 15): ``SET ROLE NONE`` and
``SET ROLE <pool role>`` (or any other role the pool role is a member of)
still switch to that role, because they set the role explicitly rather
than resetting it; ``SET SESSION AUTHORIZATION`` is refused unless the pool
role is a superuser. Run :class:`~pgwire.middleware.roles.RoleGuard` with
``set_role`` mode to refuse those, make the pool role ``NOINHERIT`` with no
rights of its own (so even that escape reaches nothing), and never make it
a superuser.

Authentication. The engine decides who proves what:

- With :class:`~pgwire.proxy.ProxyAuth`, the proxy checks the client as the
  user of the client's own packet and logs in upstream as the rewritten
  user, with ``ProxyAuth.upstream_password`` or the plaintext password
  ``ProxyAuth.users`` stores for the rewritten role. Leave
  ``ProxyAuth.upstream_user`` unset: it would override the rewrite (and
  :meth:`RoleRewrite.on_authenticated` then refuses the session).
- With :class:`~pgwire.proxy.Passthrough`, the server authenticates the
  *rewritten* role and the client answers for it, so rewriting only makes
  sense with trust or certificate authentication upstream, or when the
  client knows the upstream role's password.

A packet without ``database`` means "the database named like the user" to
PostgreSQL; when the user is rewritten, ``database`` is added with the
client's user name so the client lands where it would have without the
proxy.
"""

from __future__ import annotations

import fnmatch
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from ..protocol import StartupMessage
from ..roles._startup import (
    DEFAULT_POLICY,
    StartupPolicy,
    StartupRefused,
    sanitize_startup,
)
from .base import AuthResult, Context, Middleware, Reject, SessionInfo, StartupVerdict

__all__ = ["RewriteMode", "RoleMapping", "RoleRewrite", "RoleRule"]

RewriteMode = Literal["preserve", "map", "fixed", "set_role"]
_MODES: Final = ("preserve", "map", "fixed", "set_role")
_UNMAPPED: Final = ("reject", "preserve")
_PLACEHOLDERS: Final = frozenset({"user", "database"})
_RULE_KEYS: Final = frozenset({"user", "role", "database"})


def _check_target(target: str) -> None:
    """A rule's target may hold ``{user}`` and ``{database}`` and nothing else in braces."""
    try:
        fields = list(string.Formatter().parse(target))
    except ValueError as exc:
        raise ValueError(f"role {target!r} is not a valid template: {exc}; write a literal "
                         "brace as {{ or }}") from None
    for _, field, spec, conversion in fields:
        if field is None:
            continue
        if field not in _PLACEHOLDERS or spec or conversion:
            raise ValueError(f"role {target!r} may use only {{user}} and {{database}} "
                             f"placeholders, not {{{field}}}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleRule:
    """One mapping rule: clients named ``user`` (on ``database``) become ``role``.

    ``user`` and ``database`` are exact names or fnmatch-style patterns
    (``*``, ``?``, ``[abc]``; ``[*]`` matches a literal ``*``), matched
    case-sensitively as PostgreSQL role and database names are;
    ``database=None`` matches every database. ``role`` is the target and may
    contain ``{user}`` and ``{database}``, replaced by the client's user and
    database (``sales_{user}``).
    """

    user: str
    role: str
    database: str | None = None

    def __post_init__(self) -> None:
        for name in ("user", "role"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"a role rule's {name} must be a non-empty string, not "
                                 f"{value!r}")
        if self.database is not None and (
            not isinstance(self.database, str) or not self.database
        ):
            raise ValueError(f"a role rule's database must be a non-empty string or None, "
                             f"not {self.database!r}")
        if "\0" in self.user + self.role + (self.database or ""):
            raise ValueError("role rules cannot contain NUL characters")
        _check_target(self.role)

    @classmethod
    def from_mapping(cls, rule: Mapping[str, Any]) -> RoleRule:
        """A rule from a mapping (a TOML inline table): keys user, role, database."""
        unknown = sorted(set(rule) - _RULE_KEYS)
        if unknown:
            raise ValueError(f"unknown role rule key(s) {', '.join(unknown)}; a rule has "
                             "user, role and optionally database")
        missing = sorted({"user", "role"} - set(rule))
        if missing:
            raise ValueError(f"a role rule needs {' and '.join(missing)}: {dict(rule)!r}")
        return cls(user=rule["user"], role=rule["role"], database=rule.get("database"))

    def matches(self, user: str, database: str) -> bool:
        """True when this rule applies to ``user`` connecting to ``database``."""
        return fnmatch.fnmatchcase(user, self.user) and (
            self.database is None or fnmatch.fnmatchcase(database, self.database)
        )

    def target(self, user: str, database: str) -> str:
        """The role this rule gives ``user`` on ``database``."""
        return self.role.format_map({"user": user, "database": database})


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleMapping:
    """What :class:`RoleRewrite` decided for one session.

    ``login_role`` is the role the proxy logs in as upstream; ``role`` is the
    role set at login with the startup ``role`` parameter (``set_role`` mode
    only, else ``None``); ``rule`` is the rule that matched, if any.
    """

    client_user: str
    database: str
    login_role: str
    role: str | None = None
    rule: RoleRule | None = None

    @property
    def effective_role(self) -> str:
        """The role the session runs as right after login (``current_user``)."""
        return self.role if self.role is not None else self.login_role


class _State:
    """Per session: the mapping decided at startup."""

    __slots__ = ("mapping",)

    def __init__(self) -> None:
        self.mapping: RoleMapping | None = None


def _rules(rules: Iterable[RoleRule | Mapping[str, Any]]) -> tuple[RoleRule, ...]:
    if isinstance(rules, str | bytes | Mapping):
        raise ValueError("rules must be a list of rules (RoleRule or tables with user, role, "
                         f"database), not {type(rules).__name__}")
    built: list[RoleRule] = []
    for index, rule in enumerate(rules):
        if isinstance(rule, RoleRule):
            built.append(rule)
        elif isinstance(rule, Mapping):
            try:
                built.append(RoleRule.from_mapping(rule))
            except ValueError as exc:
                raise ValueError(f"rules[{index}]: {exc}") from None
        else:
            raise ValueError(f"rules[{index}] must be a RoleRule or a table with user, role "
                             f"and database, not {rule!r}")
    return tuple(built)


class RoleRewrite(Middleware[_State]):
    """Sanitize the startup packet and choose the upstream login role (and role).

    ::

        RoleRewrite()                                          # preserve
        RoleRewrite("map", rules=[RoleRule(user="report_*", role="reporting")])
        RoleRewrite("fixed", login_role="app")
        RoleRewrite("set_role", login_role="pool", unmapped="preserve",
                    rules=[{"user": "intern_*", "role": "readers"}])

    In ``pgwire.toml``::

        [[middleware]]
        class = "pgwire.middleware.rewrite:RoleRewrite"
        mode = "set_role"
        login_role = "pool"
        rules = [{ user = "report_*", role = "reporting" },
                 { user = "*", database = "sales", role = "sales_{user}" }]
        policy = { role_parameters = "strip" }

    Arguments:
        mode: ``preserve``, ``map``, ``fixed`` or ``set_role`` (see the module).
        rules: :class:`RoleRule` objects or mappings with ``user``, ``role``
            and optionally ``database``; first match wins. ``map`` needs at
            least one; ``set_role`` may have none with ``unmapped="preserve"``.
        unmapped: for ``map`` and ``set_role``, a user no rule matches is
            refused (``reject``, FATAL 28000) or keeps its own name
            (``preserve``: logs in as itself in ``map`` mode, becomes itself
            in ``set_role`` mode).
        login_role: the upstream login role of ``fixed`` and ``set_role``.
        policy: a :class:`~pgwire.roles._startup.StartupPolicy` or a mapping
            of its fields; default refuses duplicates, role parameters and
            replication.

    Raises ``ValueError`` at construction for any inconsistent setting.
    One instance may serve every session: per-session data lives in
    ``ctx.state``.
    """

    def __init__(self, mode: RewriteMode = "preserve", *,
                 rules: Iterable[RoleRule | Mapping[str, Any]] = (),
                 unmapped: Literal["reject", "preserve"] = "reject",
                 login_role: str | None = None,
                 policy: StartupPolicy | Mapping[str, Any] | None = None) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, not {mode!r}")
        if unmapped not in _UNMAPPED:
            raise ValueError(f"unmapped must be 'reject' or 'preserve', not {unmapped!r}")
        built = _rules(rules)
        if login_role is not None and (not isinstance(login_role, str) or not login_role
                                       or "\0" in login_role):
            raise ValueError(f"login_role must be a non-empty role name, not {login_role!r}")
        if mode in ("fixed", "set_role") and login_role is None:
            raise ValueError(f"mode {mode!r} needs login_role (the role the proxy logs in as)")
        if mode in ("preserve", "map") and login_role is not None:
            raise ValueError(f"mode {mode!r} takes no login_role (it is for 'fixed' and "
                             "'set_role')")
        if mode in ("preserve", "fixed") and built:
            raise ValueError(f"mode {mode!r} takes no rules (they are for 'map' and "
                             "'set_role')")
        if mode == "map" and not built:
            raise ValueError("mode 'map' needs at least one rule")
        if mode == "set_role" and not built and unmapped == "reject":
            raise ValueError("mode 'set_role' with no rules and unmapped='reject' would "
                             "refuse everyone: add rules or set unmapped='preserve'")
        if policy is None:
            policy = DEFAULT_POLICY
        elif isinstance(policy, Mapping):
            policy = StartupPolicy.from_mapping(policy)
        elif not isinstance(policy, StartupPolicy):
            raise ValueError(f"policy must be a StartupPolicy or a table of its settings, "
                             f"not {policy!r}")
        self.mode: RewriteMode = mode
        self.rules: tuple[RoleRule, ...] = built
        self.unmapped: Literal["reject", "preserve"] = unmapped
        self.login_role = login_role
        self.policy: StartupPolicy = policy

    def __repr__(self) -> str:
        return (f"<RoleRewrite mode={self.mode} rules={len(self.rules)} "
                f"login_role={self.login_role!r}>")

    # -- the decision (pure) ---------------------------------------------------------

    def resolve(self, user: str, database: str) -> RoleMapping | None:
        """The mapping for ``user`` on ``database``, or ``None`` when it is refused."""
        if self.mode == "preserve":
            return RoleMapping(client_user=user, database=database, login_role=user)
        if self.mode == "fixed":
            assert self.login_role is not None
            return RoleMapping(client_user=user, database=database, login_role=self.login_role)
        rule = next((rule for rule in self.rules if rule.matches(user, database)), None)
        if rule is None and self.unmapped == "reject":
            return None
        target = rule.target(user, database) if rule is not None else user
        if self.mode == "map":
            return RoleMapping(client_user=user, database=database, login_role=target,
                               rule=rule)
        assert self.login_role is not None
        return RoleMapping(client_user=user, database=database, login_role=self.login_role,
                           role=target, rule=rule)

    # -- hooks -----------------------------------------------------------------------

    def create_state(self, info: SessionInfo) -> _State:
        """Room for the session's mapping."""
        return _State()

    def on_startup(self, ctx: Context[_State], startup: StartupMessage) -> StartupVerdict:
        """Sanitize the packet, decide the mapping and return the packet to send upstream."""
        try:
            clean = sanitize_startup(startup, self.policy)
        except StartupRefused as refused:
            return Reject(refused.sqlstate, refused.message, refused.detail, refused.hint)
        user = clean.get("user")
        if not user:
            return clean  # the proxy refuses a packet without a user (28000)
        database = clean.get("database") or user
        mapping = self.resolve(user, database)
        if mapping is None:
            return Reject("28000", f'no role mapping for user "{user}"',
                          detail=f'No rule maps user "{user}" on database "{database}" '
                                 "to an upstream role.",
                          hint="Connect as a user the proxy's RoleRewrite rules cover, or "
                               "ask the operator to add a rule.")
        if not mapping.login_role or (mapping.role is not None and not mapping.role):
            return Reject("28000", f'the role mapping for user "{user}" gives an empty role')
        ctx.state.mapping = mapping
        return _rewrite(clean, mapping)

    def on_authenticated(self, ctx: Context[_State], result: AuthResult) -> Reject | None:
        """Check that the login used the chosen role, and record the session's roles."""
        mapping = ctx.state.mapping
        if not result.ok or mapping is None:
            return None
        if self.mode == "preserve":
            return None  # nothing was rewritten: the engine's own login role stands
        reported = result.parameters.get("session_authorization")
        for actual in (result.upstream_user, reported):
            if actual is not None and actual != mapping.login_role:
                return Reject(
                    "28000", f'the proxy logged in upstream as "{actual}", not as '
                             f'"{mapping.login_role}" as its role mapping requires',
                    hint="Leave ProxyAuth.upstream_user unset when RoleRewrite chooses "
                         "the upstream role.")
        roles = getattr(ctx, "roles", None)
        if roles is not None and mapping.role is not None:
            roles.default_role = mapping.role
            if not roles.tracked:
                roles.current_user = mapping.role
        return None


def _rewrite(startup: StartupMessage, mapping: RoleMapping) -> StartupMessage:
    """``startup`` with the mapped login role as user (and the startup role, if any)."""
    parameters = [(key, mapping.login_role if key == "user" else value)
                  for key, value in startup.parameters]
    if mapping.login_role != mapping.client_user and startup.get("database") is None:
        # PostgreSQL's default database is named after the user: keep the client's.
        parameters.append(("database", mapping.client_user))
    if mapping.role is not None:
        # Last, after options: sanitize_startup left no other role setting.
        parameters.append(("role", mapping.role))
    return StartupMessage(protocol_version=startup.protocol_version, parameters=tuple(parameters))

"""The role report's data: plain frozen dataclasses, one per row of the report.

Everything here is data only; :mod:`pgwire.roles._report_build` fills it in
and :mod:`pgwire.roles._report_render` writes it out. The JSON form
(:func:`pgwire.roles.report.to_json`) is these classes field by field, so
the field names are part of a stable, versioned schema: add fields, never
rename or remove them without raising :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "SCHEMA_VERSION",
    "SEVERITIES",
    "AllowEntry",
    "GuardSummary",
    "LoginReach",
    "MembershipRow",
    "PoolSummary",
    "ProxyReport",
    "ReachEntry",
    "ReportWarning",
    "RewriteSummary",
    "RoleReport",
    "RoleRow",
    "RuleRow",
    "Severity",
    "StartupMapping",
]

#: The version of the JSON schema; raised on any incompatible change.
SCHEMA_VERSION: Final = 1

Severity = Literal["high", "medium", "low"]
#: Severities, most severe first.
SEVERITIES: Final[tuple[Severity, ...]] = ("high", "medium", "low")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportWarning:
    """One finding: a stable ``code``, its ``severity``, the role (or rule,
    or group of roles) it is about, a sentence, and the membership chain
    that shows it, when there is one."""

    code: str
    severity: Severity
    subject: str
    message: str
    chain: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleRow:
    """A role and its attributes. ``password_set`` is None when unknown (only
    a superuser can read ``pg_authid``); ``connection_limit`` -1 is no limit."""

    name: str
    oid: int
    login: bool
    superuser: bool
    createrole: bool
    createdb: bool
    bypassrls: bool
    replication: bool
    inherit: bool
    connection_limit: int
    password_set: bool | None
    valid_until: str | None
    #: A ``pg_*`` predefined role.
    predefined: bool
    #: The bootstrap superuser made by initdb (OID 10).
    bootstrap: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipRow:
    """``GRANT role TO member``. ``inherit_option`` and ``set_option`` are None
    where the server has no such per-grant options (PostgreSQL 15 and older);
    ``implicit`` marks the database owner's membership in ``pg_database_owner``."""

    role: str
    member: str
    admin_option: bool
    inherit_option: bool | None
    set_option: bool | None
    grantor: str | None
    implicit: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ReachEntry:
    """A role a login role reaches through memberships, and how.

    ``set_chain`` is the shortest chain of grants that lets the login ``SET
    ROLE`` to ``role`` (None if none does); ``inherit_chain`` the shortest
    through which it inherits ``role``'s privileges without any ``SET ROLE``
    (None if none); ``member_chain`` the shortest chain of any grants. Each
    chain starts with the login role and ends with ``role``.
    """

    role: str
    member_chain: tuple[str, ...]
    set_chain: tuple[str, ...] | None
    inherit_chain: tuple[str, ...] | None
    #: Privileged attributes ``role`` holds (SUPERUSER, CREATEROLE, ...).
    attributes: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginReach:
    """Everything one login role reaches. A superuser login may ``SET ROLE``
    to any role and passes every permission check, whatever ``entries`` say."""

    login: str
    superuser: bool
    entries: tuple[ReachEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleRow:
    """A RoleRewrite rule, and the existing login roles it is the first match for."""

    index: int
    user: str
    database: str | None
    role: str
    matches: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RewriteSummary:
    """The RoleRewrite settings: ``mode``, ``login_role``, ``unmapped``, rules."""

    mode: str
    login_role: str | None
    unmapped: str
    rules: tuple[RuleRow, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AllowEntry:
    """One RoleGuard allowlist key (a startup user or ``@group``) and its patterns."""

    key: str
    patterns: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardSummary:
    """The RoleGuard settings that decide role changes."""

    policy: str
    allow: tuple[AllowEntry, ...]
    privileged_roles: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSummary:
    """The pool settings that matter for roles: mode, size, reset, and the
    transaction mode policy for a client's role changes (``session_state.role``)."""

    mode: str
    max_size: int
    reset: str
    role_state: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StartupMapping:
    """What the proxy does with one startup user.

    ``source`` says where the user came from: ``login-role`` (a LOGIN role of
    the server) or ``proxy-user`` (a user of the proxy's own ``[auth]``).
    ``outcome`` is ``ok``, ``refused`` (the proxy refuses the login) or
    ``fails`` (the server will refuse it; ``note`` says why).
    ``switch_to`` lists the roles the session may then ``SET ROLE`` to, as
    both the guard and the server allow; ``switch_note`` explains the rule.
    """

    startup_user: str
    source: str
    database: str
    outcome: str
    upstream_login: str | None
    effective_role: str | None
    how: str
    rule: str | None
    note: str
    switch_to: tuple[str, ...]
    switch_note: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyReport:
    """How a proxy configuration maps and guards each startup user."""

    #: The middleware chain in order (class names; not analysed ones say so).
    middleware: tuple[str, ...]
    #: ``passthrough``, or ``proxy <method>``.
    auth: str
    #: ``[auth] upstream_user``: every session logs in upstream as this role.
    upstream_user: str | None
    rewrite: RewriteSummary | None
    guard: GuardSummary | None
    pool: PoolSummary | None
    mappings: tuple[StartupMapping, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleReport:
    """The whole report: roles, memberships, reach, warnings, proxy mapping.

    ``grant_options`` is True when memberships carry their own INHERIT and
    SET options (PostgreSQL 16 and later); False means the server predates
    them (PostgreSQL 15: inheritance follows each member's INHERIT
    attribute and every grant allows ``SET ROLE``).
    """

    version: int
    server_version_num: int | None
    database: str | None
    grant_options: bool
    include_predefined: bool
    roles: tuple[RoleRow, ...]
    memberships: tuple[MembershipRow, ...]
    reach: tuple[LoginReach, ...]
    warnings: tuple[ReportWarning, ...]
    proxy: ProxyReport | None = None

"""Build a :class:`~pgwire.roles._report_model.RoleReport` from a role graph.

What a login role reaches, as PostgreSQL decides it:

- **SET ROLE** (`SET ROLE
  <https://www.postgresql.org/docs/current/sql-set-role.html>`_): the session
  user may become any role it is a member of, directly or through a chain.
  Up to PostgreSQL 15 every grant counts; from PostgreSQL 16 every grant on
  the chain must have the ``SET`` option (`GRANT
  <https://www.postgresql.org/docs/16/sql-grant.html>`_). This is what
  :meth:`RoleGraph.can_set_role` answers.
- **Inherited privileges** (`Role Membership
  <https://www.postgresql.org/docs/16/role-membership.html>`_): without any
  ``SET ROLE``, a role uses the privileges of the roles it inherits. On
  PostgreSQL 15 (`Role Membership, 15
  <https://www.postgresql.org/docs/15/role-membership.html>`_) a role with the
  ``INHERIT`` attribute inherits from the roles it is a member of, and
  inheritance continues through each of them only while that role is
  ``INHERIT`` too. From PostgreSQL 16 each grant says it (``WITH INHERIT
  TRUE|FALSE``; its default comes from the member's attribute when granted),
  and a chain passes privileges on only if every grant in it has ``INHERIT
  TRUE``.
- **Attributes are never inherited** (same page): SUPERUSER, CREATEROLE,
  CREATEDB, REPLICATION and BYPASSRLS take effect only after ``SET ROLE`` to
  the role holding them. So the over-granting warnings about attributes use
  SET ROLE reach; those about predefined roles (whose power is privileges)
  use any membership.
- The owner of a database is implicitly a member of ``pg_database_owner``
  there (`Predefined Roles
  <https://www.postgresql.org/docs/current/predefined-roles.html>`_).
"""

from __future__ import annotations

import fnmatch
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from ..middleware.base import Middleware
from ..middleware.rewrite import RoleRewrite
from ..middleware.roles import PRIVILEGED_PREDEFINED_ROLES, RoleGuard
from ..proxy import ProxyConfig
from ..proxy._config import ProxyAuth
from ..proxy.config_file import ProxyFile
from ._graph import DATABASE_OWNER_ROLE, PRIVILEGED_ATTRIBUTES, RoleGraph, RoleInfo
from ._report_model import (
    SCHEMA_VERSION,
    SEVERITIES,
    AllowEntry,
    GuardSummary,
    LoginReach,
    MembershipRow,
    PoolSummary,
    ProxyReport,
    ReachEntry,
    ReportWarning,
    RewriteSummary,
    RoleReport,
    RoleRow,
    RuleRow,
    Severity,
    StartupMapping,
)

__all__ = ["WARNING_CODES", "build_report"]

#: OID of the bootstrap superuser initdb creates (BOOTSTRAP_SUPERUSERID).
BOOTSTRAP_SUPERUSER_OID: Final = 10

#: Every warning code, its severity and what it means (docs/role-report.md
#: explains each with the fix).
WARNING_CODES: Final[Mapping[str, tuple[Severity, str]]] = {
    "login-is-superuser": ("high", "a LOGIN role other than the bootstrap superuser is "
                                   "SUPERUSER"),
    "login-reaches-superuser": ("high", "a login role can SET ROLE to a SUPERUSER role"),
    "login-reaches-bypassrls": ("high", "a login role can SET ROLE to a BYPASSRLS role"),
    "login-reaches-createrole": ("high", "a login role can SET ROLE to a CREATEROLE role"),
    "login-reaches-replication": ("medium", "a login role can SET ROLE to a REPLICATION "
                                            "role"),
    "login-reaches-createdb": ("low", "a login role can SET ROLE to a CREATEDB role"),
    "login-reaches-privileged-role": ("high", "a login role is a member of a predefined "
                                              "role that reaches the server's files or "
                                              "programs"),
    "membership-cycle": ("high", "roles are members of each other"),
    "unused-group-role": ("low", "a NOLOGIN role has no members and owns no database"),
    "pool-role-missing": ("high", "RoleRewrite's login_role does not exist"),
    "pool-role-not-login": ("high", "RoleRewrite's login_role cannot log in"),
    "pool-role-reaches-privileged": ("high", "RoleRewrite's login_role holds or can reach "
                                             "privileged attributes or roles"),
    "pool-role-inherits": ("medium", "in set_role mode the pool role inherits the "
                                     "privileges of the roles it maps to"),
    "mapped-role-missing": ("high", "a RoleRewrite rule names a role that does not exist"),
    "mapped-role-unusable": ("high", "a RoleRewrite rule's role cannot be used: the pool "
                                     "role cannot SET ROLE to it, or (map mode) it cannot "
                                     "log in"),
    "set-role-without-guard": ("medium", "set_role mode without a RoleGuard: a session can "
                                         "switch back to the pool role"),
    "guard-allows-privileged": ("high", "a RoleGuard allowlist allows a role that holds "
                                        "privileged attributes or privileged roles"),
    "guard-allowlist-matches-nothing": ("low", "a RoleGuard allowlist pattern matches no "
                                               "existing role"),
}

_REACH_CODES: Final[Mapping[str, str]] = {
    "SUPERUSER": "login-reaches-superuser",
    "BYPASSRLS": "login-reaches-bypassrls",
    "CREATEROLE": "login-reaches-createrole",
    "REPLICATION": "login-reaches-replication",
    "CREATEDB": "login-reaches-createdb",
}

_Chains = dict[str, tuple[str, ...]]


def build_report(graph: RoleGraph, *, proxy: ProxyConfig | ProxyFile | None = None,
                 database: str | None = None, include_predefined: bool = False,
                 passwords: Mapping[str, bool] | None = None) -> RoleReport:
    """The role report of ``graph``, with the mapping of ``proxy`` if given.

    ``database`` is the database the report is about (it decides the
    implicit ``pg_database_owner`` membership and each startup user's
    database); ``include_predefined`` keeps ``pg_*`` roles in the role table
    and diagram (they are always kept in memberships and reach);
    ``passwords`` says which roles have a password (from ``pg_authid``,
    which only a superuser can read; see :func:`load_password_status`).
    """
    config = proxy.config if isinstance(proxy, ProxyFile) else proxy
    memberships = _membership_rows(graph, database)
    edges: dict[str, list[MembershipRow]] = {}
    for row in memberships:
        edges.setdefault(row.member, []).append(row)
    roles = tuple(_role_row(info, passwords) for info in
                  sorted(graph.roles.values(), key=lambda info: info.name))
    reach = tuple(_login_reach(graph, edges, info) for info in
                  sorted(graph.roles.values(), key=lambda info: info.name)
                  if info.login and not info.name.startswith("pg_"))
    warnings = _graph_warnings(graph, memberships, reach, database)
    proxy_report = None
    if config is not None:
        proxy_report, proxy_warnings = _proxy_report(graph, edges, config, database)
        warnings.extend(proxy_warnings)
    warnings.sort(key=lambda w: (SEVERITIES.index(w.severity), w.code, w.subject, w.chain))
    if graph.server_version_num is not None:
        grant_options = graph.server_version_num >= 160000
    else:
        grant_options = any(m.set_option is not None for m in graph.memberships)
    return RoleReport(version=SCHEMA_VERSION, server_version_num=graph.server_version_num,
                      database=database, grant_options=grant_options,
                      include_predefined=include_predefined, roles=roles,
                      memberships=tuple(memberships), reach=reach, warnings=tuple(warnings),
                      proxy=proxy_report)


# -- roles and memberships ----------------------------------------------------------------


def _role_row(info: RoleInfo, passwords: Mapping[str, bool] | None) -> RoleRow:
    return RoleRow(name=info.name, oid=info.oid, login=info.login, superuser=info.superuser,
                   createrole=info.createrole, createdb=info.createdb,
                   bypassrls=info.bypassrls, replication=info.replication,
                   inherit=info.inherit, connection_limit=info.connection_limit,
                   password_set=None if passwords is None else passwords.get(info.name),
                   valid_until=info.valid_until, predefined=info.name.startswith("pg_"),
                   bootstrap=info.oid == BOOTSTRAP_SUPERUSER_OID)


def _membership_rows(graph: RoleGraph, database: str | None) -> list[MembershipRow]:
    rows = [MembershipRow(role=m.role, member=m.member, admin_option=m.admin_option,
                          inherit_option=m.inherit_option, set_option=m.set_option,
                          grantor=m.grantor) for m in graph.memberships]
    owner = graph.database_owners.get(database) if database is not None else None
    if owner is not None and DATABASE_OWNER_ROLE in graph.roles:
        rows.append(MembershipRow(role=DATABASE_OWNER_ROLE, member=owner, admin_option=False,
                                  inherit_option=None, set_option=None, grantor=None,
                                  implicit=True))
    return rows


def _inherits(graph: RoleGraph, grant: MembershipRow) -> bool:
    """Does this grant pass the granted role's privileges on to the member?"""
    if grant.implicit:
        return True
    if grant.inherit_option is not None:
        return grant.inherit_option
    member = graph.role(grant.member)
    return member is not None and member.inherit


def _sets(grant: MembershipRow) -> bool:
    return grant.set_option is None or grant.set_option


def _chains(start: str, edges: Mapping[str, Sequence[MembershipRow]],
            follow: Callable[[MembershipRow], bool]) -> _Chains:
    """Shortest chain from ``start`` to every role reached through followed grants."""
    chains: _Chains = {start: (start,)}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        for grant in edges.get(current, ()):
            if grant.role not in chains and follow(grant):
                chains[grant.role] = (*chains[current], grant.role)
                queue.append(grant.role)
    return chains


def _login_reach(graph: RoleGraph, edges: Mapping[str, Sequence[MembershipRow]],
                 info: RoleInfo) -> LoginReach:
    member = _chains(info.name, edges, lambda grant: True)
    settable = _chains(info.name, edges, _sets)
    inherited = _chains(info.name, edges, lambda grant: _inherits(graph, grant))
    entries = []
    for role in sorted(member):
        if role == info.name:
            continue
        target = graph.role(role)
        attributes = tuple(a for a in PRIVILEGED_ATTRIBUTES
                           if target is not None and a in target.attributes)
        entries.append(ReachEntry(role=role, member_chain=member[role],
                                  set_chain=settable.get(role),
                                  inherit_chain=inherited.get(role), attributes=attributes))
    return LoginReach(login=info.name, superuser=info.superuser, entries=tuple(entries))


# -- warnings about the graph ---------------------------------------------------------------


def _warning(code: str, subject: str, message: str, chain: Iterable[str] = ()) -> ReportWarning:
    return ReportWarning(code=code, severity=WARNING_CODES[code][0], subject=subject,
                         message=message, chain=tuple(chain))


def _arrow(chain: Sequence[str]) -> str:
    return " -> ".join(chain)


def _graph_warnings(graph: RoleGraph, memberships: Sequence[MembershipRow],
                    reach: Sequence[LoginReach], database: str | None) -> list[ReportWarning]:
    found: list[ReportWarning] = []
    for info in graph.roles.values():
        if info.login and info.superuser and info.oid != BOOTSTRAP_SUPERUSER_OID:
            found.append(_warning("login-is-superuser", info.name,
                                  f"login role {info.name!r} is SUPERUSER: it bypasses every "
                                  "permission check"))
    for login in reach:
        if login.superuser:
            continue  # said above; a superuser reaches everything anyway
        info = graph.roles[login.login]
        for entry in login.entries:
            if entry.set_chain is not None:
                found.extend(_attribute_warnings(graph, info, entry.role, entry.set_chain))
            if entry.role in PRIVILEGED_PREDEFINED_ROLES:
                found.append(_warning(
                    "login-reaches-privileged-role", login.login,
                    f"login role {login.login!r} is a member of {entry.role!r}, which reads or "
                    f"writes the server's files or runs programs on it: "
                    f"{_arrow(entry.member_chain)}", entry.member_chain))
    for cycle in graph.cycles():
        found.append(_warning("membership-cycle", ", ".join(cycle),
                              f"roles {', '.join(repr(r) for r in cycle)} are members of each "
                              "other, which PostgreSQL never creates: the catalog is damaged "
                              "or was edited by hand", cycle))
    granted = {m.role for m in memberships}
    owners = set(graph.database_owners.values())
    for info in graph.roles.values():
        if (not info.login and not info.name.startswith("pg_") and info.name not in granted
                and info.name not in owners):
            found.append(_warning("unused-group-role", info.name,
                                  f"NOLOGIN role {info.name!r} has no members and owns no "
                                  "database: no one can use it (unless it owns objects)"))
    return found


def _attribute_warnings(graph: RoleGraph, login: RoleInfo, target: str,
                        chain: Sequence[str]) -> list[ReportWarning]:
    """Warnings for the attributes ``target`` has and ``login`` lacks (SET ROLE reach)."""
    info = graph.role(target)
    if info is None:
        return []
    gained = info.attributes - login.effective_attributes
    if info.superuser:
        gained = frozenset({"SUPERUSER"})  # the others are implied; one warning says it all
    return [_warning(_REACH_CODES[attribute], login.name,
                     f"login role {login.name!r} can SET ROLE to {target!r}, which has "
                     f"{attribute}: {_arrow(chain)}", chain)
            for attribute in PRIVILEGED_ATTRIBUTES if attribute in gained]


# -- the proxy ------------------------------------------------------------------------------


def _proxy_report(graph: RoleGraph, edges: Mapping[str, Sequence[MembershipRow]],
                  config: ProxyConfig, database: str | None
                  ) -> tuple[ProxyReport, list[ReportWarning]]:
    found: list[ReportWarning] = []
    rewrite: RoleRewrite | None = None
    guard: RoleGuard | None = None
    chain_names: list[str] = []
    for middleware in config.middleware:
        label = getattr(middleware, "report_label", None)
        if isinstance(label, str):
            chain_names.append(label)
            continue
        if not isinstance(middleware, Middleware):  # a factory: built per session
            name = getattr(middleware, "__name__", type(middleware).__name__)
            chain_names.append(f"{name} (factory, not analysed)")
            continue
        chain_names.append(type(middleware).__name__)
        if isinstance(middleware, RoleRewrite) and rewrite is None:
            rewrite = middleware
        elif isinstance(middleware, RoleGuard) and guard is None:
            guard = middleware
    auth = config.auth
    upstream_user = auth.upstream_user if isinstance(auth, ProxyAuth) else None
    auth_text = f"proxy {auth.method}" if isinstance(auth, ProxyAuth) else "passthrough"
    privileged = set(PRIVILEGED_PREDEFINED_ROLES) | (
        set(guard.privileged_roles) if guard is not None else set())

    startup_users = {info.name: "login-role" for info in graph.roles.values()
                     if info.login and not info.name.startswith("pg_")}
    if isinstance(auth, ProxyAuth):
        for user in auth.users:
            startup_users.setdefault(user, "proxy-user")

    rewrite_summary = None
    if rewrite is not None:
        rewrite_summary, rewrite_warnings = _rewrite_summary(
            graph, edges, rewrite, guard, startup_users=startup_users, database=database,
            privileged=privileged)
        found.extend(rewrite_warnings)
    guard_summary = None
    if guard is not None:
        guard_summary = GuardSummary(
            policy=guard.policy,
            allow=tuple(AllowEntry(key=key, patterns=patterns)
                        for key, patterns in sorted(guard.allow.items())),
            privileged_roles=tuple(sorted(guard.privileged_roles)))
        found.extend(_guard_warnings(graph, edges, guard, privileged))
    pool = config.pool
    pool_summary = None if pool is None else PoolSummary(
        mode=pool.mode, max_size=pool.max_size, reset=pool.reset,
        role_state=pool.policy("role"))

    mappings = tuple(
        _mapping(graph, user, source, database, rewrite=rewrite, guard=guard,
                 upstream_user=upstream_user, privileged=privileged)
        for user, source in sorted(startup_users.items()))
    report = ProxyReport(middleware=tuple(chain_names), auth=auth_text,
                         upstream_user=upstream_user, rewrite=rewrite_summary,
                         guard=guard_summary, pool=pool_summary, mappings=mappings)
    return report, found


def _rewrite_summary(graph: RoleGraph, edges: Mapping[str, Sequence[MembershipRow]],
                     rewrite: RoleRewrite, guard: RoleGuard | None, *,
                     startup_users: Mapping[str, str], database: str | None,
                     privileged: set[str]) -> tuple[RewriteSummary, list[ReportWarning]]:
    found: list[ReportWarning] = []
    first_match: dict[int, list[str]] = {}
    for user in sorted(startup_users):
        for index, rule in enumerate(rewrite.rules):
            if rule.matches(user, database or user):
                first_match.setdefault(index, []).append(user)
                break
    rules = tuple(RuleRow(index=index, user=rule.user, database=rule.database, role=rule.role,
                          matches=tuple(first_match.get(index, ())))
                  for index, rule in enumerate(rewrite.rules))
    pool_role = rewrite.login_role
    if pool_role is not None:
        found.extend(_pool_role_warnings(graph, edges, rewrite.mode, pool_role, privileged))
    for index, rule in enumerate(rewrite.rules):
        if "{" in rule.role:
            continue  # depends on the user; checked per user in the mapping section
        subject = f"rule {index} ({rule.user} -> {rule.role})"
        target = graph.role(rule.role)
        if target is None:
            found.append(_warning("mapped-role-missing", subject,
                                  f"rule {index} maps {rule.user!r} to {rule.role!r}, which "
                                  "does not exist: those logins fail"))
        elif rewrite.mode == "map" and not target.login:
            found.append(_warning("mapped-role-unusable", subject,
                                  f"rule {index} maps {rule.user!r} to {rule.role!r}, which "
                                  "is NOLOGIN: those logins fail"))
        elif (rewrite.mode == "set_role" and pool_role is not None
              and not graph.can_set_role(pool_role, rule.role, database=database)):
            found.append(_warning("mapped-role-unusable", subject,
                                  f"rule {index} maps {rule.user!r} to {rule.role!r}, but the "
                                  f"pool role {pool_role!r} cannot SET ROLE to it: those "
                                  "logins fail with 42501"))
    if rewrite.mode == "set_role" and guard is None:
        found.append(_warning("set-role-without-guard", f"login_role {pool_role}",
                              "RoleRewrite set_role mode without a RoleGuard: a session can "
                              f"run SET ROLE NONE or SET ROLE {pool_role} and act as the pool "
                              "role"))
    summary = RewriteSummary(mode=rewrite.mode, login_role=pool_role,
                             unmapped=rewrite.unmapped, rules=rules)
    return summary, found


def _pool_role_warnings(graph: RoleGraph, edges: Mapping[str, Sequence[MembershipRow]],
                        mode: str, pool_role: str, privileged: set[str]
                        ) -> list[ReportWarning]:
    subject = pool_role
    info = graph.role(pool_role)
    if info is None:
        return [_warning("pool-role-missing", subject,
                         f"RoleRewrite logs in as {pool_role!r}, which does not exist: "
                         "every login fails")]
    found: list[ReportWarning] = []
    if not info.login:
        found.append(_warning("pool-role-not-login", subject,
                              f"RoleRewrite logs in as {pool_role!r}, which is NOLOGIN: "
                              "every login fails"))
    if info.attributes:
        held = ", ".join(a for a in PRIVILEGED_ATTRIBUTES if a in info.attributes)
        found.append(_warning("pool-role-reaches-privileged", subject,
                              f"the pool role {pool_role!r} itself has {held}", (pool_role,)))
    settable = _chains(pool_role, edges, _sets)
    member = _chains(pool_role, edges, lambda grant: True)
    if not info.superuser:
        for role, chain in sorted(settable.items()):
            target = graph.role(role)
            if role == pool_role or target is None:
                continue
            gained = target.attributes - info.effective_attributes
            if gained:
                held = ", ".join(a for a in PRIVILEGED_ATTRIBUTES if a in gained)
                found.append(_warning("pool-role-reaches-privileged", subject,
                                      f"the pool role {pool_role!r} can SET ROLE to {role!r}, "
                                      f"which has {held}: {_arrow(chain)}", chain))
        for role, chain in sorted(member.items()):
            if role in privileged and role != pool_role:
                found.append(_warning("pool-role-reaches-privileged", subject,
                                      f"the pool role {pool_role!r} is a member of {role!r}: "
                                      f"{_arrow(chain)}", chain))
    if mode == "set_role":
        inherited = _chains(pool_role, edges, lambda grant: _inherits(graph, grant))
        others = sorted(role for role in inherited if role != pool_role)
        if others:
            found.append(_warning("pool-role-inherits", subject,
                                  f"the pool role {pool_role!r} inherits the privileges of "
                                  f"{', '.join(repr(r) for r in others)}; make it NOINHERIT "
                                  "(or grant WITH INHERIT FALSE) so that it has no rights of "
                                  "its own", inherited[others[0]]))
    return found


def _guard_warnings(graph: RoleGraph, edges: Mapping[str, Sequence[MembershipRow]],
                    guard: RoleGuard, privileged: set[str]) -> list[ReportWarning]:
    found: list[ReportWarning] = []
    if guard.policy != "allowlist":
        return found
    for key, patterns in sorted(guard.allow.items()):
        for pattern in patterns:
            matched = sorted(name for name in graph.roles if fnmatch.fnmatchcase(name, pattern))
            subject = f"allow[{key}] {pattern}"
            if not matched:
                found.append(_warning("guard-allowlist-matches-nothing", subject,
                                      f"the allowlist pattern {pattern!r} for {key!r} matches "
                                      "no existing role"))
            for role in matched:
                reason = _privileged_reason(graph, edges, role, privileged)
                if reason is not None:
                    found.append(_warning("guard-allows-privileged", subject,
                                          f"the allowlist lets {key!r} switch to {role!r}, "
                                          f"which {reason}", (role,)))
    return found


def _privileged_reason(graph: RoleGraph, edges: Mapping[str, Sequence[MembershipRow]],
                       role: str, privileged: set[str]) -> str | None:
    """Why switching to ``role`` gains privileged powers, or None."""
    info = graph.role(role)
    if info is None:
        return None
    if info.attributes:
        return "has " + ", ".join(a for a in PRIVILEGED_ATTRIBUTES if a in info.attributes)
    if role in privileged:
        return "is a privileged predefined role"
    inherited = _chains(role, edges, lambda grant: _inherits(graph, grant))
    powers = sorted(set(inherited) & privileged)
    if powers:
        return f"inherits {powers[0]}: {_arrow(inherited[powers[0]])}"
    return None


def _mapping(graph: RoleGraph, user: str, source: str, database: str | None, *,
             rewrite: RoleRewrite | None, guard: RoleGuard | None,
             upstream_user: str | None, privileged: set[str]) -> StartupMapping:
    db = database or user
    rule_text: str | None = None
    role: str | None = None
    if rewrite is None:
        how = "no RoleRewrite: logs in as itself"
        login: str | None = user
    else:
        mapping = rewrite.resolve(user, db)
        if mapping is None:
            return StartupMapping(
                startup_user=user, source=source, database=db, outcome="refused",
                upstream_login=None, effective_role=None, how=rewrite.mode, rule=None,
                note="no rule matches and unmapped = reject: FATAL 28000", switch_to=(),
                switch_note="")
        login, role = mapping.login_role, mapping.role
        if mapping.rule is not None:
            index = rewrite.rules.index(mapping.rule)
            rule_text = f"rule {index}: {mapping.rule.user} -> {mapping.rule.role}"
        elif rewrite.mode in ("map", "set_role"):
            rule_text = "unmapped = preserve"
        how = rewrite.mode
    if upstream_user is not None and login != upstream_user:
        if rewrite is not None and rewrite.mode != "preserve":
            return StartupMapping(
                startup_user=user, source=source, database=db, outcome="refused",
                upstream_login=upstream_user, effective_role=None, how=how, rule=rule_text,
                note="[auth] upstream_user overrides the RoleRewrite mapping, which then "
                     "refuses the session (28000)", switch_to=(), switch_note="")
        login = upstream_user
    assert login is not None
    problem = _login_problem(graph, login, role, db)
    if problem is not None:
        return StartupMapping(startup_user=user, source=source, database=db, outcome="fails",
                              upstream_login=login, effective_role=role or login, how=how,
                              rule=rule_text, note=problem, switch_to=(), switch_note="")
    note = ""
    default = None
    if role is None:
        default = graph.default_role(login, db)
        if default is not None:
            note = f"ALTER ROLE ... SET role = {default} applies at login"
    effective = role or default or login
    switch_to, switch_note = _switches(graph, user, login, effective, db, guard=guard,
                                         privileged=privileged)
    return StartupMapping(startup_user=user, source=source, database=db, outcome="ok",
                          upstream_login=login, effective_role=effective, how=how,
                          rule=rule_text, note=note, switch_to=switch_to,
                          switch_note=switch_note)


def _login_problem(graph: RoleGraph, login: str, role: str | None, database: str) -> str | None:
    info = graph.role(login)
    if info is None:
        return f"role {login!r} does not exist: the server refuses the login (28000)"
    if not info.login:
        return f"role {login!r} is NOLOGIN: the server refuses the login (28000)"
    if role is not None:
        if graph.role(role) is None:
            return f"role {role!r} does not exist: the login fails (22023)"
        if not graph.can_set_role(login, role, database=database):
            return (f"{login!r} cannot SET ROLE to {role!r}: the login fails with 42501 "
                    "(permission denied to set role)")
    return None


def _switches(graph: RoleGraph, user: str, login: str, base: str, database: str, *,
              guard: RoleGuard | None, privileged: set[str]) -> tuple[tuple[str, ...], str]:
    """The roles a session may SET ROLE to, as the guard and the server both allow."""
    server = sorted(r for r in graph.reachable(login, database=database) if r != base)
    if guard is None:
        return tuple(server), "no RoleGuard: any role the server allows"
    if guard.policy == "deny":
        return (), "deny: no role change (back to the starting role only)"
    if guard.policy == "drop_only":
        allowed = []
        for role in server:
            ok, _ = graph.drop_only(base, role, database=database)
            if not ok:
                continue
            powers = ({role} | graph.groups(role, database=database)) & privileged
            if not powers:
                allowed.append(role)
        return tuple(allowed), f"drop_only from {base}: no attribute or privileged role gained"
    keys = [user, login]
    groups: set[str] = set()
    for name in (user, login):
        if graph.role(name) is not None:
            groups |= graph.groups(name, database=database)
    keys.extend(f"@{group}" for group in sorted(groups))
    patterns = [p for key in dict.fromkeys(keys) for p in guard.allow.get(key, ())]
    allowed = [role for role in server
               if any(fnmatch.fnmatchcase(role, p) for p in patterns)]
    listed = ", ".join(patterns) if patterns else "nothing"
    return tuple(allowed), f"allowlist: {listed}"

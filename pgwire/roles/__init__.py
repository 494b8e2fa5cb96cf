"""Roles behind a proxy: the pieces the role middleware is built from.

- :class:`SessionRoles` — one session's roles, shared by its middleware as
  ``ctx.roles``; :class:`RoleDecision` / :class:`RoleChange`, the events the
  guard and the tracker publish;
- :func:`analyze` — what a SQL string does to roles, read with PostgreSQL's
  own grammar (needs pglast: ``pip install 'pgwire[sql]'``);
- :class:`RoleTracker` — the effective role of a session, from its statements
  and the server's answers;
- :class:`RoleGraph` / :class:`RoleGraphSource` / :func:`load_role_graph` —
  roles, attributes, memberships and role defaults, loaded from the server;
- :func:`sanitize_startup` and the ``options`` parser — the startup packet as
  PostgreSQL reads it.

The middleware are in :mod:`pgwire.middleware.rewrite` (RoleRewrite),
:mod:`pgwire.middleware.roles` (RoleGuard) and :mod:`pgwire.middleware.audit`.
See ``docs/roles.md``.
"""

from ._graph import (
    PRIVILEGED_ATTRIBUTES,
    Membership,
    RoleGraph,
    RoleGraphSource,
    RoleInfo,
    RoleSetting,
    load_role_graph,
)
from ._sql import Analysis, RoleAction, StatementInfo, analyze
from ._startup import (
    InvalidOptions,
    OptionSetting,
    StartupPolicy,
    StartupRefused,
    is_replication,
    join_options,
    parse_options,
    sanitize_startup,
    split_options,
)
from ._state import ROLE_SETTINGS, RoleChange, RoleDecision, RoleEvent, SessionRoles
from ._tracker import RoleTracker

__all__ = [
    "PRIVILEGED_ATTRIBUTES",
    "ROLE_SETTINGS",
    "Analysis",
    "InvalidOptions",
    "Membership",
    "OptionSetting",
    "RoleAction",
    "RoleChange",
    "RoleDecision",
    "RoleEvent",
    "RoleGraph",
    "RoleGraphSource",
    "RoleInfo",
    "RoleSetting",
    "RoleTracker",
    "SessionRoles",
    "StartupPolicy",
    "StartupRefused",
    "StatementInfo",
    "analyze",
    "is_replication",
    "join_options",
    "load_role_graph",
    "parse_options",
    "sanitize_startup",
    "split_options",
]

"""Roles behind a proxy: what a session's roles are, and the tools the role
middleware is built from.

- :class:`SessionRoles` — one session's roles, shared by its middleware as ``ctx.roles``;
- :class:`RoleDecision` / :class:`RoleChange` — the events the guard and tracker publish.
"""

from ._state import RoleChange, RoleDecision, RoleEvent, SessionRoles

__all__ = ["RoleChange", "RoleDecision", "RoleEvent", "SessionRoles"]

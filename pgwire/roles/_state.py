"""What a session knows about its roles, shared by the middleware of one session.

The proxy makes one :class:`SessionRoles` per session and hands it to every
middleware as ``ctx.roles``. The session fills in the login facts; a role
tracker (the one :class:`~pgwire.middleware.roles.RoleGuard` runs, or the
audit middleware's own when no guard is configured) keeps ``current_user``
and ``session_user`` up to date; other middleware read them and may
subscribe to :class:`RoleDecision` and :class:`RoleChange` events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._tracker import RoleTracker

__all__ = ["ROLE_SETTINGS", "RoleChange", "RoleDecision", "RoleEvent", "SessionRoles"]

#: The settings that decide who a session acts as (GUC names, lower case).
ROLE_SETTINGS: Final = frozenset({"role", "session_authorization"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleDecision:
    """The guard allowed or refused a statement that changes (or may change) a role.

    ``kind`` names what the statement does (``set_role``, ``reset_role``,
    ``set_session_authorization``, ``set_config``, ``discard_all``,
    ``alter_role_default``, ``do_block``, ``call``, ``function_definition``,
    ``unparseable``, ...); ``target`` is the role asked for when the statement
    names one (``None`` for resets and unknown targets).
    """

    statement: str
    kind: str
    target: str | None
    allowed: bool
    reason: str
    policy: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleChange:
    """The session's effective role or session user changed (as the server confirmed)."""

    before_current: str | None
    after_current: str | None
    before_session: str | None
    after_session: str | None
    statement: str | None
    #: True when the values come from asking the server, not from the model.
    verified: bool = False


RoleEvent = RoleDecision | RoleChange


@dataclass(slots=True, kw_only=True)
class SessionRoles:
    """The roles of one session, as the proxy knows them.

    - ``client_user``: the ``user`` of the client's own StartupMessage, before
      any rewrite;
    - ``login_role``: the role the proxy logged in as upstream (set after login);
    - ``database``: the upstream database;
    - ``session_user`` / ``current_user``: ``session_user`` and ``current_user``
      as they are now, when ``tracked`` (``None`` while unknown);
    - ``default_role``: what ``RESET ROLE`` returns to (``None`` means the
      session user), when known.
    """

    client_user: str = ""
    login_role: str | None = None
    database: str = ""
    session_user: str | None = None
    current_user: str | None = None
    default_role: str | None = None
    #: True while a tracker keeps ``current_user``/``session_user`` up to date.
    tracked: bool = False
    #: True once ``default_role`` is known (the server answered at login).
    starting_role_known: bool = False
    #: The object that feeds the tracker (the first middleware to claim it).
    tracker_owner: object | None = None
    #: The session's :class:`~pgwire.roles.RoleTracker`, once one runs: other
    #: middleware may tell it what only they know (the guard, a role bound
    #: as a parameter).
    tracker: RoleTracker | None = field(default=None, repr=False)
    _listeners: list[Callable[[RoleEvent], None]] = field(default_factory=list, repr=False)

    def subscribe(self, listener: Callable[[RoleEvent], None]) -> None:
        """Call ``listener`` with every later :class:`RoleDecision` and :class:`RoleChange`."""
        self._listeners.append(listener)

    def publish(self, event: RoleEvent) -> None:
        """Tell every subscriber (called by the guard and the tracker)."""
        for listener in self._listeners:
            listener(event)

    def claim_tracking(self, owner: object) -> bool:
        """Become the one that tracks roles for this session; False if another already is."""
        if self.tracker_owner is None or self.tracker_owner is owner:
            self.tracker_owner = owner
            return True
        return False

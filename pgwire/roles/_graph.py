"""The role graph: which roles a login may become, and what each role may do.

A proxy that polices ``SET ROLE`` needs the same facts PostgreSQL uses to
decide it: the roles and their attributes (``pg_roles``), who is a member of
whom (``pg_auth_members``), the per-role and per-database defaults
(``pg_db_role_setting``) and the database owners (``pg_database``, for the
implicit ``pg_database_owner`` membership). :func:`load_role_graph` reads them
in one snapshot into an immutable :class:`RoleGraph`, which answers
"may ``app`` become ``admin``?" the way the server would, and "would that be
a drop in privilege?" the way the RoleGuard's *drop only* policy asks.
:class:`RoleGraphSource` holds the current graph for a whole proxy and
reloads it, off the data path, when it grows old.

What the server does, and where the PostgreSQL documentation says it:

- ``SET ROLE r`` is allowed when the *session user* (not the current user) is
  a superuser, or is ``r``, or is a member of ``r`` directly or through a
  chain of memberships (`SET ROLE
  <https://www.postgresql.org/docs/current/sql-set-role.html>`_). Role
  *attributes* (SUPERUSER, CREATEROLE, ...) are never inherited through
  membership (`Role Membership
  <https://www.postgresql.org/docs/current/role-membership.html>`_).
- Up to PostgreSQL 15 every membership counts for ``SET ROLE``, whatever the
  member's ``INHERIT`` attribute (`PostgreSQL 15, SET ROLE
  <https://www.postgresql.org/docs/15/sql-set-role.html>`_: "the current
  session user must be a member of the specified role"). From PostgreSQL 16
  each grant has its own ``SET`` option, and a chain allows ``SET ROLE`` only
  when every grant along it has ``SET TRUE`` (`GRANT
  <https://www.postgresql.org/docs/16/sql-grant.html>`_, `pg_auth_members
  <https://www.postgresql.org/docs/16/catalog-pg-auth-members.html>`_). A
  :class:`Membership` loaded from PostgreSQL 15 has ``set_option=None`` and
  counts as ``SET TRUE``.
- The owner of the current database is implicitly a member of
  ``pg_database_owner`` (`Predefined Roles
  <https://www.postgresql.org/docs/current/predefined-roles.html>`_), so the
  answer for that role depends on the database; pass ``database=`` to ask.
- At login PostgreSQL applies the defaults of ``ALTER ROLE ... [IN DATABASE
  ...] SET``, most specific first: role *and* database, then the role in all
  databases, then the database for all roles (``ALTER DATABASE ... SET``),
  then ``ALTER ROLE ALL SET`` (`ALTER ROLE
  <https://www.postgresql.org/docs/current/sql-alterrole.html>`_). A ``role``
  default the session user may not take is skipped with a WARNING and the
  next one is tried; the value ``none`` means "no role" and stops the search.
  Startup ``options`` (``-c role=...``) override all of these.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from ..sqlclient import Address, QueryError, SQLConnection
from ..tls import SSLMode
from ._state import ROLE_SETTINGS

__all__ = [
    "PRIVILEGED_ATTRIBUTES",
    "ROLE_SETTINGS",
    "Membership",
    "RoleGraph",
    "RoleGraphSource",
    "RoleInfo",
    "RoleSetting",
    "load_role_graph",
]

logger = logging.getLogger("pgwire.roles")

#: The role attributes the *drop only* policy compares, in the order messages name them.
PRIVILEGED_ATTRIBUTES: Final[tuple[str, ...]] = (
    "SUPERUSER", "CREATEROLE", "CREATEDB", "REPLICATION", "BYPASSRLS",
)


#: The predefined role that the owner of the current database is implicitly a member of.
DATABASE_OWNER_ROLE: Final = "pg_database_owner"


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleInfo:
    """One row of ``pg_roles``: a role's name, OID and attributes.

    ``connection_limit`` is ``rolconnlimit`` (-1: no limit) and ``valid_until``
    the text of ``rolvaliduntil`` (None: the password never expires); both are
    for reports and play no part in any decision.
    """

    name: str
    oid: int
    superuser: bool = False
    createrole: bool = False
    createdb: bool = False
    replication: bool = False
    bypassrls: bool = False
    login: bool = False
    inherit: bool = True
    connection_limit: int = -1
    valid_until: str | None = None

    @property
    def attributes(self) -> frozenset[str]:
        """The privileged attributes this role holds (a subset of `PRIVILEGED_ATTRIBUTES`)."""
        held = (self.superuser, self.createrole, self.createdb, self.replication, self.bypassrls)
        return frozenset(name for name, has in zip(PRIVILEGED_ATTRIBUTES, held, strict=True)
                         if has)

    @property
    def effective_attributes(self) -> frozenset[str]:
        """What the role can do: a superuser passes every check the other attributes guard.

        PostgreSQL lets a superuser create roles and databases, replicate and
        ignore row security without holding those attributes, so a superuser
        counts as holding all of `PRIVILEGED_ATTRIBUTES`.
        """
        if self.superuser:
            return frozenset(PRIVILEGED_ATTRIBUTES)
        return self.attributes


@dataclass(frozen=True, slots=True, kw_only=True)
class Membership:
    """One row of ``pg_auth_members``: ``member`` was granted ``role``.

    ``inherit_option`` and ``set_option`` exist from PostgreSQL 16 on; they are
    ``None`` for a graph loaded from PostgreSQL 15 or older, where every
    membership allows ``SET ROLE``. ``grantor`` is the role that made the
    grant, when the loader knows it (None for hand-built grants, or when the
    grantor role no longer exists).
    """

    role: str
    member: str
    admin_option: bool = False
    inherit_option: bool | None = None
    set_option: bool | None = None
    grantor: str | None = None

    @property
    def allows_set_role(self) -> bool:
        """True when this grant lets the member ``SET ROLE`` to ``role`` (given the rest)."""
        return self.set_option is None or self.set_option


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleSetting:
    """One ``name=value`` default from ``pg_db_role_setting``.

    ``role`` and ``database`` are ``None`` where the catalog says "all" (OID 0):
    ``ALTER DATABASE d SET`` has no role, ``ALTER ROLE r SET`` no database,
    ``ALTER ROLE ALL SET`` neither. ``name`` is lower case.
    """

    role: str | None
    database: str | None
    name: str
    value: str


_Level = tuple[str | None, str | None]


class RoleGraph:
    """An immutable snapshot of the roles of one PostgreSQL cluster.

    Build it with :func:`load_role_graph` from a server, or by hand (tests,
    fixed configurations) from :class:`RoleInfo`, :class:`Membership` and
    :class:`RoleSetting` values or with :meth:`from_rows`. Safe to share
    between threads. Hostile data (membership cycles, which PostgreSQL
    refuses to create, grants naming unknown roles) never makes a method loop.

    ``settings_complete`` is False when the loader could not read
    ``pg_db_role_setting`` and only knows the per-role defaults of
    ``pg_roles.rolconfig``: then :meth:`default_role` may miss an
    ``IN DATABASE`` or ``ALTER DATABASE`` default.
    """

    __slots__ = ("_by_level", "_closure", "_database_owners", "_edges", "_memberships",
                 "_roles", "_server_version_num", "_settings", "_settings_complete")

    def __init__(self, *, roles: Iterable[RoleInfo], memberships: Iterable[Membership] = (),
                 settings: Iterable[RoleSetting] = (),
                 database_owners: Mapping[str, str] | None = None,
                 settings_complete: bool = True,
                 server_version_num: int | None = None) -> None:
        by_name: dict[str, RoleInfo] = {}
        for info in roles:
            if info.name in by_name:
                raise ValueError(f"role {info.name!r} appears twice; role names are unique")
            by_name[info.name] = info
        self._roles: Mapping[str, RoleInfo] = MappingProxyType(by_name)
        self._memberships = tuple(memberships)
        self._settings = tuple(settings)
        self._database_owners: Mapping[str, str] = MappingProxyType(dict(database_owners or {}))
        self._settings_complete = settings_complete
        self._server_version_num = server_version_num
        # member -> [(role, grant allows SET ROLE)], in catalog order.
        edges: dict[str, list[tuple[str, bool]]] = {}
        for grant in self._memberships:
            edges.setdefault(grant.member, []).append((grant.role, grant.allows_set_role))
        self._edges = edges
        by_level: dict[_Level, dict[str, str]] = {}
        for setting in self._settings:
            # The first entry wins, as when PostgreSQL reads a setconfig array.
            by_level.setdefault((setting.role, setting.database), {}).setdefault(
                setting.name.lower(), setting.value)
        self._by_level = by_level
        # (member, database, SET ROLE only) -> {reached role: the role it was reached from}
        self._closure: dict[tuple[str, str | None, bool], dict[str, str | None]] = {}

    @classmethod
    def from_rows(cls, roles: Iterable[str | tuple[str, str]],
                  memberships: Iterable[tuple[str, str] | tuple[str, str, str]] = (),
                  settings: Iterable[tuple[str | None, str | None, str]] = (),
                  database_owners: Mapping[str, str] | None = None,
                  settings_complete: bool = True) -> RoleGraph:
        """A graph from short literals, written the way the SQL would say it.

        - ``roles``: a name, or ``(name, options)`` with ``options`` the words
          of ``CREATE ROLE``: ``"SUPERUSER LOGIN NOINHERIT"``. Roles get OIDs
          from 16384 on, in order.
        - ``memberships``: ``(role, member)`` for ``GRANT role TO member``, as
          on PostgreSQL 15; ``(role, member, "ADMIN TRUE, SET FALSE")`` for a
          PostgreSQL 16 grant ``WITH`` those options (``INHERIT`` and ``SET``
          default to TRUE, ``ADMIN`` to FALSE).
        - ``settings``: ``(role, database, "name=value")`` as in
          ``pg_db_role_setting``, ``None`` meaning all roles or databases.

        Raises:
            ValueError: an unknown option word, or a setting without ``=``.
        """
        infos = [_role_from_words(entry, 16384 + index) for index, entry in enumerate(roles)]
        grants = [_membership_from_words(entry) for entry in memberships]
        parsed: list[RoleSetting] = []
        for role, database, entry in settings:
            setting = _parse_setting(role, database, entry)
            if setting is None:
                raise ValueError(f"setting {entry!r} is not name=value")
            parsed.append(setting)
        return cls(roles=infos, memberships=grants, settings=parsed,
                   database_owners=database_owners, settings_complete=settings_complete)

    # -- what the graph holds --------------------------------------------------

    @property
    def roles(self) -> Mapping[str, RoleInfo]:
        """Every role by name (read-only)."""
        return self._roles

    @property
    def memberships(self) -> tuple[Membership, ...]:
        """Every grant, in catalog order."""
        return self._memberships

    @property
    def settings(self) -> tuple[RoleSetting, ...]:
        """The ``role`` and ``session_authorization`` defaults."""
        return self._settings

    @property
    def database_owners(self) -> Mapping[str, str]:
        """The owner role of each database, by database name."""
        return self._database_owners

    @property
    def settings_complete(self) -> bool:
        """False when per-database defaults could not be read (see the class docs)."""
        return self._settings_complete

    @property
    def server_version_num(self) -> int | None:
        """The server's ``server_version_num`` (150018 for 15.18), when loaded from one."""
        return self._server_version_num

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoleGraph):
            return NotImplemented
        return (dict(self._roles) == dict(other._roles)
                and sorted(self._memberships, key=repr) == sorted(other._memberships, key=repr)
                and sorted(self._settings, key=repr) == sorted(other._settings, key=repr)
                and dict(self._database_owners) == dict(other._database_owners)
                and self._settings_complete == other._settings_complete)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"<RoleGraph {len(self._roles)} roles, {len(self._memberships)} memberships, "
                f"{len(self._settings)} settings>")

    def role(self, name: str) -> RoleInfo | None:
        """The role called ``name`` (exact, case-sensitive), or None."""
        return self._roles.get(name)

    # -- membership --------------------------------------------------------------

    def can_set_role(self, member: str, target: str, *, database: str | None = None) -> bool:
        """Would PostgreSQL let session user ``member`` run ``SET ROLE target``?

        True when both roles exist and ``member`` is a superuser, is
        ``target``, or reaches ``target`` through grants that allow ``SET
        ROLE`` (all grants up to PostgreSQL 15; those with ``SET TRUE`` from
        16 on). ``database`` names the current database, which matters only
        for ``pg_database_owner``; without it that implicit membership is
        left out. ``member`` must be the *session* user: PostgreSQL checks
        it, not the current role, so a chain of ``SET ROLE`` never widens
        what is reachable.
        """
        if member not in self._roles or target not in self._roles:
            return False
        if self._roles[member].superuser:
            return True
        return target in self._reach(member, database, set_role=True)

    def reachable(self, member: str, *, database: str | None = None) -> frozenset[str]:
        """Every role ``member`` may ``SET ROLE`` to, itself included (empty if unknown)."""
        if member not in self._roles:
            return frozenset()
        if self._roles[member].superuser:
            return frozenset(self._roles)
        return frozenset(name for name in self._reach(member, database, set_role=True)
                         if name in self._roles)

    def groups(self, member: str, *, database: str | None = None) -> frozenset[str]:
        """Every role ``member`` belongs to, directly or through other roles, except itself.

        Every grant counts, whatever its ``SET`` and ``INHERIT`` options: this
        is membership, as ``pg_has_role(member, role, 'MEMBER')`` sees it, for
        allowlists written in terms of groups. A superuser is not a member
        of anything it was not granted.
        """
        if member not in self._roles:
            return frozenset()
        return frozenset(name for name in self._reach(member, database, set_role=False)
                         if name in self._roles and name != member)

    def drop_only(self, login: str, target: str, *,
                  database: str | None = None) -> tuple[bool, str]:
        """May ``login`` switch to ``target`` without gaining any role attribute?

        Allowed when :meth:`can_set_role` allows it and every attribute of
        `PRIVILEGED_ATTRIBUTES` that ``target`` holds, ``login`` holds too (a
        superuser holds them all): never up to a SUPERUSER, CREATEROLE or
        BYPASSRLS holder from a role without it. Returns ``(allowed, reason)``
        with a reason fit for an error's DETAIL, e.g. ``role "admin" has
        SUPERUSER, which "app" does not have``.
        """
        login_info = self._roles.get(login)
        if login_info is None:
            return False, f'role "{login}" does not exist'
        target_info = self._roles.get(target)
        if target_info is None:
            return False, f'role "{target}" does not exist'
        if not self.can_set_role(login, target, database=database):
            if target in self.groups(login, database=database):
                return False, (f'"{login}" is a member of "{target}", but no chain of grants '
                               f'to it allows SET ROLE (SET FALSE)')
            return False, f'"{login}" is not a member of "{target}"'
        gained = target_info.attributes - login_info.effective_attributes
        if gained:
            names = [name for name in PRIVILEGED_ATTRIBUTES if name in gained]
            listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            return False, f'role "{target}" has {listed}, which "{login}" does not have'
        if target == login:
            return True, f'"{target}" is the login role itself'
        if login_info.superuser:
            return True, f'"{login}" is a superuser and "{target}" has no more attributes'
        return True, (f'"{login}" is a member of "{target}", which has no attribute '
                      f'"{login}" lacks')

    # -- login defaults ------------------------------------------------------

    def default_setting(self, login: str, database: str, name: str) -> str | None:
        """The stored default of setting ``name`` for ``login`` in ``database``, or None.

        Looks, most specific first, at ``ALTER ROLE login IN DATABASE
        database SET``, ``ALTER ROLE login SET``, ``ALTER DATABASE database
        SET`` and ``ALTER ROLE ALL SET``, and returns the first value found,
        without asking whether PostgreSQL would accept it (see
        :meth:`default_role` for that).

        Raises:
            ValueError: ``name`` is not one of `ROLE_SETTINGS`, the only ones
                the graph keeps.
        """
        key = name.lower()
        if key not in ROLE_SETTINGS:
            raise ValueError(f"the role graph keeps only {sorted(ROLE_SETTINGS)}, not {name!r}")
        for level in _levels(login, database):
            value = self._by_level.get(level, {}).get(key)
            if value is not None:
                return value
        return None

    def default_role(self, login: str, database: str) -> str | None:
        """The role PostgreSQL makes current when ``login`` logs in to ``database``.

        ``None`` means no ``SET ROLE`` happens: ``current_user`` is the login
        role. As the server does, a default naming a role ``login`` may not
        take (or one that does not exist) is skipped for the next less
        specific one, and ``none`` ends the search with no role. Startup
        ``options`` and ``session_authorization`` defaults are not taken into
        account.
        """
        for level in _levels(login, database):
            value = self._by_level.get(level, {}).get("role")
            if value is None:
                continue
            if value == "none":
                return None
            if self.can_set_role(login, value, database=database):
                return value
        return None

    # -- hostile data --------------------------------------------------------

    def cycles(self) -> list[list[str]]:
        """Groups of roles that are members of each other, sorted; normally none.

        PostgreSQL refuses a grant that would close a loop, so a cycle means
        the data did not come from a healthy catalog. Each group is a
        strongly connected component of the membership graph (with more than
        one role, or one role granted to itself).
        """
        return _strongly_connected(self._edges)

    # -- internals -----------------------------------------------------------

    def _reach(self, member: str, database: str | None, *,
               set_role: bool) -> dict[str, str | None]:
        """Breadth-first closure from ``member``: each reached role -> where from."""
        key = (member, database, set_role)
        cached = self._closure.get(key)
        if cached is not None:
            return cached
        owner = self._database_owners.get(database) if database is not None else None
        parents: dict[str, str | None] = {member: None}
        queue = deque([member])
        while queue:
            current = queue.popleft()
            steps = [role for role, allows in self._edges.get(current, ())
                     if allows or not set_role]
            if owner is not None and current == owner:
                steps.append(DATABASE_OWNER_ROLE)
            for role in steps:
                if role not in parents:
                    parents[role] = current
                    queue.append(role)
        self._closure[key] = parents  # a race only computes the same answer twice
        return parents


def _levels(login: str, database: str) -> tuple[_Level, ...]:
    # The order of process_settings() in PostgreSQL's src/backend/utils/init/postinit.c.
    return ((login, database), (login, None), (None, database), (None, None))


def _strongly_connected(edges: Mapping[str, list[tuple[str, bool]]]) -> list[list[str]]:
    """Tarjan's algorithm without recursion (hostile graphs can be deep)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    nodes = set(edges) | {role for targets in edges.values() for role, _ in targets}
    for root in sorted(nodes):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            successors = [role for role, _ in edges.get(node, ())]
            if position < len(successors):
                work.append((node, position + 1))
                nxt = successors[position]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    popped = stack.pop()
                    on_stack.discard(popped)
                    component.append(popped)
                    if popped == node:
                        break
                looped = any(role == node for role, _ in edges.get(node, ()))
                if len(component) > 1 or looped:
                    found.append(sorted(component))
    return sorted(found)


_ROLE_WORDS: Final[dict[str, tuple[str, bool]]] = {
    "SUPERUSER": ("superuser", True), "NOSUPERUSER": ("superuser", False),
    "CREATEROLE": ("createrole", True), "NOCREATEROLE": ("createrole", False),
    "CREATEDB": ("createdb", True), "NOCREATEDB": ("createdb", False),
    "REPLICATION": ("replication", True), "NOREPLICATION": ("replication", False),
    "BYPASSRLS": ("bypassrls", True), "NOBYPASSRLS": ("bypassrls", False),
    "LOGIN": ("login", True), "NOLOGIN": ("login", False),
    "INHERIT": ("inherit", True), "NOINHERIT": ("inherit", False),
}


def _role_from_words(entry: str | tuple[str, str], oid: int) -> RoleInfo:
    name, words = (entry, "") if isinstance(entry, str) else entry
    flags: dict[str, Any] = {}
    for word in words.upper().split():
        if word not in _ROLE_WORDS:
            raise ValueError(f"unknown role option {word!r} for {name!r}; "
                             f"use CREATE ROLE words: {', '.join(_ROLE_WORDS)}")
        field, value = _ROLE_WORDS[word]
        flags[field] = value
    return RoleInfo(name=name, oid=oid, **flags)


def _membership_from_words(entry: tuple[str, str] | tuple[str, str, str]) -> Membership:
    if len(entry) == 2:
        return Membership(role=entry[0], member=entry[1])
    role, member, words = entry
    options = {"ADMIN": False, "INHERIT": True, "SET": True}
    for part in words.split(","):
        pieces = part.upper().split()
        if not pieces:
            continue
        if len(pieces) != 2 or pieces[0] not in options or pieces[1] not in ("TRUE", "FALSE"):
            raise ValueError(f"grant option {part.strip()!r} is not ADMIN|INHERIT|SET "
                             "TRUE|FALSE")
        options[pieces[0]] = pieces[1] == "TRUE"
    return Membership(role=role, member=member, admin_option=options["ADMIN"],
                      inherit_option=options["INHERIT"], set_option=options["SET"])


def _parse_setting(role: str | None, database: str | None, entry: str) -> RoleSetting | None:
    """One ``setconfig`` element (``name=value``) as a :class:`RoleSetting`; None if malformed."""
    name, sep, value = entry.partition("=")
    if not sep or not name:
        return None
    return RoleSetting(role=role, database=database, name=name.lower(), value=value)


# ---------------------------------------------------------------------------
# Loading from a server

_VERSION_SQL = "SELECT pg_catalog.current_setting('server_version_num')"

_ROLES_SQL = """
SELECT r.rolname, r.oid, r.rolsuper, r.rolcreaterole, r.rolcreatedb,
       r.rolreplication, r.rolbypassrls, r.rolcanlogin, r.rolinherit,
       r.rolconnlimit, r.rolvaliduntil::pg_catalog.text
FROM pg_catalog.pg_roles AS r
"""

_MEMBER_COLUMNS_SQL = """
SELECT a.attname FROM pg_catalog.pg_attribute AS a
WHERE a.attrelid = 'pg_catalog.pg_auth_members'::pg_catalog.regclass
  AND a.attname IN ('inherit_option', 'set_option') AND NOT a.attisdropped
"""

_MEMBERS_SQL = """
SELECT m.roleid, m.member, m.admin_option, {inherit_option}, {set_option}, m.grantor
FROM pg_catalog.pg_auth_members AS m
"""

_DATABASES_SQL = "SELECT d.oid, d.datname, d.datdba FROM pg_catalog.pg_database AS d"

_CAN_READ_SETTINGS_SQL = (
    "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_db_role_setting', 'SELECT')"
)

_SETTINGS_SQL = """
SELECT s.setrole, s.setdatabase, c.entry
FROM pg_catalog.pg_db_role_setting AS s,
     LATERAL pg_catalog.unnest(s.setconfig) WITH ORDINALITY AS c(entry, position)
ORDER BY s.setrole, s.setdatabase, c.position
"""

# pg_roles shows each role's all-database defaults (setdatabase = 0) to everyone.
_ROLE_CONFIG_SQL = """
SELECT r.oid, c.entry
FROM pg_catalog.pg_roles AS r,
     LATERAL pg_catalog.unnest(r.rolconfig) WITH ORDINALITY AS c(entry, position)
ORDER BY r.oid, c.position
"""


def load_role_graph(conn: SQLConnection) -> RoleGraph:
    """Read the role graph from the server behind ``conn``, in one snapshot.

    Runs only catalog queries, in a read-only REPEATABLE READ transaction,
    so any role may run it: ``pg_roles``, ``pg_auth_members`` and
    ``pg_database`` are readable by everyone. So is ``pg_db_role_setting``
    by default; if an administrator revoked that, the per-database defaults
    are missing and the graph says ``settings_complete=False``. Works on
    PostgreSQL 15 (no ``inherit_option``/``set_option`` columns: they load
    as ``None``) and 16 and later.

    Raises:
        QueryError: a catalog query failed (the transaction is rolled back).
        ConnectionError, OSError: the connection broke.
    """
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    try:
        graph = _read_graph(conn)
    except QueryError:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return graph


def _read_graph(conn: SQLConnection) -> RoleGraph:
    version_rows = conn.query(_VERSION_SQL)
    version = _int(version_rows[0][0]) if version_rows else None
    roles = [RoleInfo(name=_text(row[0]), oid=_int(row[1]), superuser=_bool(row[2]),
                      createrole=_bool(row[3]), createdb=_bool(row[4]),
                      replication=_bool(row[5]), bypassrls=_bool(row[6]),
                      login=_bool(row[7]), inherit=_bool(row[8]),
                      connection_limit=_int(row[9]), valid_until=row[10])
             for row in conn.query(_ROLES_SQL)]
    role_names = {info.oid: info.name for info in roles}

    columns = {_text(row[0]) for row in conn.query(_MEMBER_COLUMNS_SQL)}
    sql = _MEMBERS_SQL.format(
        inherit_option="m.inherit_option" if "inherit_option" in columns else "NULL",
        set_option="m.set_option" if "set_option" in columns else "NULL")
    memberships: list[Membership] = []
    for row in conn.query(sql):
        role = role_names.get(_int(row[0]))
        member = role_names.get(_int(row[1]))
        if role is None or member is None:
            continue
        memberships.append(Membership(
            role=role, member=member, admin_option=_bool(row[2]),
            inherit_option=None if row[3] is None else _bool(row[3]),
            set_option=None if row[4] is None else _bool(row[4]),
            grantor=role_names.get(_int(row[5]))))

    database_names: dict[int, str] = {}
    owners: dict[str, str] = {}
    for oid, name, owner_oid in conn.query(_DATABASES_SQL):
        database_names[_int(oid)] = _text(name)
        owner = role_names.get(_int(owner_oid))
        if owner is not None:
            owners[_text(name)] = owner

    settings: list[RoleSetting] = []
    complete = _bool(conn.query(_CAN_READ_SETTINGS_SQL)[0][0])
    if complete:
        rows = [(row[0], row[1], row[2]) for row in conn.query(_SETTINGS_SQL)]
    else:
        rows = [(row[0], "0", row[1]) for row in conn.query(_ROLE_CONFIG_SQL)]
    for role_oid, database_oid, entry in rows:
        role_known, setting_role = _named(role_names, role_oid)
        database_known, setting_database = _named(database_names, database_oid)
        if not (role_known and database_known):
            continue  # an entry for a role or database that is gone
        setting = _parse_setting(setting_role, setting_database, _text(entry))
        if setting is not None and setting.name in ROLE_SETTINGS:
            settings.append(setting)

    return RoleGraph(roles=roles, memberships=memberships, settings=settings,
                     database_owners=owners, settings_complete=complete,
                     server_version_num=version)


def _named(names: Mapping[int, str], oid: str | None) -> tuple[bool, str | None]:
    """``(known, name)`` for ``oid``; the name is None for OID 0, which means "all"."""
    number = _int(oid)
    if number == 0:
        return True, None
    name = names.get(number)
    return name is not None, name


def _text(value: str | None) -> str:
    if value is None:
        raise ValueError("a catalog column that is never NULL was NULL")
    return value


def _int(value: str | None) -> int:
    return int(_text(value))


def _bool(value: str | None) -> bool:
    return _text(value) == "t"


# ---------------------------------------------------------------------------
# The proxy-wide holder


class RoleGraphSource:
    """The proxy's current :class:`RoleGraph`, reloaded from upstream when old.

    One per proxy, shared by every session and thread. :meth:`current` never
    blocks; :meth:`load` and :meth:`refresh_if_stale` open a connection and
    block, so call them from a worker thread (``loop.run_in_executor``,
    ``trio.to_thread.run_sync``), never from the event loop.

    A failed load keeps the previous graph and records the exception in
    :attr:`last_error`; :meth:`refresh_if_stale` then waits ``retry_seconds``
    before trying again, so a broken upstream is not hammered by every new
    session.

    Give either ``address`` and ``user`` (and optionally ``password``,
    ``database``, ``sslmode``), or ``connect``: a function returning a
    logged-in :class:`~pgwire.sqlclient.SQLConnection`, which the source
    closes after each load.
    """

    def __init__(self, address: Address | None = None, user: str | None = None, *,
                 password: str | None = None, database: str = "postgres",
                 sslmode: SSLMode = "disable", refresh_seconds: float = 60.0,
                 connect: Callable[[], SQLConnection] | None = None,
                 retry_seconds: float = 5.0) -> None:
        if connect is None:
            if address is None or user is None:
                raise ValueError("RoleGraphSource needs address and user, or connect")
            connect = _connector(address, user, password, database, sslmode)
        if refresh_seconds < 0 or retry_seconds < 0:
            raise ValueError("refresh_seconds and retry_seconds must be >= 0")
        self.refresh_seconds = refresh_seconds
        self.retry_seconds = retry_seconds
        self._connect = connect
        self._static = False
        self._graph: RoleGraph | None = None
        self._loaded_at: float | None = None
        self._last_error: Exception | None = None
        self._failed_at: float | None = None
        self._state_lock = threading.Lock()
        self._load_lock = threading.Lock()

    @classmethod
    def static(cls, graph: RoleGraph) -> RoleGraphSource:
        """A source that always answers ``graph`` and never connects or refreshes."""
        source = cls(connect=_no_connection)
        source._static = True
        source._graph = graph
        source._loaded_at = time.monotonic()
        return source

    @property
    def loaded_at(self) -> float | None:
        """``time.monotonic()`` when the current graph's load began, or None."""
        with self._state_lock:
            return self._loaded_at

    @property
    def last_error(self) -> Exception | None:
        """The exception of the latest load, None when it succeeded (or none ran)."""
        with self._state_lock:
            return self._last_error

    def current(self) -> RoleGraph | None:
        """The last graph loaded, None before the first success. Never blocks on I/O."""
        with self._state_lock:
            return self._graph

    def stale(self) -> bool:
        """True when no graph was loaded yet or it is ``refresh_seconds`` old or older."""
        if self._static:
            return False
        with self._state_lock:
            loaded_at = self._loaded_at
        return loaded_at is None or time.monotonic() - loaded_at >= self.refresh_seconds

    def load(self) -> RoleGraph:
        """Load a fresh graph now (blocking), waiting for a load already running.

        Raises whatever the connection or :func:`load_role_graph` raised,
        after recording it in :attr:`last_error`; the previous graph stays.
        """
        if self._static:
            assert self._graph is not None
            return self._graph
        with self._load_lock:
            return self._load_now()

    def refresh_if_stale(self) -> RoleGraph | None:
        """Reload when :meth:`stale` (blocking); return the graph to use now.

        At most one load runs at a time: a caller that finds one running
        returns :meth:`current` at once. Never raises for a failed load
        (see :attr:`last_error`); returns the previous graph instead.
        """
        if not self.stale() or self._waiting_to_retry():
            return self.current()
        if not self._load_lock.acquire(blocking=False):
            return self.current()
        try:
            if not self.stale():  # another caller loaded while we looked
                return self.current()
            try:
                return self._load_now()
            except Exception:
                return self.current()
        finally:
            self._load_lock.release()

    def _waiting_to_retry(self) -> bool:
        with self._state_lock:
            failed_at = self._failed_at
        return failed_at is not None and time.monotonic() - failed_at < self.retry_seconds

    def _load_now(self) -> RoleGraph:
        started = time.monotonic()
        try:
            with self._connect() as conn:
                graph = load_role_graph(conn)
        except Exception as exc:
            logger.warning("could not load the role graph (keeping the previous one): %s", exc)
            with self._state_lock:
                self._last_error = exc
                self._failed_at = started
            raise
        with self._state_lock:
            self._graph = graph
            self._loaded_at = started
            self._last_error = None
            self._failed_at = None
        return graph


def _connector(address: Address, user: str, password: str | None, database: str,
               sslmode: SSLMode) -> Callable[[], SQLConnection]:
    def connect() -> SQLConnection:
        return SQLConnection.connect(address, user=user, password=password,
                                     database=database, sslmode=sslmode)
    return connect


def _no_connection() -> SQLConnection:
    raise RuntimeError("a static RoleGraphSource never connects")

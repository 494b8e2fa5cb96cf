"""What a scenario file says, as frozen data: roles to create, the proxy, and
the scenarios with their expectations. :mod:`._load` builds it; nothing here
does I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..tls import SSLMode

if TYPE_CHECKING:
    from ..proxy.config_file import ProxyFile
    from ._database import Database

__all__ = [
    "ClientStep",
    "ClusterOptions",
    "DatabaseSpec",
    "ExistingDatabase",
    "Membership",
    "RoleSpec",
    "Scenario",
    "ScenarioFile",
    "SetupStep",
    "StatementCheck",
]

Verdict = Literal["allowed", "blocked"]
LoginVerdict = Literal["ok", "refused"]
SettingValue = str | int | float | bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterOptions:
    """``[cluster]``: how the throwaway PostgreSQL is set up."""

    #: ``pg_hba.conf`` method for every login (the superuser's too).
    auth: str = "trust"
    ssl: bool = False
    #: ``postgresql.conf`` settings.
    settings: Mapping[str, SettingValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExistingDatabase:
    """``[database]``: a server that already runs, instead of a throwaway one."""

    address: tuple[str, int]
    user: str = "postgres"
    password: str | None = field(default=None, repr=False)
    database: str = "postgres"
    sslmode: SSLMode = "prefer"
    #: Create the declared roles and databases and run ``setup`` there too.
    apply_setup: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Membership:
    """One ``member_of`` entry: ``GRANT role TO <the declared role>``.

    ``None`` leaves an option at PostgreSQL's default; ``inherit`` and ``set``
    need PostgreSQL 16."""

    role: str
    admin: bool | None = None
    inherit: bool | None = None
    set: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleSpec:
    """``[roles.NAME]``: a role to create (or bring up to date)."""

    name: str
    login: bool = False
    password: str | None = field(default=None, repr=False)
    superuser: bool = False
    createdb: bool = False
    createrole: bool = False
    inherit: bool = True
    replication: bool = False
    bypassrls: bool = False
    connection_limit: int = -1
    member_of: tuple[Membership, ...] = ()
    #: ``ALTER ROLE name SET key = value`` (``role`` sets a default role).
    settings: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseSpec:
    """An entry of ``databases``: a database to create."""

    name: str
    owner: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetupStep:
    """An entry of ``setup``: SQL run as the superuser, in ``database``
    (``None``: the administrative database, ``postgres`` or ``[database].database``)."""

    sql: str
    database: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StatementCheck:
    """One ``statements`` entry: SQL and what must happen to it."""

    sql: str
    expect: Verdict = "allowed"
    #: With ``blocked``: the SQLSTATE the error must carry.
    sqlstate: str | None = None
    #: With ``allowed``: the rows, as text.
    rows: tuple[tuple[str, ...], ...] | None = None
    #: After the statement (``SELECT session_user, current_user``).
    session_user: str | None = None
    current_user: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientStep:
    """One client of a scenario: who logs in, what it runs, what it must see.

    The first client is the scenario's own table; each ``next`` table adds one
    that connects after the one before it has disconnected."""

    user: str
    password: str | None = field(default=None, repr=False)
    database: str = "postgres"
    #: Extra startup parameters (``application_name``, ``options`` ...).
    parameters: Mapping[str, str] = field(default_factory=dict)
    login: LoginVerdict = "ok"
    #: With ``login = "refused"``: the SQLSTATE of the refusal.
    sqlstate: str | None = None
    session_user: str | None = None
    current_user: str | None = None
    #: Only for a ``next`` client: it ran on the same server backend
    #: (``pg_backend_pid()``) as the client before it (True), or on another (False).
    same_connection: bool | None = None
    statements: tuple[StatementCheck, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One ``[[scenario]]``: a name and its clients, run one after another."""

    name: str
    clients: tuple[ClientStep, ...]
    #: The dotted key of the table, for messages (``scenario[2]``).
    key: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioFile:
    """A loaded scenario file (:func:`~pgwire.scenarios.load_scenario_file`)."""

    #: The file's path as given, for messages.
    source: str
    #: Relative paths under ``[proxy]`` resolve against it.
    base_dir: Path
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    #: ``[database]``, or None for a throwaway cluster.
    database: ExistingDatabase | None = None
    roles: tuple[RoleSpec, ...] = ()
    databases: tuple[DatabaseSpec, ...] = ()
    setup: tuple[SetupStep, ...] = ()
    #: The ``[proxy]`` table as written (pgwire.toml keys, placeholders unresolved).
    proxy: Mapping[str, Any] = field(default_factory=dict)
    scenarios: tuple[Scenario, ...] = ()
    #: Where ``*_env`` keys under ``[proxy]`` are looked up (None: ``os.environ``).
    environ: Mapping[str, str] | None = field(default=None, repr=False, compare=False)

    @property
    def pooled(self) -> bool:
        """Whether the proxy pools server connections (``[proxy.pool]``)."""
        return "pool" in self.proxy

    def proxy_file(self, db: Database) -> ProxyFile:
        """The ``[proxy]`` table as a :class:`~pgwire.proxy.config_file.ProxyFile`
        in front of ``db``: placeholders resolved, ``upstream`` set to ``db``,
        listening on a free loopback port.

        Each call makes new middleware instances, so each running proxy has
        its own. Raises :class:`~pgwire.scenarios.ScenarioError` for a
        mistake under ``[proxy]``.
        """
        from ._load import build_proxy_file  # noqa: PLC0415 - the loader imports this module

        return build_proxy_file(self, db.address)

    def proxy_data(self, db: Database) -> dict[str, Any]:
        """The ``[proxy]`` table as TOML data in front of ``db``, as
        :meth:`proxy_file` reads it, without making any middleware."""
        from ._load import proxy_data  # noqa: PLC0415 - the loader imports this module

        return proxy_data(self.proxy, db.address)

    def to_data(self) -> dict[str, Any]:
        """The file as TOML data (what :func:`~pgwire.scenarios.parse_scenarios`
        reads): loading it again gives an equal :class:`ScenarioFile`.
        Secrets are written inline."""
        from ._load import dump_scenarios  # noqa: PLC0415

        return dump_scenarios(self)

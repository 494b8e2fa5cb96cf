"""The pgwire pytest plugin: a throwaway PostgreSQL, a running proxy, a connected client.

pytest loads this module in every project where pgwire is installed (through
the ``pytest11`` entry point), so importing it is cheap: it imports pytest, the standard library and
pgwire's dependency-free core, and starts nothing. Each fixture imports
what it needs when a test first asks for it.

Fixtures (see ``docs/testing.md``):

- ``pgwire_cluster_options`` (session): the `ClusterOptions` for the cluster;
  override it in your ``conftest.py``. The default reads the ini options
  ``pgwire_cluster_ssl`` and ``pgwire_cluster_auth``.
- ``pgwire_cluster`` (session): a running `pgwire.testing.cluster.PostgresCluster`
  with the options' roles created and ``setup_sql`` run.
- ``pgwire_proxy_config`` (function): the `pgwire.proxy.ProxyConfig` to run;
  default a passthrough proxy in front of ``pgwire_cluster``.
- ``pgwire_adapter`` (function): ``"asyncio"``, ``"trio"`` or ``"blocking"``,
  from ``--pgwire-adapter`` (``all`` runs each test over the three), or
  ``@pytest.mark.parametrize("pgwire_adapter", [...], indirect=True)``.
- ``pgwire_proxy`` (function): a `pgwire.testing.proxy.RunningProxy`.
- ``pgwire_login`` (function): the `Login` ``pgwire_frontend`` uses; default
  the cluster's superuser.
- ``pgwire_frontend`` (function): a logged-in `pgwire.testing.client.FrontendClient`
  connected through ``pgwire_proxy``.

Without PostgreSQL's server programs nothing happens until a test asks for
``pgwire_cluster`` (directly or through another fixture); that test then
errors with `pgwire.testing.cluster.ClusterUnavailable`, whose message says
what to install. It is never skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

import pytest

from ..sqlclient import quote_identifier, quote_literal

if TYPE_CHECKING:
    from ..proxy import ProxyConfig
    from .client import FrontendClient
    from .cluster import PostgresCluster
    from .proxy import AdapterName, RunningProxy

__all__ = [
    "ADAPTER_NAMES",
    "ClusterOptions",
    "Login",
    "Role",
    "quote_identifier",
    "quote_literal",
    "role_statements",
]

#: The adapters ``pgwire_adapter`` takes (``pgwire.testing.proxy.ADAPTERS``,
#: repeated here so that loading the plugin imports no proxy code).
ADAPTER_NAMES: Final[tuple[str, ...]] = ("asyncio", "trio", "blocking")
_ADAPTER_OPTION_CHOICES: Final = (*ADAPTER_NAMES, "all")


@dataclass(frozen=True, kw_only=True)
class Role:
    """A role for `ClusterOptions.roles` to create (the name is the mapping's key).

    Attributes follow ``CREATE ROLE``: ``login``, ``password`` (stored the way
    the server's ``password_encryption`` says, SCRAM by default), ``superuser``,
    ``createrole``, ``createdb``, ``bypassrls``, ``inherit``; ``member_of``
    names roles granted to this one (``GRANT group TO this``), declared in the
    same mapping or already existing.
    """

    login: bool = False
    password: str | None = None
    superuser: bool = False
    createrole: bool = False
    createdb: bool = False
    bypassrls: bool = False
    inherit: bool = True
    member_of: Sequence[str] = ()


@dataclass(frozen=True, kw_only=True)
class ClusterOptions:
    """How ``pgwire_cluster`` is made. Override the ``pgwire_cluster_options`` fixture::

        @pytest.fixture(scope="session")
        def pgwire_cluster_options() -> ClusterOptions:
            return ClusterOptions(auth="scram-sha-256", roles={
                "app": Role(login=True, password="secret", member_of=["readers"]),
                "readers": Role(),
            }, setup_sql="create table t (x int); grant select on t to readers")

    - ``ssl``: TLS certificates for the server (needs ``openssl``).
    - ``auth``: the ``pg_hba.conf`` method for loopback connections
      (``trust``, ``scram-sha-256``, ``md5``, ``password``, ``reject``...).
    - ``hba_lines``: whole ``pg_hba.conf`` lines replacing the default ones
      (keep one that lets the superuser in from 127.0.0.1).
    - ``settings``: ``postgresql.conf`` settings.
    - ``roles``: name -> `Role` (or a mapping of its fields), created when
      the cluster starts, names and passwords quoted for any characters.
    - ``setup_sql``: SQL run after the roles, as the superuser in database
      ``postgres`` (one string, or several run in order).
    - ``bindir``: the server binaries; default ``--pgwire-bindir``, else
      ``$PGWIRE_PG_BINDIR``, ``PATH`` and the usual places.
    """

    ssl: bool = False
    auth: str = "trust"
    hba_lines: Sequence[str] | None = None
    settings: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    roles: Mapping[str, Role | Mapping[str, Any]] = field(default_factory=dict)
    setup_sql: str | Sequence[str] = ()
    bindir: str | os.PathLike[str] | None = None

    def role_specs(self) -> dict[str, Role]:
        """``roles`` with every entry as a `Role`."""
        return {name: spec if isinstance(spec, Role) else Role(**spec)
                for name, spec in self.roles.items()}


@dataclass(frozen=True, kw_only=True)
class Login:
    """Who ``pgwire_frontend`` logs in as, through the proxy."""

    user: str
    password: str | None = None
    database: str = "postgres"
    #: Extra startup parameters (``application_name``, ``options``...).
    parameters: Mapping[str, str] = field(default_factory=dict)


# -- SQL for the declared roles ---------------------------------------------------------


def role_statements(roles: Mapping[str, Role]) -> list[str]:
    """``CREATE ROLE`` for every role, then the ``GRANT`` of each membership."""
    from ..scenarios._database import grant_sql, role_sql  # noqa: PLC0415 - fixture time
    from ..scenarios._model import Membership, RoleSpec  # noqa: PLC0415

    for name, role in roles.items():
        if isinstance(role.member_of, str):
            raise TypeError(f"member_of of {name!r} must be a list of role names, not a string")
    statements = [role_sql(RoleSpec(name=name, login=role.login, password=role.password,
                                    superuser=role.superuser, createrole=role.createrole,
                                    createdb=role.createdb, bypassrls=role.bypassrls,
                                    inherit=role.inherit))
                  for name, role in roles.items()]
    # Plain grants (no INHERIT/SET options) read the same on every server version.
    statements += [grant_sql(name, Membership(role=group), server_version=0)
                   for name, role in roles.items() for group in role.member_of]
    return statements


def _setup_statements(setup_sql: str | Sequence[str]) -> list[str]:
    return [setup_sql] if isinstance(setup_sql, str) else list(setup_sql)


def _prepare(cluster: PostgresCluster, options: ClusterOptions) -> None:
    """Create the roles and run the setup SQL, as the superuser."""
    statements = role_statements(options.role_specs())
    statements += _setup_statements(options.setup_sql)
    if not statements:
        return
    from ..sqlclient import SQLConnection  # noqa: PLC0415 - fixtures import lazily

    with SQLConnection.connect((cluster.host, cluster.port), user=cluster.superuser,
                               password=cluster.superuser_password,
                               database="postgres") as conn:
        for statement in statements:
            conn.execute(statement)


# -- options ------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pgwire", "pgwire fixtures")
    group.addoption("--pgwire-bindir", dest="pgwire_bindir", default=None, metavar="DIR",
                    help="directory of PostgreSQL's initdb, postgres and pg_ctl for "
                         "pgwire_cluster (default: $PGWIRE_PG_BINDIR, PATH, pg_config, "
                         "/usr/lib/postgresql/*/bin)")
    group.addoption("--pgwire-adapter", dest="pgwire_adapter", default="asyncio",
                    choices=_ADAPTER_OPTION_CHOICES,
                    help="I/O adapter of pgwire_proxy: asyncio (default), trio, blocking, "
                         "or all (run each test using it once per adapter)")
    parser.addini("pgwire_cluster_ssl", type="bool", default=False,
                  help="pgwire_cluster: give the server TLS certificates (default false)")
    parser.addini("pgwire_cluster_auth", type="string", default="trust",
                  help="pgwire_cluster: pg_hba.conf method for loopback (default trust)")


def _parametrized_names(marker: pytest.Mark) -> Iterable[str]:
    names = marker.args[0] if marker.args else marker.kwargs.get("argnames", ())
    if isinstance(names, str):
        return [name.strip() for name in names.split(",")]
    return list(names)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.config.getoption("pgwire_adapter") != "all":
        return
    if "pgwire_adapter" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        if "pgwire_adapter" in _parametrized_names(marker):
            return  # the test chose its adapters itself
    metafunc.parametrize("pgwire_adapter", ADAPTER_NAMES, indirect=True)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pgwire_cluster_options(pytestconfig: pytest.Config) -> ClusterOptions:
    """The options of ``pgwire_cluster``; override this fixture to choose your own."""
    return ClusterOptions(ssl=bool(pytestconfig.getini("pgwire_cluster_ssl")),
                          auth=str(pytestconfig.getini("pgwire_cluster_auth") or "trust"))


@pytest.fixture(scope="session")
def pgwire_cluster(pgwire_cluster_options: ClusterOptions,
                   pytestconfig: pytest.Config) -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL for the whole test session, made from ``pgwire_cluster_options``."""
    from .cluster import PostgresCluster  # noqa: PLC0415 - fixtures import lazily

    options = pgwire_cluster_options
    bindir = options.bindir or pytestconfig.getoption("pgwire_bindir") or None
    cluster = PostgresCluster(bindir=bindir, ssl=options.ssl, auth=options.auth,
                              hba_lines=options.hba_lines, settings=options.settings)
    with cluster:
        _prepare(cluster, options)
        yield cluster


@pytest.fixture
def pgwire_proxy_config(pgwire_cluster: PostgresCluster) -> ProxyConfig:
    """The configuration ``pgwire_proxy`` runs: a passthrough proxy to ``pgwire_cluster``."""
    from ..proxy import ProxyConfig  # noqa: PLC0415 - fixtures import lazily

    return ProxyConfig(upstream=(pgwire_cluster.host, pgwire_cluster.port))


@pytest.fixture
def pgwire_adapter(request: pytest.FixtureRequest) -> AdapterName:
    """The adapter ``pgwire_proxy`` runs on: a parameter, or ``--pgwire-adapter``."""
    value = getattr(request, "param", None)
    if value is None:
        value = request.config.getoption("pgwire_adapter")
        if value == "all":  # not parametrized here (pytest_generate_tests did not apply)
            value = ADAPTER_NAMES[0]
    if value not in ADAPTER_NAMES:
        raise ValueError(f"pgwire_adapter must be one of {', '.join(ADAPTER_NAMES)}, "
                         f"not {value!r}")
    return cast("AdapterName", value)


@pytest.fixture
def pgwire_proxy(pgwire_proxy_config: ProxyConfig,
                 pgwire_adapter: AdapterName) -> Iterator[RunningProxy]:
    """A proxy for ``pgwire_proxy_config`` on ``pgwire_adapter``, on a free loopback port."""
    from .proxy import running_proxy  # noqa: PLC0415 - fixtures import lazily

    with running_proxy(pgwire_proxy_config, adapter=pgwire_adapter) as running:
        yield running


@pytest.fixture
def pgwire_login(pgwire_cluster: PostgresCluster) -> Login:
    """Who ``pgwire_frontend`` logs in as: by default the cluster's superuser."""
    return Login(user=pgwire_cluster.superuser, password=pgwire_cluster.superuser_password)


@pytest.fixture
def pgwire_frontend(pgwire_proxy: RunningProxy, pgwire_login: Login) -> Iterator[FrontendClient]:
    """A client logged in through ``pgwire_proxy`` as ``pgwire_login``."""
    from .client import FrontendClient  # noqa: PLC0415 - fixtures import lazily

    client = FrontendClient.connect(pgwire_proxy.address, user=pgwire_login.user,
                                    password=pgwire_login.password,
                                    database=pgwire_login.database,
                                    parameters=dict(pgwire_login.parameters))
    assert isinstance(client, FrontendClient)  # connect() builds cls
    try:
        yield client
    finally:
        client.close()

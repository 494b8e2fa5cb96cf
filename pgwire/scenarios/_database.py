"""The database a scenario file runs against: a throwaway cluster, or an
existing server; and the roles, databases and setup SQL applied to it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..protocol import ProtocolError
from ..sqlclient import QueryError, SQLConnection, quote_identifier, quote_literal
from ..testing.cluster import PostgresCluster
from ..tls import SSLMode
from ._load import ScenarioError, dotted_name
from ._model import Membership, RoleSpec, ScenarioFile

__all__ = ["Database", "grant_sql", "open_database", "quote_identifier", "quote_literal",
           "role_sql"]

#: PostgreSQL 16 brought the INHERIT and SET options of a grant.
_GRANT_OPTIONS_VERSION = 160000


@dataclass(kw_only=True)
class Database:
    """The server scenarios run against, and how its administrator logs in.

    ``address`` is ``(host, port)``; ``user``, ``password`` and ``database``
    are the administrator's login (the throwaway cluster's superuser, or
    ``[database]``'s). ``cluster`` is the throwaway cluster, if one was made.
    """

    address: tuple[str, int]
    user: str
    password: str | None = field(default=None, repr=False)
    database: str = "postgres"
    sslmode: SSLMode = "disable"
    cluster: PostgresCluster | None = None
    #: ``server_version_num``, e.g. 150004.
    server_version: int = 0

    def connect(self, user: str | None = None, password: str | None = None,
                database: str | None = None) -> SQLConnection:
        """A direct connection to the server (not through any proxy): as the
        administrator by default; ``password`` defaults to the administrator's
        only when ``user`` is the administrator."""
        login = user if user is not None else self.user
        secret = password if password is not None else (
            self.password if login == self.user else None)
        return SQLConnection.connect(self.address, user=login, password=secret,
                                     database=database if database is not None else
                                     self.database, sslmode=self.sslmode)


@contextlib.contextmanager
def open_database(spec: ScenarioFile) -> Iterator[Database]:
    """The database for ``spec``, set up, for the length of the ``with`` block.

    Without ``[database]``: a throwaway :class:`~pgwire.testing.cluster.PostgresCluster`
    made from ``[cluster]``, with the roles, databases and setup SQL applied;
    it is removed on exit. With ``[database]``: that server, set up only when
    it says ``apply_setup = true``; otherwise the declared roles and databases
    must already exist there. Nothing is removed from an existing server.

    Raises:
        ScenarioError: the setup cannot be applied (the message has PostgreSQL's
            answer and names the key), or a declared role or database is missing.
        pgwire.testing.cluster.ClusterUnavailable: no PostgreSQL programs to
            make a throwaway cluster with.
    """
    if spec.database is None:
        settings = dict(spec.cluster.settings)
        if spec.cluster.auth == "md5":
            # The md5 method does SCRAM for SCRAM-stored passwords: store MD5 ones.
            settings.setdefault("password_encryption", "md5")
        with PostgresCluster(ssl=spec.cluster.ssl, auth=spec.cluster.auth,
                             settings=settings) as cluster:
            db = Database(address=(cluster.host, cluster.port), user=cluster.superuser,
                          password=cluster.superuser_password, database="postgres",
                          sslmode="disable", cluster=cluster)
            _prepare(spec, db, apply=True)
            yield db
        return
    existing = spec.database
    db = Database(address=existing.address, user=existing.user, password=existing.password,
                  database=existing.database, sslmode=existing.sslmode)
    _prepare(spec, db, apply=existing.apply_setup)
    yield db


def _prepare(spec: ScenarioFile, db: Database, *, apply: bool) -> None:
    try:
        admin = db.connect()
    except (OSError, QueryError, ProtocolError) as exc:
        where = "[database]" if spec.database is not None else "the throwaway cluster"
        raise ScenarioError(spec.source, "database" if spec.database is not None else None,
                            f"cannot log in to {where} as {db.user}: {exc}") from None
    with admin:
        db.server_version = int(admin.query("SHOW server_version_num")[0][0] or 0)
        for role in spec.roles:
            if role.name == db.user:
                raise ScenarioError(spec.source, f"roles.{dotted_name(role.name)}",
                                    "this is the role the runner sets the database up as; "
                                    "declare other roles")
        if apply:
            _Setup(spec, db, admin).run()
        else:
            _check_present(spec, admin)


def _check_present(spec: ScenarioFile, admin: SQLConnection) -> None:
    """Without apply_setup, the declared roles and databases must exist already."""
    for role in spec.roles:
        if not admin.query("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                           [role.name]):
            raise ScenarioError(spec.source, f"roles.{dotted_name(role.name)}",
                                "no such role in [database], and apply_setup is false: "
                                "create it there, or set apply_setup = true to let the "
                                "runner create it")
    for index, database in enumerate(spec.databases):
        if not admin.query("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
                           [database.name]):
            raise ScenarioError(spec.source, f"databases[{index}]",
                                f'no database "{database.name}" in [database], and '
                                "apply_setup is false: create it there, or set "
                                "apply_setup = true")


class _Setup:
    """Roles first (created, or altered when they exist), then databases, then
    memberships and role settings (which may name any of them), then the SQL."""

    def __init__(self, spec: ScenarioFile, db: Database, admin: SQLConnection) -> None:
        self.spec = spec
        self.db = db
        self.admin = admin

    def run(self) -> None:
        self._check_grant_options()
        for role in self.spec.roles:
            self._role(role)
        for index, database in enumerate(self.spec.databases):
            key = f"databases[{index}]"
            exists = self.admin.query(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1", [database.name])
            owner = f" OWNER {quote_identifier(database.owner)}" if database.owner else ""
            if not exists:
                self._sql(key, f"CREATE DATABASE {quote_identifier(database.name)}{owner}")
            elif database.owner:
                self._sql(key, f"ALTER DATABASE {quote_identifier(database.name)} OWNER TO "
                               f"{quote_identifier(database.owner)}")
        for role in self.spec.roles:
            for index, membership in enumerate(role.member_of):
                self._sql(f"roles.{dotted_name(role.name)}.member_of[{index}]",
                          self._grant(role, membership))
            for name, value in role.settings.items():
                self._sql(f"roles.{dotted_name(role.name)}.settings.{name}",
                          f"ALTER ROLE {quote_identifier(role.name)} SET "
                          f"{quote_identifier(name)} = {quote_literal(value)}")
        for index, step in enumerate(self.spec.setup):
            key = f"setup[{index}]"
            if step.database is None or step.database == self.db.database:
                self._sql(key, step.sql)
                continue
            try:
                conn = self.db.connect(database=step.database)
            except (OSError, QueryError, ProtocolError) as exc:
                raise ScenarioError(self.spec.source, f"{key}.database",
                                    f"cannot connect to {step.database}: {exc}") from None
            with conn:
                self._sql(key, step.sql, conn)

    def _check_grant_options(self) -> None:
        if self.db.server_version >= _GRANT_OPTIONS_VERSION:
            return
        for role in self.spec.roles:
            for index, membership in enumerate(role.member_of):
                for option in ("inherit", "set"):
                    if getattr(membership, option) is not None:
                        version = f"{self.db.server_version // 10000}"
                        raise ScenarioError(
                            self.spec.source,
                            f"roles.{dotted_name(role.name)}.member_of[{index}].{option}",
                            f"the {option.upper()} option of a grant needs PostgreSQL 16 or "
                            f"later; this server is PostgreSQL {version}. Remove it (on "
                            f"{version}, membership always allows SET ROLE and inherits "
                            "unless the member is NOINHERIT)")

    def _role(self, role: RoleSpec) -> None:
        exists = self.admin.query("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                                  [role.name])
        self._sql(f"roles.{dotted_name(role.name)}", role_sql(role, exists=bool(exists)))

    def _grant(self, role: RoleSpec, membership: Membership) -> str:
        return grant_sql(role.name, membership, server_version=self.db.server_version)

    def _sql(self, key: str, sql: str, conn: SQLConnection | None = None) -> None:
        try:
            (conn or self.admin).execute(sql)
        except QueryError as exc:
            raise ScenarioError(self.spec.source, key,
                                f"PostgreSQL refused the setup: {exc.sqlstate}: {exc.message}"
                                ) from None


def role_sql(role: RoleSpec, *, exists: bool = False) -> str:
    """``CREATE ROLE`` for ``role`` with every attribute spelled out, or the
    ``ALTER ROLE`` that brings an existing role to the same state."""
    flags = [
        "LOGIN" if role.login else "NOLOGIN",
        "SUPERUSER" if role.superuser else "NOSUPERUSER",
        "CREATEDB" if role.createdb else "NOCREATEDB",
        "CREATEROLE" if role.createrole else "NOCREATEROLE",
        "INHERIT" if role.inherit else "NOINHERIT",
        "REPLICATION" if role.replication else "NOREPLICATION",
        "BYPASSRLS" if role.bypassrls else "NOBYPASSRLS",
        f"CONNECTION LIMIT {role.connection_limit}",
        f"PASSWORD {quote_literal(role.password)}" if role.password is not None
        else "PASSWORD NULL",
    ]
    verb = "ALTER ROLE" if exists else "CREATE ROLE"
    return f"{verb} {quote_identifier(role.name)} WITH {' '.join(flags)}"


def grant_sql(member: str, membership: Membership, *, server_version: int) -> str:
    """``GRANT membership.role TO member`` with the options the server knows:
    ADMIN, and from PostgreSQL 16 INHERIT and SET."""
    grant = f"GRANT {quote_identifier(membership.role)} TO {quote_identifier(member)}"
    if server_version >= _GRANT_OPTIONS_VERSION:
        options = [f"{name.upper()} {'TRUE' if value else 'FALSE'}"
                   for name, value in (("admin", membership.admin),
                                       ("inherit", membership.inherit),
                                       ("set", membership.set)) if value is not None]
        return grant + (f" WITH {', '.join(options)}" if options else "")
    return grant + (" WITH ADMIN OPTION" if membership.admin else "")

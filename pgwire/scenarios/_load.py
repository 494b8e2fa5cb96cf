"""Reading a scenario file: TOML data to a :class:`ScenarioFile`, every key checked.

The table helpers are those of the proxy's own file (:mod:`pgwire.proxy.config_file`),
so both files report mistakes alike: ``file: dotted.key: what was expected``, and
unknown keys name the closest known one.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import itertools
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, cast

from ..proxy.config_file import KNOWN_KEYS as PROXY_KEYS

# The proxy file's table reader, shared so both files word their errors alike.
from ..proxy.config_file import (
    ConfigError,
    Override,
    ProxyFile,
    _Reader,
    _set_dotted,
    _show,
    parse_config,
    read_toml,
)
from ..proxy.config_file import _Table as _ProxyTable
from ..tls import SSLMODES, SSLMode
from ._model import (
    ClientStep,
    ClusterOptions,
    DatabaseSpec,
    ExistingDatabase,
    LoginVerdict,
    Membership,
    RoleSpec,
    Scenario,
    ScenarioFile,
    SetupStep,
    StatementCheck,
    Verdict,
)

__all__ = ["ScenarioError", "build_proxy_file", "dotted_name", "dump_scenarios",
           "load_scenario_file", "parse_scenarios"]


class ScenarioError(ConfigError):
    """A mistake in a scenario file: ``source`` (the file), ``key`` (a dotted
    path such as ``scenario[2].statements[0].sqlstate``) and ``problem``."""


#: Every key a scenario file may hold, by kind of table.
KNOWN_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "": ("database", "cluster", "roles", "databases", "setup", "proxy", "scenario"),
    "database": ("address", "user", "password", "password_env", "database", "sslmode",
                 "apply_setup"),
    "cluster": ("auth", "ssl", "settings"),
    "role": ("login", "password", "password_env", "superuser", "createdb", "createrole",
             "inherit", "replication", "bypassrls", "connection_limit", "member_of",
             "settings"),
    "member_of": ("role", "admin", "inherit", "set"),
    "databases": ("name", "owner"),
    "setup": ("sql", "database"),
    "scenario": ("name", "user", "password", "password_env", "database", "parameters",
                 "expect", "statements", "next"),
    "next": ("user", "password", "password_env", "database", "parameters", "expect",
             "statements", "next"),
    "expect": ("login", "sqlstate", "session_user", "current_user"),
    "next.expect": ("login", "sqlstate", "session_user", "current_user", "same_connection"),
    "statement": ("sql", "expect", "sqlstate", "rows", "session_user", "current_user"),
}

#: pg_hba.conf methods the throwaway cluster can use for client logins.
CLUSTER_AUTH: Final = ("trust", "password", "md5", "scram-sha-256")
#: pgwire.toml keys the runner sets itself, and why a file may not.
RUNNER_KEYS: Final[Mapping[str, str]] = {
    "listen": "the runner listens on a free loopback port",
    "upstream": "the runner points the proxy at the database under test",
    "adapter": "choose adapters with --adapter (or run_scenarios(adapter=...))",
    "workers": "the runner runs one proxy process per adapter",
    "admin": "the runner does not serve an admin console",
    "metrics": "the runner does not serve metrics",
}
#: Placeholders resolved in every string under [proxy].
PLACEHOLDERS: Final = ("{upstream}", "{upstream_host}", "{upstream_port}")
#: Longest role or database name PostgreSQL keeps (NAMEDATALEN - 1 bytes); it cuts longer ones.
MAX_NAME_BYTES: Final = 63
_SQLSTATE: Final = re.compile(r"[0-9A-Z]{5}")
_SETTING_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_PLACEHOLDER_ADDRESS: Final = ("127.0.0.1", 5432)


class _Table(_ProxyTable):
    """A scenario-file table: like the proxy file's, with its known keys given."""

    def __init__(self, reader: _Reader, data: Mapping[str, Any], path: str,
                 kind: str | None) -> None:
        super().__init__(reader, data, path)
        self.kind = kind

    def key(self, name: str) -> str:
        return f"{self.path}.{dotted_name(name)}" if self.path else dotted_name(name)

    def check_keys(self) -> None:
        if self.kind is None:  # a table of free names (settings, parameters)
            return
        known = KNOWN_KEYS[self.kind]
        for name in self.data:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                extra = ""
                if self.kind == "expect" and name == "same_connection":
                    extra = "; same_connection belongs in the expect table of a [next] client"
                elif name in KNOWN_KEYS[""] and self.path:
                    extra = (f"; if {name} is meant as a top-level key, move it above the "
                             "first [table] header: TOML puts a key that follows a header "
                             "into that table")
                raise self.error(name, f"unknown key{hint}; this table takes: "
                                       f"{', '.join(known)}{extra}")

    def sub(self, name: str, kind: str | None) -> _Table:
        """The sub-table ``name`` (empty when missing), its keys checked."""
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise self.expected(name, "a table")
        table = _Table(self.reader, value, self.key(name), kind)
        table.check_keys()
        return table

    def at(self, key: str, value: object, kind: str) -> _Table:
        """An array element (``key`` is its dotted path), which must be a table."""
        if not isinstance(value, dict):
            raise self.reader.error(key, f"expected a table, got {_show(value)}")
        table = _Table(self.reader, value, key, kind)
        table.check_keys()
        return table

    def array(self, name: str) -> list[Any]:
        value = self.data.get(name, [])
        if not isinstance(value, list):
            raise self.expected(name, "an array")
        return value

    def required(self, name: str, what: str) -> str:
        value = self.string(name)
        if value is None:
            raise self.error(name, f"missing: {what}")
        return value

    def text(self, name: str, default: str | None = None) -> str | None:
        """A string that PostgreSQL can carry: no NUL character."""
        value = self.string(name, default)
        if value is not None and "\x00" in value:
            raise self.error(name, "contains a NUL character, which PostgreSQL cannot carry")
        return value

    def name(self, name: str, what: str, default: str | None = None) -> str | None:
        value = self.string(name, default)
        if value is not None:
            check_name(self.reader, self.key(name), value, what)
        return value

    def sqlstate(self, name: str) -> str | None:
        value = self.string(name)
        if value is not None and not _SQLSTATE.fullmatch(value):
            raise self.expected(name, 'a SQLSTATE: five digits or capital letters, '
                                      'such as "42501"')
        return value

    def optional_boolean(self, name: str) -> bool | None:
        if not self.has(name):
            return None
        return self.boolean(name, False)


def check_name(reader: _Reader, key: str, value: str, what: str) -> None:
    """A role or database name: not empty, no NUL, at most 63 bytes."""
    if not value:
        raise reader.error(key, f"expected {what}, got an empty string")
    if "\x00" in value:
        raise reader.error(key, f"{what} contains a NUL character, which PostgreSQL "
                                "cannot carry")
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise reader.error(key, f"{what} is longer than {MAX_NAME_BYTES} bytes; PostgreSQL "
                                "would cut it short and mean another name")


# -- entry points ------------------------------------------------------------------------


def load_scenario_file(path: str | os.PathLike[str], *,
                       environ: Mapping[str, str] | None = None,
                       overrides: Iterable[Override] = ()) -> ScenarioFile:
    """Read and check the scenario file at ``path`` (TOML).

    ``environ`` (default ``os.environ``) is where ``password_env`` keys are looked up.
    ``overrides`` replace keys of the file (``pgwire check --database`` sets
    ``database.address``); a ``database`` override drops ``[cluster]``, and
    errors in an override name its flag.
    The ``[proxy]`` table is checked too, except that middleware is only
    imported, not made: that happens in :meth:`ScenarioFile.proxy_file`.

    Raises:
        ScenarioError: the file cannot be read, is not TOML, or a key is wrong;
            the message names the file and the key.
    """
    source = os.fspath(path)
    return parse_scenarios(read_toml(path, ScenarioError), source=source,
                           base_dir=Path(path).resolve().parent, environ=environ,
                           overrides=overrides)


def parse_scenarios(data: Mapping[str, Any], *, source: str = "<scenarios>",
                    base_dir: str | os.PathLike[str] | None = None,
                    environ: Mapping[str, str] | None = None,
                    overrides: Iterable[Override] = ()) -> ScenarioFile:
    """Check already-parsed TOML ``data`` and build a :class:`ScenarioFile`.

    ``source`` names it in errors; relative paths under ``[proxy]`` resolve
    against ``base_dir`` (default: the current directory).

    Raises:
        ScenarioError: a key is wrong.
    """
    directory = Path(base_dir) if base_dir is not None else Path.cwd()
    merged: dict[str, Any] = _deep_copy(dict(data))
    flags: dict[str, str] = {}
    overrides = list(overrides)
    keys = {o.key for o in overrides}
    for override in overrides:
        if (override.key.startswith("database.") and "database.address" not in keys
                and "database" not in data):
            raise ScenarioError("command line", override.flag,
                                f"{source} has no [database]: give its address with "
                                "--database HOST:PORT")
        if override.key.split(".")[0] == "database":
            merged.pop("cluster", None)
        _set_dotted(merged, override.key, override.value)
        flags[override.key] = override.flag
    reader = _ScenarioReader(source, directory, environ, flags)
    return reader.read(merged)


class _ScenarioReader(_Reader):
    def __init__(self, source: str, base_dir: Path, environ: Mapping[str, str] | None,
                 flags: Mapping[str, str]) -> None:
        super().__init__(source, base_dir, flags, os.environ if environ is None else environ)
        self.given_environ = environ

    def error(self, key: str, problem: str) -> ScenarioError:
        # A value from a flag is reported as the flag's, not the file's.
        for prefix, flag in self.flags.items():
            if key == prefix or key.startswith(prefix + "."):
                return ScenarioError("command line", flag, problem)
        return ScenarioError(self.source, key, problem)

    def read(self, data: Mapping[str, Any]) -> ScenarioFile:  # type: ignore[override]
        top = _Table(self, data, "", "")
        top.check_keys()
        database = self._database(top.sub("database", "database")) if top.has(
            "database") else None
        if database is not None and top.has("cluster"):
            raise top.error("cluster", "[cluster] sets up a throwaway cluster, but [database] "
                                       "names an existing one: remove one of them")
        cluster = self._cluster(top.sub("cluster", "cluster"))
        roles = self._roles(top)
        databases = self._databases(top)
        setup = self._setup(top)
        proxy = self._proxy(top)
        scenarios = self._scenarios(top, pooled="pool" in proxy)
        return ScenarioFile(source=self.source, base_dir=self.base_dir, cluster=cluster,
                            database=database, roles=roles, databases=databases, setup=setup,
                            proxy=proxy, scenarios=scenarios, environ=self.given_environ)

    # -- the database ---------------------------------------------------------------

    def _database(self, table: _Table) -> ExistingDatabase:
        if not table.has("address"):
            raise table.error("address", 'missing: where the server listens, e.g. '
                                         'address = "127.0.0.1:5432"')
        address = table.address("address", 5432)
        if isinstance(address, str):
            raise table.error("address", f"expected host:port (the proxy reaches it over "
                                         f"TCP), got {_show(address)}")
        password = table.secret("password", "password_env")
        if password is not None and "\x00" in password:
            raise table.error("password", "contains a NUL character")
        return ExistingDatabase(
            address=address,
            user=cast(str, table.name("user", "a role name", "postgres")),
            password=password,
            database=cast(str, table.name("database", "a database name", "postgres")),
            sslmode=cast(SSLMode, table.choice("sslmode", SSLMODES, "prefer")),
            apply_setup=table.boolean("apply_setup", False),
        )

    def _cluster(self, table: _Table) -> ClusterOptions:
        auth = table.choice("auth", CLUSTER_AUTH, "trust")
        ssl = table.boolean("ssl", False)
        settings: dict[str, str | int | float | bool] = {}
        if table.has("settings"):
            values = table.sub("settings", None)
            for name, value in values.data.items():
                key = values.key(name)
                if not _SETTING_NAME.fullmatch(name):
                    raise self.error(key, "not a PostgreSQL setting name")
                if not isinstance(value, str | int | float | bool):
                    raise self.error(key, f"expected a string, number or boolean, got "
                                          f"{_show(value)}")
                if isinstance(value, str) and _CONTROL.search(value):
                    raise self.error(key, "control characters cannot go in postgresql.conf")
                settings[name] = value
        return ClusterOptions(auth=auth, ssl=ssl, settings=settings)

    # -- roles, databases, setup ----------------------------------------------------

    def _roles(self, top: _Table) -> tuple[RoleSpec, ...]:
        if not top.has("roles"):
            return ()
        value = top.data["roles"]
        if not isinstance(value, dict):
            raise top.expected("roles", "a table of [roles.NAME] tables")
        roles: list[RoleSpec] = []
        for name, item in value.items():
            key = f"roles.{dotted_name(name)}"
            check_name(self, key, name, "a role name")
            if name.lower().startswith("pg_"):
                raise self.error(key, 'role names beginning with "pg_" are reserved by '
                                      "PostgreSQL; name the role otherwise")
            table = top.at(key, item, "role")
            roles.append(self._role(table, name))
        return tuple(roles)

    def _role(self, table: _Table, name: str) -> RoleSpec:
        password = table.secret("password", "password_env")
        if password is not None and "\x00" in password:
            raise table.error("password", "contains a NUL character, which PostgreSQL "
                                          "cannot carry")
        login = table.boolean("login", False)
        memberships: list[Membership] = []
        seen: set[str] = set()
        for index, entry in enumerate(table.array("member_of")):
            key = f"{table.key('member_of')}[{index}]"
            if isinstance(entry, str):
                check_name(self, key, entry, "a role name")
                membership = Membership(role=entry)
            else:
                item = table.at(key, entry, "member_of")
                group = item.name("role", "a role name")
                if group is None:
                    raise item.error("role", "missing: the role to grant")
                membership = Membership(role=group, admin=item.optional_boolean("admin"),
                                        inherit=item.optional_boolean("inherit"),
                                        set=item.optional_boolean("set"))
            if membership.role == name:
                raise self.error(key, "a role cannot be a member of itself")
            if membership.role in seen:
                raise self.error(key, f'"{membership.role}" is listed twice')
            seen.add(membership.role)
            memberships.append(membership)
        settings: dict[str, str] = {}
        if table.has("settings"):
            values = table.sub("settings", None)
            for setting, given in values.data.items():
                key = values.key(setting)
                if not _SETTING_NAME.fullmatch(setting):
                    raise self.error(key, "not a PostgreSQL setting name")
                if isinstance(given, bool):
                    text = "on" if given else "off"
                elif isinstance(given, int | float | str):
                    text = str(given)
                else:
                    raise self.error(key, f"expected a string, number or boolean, got "
                                          f"{_show(given)}")
                if "\x00" in text:
                    raise self.error(key, "contains a NUL character")
                settings[setting] = text
        return RoleSpec(
            name=name, login=login, password=password,
            superuser=table.boolean("superuser", False),
            createdb=table.boolean("createdb", False),
            createrole=table.boolean("createrole", False),
            inherit=table.boolean("inherit", True),
            replication=table.boolean("replication", False),
            bypassrls=table.boolean("bypassrls", False),
            connection_limit=table.integer("connection_limit", -1, -1, 2**31 - 1),
            member_of=tuple(memberships), settings=settings)

    def _databases(self, top: _Table) -> tuple[DatabaseSpec, ...]:
        found: list[DatabaseSpec] = []
        names: set[str] = set()
        for index, entry in enumerate(top.array("databases")):
            key = f"databases[{index}]"
            if isinstance(entry, str):
                check_name(self, key, entry, "a database name")
                spec = DatabaseSpec(name=entry)
            else:
                table = top.at(key, entry, "databases")
                name = table.name("name", "a database name")
                if name is None:
                    raise table.error("name", "missing: the database to create")
                spec = DatabaseSpec(name=name, owner=table.name("owner", "a role name"))
            if spec.name in names:
                raise self.error(key, f'"{spec.name}" is listed twice')
            names.add(spec.name)
            found.append(spec)
        return tuple(found)

    def _setup(self, top: _Table) -> tuple[SetupStep, ...]:
        steps: list[SetupStep] = []
        for index, entry in enumerate(top.array("setup")):
            key = f"setup[{index}]"
            if isinstance(entry, str):
                sql: str | None = entry
                database = None
                if "\x00" in entry:
                    raise self.error(key, "contains a NUL character")
            else:
                table = top.at(key, entry, "setup")
                sql = table.text("sql")
                database = table.name("database", "a database name")
            if not sql or not sql.strip():
                raise self.error(key, "expected SQL to run, got nothing")
            steps.append(SetupStep(sql=sql, database=database))
        return tuple(steps)

    # -- the proxy ------------------------------------------------------------------

    def _proxy(self, top: _Table) -> dict[str, Any]:
        if not top.has("proxy"):
            return {"auth": {"mode": "passthrough"}}
        value = top.data["proxy"]
        if not isinstance(value, dict):
            raise top.expected("proxy", "a table (the keys of pgwire.toml)")
        known = [k for k in PROXY_KEYS[""] if k not in RUNNER_KEYS]
        for name in value:
            if name in RUNNER_KEYS:
                raise self.error(f"proxy.{name}", f"not in a scenario file: "
                                                  f"{RUNNER_KEYS[name]}")
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                raise self.error(f"proxy.{name}", f"unknown key{hint}; [proxy] takes the "
                                                  f"keys of pgwire.toml: {', '.join(known)}")
        proxy: dict[str, Any] = _deep_copy(value)
        self._check_proxy(proxy)
        return proxy

    def _check_proxy(self, proxy: dict[str, Any]) -> None:
        """Check [proxy] as ``pgwire proxy`` would, without making middleware
        (which may start work, such as loading a role graph)."""
        middleware = proxy.get("middleware", [])
        if not isinstance(middleware, list):
            raise self.error("proxy.middleware", "expected [[proxy.middleware]] tables, got "
                                                 f"{_show(middleware)}")
        for index, item in enumerate(middleware):
            self._check_middleware(f"proxy.middleware[{index}]", item)
        trial = {k: v for k, v in proxy.items() if k != "middleware"}
        _build(self.source, self.base_dir, self.environ, trial, _PLACEHOLDER_ADDRESS)

    def _check_middleware(self, key: str, item: object) -> None:
        if not isinstance(item, dict):
            raise self.error(key, f"expected a table, got {_show(item)}")
        arguments = dict(item)
        target = arguments.pop("class", None)
        if not isinstance(target, str) or ":" not in target:
            raise self.error(f"{key}.class", f'expected "module:Class", got {_show(target)}')
        module_name, _, attribute = target.partition(":")
        try:
            found: object = importlib.import_module(module_name)
            for part in attribute.split("."):
                found = getattr(found, part)
        except ImportError as exc:
            raise self.error(f"{key}.class", f"cannot import {module_name}: {exc}") from None
        except AttributeError:
            raise self.error(f"{key}.class", f"{module_name} has no {attribute}") from None
        if not callable(found):
            raise self.error(f"{key}.class", f"{target} is not a class or factory")
        try:
            inspect.signature(found).bind(**arguments)
        except TypeError as exc:
            raise self.error(f"{key}.class", f"{target} does not take these settings: "
                                             f"{exc}") from None
        except ValueError:
            pass  # no signature to check; making it will tell

    # -- scenarios ------------------------------------------------------------------

    def _scenarios(self, top: _Table, *, pooled: bool) -> tuple[Scenario, ...]:
        value = top.data.get("scenario", [])
        if not isinstance(value, list):
            raise top.expected("scenario", "[[scenario]] tables")
        scenarios: list[Scenario] = []
        names: dict[str, str] = {}
        for index, item in enumerate(value):
            key = f"scenario[{index}]"
            table = top.at(key, item, "scenario")
            name = table.required("name", "a name for the scenario, shown in the results")
            if not name.strip():
                raise table.error("name", "expected a name, got only spaces")
            if _CONTROL.search(name):
                raise table.error("name", "control characters (such as a newline) cannot "
                                          "go in a scenario name")
            if name in names:
                raise table.error("name", f'"{name}" is also the name of {names[name]}')
            names[name] = key
            clients: list[ClientStep] = []
            step: _Table | None = table
            while step is not None:
                client = self._client(step, first=not clients, pooled=pooled)
                if client.same_connection is not None and clients[-1].login == "refused":
                    raise self.error(step.key("expect") + ".same_connection",
                                     "the client before this one is refused at login, so "
                                     "there is no connection to compare with")
                clients.append(client)
                step = step.sub("next", "next") if step.has("next") else None
            scenarios.append(Scenario(name=name, clients=tuple(clients), key=key))
        return tuple(scenarios)

    def _client(self, table: _Table, *, first: bool, pooled: bool) -> ClientStep:
        user = table.name("user", "a user name")
        if user is None:
            raise table.error("user", "missing: the user the client logs in as")
        password = table.secret("password", "password_env")
        if password is not None and "\x00" in password:
            raise table.error("password", "contains a NUL character")
        database = cast(str, table.name("database", "a database name", "postgres"))
        parameters: dict[str, str] = {}
        if table.has("parameters"):
            values = table.sub("parameters", None)
            for name, value in values.data.items():
                key = values.key(name)
                if not name or "\x00" in name:
                    raise self.error(key, "expected a parameter name without NUL")
                if name in ("user", "database"):
                    raise self.error(key, f"give {name} as the client's own key, not as a "
                                          "parameter")
                if not isinstance(value, str) or "\x00" in value:
                    raise self.error(key, f"expected a string without NUL, got "
                                          f"{_show(value)}")
                parameters[name] = value
        expect = table.sub("expect", "expect" if first else "next.expect")
        login = cast(LoginVerdict, expect.choice("login", ("ok", "refused"), "ok"))
        sqlstate = expect.sqlstate("sqlstate")
        session_user = expect.name("session_user", "a role name")
        current_user = expect.name("current_user", "a role name")
        same_connection = expect.optional_boolean("same_connection")
        if same_connection is not None and not pooled:
            raise expect.error("same_connection", "needs a pool: add [proxy.pool] (with "
                                                  '[proxy.auth] mode = "proxy"); without '
                                                  "one every client has its own connection")
        statements = tuple(self._statement(table.at(f"{table.key('statements')}[{index}]",
                                                    entry, "statement"))
                           for index, entry in enumerate(table.array("statements")))
        if login == "refused":
            for name in ("session_user", "current_user", "same_connection"):
                if expect.has(name):
                    raise expect.error(name, 'a refused login has no session to look at: '
                                             'remove it, or expect login = "ok"')
            if statements:
                raise table.error("statements", 'a refused login runs no statements: '
                                                'remove them, or expect login = "ok"')
        elif sqlstate is not None:
            raise expect.error("sqlstate", 'only a refused login has a SQLSTATE: add '
                                           'login = "refused"')
        return ClientStep(user=user, password=password, database=database,
                          parameters=parameters, login=login, sqlstate=sqlstate,
                          session_user=session_user, current_user=current_user,
                          same_connection=same_connection, statements=statements)

    def _statement(self, table: _Table) -> StatementCheck:
        sql = table.text("sql")
        if sql is None or not sql.strip():
            raise table.error("sql", "missing: the SQL to run")
        expect = cast(Verdict, table.choice("expect", ("allowed", "blocked"), "allowed"))
        sqlstate = table.sqlstate("sqlstate")
        if sqlstate is not None and expect != "blocked":
            raise table.error("sqlstate", 'only a blocked statement has a SQLSTATE: add '
                                          'expect = "blocked"')
        rows: tuple[tuple[str, ...], ...] | None = None
        if table.has("rows"):
            if expect != "allowed":
                raise table.error("rows", "a blocked statement returns no rows")
            rows = self._rows(table)
        return StatementCheck(sql=sql, expect=expect, sqlstate=sqlstate, rows=rows,
                              session_user=table.name("session_user", "a role name"),
                              current_user=table.name("current_user", "a role name"))

    def _rows(self, table: _Table) -> tuple[tuple[str, ...], ...]:
        rows: list[tuple[str, ...]] = []
        for index, row in enumerate(table.array("rows")):
            key = f"{table.key('rows')}[{index}]"
            if not isinstance(row, list):
                raise self.error(key, f"expected a row: an array of values, got {_show(row)}")
            values: list[str] = []
            for column, value in enumerate(row):
                if isinstance(value, bool) or not isinstance(value, str | int):
                    raise self.error(f"{key}[{column}]", "expected a string or a whole "
                                                         "number, as PostgreSQL prints it "
                                                         '(write booleans as "t" and "f"), '
                                                         f"got {_show(value)}")
                values.append(str(value))
            rows.append(tuple(values))
        return tuple(rows)


def dotted_name(name: str) -> str:
    """A table name as it goes in a dotted key: quoted unless it is a bare key."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _show(name)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _resolve(value: Any, upstream: tuple[str, int]) -> Any:
    """Every string with the placeholders replaced (other braces, such as
    RoleRewrite's ``{user}``, are left alone)."""
    if isinstance(value, str):
        host, port = upstream
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return (value.replace("{upstream}", address).replace("{upstream_host}", host)
                .replace("{upstream_port}", str(port)))
    if isinstance(value, dict):
        return {k: _resolve(v, upstream) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, upstream) for v in value]
    return value


def proxy_data(proxy: Mapping[str, Any], upstream: tuple[str, int]) -> dict[str, Any]:
    """A copy of a ``[proxy]`` table in front of ``upstream``: placeholders
    resolved, ``upstream`` set, listening on a free loopback port."""
    data: dict[str, Any] = _resolve(_deep_copy(dict(proxy)), upstream)
    host, port = upstream
    data["upstream"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    data["listen"] = ["127.0.0.1:0"]
    return data


def _build(source: str, base_dir: Path, environ: Mapping[str, str] | None,
           proxy: Mapping[str, Any], upstream: tuple[str, int]) -> ProxyFile:
    data = proxy_data(proxy, upstream)
    try:
        return parse_config(data, source=source, base_dir=base_dir, environ=environ)
    except ConfigError as exc:
        key = f"proxy.{exc.key}" if exc.key else "proxy"
        raise ScenarioError(source, key, exc.problem) from None


def build_proxy_file(spec: ScenarioFile, upstream: tuple[str, int]) -> ProxyFile:
    """``spec``'s ``[proxy]`` in front of ``upstream`` (see :meth:`ScenarioFile.proxy_file`)."""
    return _build(spec.source, spec.base_dir, spec.environ, spec.proxy, upstream)


# -- writing it back -----------------------------------------------------------------


def dump_scenarios(spec: ScenarioFile) -> dict[str, Any]:
    """``spec`` as TOML data that :func:`parse_scenarios` reads back equal."""
    data: dict[str, Any] = {}
    if spec.database is not None:
        db = spec.database
        host, port = db.address
        table: dict[str, Any] = {
            "address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "user": db.user, "database": db.database, "sslmode": db.sslmode,
            "apply_setup": db.apply_setup}
        if db.password is not None:
            table["password"] = db.password
        data["database"] = table
    else:
        data["cluster"] = {"auth": spec.cluster.auth, "ssl": spec.cluster.ssl,
                           "settings": dict(spec.cluster.settings)}
    if spec.roles:
        data["roles"] = {role.name: _dump_role(role) for role in spec.roles}
    if spec.databases:
        data["databases"] = [{"name": d.name, **({"owner": d.owner} if d.owner else {})}
                             for d in spec.databases]
    if spec.setup:
        data["setup"] = [{"sql": s.sql, **({"database": s.database} if s.database else {})}
                         for s in spec.setup]
    data["proxy"] = _deep_copy(dict(spec.proxy))
    if spec.scenarios:
        data["scenario"] = [_dump_scenario(s) for s in spec.scenarios]
    return data


def _dump_role(role: RoleSpec) -> dict[str, Any]:
    table: dict[str, Any] = {
        "login": role.login, "superuser": role.superuser, "createdb": role.createdb,
        "createrole": role.createrole, "inherit": role.inherit,
        "replication": role.replication, "bypassrls": role.bypassrls,
        "connection_limit": role.connection_limit}
    if role.password is not None:
        table["password"] = role.password
    if role.member_of:
        table["member_of"] = [
            {"role": m.role, **{name: value for name, value in
                                (("admin", m.admin), ("inherit", m.inherit), ("set", m.set))
                                if value is not None}}
            for m in role.member_of]
    if role.settings:
        table["settings"] = dict(role.settings)
    return table


def _dump_scenario(scenario: Scenario) -> dict[str, Any]:
    tables = [_dump_client(c) for c in scenario.clients]
    for before, after in itertools.pairwise(tables):
        before["next"] = after
    return {"name": scenario.name, **tables[0]}


def _dump_client(client: ClientStep) -> dict[str, Any]:
    table: dict[str, Any] = {"user": client.user, "database": client.database}
    if client.password is not None:
        table["password"] = client.password
    if client.parameters:
        table["parameters"] = dict(client.parameters)
    expect: dict[str, Any] = {"login": client.login}
    for name in ("sqlstate", "session_user", "current_user", "same_connection"):
        value = getattr(client, name)
        if value is not None:
            expect[name] = value
    table["expect"] = expect
    if client.statements:
        table["statements"] = [_dump_statement(s) for s in client.statements]
    return table


def _dump_statement(statement: StatementCheck) -> dict[str, Any]:
    table: dict[str, Any] = {"sql": statement.sql, "expect": statement.expect}
    for name in ("sqlstate", "session_user", "current_user"):
        value = getattr(statement, name)
        if value is not None:
            table[name] = value
    if statement.rows is not None:
        table["rows"] = [list(row) for row in statement.rows]
    return table

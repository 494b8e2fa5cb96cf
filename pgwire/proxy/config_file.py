"""The proxy's TOML configuration file (``pgwire.toml``) for ``pgwire proxy``.

:func:`load_config` reads a file into a :class:`ProxyFile`: a
:class:`~pgwire.proxy.ProxyConfig` plus what only the command line needs
(where to listen, which adapter, how many worker processes, the log level).
Every key is described in ``docs/proxy.md``; :data:`KNOWN_KEYS` lists them.

Mistakes are reported as :class:`ConfigError`, naming the file, the key as a
dotted path and what was expected::

    pgwire.toml: limits.login_timeout: expected a positive number of seconds, got "abc"

Unknown keys are errors too, with a suggestion when one is close. Relative
paths resolve against the file's directory. Secrets belong in the
environment, not the file: ``upstream_password_env = "VAR"`` names the
variable that holds the password.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import math
import os
import ssl
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, cast

from ..adapters._base import parse_address
from ..auth import UserlistError, is_md5_secret, load_userlist, password_type
from ..auth.stored import ScramSecret
from ..middleware.base import Middleware
from ..protocol import DEFAULT_MAX_MESSAGE_SIZE
from ..protocol._codec import MAX_PROTOCOL_MESSAGE_LENGTH
from ..server import AuthMethod
from ..tls import SSLMODES, SSLMode, client_context, load_certificate_der, server_context
from ._actions import Address, format_address
from ._cancel import MAX_INSTANCE_ID
from ._config import (
    DEFAULT_AUTH_QUERY,
    DEFAULT_MAX_PIPELINE,
    AuthQuery,
    Passthrough,
    ProxyAuth,
    ProxyConfig,
    UpstreamTLS,
)
from ._pool_config import DEFAULT_SESSION_STATE, SESSION_STATE_KINDS, PoolConfig, StatePolicy

__all__ = [
    "ADAPTER_NAMES",
    "DEFAULT_LISTEN",
    "KNOWN_KEYS",
    "LOG_LEVELS",
    "POOL_MODES",
    "AdminSettings",
    "ConfigError",
    "Override",
    "ProxyFile",
    "describe_listen",
    "load_config",
    "parse_config",
    "read_toml",
]

AdapterName = Literal["asyncio", "trio", "blocking"]
ADAPTER_NAMES: Final[tuple[AdapterName, ...]] = ("asyncio", "trio", "blocking")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
POOL_MODES: Final = ("session", "transaction")
_RESET_MODES: Final = ("minimal", "discard_all")
_STATE_POLICIES: Final = ("pin", "refuse", "reset")
#: PgBouncer's port, on loopback: a proxy is not exposed unless asked.
DEFAULT_LISTEN: Final[tuple[Address, ...]] = (("127.0.0.1", 6432),)
_LISTEN_PORT: Final = 6432
_UPSTREAM_PORT: Final = 5432
_ADMIN_PORT: Final = 6433
_METRICS_PORT: Final = 9127
_AUTH_METHODS: Final[tuple[AuthMethod, ...]] = (
    "trust", "password", "md5", "scram-sha-256", "cert")

#: Every key the file may hold, by table ("" is the top level). The entries of
#: ``[auth.users]``, ``[admin.users]`` and ``[cancel.peers]`` are free (user
#: names, instance ids), and so are the keys of a ``[[middleware]]`` table
#: besides ``class``.
KNOWN_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "": ("listen", "upstream", "adapter", "workers", "log_level", "check_protocol", "auth",
         "client_tls", "upstream_tls", "limits", "cancel", "middleware", "pool", "admin",
         "metrics"),
    "auth": ("mode", "method", "userlist", "users", "query", "upstream_user",
             "upstream_password", "upstream_password_env"),
    "auth.query": ("user", "password", "password_env", "database", "query"),
    "client_tls": ("cert", "key", "ca", "require"),
    "upstream_tls": ("sslmode", "rootcert", "cert", "key", "server_hostname"),
    "limits": ("max_clients", "max_message_size", "max_pending_jobs", "max_pipeline",
               "login_timeout", "connect_timeout", "idle_timeout",
               "idle_in_transaction_timeout", "upstream_read_timeout", "shutdown_timeout"),
    "cancel": ("instance_id", "peers"),
    "pool": ("mode", "max_size", "min_idle", "checkout_timeout", "health_check_after",
             "server_idle_timeout", "server_lifetime", "reset", "maintenance_interval",
             "session_state"),
    "pool.session_state": SESSION_STATE_KINDS,
    "admin": ("listen", "users"),
    "metrics": ("listen",),
}


class ConfigError(ValueError):
    """A configuration mistake: ``source`` (the file, or ``command line``),
    ``key`` (a dotted path, or the flag) and what is wrong with it."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + problem)
        self.source = source
        self.key = key
        self.problem = problem


class Override(NamedTuple):
    """A value from the command line that replaces ``key`` (a dotted path) of
    the file; errors in it name ``flag``. Paths in it should be absolute."""

    key: str
    value: object
    flag: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminSettings:
    """The ``[admin]`` table: where the admin console listens and who may log in
    (user name to plaintext password or SCRAM secret)."""

    listen: Address
    users: Mapping[str, str]

    def __repr__(self) -> str:  # never show the secrets
        return f"AdminSettings(listen={self.listen!r}, users={sorted(self.users)!r})"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyFile:
    """A loaded configuration: the engine's :class:`ProxyConfig` and the
    settings of the ``pgwire proxy`` process around it."""

    config: ProxyConfig
    listen: tuple[Address, ...] = DEFAULT_LISTEN
    adapter: AdapterName = "asyncio"
    #: Worker processes sharing the listen port (asyncio only).
    workers: int = 1
    log_level: str = "info"
    #: Where it came from, for messages: the file name, or ``command line``.
    source: str = "command line"
    #: The auth mode in a few words, for the listening message.
    auth_summary: str = "passthrough auth"
    #: The admin console (``[admin]``), if any.
    admin: AdminSettings | None = None
    #: Where ``GET /metrics`` is served (``[metrics]``), if anywhere.
    metrics_listen: tuple[str, int] | None = None


def load_config(path: str | os.PathLike[str], *, overrides: Iterable[Override] = (),
                environ: Mapping[str, str] | None = None) -> ProxyFile:
    """Read ``path`` (TOML), apply ``overrides`` and build a :class:`ProxyFile`.

    ``environ`` (default ``os.environ``) is where ``*_env`` keys are looked up.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or a key is wrong.
    """
    return parse_config(read_toml(path), source=os.fspath(path),
                        base_dir=Path(path).resolve().parent, overrides=overrides,
                        environ=environ)


def read_toml(path: str | os.PathLike[str],
              error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """The TOML document at ``path``; raises ``error`` (a :class:`ConfigError`
    class) naming the file when it cannot be read or is not TOML."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise error(source, None, f"cannot read the file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(source, None, f"not valid TOML: {exc}") from None


def parse_config(data: Mapping[str, Any], *, source: str = "command line",
                 base_dir: str | os.PathLike[str] | None = None,
                 overrides: Iterable[Override] = (),
                 environ: Mapping[str, str] | None = None) -> ProxyFile:
    """Build a :class:`ProxyFile` from already-parsed TOML ``data``.

    ``source`` names it in errors; relative paths resolve against
    ``base_dir`` (default: the current directory). With no data at all,
    overrides for ``listen`` and ``upstream`` are enough.
    """
    merged: dict[str, Any] = _deep_copy(data)
    flags: dict[str, str] = {}
    for override in overrides:
        _set_dotted(merged, override.key, override.value)
        flags[override.key] = override.flag
    reader = _Reader(source, Path(base_dir) if base_dir is not None else Path.cwd(), flags,
                     os.environ if environ is None else environ)
    return reader.read(merged)


# -- reading ----------------------------------------------------------------------------

_MISSING: Final = object()


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _set_dotted(data: dict[str, Any], key: str, value: object) -> None:
    *tables, last = key.split(".")
    for name in tables:
        table = data.get(name)
        if not isinstance(table, dict):
            table = data[name] = {}
        data = table
    data[last] = value


def _show(value: object) -> str:
    """A value as the reader wrote it in TOML, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _is_number(value: object) -> bool:
    """A finite int or float (TOML also has inf and nan: never a sane setting)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and (
        math.isfinite(value))


class _Table:
    """One TOML table being read: hands out values, checks for unknown keys."""

    def __init__(self, reader: _Reader, data: Mapping[str, Any], path: str) -> None:
        self.reader = reader
        self.data = data
        self.path = path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str) -> ConfigError:
        return self.reader.error(self.key(name), problem)

    def expected(self, name: str, what: str) -> ConfigError:
        return self.error(name, f"expected {what}, got {_show(self.data[name])}")

    def has(self, name: str) -> bool:
        return name in self.data

    def check_keys(self) -> None:
        known = KNOWN_KEYS[self.path]
        for name in self.data:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                valid = ", ".join(known)
                raise self.error(name, f"unknown key{hint}; this table takes: {valid}")

    def table(self, name: str) -> _Table:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise self.expected(name, "a table")
        table = _Table(self.reader, value, self.key(name))
        if table.path in KNOWN_KEYS:
            table.check_keys()
        return table

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self.data.get(name, _MISSING)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise self.expected(name, "a string")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.data.get(name, default)
        if value not in choices:
            listed = ", ".join(f'"{c}"' for c in choices)
            raise self.expected(name, f"one of {listed}")
        return cast(str, value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise self.expected(name, "true or false")
        return value

    def integer(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
        value = self.data.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum or (
            maximum is not None and value > maximum
        ):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else (
                f"of at least {minimum}")
            raise self.expected(name, f"a whole number {bounds}")
        return value

    def seconds(self, name: str, default: float) -> float:
        value = self.data.get(name, default)
        if not _is_number(value) or not value > 0:
            raise self.expected(name, "a positive number of seconds")
        return float(value)

    def optional_seconds(self, name: str) -> float | None:
        value = self.data.get(name, 0)
        if not _is_number(value) or value < 0:
            raise self.expected(name, "a number of seconds (0 turns it off)")
        return float(value) if value else None

    def path_value(self, name: str) -> Path | None:
        text = self.string(name)
        if text is None:
            return None
        if not text:
            raise self.expected(name, "a file path")
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.reader.base_dir / path

    def existing_file(self, name: str) -> Path | None:
        path = self.path_value(name)
        if path is not None and not path.is_file():
            raise self.error(name, f"no such file: {path}")
        return path

    def address(self, name: str, default_port: int) -> Address:
        return self.parse_address(name, self.data[name], default_port)

    def parse_address(self, name: str, value: object, default_port: int) -> Address:
        if isinstance(value, str):
            try:
                return parse_address(value, default_port)
            except ValueError:
                pass
        raise self.error(name, "expected host:port, [ipv6]:port or a Unix socket path "
                               f"(/...), got {_show(value)}")

    def secret(self, name: str, env_name: str) -> str | None:
        """A secret given inline as ``name`` or by environment variable ``env_name``."""
        inline = self.string(name)
        variable = self.string(env_name)
        if inline is not None and variable is not None:
            raise self.error(name, f"give {name} or {env_name}, not both")
        if variable is None:
            return inline
        value = self.reader.environ.get(variable)
        if value is None:
            raise self.error(env_name, f"the environment variable {variable} is not set")
        return value


class _Reader:
    def __init__(self, source: str, base_dir: Path, flags: Mapping[str, str],
                 environ: Mapping[str, str]) -> None:
        self.source = source
        self.base_dir = base_dir
        self.flags = flags
        self.environ = environ

    def error(self, key: str, problem: str) -> ConfigError:
        # A value from a flag is reported as the flag's, not the file's.
        for prefix, flag in self.flags.items():
            if key == prefix or key.startswith(prefix + "."):
                return ConfigError("command line", flag, problem)
        return ConfigError(self.source, key, problem)

    def read(self, data: dict[str, Any]) -> ProxyFile:
        top = _Table(self, data, "")
        top.check_keys()
        listen = self._listen(top)
        if "upstream" not in data:
            raise self.error("upstream", 'missing: say where PostgreSQL is, e.g. '
                                         'upstream = "127.0.0.1:5432" (or --upstream)')
        upstream = top.address("upstream", _UPSTREAM_PORT)
        adapter = cast(AdapterName, top.choice("adapter", ADAPTER_NAMES, "asyncio"))
        workers = top.integer("workers", 1, 1, MAX_INSTANCE_ID + 1)
        log_level = top.choice("log_level", LOG_LEVELS, "info")
        check_protocol = top.boolean("check_protocol", False)
        if workers > 1 and adapter != "asyncio":
            raise top.error("workers", f'more than one worker needs adapter = "asyncio", '
                                       f'not "{adapter}"')
        if workers > 1 and any(isinstance(a, str) for a in listen):
            raise top.error("workers", "worker processes share TCP ports; a Unix socket "
                                       "in listen cannot be shared: use one worker")

        auth, summary = self._auth(top.table("auth"))
        client_tls, certificate, require_tls = self._client_tls(top.table("client_tls"))
        upstream_tls = self._upstream_tls(top.table("upstream_tls"), upstream)
        limits = top.table("limits")
        cancel = top.table("cancel")
        instance_id = cancel.integer("instance_id", 0, 0, MAX_INSTANCE_ID)
        if instance_id + workers - 1 > MAX_INSTANCE_ID:
            raise cancel.error("instance_id", f"with {workers} workers the ids run up to "
                                              f"{instance_id + workers - 1}; the most is "
                                              f"{MAX_INSTANCE_ID}")
        peers = self._peers(cancel, instance_id, workers)
        middleware = self._middleware(data.get("middleware", []))
        pool = self._pool(top.table("pool"), auth) if top.has("pool") else None
        admin = self._admin(top.table("admin"), listen) if top.has("admin") else None
        metrics_listen = self._metrics(top.table("metrics"), listen, admin) if top.has(
            "metrics") else None
        if workers > 1 and (admin is not None or metrics_listen is not None):
            raise top.error("workers", "[admin] and [metrics] show one process; each worker "
                                       "process has sessions and a pool of its own: use "
                                       "workers = 1 with them")
        if isinstance(auth, ProxyAuth) and auth.method == "cert" and client_tls is None:
            raise self.error("auth.method", '"cert" needs client_tls.cert and client_tls.key '
                                            "(and client_tls.ca to check client certificates)")

        login_timeout = limits.seconds("login_timeout", 60.0)
        connect_timeout = limits.seconds("connect_timeout", 10.0)
        idle_timeout = limits.optional_seconds("idle_timeout")
        idle_in_transaction_timeout = limits.optional_seconds("idle_in_transaction_timeout")
        upstream_read_timeout = limits.optional_seconds("upstream_read_timeout")
        shutdown_timeout = self._shutdown_timeout(limits)
        max_clients = limits.integer("max_clients", 1000, 1)
        max_message_size = limits.integer("max_message_size", DEFAULT_MAX_MESSAGE_SIZE or 0, 1,
                                          MAX_PROTOCOL_MESSAGE_LENGTH - 4)
        max_pending_jobs = limits.integer("max_pending_jobs", 64, 1)
        max_pipeline = limits.integer("max_pipeline", DEFAULT_MAX_PIPELINE, 1)
        try:
            config = ProxyConfig(
                upstream=upstream,
                auth=auth,
                middleware=middleware,
                client_tls=client_tls,
                client_tls_certificate=certificate,
                require_client_tls=require_tls,
                upstream_tls=upstream_tls,
                max_clients=max_clients,
                max_message_size=max_message_size,
                max_pending_jobs=max_pending_jobs,
                max_pipeline=max_pipeline,
                instance_id=instance_id,
                peers=peers,
                login_timeout=login_timeout,
                connect_timeout=connect_timeout,
                idle_timeout=idle_timeout,
                idle_in_transaction_timeout=idle_in_transaction_timeout,
                upstream_read_timeout=upstream_read_timeout,
                shutdown_timeout=shutdown_timeout,
                check_protocol=check_protocol,
                pool=pool,
            )
        except ValueError as exc:  # a rule of ProxyConfig the checks above did not cover
            raise ConfigError(self.source, None, str(exc)) from None
        if pool is not None:
            summary += f", {pool.mode} pool of {pool.max_size}"
        return ProxyFile(config=config, listen=listen, adapter=adapter, workers=workers,
                         log_level=log_level, source=self.source, auth_summary=summary,
                         admin=admin, metrics_listen=metrics_listen)

    # -- sections -----------------------------------------------------------------------

    def _listen(self, top: _Table) -> tuple[Address, ...]:
        if not top.has("listen"):
            return DEFAULT_LISTEN
        value = top.data["listen"]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise top.expected("listen", 'an address or a list of them, such as '
                                         '["127.0.0.1:6432"]')
        return tuple(top.parse_address("listen", item, _LISTEN_PORT) for item in items)

    def _shutdown_timeout(self, limits: _Table) -> float:
        value = limits.data.get("shutdown_timeout", 30.0)
        if not _is_number(value) or value < 0:
            raise limits.expected("shutdown_timeout", "a number of seconds, 0 or more")
        return float(value)

    def _auth(self, auth: _Table) -> tuple[Passthrough | ProxyAuth, str]:
        mode = auth.choice("mode", ("passthrough", "proxy"), "passthrough")
        if mode == "passthrough":
            for name in KNOWN_KEYS["auth"]:
                if name != "mode" and auth.has(name):
                    raise auth.error(name, 'only used with mode = "proxy"; passthrough '
                                           "relays the client's own login to the server")
            return Passthrough(), "passthrough auth"
        method = cast(AuthMethod, auth.choice("method", _AUTH_METHODS, "scram-sha-256"))
        users = self._users(auth)
        auth_query = self._auth_query(auth) if auth.has("query") else None
        if auth_query is not None and users:
            key = "userlist" if auth.has("userlist") else "users"
            raise auth.error(key, "give users (userlist or [auth.users]) or [auth.query], "
                                  "not both")
        if auth_query is None and not users and method not in ("trust", "cert"):
            raise auth.error("method", f'"{method}" needs secrets to check: set userlist, '
                                       "[auth.users] or [auth.query]")
        upstream_password = auth.secret("upstream_password", "upstream_password_env")
        if upstream_password == "":
            name = "upstream_password_env" if auth.has("upstream_password_env") else (
                "upstream_password")
            raise auth.error(name, "the password is empty")
        upstream_user = auth.string("upstream_user")
        proxy_auth = ProxyAuth(method=method, users=users, auth_query=auth_query,
                               upstream_user=upstream_user,
                               upstream_password=upstream_password)
        return proxy_auth, f"proxy auth {method}"

    def _users(self, auth: _Table) -> dict[str, str]:
        users: dict[str, str] = {}
        if auth.has("userlist"):
            path = auth.existing_file("userlist")
            assert path is not None
            try:
                users.update(load_userlist(path))
            except UserlistError as exc:
                raise auth.error("userlist", str(exc)) from None
            except OSError as exc:
                raise auth.error("userlist", f"cannot read {path}: {exc.strerror}") from None
        if auth.has("users"):
            table = auth.data["users"]
            if not isinstance(table, dict):
                raise auth.expected("users", 'a table of user = "secret"')
            for user, secret in table.items():
                key = f"users.{user}"
                if not isinstance(secret, str) or not secret:
                    raise auth.error(key, "expected a SCRAM or MD5 secret or a password, got "
                                          f"{_show(secret)}")
                if secret.startswith("SCRAM-SHA-256$") and password_type(secret) == "plaintext":
                    try:
                        ScramSecret.parse(secret)
                    except ValueError as exc:
                        raise auth.error(key, f"looks like a SCRAM secret but is not one: "
                                              f"{exc}") from None
                if user in users:
                    raise auth.error(key, "this user is in the userlist file too")
                users[user] = secret
        return users

    def _auth_query(self, auth: _Table) -> AuthQuery:
        query = auth.table("query")
        user = query.string("user")
        if not user:
            raise query.error("user", "missing: the role the proxy logs in as to look "
                                      "secrets up")
        return AuthQuery(
            user=user,
            password=query.secret("password", "password_env"),
            database=query.string("database", "postgres") or "postgres",
            query=query.string("query") or DEFAULT_AUTH_QUERY,
        )

    def _client_tls(self, tls: _Table) -> tuple[ssl.SSLContext | None, bytes | None, bool]:
        cert = tls.existing_file("cert")
        key = tls.existing_file("key")
        ca = tls.existing_file("ca")
        require = tls.boolean("require", False)
        if cert is None:
            for name in ("key", "ca", "require"):
                if tls.has(name) and (name != "require" or require):
                    raise tls.error(name, "needs client_tls.cert (the proxy's certificate)")
            return None, None, False
        try:
            context = server_context(cert, key, client_ca=ca)
        except (ssl.SSLError, OSError) as exc:
            raise tls.error("cert", f"cannot load the certificate and key: {exc}") from None
        try:
            der = load_certificate_der(cert)
        except ValueError as exc:
            raise tls.error("cert", str(exc)) from None
        return context, der, require

    def _upstream_tls(self, tls: _Table, upstream: Address) -> UpstreamTLS:
        sslmode = cast(SSLMode, tls.choice("sslmode", SSLMODES, "disable"))
        rootcert = tls.existing_file("rootcert")
        cert = tls.existing_file("cert")
        key = tls.existing_file("key")
        hostname = tls.string("server_hostname")
        if hostname is None and not isinstance(upstream, str) and sslmode != "disable":
            hostname = upstream[0]  # as libpq: the host connected to is the name checked
        if sslmode in ("verify-ca", "verify-full") and rootcert is None:
            raise tls.error("rootcert", f'sslmode = "{sslmode}" needs the CA certificate '
                                        "that signed the server's")
        context = None
        if sslmode != "disable":
            try:
                context = client_context(sslmode, sslrootcert=rootcert, sslcert=cert,
                                         sslkey=key)
            except (ssl.SSLError, OSError, ValueError) as exc:
                name = "cert" if cert is not None else "rootcert"
                raise tls.error(name, f"cannot load: {exc}") from None
        return UpstreamTLS(sslmode=sslmode, sslrootcert=None if rootcert is None else
                           str(rootcert), sslcert=None if cert is None else str(cert),
                           sslkey=None if key is None else str(key),
                           server_hostname=hostname, context=context)

    def _pool(self, pool: _Table, auth: Passthrough | ProxyAuth) -> PoolConfig:
        if not isinstance(auth, ProxyAuth):
            # Blame the flag that turned the pool on, if one did.
            key = next((k for k in ("pool.mode", "pool.max_size") if k in self.flags), "pool")
            raise self.error(key, 'a pool needs [auth] mode = "proxy" (or --auth proxy): '
                                  "it logs in upstream on its own and reuses the "
                                  "connection for many clients, so the proxy must check "
                                  "each client itself")
        defaults = PoolConfig()
        mode = pool.choice("mode", POOL_MODES, defaults.mode)
        max_size = pool.integer("max_size", defaults.max_size, 1)
        min_idle = pool.integer("min_idle", defaults.min_idle, 0)
        if min_idle > max_size:
            raise pool.error("min_idle", f"expected at most pool.max_size ({max_size}), "
                                         f"got {min_idle}")
        reset = pool.choice("reset", _RESET_MODES, defaults.reset)
        session_state: dict[str, StatePolicy] = dict(DEFAULT_SESSION_STATE)
        if pool.has("session_state"):
            states = pool.table("session_state")
            for kind in states.data:
                session_state[kind] = cast(StatePolicy, states.choice(
                    kind, _STATE_POLICIES, DEFAULT_SESSION_STATE[kind]))
        checkout_timeout = pool.seconds("checkout_timeout", defaults.checkout_timeout)
        health_check_after = pool.seconds("health_check_after", defaults.health_check_after)
        server_idle_timeout = self._seconds_or_off(pool, "server_idle_timeout",
                                                   defaults.server_idle_timeout)
        server_lifetime = self._seconds_or_off(pool, "server_lifetime",
                                               defaults.server_lifetime)
        maintenance_interval = pool.seconds("maintenance_interval",
                                            defaults.maintenance_interval)
        try:
            return PoolConfig(
                mode=cast(Literal["session", "transaction"], mode),
                max_size=max_size,
                min_idle=min_idle,
                checkout_timeout=checkout_timeout,
                health_check_after=health_check_after,
                server_idle_timeout=server_idle_timeout,
                server_lifetime=server_lifetime,
                reset=cast(Literal["minimal", "discard_all"], reset),
                session_state=session_state,
                maintenance_interval=maintenance_interval,
            )
        except ValueError as exc:  # a rule of PoolConfig the checks above did not cover
            raise self.error("pool", str(exc)) from None

    @staticmethod
    def _seconds_or_off(table: _Table, name: str, default: float | None) -> float | None:
        if not table.has(name):
            return default
        return table.optional_seconds(name)

    def _admin(self, admin: _Table, listen: Sequence[Address]) -> AdminSettings:
        if not admin.has("listen"):
            raise admin.error("listen", 'missing: where the admin console listens, e.g. '
                                        'listen = "127.0.0.1:6433" (or --admin)')
        address = admin.address("listen", _ADMIN_PORT)
        if address in listen and (isinstance(address, str) or address[1] != 0):
            raise admin.error("listen", f"the proxy itself listens on "
                                        f"{format_address(address)}: give the admin "
                                        "console an address of its own")
        if not admin.has("users"):
            raise admin.error("users", 'missing: who may log in to the admin console, e.g. '
                                       '[admin.users] ops = "SCRAM-SHA-256$..." (a SCRAM '
                                       "secret, or a password)")
        table = admin.data["users"]
        if not isinstance(table, dict):
            raise admin.expected("users", 'a table of user = "SCRAM secret or password"')
        if not table:
            raise admin.error("users", 'empty: nobody could log in; add user = "SCRAM '
                                       'secret or password"')
        users: dict[str, str] = {}
        for user, secret in table.items():
            key = f"users.{user}"
            if not isinstance(secret, str) or not secret:
                raise admin.error(key, "expected a SCRAM secret or a password, got "
                                       f"{_show(secret)}")
            if is_md5_secret(secret):
                raise admin.error(key, "an MD5 secret cannot log in with SCRAM-SHA-256, "
                                       "which the admin console uses: give a SCRAM secret "
                                       "(or a password)")
            if secret.startswith("SCRAM-SHA-256$"):
                try:
                    ScramSecret.parse(secret)
                except ValueError as exc:
                    raise admin.error(key, f"looks like a SCRAM secret but is not one: "
                                           f"{exc}") from None
            users[user] = secret
        return AdminSettings(listen=address, users=users)

    def _metrics(self, metrics: _Table, listen: Sequence[Address],
                 admin: AdminSettings | None) -> tuple[str, int]:
        if not metrics.has("listen"):
            raise metrics.error("listen", 'missing: where GET /metrics is served, e.g. '
                                          'listen = "127.0.0.1:9127" (or --metrics)')
        address = metrics.address("listen", _METRICS_PORT)
        if isinstance(address, str):
            raise metrics.error("listen", f"expected host:port (HTTP over TCP), got "
                                          f"{_show(address)}")
        taken = [*listen, *([admin.listen] if admin is not None else [])]
        if address in taken and address[1] != 0:
            raise metrics.error("listen", f"{format_address(address)} is taken by the "
                                          "proxy or its admin console: give the metrics "
                                          "an address of their own")
        return address

    def _peers(self, cancel: _Table, instance_id: int, workers: int) -> dict[int, Address]:
        if not cancel.has("peers"):
            return {}
        table = cancel.data["peers"]
        if not isinstance(table, dict):
            raise cancel.expected("peers", 'a table of "instance id" = "host:port"')
        peers: dict[int, Address] = {}
        mine = range(instance_id, instance_id + workers)
        for name, value in table.items():
            key = f"peers.{name}"
            if not name.isdigit() or int(name) > MAX_INSTANCE_ID:
                raise cancel.error(key, f"expected an instance id from 0 to "
                                        f"{MAX_INSTANCE_ID} as the key")
            if int(name) in mine:
                raise cancel.error(key, f"instance {name} is this proxy (instance_id "
                                        f"{instance_id}, {workers} worker(s)), not a peer")
            peers[int(name)] = cancel.parse_address(key, value, _LISTEN_PORT)
        return peers

    def _middleware(self, items: object) -> list[Middleware[Any]]:
        if not isinstance(items, list):
            raise self.error("middleware", "expected [[middleware]] tables, got "
                                           f"{_show(items)}")
        chain: list[Middleware[Any]] = []
        for index, item in enumerate(items):
            key = f"middleware[{index}]"
            if not isinstance(item, dict):
                raise self.error(key, f"expected a table, got {_show(item)}")
            arguments = dict(item)
            target = arguments.pop("class", None)
            if not isinstance(target, str) or ":" not in target:
                raise self.error(f"{key}.class", 'expected "module:Class", got '
                                                 f"{_show(target)}")
            chain.append(self._instance(f"{key}.class", target, arguments))
        return chain

    def _instance(self, key: str, target: str, arguments: dict[str, Any]) -> Middleware[Any]:
        """One instance, shared by every session: middleware keeps per-session
        data in ``ctx.state``, and shared resources (an audit sink, a role graph)
        must exist once per proxy."""
        module_name, _, attribute = target.partition(":")
        try:
            found: object = importlib.import_module(module_name)
            for part in attribute.split("."):
                found = getattr(found, part)
        except ImportError as exc:
            raise self.error(key, f"cannot import {module_name}: {exc}") from None
        except AttributeError:
            raise self.error(key, f"{module_name} has no {attribute}") from None
        if not callable(found):
            raise self.error(key, f"{target} is not a class or factory")
        try:
            inspect.signature(found).bind(**arguments)
        except TypeError as exc:
            raise self.error(key, f"{target} does not take these settings: {exc}") from None
        except ValueError:
            pass  # no signature to check (a builtin); calling it will tell
        try:
            instance = found(**arguments)
        except Exception as exc:
            raise self.error(key, f"{target}(...) failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(instance, Middleware):
            raise self.error(key, f"{target} made {type(instance).__name__}, not a Middleware")
        return instance


def describe_listen(addresses: Iterable[Address]) -> str:
    """``127.0.0.1:6432 and [::1]:6432``: addresses for a message."""
    return " and ".join(format_address(a) for a in addresses)

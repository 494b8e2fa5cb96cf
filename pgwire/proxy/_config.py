"""How a proxy behaves: where upstream is, how clients log in, limits, timeouts.

These are plain, validated dataclasses; :mod:`pgwire.proxy.config_file` reads
them from TOML for the command line. Nothing here performs I/O.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..auth import ScramKeys
from ..middleware.base import Middleware
from ..protocol import DEFAULT_MAX_MESSAGE_SIZE
from ..protocol._codec import MAX_PROTOCOL_MESSAGE_LENGTH
from ..server import AuthMethod
from ..tls import SSLMODES, SSLMode
from ._actions import Address
from ._cancel import MAX_INSTANCE_ID
from ._pool_config import PoolConfig

__all__ = [
    "DEFAULT_AUTH_QUERY",
    "DEFAULT_MAX_PIPELINE",
    "AuthQuery",
    "Passthrough",
    "ProxyAuth",
    "ProxyConfig",
    "UpstreamTLS",
]

#: PgBouncer's default: the stored secret of a role that may log in, or no row.
DEFAULT_AUTH_QUERY: Final = "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1"
_AUTH_METHODS: Final = ("trust", "password", "md5", "scram-sha-256", "cert")


@dataclass(frozen=True, slots=True, kw_only=True)
class Passthrough:
    """Relay the client's own login to the server.

    The server asks, the client answers, the proxy passes both along. Limits:
    the client authenticates to the server, so the upstream role is the
    client's; SCRAM channel binding cannot cross the proxy (the client's
    TLS ends at the proxy), so SCRAM-SHA-256-PLUS is not offered to clients;
    a client that supports channel binding and talks TLS to the proxy must
    then connect with ``channel_binding=disable`` when the proxy's own link
    to the server is TLS too, because PostgreSQL refuses a client that says
    "I could bind but you did not offer it" on a connection where it did.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthQuery:
    """Look secrets up in the server with the proxy's own login.

    The query runs on a connection of its own as ``user``, with none of the
    client's startup settings, through the extended protocol with the client
    user name as ``$1`` (never spliced into SQL). It must return one row of
    (name, secret), or no row for an unknown user.
    """

    user: str
    password: str | None = field(default=None, repr=False)
    database: str = "postgres"
    query: str = DEFAULT_AUTH_QUERY


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyAuth:
    """The proxy checks clients itself, then logs in upstream on its own.

    - ``method``: as in pg_hba.conf: trust, password, md5, scram-sha-256, cert.
    - Secrets come from ``users`` (name -> what PostgreSQL stores: a SCRAM or
      MD5 secret, or a plaintext password; load a PgBouncer userlist.txt with
      :func:`pgwire.auth.load_userlist`) or from ``auth_query``.
    - Upstream login: as ``upstream_user`` with ``upstream_password`` when
      set (every client shares that role); otherwise as the client's own user,
      with ``upstream_password``, else the plaintext password from ``users``,
      else the SCRAM keys the client's SCRAM login revealed (the server must
      store the same SCRAM secret).
    """

    method: AuthMethod = "scram-sha-256"
    users: Mapping[str, str] = field(default_factory=dict, repr=False)
    auth_query: AuthQuery | None = None
    upstream_user: str | None = None
    upstream_password: str | ScramKeys | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.method not in _AUTH_METHODS:
            raise ValueError(f"auth method must be one of {', '.join(_AUTH_METHODS)}, "
                             f"not {self.method!r}")
        if self.auth_query is not None and self.users:
            raise ValueError("give users or auth_query, not both")


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamTLS:
    """TLS on the proxy's links to the server, as libpq's sslmode and friends."""

    sslmode: SSLMode = "disable"
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    server_hostname: str | None = None
    context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        if self.sslmode not in SSLMODES:
            raise ValueError(f"sslmode must be one of {', '.join(SSLMODES)}, "
                             f"not {self.sslmode!r}")


#: Requests one client may have waiting for an answer before the proxy stops
#: reading it (see ``ProxyConfig.max_pipeline``).
DEFAULT_MAX_PIPELINE: Final = 10_000


def _positive(name: str, value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive, finite number of seconds, "
                         f"not {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """Everything a :class:`~pgwire.proxy.Proxy` needs to run sessions.

    ``middleware`` is a sequence of factories (classes, or any callable
    returning a :class:`~pgwire.middleware.Middleware`), or of instances;
    instances are shared by all sessions, so keep per-session data in
    ``ctx.state``.
    """

    upstream: Address
    auth: Passthrough | ProxyAuth = field(default_factory=Passthrough)
    middleware: Sequence[Middleware[Any] | Callable[[], Middleware[Any]]] = ()
    #: TLS offered to clients: a server context (:func:`pgwire.tls.server_context`).
    client_tls: ssl.SSLContext | None = None
    #: The DER of the proxy's certificate, to offer SCRAM-SHA-256-PLUS.
    client_tls_certificate: bytes | None = None
    require_client_tls: bool = False
    upstream_tls: UpstreamTLS = field(default_factory=UpstreamTLS)
    #: Seconds a client has from connecting to ReadyForQuery (PostgreSQL: 60).
    login_timeout: float = 60.0
    connect_timeout: float = 10.0
    #: Close a client idle outside a transaction this long (57P05), if set.
    idle_timeout: float | None = None
    #: Close a client idle inside a transaction this long (25P03), if set.
    idle_in_transaction_timeout: float | None = None
    #: While the proxy owes the client an answer (a Query, Sync or FunctionCall
    #: went upstream and its ReadyForQuery has not come back, outside COPY FROM
    #: STDIN), the longest it waits for the server's next bytes; then FATAL 08006
    #: and the server link is closed. Time the proxy itself does not read the
    #: server (back-pressure from a client that does not read) does not count.
    #: None (the default): wait as long as the statement runs, since long
    #: statements are legal (use statement_timeout).
    upstream_read_timeout: float | None = None
    #: Logins at once (cancel connections excluded); the next gets FATAL 53300.
    max_clients: int = 1000
    #: The largest message body either side may send; a larger one ends the
    #: session with FATAL 54000. None: the protocol's own cap (just under 1 GiB).
    max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE
    #: Requests one client may have awaiting an answer (Query, Sync and
    #: FunctionCall sent upstream, and answers a middleware holds back until
    #: the server's earlier ones come): at this many the proxy stops reading the
    #: client until answers come back, as PostgreSQL stops reading a client
    #: while it works. Bounds what a client that pipelines without reading
    #: makes the proxy hold; nothing is refused.
    max_pipeline: int = DEFAULT_MAX_PIPELINE
    #: Jobs one session may have waiting in the worker pool (Context.submit).
    max_pending_jobs: int = 64
    #: This proxy's id in cancel keys (0..127), and where the others take cancels.
    instance_id: int = 0
    peers: Mapping[int, Address] = field(default_factory=dict)
    #: Graceful shutdown: how long running sessions may go on before 57P01.
    shutdown_timeout: float = 30.0
    #: Run every forwarded message through both state machines even when no
    #: middleware reads messages. Off: such sessions delimit and count frames
    #: only (cut-through, as PgBouncer), leaving order checks to the two ends.
    check_protocol: bool = False
    #: Pool server connections (see :class:`PoolConfig`); None: one server
    #: connection per client, opened at its login and closed when it leaves.
    pool: PoolConfig | None = None

    def __post_init__(self) -> None:
        for name in ("login_timeout", "connect_timeout", "idle_timeout",
                     "idle_in_transaction_timeout", "upstream_read_timeout"):
            _positive(name, getattr(self, name))
        if not (self.shutdown_timeout >= 0 and math.isfinite(self.shutdown_timeout)):
            raise ValueError(f"shutdown_timeout must be a finite number of seconds >= 0, "
                             f"not {self.shutdown_timeout!r}")
        if self.max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, not {self.max_clients!r}")
        if self.max_message_size is not None and not (
            1 <= self.max_message_size <= MAX_PROTOCOL_MESSAGE_LENGTH - 4
        ):
            raise ValueError(f"max_message_size must be 1..{MAX_PROTOCOL_MESSAGE_LENGTH - 4} "
                             f"bytes or None, not {self.max_message_size!r}")
        if self.max_pipeline < 1:
            raise ValueError(f"max_pipeline must be at least 1, not {self.max_pipeline!r}")
        if self.max_pending_jobs < 1:
            raise ValueError(f"max_pending_jobs must be at least 1, not "
                             f"{self.max_pending_jobs!r}")
        if not 0 <= self.instance_id <= MAX_INSTANCE_ID:
            raise ValueError(f"instance_id must be 0..{MAX_INSTANCE_ID}, not {self.instance_id!r}")
        if self.require_client_tls and self.client_tls is None:
            raise ValueError("require_client_tls needs client_tls (a certificate to offer)")
        if self.pool is not None and not isinstance(self.auth, ProxyAuth):
            raise ValueError("a pool needs ProxyAuth: with Passthrough every client logs in "
                             "to the server itself, so no connection can be reused")
        if self.pool is not None and self.pool.mode == "transaction":
            try:
                import pglast.parser  # noqa: F401, PLC0415 - the pool reads SQL with it
            except ImportError:
                raise ValueError("a transaction-mode pool reads every statement for "
                                 "session state: install pglast (pip install pgwire[sql])"
                                 ) from None
        if isinstance(self.auth, ProxyAuth) and self.auth.method == "cert" and (
            self.client_tls is None
        ):
            raise ValueError("auth method 'cert' needs client_tls")

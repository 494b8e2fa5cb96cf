"""The sans-IO proxy engine: sessions, actions, cancel routing, configuration.

A :class:`Proxy` holds what every session shares; each client connection gets
a :class:`Session` that turns what happened (bytes, connects, timers) into
actions for an adapter (:mod:`pgwire.adapters`) to carry out. See
``docs/proxy.md``.
"""

from ._actions import (
    AUTH_LINK,
    CANCEL_LINK,
    MAIN_LINK,
    Action,
    Address,
    CancelTimer,
    CloseClient,
    CloseUpstream,
    OpenUpstream,
    RunJob,
    SendToClient,
    SendToUpstream,
    StartTimer,
    format_address,
)
from ._cancel import MAX_INSTANCE_ID, CancelKeys, CancelRoute, UpstreamKey, instance_of
from ._config import (
    DEFAULT_AUTH_QUERY,
    AuthQuery,
    Passthrough,
    ProxyAuth,
    ProxyConfig,
    UpstreamTLS,
)
from ._metrics import ADMIN_COMMANDS, admin_command, admin_rows, prometheus_text, snapshot
from ._pool import POOL_LINK_BASE, Pool, PooledServer, PoolKey, PoolKeyStats, ServerState
from ._pool_config import (
    DEFAULT_SESSION_STATE,
    SESSION_STATE_KINDS,
    PoolConfig,
    PoolMode,
    StatePolicy,
)
from ._proxy import Proxy, ProxyStats
from ._session import Session, SessionState

__all__ = [
    "ADMIN_COMMANDS",
    "AUTH_LINK",
    "CANCEL_LINK",
    "DEFAULT_AUTH_QUERY",
    "DEFAULT_SESSION_STATE",
    "MAIN_LINK",
    "MAX_INSTANCE_ID",
    "POOL_LINK_BASE",
    "SESSION_STATE_KINDS",
    "Action",
    "Address",
    "AuthQuery",
    "CancelKeys",
    "CancelRoute",
    "CancelTimer",
    "CloseClient",
    "CloseUpstream",
    "OpenUpstream",
    "Passthrough",
    "Pool",
    "PoolConfig",
    "PoolKey",
    "PoolKeyStats",
    "PoolMode",
    "PooledServer",
    "Proxy",
    "ProxyAuth",
    "ProxyConfig",
    "ProxyStats",
    "RunJob",
    "SendToClient",
    "SendToUpstream",
    "ServerState",
    "Session",
    "SessionState",
    "StartTimer",
    "StatePolicy",
    "UpstreamKey",
    "UpstreamTLS",
    "admin_command",
    "admin_rows",
    "format_address",
    "instance_of",
    "prometheus_text",
    "snapshot",
]

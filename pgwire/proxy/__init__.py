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
from ._proxy import Proxy, ProxyStats
from ._session import Session, SessionState

__all__ = [
    "AUTH_LINK",
    "CANCEL_LINK",
    "DEFAULT_AUTH_QUERY",
    "MAIN_LINK",
    "MAX_INSTANCE_ID",
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
    "Proxy",
    "ProxyAuth",
    "ProxyConfig",
    "ProxyStats",
    "RunJob",
    "SendToClient",
    "SendToUpstream",
    "Session",
    "SessionState",
    "StartTimer",
    "UpstreamKey",
    "UpstreamTLS",
    "format_address",
    "instance_of",
]

"""The sans-IO protocol core: messages, framing, and the Frontend/Backend machines.

Nothing here performs I/O. See ``docs/protocol.md`` for a guide.
"""

from ._backend import Backend, BackendEvent, error_response
from ._codec import python_encoding
from ._connection import DEFAULT_MAX_MESSAGE_SIZE
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._events import NEED_DATA, ConnectionClosed, DirectTLSHandshake, NeedData
from ._framing import RawMessage, ReceiveBuffer
from ._frontend import Frontend, FrontendEvent
from ._messages import *  # noqa: F403
from ._messages import __all__ as _message_names
from ._replication import (
    HotStandbyFeedback,
    PrimaryKeepalive,
    ReplicationMessage,
    StandbyStatusUpdate,
    XLogData,
    decode_replication,
)
from ._states import Phase

__all__ = [  # noqa: PLE0604
    "DEFAULT_MAX_MESSAGE_SIZE",
    "NEED_DATA",
    "Backend",
    "BackendEvent",
    "ConnectionClosed",
    "DirectTLSHandshake",
    "Frontend",
    "FrontendEvent",
    "HotStandbyFeedback",
    "LocalProtocolError",
    "NeedData",
    "Phase",
    "PrimaryKeepalive",
    "ProtocolError",
    "RawMessage",
    "ReceiveBuffer",
    "RemoteProtocolError",
    "ReplicationMessage",
    "StandbyStatusUpdate",
    "XLogData",
    "decode_replication",
    "error_response",
    "python_encoding",
    *_message_names,
]

"""Cut-through forwarding: the data path when no middleware reads messages.

After login, a session whose middleware wants no message types has nothing to
decide per message. It still needs a little: where frames end (a message is
never split across the proxy's own writes and size limits hold), whether the
client said Terminate, how many answers the server still owes and the last
transaction status (for idle timeouts and graceful shutdown), FATAL errors,
and ParameterStatus. :class:`Relay` keeps exactly that, reading only frame
headers, and hands back the received bytes to forward as they came.

Checking every message's order is left to the two ends, as with a direct
connection (and as PgBouncer does); ``ProxyConfig(check_protocol=True)`` keeps
both state machines on the data path instead.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from ..protocol import ParameterStatus, RemoteProtocolError
from ..protocol._codec import MAX_PROTOCOL_MESSAGE_LENGTH
from ..protocol._errors import SQLSTATE_PROGRAM_LIMIT_EXCEEDED
from ..protocol._states import _is_fatal

__all__ = ["Relay"]

_FRONTEND_TYPES: Final = frozenset(b"QPBDECSHFXdcfp")
_SYNC: Final = 0x53
_EMPTY: Final = b""


class Relay:
    """Frame delimiting and the session facts cut-through forwarding keeps.

    ``pending`` holds the type bytes of requests the server still owes a
    ReadyForQuery (Query, Sync, FunctionCall), oldest first.
    """

    __slots__ = ("_client_rest", "_server_rest", "fatal", "limit", "parameters", "pending",
                 "ready_seen", "status", "terminated", "unsynced")

    def __init__(self, *, limit: int | None, pending: deque[int], unsynced: bool,
                 status: str) -> None:
        #: Largest message body accepted from either side.
        self.limit = MAX_PROTOCOL_MESSAGE_LENGTH - 4 if limit is None else limit
        self.pending = pending
        self.unsynced = unsynced
        #: 'I', 'T' or 'E' from the last ReadyForQuery.
        self.status = status
        #: ReadyForQuery messages seen since the caller last reset this.
        self.ready_seen = 0
        #: The server sent a FATAL (or PANIC) error.
        self.fatal = False
        #: The client sent Terminate (bytes after it are dropped).
        self.terminated = False
        #: ParameterStatus messages seen, in order, since the caller last took them.
        self.parameters: list[ParameterStatus] = []
        self._client_rest = _EMPTY
        self._server_rest = _EMPTY

    def _too_big(self, code: int, length: int, who: str) -> RemoteProtocolError:
        if length < 4:
            return RemoteProtocolError(f"invalid message length {length} from the {who}")
        return RemoteProtocolError(
            f"message of type {bytes([code])!r} with {length - 4} bytes exceeds the maximum "
            f"message size of {self.limit} bytes", SQLSTATE_PROGRAM_LIMIT_EXCEEDED)

    def from_client(self, data: bytes) -> bytes:
        """Complete client frames to forward (a partial one waits for the rest)."""
        if self._client_rest:
            data = self._client_rest + data
        size = len(data)
        pos = 0
        limit = self.limit + 4
        pending = self.pending
        while pos + 5 <= size:
            code = data[pos]
            length = int.from_bytes(data[pos + 1:pos + 5])
            if code not in _FRONTEND_TYPES:
                raise RemoteProtocolError(f"invalid frontend message type {code}")
            if not 4 <= length <= limit:
                raise self._too_big(code, length, "client")
            end = pos + 1 + length
            if end > size:
                break
            pos = end
            if code in (0x51, 0x46):  # Q, F
                pending.append(code)
            elif code == _SYNC:
                pending.append(code)
                self.unsynced = False
            elif code == 0x58:  # X: nothing after Terminate counts
                self.terminated = True
                self._client_rest = _EMPTY
                return data[:pos]
            elif code in b"PBEDC":
                self.unsynced = True
        self._client_rest = data[pos:] if pos < size else _EMPTY
        return data if pos == size else data[:pos]

    def from_server(self, data: bytes) -> bytes:
        """Complete server frames to forward."""
        if self._server_rest:
            data = self._server_rest + data
        size = len(data)
        pos = 0
        limit = self.limit + 4
        pending = self.pending
        while pos + 5 <= size:
            code = data[pos]
            length = int.from_bytes(data[pos + 1:pos + 5])
            if not 4 <= length <= limit:
                raise self._too_big(code, length, "server")
            end = pos + 1 + length
            if end > size:
                break
            if code == 0x5A:  # Z
                if pending:
                    pending.popleft()
                if length == 5:
                    self.status = chr(data[pos + 5])
                self.ready_seen += 1
            elif code == 0x45:  # E
                if _is_fatal(data, pos + 5, end):
                    self.fatal = True
            elif code == 0x47:  # G: the server ignores a Sync read during COPY FROM
                if pending and pending[0] == _SYNC:
                    pending.popleft()
                    self.unsynced = True
            elif code == 0x53:  # S
                self.parameters.append(ParameterStatus.decode(data[pos + 5:end]))
            pos = end
        self._server_rest = data[pos:] if pos < size else _EMPTY
        return data if pos == size else data[:pos]

    @property
    def at_rest(self) -> bool:
        """Nothing owed, nothing half-sent, no transaction open."""
        return (not self.pending and not self.unsynced and self.status == "I"
                and not self._client_rest and not self._server_rest)

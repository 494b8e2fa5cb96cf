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

When middleware reads some message types, the same walk runs *selectively*:
it stops at each frame of a type some middleware reads, and at the few the
session tracks itself (Terminate; ReadyForQuery, ErrorResponse,
CopyInResponse, ParameterStatus), which the session decodes
(:class:`DecodedFrames`) and runs through the chain; the frames between
them, and a stopped frame every hook let through, go on as the bytes received
(:class:`Outbound`). The walk also refuses, at little cost, what the state
machines would refuse and a middleware could be misled by: a password
message after login, a Query or FunctionCall inside an extended-protocol
batch, a server frame of a type no server sends after login, and any server
response while no request is in flight.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

from ..protocol import LocalProtocolError, Message, ParameterStatus, RemoteProtocolError
from ..protocol._codec import MAX_PROTOCOL_MESSAGE_LENGTH
from ..protocol._errors import SQLSTATE_PROGRAM_LIMIT_EXCEEDED
from ..protocol._states import _is_fatal

if TYPE_CHECKING:
    from ..protocol._connection import Connection
    from ..tls import SecureChannel

__all__ = ["DecodedFrames", "Outbound", "Relay"]

_FRONTEND_TYPES: Final = frozenset(b"QPBDECSHFXdcfp")
_SYNC: Final = 0x53
#: Client types selective forwarding checks the order of (see Relay._order_error).
_OUT_OF_ORDER: Final = frozenset(b"pQF")
#: What a server may send with no request in flight.
_IDLE_SERVER_TYPES: Final = frozenset(b"NASE")
#: What a server may send after login (ready and COPY phases).
_SERVER_TYPES: Final = frozenset(b"123ACDEGHINSTVWZnstdc")
#: Answers only the extended protocol gets (ParseComplete, BindComplete,
#: CloseComplete, NoData, PortalSuspended, ParameterDescription): never owed to a
#: simple Query or a FunctionCall.
_EXTENDED_ANSWERS: Final = frozenset(b"123nst")
_SIMPLE_REQUESTS: Final = frozenset(b"QF")
#: CopyDone and CopyFail: the client ends a COPY FROM STDIN.
_COPY_ENDS: Final = frozenset(b"cf")
_EMPTY: Final = b""
_TYPE_CODES: Final = tuple(bytes([code]) for code in range(256))
#: Frames up to this size (header included) are worth remembering decoded...
_CACHED_FRAME: Final = 256
#: ... and this many of them, per direction and encoding (then it starts over).
_CACHED_FRAMES: Final = 1024


class Relay:
    """Frame delimiting and the session facts cut-through forwarding keeps.

    ``pending`` holds the type bytes of requests the server still owes a
    ReadyForQuery (Query, Sync, FunctionCall), oldest first.
    """

    __slots__ = ("_client_rest", "_server_rest", "client_closed", "client_error",
                 "client_status", "client_stop", "copy_in", "fatal",
                 "limit", "parameters", "pending", "ready_seen", "server_stop", "status",
                 "terminated", "unsynced")

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
        #: Selective forwarding (middleware reads some types): the type bytes
        #: each side's walk stops at; None for cut-through.
        self.client_stop: frozenset[int] | None = None
        self.server_stop: frozenset[int] | None = None
        #: 'I', 'T' or 'E' from the last ReadyForQuery the client got (selective
        #: forwarding: the proxy may answer, or eat answers, itself).
        self.client_status = status
        #: The client closed while its request waited for a pooled connection.
        self.client_closed = False
        #: A client protocol error found behind frames that must go on first
        #: (see :meth:`client_run`): raise it once they have.
        self.client_error: RemoteProtocolError | None = None
        #: The server asked for COPY data (CopyInResponse) and the client has not
        #: ended it yet: the server waits for the client, not the other way round.
        self.copy_in = False

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
            elif code in _COPY_ENDS:
                self.copy_in = False
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
                self.copy_in = False
            elif code == 0x45:  # E
                self.copy_in = False
                if _is_fatal(data, pos + 5, end):
                    self.fatal = True
            elif code == 0x47:  # G: the server ignores a Sync read during COPY FROM
                self.copy_in = True
                if pending and pending[0] == _SYNC:
                    pending.popleft()
                    self.unsynced = True
            elif code == 0x53:  # S
                self.parameters.append(ParameterStatus.decode(data[pos + 5:end]))
            pos = end
        self._server_rest = data[pos:] if pos < size else _EMPTY
        return data if pos == size else data[:pos]

    # -- selective forwarding: walk to the next frame somebody reads ----------------------

    def take_client(self, data: bytes) -> bytes:
        """``data`` behind the incomplete frame the last walk left."""
        if self._client_rest:
            data = self._client_rest + data
            self._client_rest = _EMPTY
        return data

    def keep_client(self, data: bytes, pos: int) -> None:
        """The walk stopped at ``pos``: keep the rest for the next bytes."""
        self._client_rest = data[pos:] if pos < len(data) else _EMPTY

    def client_run(self, data: bytes, pos: int, stop: frozenset[int]) -> tuple[int, int]:
        """Walk complete client frames from ``pos``, tracking each, up to the first
        whose type is in ``stop`` (not tracked: :meth:`client_sent` does that
        when it, or what replaces it, goes upstream). Returns ``(run_end,
        frame_end)``: forward ``data[pos:run_end]``; ``frame_end > run_end``
        when a stop frame fills ``data[run_end:frame_end]``, else the walk
        reached an incomplete frame or the end."""
        size = len(data)
        limit = self.limit + 4
        pending = self.pending
        start = pos
        while pos + 5 <= size:
            code = data[pos]
            length = int.from_bytes(data[pos + 1:pos + 5])
            error = None
            if code not in _FRONTEND_TYPES:
                error = RemoteProtocolError(f"invalid frontend message type {code}")
            elif not 4 <= length <= limit:
                error = self._too_big(code, length, "client")
            elif code in _OUT_OF_ORDER and pos + 1 + length <= size:
                error = self._order_error(code)
            if error is not None:
                if pos == start:
                    raise error
                # The frames before it go on first, as they would have had they
                # come in a read of their own: the caller raises it afterwards.
                self.client_error = error
                return pos, pos
            end = pos + 1 + length
            if end > size:
                break
            if code in stop:
                return pos, end
            pos = end
            if code in (0x51, 0x46):  # Q, F
                pending.append(code)
            elif code == _SYNC:
                pending.append(code)
                self.unsynced = False
            elif code in b"PBEDC":
                self.unsynced = True
            elif code in _COPY_ENDS:
                self.copy_in = False
        return pos, pos

    def _order_error(self, code: int) -> RemoteProtocolError | None:
        """What the client's state machine would refuse at little cost: a
        password message after login, a Query or FunctionCall inside an
        extended-protocol batch."""
        if code == 0x70:
            return RemoteProtocolError("unexpected message type 'p' from the client in phase "
                                       "ready")
        if self.unsynced:
            name = "Query" if code == 0x51 else "FunctionCall"
            return RemoteProtocolError(f"{name} in the middle of an extended-query batch: "
                                       "send Sync first")
        return None

    def client_sent(self, code: int) -> None:
        """A message of type ``code`` goes upstream (not by :meth:`client_run`);
        :class:`LocalProtocolError` if it cannot come now."""
        if code in (0x51, 0x46):
            if self.unsynced:
                name = "Query" if code == 0x51 else "FunctionCall"
                raise LocalProtocolError(f"{name} in the middle of an extended-query batch: "
                                         "send Sync first")
            self.pending.append(code)
        elif code == _SYNC:
            self.pending.append(code)
            self.unsynced = False
        elif code in b"PBEDC":
            self.unsynced = True
        elif code in _COPY_ENDS:
            self.copy_in = False

    def take_server(self, data: bytes) -> bytes:
        """``data`` behind the incomplete frame the last walk left."""
        if self._server_rest:
            data = self._server_rest + data
            self._server_rest = _EMPTY
        return data

    def keep_server(self, data: bytes, pos: int) -> None:
        """The walk stopped at ``pos``: keep the rest for the next bytes."""
        self._server_rest = data[pos:] if pos < len(data) else _EMPTY

    def server_stops(self, data: bytes, pos: int, stop: frozenset[int]
                     ) -> tuple[list[int], int, RemoteProtocolError | None]:
        """Walk the complete server frames of ``data`` from ``pos``: where those of a type in
        ``stop`` begin, where the complete frames end, and the error that
        ended the walk early (a bad length), to raise once the frames before
        it are dealt with. ``stop`` must hold every type that changes what is
        tracked (Z, E, G, S): frames between stop frames change nothing."""
        stops: list[int] = []
        size = len(data)
        limit = self.limit + 4
        pending = self.pending
        answering = 0  # which request of ``pending`` the frames answer
        while pos + 5 <= size:
            length = int.from_bytes(data[pos + 1:pos + 5])
            if not 4 <= length <= limit:
                return stops, pos, self._too_big(data[pos], length, "server")
            end = pos + 1 + length
            if end > size:
                break
            code = data[pos]
            if code not in _SERVER_TYPES:
                return stops, pos, RemoteProtocolError(
                    f"unexpected message type {chr(code)!r} from the server after login")
            if code in _EXTENDED_ANSWERS and answering < len(pending) and (
                pending[answering] in _SIMPLE_REQUESTS
            ):
                return stops, pos, RemoteProtocolError(
                    f"server sent message type {chr(code)!r}, which cannot answer a simple "
                    "Query or a FunctionCall")
            if code == 0x5A or (code == 0x47 and answering < len(pending)
                                and pending[answering] == _SYNC):
                answering += 1  # as server_seen will pop it
            if code in stop:
                stops.append(pos)
            pos = end
        return stops, pos, None

    def server_seen(self, code: int, data: bytes, start: int, end: int) -> None:
        """Track a stop frame from the server, ``data[start:end]`` (its body
        from ``start + 5``), before anybody reads it."""
        if code == 0x5A:  # Z
            self.copy_in = False
            if self.pending:
                self.pending.popleft()
            if end - start == 6:
                self.status = chr(data[start + 5])
        elif code == 0x45:  # E
            self.copy_in = False
            if _is_fatal(data, start + 5, end):
                self.fatal = True
        elif code == 0x47:  # G
            self.copy_in = True
            if self.pending and self.pending[0] == _SYNC:
                self.pending.popleft()
                self.unsynced = True

    @property
    def idle(self) -> bool:
        """Nothing is owed: the server may send only notices, notifications,
        parameter reports and errors."""
        return not self.pending and not self.unsynced

    def check_idle(self, code: int) -> None:
        """A server frame of type ``code`` while :attr:`idle`."""
        if code not in _IDLE_SERVER_TYPES:
            raise RemoteProtocolError(f"server sent message type {chr(code)!r} while no "
                                      "request was in flight")

    @property
    def at_rest(self) -> bool:
        """Nothing owed, nothing half-sent, no transaction open."""
        return (not self.pending and not self.unsynced and self.status == "I"
                and not self._client_rest and not self._server_rest)


class DecodedFrames:
    """Small frames decoded once: the same bytes in the same encoding decode to
    an equal message, and messages are immutable, so one object serves every
    later copy of the frame (ReadyForQuery, CommandComplete tags, Sync,
    Execute, a repeated Query...). Frames are compared whole, bytes for bytes."""

    __slots__ = ("_by_encoding",)

    def __init__(self) -> None:
        self._by_encoding: dict[str, dict[bytes, Message]] = {}

    def decode(self, connection: Connection, data: bytes, start: int, end: int) -> Message:
        """The frame ``data[start:end]`` decoded as ``connection`` decodes it."""
        if end - start > _CACHED_FRAME:
            return connection._decode_frame(_TYPE_CODES[data[start]], data, start + 5, end)
        entries = self._by_encoding.get(connection.encoding)
        if entries is None:
            entries = self._by_encoding[connection.encoding] = {}
        key = data[start:end]
        message = entries.get(key)
        if message is None:
            # From the key, so that nothing kept refers to the chunk.
            message = connection._decode_frame(_TYPE_CODES[key[0]], key, 5, len(key))
            if len(entries) >= _CACHED_FRAMES:
                entries.clear()
            entries[key] = message
        return message


class Outbound:
    """What selective forwarding writes toward one peer while it reads a chunk.

    Frames nobody reads, and a read frame that every hook let through
    unchanged, go on as the bytes received: consecutive ones are written as
    one slice of the chunk (the chunk itself when all of it goes on).
    Anything else is written in order after them.
    """

    __slots__ = ("_data", "_end", "_start", "channel", "frame_end", "frame_start", "message")

    def __init__(self, channel: SecureChannel) -> None:
        self.channel = channel
        self._data = _EMPTY
        self._start = 0
        self._end = 0
        #: The frame being read: its message and where it lies in the chunk.
        self.message: Message | None = None
        self.frame_start = 0
        self.frame_end = 0

    def begin(self, data: bytes) -> None:
        """Reading ``data`` starts."""
        self._data = data
        self._start = self._end = 0

    def run(self, start: int, end: int) -> None:
        """``data[start:end]`` goes on as it came."""
        if start != self._end:
            self.flush()
            self._start = start
        self._end = end

    def original(self, message: Message | object) -> bool:
        """If ``message`` is the frame being read, it goes on as its bytes: True."""
        if message is not self.message:
            return False
        self.run(self.frame_start, self.frame_end)
        return True

    def write(self, data: bytes) -> None:
        """Other bytes, after everything before them."""
        self.flush()
        self.channel.write(data)

    def flush(self) -> None:
        """Write what goes on as it came."""
        if self._end > self._start:
            data = self._data
            self.channel.write(data if self._start == 0 and self._end == len(data)
                               else data[self._start:self._end])
            self._start = self._end

    def finish(self) -> None:
        """Reading the chunk ended: write what is left, forget the chunk."""
        self.flush()
        self.message = None
        self._data = _EMPTY
        self._start = self._end = 0

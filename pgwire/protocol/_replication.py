"""Streaming-replication payloads carried inside CopyData.

After ``START_REPLICATION`` the server answers CopyBothResponse and both
sides exchange CopyData whose first byte names the payload: 'w' XLogData and
'k' PrimaryKeepalive from the server, 'r' StandbyStatusUpdate and 'h'
HotStandbyFeedback from the client. These helpers turn such a payload into a
typed object and back; they never touch the connection state.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Final

from ._codec import Reader
from ._errors import RemoteProtocolError
from ._messages import CopyData

__all__ = [
    "HotStandbyFeedback",
    "PrimaryKeepalive",
    "ReplicationMessage",
    "StandbyStatusUpdate",
    "XLogData",
    "decode_replication",
]

_XLOG_HEAD: Final = struct.Struct("!cqqq")
_KEEPALIVE: Final = struct.Struct("!cqq?")
_STATUS: Final = struct.Struct("!cqqqq?")
_FEEDBACK: Final = struct.Struct("!cqIIII")


class ReplicationMessage:
    """Base of the replication payloads; :meth:`to_copy_data` wraps one for sending."""

    __slots__ = ()
    kind: ClassVar[bytes] = b""

    def payload(self) -> bytes:
        """The CopyData payload bytes (kind byte first)."""
        raise TypeError(f"{type(self).__name__} cannot be encoded")

    def to_copy_data(self) -> CopyData:
        """This payload as a CopyData message."""
        return CopyData(data=self.payload())


@dataclass(frozen=True, slots=True, kw_only=True)
class XLogData(ReplicationMessage):
    """WAL data ('w'): ``data`` starts at ``start_lsn``; ``send_time`` in
    microseconds since 2000-01-01."""

    kind: ClassVar[bytes] = b"w"
    start_lsn: int
    end_lsn: int
    send_time: int
    data: bytes

    def payload(self) -> bytes:
        return _XLOG_HEAD.pack(b"w", self.start_lsn, self.end_lsn, self.send_time) + self.data


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryKeepalive(ReplicationMessage):
    """Server keepalive ('k'); ``reply_requested`` asks for a status update now."""

    kind: ClassVar[bytes] = b"k"
    wal_end: int
    send_time: int
    reply_requested: bool = False

    def payload(self) -> bytes:
        return _KEEPALIVE.pack(b"k", self.wal_end, self.send_time, self.reply_requested)


@dataclass(frozen=True, slots=True, kw_only=True)
class StandbyStatusUpdate(ReplicationMessage):
    """Client progress report ('r')."""

    kind: ClassVar[bytes] = b"r"
    written_lsn: int
    flushed_lsn: int
    applied_lsn: int
    send_time: int
    reply_requested: bool = False

    def payload(self) -> bytes:
        return _STATUS.pack(
            b"r", self.written_lsn, self.flushed_lsn, self.applied_lsn, self.send_time,
            self.reply_requested,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class HotStandbyFeedback(ReplicationMessage):
    """Client xmin feedback ('h')."""

    kind: ClassVar[bytes] = b"h"
    send_time: int
    xmin: int
    xmin_epoch: int
    catalog_xmin: int
    catalog_xmin_epoch: int

    def payload(self) -> bytes:
        return _FEEDBACK.pack(
            b"h", self.send_time, self.xmin, self.xmin_epoch, self.catalog_xmin,
            self.catalog_xmin_epoch,
        )


def decode_replication(data: bytes | CopyData) -> ReplicationMessage:
    """Decode a replication payload from CopyData (or its payload bytes).

    Raises :class:`~pgwire.RemoteProtocolError` for an unknown kind byte or a
    payload of the wrong size.
    """
    if isinstance(data, CopyData):
        data = data.data
    data = bytes(data)
    if not data:
        raise RemoteProtocolError("empty replication message")
    kind = data[:1]
    if kind == b"w":
        if len(data) < _XLOG_HEAD.size:
            raise RemoteProtocolError("XLogData payload is truncated")
        _, start, end, sent = _XLOG_HEAD.unpack_from(data)
        return XLogData(start_lsn=start, end_lsn=end, send_time=sent, data=data[_XLOG_HEAD.size:])
    if kind == b"k":
        reader = Reader(data, 1, len(data), "utf-8")
        wal_end, sent = reader.int64(), reader.int64()
        flag = reader.byte()
        reader.finish()
        return PrimaryKeepalive(wal_end=wal_end, send_time=sent, reply_requested=flag != 0)
    if kind == b"r":
        reader = Reader(data, 1, len(data), "utf-8")
        status = StandbyStatusUpdate(
            written_lsn=reader.int64(),
            flushed_lsn=reader.int64(),
            applied_lsn=reader.int64(),
            send_time=reader.int64(),
            reply_requested=reader.byte() != 0,
        )
        reader.finish()
        return status
    if kind == b"h":
        reader = Reader(data, 1, len(data), "utf-8")
        feedback = HotStandbyFeedback(
            send_time=reader.int64(),
            xmin=reader.uint32(),
            xmin_epoch=reader.uint32(),
            catalog_xmin=reader.uint32(),
            catalog_xmin_epoch=reader.uint32(),
        )
        reader.finish()
        return feedback
    raise RemoteProtocolError(f"unknown replication message kind {kind!r}")

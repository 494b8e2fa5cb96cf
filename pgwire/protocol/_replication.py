"""Streaming-replication payloads carried inside CopyData.

After ``START_REPLICATION`` the server answers CopyBothResponse and both
sides exchange CopyData whose first byte names the payload: 'w' XLogData and
'k' PrimaryKeepalive from the server, 'r' StandbyStatusUpdate and 'h'
HotStandbyFeedback from the client. These helpers turn such a payload into a
typed object and back; they never touch the connection state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._codec import INT64, UINT32, UINT64, Reader, pack_checked
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

def _lsn(value: int, name: str) -> bytes:
    """An LSN: unsigned 64-bit (FFFFFFFF/FFFFFFFF is valid)."""
    return pack_checked(UINT64, name, value)


def _time(value: int) -> bytes:
    """Microseconds since 2000-01-01: signed 64-bit."""
    return pack_checked(INT64, "send_time", value)


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
        return (
            b"w" + _lsn(self.start_lsn, "start_lsn") + _lsn(self.end_lsn, "end_lsn")
            + _time(self.send_time) + bytes(self.data)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryKeepalive(ReplicationMessage):
    """Server keepalive ('k'); ``reply_requested`` asks for a status update now."""

    kind: ClassVar[bytes] = b"k"
    wal_end: int
    send_time: int
    reply_requested: bool = False

    def payload(self) -> bytes:
        return (
            b"k" + _lsn(self.wal_end, "wal_end") + _time(self.send_time)
            + (b"\1" if self.reply_requested else b"\0")
        )


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
        return (
            b"r" + _lsn(self.written_lsn, "written_lsn") + _lsn(self.flushed_lsn, "flushed_lsn")
            + _lsn(self.applied_lsn, "applied_lsn") + _time(self.send_time)
            + (b"\1" if self.reply_requested else b"\0")
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
        return b"h" + _time(self.send_time) + b"".join(
            pack_checked(UINT32, name, value)
            for name, value in (
                ("xmin", self.xmin), ("xmin_epoch", self.xmin_epoch),
                ("catalog_xmin", self.catalog_xmin),
                ("catalog_xmin_epoch", self.catalog_xmin_epoch),
            )
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
        reader = Reader(data, 1, len(data), "utf-8")
        return XLogData(
            start_lsn=reader.uint64(), end_lsn=reader.uint64(), send_time=reader.int64(),
            data=reader.rest(),
        )
    if kind == b"k":
        reader = Reader(data, 1, len(data), "utf-8")
        wal_end, sent = reader.uint64(), reader.int64()
        flag = reader.byte()
        reader.finish()
        return PrimaryKeepalive(wal_end=wal_end, send_time=sent, reply_requested=flag != 0)
    if kind == b"r":
        reader = Reader(data, 1, len(data), "utf-8")
        status = StandbyStatusUpdate(
            written_lsn=reader.uint64(),
            flushed_lsn=reader.uint64(),
            applied_lsn=reader.uint64(),
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

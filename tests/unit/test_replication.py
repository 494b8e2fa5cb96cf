"""Streaming-replication payloads inside CopyData: exact bytes, round trips, bad sizes.

Layouts from the PostgreSQL docs ("Streaming Replication Protocol"):
XLogData 'w' Int64 start, Int64 end, Int64 time, bytes; PrimaryKeepalive 'k'
Int64 end, Int64 time, Byte1 reply; StandbyStatusUpdate 'r' Int64 x3, Int64
time, Byte1 reply; HotStandbyFeedback 'h' Int64 time, Int32 x4.
"""

from __future__ import annotations

from typing import Any

import pytest

import pgwire as pw

from .helpers import Pair, protocol_error

LSN_A = bytes.fromhex("0000000100000028")  # 1/28
LSN_B = bytes.fromhex("0000000100000100")  # 1/100
TIME = bytes.fromhex("0002c3f7f4a5b6c7")

PAYLOADS: list[Any] = [
    pytest.param(
        pw.XLogData(start_lsn=0x1_00000028, end_lsn=0x1_00000100, send_time=0x2C3F7F4A5B6C7,
                    data=b"\x00wal"),
        b"w" + LSN_A + LSN_B + TIME + b"\x00wal",
        id="XLogData",
    ),
    pytest.param(
        pw.XLogData(start_lsn=0, end_lsn=0, send_time=0, data=b""),
        b"w" + bytes(24),
        id="XLogData-empty",
    ),
    pytest.param(
        pw.PrimaryKeepalive(wal_end=0x1_00000100, send_time=0x2C3F7F4A5B6C7,
                            reply_requested=True),
        b"k" + LSN_B + TIME + b"\x01",
        id="PrimaryKeepalive",
    ),
    pytest.param(
        pw.StandbyStatusUpdate(written_lsn=0x1_00000100, flushed_lsn=0x1_00000028,
                               applied_lsn=0, send_time=0x2C3F7F4A5B6C7),
        b"r" + LSN_B + LSN_A + bytes(8) + TIME + b"\x00",
        id="StandbyStatusUpdate",
    ),
    pytest.param(
        pw.HotStandbyFeedback(send_time=0x2C3F7F4A5B6C7, xmin=0xFFFFFFFF, xmin_epoch=1,
                              catalog_xmin=3, catalog_xmin_epoch=0),
        b"h" + TIME + b"\xff\xff\xff\xff\x00\x00\x00\x01\x00\x00\x00\x03\x00\x00\x00\x00",
        id="HotStandbyFeedback",
    ),
]


@pytest.mark.parametrize(("message", "payload"), PAYLOADS)
def test_payload_bytes_and_round_trip(message: pw.ReplicationMessage, payload: bytes) -> None:
    assert message.payload() == payload
    assert message.to_copy_data() == pw.CopyData(data=payload)
    assert pw.decode_replication(payload) == message
    assert pw.decode_replication(pw.CopyData(data=payload)) == message


def test_any_nonzero_reply_byte_means_reply_requested() -> None:
    keepalive = pw.decode_replication(b"k" + LSN_B + TIME + b"\x02")
    assert keepalive == pw.PrimaryKeepalive(wal_end=0x1_00000100, send_time=0x2C3F7F4A5B6C7,
                                            reply_requested=True)


MALFORMED: list[Any] = [
    pytest.param(b"", "empty replication message", id="empty"),
    pytest.param(b"x" + bytes(24), "unknown replication message kind", id="unknown-kind-x"),
    pytest.param(b"W" + bytes(24), "unknown replication message kind", id="uppercase-W"),
    pytest.param(b"w" + bytes(23), "insufficient data", id="XLogData-23-byte-header"),
    pytest.param(b"w", "insufficient data", id="XLogData-kind-only"),
    pytest.param(b"k" + bytes(16), "insufficient data", id="PrimaryKeepalive-16"),
    pytest.param(b"k" + bytes(18), "trailing", id="PrimaryKeepalive-18"),
    pytest.param(b"r" + bytes(32), "insufficient data", id="StandbyStatusUpdate-32"),
    pytest.param(b"r" + bytes(34), "trailing", id="StandbyStatusUpdate-34"),
    pytest.param(b"h" + bytes(23), "insufficient data", id="HotStandbyFeedback-23"),
    pytest.param(b"h" + bytes(25), "trailing", id="HotStandbyFeedback-25"),
    pytest.param(b"h", "insufficient data", id="HotStandbyFeedback-kind-only"),
]


@pytest.mark.parametrize(("payload", "match"), MALFORMED)
def test_malformed_payload(payload: bytes, match: str) -> None:
    with protocol_error(pw.RemoteProtocolError, "08P01", match):
        pw.decode_replication(payload)


@pytest.mark.parametrize("size", range(0, 40), ids=lambda n: f"{n}-bytes")
@pytest.mark.parametrize("kind", [b"w", b"k", b"r", b"h", b"?"], ids=lambda k: k.decode())
def test_every_size_decodes_or_raises_remote_protocol_error(kind: bytes, size: int) -> None:
    exact = {b"k": 17, b"r": 33, b"h": 24}
    payload = kind + b"\xa5" * size
    if (kind == b"w" and size >= 24) or exact.get(kind) == size:
        assert pw.decode_replication(payload).kind == kind
    else:
        with protocol_error(pw.RemoteProtocolError, "08P01"):
            pw.decode_replication(payload)


def test_lsn_is_unsigned_like_pg_lsn() -> None:
    # pg_lsn 'FFFFFFFF/FFFFFFFF' is a valid LSN (XLogRecPtr is uint64).
    top = 0xFFFFFFFF_FFFFFFFF
    status = pw.StandbyStatusUpdate(written_lsn=top, flushed_lsn=top, applied_lsn=top,
                                    send_time=0)
    payload = b"r" + b"\xff" * 24 + bytes(8) + b"\x00"
    assert pw.decode_replication(payload) == status
    assert status.payload() == payload


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(pw.HotStandbyFeedback(send_time=0, xmin=2**32, xmin_epoch=0,
                                           catalog_xmin=0, catalog_xmin_epoch=0),
                     id="xmin-2**32"),
        pytest.param(pw.HotStandbyFeedback(send_time=0, xmin=-1, xmin_epoch=0,
                                           catalog_xmin=0, catalog_xmin_epoch=0),
                     id="xmin-negative"),
        pytest.param(pw.PrimaryKeepalive(wal_end=2**64, send_time=0), id="wal-end-2**64"),
        pytest.param(pw.XLogData(start_lsn=0, end_lsn=0, send_time=2**63, data=b""),
                     id="send-time-2**63"),
    ],
)
def test_unencodable_payload_is_local_protocol_error(message: pw.ReplicationMessage) -> None:
    with protocol_error(pw.LocalProtocolError, "22023"):
        message.payload()


def test_base_class_cannot_be_encoded() -> None:
    with pytest.raises(TypeError, match="cannot be encoded"):
        pw.ReplicationMessage().payload()


def test_replication_stream_through_copy_both() -> None:
    pair = Pair().login()
    pair.client(pw.Query(query="START_REPLICATION SLOT s LOGICAL 0/0"))
    pair.server(pw.CopyBothResponse())
    wal = pw.XLogData(start_lsn=0x16B3748, end_lsn=0x16B3748, send_time=1, data=b"BEGIN")
    keepalive = pw.PrimaryKeepalive(wal_end=0x16B3790, send_time=2, reply_requested=True)
    received = pair.server(wal.to_copy_data(), keepalive.to_copy_data())
    assert [pw.decode_replication(m) for m in received if isinstance(m, pw.CopyData)] == [
        wal, keepalive
    ]
    status = pw.StandbyStatusUpdate(written_lsn=0x16B3790, flushed_lsn=0x16B3790,
                                    applied_lsn=0x16B3790, send_time=3)
    (copy_data,) = pair.client(status.to_copy_data())
    assert isinstance(copy_data, pw.CopyData)
    assert pw.decode_replication(copy_data) == status
    assert pair.phase is pw.Phase.COPY_BOTH

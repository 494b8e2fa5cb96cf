"""The client disappears during its login: mid-startup, mid-SCRAM.

Each time the proxy must end the session, close the server link (so the
server's login process ends), and come back to its idle fd and thread counts;
the audit file must verify, with each session's end recorded. Each test
hangs up both ways in turn: an orderly close (FIN), and a reset (RST,
SO_LINGER 0) as a crashed client or a dropped network leaves it.
"""

from __future__ import annotations

import socket
import struct

import pytest

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster

from .toolkit import (
    HANGUPS,
    TIMEOUT,
    ProxyProcess,
    Quiet,
    check_audit,
    hang_up,
    server_processes,
    wait_until,
)

pytestmark = pytest.mark.fault

def startup_packet(cluster: PostgresCluster, application_name: str) -> bytes:
    return pw.StartupMessage(parameters=(
        ("user", cluster.superuser), ("database", "postgres"),
        ("application_name", application_name))).encode()


def test_mid_startup(proxy: ProxyProcess, baseline: Quiet, cluster: PostgresCluster) -> None:
    packet = startup_packet(cluster, "vanish-startup")
    cuts = (2, 8, len(packet) - 1)  # a piece of the length word; the version; all but a byte
    for how in HANGUPS:
        socks = [socket.create_connection(proxy.address, timeout=TIMEOUT) for _ in cuts]
        for sock, cut in zip(socks, cuts, strict=True):
            sock.sendall(packet[:cut])
        wait_until(lambda: proxy.sessions() == len(cuts), "the proxy to take the clients")
        for sock in socks:
            hang_up(sock, how)
        proxy.assert_back_to(baseline)
    assert proxy.stop() == 0
    check_audit(proxy.audit_records())


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    header = _read_exactly(sock, 5)
    body = _read_exactly(sock, struct.unpack("!I", header[1:])[0] - 4)
    return header[:1], body


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the proxy closed the connection"
        data += chunk
    return data


def test_mid_scram(proxy: ProxyProcess, baseline: Quiet, cluster: PostgresCluster) -> None:
    before = server_processes(cluster)
    for how in HANGUPS:
        with socket.create_connection(proxy.address, timeout=TIMEOUT) as sock:
            sock.sendall(startup_packet(cluster, "vanish-scram"))
            kind, body = read_message(sock)
            assert (kind, struct.unpack("!I", body[:4])[0]) == (b"R", 10), body  # SASL
            assert b"SCRAM-SHA-256\0" in body
            first = b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL"
            sasl = b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first
            sock.sendall(b"p" + struct.pack("!I", 4 + len(sasl)) + sasl)
            kind, body = read_message(sock)
            assert (kind, struct.unpack("!I", body[:4])[0]) == (b"R", 11), body  # continue
            # The server now waits for the client's proof, which never comes.
            assert server_processes(cluster) == before + 1
            hang_up(sock, how)
        proxy.assert_back_to(baseline)
        wait_until(lambda: server_processes(cluster) == before, "the server's login to end")
    assert proxy.stop() == 0
    check_audit(proxy.audit_records())

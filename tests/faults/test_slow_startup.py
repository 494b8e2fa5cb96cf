"""A client that sends its startup packet one byte per second (slowloris).

With ``limits.login_timeout = 2`` the proxy must give up on it after about
two seconds, as PostgreSQL does at ``authentication_timeout``: PostgreSQL
closes a connection whose startup packet has not arrived without a word
(there is no protocol version yet to answer in), so the client may get at
most a FATAL 08006 before the end of the stream. Meanwhile other clients log
in and run queries: one slow client must not block the proxy.
"""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster

from .toolkit import (
    TIMEOUT,
    Client,
    ProxyProcess,
    check_audit,
    raw_connect,
    wait_until,
)

pytestmark = pytest.mark.fault

LOGIN_TIMEOUT = 2


class SlowClient(threading.Thread):
    """Sends ``packet`` one byte a second until the proxy hangs up; keeps what
    it read and how many bytes went out."""

    def __init__(self, address: tuple[str, int], packet: bytes) -> None:
        super().__init__(daemon=True, name="slow-client")
        self.sock = raw_connect(address)
        self.packet = packet
        self.sent = 0
        self.received = b""
        self.closed = threading.Event()

    def run(self) -> None:
        try:
            for byte in self.packet:
                self.sock.sendall(bytes([byte]))
                self.sent += 1
                if self._closed_within(1.0):
                    return
            self._closed_within(TIMEOUT)
        except OSError:
            self.closed.set()
        finally:
            self.sock.close()

    def _closed_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                return False
            if not chunk:
                self.closed.set()
                return True
            self.received += chunk
        return False


def test_login_timeout_ends_a_one_byte_per_second_startup(
    adapter: str, cluster: PostgresCluster, tmp_path: Path,
) -> None:
    toml = f"[limits]\nlogin_timeout = {LOGIN_TIMEOUT}\nshutdown_timeout = 2\n"
    with ProxyProcess(adapter, (cluster.host, cluster.port), tmp_path, toml=toml) as proxy:
        baseline = proxy.warm_up(cluster)
        packet = pw.StartupMessage(parameters=(
            ("user", cluster.superuser), ("database", "postgres"),
            ("application_name", "slowloris"))).encode()
        slow = [SlowClient(proxy.address, packet) for _ in range(2)]
        for client in slow:
            client.start()
        wait_until(lambda: all(c.sent >= 1 for c in slow), "the slow clients to start")
        # Served meanwhile, while the slow ones still trickle.
        with Client(proxy.address, cluster, "not-blocked") as other:
            other.login()
            assert other.scalar("select 'served'") == "served"
            assert not any(c.closed.is_set() for c in slow)
        for client in slow:
            client.join(LOGIN_TIMEOUT + TIMEOUT)
            assert client.closed.is_set(), "the proxy kept the slow client"
            assert client.sent < len(packet)
            assert client.received in (b"", *_fatal_08006(client.received))
        assert proxy.counter("login_timeouts") == 2
        proxy.assert_back_to(baseline)
        assert proxy.stop() == 0
    check_audit(proxy.audit_records())


def _fatal_08006(received: bytes) -> tuple[bytes, ...]:
    """``(received,)`` when it is exactly one FATAL 08006 ErrorResponse, else ``()``."""
    if received[:1] != b"E" or len(received) < 5:
        return ()
    length = struct.unpack("!I", received[1:5])[0]
    if len(received) != 1 + length:
        return ()
    fields = {part[:1]: part[1:] for part in received[5:].split(b"\0") if part}
    if (fields.get(b"S"), fields.get(b"C")) == (b"FATAL", b"08006"):
        return (received,)
    return ()

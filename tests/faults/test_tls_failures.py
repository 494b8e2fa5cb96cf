"""TLS handshakes that fail, on the client's leg and on the server's.

Client leg: after the proxy answers an SSLRequest with 'S', the client sends
bytes that are no TLS handshake (noise, or a plaintext StartupMessage as in
CVE-2021-23214), or it checks the proxy's certificate against a CA that did
not sign it and gives up (libpq through psycopg, ``sslmode=verify-full``).
Server leg: the proxy requires TLS upstream, but the server has none, or its
certificate is signed by a CA the proxy does not trust. The proxy must close
the client (with FATAL 08001 when it can still speak to it: libpq's SQLSTATE
for a connection it could not establish), keep nothing open, and record the
session's end in the audit.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import pgwire as pw
from pgwire.testing.cluster import PostgresCluster
from pgwire.testing.pki import CertificateAuthority

from .toolkit import (
    Client,
    ProxyProcess,
    check_audit,
    raw_connect,
    read_until_closed,
)

pytestmark = pytest.mark.fault

SSL_REQUEST = struct.pack("!II", 8, 80877103)


@pytest.fixture(scope="module")
def authorities(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the proxy's certificate, its key, a CA certificate that signed neither)."""
    proxy_ca = CertificateAuthority.create(tmp_path_factory.mktemp("proxy-ca"), "proxy CA")
    stranger = CertificateAuthority.create(tmp_path_factory.mktemp("stranger-ca"), "stranger")
    cert, key = proxy_ca.issue_server_certificate("proxy")
    return cert, key, stranger.directory / "ca.crt"


@pytest.fixture(scope="module")
def plain_cluster() -> Iterator[PostgresCluster]:
    """A server without TLS."""
    with PostgresCluster(ssl=False, auth="scram-sha-256") as cluster:
        yield cluster


def tls_proxy(adapter: str, cluster: PostgresCluster, directory: Path,
              authorities: tuple[Path, Path, Path]) -> ProxyProcess:
    cert, key, _ = authorities
    return ProxyProcess(adapter, (cluster.host, cluster.port), directory, toml=(
        f'[limits]\nshutdown_timeout = 2\n[client_tls]\ncert = "{cert}"\nkey = "{key}"\n'))


GARBAGE = {
    "noise": b"this is no TLS ClientHello\r\n" * 8,
    "plaintext_startup": pw.StartupMessage(parameters=(("user", "postgres"),)).encode(),
    "broken_record": b"\x16\x03\x01\x00\x30" + b"\xff" * 48,
}


def test_client_sends_garbage_after_the_proxy_said_s(
    adapter: str, cluster: PostgresCluster, tmp_path: Path,
    authorities: tuple[Path, Path, Path],
) -> None:
    with tls_proxy(adapter, cluster, tmp_path, authorities) as proxy:
        baseline = proxy.warm_up(cluster)
        for garbage in GARBAGE.values():
            with raw_connect(proxy.address) as sock:
                sock.sendall(SSL_REQUEST)
                assert sock.recv(1) == b"S"
                sock.sendall(garbage)
                read_until_closed(sock)  # a TLS alert at most, then the end
            proxy.assert_back_to(baseline)
        assert proxy.stop() == 0
    check_audit(proxy.audit_records())


def test_client_rejects_the_proxy_certificate(
    adapter: str, cluster: PostgresCluster, tmp_path: Path,
    authorities: tuple[Path, Path, Path],
) -> None:
    with tls_proxy(adapter, cluster, tmp_path, authorities) as proxy:
        baseline = proxy.warm_up(cluster)
        for _ in range(2):
            with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
                psycopg.connect(**cluster.connect_kwargs(
                    host=proxy.host, port=proxy.port, sslmode="verify-full",
                    sslrootcert=authorities[2], connect_timeout=10))
        proxy.assert_back_to(baseline)
        assert proxy.stop() == 0
    check_audit(proxy.audit_records())


def refused_logins(proxy: ProxyProcess, cluster: PostgresCluster, count: int) -> None:
    for _ in range(count):
        with Client(proxy.address, cluster, "upstream-tls") as client:
            client.begin_login()
            events = client.rest_of_stream()
        errors = [(e.severity, e.sqlstate) for e in events if isinstance(e, pw.ErrorResponse)]
        assert errors == [("FATAL", "08001")], events
        assert events[-1] == pw.ConnectionClosed()


def test_upstream_tls_required_but_the_server_has_none(
    adapter: str, plain_cluster: PostgresCluster, tmp_path: Path,
) -> None:
    with ProxyProcess(adapter, (plain_cluster.host, plain_cluster.port), tmp_path, toml=(
            '[limits]\nshutdown_timeout = 2\n[upstream_tls]\nsslmode = "require"\n')) as proxy:
        refused_logins(proxy, plain_cluster, 1)
        baseline = proxy.quiet(disconnects=1)
        refused_logins(proxy, plain_cluster, 2)
        proxy.assert_back_to(baseline)
        assert proxy.stop() == 0
    check_audit(proxy.audit_records())


def test_upstream_certificate_from_a_wrong_ca(
    adapter: str, cluster: PostgresCluster, tmp_path: Path,
    authorities: tuple[Path, Path, Path],
) -> None:
    with ProxyProcess(adapter, (cluster.host, cluster.port), tmp_path, toml=(
            '[limits]\nshutdown_timeout = 2\n[upstream_tls]\nsslmode = "verify-full"\n'
            f'rootcert = "{authorities[2]}"\nserver_hostname = "localhost"\n')) as proxy:
        refused_logins(proxy, cluster, 1)
        baseline = proxy.quiet(disconnects=1)
        refused_logins(proxy, cluster, 2)
        proxy.assert_back_to(baseline)
        assert proxy.stop() == 0
    check_audit(proxy.audit_records())

"""pgwire.testing.pki: the certificates it makes pass a real TLS handshake.

Each handshake runs in memory: a server ``ssl.SSLObject`` with the issued server
certificate and a client one trusting only the CA, joined by ``ssl.MemoryBIO``
buffers, both with ``VERIFY_X509_STRICT`` so a missing or malformed extension fails.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pgwire.testing.pki import (
    VALIDITY_DAYS,
    CertificateAuthority,
    CertificateError,
    OpenSSLUnavailable,
)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture(scope="module")
def server_files(ca: CertificateAuthority) -> tuple[Path, Path]:
    return ca.issue_server_certificate()


def server_context(files: tuple[Path, Path], client_ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_cert_chain(*files)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca_cert: Path, files: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_cert))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if files is not None:
        context.load_cert_chain(*files)
    return context


def handshake(server: ssl.SSLContext, client: ssl.SSLContext,
              server_hostname: str) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Complete a handshake in memory; return (server side, client side)."""
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    client_side = client.wrap_bio(client_in, client_out, server_hostname=server_hostname)
    pending = [client_side, server_side]
    for _ in range(10):
        for side in list(pending):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                continue
            pending.remove(side)
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if not pending:
            return server_side, client_side
    raise AssertionError("the handshake did not finish")


def common_name(certificate: dict[str, Any] | None) -> str:
    assert certificate is not None
    names = [value for rdn in certificate["subject"] for key, value in rdn if key == "commonName"]
    assert len(names) == 1, certificate["subject"]
    return str(names[0])


# ---------------------------------------------------------------------------
# handshakes


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1"])
def test_server_and_client_certificates_complete_a_handshake(
        ca: CertificateAuthority, server_files: tuple[Path, Path], host: str) -> None:
    client_files = ca.issue_client_certificate("alice")
    server_side, client_side = handshake(server_context(server_files, ca.certificate),
                                         client_context(ca.certificate, client_files), host)
    assert common_name(server_side.getpeercert()) == "alice"
    server_cert: dict[str, Any] | None = client_side.getpeercert()
    assert common_name(server_cert) == "localhost"
    assert server_cert is not None
    lifetime = (ssl.cert_time_to_seconds(server_cert["notAfter"])
                - ssl.cert_time_to_seconds(server_cert["notBefore"]))
    assert lifetime == VALIDITY_DAYS * 86400 == 2 * 86400


@pytest.mark.parametrize("name", ["a/b=c+d\\e", "ünïcødé", "cert_user"])
def test_client_common_name_is_what_was_asked(ca: CertificateAuthority,
                                              server_files: tuple[Path, Path],
                                              name: str) -> None:
    client_files = ca.issue_client_certificate(name)
    server_side, _ = handshake(server_context(server_files, ca.certificate),
                               client_context(ca.certificate, client_files), "localhost")
    assert common_name(server_side.getpeercert()) == name


def test_a_host_not_named_is_refused(ca: CertificateAuthority,
                                     server_files: tuple[Path, Path]) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(server_context(server_files), client_context(ca.certificate), "127.0.0.2")


def test_chosen_hosts_are_the_only_ones(ca: CertificateAuthority) -> None:
    files = ca.issue_server_certificate("db-server", "db", hosts=("db.test", "10.1.2.3"))
    context = server_context(files)
    for host in ("db.test", "10.1.2.3"):
        _, client_side = handshake(context, client_context(ca.certificate), host)
        assert common_name(client_side.getpeercert()) == "db"
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(context, client_context(ca.certificate), "localhost")


def test_a_client_certificate_cannot_serve(ca: CertificateAuthority) -> None:
    files = ca.issue_client_certificate("localhost", stem="client-as-server")
    with pytest.raises(ssl.SSLCertVerificationError, match="unsuitable certificate purpose"):
        handshake(server_context(files), client_context(ca.certificate), "localhost")


def test_another_ca_is_not_trusted(tmp_path: Path, server_files: tuple[Path, Path]) -> None:
    other = CertificateAuthority.create(tmp_path, "another CA")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(server_context(server_files), client_context(other.certificate), "localhost")


def test_ed25519_ca(tmp_path: Path) -> None:
    ed = CertificateAuthority.create(tmp_path, key_type="ed25519")
    assert "BEGIN PRIVATE KEY" in ed.key.read_text()
    server_side, _ = handshake(server_context(ed.issue_server_certificate(), ed.certificate),
                               client_context(ed.certificate, ed.issue_client_certificate("e")),
                               "::1")
    assert common_name(server_side.getpeercert()) == "e"


def extensions(certificate: Path) -> str:
    program = shutil.which("openssl")
    assert program is not None
    names = ("basicConstraints,keyUsage,extendedKeyUsage,subjectAltName,"
             "subjectKeyIdentifier,authorityKeyIdentifier")
    result = subprocess.run([program, "x509", "-in", str(certificate), "-noout", "-ext", names],
                            capture_output=True, text=True, check=True, timeout=60)
    return " ".join(result.stdout.split())


def test_extensions(ca: CertificateAuthority, server_files: tuple[Path, Path]) -> None:
    authority = extensions(ca.certificate)
    assert "X509v3 Basic Constraints: critical CA:TRUE" in authority
    assert "X509v3 Key Usage: critical Certificate Sign, CRL Sign" in authority
    assert "X509v3 Subject Key Identifier:" in authority
    assert "Extended Key Usage" not in authority
    server = extensions(server_files[0])
    client = extensions(ca.issue_client_certificate("z")[0])
    for text in (server, client):
        assert "X509v3 Basic Constraints: critical CA:FALSE" in text
        assert "X509v3 Key Usage: critical Digital Signature, Key Encipherment" in text
        assert "X509v3 Subject Key Identifier:" in text
        assert "X509v3 Authority Key Identifier:" in text
    assert "X509v3 Extended Key Usage: TLS Web Server Authentication" in server
    assert ("X509v3 Subject Alternative Name: "
            "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1") in server
    assert "X509v3 Extended Key Usage: TLS Web Client Authentication" in client
    assert "Subject Alternative Name" not in client


# ---------------------------------------------------------------------------
# files


def test_file_names_and_modes(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "new" / "dir")
    server = ca.issue_server_certificate()
    first, second = ca.issue_client_certificate("x"), ca.issue_client_certificate("x")
    named = ca.issue_client_certificate("y", stem="bob")
    directory = tmp_path / "new" / "dir"
    assert (ca.certificate, ca.key) == (directory / "ca.crt", directory / "ca.key")
    assert server == (directory / "server.crt", directory / "server.key")
    assert first == (directory / "client-1.crt", directory / "client-1.key")
    assert second == (directory / "client-2.crt", directory / "client-2.key")
    assert named == (directory / "bob.crt", directory / "bob.key")
    assert sorted(path.name for path in directory.iterdir()) == sorted(
        path.name for path in (ca.certificate, ca.key, *server, *first, *second, *named))
    for cert, key in ((ca.certificate, ca.key), server, first, second, named):
        assert cert.stat().st_mode & 0o777 == 0o644
        assert key.stat().st_mode & 0o777 == 0o600
        assert "BEGIN EC PRIVATE KEY" in key.read_text() or "BEGIN PRIVATE KEY" in key.read_text()
    assert CertificateAuthority(directory).certificate == ca.certificate


def test_nothing_is_overwritten(ca: CertificateAuthority) -> None:
    before = ca.key.read_bytes()
    with pytest.raises(FileExistsError):
        ca.issue_server_certificate("ca")
    with pytest.raises(FileExistsError):
        CertificateAuthority.create(ca.directory)
    assert ca.key.read_bytes() == before


@pytest.mark.parametrize("bad", [
    {"stem": "../escape"}, {"stem": ""}, {"common_name": ""}, {"common_name": "a\nb"},
    {"hosts": ("a, DNS:b",)}, {"hosts": ("",)},
])
def test_bad_arguments_are_refused(ca: CertificateAuthority, bad: dict[str, Any]) -> None:
    names_before = sorted(path.name for path in ca.directory.iterdir())
    with pytest.raises(ValueError):
        ca.issue_server_certificate(**{"stem": "bad", **bad})
    assert sorted(path.name for path in ca.directory.iterdir()) == names_before


def test_an_openssl_failure_leaves_nothing_behind(ca: CertificateAuthority) -> None:
    names_before = sorted(path.name for path in ca.directory.iterdir())
    with pytest.raises(CertificateError, match="openssl req"):
        ca.issue_client_certificate("x" * 65)  # longer than X.509 allows a common name
    assert sorted(path.name for path in ca.directory.iterdir()) == names_before


def test_missing_openssl_says_how_to_install_it(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(OpenSSLUnavailable, match="apt-get install openssl"):
        CertificateAuthority.create(tmp_path / "ca")

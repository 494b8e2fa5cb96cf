"""Throwaway certificates for tests: a CA that issues server and client certificates.

`CertificateAuthority.create` makes a self-signed CA in a directory of your choice;
`CertificateAuthority.issue_server_certificate` and
`CertificateAuthority.issue_client_certificate` sign certificates with it::

    ca = CertificateAuthority.create(tmp_path)
    server_cert, server_key = ca.issue_server_certificate()
    client_cert, client_key = ca.issue_client_certificate("alice")

Every file is PEM. Keys are unencrypted EC P-256 keys (or Ed25519, if the CA is
made with ``key_type="ed25519"``), mode 0600 and owned by this process's user, as
libpq and PostgreSQL demand; certificates are mode 0644. Certificates are valid for
`VALIDITY_DAYS` days from now, carry random serial numbers, and have the extensions
strict verifiers want (Python 3.13's ``VERIFY_X509_STRICT`` among them): key
identifiers, critical basic constraints and key usage, and an extended key usage of
server or client authentication. Server certificates name their hosts in the subject
alternative name, by default ``localhost``, ``127.0.0.1`` and ``::1``.

None of this is fit for anything but tests. Only the standard library is used, plus
the ``openssl`` command-line tool, which must be on ``PATH``; our own configuration is
passed to it, so the system's ``openssl.cnf`` cannot change what is made.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "DEFAULT_HOSTS",
    "VALIDITY_DAYS",
    "CertificateAuthority",
    "CertificateError",
    "KeyType",
    "OpenSSLUnavailable",
]

KeyType = Literal["ec-p256", "ed25519"]
"""The kinds of key a `CertificateAuthority` makes: EC on curve P-256 (prime256v1), or
Ed25519 (whose certificates give no ``tls-server-end-point`` channel binding)."""

VALIDITY_DAYS: Final = 2
"""How many days every certificate made here is valid, starting now."""

DEFAULT_HOSTS: Final[tuple[str, ...]] = ("localhost", "127.0.0.1", "::1")
"""The hosts a server certificate names unless told otherwise."""

_OPENSSL_TIMEOUT = 60
_NEW_KEY: Final[dict[KeyType, tuple[str, ...]]] = {
    "ec-p256": ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
    "ed25519": ("-newkey", "ed25519", "-nodes"),
}
_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DNS_NAME = re.compile(r"[A-Za-z0-9*_-]+(?:\.[A-Za-z0-9*_-]+)*\.?")
_CA_EXTENSIONS = """\
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
_LEAF_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


class CertificateError(RuntimeError):
    """``openssl`` failed to make a key or certificate.

    The message has the failing command and its error output.
    """


class OpenSSLUnavailable(CertificateError):
    """The ``openssl`` command-line tool is not on ``PATH``.

    The message says how to install it.
    """


class CertificateAuthority:
    """A throwaway CA whose certificate and key are files in `directory`.

    Make one with `create`. The constructor only reopens a CA that `create` made
    earlier in ``directory`` (pass the same ``key_type``).

    Attributes:
        directory: where the CA's files and every certificate it issues live.
        certificate: the CA certificate, ``ca.crt``: what clients and servers trust.
        key: the CA's private key, ``ca.key``.
        key_type: the kind of key the CA has and gives every certificate it issues.

    Raises:
        FileNotFoundError: ``directory`` has no ``ca.crt`` or ``ca.key``.
    """

    __slots__ = ("certificate", "directory", "key", "key_type")

    def __init__(self, directory: str | os.PathLike[str], *, key_type: KeyType = "ec-p256") -> None:
        _check_key_type(key_type)
        self.directory = Path(directory)
        self.certificate = self.directory / "ca.crt"
        self.key = self.directory / "ca.key"
        self.key_type: KeyType = key_type
        for path in (self.certificate, self.key):
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist: make the CA with create()")

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        common_name: str = "pgwire test CA",
        *,
        key_type: KeyType = "ec-p256",
    ) -> CertificateAuthority:
        """Make a self-signed CA in ``directory`` (created if missing) and return it.

        Args:
            directory: where to put ``ca.crt``, ``ca.key`` and the certificates the CA
                issues later. Its own permissions are left alone.
            common_name: the CA certificate's subject common name.
            key_type: the kind of key for the CA and everything it issues.

        Raises:
            FileExistsError: ``directory`` already holds ``ca.crt`` or ``ca.key``.
            ValueError: ``common_name`` is empty or has control characters, or
                ``key_type`` is unknown.
            OpenSSLUnavailable: the ``openssl`` tool is missing.
            CertificateError: ``openssl`` failed.
        """
        _check_key_type(key_type)
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        with _new_files(path, "ca") as config:
            config.write_text(_config(_CA_EXTENSIONS))
            _openssl(
                path,
                *("req", "-x509", "-new", *_NEW_KEY[key_type], "-keyout", "ca.key"),
                *("-out", "ca.crt", "-days", str(VALIDITY_DAYS), *_subject(common_name)),
                *("-config", config.name, "-extensions", "ext"),
            )
        return cls(path, key_type=key_type)

    def issue_server_certificate(
        self,
        stem: str = "server",
        common_name: str = "localhost",
        hosts: Iterable[str] = DEFAULT_HOSTS,
    ) -> tuple[Path, Path]:
        """Sign a certificate for a TLS server; return ``(certificate, key)``.

        The files are ``<stem>.crt`` and ``<stem>.key`` in `directory`.

        Args:
            stem: the files' name without suffix: letters, digits, ``_.-``.
            common_name: the subject common name.
            hosts: DNS names and IP addresses for the subject alternative name, which
                is what clients check (``sslmode=verify-full``); none gives no
                subject alternative name at all.

        Raises:
            FileExistsError: one of the two files exists already.
            ValueError: a bad ``stem``, ``common_name`` or host.
            OpenSSLUnavailable: the ``openssl`` tool is missing.
            CertificateError: ``openssl`` failed.
        """
        names = [_alt_name(host) for host in hosts]
        extensions = _LEAF_EXTENSIONS.format(usage="serverAuth")
        if names:
            extensions += f"subjectAltName = {', '.join(names)}\n"
        return self._issue(stem, common_name, extensions)

    def issue_client_certificate(
        self, common_name: str, stem: str | None = None
    ) -> tuple[Path, Path]:
        """Sign a certificate for a TLS client; return ``(certificate, key)``.

        Use them as libpq's ``sslcert`` and ``sslkey``. With ``cert`` authentication
        PostgreSQL takes ``common_name`` as the role name.

        Args:
            common_name: the subject common name.
            stem: the files' name without suffix (see `issue_server_certificate`);
                default ``client-<n>`` with the first ``n`` not yet taken.

        Raises:
            FileExistsError: one of the two files exists already.
            ValueError: a bad ``stem`` or ``common_name``.
            OpenSSLUnavailable: the ``openssl`` tool is missing.
            CertificateError: ``openssl`` failed.
        """
        if stem is None:
            stem = next(
                f"client-{number}"
                for number in itertools.count(1)
                if not self._taken(f"client-{number}")
            )
        return self._issue(stem, common_name, _LEAF_EXTENSIONS.format(usage="clientAuth"))

    def __repr__(self) -> str:
        return f"CertificateAuthority({str(self.directory)!r}, key_type={self.key_type!r})"

    def _taken(self, stem: str) -> bool:
        return any((self.directory / f"{stem}{suffix}").exists() for suffix in (".crt", ".key"))

    def _issue(self, stem: str, common_name: str, extensions: str) -> tuple[Path, Path]:
        subject = _subject(common_name)
        with _new_files(self.directory, stem) as config:
            config.write_text(_config(extensions))
            _openssl(
                self.directory,
                *("req", "-new", *_NEW_KEY[self.key_type], "-keyout", f"{stem}.key"),
                *("-out", f"{stem}.csr", *subject, "-config", config.name),
            )
            _openssl(
                self.directory,
                *("x509", "-req", "-in", f"{stem}.csr", "-CA", self.certificate.name),
                *("-CAkey", self.key.name, "-set_serial", str(secrets.randbits(63) + 1)),
                *("-days", str(VALIDITY_DAYS), "-out", f"{stem}.crt"),
                *("-extfile", config.name, "-extensions", "ext"),
            )
        return self.directory / f"{stem}.crt", self.directory / f"{stem}.key"


# ---------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def _new_files(directory: Path, stem: str) -> Iterator[Path]:
    """Reserve ``<stem>.crt`` and ``<stem>.key``, yield a scratch config path.

    The key file is made empty with mode 0600 before ``openssl`` writes to it, so the
    key is never readable by others. On success the modes are set (0644, 0600); on
    failure both files go. The scratch files (config, request) go either way.
    """
    if not _STEM.fullmatch(stem):
        raise ValueError(f"a file stem must be letters, digits and '_.-', got {stem!r}")
    certificate, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    scratch = [directory / f"{stem}.cnf", directory / f"{stem}.csr"]
    for path in (certificate, key, *scratch):
        if path.exists():
            raise FileExistsError(f"{path} exists already")
    os.close(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield scratch[0]
        key.chmod(0o600)  # in case openssl replaced the file instead of writing into it
        certificate.chmod(0o644)
    except BaseException:
        for path in (certificate, key):
            path.unlink(missing_ok=True)
        raise
    finally:
        for path in scratch:
            path.unlink(missing_ok=True)


def _check_key_type(key_type: str) -> None:
    if key_type not in _NEW_KEY:
        raise ValueError(f"key_type must be one of {sorted(_NEW_KEY)}, got {key_type!r}")


def _config(extensions: str) -> str:
    return "[req]\ndistinguished_name = dn\n[dn]\n[ext]\n" + extensions


def _subject(common_name: str) -> tuple[str, ...]:
    if not common_name or any(ord(char) < 32 or ord(char) == 127 for char in common_name):
        raise ValueError(f"a common name must be printable and not empty, got {common_name!r}")
    # openssl -subj splits on '/' and '+' and reads '=' as a separator.
    return ("-subj", "/CN=" + re.sub(r"([\\/+=])", r"\\\1", common_name), "-utf8")


def _alt_name(host: str) -> str:
    with contextlib.suppress(ValueError):
        return f"IP:{ipaddress.ip_address(host)}"
    if not _DNS_NAME.fullmatch(host):
        raise ValueError(f"not a DNS name or IP address: {host!r}")
    return f"DNS:{host}"


def _openssl(directory: Path, *arguments: str) -> None:
    program = shutil.which("openssl")
    if program is None:
        raise OpenSSLUnavailable(
            "the openssl command-line tool is missing: apt-get install openssl "
            "(or brew install openssl)"
        )
    try:
        result = subprocess.run(
            [program, *arguments],
            cwd=directory,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=_OPENSSL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CertificateError(
            f"openssl {' '.join(arguments)} did not finish within {_OPENSSL_TIMEOUT} s"
        ) from None
    if result.returncode != 0:
        raise CertificateError(
            f"openssl {' '.join(arguments)} failed (exit {result.returncode}):\n{result.stderr}"
        )

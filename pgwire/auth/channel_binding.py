"""``tls-server-end-point`` channel binding data (RFC 5929) for SCRAM-SHA-256-PLUS.

The binding is a hash of the TLS server's certificate, octet for octet as sent
in the handshake. Both sides compute it — the server from its own certificate,
the client from the one it received — and SCRAM-SHA-256-PLUS proves they got
the same value, which a man in the middle holding another certificate cannot
fake.

Which hash: the certificate's signature hash algorithm, except that MD5 and
SHA-1 are replaced by SHA-256 (RFC 5929 section 4.1). This module reads the
signature algorithm from the DER itself with a tiny DER reader (standard
library only) and follows PostgreSQL, which asks OpenSSL's
``X509_get_signature_info``: RSASSA-PSS takes the hash from its parameters
(SHA-1 when absent), and algorithms without a separate hash (Ed25519, Ed448)
are refused, as PostgreSQL refuses them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar, Final

__all__ = ["ChannelBinding", "UnsupportedCertificate", "tls_server_end_point"]

_SEQUENCE: Final = 0x30
_OID: Final = 0x06
_CONTEXT_0: Final = 0xA0

# Signature algorithm OID -> the hash it signs with.
_SIGNATURE_HASHES: Final[dict[str, str]] = {
    "1.2.840.113549.1.1.4": "md5",  # md5WithRSAEncryption
    "1.2.840.113549.1.1.5": "sha1",  # sha1WithRSAEncryption
    "1.2.840.113549.1.1.14": "sha224",  # sha224WithRSAEncryption
    "1.2.840.113549.1.1.11": "sha256",  # sha256WithRSAEncryption
    "1.2.840.113549.1.1.12": "sha384",  # sha384WithRSAEncryption
    "1.2.840.113549.1.1.13": "sha512",  # sha512WithRSAEncryption
    "2.16.840.1.101.3.4.3.13": "sha3_224",  # RSA PKCS#1 v1.5 with SHA3-224
    "2.16.840.1.101.3.4.3.14": "sha3_256",
    "2.16.840.1.101.3.4.3.15": "sha3_384",
    "2.16.840.1.101.3.4.3.16": "sha3_512",
    "1.2.840.10045.4.1": "sha1",  # ecdsa-with-SHA1
    "1.2.840.10045.4.3.1": "sha224",  # ecdsa-with-SHA224
    "1.2.840.10045.4.3.2": "sha256",  # ecdsa-with-SHA256
    "1.2.840.10045.4.3.3": "sha384",  # ecdsa-with-SHA384
    "1.2.840.10045.4.3.4": "sha512",  # ecdsa-with-SHA512
    "2.16.840.1.101.3.4.3.9": "sha3_224",  # ecdsa-with-SHA3-224
    "2.16.840.1.101.3.4.3.10": "sha3_256",
    "2.16.840.1.101.3.4.3.11": "sha3_384",
    "2.16.840.1.101.3.4.3.12": "sha3_512",
    "1.2.840.10040.4.3": "sha1",  # dsa-with-sha1
    "2.16.840.1.101.3.4.3.1": "sha224",  # dsa-with-sha224
    "2.16.840.1.101.3.4.3.2": "sha256",  # dsa-with-sha256
}
# Hash algorithm OIDs, for the hashAlgorithm inside RSASSA-PSS parameters.
_HASHES: Final[dict[str, str]] = {
    "1.2.840.113549.2.5": "md5",
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.7": "sha3_224",
    "2.16.840.1.101.3.4.2.8": "sha3_256",
    "2.16.840.1.101.3.4.2.9": "sha3_384",
    "2.16.840.1.101.3.4.2.10": "sha3_512",
}
_RSASSA_PSS: Final = "1.2.840.113549.1.1.10"
_NO_HASH: Final[dict[str, str]] = {"1.3.101.112": "Ed25519", "1.3.101.113": "Ed448"}
# RFC 5929 section 4.1: MD5 and SHA-1 are replaced by SHA-256.
_UPGRADED: Final = frozenset({"md5", "sha1"})


class UnsupportedCertificate(ValueError):
    """The certificate's bytes or signature algorithm rule out ``tls-server-end-point``.

    Either the DER is malformed, or its signature algorithm has no hash
    function this module knows (PostgreSQL fails the same way); use
    SCRAM-SHA-256 without channel binding, or another certificate.
    """


def _read_header(der: bytes, position: int, end: int) -> tuple[int, int, int]:
    """Read a DER tag and length at ``position``: (tag, content start, content end)."""
    if position + 2 > end:
        raise UnsupportedCertificate("malformed certificate: truncated DER element")
    tag = der[position]
    if tag & 0x1F == 0x1F:
        raise UnsupportedCertificate("malformed certificate: unexpected multi-byte DER tag")
    first = der[position + 1]
    position += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise UnsupportedCertificate(
                "malformed certificate: indefinite or oversized DER length"
            )
        if position + count > end:
            raise UnsupportedCertificate("malformed certificate: truncated DER length")
        length = int.from_bytes(der[position:position + count], "big")
        position += count
    if position + length > end:
        raise UnsupportedCertificate("malformed certificate: DER element overruns its container")
    return tag, position, position + length


def _expect(der: bytes, position: int, end: int, tag: int, what: str) -> tuple[int, int]:
    found, start, stop = _read_header(der, position, end)
    if found != tag:
        raise UnsupportedCertificate(
            f"malformed certificate: expected {what} (DER tag 0x{tag:02x}), found 0x{found:02x}"
        )
    return start, stop


def _decode_oid(content: bytes) -> str:
    if not content or content[-1] & 0x80:
        raise UnsupportedCertificate("malformed certificate: bad object identifier")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in (first, arcs[0] - 40 * first, *arcs[1:]))


def _algorithm(der: bytes, start: int, end: int) -> tuple[str, int, int]:
    """Read an AlgorithmIdentifier's content: (OID, parameters start, parameters end)."""
    oid_start, oid_end = _expect(der, start, end, _OID, "an algorithm OID")
    return _decode_oid(der[oid_start:oid_end]), oid_end, end


def _pss_hash(der: bytes, start: int, end: int) -> str:
    """The hashAlgorithm of RSASSA-PSS-params, SHA-1 when absent (its DEFAULT)."""
    if start == end:
        return "sha1"
    params_start, params_end = _expect(der, start, end, _SEQUENCE, "RSASSA-PSS parameters")
    if params_start == params_end:
        return "sha1"
    tag, inner_start, inner_end = _read_header(der, params_start, params_end)
    if tag != _CONTEXT_0:
        return "sha1"
    alg_start, alg_end = _expect(der, inner_start, inner_end, _SEQUENCE, "a hash algorithm")
    oid, _, _ = _algorithm(der, alg_start, alg_end)
    if oid not in _HASHES:
        raise UnsupportedCertificate(
            f"the certificate's RSASSA-PSS signature uses hash algorithm {oid}, which "
            "tls-server-end-point channel binding does not support here"
        )
    return _HASHES[oid]


def signature_hash_name(certificate: bytes) -> str:
    """The :mod:`hashlib` name of the hash ``tls-server-end-point`` uses for ``certificate``.

    Raises:
        UnsupportedCertificate: malformed DER, or no usable hash (see the module doc).
    """
    der = bytes(certificate)
    cert_start, cert_end = _expect(der, 0, len(der), _SEQUENCE, "a certificate SEQUENCE")
    if cert_end != len(der):
        raise UnsupportedCertificate("malformed certificate: bytes after the certificate")
    _, _, tbs_end = _read_header(der, cert_start, cert_end)
    alg_start, alg_end = _expect(der, tbs_end, cert_end, _SEQUENCE, "the signatureAlgorithm")
    oid, params_start, params_end = _algorithm(der, alg_start, alg_end)
    if oid == _RSASSA_PSS:
        name = _pss_hash(der, params_start, params_end)
    elif oid in _SIGNATURE_HASHES:
        name = _SIGNATURE_HASHES[oid]
    elif oid in _NO_HASH:
        raise UnsupportedCertificate(
            f"the certificate is signed with {_NO_HASH[oid]}, which has no separate hash "
            "function, so tls-server-end-point channel binding is undefined for it "
            "(PostgreSQL refuses it too); use a certificate signed with RSA or ECDSA"
        )
    else:
        raise UnsupportedCertificate(
            f"the certificate's signature algorithm {oid} is not one tls-server-end-point "
            "channel binding knows a hash for"
        )
    return "sha256" if name in _UPGRADED else name


def tls_server_end_point(certificate: bytes) -> bytes:
    """The ``tls-server-end-point`` hash of a DER-encoded server certificate.

    ``certificate`` is what ``ssl.SSLSocket.getpeercert(binary_form=True)``
    returns on the client, or the server's own certificate in DER.

    Raises:
        UnsupportedCertificate: malformed DER, or no usable hash (see the module doc).
    """
    return hashlib.new(signature_hash_name(certificate), bytes(certificate)).digest()


@dataclass(frozen=True, slots=True)
class ChannelBinding:
    """Channel binding data for SCRAM-SHA-256-PLUS: the server certificate's hash.

    Only ``tls-server-end-point`` exists, as in PostgreSQL. Build it with
    :meth:`from_certificate`; ``data`` is the hash itself.
    """

    type: ClassVar[str] = "tls-server-end-point"
    data: bytes

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("channel binding data must not be empty")

    @classmethod
    def from_certificate(cls, certificate: bytes) -> ChannelBinding:
        """Channel binding for the TLS server certificate ``certificate`` (DER).

        Raises:
            UnsupportedCertificate: see :func:`tls_server_end_point`.
        """
        return cls(data=tls_server_end_point(certificate))

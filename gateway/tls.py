# -*- test-case-name: tests.gateway.test_edge -*-
"""
HTTPS for the gateway: a certificate chain and its key in PEM files, TLS
1.2 at least (pyOpenSSL through Twisted's memory-BIO TLS wrapper).
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import crypto
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOFactory

__all__ = ["TLSConfigError", "serverOptions", "wrapTLS"]


class TLSConfigError(Exception):
    """
    A certificate or key that cannot be used; the message says why.
    """


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"cannot read the {what} {path}: {e.strerror}") from None


def serverOptions(certificatePath: str, keyPath: str) -> CertificateOptions:
    """
    TLS settings for a server: the certificate file holds the server's
    certificate first, then any intermediates.

    @raise TLSConfigError: A file is missing, not PEM, or the key does not
        match the certificate.
    """
    try:
        chain = x509.load_pem_x509_certificates(_read(certificatePath, "certificate"))
    except ValueError:
        raise TLSConfigError(f"{certificatePath} holds no PEM certificate") from None
    try:
        key = load_pem_private_key(_read(keyPath, "private key"), password=None)
    except (ValueError, TypeError) as e:
        raise TLSConfigError(f"{keyPath} is not an unencrypted PEM private key: {e}") from None
    if chain[0].public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise TLSConfigError(f"the key in {keyPath} is not the key of {certificatePath}")
    return CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


def wrapTLS(options: CertificateOptions, factory: Any) -> TLSMemoryBIOFactory:
    """
    C{factory}'s protocols, served over TLS.
    """
    return TLSMemoryBIOFactory(options, False, factory)

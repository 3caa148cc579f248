"""TLS for SRPC (reference §1.3): certificates from PEM files, server and client options.

The server is Go's ``setupserver``: TLS ≥ 1.2, a client certificate required
and verified against the CA. The client is Go's ``setupclient`` (TLS ≥ 1.2,
present a certificate, do not verify the server) unless it is given the CA
that signed the server's certificate: then the server's chain is verified,
and its name too when a hostname is given, as a client of our own remote
store should.

Every function here reads files, a small blocking read: call them at start-up
(or once per client), never per connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL.crypto import X509
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)

#: What a client connection accepts as its TLS options.
ClientTlsOptions = CertificateOptions | IOpenSSLClientConnectionCreator


def load_certificates(path: str | Path) -> list[x509.Certificate]:
    """Every certificate of a PEM file, in order; ``ValueError`` if it has none."""
    certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    if not certs:
        raise ValueError(f"{path}: no certificate")
    return certs


def _key_and_chain(cert_file: str | Path, key_file: str | Path) -> dict[str, Any]:
    chain = load_certificates(cert_file)
    key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    # pyOpenSSL takes cryptography objects for these (its own types are deprecated).
    return {"privateKey": key, "certificate": chain[0], "extraCertChain": chain[1:]}


def make_server_tls_options(
    ca_file: str | Path, cert_file: str | Path, key_file: str | Path
) -> CertificateOptions:
    """Server TLS as Go's ``setupserver``: TLS ≥ 1.2, client certificates
    required and verified against ``ca_file``, own certificate and key.

    The CA names are sent in the CertificateRequest so that clients holding
    several certificates present one from this CA.
    """
    ca_certs = load_certificates(ca_file)
    options = CertificateOptions(
        **_key_and_chain(cert_file, key_file),
        verify=True,
        caCerts=[X509.from_cryptography(cert) for cert in ca_certs],  # the trust store needs X509
        requireCertificate=True,
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    context = options.getContext()
    for cert in ca_certs:
        context.add_client_ca(cert)
    return options


def make_client_tls_options(
    cert_file: str | Path | None,
    key_file: str | Path | None,
    *,
    ca_file: str | Path | None = None,
    hostname: str | None = None,
) -> ClientTlsOptions:
    """Client TLS: TLS ≥ 1.2, presenting the certificate (if any).

    Without ``ca_file`` the server is not verified, as in Go. With it, the
    handshake fails unless the server's certificate chains to a certificate
    of ``ca_file``, and, with ``hostname`` (a DNS name or an IP address),
    unless the certificate names that host.
    """
    credentials = _key_and_chain(cert_file, key_file) if cert_file and key_file else {}
    if ca_file is None:
        return CertificateOptions(**credentials, verify=False, raiseMinimumTo=TLSVersion.TLSv1_2)
    ca_certs = load_certificates(ca_file)
    if hostname is None:
        return CertificateOptions(
            **credentials,
            verify=True,
            caCerts=[X509.from_cryptography(cert) for cert in ca_certs],
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
    trust = trustRootFromCertificates(
        [Certificate.loadPEM(cert.public_bytes(serialization.Encoding.PEM)) for cert in ca_certs]
    )
    # The credentials go in as cryptography objects, like the server's (a
    # PrivateCertificate would hand pyOpenSSL its deprecated types).
    return optionsForClientTLS(
        hostname,
        trustRoot=trust,
        extraCertificateOptions={**credentials, "raiseMinimumTo": TLSVersion.TLSv1_2},
    )

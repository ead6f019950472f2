"""The server's certificate authority: made at `init`, signs every tentacle's CSR.

The CA certificate is what mirrors (nginx ``ssl_verify_client``) use to check
tentacles' client certificates. The server's own certificate is signed by it and
used both to serve and, as a client certificate, to call listening tentacles.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tentacle.errors import InvalidInput
from tentacle.net import pki

CSR_MAX_BYTES = 16 * 1024
CRL_DAYS = 365


class CsrError(InvalidInput):
    """A signing request we will not sign."""


def _san(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def create(directory: Path, public_host: str) -> str:
    """Write ca.pem/ca.key/server.pem/server.key; returns the server thumbprint."""
    ca_key = pki.new_key()
    ca_cert = pki.build_certificate("Tentacle server CA", ca_key.public_key(), ca_key, ca=True, days=3650)
    server_key = pki.new_key()
    server_cert = pki.build_certificate(
        "server-shim",
        server_key.public_key(),
        ca_key,
        issuer=ca_cert.subject,
        days=3650,
        san=_san([public_host, "localhost", "127.0.0.1", "::1"]),
    )
    pki.write_private(directory / "ca.key", pki.key_pem(ca_key))
    pki.write_private(directory / "ca.pem", pki.cert_pem(ca_cert), 0o644)
    pki.write_private(directory / "server.key", pki.key_pem(server_key))
    pki.write_private(directory / "server.pem", pki.cert_pem(server_cert), 0o644)
    return pki.cert_thumbprint(server_cert)


class Authority:
    """Signs tentacle certificates with the CA loaded from `directory`."""

    def __init__(self, directory: Path) -> None:
        self.cert = pki.load_cert(directory / "ca.pem")
        self.key = pki.load_key(directory / "ca.key")

    def sign(self, csr_pem: str, name: str) -> x509.Certificate:
        """A leaf certificate (server and client use) for the CSR's key, named `name`."""
        csr = self._load(csr_pem)
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
            raise CsrError("csr: the key must be ECDSA P-256")
        return pki.build_certificate(name, public_key, self.key, issuer=self.cert.subject, days=1825)

    def crl(self, revoked: list[tuple[str, float]], days: int = CRL_DAYS) -> bytes:
        """A CRL (PEM) of these (certificate PEM, revoked at) for mirrors' ``ssl_crl``.

        It stays valid for `days`: a mirror refuses every client once its CRL is out of
        date, so the window is long; publish a fresh one after each `machines remove`.
        """
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(now + datetime.timedelta(days=days))
        )
        for pem, revoked_at in revoked:
            serial = x509.load_pem_x509_certificate(pem.encode()).serial_number
            when = datetime.datetime.fromtimestamp(revoked_at, datetime.UTC)
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    @staticmethod
    def _load(csr_pem: str) -> x509.CertificateSigningRequest:
        if len(csr_pem) > CSR_MAX_BYTES:
            raise CsrError(f"csr: larger than {CSR_MAX_BYTES} bytes")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise CsrError(f"csr: not a PEM certificate signing request ({exc})") from exc
        if not csr.is_signature_valid:
            raise CsrError("csr: its signature does not match its key")
        return csr

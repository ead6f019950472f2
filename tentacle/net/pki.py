"""Keys, certificates and signing requests (ECDSA P-256), and their files.

The tentacle makes its own key pair and a self-signed certificate (so that it has a
thumbprint before registration); registration replaces the certificate with one the
server's CA signed from a CSR. The server uses the same helpers for its CA.
Private keys are written 0600 through a temporary file and a rename.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tentacle.common.atomicfile import write_private as write_private  # re-exported: callers predate the move
from tentacle.errors import ConfigError
from tentacle.protocol.identity import thumbprint

PrivateKey = ec.EllipticCurvePrivateKey
BOTH_USAGES = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def new_key() -> PrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (protected by file permissions)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """The certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_thumbprint(cert: x509.Certificate) -> str:
    """SHA-256 over the certificate's DER."""
    return thumbprint(cert.public_bytes(serialization.Encoding.DER))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def build_certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: PrivateKey,
    *,
    issuer: x509.Name | None = None,
    days: int = 3650,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    """A certificate for `public_key`, signed by `issuer_key` (self-signed without `issuer`)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer or _name(subject))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(BOTH_USAGES), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def self_signed(key: PrivateKey, common_name: str) -> x509.Certificate:
    """A self-signed leaf certificate: the tentacle's identity before registration."""
    return build_certificate(common_name, key.public_key(), key)


def build_csr(key: PrivateKey, common_name: str) -> bytes:
    """A PEM certificate signing request for `key`."""
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name))
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def load_key(path: Path) -> PrivateKey:
    """Read a PEM private key; a missing or foreign key is a configuration error."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: not an ECDSA private key")
    return key


def load_cert(path: Path) -> x509.Certificate:
    """Read a PEM certificate; a missing or malformed one is a configuration error."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read certificate: {exc}") from exc

"""Certificates the node bed adds to the bed's PKI.

- kubelet's and kube-proxy's client certificates, signed by the bed's CA (the API server's
  `--client-ca-file`), with the user names the built-in RBAC roles expect;
- a separate CA that kubelet trusts for client certificates, and the API server's
  certificate towards kubelets signed by it. The control plane's CA does not exist yet when
  the API server's flags are chosen, hence a CA of the node's own.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["KeyPair", "issue_client_cert", "new_ca"]

_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _write(pair: KeyPair, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> KeyPair:
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    pair.key.chmod(0o600)
    return pair


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
    )


def new_ca(directory: Path, stem: str) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(stem)
    cert = (
        _builder(name, name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _write(KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key"), cert, key)


def issue_client_cert(
    directory: Path, stem: str, ca: KeyPair, cn: str, org: str | None = None
) -> KeyPair:
    """A client certificate for user cn (group org) signed by ca."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca.key}: expected an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name(cn, org), ca_cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _write(KeyPair(directory / f"{stem}.crt", directory / f"{stem}.key"), cert, key)

"""The bed's PKI: a CA, the API server's serving certificate, client certificates for the
admin, kube-controller-manager and kube-scheduler, and the service-account key pair.

Generated fresh for every bed, so nothing secret is ever committed or shared between beds.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["ClientCert", "Pki", "generate_pki", "issue_serving_cert"]

# The first address of --service-cluster-ip-range: the `kubernetes` Service's ClusterIP.
SERVICE_IP = "10.0.0.1"
_VALIDITY = datetime.timedelta(days=365)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    serving: ClientCert
    admin: ClientCert
    controller_manager: ClientCert
    scheduler: ClientCert
    front_proxy: ClientCert
    sa_key: Path
    sa_pub: Path


def _write_key(path: Path, key: PrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        # Kubernetes maps O= to the user's groups.
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # An hour of slack for clocks that disagree by a little.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
    )


def _leaf(
    directory: Path,
    stem: str,
    subject: x509.Name,
    ca_name: x509.Name,
    ca_key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
) -> ClientCert:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(subject, ca_name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out = ClientCert(directory / f"{stem}.crt", directory / f"{stem}.key")
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(out.key, key)
    return out


def generate_pki(directory: Path) -> Pki:
    """Write a complete PKI for one bed into directory."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("testbed-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_cert_path = directory / "ca.crt"
    ca_cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    ca_key_path = directory / "ca.key"
    _write_key(ca_key_path, ca_key)

    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", SERVICE_IP)]
    serving = _leaf(
        directory,
        "apiserver",
        _name("kube-apiserver"),
        ca_name,
        ca_key,
        ExtendedKeyUsageOID.SERVER_AUTH,
        sans,
    )
    client = ExtendedKeyUsageOID.CLIENT_AUTH
    # The user names below are the ones the built-in RBAC bindings already grant.
    admin = _leaf(
        directory, "admin", _name("testbed-admin", "system:masters"), ca_name, ca_key, client
    )
    kcm = _leaf(
        directory,
        "controller-manager",
        _name("system:kube-controller-manager"),
        ca_name,
        ca_key,
        client,
    )
    scheduler = _leaf(
        directory, "scheduler", _name("system:kube-scheduler"), ca_name, ca_key, client
    )
    # The API server's identity towards aggregated APIs. With it configured, the delegated
    # authentication of kube-controller-manager and kube-scheduler finds a complete
    # extension-apiserver-authentication ConfigMap instead of logging errors forever.
    front_proxy = _leaf(
        directory, "front-proxy-client", _name("front-proxy-client"), ca_name, ca_key, client
    )

    # RSA for service-account tokens: every client library verifies RS256.
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key = directory / "sa.key"
    _write_key(sa_key, sa)
    sa_pub = directory / "sa.pub"
    sa_pub.write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Pki(
        ca_cert_path, ca_key_path, serving, admin, kcm, scheduler, front_proxy, sa_key, sa_pub
    )


def issue_serving_cert(
    ca_cert_path: Path, ca_key_path: Path, directory: Path, stem: str, common_name: str
) -> ClientCert:
    """A serving certificate for 127.0.0.1 and localhost signed by the bed's CA: for
    webhook servers the API server calls on loopback (a webhook `url` plus the CA bundle)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"the bed's CA key {ca_key_path} is not an EC key")
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    return _leaf(
        directory,
        stem,
        _name(common_name),
        ca_cert.subject,
        ca_key,
        ExtendedKeyUsageOID.SERVER_AUTH,
        sans,
    )

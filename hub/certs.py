"""Certificates for the local hub: a CA, a server certificate, per-device client certificates.

`edgeflag hub certs --out DIR --host 127.0.0.5 --host hub.local --device dev-0001` writes
``ca.pem``/``ca.key``, ``server.pem``/``server.key`` (SANs: every --host, as IP or DNS name) and
``devices/<id>.pem``/``.key`` (CN = device id, as IoT Hub's CA-signed X.509 devices use).
Keys are EC P-256, files with keys are mode 0600. The azure-iot-device SDK trusts the hub
when given ca.pem as `server_verification_cert` and a connection-string host in the SANs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 825


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    from hub.statefile import write_private

    # created 0600 (a private temporary renamed into place): never readable by others, not even for a moment
    write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()).decode())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeflag local hub")])


def _load(cert: Path, key: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    k = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(k, ec.EllipticCurvePrivateKey)
    return x509.load_pem_x509_certificate(cert.read_bytes()), k


def make_ca(out: Path, name: str = "edgeflag local CA") -> Issued:
    """A self-signed CA (kept if it already exists, so issued certificates stay valid)."""
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "ca.pem", out / "ca.key"
    if cert_path.exists() and key_path.exists():
        return Issued(cert_path, key_path)
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    _write_key(key, key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path)


def _issue(ca: Issued, cn: str, out_cert: Path, out_key: Path, *, sans: Sequence[x509.GeneralName],
           usage: x509.ObjectIdentifier) -> Issued:
    ca_cert, ca_key = _load(ca.cert, ca.key)
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out_cert.parent.mkdir(parents=True, exist_ok=True)
    _write_key(key, out_key)
    out_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(out_cert, out_key)


def make_server(ca: Issued, out: Path, hosts: Sequence[str]) -> Issued:
    """A server certificate whose SANs are `hosts` (IP addresses or DNS names)."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host")
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    return _issue(ca, hosts[0], out / "server.pem", out / "server.key", sans=sans,
                  usage=ExtendedKeyUsageOID.SERVER_AUTH)


def make_device(ca: Issued, out: Path, device_id: str) -> Issued:
    """A client certificate with CN = device_id."""
    return _issue(ca, device_id, out / "devices" / f"{device_id}.pem", out / "devices" / f"{device_id}.key",
                  sans=[], usage=ExtendedKeyUsageOID.CLIENT_AUTH)

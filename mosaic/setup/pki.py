"""``mosaic-backup pki``: a small certificate authority for NATS TLS.

Why: NATS carries jobs (paths, backup ids) and credentials; on anything but loopback it
must be encrypted, and agents should know they talk to the real server. ``pki init DIR``
makes a CA; ``pki issue DIR NAME --server --host nats.example`` a server certificate
(the names and addresses clients connect to go into its SANs); ``pki issue DIR NAME``
a client certificate (for nats-server's ``verify``). Keys are EC P-256 (nats-server, Go,
accepts them), written 0600 and never overwritten: a reissued key would silently
invalidate what is deployed, so an existing file is refused in one line.

Files in DIR::

    ca.crt  ca.key            the authority (keep ca.key offline after issuing)
    NAME.crt  NAME.key        one per server or client
"""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import ConfigError
from shared.subjects import check_token

CA_DAYS = 3650
CERT_DAYS = 825  # the longest lifetime browsers and most tools still accept


def _refuse_existing(*paths: Path) -> None:
    for p in paths:
        if p.exists():
            raise ConfigError(
                f"pki: {p} exists already; refusing to overwrite it (move it away first, or "
                "pick another folder or name)"
            )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mosaic-backup"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def init_ca(folder: Path, *, common_name: str = "mosaic-backup CA") -> tuple[Path, Path]:
    """Create ``ca.crt`` and ``ca.key`` in ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    crt, key_path = folder / "ca.crt", folder / "ca.key"
    _refuse_existing(crt, key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), 0o600)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt, key_path


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key_path = folder / "ca.crt", folder / "ca.key"
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"pki: {exc.filename} does not exist (run `mosaic-backup pki init {folder}` first)"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"pki: the CA in {folder} cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"pki: {key_path} is not an EC key made by `mosaic-backup pki init`")
    return cert, key


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(
    folder: Path, name: str, *, server: bool = False, hosts: list[str] | None = None
) -> tuple[Path, Path]:
    """Issue ``NAME.crt``/``NAME.key`` signed by the CA in ``folder``; return their paths.

    A server certificate carries ``hosts`` (names and IP addresses) as SANs, which is
    what clients check; a client certificate carries ``name`` as its common name.
    """
    try:
        check_token("certificate name", name)
    except ValueError as exc:
        raise ConfigError(f"pki issue: {exc}") from None
    hosts = list(hosts or [])
    if server and not hosts:
        raise ConfigError(
            "pki issue --server: no --host given (add every name and address clients use, "
            "e.g. --host 127.0.0.1 --host nats.example)"
        )
    if hosts and not server:
        raise ConfigError("pki issue: --host is only for server certificates (add --server)")
    ca_cert, ca_key = _load_ca(folder)
    crt, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    _refuse_existing(crt, key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(key_path, _key_pem(key), 0o600)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt, key_path

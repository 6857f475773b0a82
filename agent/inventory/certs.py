"""TLS certificates under ``[inventory] cert_paths``, with their expiry (``cryptography``).

Files (searched recursively in folders, symlinks followed as Let's Encrypt's ``live/``
needs) named ``*.pem``, ``*.crt``, ``*.cer`` or ``*.cert``; the first certificate of a
PEM file (a full chain's leaf), or a DER file. Private keys and other PEM files are
passed over without a word, never read further. A certificate found in several files
(``cert.pem`` and ``fullchain.pem``) is reported once, at its first path in name order.
"""

from __future__ import annotations

import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from shared.config.inventory import InventoryConfig
from shared.wire.inventory import InventoryItem, ProbeError

SUFFIXES = (".pem", ".crt", ".cer", ".cert")
MAX_BYTES = 1 << 20
PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


def _files(root: str) -> list[str]:
    if os.path.isfile(root):
        return [root]
    out: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        out += [os.path.join(folder, f) for f in sorted(files) if f.endswith(SUFFIXES)]
    return out


def load(path: str) -> x509.Certificate | None:
    """The certificate in ``path``, None if it holds none."""
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES)
    if PEM_BEGIN in data:
        start = data.index(PEM_BEGIN)
        return x509.load_pem_x509_certificate(data[start:])
    if data[:1] == b"\x30" and not path.endswith(".pem"):  # an ASN.1 SEQUENCE: DER
        return x509.load_der_x509_certificate(data)
    return None


def probe(cfg: InventoryConfig) -> tuple[list[InventoryItem], list[ProbeError]]:
    items: list[InventoryItem] = []
    errors: list[ProbeError] = []
    seen: set[bytes] = set()
    for root in cfg.cert_paths:
        if not os.path.exists(root):
            continue
        for path in _files(root):
            try:
                cert = load(path)
            except OSError as exc:
                errors.append(ProbeError(probe="certs", message=f"{path}: {exc.strerror or exc}"))
                continue
            except ValueError as exc:
                errors.append(
                    ProbeError(probe="certs", message=f"{path}: not a certificate: {exc}")
                )
                continue
            if cert is None:
                continue
            fp = cert.fingerprint(hashes.SHA256())
            if fp in seen:
                continue
            seen.add(fp)
            subject = cert.subject.rfc4514_string()
            expires = cert.not_valid_after_utc
            items.append(
                InventoryItem(
                    kind="certificate",
                    key=os.path.normpath(path),
                    detail=f"{subject}, expires {expires.isoformat(timespec='minutes')}",
                    path=os.path.normpath(path),
                    subject=subject,
                    not_after=expires,
                )
            )
    return items, errors

"""Master key file and data keys.

The key file holds the 32-byte master key; it never goes into the repository. The
repository holds data keys under ``keys/<kid>``, each wrapped (AES-256-GCM) by the master
key, so changing the master key later rewraps a few small objects instead of rewriting
data, and new data keys can be added while old ones stay readable.

Key file (JSON, mode 0600)::

    {"mosaic_key_file": 1, "master_key": "<base64>", "created": "<ISO-8601>"}

Wrapped data key (``keys/<kid hex>``, JSON)::

    {"version": 1, "kid": "<hex>", "wrapped": "<base64 nonce(12) + ciphertext + tag>"}
    associated data = b"mosaic-data-key-v1" + kid
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import KeyFileError, WrongKeyError

KEY_SIZE = 32
_WRAP_AAD = b"mosaic-data-key-v1"

KEEP_A_COPY = (
    "Keep a copy of this key file somewhere safe and OFFLINE (a password manager, a USB "
    "stick in a drawer): without it no backup can ever be restored."
)


def create_key_file(path: str | Path) -> bytes:
    """Write a new master key to ``path`` (mode 0600); refuse to overwrite one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    key = os.urandom(KEY_SIZE)
    doc = {
        "mosaic_key_file": 1,
        "master_key": base64.b64encode(key).decode(),
        "created": datetime.now(UTC).isoformat(),
    }
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {p} exists already; refusing to overwrite it") from None
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return key


def load_key_file(path: str | Path) -> bytes:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {p} does not exist: restore your copy of it, or point key_file at it"
        ) from None
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"key file {p} cannot be read: {exc}") from None
    try:
        if doc.get("mosaic_key_file") != 1:
            raise ValueError("not a mosaic-backup key file")
        key = base64.b64decode(doc["master_key"], validate=True)
        if len(key) != KEY_SIZE:
            raise ValueError(f"master key is {len(key)} bytes, expected {KEY_SIZE}")
    except (AttributeError, KeyError, ValueError) as exc:
        raise KeyFileError(f"key file {p} is damaged: {exc}") from None
    return key


def wrap_data_key(master: bytes, kid: bytes, data_key: bytes) -> bytes:
    nonce = os.urandom(12)
    wrapped = nonce + AESGCM(master).encrypt(nonce, data_key, _WRAP_AAD + kid)
    doc = {"version": 1, "kid": kid.hex(), "wrapped": base64.b64encode(wrapped).decode()}
    return json.dumps(doc).encode()


def unwrap_data_key(master: bytes, raw: bytes, where: str) -> tuple[bytes, bytes]:
    """Return (kid, data key); WrongKeyError when the master key does not open it."""
    try:
        doc = json.loads(raw)
        kid = bytes.fromhex(doc["kid"])
        wrapped = base64.b64decode(doc["wrapped"])
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{where}: wrapped data key is damaged ({exc})") from None
    try:
        key = AESGCM(master).decrypt(wrapped[:12], wrapped[12:], _WRAP_AAD + kid)
    except InvalidTag:
        raise WrongKeyError(
            f"{where}: the key file does not open this repository (wrong key file?)"
        ) from None
    return kid, key

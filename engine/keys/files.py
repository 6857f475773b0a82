"""Master key file and data keys.

The key file holds the 32-byte master key; it never goes into the repository. The
repository holds data keys under ``keys/<kid>``, each wrapped (AES-256-GCM) by the master
key, so changing the master key later rewraps a few small objects instead of rewriting
data, and new data keys can be added while old ones stay readable.

Key file, raw (JSON, mode 0600) — anyone who can read the file can read every backup::

    {"mosaic_key_file": 1, "master_key": "<base64>", "created": "<ISO-8601>"}

Key file, passphrase-protected (JSON, mode 0600) — the file alone is not enough; the
passphrase stretched by scrypt opens the master key::

    {"mosaic_key_file": 1, "kdf": "scrypt", "salt": "<base64, 16 bytes>",
     "n": 131072, "r": 8, "p": 1, "created": "<ISO-8601>",
     "wrapped_master": "<base64 nonce(12) + AES-256-GCM(kdf key, master) + tag>"}
    associated data = b"mosaic-master-key-v1"

Both share ``mosaic_key_file: 1``; the ``kdf`` field tells them apart, so key files
written before passphrases existed keep loading unchanged. The scrypt parameters are
read from the file (within bounds, so a crafted file cannot make loading take minutes
or gigabytes) and so can be raised later without a format change.

Wrapped data key (``keys/<kid hex>``, JSON)::

    {"version": 1, "kid": "<hex>", "wrapped": "<base64 nonce(12) + ciphertext + tag>"}
    associated data = b"mosaic-data-key-v1" + kid

Key material and passphrases never appear in exceptions or logs: errors name the file
and what to do, nothing else. This module never reads the environment either; entry
points read ``MOSAIC_PASSPHRASE`` (or a variable the user names) and pass the value in.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from engine.keys.writeonly import WriteOnlyKey, parse_write_only, refusal
from shared.errors import KeyFileError, WrongKeyError

KEY_SIZE = 32
_WRAP_AAD = b"mosaic-data-key-v1"
_MASTER_AAD = b"mosaic-master-key-v1"

# scrypt cost for new key files: ~0.4 s and 128 MiB per load, once per process start.
SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_SIZE = 16
# Accepted when loading: enough headroom to raise the cost later, not enough for a
# crafted file to exhaust memory (128 * n * r bytes: at most 2 GiB).
_MAX_N = 2**21
_MAX_R = 8
_MAX_P = 16

PASSPHRASE_ENV = "MOSAIC_PASSPHRASE"

KEEP_A_COPY = (
    "Keep a copy of this key file somewhere safe and OFFLINE (a password manager, a USB "
    "stick in a drawer): without it no backup can ever be restored."
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _kdf(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # surrogateescape: a passphrase read from a non-UTF-8 environment keeps its bytes.
    try:
        secret = passphrase.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise KeyFileError("the passphrase is not valid text (cannot encode it as UTF-8)") from None
    return Scrypt(salt=salt, length=KEY_SIZE, n=n, r=r, p=p).derive(secret)


def _key_file_doc(master: bytes, passphrase: str | None) -> dict[str, Any]:
    created = datetime.now(UTC).isoformat()
    if passphrase is None:
        return {"mosaic_key_file": 1, "master_key": _b64(master), "created": created}
    salt, nonce = os.urandom(_SALT_SIZE), os.urandom(12)
    kek = _kdf(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    wrapped = nonce + AESGCM(kek).encrypt(nonce, master, _MASTER_AAD)
    return {
        "mosaic_key_file": 1,
        "kdf": "scrypt",
        "salt": _b64(salt),
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "created": created,
        "wrapped_master": _b64(wrapped),
    }


def create_key_file(
    path: str | Path, passphrase: str | None = None, *, master: bytes | None = None
) -> bytes:
    """Write a master key to ``path`` (mode 0600) and return it; refuse to overwrite.

    With ``passphrase`` the key is stored scrypt-protected, otherwise raw. ``master``
    writes a given key (an export or a key prepared before the file) instead of a new
    random one. The file is fsynced before returning, so a caller may start wrapping
    data keys under it.
    """
    p = Path(path)
    if passphrase is not None and not passphrase:
        raise KeyFileError(f"key file {p}: the passphrase is empty; choose a real one")
    if master is None:
        master = os.urandom(KEY_SIZE)
    elif len(master) != KEY_SIZE:
        raise KeyFileError(f"key file {p}: master key is {len(master)} bytes, expected {KEY_SIZE}")
    doc = _key_file_doc(master, passphrase)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {p} exists already; refusing to overwrite it") from None
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return master


def load_key_file(path: str | Path, passphrase: str | None = None) -> bytes:
    """Return the master key in the key file at ``path``.

    Raises KeyFileError when the file is missing, damaged, or protected and no
    passphrase was given (an empty one counts as not given), and WrongKeyError when the
    passphrase does not open it. A passphrase given for a raw key file is ignored.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {p} does not exist: restore your copy of it, or point key_file at it"
        ) from None
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"key file {p} cannot be read: {exc}") from None
    if isinstance(doc, dict) and "mosaic_write_only_key" in doc:
        raise refusal(str(p), "this operation")
    try:
        if not isinstance(doc, dict) or doc.get("mosaic_key_file") != 1:
            raise ValueError("not a mosaic-backup key file")
        if "kdf" in doc:
            return _open_protected(p, doc, passphrase)
        key = base64.b64decode(doc["master_key"], validate=True)
        if len(key) != KEY_SIZE:
            raise ValueError(f"master key is {len(key)} bytes, expected {KEY_SIZE}")
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # binascii.Error is a ValueError; its text names the problem, never the data.
        raise KeyFileError(f"key file {p} is damaged: {_describe(exc)}") from None
    return key


RepoKey = bytes | WriteOnlyKey
"""What opens a repository: the master key, or a write-only key (writeonly.py)."""


def load_any_key_file(path: str | Path, passphrase: str | None = None) -> RepoKey:
    """The key in ``path``: a :class:`WriteOnlyKey` for a write-only key file, else the
    master key (as :func:`load_key_file`, with the same errors)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = None  # load_key_file names the problem
    wo = parse_write_only(doc, p)
    if wo is not None:
        return wo
    return load_key_file(p, passphrase)


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"field {exc} is missing"
    if isinstance(exc, binascii.Error):
        return "a field is not valid base64"
    return str(exc)


def _int_param(doc: dict[str, Any], name: str, low: int, high: int) -> int:
    v = doc[name]
    if type(v) is not int or not low <= v <= high:
        raise ValueError(f"scrypt parameter {name}={v!r} is outside {low}..{high}")
    return v


def _open_protected(p: Path, doc: dict[str, Any], passphrase: str | None) -> bytes:
    if doc["kdf"] != "scrypt":
        raise ValueError(f"unknown kdf {doc['kdf']!r} (a newer mosaic-backup wrote it?)")
    n = _int_param(doc, "n", 2, _MAX_N)
    if n & (n - 1):
        raise ValueError(f"scrypt parameter n={n} is not a power of two")
    r = _int_param(doc, "r", 1, _MAX_R)
    par = _int_param(doc, "p", 1, _MAX_P)
    salt = base64.b64decode(doc["salt"], validate=True)
    wrapped = base64.b64decode(doc["wrapped_master"], validate=True)
    if len(wrapped) != 12 + KEY_SIZE + 16:
        raise ValueError(f"wrapped_master is {len(wrapped)} bytes, expected {12 + KEY_SIZE + 16}")
    if not passphrase:
        raise KeyFileError(
            f"key file {p} is protected by a passphrase: set {PASSPHRASE_ENV} to it in the "
            "environment of this command (or the variable named by --passphrase-from-env)"
        )
    kek = _kdf(passphrase, salt, n, r, par)
    try:
        return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], _MASTER_AAD)
    except InvalidTag:
        raise WrongKeyError(
            f"key file {p}: wrong passphrase (or the key file was modified)"
        ) from None


def master_key_from_env(value: str) -> bytes:
    """Parse a base64 master key handed over in an environment variable.

    For deployments whose secret store injects the key itself instead of a file. The
    caller reads the variable; the message never echoes the value.
    """
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(
            "the master key given through the environment is not valid base64"
        ) from None
    if len(key) != KEY_SIZE:
        raise KeyFileError(
            f"the master key given through the environment is {len(key)} bytes, expected "
            f"{KEY_SIZE} (base64 of 32 random bytes)"
        )
    return key


def wrap_data_key(master: bytes, kid: bytes, data_key: bytes) -> bytes:
    nonce = os.urandom(12)
    wrapped = nonce + AESGCM(master).encrypt(nonce, data_key, _WRAP_AAD + kid)
    doc = {"version": 1, "kid": kid.hex(), "wrapped": _b64(wrapped)}
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

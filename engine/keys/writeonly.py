"""Write-only keys: back up without being able to read any backup.

A repository may have a **recipient key pair** (X25519). Its private half is stored in
the repository as an ordinary wrapped data key (``keys/<recipient kid>``, wrapped by the
master key, see keys.py): whoever holds the key file holds it, ``rewrap`` moves it to a
new key file like any data key, a replica carries it, and the key file format does not
change. Its public half, the recipient key id and the **index key** id are fields of the
sealed config (format.py).

A **write-only key file** (``repo keys write-only-export``) holds, per repository:

- the recipient public key — new data keys are wrapped to it;
- the chunk-id key and the chunker parameters — the same chunk must get the same id and
  the same cut points as everyone else's, or nothing deduplicates;
- the index key (kid + key) — index segments and leases are sealed with it, so a
  write-only agent can read the index (which blobs exist, in which pack, how big) and
  take a lease; nothing else is sealed with it;
- the repository id.

It holds neither the master key nor any data key that seals data, tree, pack-header or
manifest objects. A write-only writer draws a fresh random **session key** when it opens
the repository, seals everything it writes (blobs, pack tables, the manifest) with it,
and stores it only wrapped to the recipient (``keys/<session kid>``, version 2, below)
before the first object sealed with it is uploaded; the key is dropped with the
Repository object when the job ends. Readers with the key file unwrap session keys with
the recipient private key at open (and again when they meet an unknown key id).

Recipient-wrapped data key (``keys/<kid hex>``, JSON)::

    {"version": 2, "kid": "<hex>", "epk": "<base64 ephemeral X25519 public key>",
     "wrapped": "<base64 nonce(12) + AES-256-GCM(kek, data key) + tag>"}
    kek = HKDF-SHA256(X25519(ephemeral, recipient), salt = epk || recipient public,
                      info = b"mosaic-recipient-kek-v1" + kid)
    associated data = b"mosaic-recipient-key-v1" + kid

Write-only key file (JSON, mode 0600)::

    {"mosaic_write_only_key": 1, "created": "<ISO-8601>",
     "repositories": [{"repository_id", "recipient_public", "chunk_id_key",
                       "index_kid", "index_key", "chunker": [min, avg, max, seed]}]}

One file may cover several repositories (an agent with several targets); a repository
is recognised on a target by its index key object ``keys/<index kid>`` (key ids are 8
random bytes, so they differ between repositories and match on replicas).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.errors import KeyFileError, RepositoryError, WrongKeyError

WRAP_VERSION = 2
_KEK_INFO = b"mosaic-recipient-kek-v1"
_WRAP_AAD = b"mosaic-recipient-key-v1"
KID_SIZE = 8


class WriteOnlyKeyError(RepositoryError):
    """A write-only agent was asked for something that needs to read backups."""

    code = "repository.write_only"


def refusal(key_file: str, what: str) -> WriteOnlyKeyError:
    return WriteOnlyKeyError(
        f"this agent holds a write-only key ({key_file}): {what} needs the full key file, "
        "kept offline or on the coordinator's host; run it on an agent configured with it"
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _kek(shared: bytes, epk: bytes, rpk: bytes, kid: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + rpk, info=_KEK_INFO + kid).derive(
        shared
    )


def wrap_to_recipient(recipient_public: bytes, kid: bytes, data_key: bytes) -> bytes:
    """Wrap ``data_key`` so that only the recipient private key opens it."""
    rpk = X25519PublicKey.from_public_bytes(recipient_public)
    eph = X25519PrivateKey.generate()
    epk = public_bytes(eph.public_key())
    kek = _kek(eph.exchange(rpk), epk, recipient_public, kid)
    nonce = os.urandom(12)
    wrapped = nonce + AESGCM(kek).encrypt(nonce, data_key, _WRAP_AAD + kid)
    doc = {"version": WRAP_VERSION, "kid": kid.hex(), "epk": _b64(epk), "wrapped": _b64(wrapped)}
    return json.dumps(doc).encode()


def is_recipient_wrapped(raw: bytes) -> bool:
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("version") == WRAP_VERSION


def unwrap_from_recipient(private: X25519PrivateKey, raw: bytes, where: str) -> tuple[bytes, bytes]:
    """Return (kid, data key); WrongKeyError when ``private`` is not the recipient."""
    try:
        doc = json.loads(raw)
        kid = bytes.fromhex(doc["kid"])
        epk = base64.b64decode(doc["epk"], validate=True)
        wrapped = base64.b64decode(doc["wrapped"], validate=True)
        shared = private.exchange(X25519PublicKey.from_public_bytes(epk))
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{where}: recipient-wrapped key is damaged ({exc})") from None
    kek = _kek(shared, epk, public_bytes(private.public_key()), kid)
    try:
        key = AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], _WRAP_AAD + kid)
    except InvalidTag:
        raise WrongKeyError(f"{where}: not wrapped to this repository's recipient key") from None
    return kid, key


@dataclass(frozen=True, slots=True)
class WriteOnlyEntry:
    """What a write-only writer knows about one repository."""

    repository_id: str
    recipient_public: bytes
    chunk_id_key: bytes
    index_kid: bytes
    index_key: bytes
    chunker: tuple[int, int, int, int]  # min, avg, max, seed

    def to_json(self) -> dict[str, Any]:
        return {
            "repository_id": self.repository_id,
            "recipient_public": _b64(self.recipient_public),
            "chunk_id_key": _b64(self.chunk_id_key),
            "index_kid": self.index_kid.hex(),
            "index_key": _b64(self.index_key),
            "chunker": list(self.chunker),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WriteOnlyEntry:
        chunker = doc["chunker"]
        if not (isinstance(chunker, list) and len(chunker) == 4):
            raise ValueError("chunker must be a list of 4 integers")
        entry = cls(
            repository_id=str(doc["repository_id"]),
            recipient_public=base64.b64decode(doc["recipient_public"], validate=True),
            chunk_id_key=base64.b64decode(doc["chunk_id_key"], validate=True),
            index_kid=bytes.fromhex(doc["index_kid"]),
            index_key=base64.b64decode(doc["index_key"], validate=True),
            chunker=(int(chunker[0]), int(chunker[1]), int(chunker[2]), int(chunker[3])),
        )
        sizes = (len(entry.recipient_public), len(entry.chunk_id_key), len(entry.index_key))
        if sizes != (32, 32, 32) or len(entry.index_kid) != KID_SIZE:
            raise ValueError("a key has the wrong length")
        return entry


@dataclass(frozen=True, slots=True)
class WriteOnlyKey:
    """A loaded write-only key file; ``path`` is named in refusals."""

    path: str
    repositories: tuple[WriteOnlyEntry, ...]


def write_write_only_key(path: str | Path, entries: list[WriteOnlyEntry]) -> Path:
    """Write a new write-only key file (mode 0600); refuse to overwrite."""
    p = Path(path)
    doc = {
        "mosaic_write_only_key": 1,
        "created": datetime.now(UTC).isoformat(),
        "repositories": [e.to_json() for e in entries],
    }
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {p} exists already; refusing to overwrite it") from None
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return p


def parse_write_only(doc: Any, path: str | Path) -> WriteOnlyKey | None:
    """The write-only key in a parsed key file; None when it is another kind of file."""
    if not isinstance(doc, dict) or "mosaic_write_only_key" not in doc:
        return None
    try:
        if doc["mosaic_write_only_key"] != 1:
            raise ValueError(
                f"write-only key file version {doc['mosaic_write_only_key']!r} is not "
                "supported (a newer mosaic-backup wrote it?)"
            )
        entries = tuple(WriteOnlyEntry.from_json(e) for e in doc["repositories"])
        if not entries:
            raise ValueError("it lists no repository")
    except KeyError as exc:
        raise KeyFileError(f"key file {path} is damaged: field {exc} is missing") from None
    except binascii.Error:
        raise KeyFileError(f"key file {path} is damaged: a field is not valid base64") from None
    except (AttributeError, TypeError, ValueError) as exc:
        raise KeyFileError(f"key file {path} is damaged: {exc}") from None
    return WriteOnlyKey(str(path), entries)

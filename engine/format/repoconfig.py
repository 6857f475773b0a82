"""The ``config`` object: what identifies a repository and how it cuts and ids chunks.

Sealed with a data key under the object id ``config``; written once at initialisation
(only if absent: of two racing writers exactly one config wins), copied to
``recovery/config`` (engine.recovery). Fields are only ever added, with defaults.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from engine.format import spec as fmt
from engine.format.crypto import Keyring, open_sealed, seal, sealed_kid
from shared.errors import IntegrityError, RepositoryError


class RepoConfig(msgspec.Struct, frozen=True, kw_only=True):
    version: int = fmt.FORMAT_VERSION
    repository_id: str
    created: datetime
    chunk_id_key: bytes
    chunker_min: int = 256 << 10
    chunker_avg: int = 768 << 10
    chunker_max: int = 4 << 20
    chunker_seed: int = 0
    # Write-only agents (engine.keys.writeonly); empty until `repo keys write-only-export`.
    recipient_kid: bytes = b""  # keys/<kid> holds the X25519 private key, master-wrapped
    recipient_public: bytes = b""
    index_kid: bytes = b""  # seals index segments and leases


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(RepoConfig)


def seal_config(keys: Keyring, config: RepoConfig) -> bytes:
    return seal(keys, fmt.OT_CONFIG, fmt.CONFIG_KEY.encode(), _enc.encode(config))


def open_config(keys: Keyring, sealed: bytes, where: str) -> RepoConfig:
    """The config in ``sealed``; IntegrityError when it is damaged or its key is gone."""
    kid = sealed_kid(sealed)
    if kid and not keys.holds(kid):
        raise IntegrityError(
            f"{where}: sealed with data key {kid.hex()}, which is in neither keys/ nor "
            "recovery/keys/"
        )
    _, payload = open_sealed(keys, fmt.CONFIG_KEY.encode(), sealed, where)
    try:
        config = _dec.decode(payload)
    except msgspec.DecodeError as exc:
        raise IntegrityError(f"{where}: config is invalid ({exc})") from exc
    if config.version != fmt.FORMAT_VERSION:
        raise RepositoryError(f"{where}: repository format {config.version} is not supported")
    return config

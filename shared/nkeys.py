"""NATS NKEYs: Ed25519 key pairs in NATS's text encoding, for per-agent credentials.

Why here and not the ``nkeys`` package from PyPI (nats-py's optional dependency for
``nkeys_seed=``): it is published as a source archive only, and this project installs
from wheels. The encoding is small and stable (nats-io/nkeys ``strkey.go``):

- public key: base32(prefix byte ‖ 32-byte key ‖ CRC-16/XMODEM little-endian), no
  padding; a user's starts with ``U``;
- seed: base32(``0x90 | prefix >> 5`` ‖ ``(prefix & 31) << 3`` ‖ 32-byte Ed25519 seed ‖
  CRC), so a user's seed starts with ``SU``.

The signing itself is ``cryptography``'s Ed25519. :func:`provide_for_nats_py` makes
nats-py's own ``nkeys_seed=`` path (it reads the seed file at every (re)connect and signs
the server's nonce) find this module under the name ``nkeys`` when the PyPI package is not
installed; if it is, that one is used.
"""

from __future__ import annotations

import base64
import importlib.util
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from shared.errors import ConfigError

PREFIX_SEED = 18 << 3  # 'S'
PREFIX_USER = 20 << 3  # 'U'


class InvalidSeed(ConfigError):
    code = "config.nkey_seed"


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _encode(raw: bytes) -> bytes:
    raw += _crc16(raw).to_bytes(2, "little")
    return base64.b32encode(raw).rstrip(b"=")


def _decode(text: bytes) -> bytes:
    text = bytes(text).strip()
    try:
        raw = base64.b32decode(text + b"=" * (-len(text) % 8))
    except ValueError as exc:
        raise InvalidSeed("not an NKEY (bad base32)") from exc
    if len(raw) < 4 or _crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise InvalidSeed("not an NKEY (checksum mismatch)")
    return raw[:-2]


def encode_seed(seed: bytes, prefix: int = PREFIX_USER) -> bytes:
    """The text form of a 32-byte Ed25519 seed (``SU…`` for a user)."""
    b1 = PREFIX_SEED | (prefix >> 5)
    b2 = (prefix & 31) << 3
    return _encode(bytes([b1, b2]) + seed)


def encode_public(public: bytes, prefix: int = PREFIX_USER) -> bytes:
    return _encode(bytes([prefix]) + public)


class KeyPair:
    """The subset of nkeys.py's ``KeyPair`` that nats-py uses."""

    def __init__(self, seed: bytes, prefix: int) -> None:
        self._key: Ed25519PrivateKey | None = Ed25519PrivateKey.from_private_bytes(seed)
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key = encode_public(raw, prefix)

    def sign(self, data: bytes) -> bytes:
        if self._key is None:
            raise InvalidSeed("key pair was wiped")
        return self._key.sign(data)

    def wipe(self) -> None:
        self._key = None  # best effort, as nkeys.py: Python cannot scrub memory


def from_seed(text: bytes | bytearray) -> KeyPair:
    """A key pair from a seed's text form; :class:`InvalidSeed` for anything else."""
    raw = _decode(bytes(text))
    if len(raw) != 34 or raw[0] & 0xF8 != PREFIX_SEED:
        raise InvalidSeed("not an NKEY seed (it must start with 'S', e.g. SU… for a user)")
    prefix = ((raw[0] & 7) << 5) | ((raw[1] & 0xF8) >> 3)
    return KeyPair(raw[2:], prefix)


def generate_user() -> tuple[bytes, bytes]:
    """A new user key pair: (seed text ``SU…``, public key text ``U…``)."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return encode_seed(seed), encode_public(public)


def provide_for_nats_py() -> None:
    """Let ``nats.connect(nkeys_seed=…)`` work without the PyPI ``nkeys`` package."""
    if "nkeys" not in sys.modules and importlib.util.find_spec("nkeys") is None:
        sys.modules["nkeys"] = sys.modules[__name__]

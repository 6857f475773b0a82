"""Repository format v1 — the one place it is written down.

Objects on a target (keys are relative to the repository root)::

    config                   sealed CONFIG object: repository id, chunker parameters,
                             the chunk-id key; for write-only agents also the recipient
                             key id and public key and the index key id
    keys/<kid hex>           a data key wrapped by the master key (JSON version 1, see
                             keys.py), or a write-only session key wrapped to the
                             recipient key (JSON version 2, see writeonly.py)
    data/<xx>/<pack id hex>  pack files (pack id = BLAKE3 of the whole pack; xx = first
                             two hex digits)
    index/<hex>              sealed INDEX objects: pack → blobs it holds
    manifests/<backup id>    sealed MANIFEST object, one per backup
    locks/<lease id>         sealed LEASE object of a running writer (see lease.py)
    recovery/config          a byte-for-byte copy of ``config`` (recovery.py)
    recovery/keys/<kid hex>  a byte-for-byte copy of ``keys/<kid hex>``

A location that holds any of these objects but no readable ``config`` is a *damaged*
repository, never an empty one: nothing initialises there (recovery.py explains how
``config`` and ``keys/`` come back from their copies or from the key file).

Sealed object (every blob, index, manifest, config and pack header)::

    offset size  field
    0      3     magic b"MSB"
    3      1     format version (1)
    4      1     object type (OT_*)
    5      1     compression (COMP_NONE or COMP_ZSTD)
    6      8     key id of the data key
    14     12    AES-GCM nonce (random)
    26     n+16  AES-256-GCM(ciphertext of the (compressed) payload) + tag

    associated data = the 26 header bytes + the object id (chunk id for blobs, the key
    name for other objects), so a blob moved, swapped or relabelled fails to open.

Pack file::

    blob 0 | blob 1 | … | sealed PACK_HEADER | u32 LE length of the sealed header | b"MSBP"

    PACK_HEADER payload = msgpack list of [object type, id (32 bytes), offset, length,
    plaintext length]; object id for the header's AAD = b"pack-header".

Write-only agents (writeonly.py) add no object type and no header version: their
objects are ordinary sealed objects whose key id names a session key stored under
``keys/`` wrapped to the repository's X25519 recipient key; index segments and leases
are sealed with the index key (``config.index_kid``) once a repository has one. Why not
a per-pack key in the pack table: blobs are sealed on worker threads before the pack
they land in is chosen, and a header key id that resolves through ``keys/`` lets every
existing reader, verify and replication path work unchanged; a session key lives for
one job, which is what a per-pack key would protect in practice (the host writing the
data has the plaintext during that job anyway).

Chunk id = keyed BLAKE3-256 of the plaintext, with the repository's chunk-id key (in
the sealed config), so ids reveal nothing about content to someone without the key.

Trees: a backup's file tree is a stream of records (u32 LE length + msgpack ``Node``),
cut into chunks like any data and stored as TREE blobs; the manifest lists the tree's
chunk ids. So a manifest stays small however many files a backup has, and unchanged
parts of trees deduplicate.

Node fields (msgpack map, defaults omitted): path, type (file/dir/symlink/hardlink),
mode, mtime_ns, size, uid, gid, inode, ctime_ns, chunks, target, and — added later
within version 1 — ``xattrs`` (map of attribute name → raw bytes; every attribute that
was readable, including ``security.*``/``system.*`` ones). Readers ignore fields they do
not know, so a tree with ``xattrs`` stays readable by code that predates it (its restore
just does not set them); that is why adding a field with a default needs no version bump.
"""

from __future__ import annotations

import struct

MAGIC = b"MSB"
FORMAT_VERSION = 1
HEADER = struct.Struct("<3sBBB8s12s")
HEADER_SIZE = HEADER.size  # 26
TAG_SIZE = 16
OVERHEAD = HEADER_SIZE + TAG_SIZE

OT_DATA = 1
OT_TREE = 2
OT_PACK_HEADER = 3
OT_INDEX = 4
OT_MANIFEST = 5
OT_CONFIG = 6
OT_LEASE = 7
OBJECT_TYPES = {
    OT_DATA: "data",
    OT_TREE: "tree",
    OT_PACK_HEADER: "pack-header",
    OT_INDEX: "index",
    OT_MANIFEST: "manifest",
    OT_CONFIG: "config",
    OT_LEASE: "lease",
}

COMP_NONE = 0
COMP_ZSTD = 1

PACK_TRAILER = struct.Struct("<I4s")
PACK_MAGIC = b"MSBP"
PACK_HEADER_ID = b"pack-header"

CONFIG_KEY = "config"
KEYS_PREFIX = "keys/"
DATA_PREFIX = "data/"
INDEX_PREFIX = "index/"
MANIFESTS_PREFIX = "manifests/"
LOCKS_PREFIX = "locks/"
RECOVERY_PREFIX = "recovery/"
RECOVERY_CONFIG_KEY = "recovery/config"
RECOVERY_KEYS_PREFIX = "recovery/keys/"
# Where a repository's objects live; any object under one of them means "not empty".
REPOSITORY_PREFIXES = (
    KEYS_PREFIX,
    DATA_PREFIX,
    INDEX_PREFIX,
    MANIFESTS_PREFIX,
    LOCKS_PREFIX,
    RECOVERY_PREFIX,
)


def pack_key(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"{DATA_PREFIX}{h[:2]}/{h}"


def manifest_key(backup_id: str) -> str:
    return f"{MANIFESTS_PREFIX}{backup_id}"

"""Key management on a repository: rotate the data key, rewrap under a new master key,
export the master key.

Why these three and what each protects against:

- :func:`rotate` adds a fresh data key and makes it current, so data written from now
  on is sealed with a key that was never exposed. Old data keys stay in ``keys/`` (old
  blobs are sealed with them) — rotation limits what a leaked *data* key reveals about
  the future; it does not re-encrypt the past.
- :func:`rewrap` replaces the master key (the key file) without touching data: only the
  small ``keys/*`` objects are rewritten. Anyone who kept the old key file *and* an old
  copy of ``keys/`` can still unwrap the old data keys, so after a leaked key file run
  both: rewrap (the old key file stops opening the repository) and rotate (new data
  uses a key the old file never wrapped).
- :func:`export_key_file` writes another copy of the master key, optionally under a
  passphrase, for the offline copy every user must keep.
- :func:`write_only_entry` gives a repository a recipient key pair and an index key
  (once) and returns what a write-only key file holds for it (writeonly.py).

Crash safety: every step writes the object that makes it take effect last. ``rotate``
stores the new wrapped key before the config that points at it (a crash in between
leaves an unused key, which is harmless). ``rewrap`` checks every ``keys/*`` object
before writing any; a crash halfway leaves some objects under each master key, and
running it again with the same two keys finishes the job (objects already under the
new key are skipped). The new master key must be stored durably (its key file written)
before ``rewrap`` starts.

Only Repository's public attributes (``target``, ``keys``, ``config``) are used; the
config is re-sealed here from its stored payload rather than through a Repository
method, so this module does not depend on repository.py's internals.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from engine import recovery
from engine.format import segments
from engine.format import spec as fmt
from engine.format.crypto import Keyring, open_sealed, seal, sealed_kid
from engine.format.repoconfig import RepoConfig, seal_config
from engine.keys.files import KEY_SIZE, create_key_file, unwrap_data_key, wrap_data_key
from engine.keys.writeonly import WriteOnlyEntry, is_recipient_wrapped, public_bytes
from engine.repository import Repository
from engine.storage.base import Target
from shared.errors import KeyFileError, ObjectNotFound, RepositoryError, WrongKeyError

KID_SIZE = 8


def _key_name(kid: bytes) -> str:
    return f"{fmt.KEYS_PREFIX}{kid.hex()}"


async def rotate(repo: Repository, master: bytes) -> bytes:
    """Make a new random data key current on ``repo``; return its key id.

    ``master`` must be the master key ``repo`` was opened with (the Repository does not
    keep it): it is checked against the current key's wrapped object before anything is
    written, because a new key wrapped under a wrong master key would, once the config
    points at it, lock everyone out. ``repo`` itself seals with the new key afterwards.
    """
    target = repo.target
    where = target.describe()
    current = repo.keys.current
    key_where = f"{where}/{_key_name(current)}"
    try:
        raw = await target.get(_key_name(current))
    except ObjectNotFound:
        raise RepositoryError(
            f"{key_where}: the current data key is missing (damaged repository?)"
        ) from None
    unwrap_data_key(master, raw, key_where)  # WrongKeyError when master is not the one

    cfg_where = f"{where}/{fmt.CONFIG_KEY}"
    sealed_cfg = await target.get(fmt.CONFIG_KEY)
    _, payload = open_sealed(repo.keys, fmt.CONFIG_KEY.encode(), sealed_cfg, cfg_where)
    stored = msgspec.msgpack.decode(payload, type=RepoConfig)
    if stored.repository_id != repo.config.repository_id:
        raise RepositoryError(
            f"{cfg_where}: holds repository {stored.repository_id}, but this one was opened "
            f"as {repo.config.repository_id}; open it again and retry"
        )

    kid = os.urandom(KID_SIZE)
    while kid == current or await target.exists(_key_name(kid)):
        kid = os.urandom(KID_SIZE)
    data_key = os.urandom(KEY_SIZE)
    await target.put(_key_name(kid), wrap_data_key(master, kid, data_key))

    repo.keys.add(kid, data_key)
    new_keys = Keyring({kid: data_key}, kid, repo.keys.id_key)
    # The stored payload is re-sealed as is, so fields this version does not know survive.
    new_cfg = seal(new_keys, fmt.OT_CONFIG, fmt.CONFIG_KEY.encode(), payload)
    await target.put(fmt.CONFIG_KEY, new_cfg)
    repo.keys.current = kid
    repo.sealed_config = new_cfg
    await recovery.ensure_copies(target, new_cfg)
    return kid


async def rewrap(
    target: Target, old_master: bytes, new_master: bytes, *, dry_run: bool = False
) -> int:
    """Wrap every data key in ``keys/`` and its copy in ``recovery/keys/`` under
    ``new_master``; return how many objects were written.

    Every object is checked first: each must open with ``old_master`` (or already with
    ``new_master``, left by an interrupted run). If any opens with neither, WrongKeyError
    is raised and nothing is written. With ``dry_run`` only the check runs and the count
    of objects that would be written is returned — to check several targets before
    changing any. Data, index and manifests are not touched.
    """
    if len(new_master) != KEY_SIZE:
        raise KeyFileError(f"new master key is {len(new_master)} bytes, expected {KEY_SIZE}")
    where = target.describe()
    todo: list[tuple[str, bytes, bytes]] = []
    # recovery/keys/ holds copies of keys/: rewrapped too, or the old key file would
    # still open them.
    objects = [o async for o in target.list(fmt.KEYS_PREFIX)]
    objects += [o async for o in target.list(fmt.RECOVERY_KEYS_PREFIX)]
    for obj in objects:
        raw = await target.get(obj.key)
        obj_where = f"{where}/{obj.key}"
        if is_recipient_wrapped(raw):
            continue  # a write-only session key: wrapped to the recipient, not the master
        try:
            kid, data_key = unwrap_data_key(old_master, raw, obj_where)
        except WrongKeyError:
            try:
                unwrap_data_key(new_master, raw, obj_where)
            except WrongKeyError:
                raise WrongKeyError(
                    f"{obj_where}: neither the old nor the new master key opens this data "
                    "key (wrong key file?); nothing was changed"
                ) from None
            continue  # rewrapped by an earlier, interrupted run
        todo.append((obj.key, kid, data_key))
    if dry_run:
        return len(todo)
    for key, kid, data_key in todo:
        await target.put(key, wrap_data_key(new_master, kid, data_key))
    return len(todo)


def export_key_file(src: bytes, dest: str | Path, passphrase: str | None = None) -> Path:
    """Write a copy of the master key ``src`` to a new key file ``dest`` (mode 0600).

    ``src`` is the master key itself (load it with ``load_key_file``), so the caller
    decides how the source is unlocked. With ``passphrase`` the copy is scrypt-protected.
    Refuses to overwrite an existing file (KeyFileError): an export must never destroy
    another key.
    """
    create_key_file(dest, passphrase, master=src)
    return Path(dest)


async def _new_kid(target: Target, taken: set[bytes]) -> bytes:
    kid = os.urandom(KID_SIZE)
    while kid in taken or await target.exists(_key_name(kid)):
        kid = os.urandom(KID_SIZE)
    taken.add(kid)
    return kid


async def write_only_entry(repo: Repository, master: bytes) -> WriteOnlyEntry:
    """Give ``repo`` a recipient key pair and an index key unless it has them; return
    the write-only key file entry for it.

    Order: both keys are stored (master-wrapped) before the config that names them, and
    index segments sealed with other keys are then re-sealed under the index key (new
    segment first, old one deleted after), so write-only agents deduplicate against all
    data already stored. A crash leaves unused keys or duplicate segments (harmless);
    running it again finishes the job. ``repo`` seals with the new layout afterwards.
    """
    target = repo.target
    cfg = repo.config
    if not cfg.recipient_kid:
        unwrap_data_key(  # WrongKeyError before anything is written
            master, await target.get(_key_name(repo.keys.current)), target.describe()
        )
        taken = {repo.keys.current}
        rkid, ikid = await _new_kid(target, taken), await _new_kid(target, taken)
        private = X25519PrivateKey.generate()
        secret = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        index_key = os.urandom(KEY_SIZE)
        await target.put(_key_name(rkid), wrap_data_key(master, rkid, secret))
        await target.put(_key_name(ikid), wrap_data_key(master, ikid, index_key))
        cfg = msgspec.structs.replace(
            cfg,
            recipient_kid=rkid,
            recipient_public=public_bytes(private.public_key()),
            index_kid=ikid,
        )
        repo.keys.add(ikid, index_key)
        sealed = seal_config(repo.keys, cfg)
        await target.put(fmt.CONFIG_KEY, sealed)
        repo.config, repo.keys.meta, repo.recipient = cfg, ikid, private
        repo.sealed_config = sealed
        await recovery.ensure_copies(target, sealed)
    await _reseal_index(repo)
    raw = await target.get(_key_name(cfg.index_kid))
    _, index_key = unwrap_data_key(master, raw, f"{target.describe()}/{_key_name(cfg.index_kid)}")
    return WriteOnlyEntry(
        repository_id=cfg.repository_id,
        recipient_public=cfg.recipient_public,
        chunk_id_key=cfg.chunk_id_key,
        index_kid=cfg.index_kid,
        index_key=index_key,
        chunker=(cfg.chunker_min, cfg.chunker_avg, cfg.chunker_max, cfg.chunker_seed),
    )


async def _reseal_index(repo: Repository) -> int:
    """Re-seal index segments not sealed with the index key; return how many."""
    target, ikid = repo.target, repo.config.index_kid
    n = 0
    async for obj in target.list(fmt.INDEX_PREFIX):
        sealed = await target.get(obj.key)
        if sealed_kid(sealed) == ikid:
            continue
        where = f"{target.describe()}/{obj.key}"
        packs = segments.open_segment(repo.keys, obj.key, sealed, where)
        key = segments.new_key()
        await target.put(key, segments.seal_segment(repo.keys, key, packs))
        await target.delete(obj.key)
        n += 1
    return n

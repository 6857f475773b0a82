"""Opening a repository: find its config and data keys with a master key, a write-only
key, or initialise an empty location — and never initialise over anything.

:func:`open_full` and :func:`open_write_only` return the :class:`Opened` parts
:class:`engine.repository.Repository` is built from; they read, and only
:func:`open_full` with ``create`` on an empty location writes (keys first, the config
last and only if absent). A location with objects but no readable config raises
DamagedRepositoryError naming the repair; readers open it from ``recovery/config``.
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import UTC, datetime
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from engine import recovery
from engine.format import spec as fmt
from engine.format.crypto import Keyring
from engine.format.repoconfig import RepoConfig, open_config, seal_config
from engine.keys.files import KEY_SIZE, unwrap_data_key, wrap_data_key
from engine.keys.writeonly import (
    KID_SIZE,
    WriteOnlyKey,
    is_recipient_wrapped,
    unwrap_from_recipient,
    wrap_to_recipient,
)
from engine.storage.base import Target
from shared.errors import (
    DamagedRepositoryError,
    IntegrityError,
    ObjectNotFound,
    RepositoryError,
    WrongKeyError,
)

log = logging.getLogger(__name__)


class Opened(NamedTuple):
    keys: Keyring
    config: RepoConfig
    sealed_config: bytes = b""  # as stored (full key only), for recovery copies
    wrapped_keys: dict[str, bytes] | None = None  # kid hex → master-wrapped data key
    recipient: X25519PrivateKey | None = None  # unwraps write-only session keys
    write_only: WriteOnlyKey | None = None
    session_key: tuple[str, bytes] | None = None  # (object name, wrapped), to store
    created: bool = False  # initialised by this call: there is no index to read


async def open_full(target: Target, master_key: bytes, *, create: bool) -> Opened:
    """Open with the master key; with ``create``, initialise an empty location."""
    where = target.describe()
    while True:
        try:
            sealed_cfg: bytes | None = await target.get(fmt.CONFIG_KEY)
        except ObjectNotFound:
            sealed_cfg = None
        if sealed_cfg is not None:
            return await _with_config(target, master_key, sealed_cfg, create=create)
        state = await recovery.location_state(target)
        if state in ("empty", "initialising"):
            if not create:
                raise RepositoryError(f"{where}: no repository here (nothing backed up yet)")
            opened = await _initialise(target, master_key)
            if opened is not None:
                return opened
            continue  # another writer's config won the race: open that one
        if state == "repository":  # config written since our first look
            continue
        copy = await recovery.config_copy(target)
        if copy is None or create:
            raise DamagedRepositoryError(
                recovery.damaged_message(where, "the `config` object is missing")
            )
        return await _with_config(target, master_key, copy, create=False, from_copy=True)


async def _data_keys(
    target: Target, master_key: bytes
) -> tuple[dict[str, bytes], dict[bytes, bytes], list[tuple[str, bytes]]]:
    """(every wrapped key by kid hex, the data keys the master key unwraps, the keys
    wrapped to the recipient key with where they are)."""
    where = target.describe()
    wrapped = await recovery.wrapped_keys(target)
    data_keys: dict[bytes, bytes] = {}
    wrong: WrongKeyError | None = None
    to_recipient: list[tuple[str, bytes]] = []
    for kid_hex, raw in wrapped.items():
        key_where = f"{where}/{fmt.KEYS_PREFIX}{kid_hex}"
        if is_recipient_wrapped(raw):
            to_recipient.append((key_where, raw))
            continue
        try:
            kid, key = unwrap_data_key(master_key, raw, key_where)
        except WrongKeyError as exc:
            wrong = exc
            continue
        data_keys[kid] = key
    if not data_keys:
        if wrong is not None:
            raise wrong
        raise DamagedRepositoryError(recovery.damaged_message(where, "keys/ is empty"))
    return wrapped, data_keys, to_recipient


async def _with_config(
    target: Target, master_key: bytes, sealed_cfg: bytes, *, create: bool, from_copy: bool = False
) -> Opened:
    where = target.describe()
    wrapped, data_keys, to_recipient = await _data_keys(target, master_key)
    keys = Keyring(data_keys, max(data_keys), b"")
    try:
        config = open_config(keys, sealed_cfg, f"{where}/{fmt.CONFIG_KEY}")
    except (IntegrityError, KeyError) as exc:
        copy = None if from_copy or create else await recovery.config_copy(target)
        if copy is None or copy == sealed_cfg:
            raise DamagedRepositoryError(
                recovery.damaged_message(where, f"the `config` object does not open ({exc})")
            ) from None
        sealed_cfg, from_copy = copy, True
        config = open_config(keys, sealed_cfg, f"{where}/{fmt.RECOVERY_CONFIG_KEY}")
    if from_copy:
        log.warning(
            "%s: `config` is missing or damaged; opened read-only from recovery/config. "
            "To write here again, %s",
            where,
            recovery.REPAIR_HINT,
        )
    recipient = None
    if config.recipient_kid:
        secret = data_keys.pop(config.recipient_kid, None)
        if secret is None:
            raise DamagedRepositoryError(
                recovery.damaged_message(
                    where, f"the recipient key {config.recipient_kid.hex()} is missing"
                )
            )
        recipient = X25519PrivateKey.from_private_bytes(secret)
        for key_where, raw in to_recipient:
            kid, key = unwrap_from_recipient(recipient, raw, key_where)
            data_keys[kid] = key
    # New objects are sealed with the key the config was sealed with.
    current = bytes(sealed_cfg[6:14])
    return Opened(
        keys=Keyring(data_keys, current, config.chunk_id_key, meta=config.index_kid or None),
        config=config,
        sealed_config=sealed_cfg,
        wrapped_keys={k: v for k, v in wrapped.items() if not is_recipient_wrapped(v)},
        recipient=recipient,
    )


async def _initialise(target: Target, master_key: bytes) -> Opened | None:
    """A new repository on an empty location; None when another writer's config won."""
    kid, data_key = os.urandom(8), os.urandom(KEY_SIZE)
    config = RepoConfig(
        repository_id=uuid.uuid4().hex,
        created=datetime.now(UTC),
        chunk_id_key=os.urandom(32),
        chunker_seed=int.from_bytes(os.urandom(4), "little"),
    )
    keys = Keyring({kid: data_key}, kid, config.chunk_id_key)
    wrapped = wrap_data_key(master_key, kid, data_key)
    await target.put(f"{fmt.KEYS_PREFIX}{kid.hex()}", wrapped)
    sealed = seal_config(keys, config)
    # Written last and only if absent: it marks the repository as ready, and when two
    # writers initialise at once exactly one config wins; the loser opens that one
    # (its own data key stays in keys/, wrapped by the same master key, unused).
    if not await target.create(fmt.CONFIG_KEY, sealed):
        return None
    return Opened(
        keys=keys,
        config=config,
        sealed_config=sealed,
        wrapped_keys={kid.hex(): wrapped},
        created=True,
    )


async def open_write_only(target: Target, wo: WriteOnlyKey) -> Opened:
    """Open for writing with a write-only key: a fresh session key, wrapped to the
    recipient, seals everything the Repository writes (see engine.keys.writeonly)."""
    where = target.describe()
    state = await recovery.location_state(target)
    if state == "damaged":
        raise DamagedRepositoryError(
            recovery.damaged_message(where, "the `config` object is missing")
        )
    if state != "repository":
        raise RepositoryError(
            f"{where}: no repository here; a write-only key cannot create one — "
            f"initialise it with the full key file, then export the write-only key"
        )
    for entry in wo.repositories:
        if await target.exists(f"{fmt.KEYS_PREFIX}{entry.index_kid.hex()}"):
            break
    else:
        raise WrongKeyError(
            f"write-only key file {wo.path} does not cover the repository at {where} "
            "(export it again with `repo keys write-only-export` for this target)"
        )
    lo, avg, hi, seed = entry.chunker
    config = RepoConfig(
        repository_id=entry.repository_id,
        created=datetime.now(UTC),
        chunk_id_key=entry.chunk_id_key,
        chunker_min=lo,
        chunker_avg=avg,
        chunker_max=hi,
        chunker_seed=seed,
        recipient_public=entry.recipient_public,
        index_kid=entry.index_kid,
    )
    kid = os.urandom(KID_SIZE)
    while kid == entry.index_kid:
        kid = os.urandom(KID_SIZE)
    session = os.urandom(KEY_SIZE)
    keys = Keyring(
        {entry.index_kid: entry.index_key, kid: session},
        kid,
        entry.chunk_id_key,
        meta=entry.index_kid,
    )
    name = f"{fmt.KEYS_PREFIX}{kid.hex()}"
    return Opened(
        keys=keys,
        config=config,
        write_only=wo,
        session_key=(name, wrap_to_recipient(entry.recipient_public, kid, session)),
    )

"""Second copies of what every command needs: the ``config`` and the wrapped data keys.

Why: without ``config`` (the chunk-id key, the chunker parameters) and the data keys no
backup can be read, and a missing ``config`` used to look like an empty location — the
next backup initialised a new repository beside the old objects, whose data then never
opened again. So:

- A location with any repository object but no readable ``config`` is *damaged*
  (:func:`location_state`); nothing initialises there and every command says how to
  repair it. The one exception is a location holding only ``keys/``: that is another
  writer initialising right now (it stores its key before the config), which is safe to
  join because no backup exists yet.
- Every full-key writer keeps byte-for-byte copies inside the repository
  (``recovery/config``, ``recovery/keys/<kid>``, :func:`ensure_copies`) and in the key
  file the user keeps offline (its ``recovery`` member, :func:`record_in_key_file`), so
  either restores the other. The copies are the sealed/wrapped bytes themselves: they
  reveal nothing without the master key and need no format of their own.
- ``repo repair config`` (:func:`repair_config`) writes ``config`` and any missing
  ``keys/`` object back from the repository's copies or, failing those, the key file's.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from engine.format import spec as fmt
from engine.storage.base import Target
from shared.errors import KeyFileError, ObjectNotFound, RepositoryError, TargetError

log = logging.getLogger(__name__)

LocationState = Literal["empty", "initialising", "repository", "damaged"]

REPAIR_HINT = (
    "run `mosaic-backup repo repair config --config AGENT.toml` (it restores `config` and "
    "the data keys from recovery/ or from the copy kept in your key file)"
)


async def _any(target: Target, prefix: str) -> bool:
    async for _ in target.list(prefix):
        return True
    return False


async def location_state(target: Target) -> LocationState:
    """What is at ``target``: nothing, a writer initialising, a repository, or damage."""
    if await target.exists(fmt.CONFIG_KEY):
        return "repository"
    for prefix in fmt.REPOSITORY_PREFIXES:
        if prefix != fmt.KEYS_PREFIX and await _any(target, prefix):
            return "damaged"
    return "initialising" if await _any(target, fmt.KEYS_PREFIX) else "empty"


def damaged_message(where: str, what: str) -> str:
    return (
        f"{where}: damaged repository: {what}, but the location holds repository objects "
        f"(manifests/, index/, data/ …); nothing was written. Do not initialise here: "
        f"{REPAIR_HINT}"
    )


async def config_copy(target: Target) -> bytes | None:
    try:
        return await target.get(fmt.RECOVERY_CONFIG_KEY)
    except ObjectNotFound:
        return None


async def wrapped_keys(target: Target) -> dict[str, bytes]:
    """kid hex → wrapped bytes, from ``keys/`` and (for what it lacks) ``recovery/keys/``."""
    found: dict[str, bytes] = {}
    for prefix in (fmt.KEYS_PREFIX, fmt.RECOVERY_KEYS_PREFIX):
        async for obj in target.list(prefix):
            kid = obj.key[len(prefix) :]
            if kid in found or "/" in kid:
                continue
            try:
                found[kid] = await target.get(obj.key)
            except ObjectNotFound:
                continue  # removed since the listing
    return found


async def ensure_copies(target: Target, sealed_config: bytes) -> int:
    """Bring ``recovery/`` up to date with ``config`` and ``keys/``; return objects written.

    Never fatal: a target that refuses the write (an append-only one asked to replace
    an older copy) leaves the old copy and logs why."""
    written = 0
    try:
        if await config_copy(target) != sealed_config:
            await target.put(fmt.RECOVERY_CONFIG_KEY, sealed_config)
            written += 1
        have = {
            o.key[len(fmt.RECOVERY_KEYS_PREFIX) :]
            async for o in target.list(fmt.RECOVERY_KEYS_PREFIX)
        }
        async for obj in target.list(fmt.KEYS_PREFIX):
            kid = obj.key[len(fmt.KEYS_PREFIX) :]
            if kid not in have:
                await target.put(f"{fmt.RECOVERY_KEYS_PREFIX}{kid}", await target.get(obj.key))
                written += 1
    except (TargetError, OSError) as exc:
        log.warning("%s: could not update the recovery copies: %s", target.describe(), exc)
    return written


# --- the copy in the key file ----------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def record_in_key_file(
    path: str | Path, repository_id: str, sealed_config: bytes, keys: dict[str, bytes]
) -> bool:
    """Add this repository's config and wrapped keys to the key file's ``recovery``
    member (atomically: temp file, fsync, rename; mode 0600). True if it changed.

    Readers of key files ignore members they do not know, so older versions still load
    the file. A key file that cannot be rewritten (read-only mount, systemd credential)
    is left alone with a warning: the copies inside the repository still exist."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or doc.get("mosaic_key_file") != 1:
        return False
    recovery = doc.setdefault("recovery", {})
    new_keys = {k: _b64(v) for k, v in keys.items()}
    old = recovery.get(repository_id)
    if isinstance(old, dict) and isinstance(old.get("keys"), dict):
        new_keys = {**old["keys"], **new_keys}  # keys once recorded stay recorded
    entry = {"config": _b64(sealed_config), "keys": dict(sorted(new_keys.items()))}
    if old == entry:
        return False
    recovery[repository_id] = entry
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning(
            "key file %s: could not record the repository's recovery copy (%s); the "
            "copies inside the repository remain",
            p,
            exc.strerror or exc,
        )
        return False
    return True


def copies_from_key_file(path: str | Path, kids: set[str]) -> tuple[bytes, dict[str, bytes]]:
    """(sealed config, kid hex → wrapped key) recorded in the key file for the repository
    whose keys include one of ``kids`` (or the only one recorded). KeyFileError if none."""
    p = Path(path)
    try:
        doc: Any = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"key file {p} cannot be read: {exc}") from None
    entries = doc.get("recovery") if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise KeyFileError(
            f"key file {p} holds no recovery copy of any repository (it was written before "
            "recovery copies existed, or never opened a repository)"
        )
    chosen = [e for e in entries.values() if isinstance(e, dict) and kids & set(e.get("keys", {}))]
    if not chosen and len(entries) == 1:
        chosen = list(entries.values())
    if len(chosen) != 1:
        raise KeyFileError(
            f"key file {p} holds recovery copies of {len(entries)} repositories and none "
            "matches the keys at this location"
        )
    e = chosen[0]
    try:
        return base64.b64decode(e["config"]), {k: base64.b64decode(v) for k, v in e["keys"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyFileError(f"key file {p}: its recovery copy is damaged ({exc})") from None


async def repair_config(
    target: Target, key_file: str | Path | None, *, config_damaged: bool = False
) -> list[str]:
    """Write ``config`` and every missing ``keys/`` object back; return what was written.

    Sources, in order: ``recovery/`` in the repository, then the key file. An existing
    ``config`` is replaced only when the caller found it ``config_damaged`` (it did not
    open); the caller opens the repository afterwards to prove the repair."""
    where = target.describe()
    written: list[str] = []
    repo_keys = await wrapped_keys(target)
    cfg = await config_copy(target)
    file_keys: dict[str, bytes] = {}
    if key_file is not None:
        try:
            file_cfg, file_keys = copies_from_key_file(key_file, set(repo_keys))
            cfg = cfg or file_cfg
        except KeyFileError as exc:
            if cfg is None:
                raise RepositoryError(f"{where}: no recovery/config here, and {exc}") from None
    if cfg is None:
        raise RepositoryError(
            f"{where}: no recovery/config here and no key file to take a copy from"
        )
    have = {o.key[len(fmt.KEYS_PREFIX) :] async for o in target.list(fmt.KEYS_PREFIX)}
    for kid, raw in {**file_keys, **repo_keys}.items():
        if kid not in have:
            await target.put(f"{fmt.KEYS_PREFIX}{kid}", raw)
            written.append(f"{fmt.KEYS_PREFIX}{kid}")
    try:
        current = await target.get(fmt.CONFIG_KEY)
    except ObjectNotFound:
        current = None
    if current is None or (config_damaged and current != cfg):
        await target.put(fmt.CONFIG_KEY, cfg)
        written.append(fmt.CONFIG_KEY)
    return written

"""What an agent needs before it can run anything: its key and its repositories.

Used by the agent daemon (agent/runner.py) and by the repository tools (``mosaic-backup
repo …``), which run beside an agent with its config but never talk to NATS — so this
module imports nothing of the bus.
"""

from __future__ import annotations

import anyio

from shared.config import AgentConfig
from shared.errors import KeyFileError, WrongKeyError
from shared.repository.keys import KEEP_A_COPY, RepoKey, create_key_file, load_any_key_file
from shared.repository.repository import Repository, WriteOptions
from shared.targets import Target


def write_options(cfg: AgentConfig) -> WriteOptions:
    return WriteOptions(cfg.pack_size, cfg.zstd_level, cfg.index_every_packs)


async def prepare_key(
    cfg: AgentConfig, targets: dict[str, Target], passphrase: str | None = None
) -> tuple[RepoKey, bool]:
    """Load the master key; create it on first use (no repository on any target yet).

    Returns (key, created). A missing key file next to an existing repository is an
    error: a new key could never open the backups already there. ``passphrase`` (read
    by the entry point) opens a passphrase-protected key file, and protects a new one.
    A write-only key file (shared/repository/writeonly.py) is returned as loaded.
    """
    try:
        return load_any_key_file(cfg.key_file, passphrase), False
    except KeyFileError:
        if await anyio.Path(cfg.key_file).exists():
            raise
        for name, target in targets.items():
            if await Repository.exists(target):
                raise KeyFileError(
                    f"key file {cfg.key_file} does not exist, but target '{name}' "
                    f"({target.describe()}) holds a repository: restore your copy of the key "
                    "file to that path"
                ) from None
        return create_key_file(cfg.key_file, passphrase or None), True


async def check_repositories(cfg: AgentConfig, key: RepoKey, targets: dict[str, Target]) -> None:
    """Fail fast at start when the key does not open an existing repository."""
    for name, target in targets.items():
        check = getattr(target, "check", None)
        if check is not None:
            await check()
        if await Repository.exists(target):
            try:
                await Repository.open(target, key)
            except WrongKeyError:
                raise WrongKeyError(
                    f"key file {cfg.key_file} does not open the repository on target '{name}' "
                    f"({target.describe()}): wrong key file"
                ) from None


def key_notice(path: str) -> str:
    return f"Created a new repository key file at {path}. {KEEP_A_COPY}"

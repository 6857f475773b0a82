"""What an agent needs before it can run anything: its key and its repositories.

Used by the agent daemon (agent/runner.py) and by the repository tools (``mosaic-backup
repo …``), which run beside an agent with its config but never talk to NATS — so this
module imports nothing of the bus.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import anyio

from engine.keys.files import KEEP_A_COPY, RepoKey, create_key_file, load_any_key_file
from engine.repository import Repository, WriteOptions
from engine.storage.base import Target
from shared.config.agent import AgentConfig
from shared.errors import ConfigError, KeyFileError, WrongKeyError

log = logging.getLogger(__name__)


def write_options(cfg: AgentConfig) -> WriteOptions:
    return WriteOptions(cfg.pack_size, cfg.zstd_level, cfg.index_every_packs)


async def prepare_key(
    cfg: AgentConfig, targets: dict[str, Target], passphrase: str | None = None
) -> tuple[RepoKey, bool]:
    """Load the master key; create it on first use (no repository on any target yet).

    Returns (key, created). A missing key file next to an existing repository is an
    error: a new key could never open the backups already there. ``passphrase`` (read
    by the entry point) opens a passphrase-protected key file, and protects a new one.
    A write-only key file (engine/keys/writeonly.py) is returned as loaded.
    """
    try:
        return load_any_key_file(cfg.key_file, passphrase), False
    except KeyFileError:
        if await anyio.Path(cfg.key_file).exists():
            # Damaged, protected — or made by a concurrent first backup since we tried
            # (complete, see create_atomically): the second read tells which.
            return load_any_key_file(cfg.key_file, passphrase), False
        for name, target in targets.items():
            if await Repository.exists(target):
                # Another first backup may have made the key and the repository since
                # we looked: the key file is then complete (created_atomically).
                if await anyio.Path(cfg.key_file).exists():
                    return load_any_key_file(cfg.key_file, passphrase), False
                raise KeyFileError(
                    f"key file {cfg.key_file} does not exist, but target '{name}' "
                    f"({target.describe()}) holds a repository: restore your copy of the key "
                    "file to that path"
                ) from None
        return await anyio.to_thread.run_sync(create_atomically, cfg.key_file, passphrase or None)


def create_atomically(path: str, passphrase: str | None) -> tuple[RepoKey, bool]:
    """Create the key file so that nobody ever sees it half-written; (key, created).

    The key is written and fsynced under a temporary name in the same folder, then
    hard-linked to ``path``, which fails if ``path`` exists (O_EXCL semantics, unlike a
    rename, which would replace a key another process just made). A concurrent reader
    so finds either no file or the complete one, and of two simultaneous first backups
    the second uses the first one's key (created False) instead of failing.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.new-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        master = create_key_file(tmp, passphrase)
        try:
            os.link(tmp, final)
        except FileExistsError:
            return load_any_key_file(final, passphrase), False
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the new name survives a crash, as the key file's bytes do
    finally:
        os.close(dir_fd)
    return master, True


def prepare_state_dir(state_dir: str) -> list[str]:
    """Create the agent's ``state_dir`` with mode 0700 (its file caches list the host's
    file names); an existing one that others can read or enter is narrowed to 0700.
    Returns what was done, one line each, for the caller to show or log."""
    p = Path(state_dir)
    done: list[str] = []
    try:
        if not p.exists():
            p.mkdir(mode=0o700, parents=True)
            os.chmod(p, 0o700)  # mkdir's mode is masked by the umask
            return done
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            os.chmod(p, mode & 0o700)
            done.append(
                f"state_dir {p} was mode {mode:04o}, readable by others; narrowed it to "
                f"{mode & 0o700:04o}"
            )
    except OSError as exc:
        raise ConfigError(
            f"state_dir {p}: {exc.strerror}: cannot create it with mode 0700 (set "
            "state_dir in agent.toml to a folder this user may create)"
        ) from exc
    for line in done:
        log.warning("%s", line)
    return done


async def check_repositories(
    cfg: AgentConfig, key: RepoKey, targets: dict[str, Target]
) -> dict[str, str]:
    """Look at every target at start; return those that are down (name → one line).

    A key that does not open an existing repository stops the agent (WrongKeyError):
    every target of the host shares the key file, and what is wrong is the file. A
    target that cannot be reached or refuses the login does not: one broken target must
    not stop the datasets of the others (agent/target_health.py). It is logged here;
    the caller reports it in heartbeats and fails its jobs in one line.
    """
    from agent.target_health import PROBE_ERRORS, one_line, probe

    down: dict[str, str] = {}
    for name, target in targets.items():
        try:
            if await probe(target):
                await Repository.open(target, key)
        except WrongKeyError:
            raise WrongKeyError(
                f"key file {cfg.key_file} does not open the repository on target '{name}' "
                f"({target.describe()}): wrong key file"
            ) from None
        except PROBE_ERRORS as exc:
            down[name] = one_line(exc)
            log.warning(
                "target %s (%s) is down, starting without it: %s",
                name,
                target.describe(),
                down[name],
            )
    return down


def key_notice(path: str) -> str:
    return f"Created a new repository key file at {path}. {KEEP_A_COPY}"

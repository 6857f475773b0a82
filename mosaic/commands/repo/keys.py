"""``repo keys init|rotate|rewrap|export|write-only-export``: manage the repository keys.

These run on the agent's host with the agent's config, like the other ``repo`` tools,
because the key file lives there and nowhere else. This module is the entry point, so it
is where the environment is read: ``MOSAIC_PASSPHRASE`` unlocks a passphrase-protected
key file (as for ``agent run``), and ``--passphrase-from-env VAR`` names the variable
holding the passphrase for a key file being written — passphrases are never taken as
command-line arguments, which other users can read from the process list.

See engine/keys/ops.py for what rotating and rewrapping do and do not protect,
and engine/keys/writeonly.py (and the README's threat model) for write-only keys.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import anyio
from rich.console import Console

from agent.keysetup import write_options
from engine.keys.files import (
    KEEP_A_COPY,
    KEY_SIZE,
    PASSPHRASE_ENV,
    create_key_file,
    load_key_file,
)
from engine.keys.ops import export_key_file, rewrap, rotate, write_only_entry
from engine.keys.writeonly import WriteOnlyEntry, write_write_only_key
from engine.repository import Repository
from engine.storage.base import Target
from engine.storage.open import open_target
from mosaic.commands.repo import local_audit
from mosaic.commands.repo._common import common_args, target_from
from shared.config.agent import AgentConfig
from shared.config.load import load
from shared.errors import ConfigError, KeyFileError, WrongKeyError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = sub.add_parser("keys", help="manage the repository keys: init, rotate, rewrap, export")
    ks = keys.add_subparsers(dest="key_action", required=True, metavar="KEY_ACTION")

    p = ks.add_parser("init", help="create a new key file (before the agent first runs)")
    p.add_argument("--key-file", required=True, help="where to write it (must not exist)")
    _passphrase_arg(p, "protect the new key file with the passphrase held in VAR")
    p.set_defaults(func=init_cmd)

    p = ks.add_parser("rotate", help="make a new data key current; older backups stay readable")
    common_args(p)
    p.set_defaults(func=rotate_cmd)

    p = ks.add_parser(
        "rewrap",
        help="move every target of the config to a new key file (the old one stops working)",
    )
    p.add_argument("--config", required=True, help="the agent's agent.toml")
    p.add_argument(
        "--new-key-file",
        required=True,
        help="the new key file; created when it does not exist",
    )
    _passphrase_arg(
        p,
        f"passphrase for the new key file (default: none for a new file; ${PASSPHRASE_ENV} "
        "to open an existing protected one)",
    )
    p.set_defaults(func=rewrap_cmd)

    p = ks.add_parser("export", help="write a copy of the key file, for safe keeping")
    p.add_argument("--config", required=True, help="the agent's agent.toml")
    p.add_argument("--to", required=True, dest="export_to", help="new file to write")
    _passphrase_arg(p, "protect the copy with the passphrase held in VAR")
    p.set_defaults(func=export_cmd)

    p = ks.add_parser(
        "write-only-export",
        help="write a write-only key file: agents with it back up but cannot read any backup",
    )
    p.add_argument("--config", required=True, help="the agent.toml whose targets it covers")
    p.add_argument("--out", required=True, help="new file to write")
    p.set_defaults(func=write_only_export_cmd)


def _passphrase_arg(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--passphrase-from-env", metavar="VAR", default=None, help=text)


def _say(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _env_passphrase(var: str | None) -> str | None:
    """The passphrase in environment variable ``var`` (None when no variable is named)."""
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(
            f"--passphrase-from-env {var}: the environment variable {var} is not set or is "
            "empty; export it first"
        )
    return value


def _agent_key(cfg: AgentConfig) -> bytes:
    # A write-only key file is refused here with the one-line explanation (keys.py).
    return load_key_file(cfg.key_file, os.environ.get(PASSPHRASE_ENV))


def _wrong_key(cfg: AgentConfig, name: str, target: Target) -> WrongKeyError:
    return WrongKeyError(
        f"key file {cfg.key_file} does not open the repository on target '{name}' "
        f"({target.describe()}): wrong key file; nothing was changed"
    )


async def init_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    passphrase = _env_passphrase(args.passphrase_from_env)
    path = Path(args.key_file)
    create_key_file(path, passphrase)
    how = (
        f"protected by the passphrase in ${args.passphrase_from_env}"
        if passphrase
        else "not passphrase-protected: anyone who can read it can read every backup"
    )
    _say(out, f"Created a new key file at {path} ({how}).")
    _say(out, KEEP_A_COPY)
    return 0


async def rotate_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    cfg, target = target_from(args)
    try:
        master = _agent_key(cfg)
        try:
            repo = await Repository.open(
                target,
                master,
                options=write_options(cfg),
            )
        except WrongKeyError:
            raise _wrong_key(cfg, target.name, target) from None
        old = repo.keys.current
        kid = await rotate(repo, master)
        repository_id = repo.config.repository_id
    finally:
        await target.aclose()
    _say(
        out,
        f"target '{target.name}' ({target.describe()}): data key {kid.hex()} is now current "
        f"(was {old.hex()}). New backups are sealed with it; older backups stay readable.",
    )
    await local_audit.report(
        cfg,
        "keys_rotated",
        f"data key {kid.hex()} is current (was {old.hex()})",
        err,
        target=target.name,
        repository_id=repository_id,
    )
    return 0


async def rewrap_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    cfg = load(args.config, AgentConfig)
    old = _agent_key(cfg)
    new_path = Path(args.new_key_file)
    passphrase = _env_passphrase(args.passphrase_from_env)
    new_abs = await anyio.Path(new_path).absolute()
    new_exists = await new_abs.exists()
    if new_exists:
        new = load_key_file(new_path, passphrase or os.environ.get(PASSPHRASE_ENV))
    else:
        # Kept in memory until every target checked out, so a refused rewrap leaves no
        # stray key file behind; written (and fsynced) before anything is wrapped with it.
        new = os.urandom(KEY_SIZE)
    if new == old:
        raise KeyFileError(
            f"{new_path} holds the same master key as {cfg.key_file}: nothing to rewrap"
        )
    targets = {n: open_target(n, t) for n, t in cfg.targets.items()}
    rewrapped: list[str] = []
    try:
        pending: dict[str, int | None] = {}
        for name, target in targets.items():
            if not await Repository.exists(target):
                pending[name] = None
                continue
            try:
                pending[name] = await rewrap(target, old, new, dry_run=True)
            except WrongKeyError:
                raise _wrong_key(cfg, name, target) from None
        if not new_exists:
            create_key_file(new_path, passphrase, master=new)
            _say(err, f"Created the new key file {new_path}. {KEEP_A_COPY}")
        for name, target in targets.items():
            if pending[name] is None:
                _say(out, f"target '{name}' ({target.describe()}): no repository yet, skipped")
                continue
            n = await rewrap(target, old, new)
            _say(
                out,
                f"target '{name}' ({target.describe()}): rewrapped {n} wrapped key "
                "object(s) (keys/ and recovery/keys/)",
            )
            rewrapped.append(f"{name} ({n} wrapped key objects)")
    finally:
        for target in targets.values():
            await target.aclose()
    await local_audit.report(
        cfg,
        "keys_rewrapped",
        f"data keys wrapped by the master key of {new_abs} on {', '.join(rewrapped) or '-'}",
        err,
    )
    _say(
        out,
        f'Now set key_file = "{new_abs}" in {args.config} and restart the agent: '
        f"{cfg.key_file} no longer opens these repositories. Rewrapping keeps the data keys; "
        "if the old key file leaked, also run `repo keys rotate` so new backups use a data "
        "key it never wrapped.",
    )
    return 0


async def export_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    cfg = load(args.config, AgentConfig)
    master = _agent_key(cfg)
    passphrase = _env_passphrase(args.passphrase_from_env)
    dest = export_key_file(master, args.export_to, passphrase)
    how = (
        f"protected by the passphrase in ${args.passphrase_from_env}"
        if passphrase
        else "not passphrase-protected: anyone who can read it can read every backup"
    )
    _say(out, f"Wrote a copy of {cfg.key_file} to {dest} ({how}).")
    _say(out, KEEP_A_COPY)
    await local_audit.report(
        cfg, "key_exported", f"a copy of the master key to {dest} ({how})", err
    )
    return 0


async def write_only_export_cmd(args: argparse.Namespace, out: Console, err: Console) -> int:
    cfg = load(args.config, AgentConfig)
    master = _agent_key(cfg)
    if await anyio.Path(args.out).exists():
        raise KeyFileError(f"key file {args.out} exists already; refusing to overwrite it")
    targets = {n: open_target(n, t) for n, t in cfg.targets.items()}
    entries: dict[str, WriteOnlyEntry] = {}
    try:
        for name, target in targets.items():
            if not await Repository.exists(target):
                _say(err, f"target '{name}' ({target.describe()}): no repository yet, skipped")
                continue
            try:
                repo = await Repository.open(target, master, options=write_options(cfg))
            except WrongKeyError:
                raise _wrong_key(cfg, name, target) from None
            entry = await write_only_entry(repo, master)
            entries.setdefault(entry.repository_id, entry)  # a replica: same repository
            _say(out, f"target '{name}' ({target.describe()}): repository {entry.repository_id}")
    finally:
        for target in targets.values():
            await target.aclose()
    if not entries:
        raise ConfigError(
            f"{args.config}: no target holds a repository yet; run one backup with the full "
            "key file first (it creates the repository), then export the write-only key"
        )
    dest = write_write_only_key(args.out, list(entries.values()))
    await local_audit.report(
        cfg,
        "write_only_key_exported",
        f"write-only key file {dest} for repositories {', '.join(sorted(entries))}",
        err,
    )
    _say(
        out,
        f"Wrote the write-only key file {dest}. An agent whose key_file points at it backs "
        "up with deduplication but cannot read any backup; restores, verify --read-data, "
        f"prune and drills need {cfg.key_file}.",
    )
    return 0

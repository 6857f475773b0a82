"""What every ``repo`` tool shares: the ``--config``/``--target`` options and opening the
chosen target and its repository with the agent's config and key."""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agent.keysetup import write_options
from engine.keys.files import PASSPHRASE_ENV, load_key_file
from engine.maintenance.recovery_copy import remember_in_key_file
from engine.repository import Repository
from engine.storage.base import Target
from engine.storage.open import open_target
from shared.config.agent import AgentConfig
from shared.config.load import load
from shared.errors import ConfigError, WrongKeyError


def common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the agent's agent.toml")
    p.add_argument(
        "--target", default=None, help="target name from the config (default: the only one)"
    )


def target_from(args: argparse.Namespace) -> tuple[AgentConfig, Target]:
    cfg = load(args.config, AgentConfig)
    name = args.target
    if name is None:
        if len(cfg.targets) != 1:
            raise ConfigError(
                f"{args.config} has targets {', '.join(sorted(cfg.targets))}: choose one "
                "with --target"
            )
        name = next(iter(cfg.targets))
    if name not in cfg.targets:
        raise ConfigError(
            f"{args.config} has no target '{name}' (it has: {', '.join(sorted(cfg.targets))})"
        )
    return cfg, open_target(name, cfg.targets[name])


@asynccontextmanager
async def opened(args: argparse.Namespace) -> AsyncIterator[Repository]:
    """The repository on the chosen target, opened with the agent's key."""
    cfg, target = target_from(args)
    try:
        key = load_key_file(cfg.key_file, os.environ.get(PASSPHRASE_ENV))
        try:
            repo = await Repository.open(
                target,
                key,
                options=write_options(cfg),
            )
        except WrongKeyError:
            raise WrongKeyError(
                f"key file {cfg.key_file} does not open the repository at "
                f"{target.describe()}: wrong key file"
            ) from None
        remember_in_key_file(cfg.key_file, repo)
        yield repo
    finally:
        await target.aclose()

"""``mosaic-backup install-systemd``: write the unit files (and timers) of
:mod:`mosaic.setup.systemd` for this host's agent and/or coordinator."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread

from mosaic.setup.systemd import (
    VAR_LIB,
    agent_unit,
    command,
    coordinator_state,
    coordinator_unit,
    single_host_units,
    write_units,
)
from shared.config.agent import AgentConfig
from shared.config.coordinator import CoordinatorConfig
from shared.config.load import load
from shared.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

HELP = "write systemd units (and timers) for this host"


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="/etc/systemd/system", help="where to write the units")
    p.add_argument("--agent-config", default=None, help="write the agent service for it")
    p.add_argument("--coordinator-config", default=None, help="write the coordinator service")
    p.add_argument(
        "--single-host",
        nargs="+",
        default=None,
        metavar="PATH",
        help="write daily/weekly/monthly timers backing up PATH with the agent "
        "config's repository, without a coordinator (needs --agent-config)",
    )
    p.add_argument(
        "--restore-to",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder the agent may restore into (repeat it; the rest of the system "
        "stays read-only for the agent)",
    )
    p.add_argument(
        "--snapshots",
        action="store_true",
        help="let the agent reach devices and mount (LVM/ZFS/btrfs snapshots)",
    )
    p.add_argument(
        "--passphrase-file",
        default=None,
        metavar="FILE",
        help="a root-owned file holding the key file's passphrase, handed to the agent "
        "as the credential 'passphrase' (instead of MOSAIC_PASSPHRASE)",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing unit files")


def _collides(agent: AgentConfig, coordinator: CoordinatorConfig) -> None:
    """The coordinator's dynamic user owns its whole state folder: the agent's state
    (file caches that list the host's file names) must not be inside it."""
    folder = coordinator_state(coordinator)
    state = VAR_LIB / folder if folder is not None else None
    if state is not None and Path(agent.state_dir).is_relative_to(state):
        raise ConfigError(
            f"the agent's state_dir {agent.state_dir} is inside the coordinator's state "
            f'folder {state}: set state_dir = "/var/lib/mosaic-backup-agent" in agent.toml'
        )


async def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    exe = command()
    units: dict[str, str] = {}
    agent = coordinator = None
    if args.agent_config:
        agent = load(args.agent_config, AgentConfig)
    if args.coordinator_config:
        coordinator = load(args.coordinator_config, CoordinatorConfig)
    if agent is not None and coordinator is not None:
        _collides(agent, coordinator)
    if agent is not None and not args.single_host:
        units["mosaic-backup-agent.service"] = agent_unit(
            exe,
            args.agent_config,
            agent,
            restore_to=args.restore_to,
            snapshots=args.snapshots,
            passphrase_file=args.passphrase_file,
        )
    if coordinator is not None:
        units["mosaic-backup-coordinator.service"] = coordinator_unit(
            exe, args.coordinator_config, coordinator
        )
    if args.single_host:
        if not args.agent_config:
            raise ConfigError("--single-host needs --agent-config (the repository to use)")
        units.update(single_host_units(exe, args.agent_config, args.single_host))
    if not units:
        raise ConfigError("nothing to write: give --agent-config and/or --coordinator-config")
    for path in await anyio.to_thread.run_sync(write_units, Path(args.dir), units, args.force):
        out.print(f"wrote {path}")
    enable = [n for n in units if n.endswith(".timer")] or list(units)
    out.print(f"now run: systemctl daemon-reload && systemctl enable --now {' '.join(enable)}")
    return 0

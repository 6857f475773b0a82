"""``mosaic-backup install-systemd``: unit files for the agent, the coordinator, and the
strategy's daily/weekly/monthly timers for a single host without a coordinator.

Units are written, never enabled: the command prints the ``systemctl`` lines to run, so
an operator sees what will start. The agent runs as root with a few hardening options
that still let it read every file it backs up and run dump tools; the coordinator needs
nothing of the host and runs as a dynamic user with a read-only system.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import anyio.to_thread
from rich.console import Console

from shared.errors import ConfigError

# The strategy: daily incremental 02:00, weekly full Sunday 01:00, monthly archive on the
# first Sunday 00:00 (systemd calendar syntax; all UTC).
TIMERS = {
    "daily": ("*-*-* 02:00:00 UTC", "incremental"),
    "weekly": ("Sun *-*-* 01:00:00 UTC", "full"),
    "monthly": ("Sun *-*-01..07 00:00:00 UTC", "full"),
}


def command() -> str:
    """The installed ``mosaic-backup`` next to this Python, else ``python -m``."""
    script = Path(sys.executable).parent / "mosaic-backup"
    if script.is_file():
        return str(script)
    found = shutil.which("mosaic-backup")
    return found or f"{sys.executable} -m mosaic.cli"


# Hardening both long-running services share.
_HARDENING = """NoNewPrivileges=yes
PrivateTmp=yes
{extra}ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
"""


def _daemon(description: str, exec_start: str, identity: str, extra: str, tail: str) -> str:
    return f"""[Unit]
Description={description}
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart={exec_start}
Restart=always
RestartSec=5
{identity}{_HARDENING.format(extra=extra)}{tail}
[Install]
WantedBy=multi-user.target
"""


# An append-only local repository (`chattr +a` folders) holds only while the agent cannot
# lift the attribute. A maintenance-role agent that prunes such a repository on this host
# needs the capability: delete these two lines from its unit.
_NO_IMMUTABLE = """# Append-only local targets: never let the agent lift chattr +a.
CapabilityBoundingSet=~CAP_LINUX_IMMUTABLE
"""


def agent_unit(exe: str, config: str) -> str:
    return _daemon(
        "mosaic-backup agent (receives backup jobs over NATS)",
        f"{exe} agent run --config {config}",
        "# Root: it must read what it backs up, run dump tools and restore owners.\nUser=root\n",
        "",
        _NO_IMMUTABLE,
    )


def coordinator_unit(exe: str, config: str) -> str:
    return _daemon(
        "mosaic-backup coordinator (schedules, catalog, alerts, status API)",
        f"{exe} coordinator run --config {config}",
        "DynamicUser=yes\nStateDirectory=mosaic-backup\n",
        "PrivateDevices=yes\nProtectSystem=strict\nProtectHome=yes\n",
        "MemoryDenyWriteExecute=yes\n",
    )


def single_host_units(exe: str, config: str, paths: list[str]) -> dict[str, str]:
    """One service + timer per tier, backing up ``paths`` with ``repo backup``."""
    units: dict[str, str] = {}
    for tier, (calendar, kind) in TIMERS.items():
        runs = "\n".join(
            f"ExecStart={exe} repo backup --config {config} --type {kind} {p}" for p in paths
        )
        units[f"mosaic-backup-{tier}.service"] = f"""[Unit]
Description=mosaic-backup {tier} backup ({kind})
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
{runs}
NoNewPrivileges=yes
PrivateTmp=yes
{_NO_IMMUTABLE}"""
        units[f"mosaic-backup-{tier}.timer"] = f"""[Unit]
Description=mosaic-backup {tier} backup

[Timer]
OnCalendar={calendar}
Persistent=true
RandomizedDelaySec=60

[Install]
WantedBy=timers.target
"""
    return units


def write_units(folder: Path, units: dict[str, str], force: bool) -> list[Path]:
    """Write every unit or none: existing files are refused unless ``force``."""
    existing = [n for n in units if (folder / n).exists()]
    if existing and not force:
        raise ConfigError(f"{folder} already has {', '.join(existing)} (use --force to replace)")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in units.items():
        (folder / name).write_text(text)
        written.append(folder / name)
    return written


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("install-systemd", help="write systemd units (and timers) for this host")
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
    p.add_argument("--force", action="store_true", help="overwrite existing unit files")
    p.set_defaults(func=install)


async def install(args: argparse.Namespace, out: Console, err: Console) -> int:
    exe = command()
    units: dict[str, str] = {}
    if args.agent_config and not args.single_host:
        units["mosaic-backup-agent.service"] = agent_unit(exe, args.agent_config)
    if args.coordinator_config:
        units["mosaic-backup-coordinator.service"] = coordinator_unit(exe, args.coordinator_config)
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

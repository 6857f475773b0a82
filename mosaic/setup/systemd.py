"""``mosaic-backup install-systemd``: unit files for the agent, the coordinator, and the
strategy's daily/weekly/monthly timers for a single host without a coordinator.

Units are written, never enabled: the command prints the ``systemctl`` lines to run, so
an operator sees what will start. The units are derived from the configs they run, so
that they run as shipped (docs/deployment.md):

- The coordinator needs nothing of the host. It runs as a dynamic user on a read-only
  system, so it cannot read the root-owned 0600 files ``nats-config`` and ``pki`` write,
  nor its own config: systemd hands each of them over with ``LoadCredential=`` (copied
  into ``$CREDENTIALS_DIRECTORY``, readable by that user only) and the config loader
  reads the copies (:data:`shared.config.load.CREDENTIAL_FIELDS`).
- The agent runs as root (it reads everything it backs up, runs dump tools and restores
  owners) with the rest of the system read-only: only its state folder, its key file's
  folder, its local targets and the restore destinations named here are writable.
  ``--snapshots`` keeps /dev and the mount calls that LVM/ZFS/btrfs snapshots need.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from shared.config.agent import AgentConfig
from shared.config.coordinator import CoordinatorConfig
from shared.config.load import CREDENTIAL_FIELDS
from shared.config.targets import LocalTargetConfig
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


# Hardening both long-running services share (measured: docs/deployment.md).
_HARDENING = """NoNewPrivileges=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallErrorNumber=EPERM
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
"""


def _daemon(description: str, exec_start: str, service: str) -> str:
    return f"""[Unit]
Description={description}
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart={exec_start}
Restart=always
RestartSec=5
{service}{_HARDENING}
[Install]
WantedBy=multi-user.target
"""


# An append-only local repository (`chattr +a` folders) holds only while the agent cannot
# lift the attribute. A maintenance-role agent that prunes such a repository on this host
# needs the capability: delete these two lines from its unit.
_NO_IMMUTABLE = """# Append-only local targets: never let the agent lift chattr +a.
CapabilityBoundingSet=~CAP_LINUX_IMMUTABLE
"""

# Root powers no backup, dump or restore uses (the agent keeps reading any file, chown,
# setuid for dump tools, and CAP_SYS_ADMIN for snapshot mounts).
_AGENT_DROPS = (
    "CAP_SYS_MODULE CAP_SYS_BOOT CAP_SYS_TIME CAP_SYS_PTRACE CAP_SYS_RAWIO CAP_SYS_PACCT "
    "CAP_SYS_TTY_CONFIG CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON CAP_SYSLOG "
    "CAP_WAKE_ALARM CAP_BLOCK_SUSPEND CAP_AUDIT_CONTROL CAP_AUDIT_READ CAP_MAC_ADMIN "
    "CAP_MAC_OVERRIDE CAP_LEASE"
)

VAR_LIB = Path("/var/lib")


def _absolute(field: str, value: str) -> str:
    if not value.startswith("/"):
        raise ConfigError(
            f"{field} = {value!r} is relative: a service runs in /, write it as an absolute path"
        )
    return value


def _state_directory(path: str) -> str | None:
    """``path`` relative to /var/lib, for ``StateDirectory=``; None when elsewhere."""
    p = Path(path)
    return str(p.relative_to(VAR_LIB)) if p.is_relative_to(VAR_LIB) and p != VAR_LIB else None


def agent_writable(cfg: AgentConfig, restore_to: list[str]) -> tuple[str | None, list[str]]:
    """(StateDirectory= for the state folder, or None; ReadWritePaths= entries) — all the
    agent ever writes: its state, its key file's folder (the key is created on first use
    and records repository ids), its local targets, the restore destinations."""
    state = _state_directory(_absolute("state_dir", cfg.state_dir))
    paths = [] if state is not None else [cfg.state_dir]
    paths.append(str(Path(_absolute("key_file", cfg.key_file)).parent))
    paths += [t.path for t in cfg.targets.values() if isinstance(t, LocalTargetConfig)]
    paths += [_absolute("--restore-to", p) for p in restore_to]
    return state, list(dict.fromkeys(paths))


def agent_unit(
    exe: str,
    config_path: str,
    cfg: AgentConfig,
    *,
    restore_to: list[str] = [],  # noqa: B006 (never mutated)
    snapshots: bool = False,
    passphrase_file: str | None = None,
) -> str:
    state, paths = agent_writable(cfg, restore_to)
    lines = [
        "# Root: it must read what it backs up, run dump tools and restore owners.",
        "User=root",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
    ]
    if state is not None:
        lines += [f"StateDirectory={state}", "StateDirectoryMode=0700"]
    # "-": a folder that does not exist yet does not stop the unit; the agent then reports
    # that target down (create the folder, then restart it).
    lines += [f"ReadWritePaths=-{p}" for p in paths]
    if snapshots:
        lines += ["# LVM/ZFS/btrfs snapshots: devices and mount(2).", "PrivateDevices=no"]
        lines.append("SystemCallFilter=@system-service @mount")
    else:
        lines += ["PrivateDevices=yes", "SystemCallFilter=@system-service"]
    if passphrase_file is not None:
        lines.append(f"LoadCredential=passphrase:{_absolute('--passphrase-file', passphrase_file)}")
    lines.append(f"CapabilityBoundingSet=~{_AGENT_DROPS}")
    return _daemon(
        "mosaic-backup agent (receives backup jobs over NATS)",
        f"{exe} agent run --config {_absolute('--agent-config', config_path)}",
        "\n".join(lines) + "\n" + _NO_IMMUTABLE,
    )


def coordinator_credentials(config_path: str, cfg: CoordinatorConfig) -> dict[str, str]:
    """Credential name → root-owned file: the config itself and every file it names."""
    creds = {"coordinator.toml": _absolute("--coordinator-config", config_path)}
    for field in CREDENTIAL_FIELDS:
        value = getattr(cfg, field)
        if value is not None:
            creds[field] = _absolute(field, value)
    return creds


def coordinator_state(cfg: CoordinatorConfig) -> str | None:
    """The StateDirectory= that holds an SQLite catalog (the only file the coordinator
    writes); None with a PostgreSQL catalog (it then writes nothing on this host)."""
    scheme, _, rest = cfg.catalog.url.partition("://")
    if scheme.lower() != "sqlite":
        return None
    path = rest.partition("?")[0]
    state = _state_directory(str(Path(path).parent))
    if state is None:
        raise ConfigError(
            f"catalog url: the SQLite catalog {path} is outside /var/lib; the coordinator "
            "unit may write only its state folder: use "
            "sqlite:///var/lib/mosaic-backup/catalog.db"
        )
    return state


def coordinator_unit(exe: str, config_path: str, cfg: CoordinatorConfig) -> str:
    creds = coordinator_credentials(config_path, cfg)
    state = coordinator_state(cfg)
    lines = [
        "DynamicUser=yes",
        *([f"StateDirectory={state}"] if state is not None else []),
        "# Root-owned 0600 files, copied for this service only into $CREDENTIALS_DIRECTORY;",
        "# the config's file fields are read from there (docs/deployment.md).",
        *(f"LoadCredential={name}:{path}" for name, path in creds.items()),
        "PrivateDevices=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "PrivateUsers=yes",
        "PrivateIPC=yes",
        "UMask=0077",
        "CapabilityBoundingSet=",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged",
    ]
    return _daemon(
        "mosaic-backup coordinator (schedules, catalog, alerts, status API)",
        f"{exe} coordinator run --config ${{CREDENTIALS_DIRECTORY}}/coordinator.toml",
        "\n".join(lines) + "\n",
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

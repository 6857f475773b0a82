"""``[inventory]`` in agent.toml and ``[coverage]`` in coordinator.toml: coverage discovery.

The agent inventories its host (agent/inventory/) and publishes what it found; the
coordinator matches it against the configured datasets (coordinator/coverage.py).
Both sections refuse unknown fields, like every section.
"""

from __future__ import annotations

import fnmatch
from typing import Annotated

import msgspec

from shared.config.types import PositiveFloat

# The item kinds of shared/wire/inventory.py (kept here too: config must not import wire).
ITEM_KINDS = (
    "postgres",
    "mariadb",
    "redis",
    "docker_volume",
    "docker_container",
    "compose_project",
    "config_path",
    "systemd_unit",
    "certificate",
)

DEFAULT_CONFIG_PATHS = [
    "/etc/nginx",
    "/etc/letsencrypt",
    "/etc/ssh",
    "/opt/*/docker-compose*.yml",
    "/opt/*/docker-compose*.yaml",
    "/opt/*/compose*.yml",
    "/opt/*/compose*.yaml",
]
DEFAULT_SYSTEMD_DIRS = ["/etc/systemd/system"]
DEFAULT_CERT_PATHS = ["/etc/letsencrypt/live", "/etc/nginx"]


class InventoryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[inventory]`` (agent.toml): what the agent looks for on its host, and how often.

    - ``config_paths``: files or folders (globs allowed) reported when they exist.
    - ``systemd_dirs``: folders whose unit files (not links) are the host's own units.
    - ``cert_paths``: files or folders searched for PEM/DER certificates.
    - ``proc_root``: where the process table is (``/proc``; another root in a container).
    - ``docker_url``: the docker daemon asked for containers, volumes, compose projects.
    - ``postgres_user``: the role the agent lists a cluster's databases as (password from
      the agent's environment, PGPASSWORD or ~/.pgpass, like the postgres source).
    """

    enabled: bool = True
    interval_s: PositiveFloat = 3600.0
    config_paths: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_CONFIG_PATHS))
    systemd_dirs: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_SYSTEMD_DIRS))
    cert_paths: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_CERT_PATHS))
    proc_root: str = "/proc"
    docker_url: str = "unix:///var/run/docker.sock"
    postgres_user: str = "postgres"


def split_ignore(entry: str) -> tuple[str, str, str]:
    """``agent:kind:key-glob`` → its three globs (the key may contain ``:``)."""
    parts = entry.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(
            f"field ignore: entry {entry!r} is not AGENT:KIND:KEY (globs allowed, e.g. "
            '"web1:docker_volume:tmp-*" or "*:config_path:/etc/ssh")'
        )
    agent, kind, key = parts
    if not any(fnmatch.fnmatchcase(k, kind) for k in ITEM_KINDS):
        raise ValueError(
            f"field ignore: entry {entry!r}: kind {kind!r} matches no item kind "
            f"(use one of {', '.join(ITEM_KINDS)}, or *)"
        )
    return agent, kind, key


class CoverageConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[coverage]`` (coordinator.toml): what the agents' inventories may leave uncovered.

    - ``ignore``: ``"AGENT:KIND:KEY"`` globs (fnmatch, case-sensitive) of items that need
      no dataset; they are still listed, marked ignored. An entry that matches no item of
      any inventory held is reported by ``status``.
    - ``cert_warn_days``: a certificate expiring within this many days (or expired)
      raises ``certificate_expiring``.
    """

    ignore: list[str] = []
    cert_warn_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 14

    def __post_init__(self) -> None:
        for entry in self.ignore:
            split_ignore(entry)

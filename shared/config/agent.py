"""``agent.toml``: who this agent is, where NATS is, its key, its targets and hooks."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.config.inventory import InventoryConfig
from shared.config.nats import NatsClientConfig
from shared.config.priority import PriorityConfig
from shared.config.targets import TargetConfig
from shared.config.types import Name, PositiveFloat


class HookConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[hooks.DATASET]`` in agent.toml: shell commands around that dataset's backups.

    Hooks live in the agent's own config, never in jobs, so whoever can publish a job
    cannot make a host run a command. ``pre`` runs in order before the backup; a failure
    or a timeout fails the job (with the tail of its stderr). ``post`` runs afterwards,
    also after a failure, with MOSAIC_RESULT=success|failure; its failure is logged.
    """

    pre: list[str] = []
    post: list[str] = []
    timeout_s: PositiveFloat = 600.0


class AgentConfig(
    NatsClientConfig, frozen=True, kw_only=True, forbid_unknown_fields=True, weakref=True
):
    """``agent.toml``: who this agent is, where NATS is (the fields of
    :class:`NatsClientConfig`), its key and its targets.

    (``weakref``: :func:`is_set` remembers which keys the file itself set.)"""

    name: Name
    # ``nats_url``: the repository tools publish their audit events there only when the
    # file sets it (see ``audit_plain_nats``): a default must never send them to a
    # server nobody chose.
    # The repository key file, or a write-only key file (`repo keys write-only-export`):
    # with one the agent backs up but cannot restore, verify data, prune or drill.
    key_file: str
    targets: dict[Name, TargetConfig]
    ack_wait_s: PositiveFloat = 30.0
    progress_interval_s: PositiveFloat = 2.0
    pack_size: Annotated[int, msgspec.Meta(ge=1 << 16, le=1 << 30)] = 4 << 20
    zstd_level: Annotated[int, msgspec.Meta(ge=1, le=22)] = 3
    # packs uploaded between index checkpoints: a killed backup re-uploads at most these
    index_every_packs: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 16
    hooks: dict[Name, HookConfig] = {}
    # Seconds between heartbeats (name, host, version, running job, targets' free space);
    # the coordinator alerts when three in a row are missing.
    heartbeat_interval_s: PositiveFloat = 30.0
    # The agent's own small state (snapshots in use, so a crashed agent removes them at
    # its next start). Created when first needed, mode 0700.
    state_dir: str = "/var/lib/mosaic-backup/agent"
    # Repository tools (``repo keys …``, ``repo prune``) publish an audit event to
    # ``nats_url`` only over authenticated NATS (user + password file, NKEY, or TLS);
    # true allows plain, unauthenticated NATS too (a trusted server on loopback).
    audit_plain_nats: bool = False
    # Coverage discovery: what the agent inventories on its host and how often
    # (shared/config/inventory.py); off unless the file has an ``[inventory]`` table.
    inventory: InventoryConfig | None = None
    # ``[priority]``: nice / ionice of the agent and its dump processes (unset: unchanged)
    priority: PriorityConfig = PriorityConfig()
    # Folders a restore job may write into (the destination must be one of them or
    # inside one); empty: anywhere, as before this field existed (docs/security.md).
    restore_roots: list[str] = []

    def __post_init__(self) -> None:
        super().__post_init__()  # nats_url: every server of the list is a NATS URL
        for root in self.restore_roots:
            if not root.startswith("/"):
                raise ValueError(
                    f"field restore_roots: {root!r} is not an absolute path; write folders "
                    'like restore_roots = ["/srv/restore"]'
                )

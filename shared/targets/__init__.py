"""Storage targets: bytes at keys, one module per kind, one factory.

Retry, limits and (later) tracing wrap a target from outside here in :func:`open_target`,
not inside each backend.
"""

from __future__ import annotations

from shared.config import LocalTargetConfig, S3TargetConfig, SftpTargetConfig, TargetConfig
from shared.targets.base import ObjectInfo, SpaceInfo, Target
from shared.targets.local import LocalTarget

__all__ = ["ObjectInfo", "SpaceInfo", "Target", "open_target"]


def open_target(name: str, cfg: TargetConfig) -> Target:
    """Build the target named ``name`` from its config section."""
    if isinstance(cfg, LocalTargetConfig):
        return LocalTarget(name, cfg.path, append_only=cfg.append_only)
    if isinstance(cfg, S3TargetConfig):
        from shared.targets.s3 import S3Target

        return S3Target(name, cfg)
    if isinstance(cfg, SftpTargetConfig):
        from shared.targets.sftp import SftpTarget

        return SftpTarget(name, cfg)
    raise TypeError(f"unknown target config {type(cfg).__name__}")

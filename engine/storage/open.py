"""Storage targets: bytes at keys, one module per kind, one factory.

Retry, limits and (later) tracing wrap a target from outside here in :func:`open_target`,
not inside each backend (restic's ``wrapBackend``). Remote targets (S3, SFTP) get the
read retries of :mod:`engine.storage.retry`; a local disk does not: its reads have no
transient network faults to outlast, and the restore picks its parallelism by knowing a
:class:`LocalTarget` when it sees one.
"""

from __future__ import annotations

from engine.storage.base import ObjectInfo, SpaceInfo, Target
from engine.storage.local import LocalTarget
from engine.storage.retry import DEFAULT_POLICY, RetryingTarget, RetryPolicy
from shared.config.targets import LocalTargetConfig, S3TargetConfig, SftpTargetConfig, TargetConfig

__all__ = ["ObjectInfo", "RetryPolicy", "SpaceInfo", "Target", "open_target", "unwrap"]


def open_target(name: str, cfg: TargetConfig, *, retry: RetryPolicy = DEFAULT_POLICY) -> Target:
    """Build the target named ``name`` from its config section, with its wrappers."""
    if isinstance(cfg, LocalTargetConfig):
        return LocalTarget(name, cfg.path, append_only=cfg.append_only)
    if isinstance(cfg, S3TargetConfig):
        from engine.storage.s3 import S3Target

        return RetryingTarget(S3Target(name, cfg), retry)
    if isinstance(cfg, SftpTargetConfig):
        from engine.storage.sftp import SftpTarget

        return RetryingTarget(SftpTarget(name, cfg), retry)
    raise TypeError(f"unknown target config {type(cfg).__name__}")


def unwrap(target: Target) -> Target:
    """The backend under any wrappers (for backend-specific checks, e.g. in tests)."""
    while isinstance(target, RetryingTarget):
        target = target.inner
    return target

"""The one factory of storage targets: config section → backend → its wrappers.

Wrappers go on here, from outside, never inside a backend (restic's ``wrapBackend``).
Today there is one: remote targets (S3, SFTP) get the read retries of
:mod:`engine.storage.retry`; a local disk does not (its reads have no transient network
faults to outlast). A section that sets a rate limit (``upload_limit``,
``download_limit``, ``limit_schedule``) gets :mod:`engine.storage.ratelimit` outermost,
one budget per target for all its transfers. Tracing is not a wrapper: spans are opened
per pack upload and per job (engine.backup.pipeline, shared.tracing), where they say
something. What a target
can do (append-only, local disk) is asked through ``target.capabilities``.
"""

from __future__ import annotations

from engine.storage.base import ObjectInfo, SpaceInfo, Target
from engine.storage.local import LocalTarget
from engine.storage.ratelimit import RateLimitedTarget, rate_limited
from engine.storage.retry import DEFAULT_POLICY, RetryingTarget, RetryPolicy
from shared.config.targets import LocalTargetConfig, S3TargetConfig, SftpTargetConfig, TargetConfig

__all__ = ["ObjectInfo", "RetryPolicy", "SpaceInfo", "Target", "open_target", "unwrap"]


def open_target(name: str, cfg: TargetConfig, *, retry: RetryPolicy = DEFAULT_POLICY) -> Target:
    """Build the target named ``name`` from its config section, with its wrappers."""
    return rate_limited(_backend(name, cfg, retry), cfg.rate_plan())


def _backend(name: str, cfg: TargetConfig, retry: RetryPolicy) -> Target:
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
    while isinstance(target, RetryingTarget | RateLimitedTarget):
        target = target.inner
    return target

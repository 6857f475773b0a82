"""Replication: copy a repository from one target to another as ciphertext.

Why it can be this simple: a repository is self-describing and every object in it is
already sealed, so a copy needs no key and re-encrypts nothing — the replica opens with
the same key file and restores byte-identical. Object names are content-addressed (packs)
or unique (index segments, manifests), so an object present on both sides with the same
size is the same object and is skipped; a second run copies nothing.

Why the order matters: a reader of the destination (a restore, a catalog rebuild) must
never see a manifest whose packs or index are missing. So the source is listed
manifests-first (any manifest seen then already has its packs and index on the source),
and copied in dependency order with a barrier between phases: ``keys/`` and ``config``,
then ``data/``, then ``index/``, then ``manifests/``. A replication killed at any point
leaves a destination whose manifests all restore. ``locks/`` are never copied.

``keys/`` and ``config`` are compared by content, not size: a rewrap rewrites keys in
place with the same size. A destination holding another repository (a different config
and no data key in common) is refused before anything is written; a differing config of
the *same* repository (a key rotation on the source) is replaced after its keys arrive.

:func:`lag` measures how far a destination is behind, per dataset when given the source
opened with its key (manifests are sealed: datasets and times need the key).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio

from engine.format import spec as fmt
from engine.progress import Progress, ProgressFn, no_progress
from engine.repository import Repository
from engine.storage.base import Target
from shared.errors import ObjectNotFound, RepositoryError
from shared.tasks import task_group

CONCURRENCY = 4
# Copy phases in dependency order; config is handled between keys and data.
PHASES = (
    fmt.KEYS_PREFIX,
    fmt.RECOVERY_PREFIX,
    fmt.DATA_PREFIX,
    fmt.INDEX_PREFIX,
    fmt.MANIFESTS_PREFIX,
)
BY_CONTENT = (fmt.KEYS_PREFIX, fmt.RECOVERY_PREFIX)


class ReplicationError(RepositoryError):
    """The destination cannot take this repository (it holds another one)."""

    code = "repository.replication"


@dataclass
class PrefixStats:
    copied: int = 0
    copied_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    vanished: int = 0  # listed on the source, deleted there before the copy (a prune)


@dataclass
class ReplicationReport:
    source: str
    destination: str
    dry_run: bool
    prefixes: dict[str, PrefixStats] = field(
        default_factory=lambda: {p: PrefixStats() for p in (PHASES[0], fmt.CONFIG_KEY, *PHASES[1:])}
    )

    @property
    def copied(self) -> int:
        return sum(s.copied for s in self.prefixes.values())

    @property
    def copied_bytes(self) -> int:
        return sum(s.copied_bytes for s in self.prefixes.values())


@dataclass(frozen=True)
class LagInfo:
    """How far ``dst`` is behind for one dataset (``"*"`` when datasets are unknown)."""

    dataset: str
    missing: tuple[str, ...]  # backup ids on the source, not (yet) on the destination
    lag_s: float | None  # now − finished_at of the oldest missing one; None without key


async def _sizes(target: Target, prefix: str) -> dict[str, int]:
    return {o.key: o.size async for o in target.list(prefix)}


async def _check_config(src: Target, dst: Target, src_keys: set[str]) -> tuple[bytes, bool]:
    """The source's config and whether the destination has one (then of the same
    repository); raises if the destination holds another repository."""
    config = await src.get(fmt.CONFIG_KEY)
    try:
        theirs = await dst.get(fmt.CONFIG_KEY)
    except ObjectNotFound:
        return config, False
    if theirs != config and not src_keys & set(await _sizes(dst, fmt.KEYS_PREFIX)):
        raise _other_repository(src, dst)
    return config, True


def _other_repository(src: Target, dst: Target) -> ReplicationError:
    return ReplicationError(
        f"{dst.describe()} holds another repository than {src.describe()} (different "
        "config, no data key in common): refusing to replicate into it"
    )


async def replicate(
    src: Target,
    dst: Target,
    *,
    dry_run: bool = False,
    report: ProgressFn = no_progress,
    concurrency: int = CONCURRENCY,
) -> ReplicationReport:
    """Copy every object of the repository on ``src`` that ``dst`` lacks (see module doc).

    With ``dry_run`` nothing is written; the report says what would be copied.
    ``report`` receives bytes and objects done against the planned totals.
    """
    rep = ReplicationReport(src.describe(), dst.describe(), dry_run)
    if not await src.exists(fmt.CONFIG_KEY):
        raise RepositoryError(f"{src.describe()}: no repository here (nothing to replicate)")
    # Manifests first: every manifest listed now has its packs and index already stored.
    listed = {fmt.MANIFESTS_PREFIX: await _sizes(src, fmt.MANIFESTS_PREFIX)}
    for prefix in PHASES[:-1]:
        listed[prefix] = await _sizes(src, prefix)
    config, dst_has_config = await _check_config(src, dst, set(listed[fmt.KEYS_PREFIX]))

    plan: dict[str, list[str]] = {}
    for prefix in PHASES:
        have = await _sizes(dst, prefix)
        todo = []
        for key, size in listed[prefix].items():
            # keys/ and recovery/ are compared by content below: a rewrap or a key
            # rotation keeps their size.
            if have.get(key) == size and prefix not in BY_CONTENT:
                rep.prefixes[prefix].skipped += 1
                rep.prefixes[prefix].skipped_bytes += size
            else:
                todo.append(key)
        plan[prefix] = todo
    progress = Progress(
        bytes_total=sum(listed[p][k] for p in PHASES for k in plan[p]) + len(config),
        files_total=sum(len(v) for v in plan.values()) + 1,
    )
    limiter = anyio.CapacityLimiter(concurrency)

    async def copy(prefix: str, key: str) -> None:
        stats = rep.prefixes[prefix]
        async with limiter:
            n = await _copy_one(src, dst, prefix, key, listed[prefix][key], stats, dry_run)
        progress.bytes_done += n
        progress.files_done += 1
        await report(progress)

    for prefix in PHASES:
        async with task_group() as tg:
            for key in plan[prefix]:
                tg.start_soon(copy, prefix, key)
        if prefix == fmt.KEYS_PREFIX:
            await _put_config(src, dst, config, dst_has_config, rep, dry_run)
            progress.bytes_done += len(config)
            progress.files_done += 1
            await report(progress)
    return rep


async def _copy_one(
    src: Target, dst: Target, prefix: str, key: str, size: int, stats: PrefixStats, dry_run: bool
) -> int:
    """Copy one object unless the destination has it; return the bytes it accounts for.
    A dry run reads nothing but keys/ (compared by content)."""
    if dry_run and prefix not in BY_CONTENT:
        stats.copied += 1
        stats.copied_bytes += size
        return size
    try:
        data = await src.get(key)
    except ObjectNotFound:
        stats.vanished += 1
        return size
    if prefix in BY_CONTENT and await _same(dst, key, data):
        stats.skipped += 1
        stats.skipped_bytes += len(data)
        return len(data)
    if not dry_run:
        await dst.put(key, data)
    stats.copied += 1
    stats.copied_bytes += len(data)
    return len(data)


async def _same(dst: Target, key: str, data: bytes) -> bool:
    try:
        return await dst.get(key) == data
    except ObjectNotFound:
        return False


async def _put_config(
    src: Target,
    dst: Target,
    config: bytes,
    dst_has_config: bool,
    rep: ReplicationReport,
    dry_run: bool,
) -> None:
    stats = rep.prefixes[fmt.CONFIG_KEY]
    if await _same(dst, fmt.CONFIG_KEY, config):
        stats.skipped, stats.skipped_bytes = 1, len(config)
        return
    stats.copied, stats.copied_bytes = 1, len(config)
    if dry_run:
        return
    if dst_has_config:
        # This repository's config sealed with an older data key (a key rotation on the
        # source; _check_config saw a data key in common): take the source's.
        await dst.put(fmt.CONFIG_KEY, config)
    elif not await dst.create(fmt.CONFIG_KEY, config) and not await _same(
        dst, fmt.CONFIG_KEY, config
    ):
        raise _other_repository(src, dst)  # another writer initialised it meanwhile


async def lag(
    src: Target,
    dst: Target,
    *,
    repo: Repository | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, LagInfo]:
    """Per dataset: which backups ``dst`` lacks and for how long (0 when in sync).

    Without ``repo`` (the source opened with its key) datasets and times are unknown:
    one entry ``"*"`` lists the missing backup ids, with ``lag_s`` None.
    """
    ours = await _sizes(src, fmt.MANIFESTS_PREFIX)
    theirs = await _sizes(dst, fmt.MANIFESTS_PREFIX)
    missing = {k.removeprefix(fmt.MANIFESTS_PREFIX) for k in ours if k not in theirs}
    if repo is None:
        return {"*": LagInfo("*", tuple(sorted(missing)), None if missing else 0.0)}
    at = now()
    oldest: dict[str, datetime | None] = {}
    gone: dict[str, list[str]] = {}
    for key in ours:
        backup_id = key.removeprefix(fmt.MANIFESTS_PREFIX)
        try:
            m = await repo.load_manifest(backup_id)
        except RepositoryError:
            if await src.exists(key):
                raise
            continue  # forgotten by a prune since the listing
        oldest.setdefault(m.dataset, None)
        if backup_id in missing:
            gone.setdefault(m.dataset, []).append(backup_id)
            first = oldest[m.dataset]
            oldest[m.dataset] = m.finished_at if first is None else min(first, m.finished_at)
    result = {}
    for dataset, first in sorted(oldest.items()):
        lag_s = 0.0 if first is None else max(0.0, (at - first).total_seconds())
        result[dataset] = LagInfo(dataset, tuple(sorted(gone.get(dataset, ()))), lag_s)
    return result

"""What a whole-host drill restores, in which order, to which point (pure).

- **Order**: databases (PostgreSQL, MariaDB, Redis) first, then application data and
  volumes (Docker volumes and application dumps, files), then configuration (system
  state); by name inside a stage.
- **Point**: ``--pitr`` when given; else the newest instant every point-in-time dataset
  (a PostgreSQL base backup with ``wal_spool``, a mariabackup dataset) can reach; with
  none of those, the newest backup of any dataset of the host (each then takes its own
  newest).
- **Per dataset**: a point-in-time dataset is restored from its newest base backup that
  finished by the point, replaying its logs to the point when a log backup reaches it
  (else up to its newest log backup before it); any other dataset takes its newest
  backup that finished by the point.

How far a dataset's logs reach is read from the catalog: a log backup's WAL reaches at
least its own start (``ship_wal`` marks the instant before it switches the segment), a
base backup is consistent from its end. The restored data's own point (``data_at``) and
its RPO (point − ``data_at``) follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import msgspec

from shared.config.coordinator import CoordinatorConfig
from shared.wire.drills import STAGES, HostDrillItem, Stage
from shared.wire.records import BackupRecord
from shared.wire.sources import (
    MariaDBSource,
    PostgresSource,
    RedisSource,
    Source,
    SystemSource,
)


@dataclass(frozen=True)
class Member:
    """One dataset of the host with its backups in the catalog."""

    name: str
    source: Source
    backups: Sequence[BackupRecord]


def kind_of(src: Source) -> str:
    return str(type(src).__struct_config__.tag)


def stage_of(src: Source) -> Stage:
    if isinstance(src, PostgresSource | MariaDBSource | RedisSource):
        return "database"
    if isinstance(src, SystemSource):
        return "configuration"
    return "application"  # files, Docker volumes, application dumps


def pitr_capable(src: Source) -> bool:
    """Whether the dataset's log backups allow a restore to any instant."""
    if isinstance(src, PostgresSource):
        return src.mode == "basebackup" and src.wal_spool is not None
    if isinstance(src, MariaDBSource):
        return src.mode == "mariabackup"
    return False


def host_datasets(cfg: CoordinatorConfig, host: str) -> list[tuple[str, Source]]:
    """The host's datasets in drill order."""
    found = [(n, ds.source) for n, ds in cfg.datasets.items() if ds.agent == host]
    return sorted(found, key=lambda p: (STAGES.index(stage_of(p[1])), p[0]))


def hosts(cfg: CoordinatorConfig) -> list[str]:
    return sorted({ds.agent for ds in cfg.datasets.values()})


def reach(b: BackupRecord) -> datetime:
    """The newest instant a backup lets its dataset be restored to (see the docstring)."""
    return b.finished_at if b.backup_type == "full" else b.started_at


def _newest(m: Member) -> datetime | None:
    if pitr_capable(m.source):
        bases = [b.finished_at for b in m.backups if b.backup_type == "full"]
        if not bases:
            return None
        first = min(bases)
        return max(reach(b) for b in m.backups if reach(b) >= first)
    return max((b.finished_at for b in m.backups), default=None)


def common_point(members: Sequence[Member]) -> datetime | None:
    """The drill's point when the operator named none (None: nothing to restore)."""
    capable = [p for m in members if pitr_capable(m.source) and (p := _newest(m)) is not None]
    if capable:
        return min(capable)
    return max((p for m in members if (p := _newest(m)) is not None), default=None)


def choose(m: Member, point: datetime) -> HostDrillItem:
    """The dataset's planned drill at ``point``: backup, replay instant, data point, RPO;
    ``outcome="skipped"`` with the reason when nothing of it can stand at the point."""
    item = HostDrillItem(dataset=m.name, stage=stage_of(m.source), kind=kind_of(m.source))
    at = point.strftime("%Y-%m-%d %H:%M:%S UTC")
    if not pitr_capable(m.source):
        done = [b for b in m.backups if b.finished_at <= point]
        if not done:
            return _skip(item, f"no backup finished by {at}")
        b = max(done, key=lambda b: (b.finished_at, b.backup_id))
        return _planned(item, b, None, b.finished_at, point)
    bases = [b for b in m.backups if b.backup_type == "full" and b.finished_at <= point]
    if not bases:
        return _skip(item, f"no base backup finished by {at}")
    base = max(bases, key=lambda b: (b.finished_at, b.backup_id))
    logs = [b for b in m.backups if b.backup_type != "full" and b.finished_at >= base.started_at]
    if point == base.finished_at:
        return _planned(item, base, None, base.finished_at, point)
    if any(b.started_at >= point for b in logs):
        return _planned(item, base, point, point, point)
    before = [b for b in logs if b.started_at <= point]
    if not before:  # the base alone, as it was stored
        return _planned(item, base, None, base.finished_at, point)
    last = max(before, key=lambda b: (b.started_at, b.backup_id))
    return _planned(item, last, None, last.started_at, point)


def _skip(item: HostDrillItem, why: str) -> HostDrillItem:
    return _replace(item, outcome="skipped", checks=why)


def _planned(
    item: HostDrillItem,
    b: BackupRecord,
    pitr: datetime | None,
    data_at: datetime,
    point: datetime,
) -> HostDrillItem:
    return _replace(
        item,
        target=b.target,
        backup_id=b.backup_id,
        pitr=pitr,
        data_at=data_at,
        rpo_s=max((point - data_at).total_seconds(), 0.0),
    )


def _replace(item: HostDrillItem, **changes: object) -> HostDrillItem:
    return msgspec.structs.replace(item, **changes)

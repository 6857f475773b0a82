"""Coverage: what the agents' inventories found that no configured dataset backs up.

Agents publish their inventory on ``mosaic.inventory.<agent>`` (agent/inventory/); the
stream ``MOSAIC_INVENTORY`` keeps the newest per agent, so every coordinator reads them
all at start and follows new ones (as with heartbeats, coordinator/heartbeats.py). An
inventory counts only when the agent it names is the agent of its subject.

Matching (pure, :func:`covering`): an item of agent A is covered by a dataset of agent A
(``[datasets.X] agent = "A"``) when

- ``postgres``: a postgres source whose ``port`` is the cluster's port and whose ``host``
  is local (``127.0.0.1``, ``localhost``, ``::1``, the host's name) or one of the
  cluster's socket folders. (A source names no data directory, so the port decides;
  a files dataset over a running cluster's folder is not a backup of it.)
- ``mariadb``: a mariadb source whose ``socket`` is one of the server's sockets, or,
  without ``socket``, whose ``port`` is its port on a local host.
- ``redis``: a redis source whose ``port`` is its port on a local host.
- ``docker_volume``: a docker_volume source naming the volume.
- ``docker_container``: a docker_exec source naming the container, or else every
  named volume it mounts is covered (as above) and every bind-mount source is covered
  by a files dataset; a container without either holds no data of its own.
- ``compose_project``: every compose file of the project (its working folder when the
  labels name none) is covered by a files dataset.
- ``config_path``, ``systemd_unit``, ``certificate``: a files source whose ``path`` is
  the item's path or a folder above it, and whose ``exclude`` globs exclude neither the
  item nor a folder between (``include`` globs are not evaluated).

The ignore list (``[coverage] ignore``, ``AGENT:KIND:KEY`` fnmatch globs) marks items as
ignored: still listed, not counted in ``unprotected_total``, no alert. An entry that
matches no item of any inventory held is named in ``status`` (``ignore_unmatched``)
once at least one inventory is held.

Alerts: ``unprotected_data``, one per agent and kind (``dataset`` = the agent, target =
the kind), so a new item of a kind already alerting changes no fingerprint and sends no
second notification; ``certificate_expiring``, one per certificate that expires within
``cert_warn_days`` or has expired (``target`` = its path; critical once expired).
The ignore list is about coverage only: silence expiry warnings with ``[alerts] disabled``.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import anyio
import msgspec
from nats.errors import Error as NatsError
from nats.js import api

from coordinator.alerts import Finding
from shared import replicas, subjects
from shared.bus import Bus
from shared.config.coordinator import CoordinatorConfig, DatasetConfig
from shared.config.inventory import split_ignore
from shared.errors import BusError
from shared.vocab import utcnow
from shared.wire.inventory import HostInventory, InventoryItem, inventory_decoder
from shared.wire.sources import (
    DockerExecSource,
    DockerVolumeSource,
    FilesSource,
    MariaDBSource,
    PostgresSource,
    RedisSource,
)
from shared.wire.status import CertificateStatus, StatusReply, UnprotectedItem

log = logging.getLogger(__name__)

KEEP_DAYS = 30  # an agent removed from service is listed this long after its last inventory
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
SHOWN_IN_SUMMARY = 5  # item keys named in one unprotected_data alert


# --- matching (pure) -------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _glob_re(pattern: str) -> re.Pattern[str]:
    """A files source's glob (``*``/``?`` within a name, ``**`` across folders)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _excluded(rel: str, patterns: Iterable[str]) -> bool:
    """Whether ``rel`` or a folder above it (inside the dataset) is excluded."""
    parts = rel.split("/") if rel else []
    for n in range(1, len(parts) + 1):
        prefix, name = "/".join(parts[:n]), parts[n - 1]
        for p in patterns:
            if _glob_re(p).match(prefix if "/" in p else name):
                return True
    return False


def files_cover(path: str, src: FilesSource) -> bool:
    root = os.path.normpath(src.path)
    path = os.path.normpath(path)
    if path != root and not path.startswith(root.rstrip("/") + "/"):
        return False
    rel = os.path.relpath(path, root) if path != root else ""
    return not _excluded(rel, src.exclude)


def _local(host: str, hostname: str) -> bool:
    return host in LOCAL_HOSTS or host == hostname


def _by_files(path: str | None, datasets: Mapping[str, DatasetConfig]) -> str | None:
    if not path:
        return None
    return next(
        (
            n
            for n, d in sorted(datasets.items())
            if isinstance(d.source, FilesSource) and files_cover(path, d.source)
        ),
        None,
    )


def covering(
    item: InventoryItem, datasets: Mapping[str, DatasetConfig], hostname: str = ""
) -> str | None:
    """The name of a dataset (of the item's agent: ``datasets`` holds only those) that
    covers ``item``, or None (the rules are in the module docstring)."""
    for name, d in sorted(datasets.items()):
        s = d.source
        if item.kind == "postgres" and isinstance(s, PostgresSource):
            if s.port == item.port and (_local(s.host, hostname) or s.host in item.sockets):
                return name
        elif item.kind == "mariadb" and isinstance(s, MariaDBSource):
            if s.socket is not None and os.path.normpath(s.socket) in item.sockets:
                return name
            if s.socket is None and s.port == item.port and _local(s.host, hostname):
                return name
        elif item.kind == "redis" and isinstance(s, RedisSource):
            if s.port == item.port and _local(s.host, hostname):
                return name
        elif item.kind == "docker_volume" and isinstance(s, DockerVolumeSource):
            if s.volume == item.key:
                return name
        elif item.kind == "docker_container" and isinstance(s, DockerExecSource):
            if s.container == item.key:
                return name
    if item.kind == "docker_container":
        vols = [covering(_volume(v), datasets, hostname) for v in item.volumes]
        binds = [_by_files(p, datasets) for p in item.paths]
        found = vols + binds
        if found and all(found):
            return ", ".join(sorted({f for f in found if f}))
        return None if found else "(no volumes or bind mounts)"
    if item.kind == "compose_project":
        files = [_by_files(p, datasets) for p in (item.paths or [item.path or ""])]
        return ", ".join(sorted({f for f in files if f})) if files and all(files) else None
    if item.kind in ("config_path", "systemd_unit", "certificate"):
        return _by_files(item.path or item.key, datasets)
    return None


def _volume(name: str) -> InventoryItem:
    return InventoryItem(kind="docker_volume", key=name)


@dataclass(frozen=True)
class Result:
    unprotected: list[UnprotectedItem]  # ignored ones included, marked
    certificates: list[CertificateStatus]  # expiring first
    unmatched: list[str]  # ignore entries that match no item held


@dataclass
class _Ignore:
    entry: str
    globs: tuple[str, str, str]
    used: bool = field(default=False)

    def match(self, agent: str, item: InventoryItem) -> bool:
        a, k, key = self.globs
        return all(
            fnmatch.fnmatchcase(v, g) for v, g in ((agent, a), (item.kind, k), (item.key, key))
        )


def evaluate(
    inventories: Mapping[str, HostInventory],
    cfg: CoordinatorConfig,
    now: datetime,
) -> Result:
    """Unprotected items, certificates and unused ignore entries, over every inventory."""
    by_agent: dict[str, dict[str, DatasetConfig]] = defaultdict(dict)
    for name, d in cfg.datasets.items():
        by_agent[d.agent][name] = d
    ignores = [_Ignore(e, split_ignore(e)) for e in cfg.coverage.ignore]
    warn = timedelta(days=cfg.coverage.cert_warn_days)
    out: list[UnprotectedItem] = []
    certs: list[CertificateStatus] = []
    for agent, inv in sorted(inventories.items()):
        datasets = by_agent.get(agent, {})
        for item in inv.items:
            rule = next((i for i in ignores if i.match(agent, item)), None)
            if rule is not None:
                rule.used = True
            if item.kind == "certificate" and item.not_after is not None:
                left = item.not_after - now
                certs.append(
                    CertificateStatus(
                        agent=agent,
                        path=item.path or item.key,
                        subject=item.subject,
                        not_after=item.not_after,
                        days_left=round(left.total_seconds() / 86400, 2),
                        expiring=left <= warn,
                    )
                )
            if covering(item, datasets, inv.hostname) is not None:
                continue
            out.append(
                UnprotectedItem(
                    agent=agent,
                    kind=item.kind,
                    key=item.key,
                    detail=item.detail,
                    ignored=rule is not None,
                    ignored_by=rule.entry if rule is not None else "",
                )
            )
    out.sort(key=lambda u: (u.ignored, u.agent, u.kind, u.key))
    certs.sort(key=lambda c: (not c.expiring, c.days_left or 0.0, c.agent, c.path))
    unmatched = [i.entry for i in ignores if not i.used] if inventories else []
    return Result(out, certs, unmatched)


def findings(result: Result) -> list[Finding]:
    """``unprotected_data`` per agent and kind, ``certificate_expiring`` per certificate."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for u in result.unprotected:
        if not u.ignored:
            groups[(u.agent, u.kind)].append(u.key)
    out = []
    for (agent, kind), keys in sorted(groups.items()):
        shown = ", ".join(keys[:SHOWN_IN_SUMMARY]) + (" …" if len(keys) > SHOWN_IN_SUMMARY else "")
        out.append(
            Finding(
                rule="unprotected_data",
                dataset=agent,
                target=kind,
                severity="warning",
                summary=f"{agent}: {len(keys)} {kind} item(s) no dataset backs up: {shown}",
                description="Add a dataset that covers them, or list them in "
                "[coverage] ignore (docs/operations.md#coverage).",
            )
        )
    for c in result.certificates:
        if not c.expiring or c.days_left is None:
            continue
        when = (
            f"expired {-c.days_left:.1f} days ago"
            if c.days_left < 0
            else f"expires in {c.days_left:.1f} days"
        )
        out.append(
            Finding(
                rule="certificate_expiring",
                dataset=c.agent,
                target=c.path,
                severity="critical" if c.days_left < 0 else "warning",
                summary=f"{c.agent}: certificate {c.path} ({c.subject}) {when}",
                description=f"not after {c.not_after.isoformat() if c.not_after else '?'}",
            )
        )
    return out


# --- the inventories this coordinator holds ---------------------------------------------


class InventoryStore:
    """The newest inventory per agent; :meth:`run` keeps it current."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[HostInventory, datetime]] = {}

    def last(self) -> dict[str, HostInventory]:
        return {a: inv for a, (inv, _) in self._last.items()}

    def record(self, subject: str, data: bytes, at: datetime) -> HostInventory | None:
        """Keep an inventory if it is well-formed and from the agent of its subject."""
        try:
            inv = inventory_decoder.decode(data)
        except msgspec.DecodeError as exc:
            log.warning("ignoring undecodable inventory on %s: %s", subject, exc)
            return None
        if subject != subjects.inventory(inv.agent):
            log.warning("ignoring inventory on %s: it names agent %s", subject, inv.agent)
            return None
        old = self._last.get(inv.agent)
        if old is None or at >= old[1]:
            self._last[inv.agent] = (inv, at)
        return inv

    async def run(self, bus: Bus, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Create the stream if needed, follow it until cancelled."""
        cfg = api.StreamConfig(
            name=subjects.INVENTORY_STREAM,
            subjects=[subjects.inventories_all()],
            retention=api.RetentionPolicy.LIMITS,
            max_msgs_per_subject=1,
            max_age=float(timedelta(days=KEEP_DAYS).total_seconds()),
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.OLD,
        )
        try:
            await replicas.ensure_stream(bus.js, cfg)  # R copies (shared/replicas.py)
        except (NatsError, TimeoutError) as exc:
            raise BusError(
                f"stream {subjects.INVENTORY_STREAM} could not be set up: {exc!r}"
            ) from exc

        async def on_msg(msg: Any) -> None:
            meta = msg.metadata
            at = meta.timestamp if meta is not None and meta.timestamp else utcnow()
            self.record(msg.subject, msg.data, at)

        sub = await bus.js.subscribe(
            subjects.inventories_all(),
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        )
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await sub.unsubscribe()
                except NatsError as exc:  # the connection may already be gone
                    log.debug("inventory subscription not closed cleanly: %r", exc)


class Coverage:
    """Status fields, alert findings and the stream reader, wired into the coordinator:
    it adds itself to the status builder's ``fillers`` and the alerter's ``sources``."""

    def __init__(
        self,
        cfg: CoordinatorConfig,
        status: Any = None,
        alerter: Any = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.store = InventoryStore()
        self._warned: set[str] = set()
        if status is not None:
            status.fillers.append(self.fill)
        if alerter is not None:
            alerter.sources.append(self.findings)

    def result(self, now: datetime) -> Result:
        res = evaluate(self.store.last(), self.cfg, now)
        for entry in set(res.unmatched) - self._warned:  # one log line per entry
            log.warning("[coverage] ignore entry %r matches nothing (remove or fix it)", entry)
        self._warned |= set(res.unmatched)
        return res

    async def fill(self, reply: StatusReply) -> StatusReply:
        held = self.store.last()
        res = self.result(self.clock())
        return msgspec.structs.replace(
            reply,
            unprotected=res.unprotected,
            unprotected_total=sum(1 for u in res.unprotected if not u.ignored),
            inventories=len(held) if held else None,
            certificates=res.certificates,
            ignore_unmatched=res.unmatched,
        )

    async def findings(self, now: datetime) -> list[Finding]:
        return findings(self.result(now))

    async def run(self, bus: Bus, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        await self.store.run(bus, task_status=task_status)

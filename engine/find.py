"""Search the backups of a repository for stored paths: in which backups a file
existed, and with what size and mtime in each (``repo find``).

The pattern uses the globs of a files source's filters (engine.backup.walk): without
'/' it matches a name at any depth (``*.conf``); with '/' the whole stored path
(``etc/nginx/*.conf``, a leading '/' ignored); ``*``, ``?`` and ``[...]`` stay inside
one name and ``**`` spans folders (``etc/**/*.conf``); a trailing '/' matches folders
only. A secret (engine.trees.SecretNames) is matched by its real path but shown as
``conf/<secret>`` with its size withheld, one row per shown name and backup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime

from engine.backup.walk import Globs
from engine.format.manifest import Manifest, Node
from engine.repository import Repository
from engine.trees import SecretNames


@dataclass(frozen=True, slots=True)
class Found:
    manifest: Manifest
    path: bytes
    shown: str
    node: Node
    secret: bool


@dataclass(slots=True)
class FindResult:
    found: list[Found] = field(default_factory=list)
    searched: int = 0  # backups whose trees were searched


def _matches(manifest: Manifest, nodes: list[Node], globs: Globs) -> list[Found]:
    names = SecretNames(manifest.source)
    out: list[Found] = []
    shown_secrets: set[str] = set()
    for node in nodes:
        if not globs.match(os.fsdecode(node.path), node.type == "dir"):
            continue
        secret = names.is_secret(node.path)
        shown = names.shown(node.path)
        if secret:
            if shown in shown_secrets:
                continue
            shown_secrets.add(shown)
        out.append(Found(manifest=manifest, path=node.path, shown=shown, node=node, secret=secret))
    return out


async def find_paths(
    repo: Repository,
    pattern: str,
    *,
    dataset: str | None = None,
    since: datetime | None = None,
) -> FindResult:
    """Every stored path matching ``pattern`` in the backups of ``dataset`` (all when
    None) that finished at or after ``since``; oldest backup first."""
    globs = Globs([pattern])
    manifests = [await repo.load_manifest(i) for i in await repo.list_manifests()]
    chosen = sorted(
        (
            m
            for m in manifests
            if (dataset is None or m.dataset == dataset)
            and (since is None or m.finished_at >= since)
        ),
        key=lambda m: (m.finished_at, m.backup_id),
    )
    result = FindResult(searched=len(chosen))
    for m in chosen:
        result.found.extend(_matches(m, await repo.read_tree(m), globs))
    return result

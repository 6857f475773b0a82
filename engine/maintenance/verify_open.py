"""Opening a repository for verify: every index segment that opens is loaded, every
one that does not is a finding (damaged, or could not be read), never a repository
that cannot be opened. A segment that fails is read once more and reported as damaged
only if the fresh read fails too; one removed since the listing (a concurrent prune) is
not damage."""

from __future__ import annotations

from engine.format import spec as fmt
from engine.format.segments import SegmentPack, open_segment
from engine.index import IndexEntry
from engine.keys.files import RepoKey
from engine.maintenance.verify import VerifyReport
from engine.repository import Repository
from engine.storage.base import Target
from shared.errors import ObjectNotFound, RepositoryError, TargetError


async def open_for_verify(target: Target, master_key: RepoKey) -> tuple[Repository, VerifyReport]:
    """The repository with the index that could be read, and what could not."""
    repo = await Repository.open(target, master_key, load_index=False)
    report = VerifyReport()
    async for obj in target.list(fmt.INDEX_PREFIX):
        for listed in await _segment(repo, obj.key, report):
            for e in listed.entries:
                repo.index[e.id] = IndexEntry(
                    listed.pack_id, e.offset, e.length, e.otype, e.raw_length
                )
    repo.index.compact()
    return repo, report


async def _segment(repo: Repository, key: str, report: VerifyReport) -> list[SegmentPack]:
    """One index segment's packs; [] after reporting why not."""
    damage = ""
    for _ in range(2):
        try:
            return open_segment(repo.keys, key, await repo.target.get(key), "")
        except ObjectNotFound:
            return []
        except TargetError as exc:
            report.unread(key, exc)
            return []
        except RepositoryError as exc:  # damaged, or not a valid segment
            damage = str(exc).removeprefix(": ")
    report.add(key, damage)
    return []

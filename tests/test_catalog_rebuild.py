"""``repo catalog-rebuild``: the catalog comes back from one repository plus the key.

Backups go through the real stack (operator → coordinator → NATS → agent → disk), so
the coordinator records its rows from the events; the rebuild, run as a real process,
must produce the same rows field by field, in SQLite and in PostgreSQL, and add nothing
when run again. A damaged manifest is named and skipped, the rest still recorded.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from coordinator.catalog import open_catalog
from engine.format.manifest import Manifest
from mosaic import operator
from mosaic.commands.repo.catalog import backup_record
from shared.config.targets import LocalTargetConfig
from shared.errors import IntegrityError
from shared.vocab import BackupSummary, utcnow
from shared.wire.events import BackupCompleted
from shared.wire.records import BackupRecord
from shared.wire.sources import FilesSource
from tests.harness import agent_toml, cli, make_tree, running_stack, unique

QUIET = Console(quiet=True)


@dataclass(frozen=True)
class Made:
    """Three backups of two datasets, and the rows the coordinator recorded for them."""

    work: Path
    repo: Path
    key_file: Path
    nats_url: str
    originals: list[BackupRecord]  # sorted by backup_id


@pytest.fixture(scope="module")
async def made(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Made:
    work = tmp_path_factory.mktemp("catalog-rebuild")
    target = LocalTargetConfig(path=str(work / "repo"))
    agent = unique("agent")
    src_a = make_tree(work / "src-a", big_mib=1)
    src_b = work / "src-b"
    src_b.mkdir()
    (src_b / "notes.txt").write_text("dataset b\n" * 50)
    done: list[BackupCompleted] = []
    # Two stacks one after the other (same agent, key, repository and catalog), since a
    # stack serves one dataset.
    async with running_stack(nats_url, work, target, src_a, agent_name=agent) as st:
        for kind in ("full", "incremental"):
            ev = await operator.backup(st.bus, st.dataset, kind, QUIET, QUIET, timeout=60)
            assert isinstance(ev, BackupCompleted)
            done.append(ev)
            (src_a / "a" / "hello.txt").write_text("changed\n")
    async with running_stack(nats_url, work, target, src_b, agent_name=agent) as st:
        ev = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(ev, BackupCompleted)
        done.append(ev)
    catalog = await open_catalog(f"sqlite:///{work / 'catalog.db'}")
    try:
        # The events stream is shared by the session; keep only this module's backups.
        ids = {ev.backup_id for ev in done}
        originals = sorted(
            (b for b in await catalog.list_backups() if b.backup_id in ids),
            key=lambda b: b.backup_id,
        )
    finally:
        await catalog.aclose()
    assert [b.backup_id for b in originals] == sorted(ids)
    assert len({b.dataset for b in originals}) == 2
    assert {b.backup_type for b in originals} == {"full", "incremental"}
    return Made(work, work / "repo", work / "repo.key", nats_url, originals)


def _config(made: Made, repo: Path, name: str) -> Path:
    # The target is named "t" as in the stack's agent config: the row's target is that name.
    return agent_toml(
        made.work / f"{name}.toml",
        name=made.originals[0].agent,
        nats_url=made.nats_url,
        key_file=made.key_file,
        targets={"t": LocalTargetConfig(path=str(repo))},
    )


def _rebuild(config: Path, url: str, *more: str) -> tuple[int, str]:
    proc = cli("repo", "catalog-rebuild", "--config", str(config), "--catalog", url, *more)
    return proc.returncode, proc.stdout + proc.stderr


async def _rows(url: str) -> list[BackupRecord]:
    catalog = await open_catalog(url)
    try:
        return sorted(await catalog.list_backups(), key=lambda b: b.backup_id)
    finally:
        await catalog.aclose()


async def test_rebuild_into_sqlite_equals_the_coordinators_rows(made: Made) -> None:
    config = _config(made, made.repo, "agent-sqlite")
    url = f"sqlite:///{made.work / 'rebuilt.db'}"
    # The catalog already knows one backup (it lacks the others, say after lost events).
    catalog = await open_catalog(url)
    try:
        await catalog.record_backup(made.originals[0])
    finally:
        await catalog.aclose()

    code, text = _rebuild(config, url)
    assert code == 0, text
    assert "3 backups in repository, 2 added to the catalog, 1 already there" in text
    for b in made.originals:
        assert b.backup_id in text
    assert await _rows(url) == made.originals

    code, text = _rebuild(config, url)
    assert code == 0, text
    assert "3 backups in repository, 0 added to the catalog, 3 already there" in text
    assert await _rows(url) == made.originals


async def test_rebuild_into_postgres_equals_the_coordinators_rows(
    made: Made, fresh_postgres_url: str
) -> None:
    config = _config(made, made.repo, "agent-pg")

    code, text = _rebuild(config, fresh_postgres_url, "--dry-run")
    assert code == 0, text
    assert "3 backups in repository, 3 missing from the catalog, 0 already there" in text
    assert await _rows(fresh_postgres_url) == []

    code, text = _rebuild(config, fresh_postgres_url)
    assert code == 0, text
    assert "3 backups in repository, 3 added to the catalog, 0 already there" in text
    assert await _rows(fresh_postgres_url) == made.originals

    code, text = _rebuild(config, fresh_postgres_url)
    assert code == 0, text
    assert "0 added to the catalog, 3 already there" in text
    assert await _rows(fresh_postgres_url) == made.originals


async def test_dry_run_does_not_create_a_sqlite_catalog(made: Made) -> None:
    config = _config(made, made.repo, "agent-dry")
    db = made.work / "never" / "catalog.db"
    code, text = _rebuild(config, f"sqlite:///{db}", "--dry-run")
    assert code == 0, text
    assert "3 backups in repository, 3 missing from the catalog, 0 already there" in text
    assert "dry run: nothing written" in text
    assert not db.parent.exists()


async def test_damaged_manifest_is_named_and_skipped(made: Made) -> None:
    repo = made.work / "repo-damaged"
    shutil.copytree(made.repo, repo)
    victim = made.originals[1]
    path = repo / "manifests" / victim.backup_id
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    config = _config(made, repo, "agent-damaged")
    url = f"sqlite:///{made.work / 'rebuilt-damaged.db'}"

    code, text = _rebuild(config, url)
    assert code == 1, text
    assert f"skipped damaged manifest {victim.backup_id}" in text
    assert "3 backups in repository, 2 added to the catalog, 0 already there" in text
    assert "1 damaged manifests skipped" in text
    assert await _rows(url) == [b for b in made.originals if b is not victim]


def test_manifest_with_an_unknown_backup_type_is_rejected() -> None:
    summary = BackupSummary(
        files=1,
        dirs=0,
        symlinks=0,
        bytes_read=5,
        bytes_new=5,
        bytes_stored=90,
        chunks_total=1,
        chunks_new=1,
        packs_written=1,
        duration_s=0.5,
    )
    m = Manifest(
        backup_id="b1",
        dataset="d",
        agent="a",
        backup_type="differential",
        source=FilesSource(path="/x"),
        started_at=utcnow(),
        finished_at=utcnow(),
        tree=[],
        summary=summary,
    )
    with pytest.raises(IntegrityError, match=r"b1.*'differential'"):
        backup_record(m, target="t", repository_id="r")

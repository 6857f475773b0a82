"""``mosaic-backup check``: the strategy's checklist, computed by the coordinator.

- The agent's key check against real repositories: a full key opens the repository and
  its newest manifest; a write-only key is recognised as this repository's; a wrong key,
  a repository whose key was replaced and a replaced key file fail with one line.
- A real estate (NATS, coordinator, agent, two tagged targets, replication, verify and
  a drill): every line passes and ``check`` exits 0; ``--json`` parses.
- A dataset whose backup failed and a repository whose key was replaced: those lines
  fail, naming the dataset and the target, and ``check`` exits 1.
- The rules themselves with plain values.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import anyio
import msgspec
import pytest
from rich.console import Console

from agent.keysetup import prepare_key
from agent.runner import AgentRunner
from agent.target_health import KeyChecker
from coordinator.catalog import Catalog, open_catalog
from coordinator.checklist import evaluate
from coordinator.service import Coordinator
from engine.backup.dataset import BackupSpec, backup_dataset
from engine.keys.files import create_key_file, wrap_data_key
from engine.keys.ops import write_only_entry
from engine.keys.writeonly import WriteOnlyKey, write_write_only_key
from engine.repository import Repository
from engine.storage.local import LocalTarget
from engine.storage.open import open_target
from mosaic import operator
from shared.bus import Bus
from shared.config.agent import AgentConfig
from shared.config.coordinator import (
    AlertsConfig,
    CatalogConfig,
    CoordinatorConfig,
    DatasetConfig,
    HttpConfig,
    MaintenanceConfig,
)
from shared.config.targets import LocalTargetConfig
from shared.errors import OperatorError
from shared.wire.api import DrillRequest, JobAccepted
from shared.wire.check import CheckReport, CheckRequest
from shared.wire.monitoring import KeyCheck
from shared.wire.records import BackupRecord, JobRecord, MaintenanceRecord
from shared.wire.sources import FilesSource
from shared.wire.status import (
    AgentStatus,
    Compliance321,
    DatasetStatus,
    StatusReply,
    TargetCopy,
    TargetSpaceStatus,
)
from tests.harness import cli, make_tree, snapshot, unique
from tests.test_maintenance_jobs import OFF, Clock, eventually, next_fire

QUIET = Console(quiet=True)
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


# --- the agent's key check against real repositories ------------------------------------


async def _repo_with_backup(path: Path, master: bytes, src: Path) -> Repository:
    repo = await Repository.open(LocalTarget("t", path), master, create=True)
    await backup_dataset(
        repo, BackupSpec(backup_id="b1", dataset="d", agent="a", source=FilesSource(path=str(src)))
    )
    return repo


async def test_a_full_key_opens_the_newest_manifest_and_a_wrong_one_fails(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    master = create_key_file(tmp_path / "repo.key")
    await _repo_with_backup(tmp_path / "repo", master, src)
    targets = {"t": LocalTarget("t", tmp_path / "repo"), "empty": LocalTarget("e", tmp_path / "e")}
    checker = KeyChecker(master, targets, str(tmp_path / "repo.key"))
    got = await checker.check_all()
    assert got["t"].ok is True and "manifest b1" in got["t"].detail
    assert got["empty"].ok is None and "no repository" in got["empty"].detail
    assert not (tmp_path / "e").exists()  # the check never creates anything
    again = await checker.check("t")  # nothing new: the newest known one, opened again
    assert again.ok is True and again.detail.endswith("manifest b1")
    repo = await Repository.open(LocalTarget("t", tmp_path / "repo"), master)
    spec = BackupSpec(backup_id="b2", dataset="d", agent="a", source=FilesSource(path=str(src)))
    await backup_dataset(repo, spec)
    newer = await checker.check("t")
    assert newer.ok is True and newer.detail.endswith("manifest b2")

    other = create_key_file(tmp_path / "other.key")
    wrong = await KeyChecker(other, targets, str(tmp_path / "other.key")).check("t")
    assert wrong.ok is False and "\n" not in wrong.detail
    assert "not" in wrong.detail and "key" in wrong.detail
    assert str(tmp_path / "repo") not in wrong.detail  # named as the target, not its path

    # the key file replaced under the running agent: it still holds the old key
    (tmp_path / "repo.key").unlink()
    create_key_file(tmp_path / "repo.key")
    replaced = await checker.check("t")
    assert replaced.ok is False and "changed since the agent started" in replaced.detail


async def test_a_repository_whose_key_was_replaced_fails_the_check(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    master = create_key_file(tmp_path / "repo.key")
    await _repo_with_backup(tmp_path / "repo", master, src)
    checker = KeyChecker(
        master, {"t": LocalTarget("t", tmp_path / "repo")}, str(tmp_path / "repo.key")
    )
    assert (await checker.check("t")).ok is True
    for obj in (tmp_path / "repo" / "keys").iterdir():  # re-keyed by someone else
        kid = bytes.fromhex(obj.name)
        obj.write_bytes(wrap_data_key(os.urandom(32), kid, os.urandom(32)))
    got = await checker.check("t")
    assert got.ok is False and "key" in got.detail and "\n" not in got.detail


async def test_a_write_only_key_is_recognised_as_its_repositorys(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    master = os.urandom(32)
    one = await _repo_with_backup(tmp_path / "one", master, src)
    two = await _repo_with_backup(tmp_path / "two", master, src)
    entry = await write_only_entry(one, master)
    wo_path = write_write_only_key(tmp_path / "wo.key", [entry])
    await write_only_entry(two, master)  # two has write-only keys too, but its own
    wo = WriteOnlyKey(str(wo_path), (entry,))
    targets = {
        "one": LocalTarget("one", tmp_path / "one"),
        "two": LocalTarget("two", tmp_path / "two"),
    }
    before = snapshot(tmp_path / "one")
    got = await KeyChecker(wo, targets, str(wo_path)).check_all()
    assert got["one"].ok is True and got["one"].write_only
    assert "belongs to this repository (opened index/" in got["one"].detail
    assert got["two"].ok is False and "does not cover the repository" in got["two"].detail
    assert snapshot(tmp_path / "one") == before  # no session key or anything else stored


# --- a real estate ----------------------------------------------------------------------


@dataclass
class Estate:
    bus: Bus
    coordinator: Coordinator
    catalog: Catalog
    agent: AgentConfig
    datasets: list[str]
    clock: Clock
    paths: dict[str, Path]
    nats_url: str


@asynccontextmanager
async def estate(
    nats_url: str, work: Path, sources: list[Path], *, clock: Clock, maintenance: MaintenanceConfig
) -> AsyncIterator[Estate]:
    """A coordinator and one agent (fast heartbeats and key checks) with two local
    targets: ``t`` onsite disk, ``t2`` tagged as offsite object storage, so a dataset
    replicated from t to t2 is 3-2-1 (production, t, t2)."""
    name = unique("agent")
    names = [unique("ds") for _ in sources]
    paths = {"t": work / "repo-t", "t2": work / "repo-t2"}
    agent_cfg = AgentConfig(
        name=name,
        nats_url=nats_url,
        key_file=str(work / "repo.key"),
        targets={
            "t": LocalTargetConfig(path=str(paths["t"])),
            "t2": LocalTargetConfig(
                path=str(paths["t2"]), media="object", location="offsite", tier="remote"
            ),
        },
        ack_wait_s=5.0,
        heartbeat_interval_s=0.3,
        # no [inventory]: coverage discovery off (the coverage line is tested with plain
        # values below; this machine's own servers are not the test's business)
    )
    coord_cfg = CoordinatorConfig(
        name=unique("coord"),
        nats_url=nats_url,
        catalog=CatalogConfig(url=f"sqlite:///{work / 'catalog.db'}"),
        datasets={
            n: DatasetConfig(agent=name, target="t", source=FilesSource(path=str(s)))
            for n, s in zip(names, sources, strict=True)
        },
        scheduler_interval_s=0.2,
        alerts=AlertsConfig(interval_s=0.2),
        maintenance=maintenance,
        http=HttpConfig(port=0, anonymous=True),
    )
    catalog = await open_catalog(coord_cfg.catalog.url)
    try:
        async with anyio.create_task_group() as tg:
            coordinator = Coordinator(coord_cfg, catalog, clock=clock)
            await tg.start(coordinator.run)
            opened = {n: open_target(n, t) for n, t in agent_cfg.targets.items()}
            key, _ = await prepare_key(agent_cfg, opened)
            runner = AgentRunner(agent_cfg, key, opened)
            runner.key_checker.interval_s = 0.3  # a test cannot wait for the hourly one
            await tg.start(runner.run)
            bus = await Bus.connect(nats_url, name="test")
            try:
                yield Estate(bus, coordinator, catalog, agent_cfg, names, clock, paths, nats_url)
            finally:
                await bus.aclose()
                await runner.aclose()
                tg.cancel_scope.cancel()
    finally:
        await catalog.aclose()


async def _report(e: Estate) -> CheckReport:
    reply = await e.bus.request("check", CheckRequest(), timeout=30)
    assert isinstance(reply, CheckReport), reply
    return reply


def _lines(r: CheckReport) -> dict[str, str]:
    return {x.name: x.status for x in r.lines}


def _key_of(r: CheckReport, subject: str) -> str | None:
    keys = next(x for x in r.lines if x.name == "keys")
    return next((i.status for i in keys.items if i.subject == subject), None)


async def _until(e: Estate, what: str, ok: object) -> CheckReport:
    async def probe() -> CheckReport | None:
        r = await _report(e)
        return r if ok(r) else None  # type: ignore[operator]

    return await eventually(what, probe, limit=60)


async def _maintenance(e: Estate, kind: str, target: str | None = None) -> MaintenanceRecord:
    async def probe() -> MaintenanceRecord | None:
        rows = await e.catalog.list_maintenance(kind=kind, target=target, limit=1)
        return rows[0] if rows else None

    return await eventually(f"a {kind} result", probe, limit=90)


async def test_a_healthy_estate_passes_every_line_and_exits_0(
    nats_url: str, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    fire = next_fire(15)
    clock = Clock(fire - timedelta(minutes=30))
    cfg = MaintenanceConfig(
        **{**OFF, "replicate_cron": "15 * * * *", "verify_cron": "15 * * * *"},
        replicate={"t": ["t2"]},
        grace_s=60,
        drill_scratch=str(tmp_path / "scratch"),
    )
    async with estate(nats_url, tmp_path, [src], clock=clock, maintenance=cfg) as e:
        (ds,) = e.datasets
        await operator.backup(e.bus, ds, "full", QUIET, QUIET, timeout=120)
        clock.now = fire  # the hour's replication and verify are due
        assert (await _maintenance(e, "replicate")).outcome == "passed"
        verified = await _maintenance(e, "verify", target="t")
        assert verified.outcome == "passed", verified.summary
        clock.now = None  # back to the real time: heartbeats are fresh again
        accepted = await e.bus.request("drill", DrillRequest(dataset=ds))
        assert isinstance(accepted, JobAccepted), accepted
        assert (await _maintenance(e, "drill")).outcome == "passed"
        report = await _until(
            e,
            "a key check that opened the manifest",
            lambda r: all(_lines(r)[k] == "pass" for k in ("keys", "compliance")),
        )
        run = functools.partial(cli, "check", "--nats", nats_url)
        done = await anyio.to_thread.run_sync(run)
        as_json = await anyio.to_thread.run_sync(functools.partial(run, "--json"))
        strict = await anyio.to_thread.run_sync(functools.partial(run, "--strict"))
    lines = _lines(report)
    assert {k: lines[k] for k in ("backups", "keys", "replication", "compliance", "drill")} == {
        "backups": "pass",
        "keys": "pass",
        "replication": "pass",
        "compliance": "pass",
        "drill": "pass",
    }
    # no inventory (discovery off) and no window configured: no evidence either way
    assert lines["coverage"] == "unknown" and lines["windows"] == "unknown"
    assert lines["storage"] == "pass"  # the test's disk has over 20 % free
    keys = next(x for x in report.lines if x.name == "keys")
    assert {i.subject for i in keys.items} == {f"{e.agent.name}/t", f"{e.agent.name}/t2"}
    assert done.returncode == 0, done.stdout + done.stderr
    assert "encryption keys are accessible and working" in done.stdout
    assert f"overall: {report.status}" in done.stdout
    assert strict.returncode == 1  # coverage and windows are unknown here
    doc = json.loads(as_json.stdout)
    assert doc["kind"] == "check_report" and as_json.returncode == 0
    assert {x["name"] for x in doc["lines"]} >= {"backups", "keys", "drill", "verify", "storage"}
    msgspec.json.decode(as_json.stdout, type=CheckReport)


async def test_a_failed_backup_and_a_replaced_repository_key_fail_their_lines(
    nats_url: str, tmp_path: Path
) -> None:
    good = make_tree(tmp_path / "src", big_mib=1)
    missing = tmp_path / "gone"
    cfg = MaintenanceConfig(**OFF)
    async with estate(nats_url, tmp_path, [good, missing], clock=Clock(), maintenance=cfg) as e:
        ok_ds, bad_ds = e.datasets
        await operator.backup(e.bus, ok_ds, "full", QUIET, QUIET, timeout=120)
        with pytest.raises(OperatorError, match="failed"):
            await operator.backup(e.bus, bad_ds, "full", QUIET, QUIET, timeout=120)
        await _until(e, "the key check of t", lambda r: _key_of(r, f"{e.agent.name}/t") == "pass")
        for obj in (e.paths["t"] / "keys").iterdir():  # someone re-keyed the repository
            obj.write_bytes(wrap_data_key(os.urandom(32), bytes.fromhex(obj.name), os.urandom(32)))
        report = await _until(e, "the key check to fail", lambda r: _lines(r)["keys"] == "fail")
        done = await anyio.to_thread.run_sync(functools.partial(cli, "check", "--nats", nats_url))
        base = f"http://127.0.0.1:{e.coordinator.http_port}/api/v1"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/check") as resp:
                assert resp.status == 200
                served = msgspec.json.decode(await resp.read(), type=CheckReport)
            async with http.get(f"{base}/openapi.json") as resp:
                spec = await resp.json()
    lines = {x.name: x for x in report.lines}
    assert lines["backups"].status == "fail"
    (failed,) = [i for i in lines["backups"].items if i.status == "fail"]
    assert failed.subject == bad_ds and "failed" in failed.evidence
    assert [i.subject for i in lines["keys"].items if i.status == "fail"] == [f"{e.agent.name}/t"]
    assert lines["drill"].status == "fail"  # the backed-up dataset was never drilled
    assert done.returncode == 1, done.stdout + done.stderr
    # the HTTP document has the same verdicts, without paths (it is unauthenticated)
    assert {x.name: x.status for x in served.lines} == {x.name: x.status for x in report.lines}
    http_backups = next(x for x in served.lines if x.name == "backups")
    assert str(missing) not in http_backups.evidence and "<path>" in http_backups.evidence
    assert "/api/v1/check" in spec["paths"] and "CheckReport" in spec["components"]["schemas"]
    assert f"{bad_ds}" in done.stdout and "check: a line failed" in done.stderr
    out_lines = [ln for ln in done.stdout.splitlines() if ln.startswith("fail: keys:")]
    assert out_lines == [f"fail: keys: {e.agent.name}/t: " + out_lines[0].split(": ", 3)[3]]
    assert "key" in out_lines[0].split(": ", 3)[3]


# --- the rules with plain values ----------------------------------------------------------


def _backup(ds: str, at: datetime) -> BackupRecord:
    return BackupRecord(
        backup_id=f"b-{ds}",
        dataset=ds,
        agent="a",
        target="t",
        backup_type="full",
        repository_id="r",
        started_at=at - timedelta(minutes=5),
        finished_at=at,
        files=1,
        bytes_read=1,
        bytes_new=1,
        bytes_stored=1,
        duration_s=300,
    )


def _status(datasets: list[DatasetStatus], targets: list[TargetSpaceStatus]) -> StatusReply:
    return StatusReply(
        status="healthy",
        coordinator="c",
        datasets=datasets,
        recent_failures=[],
        backups_total=len(datasets),
        datasets_total=len(datasets),
        agents=[AgentStatus(agent="a")],
        targets=targets,
    )


def _drill(ds: str, at: datetime, outcome: str = "passed") -> MaintenanceRecord:
    return MaintenanceRecord(
        job_id=f"drill-{ds}-{at:%s}",
        kind="drill",
        agent="a",
        target="t",
        dataset=ds,
        outcome=outcome,  # type: ignore[arg-type]
        started_at=at - timedelta(minutes=1),
        finished_at=at,
        rto_s=30.0,
    )


def test_rules_fail_the_right_line_for_the_right_reason() -> None:
    good = Compliance321(compliant=True, copies=3, media=["disk", "object"], offsite=1)
    ok = DatasetStatus(
        dataset="ok",
        agent="a",
        target="t",
        last_backup=_backup("ok", NOW - timedelta(hours=2)),
        compliance=good,
        targets=[TargetCopy(target="t", primary=True), TargetCopy(target="t2", lag_s=7200.0)],
    )
    failure = JobRecord(
        job_id="j",
        job_kind="backup",
        dataset="broken",
        agent="a",
        target="t",
        status="failed",
        requested_at=NOW - timedelta(minutes=10),
        updated_at=NOW - timedelta(minutes=9),
        error_message="source /srv/data does not exist",
    )
    broken = DatasetStatus(
        dataset="broken",
        agent="a",
        target="t",
        last_backup=_backup("broken", NOW - timedelta(days=2)),
        last_failure=failure,
        compliance=Compliance321(compliant=False, copies=2, reasons=["only 2 copies"]),
    )
    key_ok = KeyCheck(ok=True, detail="opened manifest b1", at=NOW)
    key_bad = KeyCheck(ok=False, detail="wrong key", at=NOW)
    st = _status(
        [ok, broken],
        [
            TargetSpaceStatus(agent="a", target="t", used_percent=50.0, key_check=key_ok),
            TargetSpaceStatus(agent="a", target="t2", used_percent=85.0, key_check=key_bad),
            TargetSpaceStatus(agent="a", target="s3"),  # no space figures, no key check yet
        ],
    )
    drills = [_drill("ok", NOW - timedelta(days=3)), _drill("broken", NOW - timedelta(days=40))]
    report = evaluate(st, drills, [], now=NOW)
    by = {x.name: x for x in report.lines}
    assert report.status == "fail"
    assert (
        by["backups"].status == "fail"
        and "source /srv/data does not exist" in by["backups"].evidence
    )
    assert by["keys"].status == "fail" and by["keys"].items[0].subject == "a/t2"
    assert by["replication"].status == "fail" and "lag 120 min" in by["replication"].evidence
    assert by["compliance"].status == "fail" and "only 2 copies" in by["compliance"].evidence
    # the dataset drilled 40 days ago has no drill within 35 days
    assert by["drill"].status == "fail" and "broken: no drill in 35 days" in by["drill"].evidence
    assert by["storage"].status == "fail" and "a/t2: 15.0 % free" in by["storage"].evidence
    assert by["verify"].status == "unknown"  # never verified: no evidence
    assert by["coverage"].status == "unknown" and by["windows"].status == "unknown"


def test_unknown_is_not_a_failure_and_a_silent_agent_proves_nothing() -> None:
    ds = DatasetStatus(
        dataset="d",
        agent="a",
        target="t",
        last_backup=_backup("d", NOW - timedelta(hours=1)),
        compliance=Compliance321(compliant=True, copies=3, media=["disk", "object"], offsite=1),
    )
    st = msgspec.structs.replace(
        _status(
            [ds],
            [
                TargetSpaceStatus(
                    agent="a",
                    target="t",
                    used_percent=10.0,
                    key_check=KeyCheck(ok=True, detail="x", at=NOW),
                )
            ],
        ),
        agents=[AgentStatus(agent="a", lost=True)],
        inventories=1,
    )
    verify = MaintenanceRecord(
        job_id="v",
        kind="verify",
        agent="a",
        target="t",
        outcome="passed",
        started_at=NOW - timedelta(hours=1),
        finished_at=NOW - timedelta(minutes=50),
    )
    report = evaluate(st, [_drill("d", NOW - timedelta(days=1))], [verify], now=NOW)
    by = {x.name: x.status for x in report.lines}
    assert by["keys"] == "unknown"  # the agent is silent: its last key check is no proof
    assert by["coverage"] == "pass" and by["verify"] == "pass" and by["drill"] == "pass"
    assert "fail" not in by.values() and report.status == "unknown"


def test_heartbeats_and_status_of_older_versions_still_decode() -> None:
    from shared.wire.monitoring import heartbeat_decoder

    old = (
        b'{"kind":"heartbeat","schema":1,"agent":"a","hostname":"h","version":"0.9",'
        b'"at":"2026-01-01T00:00:00Z","interval_s":30,"uptime_s":1,'
        b'"targets":[{"name":"t","kind":"local","media":"disk","location":"onsite",'
        b'"tier":"local"}]}'
    )
    hb = heartbeat_decoder.decode(old)
    assert hb.targets[0].key_check is None
    t = msgspec.json.decode(b'{"agent":"a","target":"t"}', type=TargetSpaceStatus)
    assert t.key_check is None
    st = _status([], [t])
    keys = next(x for x in evaluate(st, [], [], now=NOW).lines if x.name == "keys")
    assert keys.status == "unknown" and "not checked yet, or an older agent" in keys.evidence


def test_coverage_passes_only_when_every_inventoried_item_is_covered_or_ignored() -> None:
    from coordinator.checklist import coverage_line
    from shared.wire.status import UnprotectedItem

    base = _status([], [])
    assert coverage_line(base, 20).status == "unknown"  # no inventory: no evidence
    ignored = UnprotectedItem(agent="a", kind="config_path", key="/etc/ssh", ignored=True)
    covered = msgspec.structs.replace(base, inventories=2, unprotected=[ignored])
    line = coverage_line(covered, 20)
    assert line.status == "pass" and "1 ignored" in line.evidence
    volume = UnprotectedItem(agent="a", kind="docker_volume", key="gitea-data")
    open_ = msgspec.structs.replace(covered, unprotected=[ignored, volume], unprotected_total=1)
    line = coverage_line(open_, 20)
    assert line.status == "fail" and [i.subject for i in line.items] == ["a/docker_volume"]
    assert "gitea-data not backed up" in line.items[0].evidence

"""System-state source: the host's settings backed up through an agent, restored as files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from agent.sources.system import ITEMS, MISSING, streams
from mosaic import operator
from shared.config.targets import LocalTargetConfig
from shared.errors import SourceError
from shared.wire.events import BackupCompleted
from shared.wire.sources import SystemSource
from tests.fixtures.docker import Dockerd
from tests.harness import running_stack

QUIET = Console(quiet=True)


async def _backup_and_restore(nats_url: str, tmp_path: Path, source: SystemSource) -> Path:
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), source
    ) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=120)
        assert isinstance(done, BackupCompleted)
        dest = tmp_path / "restored"
        await operator.restore(st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=60)
    return dest


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


async def test_system_state_is_restored_as_files(nats_url: str, tmp_path: Path) -> None:
    dest = await _backup_and_restore(nats_url, tmp_path, SystemSource())
    fresh = subprocess.run(["dpkg", "--get-selections"], capture_output=True, check=True)
    assert (dest / "packages" / "dpkg-selections.txt").read_bytes() == fresh.stdout
    assert isinstance(json.loads((dest / "network" / "ip-addr.json").read_text()), list)
    assert (dest / "host" / "os-release").read_bytes() == Path("/etc/os-release").read_bytes()
    missing = (dest / os.fsdecode(MISSING)).read_text().splitlines()
    for item in ITEMS:
        listed = [line for line in missing if line.startswith(f"{item.name}: ")]
        assert listed or (dest / item.name).is_file(), f"{item.name}: neither file nor listed"
        if item.argv and shutil.which(item.argv[0]) is None:  # e.g. nft, iptables-save here
            assert not (dest / item.name).exists()
            assert f"{item.argv[0]} is not on PATH" in listed[0]
            assert f"Debian package '{item.package}'" in listed[0]
    for name in os.listdir("/etc/cron.d"):
        assert (dest / "cron" / "cron.d" / name).read_bytes() == (
            Path("/etc/cron.d") / name
        ).read_bytes()


async def test_include_restricts_to_a_group(nats_url: str, tmp_path: Path) -> None:
    dest = await _backup_and_restore(nats_url, tmp_path, SystemSource(include=["packages"]))
    names = _files(dest) - {os.fsdecode(MISSING)}
    assert names == {"packages/dpkg-selections.txt", "packages/apt-manual.txt"}


async def test_missing_tool_fails_the_job_naming_tool_and_package(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = SystemSource(include=["network"], optional_missing=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), source
    ) as st:
        with monkeypatch.context() as m, pytest.raises(operator.OperatorError) as exc:
            m.setenv("PATH", str(empty))  # the agent runs in this process: no `ip` for it
            await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
    msg = str(exc.value)
    assert "ip is not on PATH" in msg and "'iproute2'" in msg, msg
    manifests = tmp_path / "r" / "manifests"
    assert not manifests.exists() or not any(manifests.iterdir())


def _fake(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def _read_all(source: SystemSource) -> dict[str, bytes]:
    out = {}
    for stream in streams(source):
        handle = stream.open()
        out[os.fsdecode(stream.name)] = handle.reader.read()
        handle.finish()
    return out


def test_a_failing_tool_is_listed_and_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake(tmp_path, "ip", 'echo "RTNETLINK answers: Operation not permitted" >&2; exit 2')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    got = _read_all(SystemSource(include=["network", "host"]))
    assert got["network/ip-addr.json"] == b""  # never a partial file
    assert got["host/os-release"] == Path("/etc/os-release").read_bytes()
    assert got["network/hosts"] == Path("/etc/hosts").read_bytes()
    missing = got["MISSING.txt"].decode()
    assert "network/ip-addr.json: ip failed (exit 2): RTNETLINK answers" in missing
    assert "(Debian package 'iproute2')" in missing

    with pytest.raises(SourceError, match=r"ip failed \(exit 2\).*'iproute2'"):
        _read_all(SystemSource(include=["network"], optional_missing=False))


def test_docker_inspect_redacts_secret_environment_values(
    dockerd: Dockerd, docker_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a real daemon and the real docker CLI: a created container with a secret in its env
    client = dockerd.client()
    box = client.containers.create(
        docker_image, ["true"], environment={"POSTGRES_PASSWORD": "hunter2", "TZ": "UTC"}
    )
    try:
        monkeypatch.setenv("DOCKER_HOST", dockerd.url)
        raw = _read_all(SystemSource(include=["containers"]))["containers/docker-inspect.json"]
    finally:
        box.remove(force=True)
        client.close()
    assert b"hunter2" not in raw
    (mine,) = [c for c in json.loads(raw) if c["Id"] == box.id]
    env = mine["Config"]["Env"]
    assert "POSTGRES_PASSWORD=<redacted>" in env and "TZ=UTC" in env


def test_unknown_include_is_refused() -> None:
    with pytest.raises(SourceError, match=r"unknown include \['pakages'\]"):
        streams(SystemSource(include=["pakages"]))

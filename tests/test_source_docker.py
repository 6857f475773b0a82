"""Docker sources against a real dockerd (tests/fixtures/docker.py): a named volume
exported while its service runs, restored into a volume a container then reads; pause and
stop around the export; commands inside containers captured byte for byte, and a failing
command never becomes a backup."""

from __future__ import annotations

import io
import random
import re
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from rich.console import Console

from agent.sources import docker as docker_source
from mosaic import operator
from shared.config.coordinator import CoordinatorConfig
from shared.config.load import load
from shared.config.targets import LocalTargetConfig
from shared.errors import SourceError
from shared.wire.events import BackupCompleted
from shared.wire.sources import DockerExecSource, DockerVolumeSource
from tests.fixtures.docker import Dockerd
from tests.harness import REPO_ROOT, cli, running_stack, unique

QUIET = Console(quiet=True)
BIG = random.Random(4).randbytes(3 << 20)  # several chunks
# what a user would compare: every path with mode, owner, size, type and mtime (the
# files put by _put date from 1970, so a restore that loses times shows), and every
# file's content hash
LISTING = (
    "cd /data && find . | sort | xargs stat -c '%n %a %u:%g %s %F %Y' && "
    "find . -type f | sort | xargs sha256sum"
)


def _put(container: Any, files: dict[str, tuple[bytes, int, int]]) -> None:
    """Files with content, mode and owner into the container's /data."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, (data, mode, uid) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, uid
            tar.addfile(info, io.BytesIO(data))
    assert container.put_archive("/data", buf.getvalue())


def _sh(container: Any, script: str) -> str:
    code, out = container.exec_run(["sh", "-c", script])
    assert code == 0, out
    return str(out.decode())


@pytest.fixture
def client(dockerd: Dockerd) -> Iterator[Any]:
    c = dockerd.client()
    yield c
    c.close()


@pytest.fixture
def service(client: Any, docker_image: str) -> Iterator[tuple[Any, str]]:
    """A running service container writing into its own named volume at /data."""
    volume = unique("vol")
    client.volumes.create(volume)
    svc = client.containers.run(
        docker_image,
        ["sleep", "100000"],
        name=unique("svc"),
        volumes={volume: {"bind": "/data", "mode": "rw"}},
        detach=True,
        network_disabled=True,
    )
    _sh(
        svc,
        "mkdir -p /data/app/uploads /data/empty && echo 'config: 1' > /data/app/app.ini && "
        "chmod 640 /data/app/app.ini && chown 1000:1000 /data/app/uploads && "
        "chmod 750 /data/app/uploads && ln -s app/app.ini /data/current.ini",
    )
    _put(svc, {"app/uploads/big.bin": (BIG, 0o600, 1000), "run.sh": (b"#!/bin/sh\n", 0o755, 0)})
    yield svc, volume
    svc.remove(force=True, v=True)
    for c in client.containers.list(all=True, filters={"volume": volume}):
        c.remove(force=True, v=True)
    client.volumes.get(volume).remove(force=True)


def _status(container: Any) -> str:
    container.reload()
    return str(container.status)


def _no_manifest(repo: Path) -> bool:
    return not (repo / "manifests").exists() or not any((repo / "manifests").iterdir())


async def test_volume_backup_restores_into_a_volume_a_container_reads(
    nats_url: str,
    tmp_path: Path,
    dockerd: Dockerd,
    client: Any,
    docker_image: str,
    service: tuple[Any, str],
) -> None:
    svc, volume = service
    before = _sh(svc, LISTING)
    assert "big.bin" in before and "640 0:0" in before and "750 1000:1000" in before
    # no helper_image: the export borrows the service's image, present on the host
    source = DockerVolumeSource(volume=volume, docker_url=dockerd.url)
    async with running_stack(
        nats_url, tmp_path, LocalTargetConfig(path=str(tmp_path / "r")), source
    ) as st:
        done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
        assert isinstance(done, BackupCompleted) and done.summary.files == 1
        assert _status(svc) == "running"  # exported without stopping the service
        _sh(svc, 'rm -rf /data/* && test -z "$(ls -A /data)"')  # the data is lost
        dest = tmp_path / "restored"
        await operator.restore(st.bus, done.backup_id, str(dest), QUIET, QUIET, timeout=60)
    tar = str(dest / f"{volume}.tar")
    with tarfile.open(tar) as archive:  # the export is a plain tar file too
        assert archive.getmember(f"{volume}/app/uploads/big.bin").size == len(BIG)
    # on the docker host: back into the emptied volume, which the service still mounts
    back = cli("docker", "restore-volume", tar, volume, "--docker-url", dockerd.url)
    assert back.returncode == 0, back.stderr
    assert _sh(svc, LISTING) == before
    # or into a new volume, read by a new container
    copy = unique("copy")
    back = cli("docker", "restore-volume", tar, copy, "--docker-url", dockerd.url)
    assert back.returncode == 0, back.stderr
    copied = client.containers.run(
        docker_image,
        ["sh", "-c", LISTING],
        volumes={copy: {"bind": "/data", "mode": "ro"}},
        remove=True,
        network_disabled=True,
    )
    client.volumes.get(copy).remove()
    assert copied.decode() == before
    # a volume holding data is never merged into
    refused = cli("docker", "restore-volume", tar, volume, "--docker-url", dockerd.url)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"mosaic-backup: error: docker volume '{volume}' is not empty: restore into a new "
        f"volume name, or remove it first ('docker volume rm {volume}')"
    )


def test_pause_and_stop_hold_the_containers_during_the_export_only(
    dockerd: Dockerd, client: Any, docker_image: str, service: tuple[Any, str]
) -> None:
    svc, volume = service
    worker = client.containers.run(
        docker_image,
        ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"],  # stops when asked
        name=unique("worker"),
        volumes={volume: {"bind": "/data", "mode": "ro"}},
        detach=True,
        network_disabled=True,
    )
    src = DockerVolumeSource(
        volume=volume,
        docker_url=dockerd.url,
        pause=[svc.name],
        stop=[worker.name],
        helper_image=docker_image,
    )
    volumes = {v.name for v in client.volumes.list()}
    handle = docker_source.streams(src)[0].open()
    assert (_status(svc), _status(worker)) == ("paused", "exited")  # while exporting
    data = handle.reader.read()
    handle.finish()
    assert (_status(svc), _status(worker)) == ("running", "running")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        big = tar.extractfile(f"{volume}/app/uploads/big.bin")
        assert big is not None and big.read() == BIG
    # an export that breaks off (the target failed, the job was cancelled) resumes too
    handle = docker_source.streams(src)[0].open()
    handle.reader.read(1000)
    handle.abort()
    assert (_status(svc), _status(worker)) == ("running", "running")
    assert not client.containers.list(all=True, filters={"label": docker_source.HELPER_LABEL})
    assert {v.name for v in client.volumes.list()} == volumes  # nothing left, nothing lost


async def test_failing_export_unpauses_and_stores_nothing(
    nats_url: str, tmp_path: Path, dockerd: Dockerd, service: tuple[Any, str]
) -> None:
    svc, volume = service
    # the first container is paused, then the second one turns out not to exist
    src = DockerVolumeSource(volume=volume, docker_url=dockerd.url, pause=[svc.name, "no-such"])
    repo = tmp_path / "r"
    async with running_stack(nats_url, tmp_path, LocalTargetConfig(path=str(repo)), src) as st:
        with pytest.raises(operator.OperatorError) as exc:
            await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
    assert "container 'no-such' (in pause) does not exist" in str(exc.value)
    assert _status(svc) == "running"
    assert _no_manifest(repo)


async def test_exec_stdout_and_output_file_are_captured_byte_for_byte(
    nats_url: str, tmp_path: Path, dockerd: Dockerd, service: tuple[Any, str]
) -> None:
    svc, _ = service
    # stdout interleaved with stderr: only stdout is the stream, binary-safe
    dump = DockerExecSource(
        container=svc.name,
        command=["sh", "-c", "echo progress >&2; cat /data/app/uploads/big.bin; echo done >&2"],
        stream_name="big.dump",
        docker_url=dockerd.url,
    )
    file_dump = DockerExecSource(
        container=svc.name,
        command=["sh", "-c", "mkdir -p /tmp/out && cat /data/app/app.ini > /tmp/out/x.ini"],
        output="/tmp/out/x.ini",
        docker_url=dockerd.url,
    )
    restored = {}
    for i, src in enumerate((dump, file_dump)):
        work = tmp_path / str(i)
        work.mkdir()
        async with running_stack(
            nats_url, work, LocalTargetConfig(path=str(work / "r")), src
        ) as st:
            done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
            await operator.restore(st.bus, done.backup_id, str(work / "d"), QUIET, QUIET)
        restored.update({p.name: p.read_bytes() for p in (work / "d").iterdir()})
    assert restored == {"big.dump": BIG, "x.ini": b"config: 1\n"}


async def test_failing_command_fails_the_job_with_its_stderr_and_stores_nothing(
    nats_url: str, tmp_path: Path, dockerd: Dockerd, service: tuple[Any, str]
) -> None:
    svc, _ = service
    src = DockerExecSource(
        container=svc.name,
        command=["sh", "-c", "echo partial-dump; echo 'database is locked' >&2; exit 3"],
        stream_name="app.dump",
        docker_url=dockerd.url,
    )
    repo = tmp_path / "r"
    async with running_stack(nats_url, tmp_path, LocalTargetConfig(path=str(repo)), src) as st:
        with pytest.raises(operator.OperatorError) as exc:
            await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
    msg = str(exc.value)
    assert "'sh' in container" in msg and "exit 3" in msg and "database is locked" in msg
    assert _no_manifest(repo)


def test_unreachable_daemon_is_named_with_the_reason(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/missing.sock"
    src = DockerVolumeSource(volume="data", docker_url=url)
    with pytest.raises(SourceError) as exc:
        docker_source.streams(src)[0].open()
    assert str(exc.value) == (f"cannot reach the docker daemon at {url}: No such file or directory")
    secret = DockerExecSource(
        container="app", command=["true"], docker_url="tcp://admin:hunter2@127.0.0.1:1"
    )
    with pytest.raises(SourceError) as exc:
        docker_source.streams(secret)[0].open()
    assert "hunter2" not in str(exc.value) and "tcp://127.0.0.1:1" in str(exc.value)


@pytest.mark.parametrize(
    "preset", sorted((REPO_ROOT / "deploy" / "presets").glob("*.toml")), ids=lambda p: p.stem
)
def test_presets_load_and_name_only_real_fields(preset: Path) -> None:
    cfg = load(preset, CoordinatorConfig)
    raw = tomllib.loads(preset.read_text())["datasets"]
    kinds = set()
    for name, ds in cfg.datasets.items():
        fields = {f.name for f in msgspec.structs.fields(type(ds.source))}
        assert set(raw[name]["source"]) - {"type"} <= fields, name  # no silently ignored key
        assert ds.schedules, name
        if isinstance(ds.source, DockerVolumeSource | DockerExecSource):
            kinds.add(type(ds.source))
            assert docker_source.streams(ds.source)  # stream names are valid
    assert kinds, f"{preset.name} has no docker dataset"


def test_bad_docker_sources_say_what_and_how_to_fix(
    dockerd: Dockerd, client: Any, service: tuple[Any, str]
) -> None:
    svc, volume = service
    url = dockerd.url

    def error(src: DockerVolumeSource | DockerExecSource) -> str:
        with pytest.raises(SourceError) as exc:
            handle = docker_source.streams(src)[0].open()
            handle.reader.read()
            handle.finish()
        return str(exc.value)

    assert error(DockerVolumeSource(volume="nope", docker_url=url)) == (
        f"docker volume 'nope' does not exist on {url}: check 'docker volume ls'"
    )
    assert "helper_image 'nope:1' is not present on the docker host" in error(
        DockerVolumeSource(volume=volume, docker_url=url, helper_image="nope:1")
    )
    assert "wrote no /tmp/missing.zip: check 'output'" in error(
        DockerExecSource(
            container=svc.name, command=["true"], output="/tmp/missing.zip", docker_url=url
        )
    )
    with pytest.raises(SourceError, match=re.escape("stream_name '../x' is not a safe")):
        docker_source.streams(
            DockerExecSource(container=svc.name, command=["true"], stream_name="../x")
        )
    svc.stop(timeout=1)
    assert error(DockerExecSource(container=svc.name, command=["true"], docker_url=url)) == (
        f"container '{svc.name}' is exited, not running: start it before the backup"
    )

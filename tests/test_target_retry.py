"""Reads survive transient faults: truncated S3 bodies, stalls and dropped SFTP sessions
are retried by the one wrapper of engine/storage/retry.py, and verify tells "could not
read" from "damaged".

Faults are real: a proxy (tests/fixtures/faultproxy.py) between the client and the real
moto S3 server or sshd cuts responses short, resets connections or stalls them, and
counts what it did, so every test also proves that its faults happened.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import pytest
from msgspec.structs import replace

from engine.backup.dataset import BackupSpec, backup_dataset
from engine.format.manifest import Manifest
from engine.keys.files import create_key_file
from engine.maintenance.verify import verify
from engine.repository import Repository, WriteOptions
from engine.restore.tree import restore_tree
from engine.storage.base import Target
from engine.storage.local import LocalTarget
from engine.storage.open import open_target
from engine.storage.retry import RetryingTarget, RetryPolicy
from engine.storage.s3 import S3Target
from mosaic.commands.repo.verify import EXIT_UNREADABLE
from mosaic.compare import tree_differences
from shared.config.targets import S3TargetConfig, SftpTargetConfig
from shared.errors import ObjectNotFound, TargetUnavailable, TargetUnreadable
from shared.wire.sources import FilesSource
from tests.fixtures.faultproxy import FaultProxy, Faults
from tests.fixtures.sftp import SshdServer, keygen
from tests.harness import agent_toml, cli, make_tree

KEY = bytes(range(32))
KiB, MiB = 1 << 10, 1 << 20
PACK_SIZE = 1 * MiB  # several packs, so a restore makes many reads for the proxy to cut
FAST = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.02)


@pytest.fixture
def s3_proxy(s3_server: str) -> Iterator[FaultProxy]:
    url = urlsplit(s3_server)
    with FaultProxy((url.hostname or "", url.port or 80), http=True, seed=20) as proxy:
        yield proxy


def via(cfg: S3TargetConfig, proxy: FaultProxy) -> S3TargetConfig:
    return replace(cfg, endpoint_url=proxy.url)


async def _backup(target: Target, src: Path) -> Manifest:
    repo = await Repository.open(
        target, KEY, create=True, options=WriteOptions(pack_size=PACK_SIZE)
    )
    spec = BackupSpec(backup_id="b1", dataset="d", agent="a", source=FilesSource(path=str(src)))
    return await backup_dataset(repo, spec)


# --- S3: truncated bodies ---------------------------------------------------------------


async def test_truncated_s3_reads_are_retried_and_restore_is_identical(
    s3_bucket: S3TargetConfig, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    # 12 MiB of random data: with chunks of at most 4 MiB and packs closed past 1 MiB,
    # at least 3 packs whatever the repository's chunker seed cuts.
    src = make_tree(tmp_path / "src", big_mib=12)
    s3_proxy.faults = Faults(truncate=0.2)  # one GET in five: half a body, then closed
    target = cast(RetryingTarget, open_target("cloud", via(s3_bucket, s3_proxy)))
    try:
        m = await _backup(target, src)
        repo = await Repository.open(target, KEY)
        await restore_tree(repo, m, tmp_path / "out")
        rep = await verify(repo, None, read_data=True)
    finally:
        await target.aclose()
    assert tree_differences(src, tmp_path / "out") == []
    assert rep.ok and rep.complete, (rep.problems, rep.unreadable)
    assert rep.packs_read == rep.packs >= 3
    assert s3_proxy.counts["truncated"] > 0, s3_proxy.counts
    # Each cut GetObject was read again by the wrapper; a cut listing (XML read whole
    # inside botocore) may be retried by botocore itself.
    assert 0 < target.retries <= s3_proxy.counts["truncated"]


async def test_verify_cli_through_truncating_s3(
    s3_bucket: S3TargetConfig, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=3)
    key_file = tmp_path / "repo.key"
    master = create_key_file(key_file)
    direct = open_target("cloud", s3_bucket)
    repo = await Repository.open(
        direct, master, create=True, options=WriteOptions(pack_size=PACK_SIZE)
    )
    spec = BackupSpec(backup_id="b1", dataset="d", agent="a", source=FilesSource(path=str(src)))
    await backup_dataset(repo, spec)
    await direct.aclose()
    config = agent_toml(
        tmp_path / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:1",
        key_file=key_file,
        targets={"cloud": via(s3_bucket, s3_proxy)},
    )

    s3_proxy.faults = Faults(truncate=0.2)
    proc = cli("repo", "verify", "--config", str(config), "--all", "--read-data")
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stdout + proc.stderr
    assert "no damage found" in proc.stdout and " read " in proc.stdout
    cut = s3_proxy.counts["truncated"]
    assert cut > 0, s3_proxy.counts

    # Every pack body cut short (small objects pass): nothing can be read, nothing is damaged.
    s3_proxy.faults = Faults(truncate=1.0, min_length=256 * KiB)
    proc = cli("repo", "verify", "--config", str(config), "--all", "--read-data")
    assert proc.returncode == EXIT_UNREADABLE, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "could not read data/" in proc.stdout and "try again" in proc.stdout
    assert "IncompleteRead" in proc.stdout  # the cause, for the operator
    assert "damaged" not in proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("mosaic-backup: error: verify: ")
    assert "no damage found in what could be read; could not read" in line
    assert s3_proxy.counts["truncated"] > cut


async def test_reads_give_up_as_unreadable_with_key_and_cause(
    s3_bucket: S3TargetConfig, s3_proxy: FaultProxy
) -> None:
    target = cast(RetryingTarget, open_target("cloud", via(s3_bucket, s3_proxy), retry=FAST))
    data = os.urandom(300 * KiB)
    await target.put("data/ab/pack", data)
    s3_proxy.faults = Faults(truncate=1.0)
    reads: list[Callable[[], Awaitable[bytes]]] = [
        lambda: target.get("data/ab/pack"),
        lambda: target.get_range("data/ab/pack", 5, 1000),
    ]
    for read in reads:
        before = s3_proxy.counts["truncated"]
        with pytest.raises(TargetUnreadable) as info:
            await read()
        message = str(info.value)
        assert "could not read 'data/ab/pack'" in message and "after 3 attempts" in message
        assert "IncompleteRead" in message and "\n" not in message
        assert (s3_bucket.secret_access_key or "?") not in message
        assert (info.value.key, info.value.attempts, info.value.retryable) == (
            "data/ab/pack",
            3,
            True,
        )
        assert isinstance(info.value, TargetUnavailable)  # old handlers still catch it
        assert s3_proxy.counts["truncated"] - before == 3

    # A missing key is an answer, not a fault: asked once, never retried.
    retries, responses = target.retries, s3_proxy.counts["responses"]
    with pytest.raises(ObjectNotFound):
        await target.get("data/ab/missing")
    assert (target.retries, s3_proxy.counts["responses"] - responses) == (retries, 1)

    s3_proxy.faults = Faults()
    assert await target.get("data/ab/pack") == data  # the object was fine all along
    await target.aclose()


async def test_broken_listing_resumes_without_repeating_keys(
    s3_bucket: S3TargetConfig, s3_proxy: FaultProxy
) -> None:
    target = RetryingTarget(S3Target("cloud", via(s3_bucket, s3_proxy), list_page_size=2), FAST)
    keys = sorted(f"data/{i:02x}/obj" for i in range(0, 256, 23))
    for key in keys:
        await target.put(key, b"x")
    s3_proxy.faults = Faults(truncate=0.4)
    assert [o.key async for o in target.list("data/")] == keys
    assert s3_proxy.counts["truncated"] > 0, s3_proxy.counts
    await target.aclose()


async def test_stalled_body_times_out_and_is_read_again(
    s3_bucket: S3TargetConfig, s3_proxy: FaultProxy
) -> None:
    inner = S3Target("cloud", via(s3_bucket, s3_proxy), read_timeout=1, max_attempts=1)
    target = RetryingTarget(inner, FAST)
    data = os.urandom(100 * KiB)
    await target.put("k", data)
    s3_proxy.faults = Faults(stall=1.0, limit=1)  # headers, then silence, once
    assert await target.get("k") == data
    assert s3_proxy.counts["stalled"] == 1 and target.retries == 1


# --- a short answer on a real disk --------------------------------------------------------


class _ShortOnce(LocalTarget):
    """A real disk whose first range read comes back cut short, as a body cut by a
    middlebox without an error would."""

    cut = True

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        data = await super().get_range(key, offset, length)
        if self.cut:
            self.cut = False
            return data[: len(data) // 2]
        return data


async def test_short_range_is_read_again_but_the_end_of_an_object_is_not(tmp_path: Path) -> None:
    target = RetryingTarget(_ShortOnce("disk", tmp_path), FAST)
    data = os.urandom(10_000)
    await target.put("data/ab/p", data)
    assert await target.get_range("data/ab/p", 100, 5000) == data[100:5100]
    assert target.retries == 1
    assert await target.get_range("data/ab/p", 9000, 5000) == data[9000:]  # object ends
    assert target.retries == 1


# --- SFTP: a connection reset in the middle of a restore --------------------------------


async def test_sftp_connection_reset_mid_restore_is_retried(
    sshd_server: SshdServer, sftp_target_cfg: SftpTargetConfig, tmp_path: Path
) -> None:
    src = make_tree(tmp_path / "src", big_mib=3)
    direct = open_target("nas", sftp_target_cfg)
    m = await _backup(direct, src)
    await direct.aclose()
    # Three connections in a row are reset once 256 KiB went to the client: more than the
    # SFTP target's own one reconnect can absorb, so the wrapper's retries are needed.
    faults = Faults(reset=1.0, reset_after=256 * KiB, limit=3)
    with FaultProxy((sshd_server.host, sshd_server.port), http=False, faults=faults) as proxy:
        algo, blob = sshd_server.known_hosts.read_text().split()[1:3]
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{proxy.port} {algo} {blob}\n")
        cfg = replace(sftp_target_cfg, port=proxy.port, known_hosts=str(known_hosts))
        target = cast(RetryingTarget, open_target("nas", cfg))
        try:
            repo = await Repository.open(target, KEY)
            await restore_tree(repo, m, tmp_path / "out")
        finally:
            await target.aclose()
    assert tree_differences(src, tmp_path / "out") == []
    assert proxy.counts["reset"] == 3, proxy.counts
    assert proxy.counts["connections"] >= 4
    assert target.retries >= 1


async def test_refused_login_is_not_retried(
    sshd_server: SshdServer, sftp_target_cfg: SftpTargetConfig, tmp_path: Path
) -> None:
    keygen(tmp_path / "stranger")
    cfg = replace(sftp_target_cfg, key_file=str(tmp_path / "stranger"))
    target = cast(RetryingTarget, open_target("nas", cfg))
    with pytest.raises(TargetUnavailable, match="refused login") as info:
        await target.get("config")
    assert not isinstance(info.value, TargetUnreadable) and not info.value.retryable
    assert target.retries == 0  # a refusal is an answer: asking again changes nothing
    await target.aclose()

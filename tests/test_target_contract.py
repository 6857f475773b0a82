"""The storage-target contract (engine/storage/base.py), run against every target.

One suite, parametrised like restic's backend test suite: each clause of the docstring
contract has a test here, and every target module must pass all of them. Target-specific
behaviour (S3 multipart, storage class, bucket errors; local temp files; SFTP host keys,
logins and reconnects against a real sshd) follows below.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from msgspec.structs import replace

from engine.storage.base import ObjectInfo, Target
from engine.storage.local import LocalTarget
from engine.storage.open import open_target, unwrap
from engine.storage.retry import RetryingTarget
from engine.storage.s3 import S3Target
from engine.storage.sftp import SftpTarget
from shared.config.targets import LocalTargetConfig, S3TargetConfig, SftpTargetConfig
from shared.errors import ObjectNotFound, TargetError, TargetUnavailable
from tests.fixtures.s3 import s3_client
from tests.fixtures.sftp import SshdServer, keygen

MiB = 1 << 20
INVALID_KEYS = ["../x", "/abs", "a//b", "", "a/./b", "a/", "a/../b"]


@pytest.fixture(params=["local", "s3", "sftp"])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    if request.param == "local":
        t = open_target("disk", LocalTargetConfig(path=str(tmp_path / "repo")))
        assert isinstance(t, LocalTarget)
    elif request.param == "s3":  # remote targets: the contract holds through the wrapper
        t = open_target("cloud", request.getfixturevalue("s3_bucket"))
        assert isinstance(t, RetryingTarget) and isinstance(unwrap(t), S3Target)
    else:
        t = open_target("offsite", request.getfixturevalue("sftp_target_cfg"))
        assert isinstance(t, RetryingTarget) and isinstance(unwrap(t), SftpTarget)
    yield t
    await t.aclose()


async def keys_of(t: Target, prefix: str = "") -> list[str]:
    return [info.key async for info in t.list(prefix)]


# --- the contract, for every target -------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000, 5 * MiB + 3])
async def test_put_get_round_trip(target: Target, size: int) -> None:
    data = os.urandom(size)
    await target.put("data/ab/object", data)
    assert await target.get("data/ab/object") == data
    assert await target.stat("data/ab/object") == ObjectInfo("data/ab/object", size)


async def test_overwrite_replaces_whole_value(target: Target) -> None:
    await target.put("k", b"a much longer first value")
    await target.put("k", b"short")
    assert await target.get("k") == b"short"
    assert await target.stat("k") == ObjectInfo("k", 5)


async def test_get_missing_raises_object_not_found(target: Target) -> None:
    with pytest.raises(ObjectNotFound, match="data/missing") as info:
        await target.get("data/missing")
    assert not info.value.retryable
    with pytest.raises(ObjectNotFound):
        await target.get_range("data/missing", 0, 10)
    with pytest.raises(ObjectNotFound):
        await target.get_range("data/missing", 0, 0)


async def test_get_range(target: Target) -> None:
    data = bytes(range(256)) * 4  # 1024 bytes
    await target.put("r", data)
    assert await target.get_range("r", 0, 1024) == data
    assert await target.get_range("r", 100, 50) == data[100:150]
    assert await target.get_range("r", 1000, 100) == data[1000:]  # object ends first
    assert await target.get_range("r", 1023, 1) == data[1023:]
    assert await target.get_range("r", 1024, 10) == b""  # starts at the end
    assert await target.get_range("r", 5000, 10) == b""  # starts after the end
    assert await target.get_range("r", 10, 0) == b""


async def test_get_range_of_empty_object(target: Target) -> None:
    await target.put("empty", b"")
    assert await target.get_range("empty", 0, 10) == b""


async def test_exists_and_stat_never_raise_for_missing(target: Target) -> None:
    assert await target.exists("nope/x") is False
    assert await target.stat("nope/x") is None
    await target.put("nope/x", b"123")
    assert await target.exists("nope/x") is True
    assert await target.stat("nope/x") == ObjectInfo("nope/x", 3)


async def test_list_empty_target(target: Target) -> None:
    assert await keys_of(target) == []


async def test_list_is_ascending_with_sizes(target: Target) -> None:
    # '-' < '/' < '0': folder boundaries must not change the order of keys.
    keys = ["x/a0", "x/a/b", "x/a-b", "index/0002", "index/0001", "keys/main", "z"]
    for i, key in enumerate(keys):
        await target.put(key, b"v" * i)
    listed = [info async for info in target.list()]
    assert [i.key for i in listed] == sorted(keys)
    assert {i.key: i.size for i in listed} == {k: i for i, k in enumerate(keys)}


async def test_list_prefix_is_a_key_prefix(target: Target) -> None:
    keys = ["data/00/aa", "data/00/ab", "data/01/aa", "data/0a", "data2/x", "index/1"]
    for key in keys:
        await target.put(key, b"x")
    assert await keys_of(target, "data/") == ["data/00/aa", "data/00/ab", "data/01/aa", "data/0a"]
    assert await keys_of(target, "data/00/") == ["data/00/aa", "data/00/ab"]
    assert await keys_of(target, "data/00/a") == ["data/00/aa", "data/00/ab"]  # partial name
    assert await keys_of(target, "data/0") == ["data/00/aa", "data/00/ab", "data/01/aa", "data/0a"]
    assert await keys_of(target, "data") == [*keys[:5]]
    assert await keys_of(target, "ind") == ["index/1"]
    assert await keys_of(target, "data/00/aa") == ["data/00/aa"]
    assert await keys_of(target, "nothing") == []


async def test_list_after_resumes_after_a_key(target: Target) -> None:
    """Remote targets resume a broken listing (the retry wrapper) with ``list_after``."""
    resume = getattr(unwrap(target), "list_after", None)
    if resume is None:
        assert isinstance(target, LocalTarget)  # not wrapped: nothing resumes its listing
        return
    keys = ["data/00/aa", "data/00/ab", "data/01/aa", "data/0a", "data2/x", "index/1"]
    for key in keys:
        await target.put(key, b"x")
    for i, after in enumerate(keys):
        assert [o.key async for o in resume("", after)] == keys[i + 1 :]
    assert [o.key async for o in resume("data/", "data/00/ab")] == ["data/01/aa", "data/0a"]
    assert [o.key async for o in resume("data/", "data/00/")] == keys[:4]  # folder name
    assert [o.key async for o in resume("", "data/00/zz")] == keys[2:]  # no such key


async def test_delete(target: Target) -> None:
    await target.put("d/1", b"x")
    await target.put("d/2", b"y")
    await target.delete("d/1")
    assert await target.exists("d/1") is False
    assert await keys_of(target) == ["d/2"]
    with pytest.raises(ObjectNotFound):
        await target.get("d/1")


async def test_delete_missing_is_fine(target: Target) -> None:
    await target.put("kept", b"k")
    await target.delete("never/was")
    await target.put("once", b"x")
    await target.delete("once")
    await target.delete("once")  # gone already: no error, and nothing else touched
    assert await target.exists("once") is False and await keys_of(target) == ["kept"]
    assert await target.get("kept") == b"k"


@pytest.mark.parametrize("key", INVALID_KEYS)
async def test_invalid_keys_rejected(target: Target, key: str) -> None:
    with pytest.raises(ValueError):
        await target.put(key, b"x")
    with pytest.raises(ValueError):
        await target.get(key)
    with pytest.raises(ValueError):
        await target.get_range(key, 0, 1)
    with pytest.raises(ValueError):
        await target.exists(key)
    with pytest.raises(ValueError):
        await target.stat(key)
    with pytest.raises(ValueError):
        await target.delete(key)


async def test_concurrent_puts(target: Target) -> None:
    async with anyio.create_task_group() as tg:
        for i in range(24):
            tg.start_soon(target.put, f"c/{i:02d}", os.urandom(1000 + i))
    listed = [info async for info in target.list("c/")]
    assert [i.key for i in listed] == [f"c/{i:02d}" for i in range(24)]
    assert [i.size for i in listed] == [1000 + i for i in range(24)]


async def test_create_only_if_absent(target: Target) -> None:
    assert await target.create("cfg/config", b"first") is True
    assert await target.create("cfg/config", b"second") is False
    assert await target.get("cfg/config") == b"first"
    assert [o.key async for o in target.list("cfg/")] == ["cfg/config"]


async def test_concurrent_creates_have_exactly_one_winner(target: Target) -> None:
    results: dict[int, bool] = {}

    async def one(i: int) -> None:
        results[i] = await target.create("race/config", f"writer {i}".encode())

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(one, i)
    winners = [i for i, ok in results.items() if ok]
    assert len(winners) == 1
    assert await target.get("race/config") == f"writer {winners[0]}".encode()


async def test_space(target: Target) -> None:
    space = await target.space()
    if isinstance(target, LocalTarget | SftpTarget):  # OpenSSH offers statvfs@openssh.com
        assert space is not None
    if space is not None:
        assert space.total >= space.free >= 0


async def test_protocol_describe_and_idempotent_aclose(target: Target) -> None:
    assert isinstance(target, Target)
    text = target.describe()
    assert text and "\n" not in text
    await target.aclose()
    await target.aclose()


# --- local disk ------------------------------------------------------------------------


async def test_local_put_leaves_no_temp_files_and_list_hides_them(tmp_path: Path) -> None:
    t = LocalTarget("disk", tmp_path)
    for i in range(5):
        await t.put(f"a/{i}", os.urandom(100))
        await t.put("a/b", os.urandom(100))
    assert [p.name async for p in anyio.Path(tmp_path).rglob(".tmp-*")] == []
    # Leftovers of a crash mid-put are never listed as objects.
    (tmp_path / ".tmp-half").write_bytes(b"torn")
    (tmp_path / "a" / ".tmp-abc123").write_bytes(b"torn")
    assert await keys_of(t) == [*(f"a/{i}" for i in range(5)), "a/b"]
    assert await keys_of(t, "a/.tmp") == []


def test_local_full_disk_is_one_line_with_path_and_free_space(tmp_path: Path) -> None:
    """A full target says where, what and how much room is left, never "(None)"."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        t = LocalTarget("disk", mnt / "repo")
        with pytest.raises(TargetError) as info:
            anyio.run(t.put, "data/ab/abcdef", os.urandom(2 * MiB))
        message = str(info.value)
        assert message.startswith(f"local target 'disk' at {mnt / 'repo'}: no space left on device")
        assert "writing 2 MiB to data/ab/abcdef" in message
        assert "(free " in message and " of 1 MiB)" in message
        assert "None" not in message and "\n" not in message
        assert not info.value.retryable
        assert not [p for p in (mnt / "repo").rglob("*") if p.is_file()]  # no torn object
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# --- S3 --------------------------------------------------------------------------------


async def test_s3_keys_live_under_normalised_prefix(s3_bucket: S3TargetConfig) -> None:
    raw = s3_client(s3_bucket.endpoint_url or "")
    raw.put_object(Bucket=s3_bucket.bucket, Key="repository/not-ours", Body=b"x")
    raw.put_object(Bucket=s3_bucket.bucket, Key="repo-other", Body=b"x")
    cfg = replace(s3_bucket, prefix="/repo/")
    t = S3Target("cloud", cfg)
    await t.put("data/k", b"v")
    listing = raw.list_objects_v2(Bucket=s3_bucket.bucket)
    assert sorted(o["Key"] for o in listing["Contents"]) == [
        "repo-other",
        "repo/data/k",
        "repository/not-ours",
    ]
    assert await keys_of(t) == ["data/k"]
    assert t.describe() == f"s3:{s3_bucket.bucket}/repo at {s3_bucket.endpoint_url}"
    await t.aclose()


async def test_s3_list_pages(s3_bucket: S3TargetConfig) -> None:
    t = S3Target("cloud", s3_bucket, list_page_size=2)
    keys = [f"p/{i}" for i in range(7)]
    for key in keys:
        await t.put(key, b"x")
    assert await keys_of(t) == keys
    await t.aclose()


@pytest.mark.parametrize("storage_class", [None, "STANDARD_IA"])
async def test_s3_multipart_round_trip(
    s3_bucket: S3TargetConfig, storage_class: str | None
) -> None:
    cfg = replace(s3_bucket, storage_class=storage_class)
    t = S3Target("cloud", cfg, multipart_threshold=5 * MiB, part_size=5 * MiB)
    data = os.urandom(12 * MiB)
    await t.put("packs/big", data)
    assert await t.get("packs/big") == data
    assert await t.get_range("packs/big", 5 * MiB - 3, 6) == data[5 * MiB - 3 : 5 * MiB + 3]
    head = s3_client(s3_bucket.endpoint_url or "").head_object(
        Bucket=s3_bucket.bucket, Key="repo/packs/big"
    )
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    assert head.get("StorageClass", "STANDARD") == (storage_class or "STANDARD")
    await t.aclose()


async def test_s3_failed_multipart_is_aborted(s3_bucket: S3TargetConfig) -> None:
    # Parts below 5 MiB make S3 refuse the completion: nothing may remain afterwards.
    t = S3Target("cloud", s3_bucket, multipart_threshold=1 * MiB, part_size=1 * MiB)
    with pytest.raises(TargetError, match="EntityTooSmall"):
        await t.put("packs/bad", os.urandom(3 * MiB))
    assert await t.exists("packs/bad") is False
    raw = s3_client(s3_bucket.endpoint_url or "")
    assert raw.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", []) == []
    await t.aclose()


async def test_s3_storage_class_applied(s3_bucket: S3TargetConfig) -> None:
    cfg = replace(s3_bucket, storage_class="STANDARD_IA")
    t = S3Target("cloud", cfg)
    await t.put("k", b"cold")
    raw = s3_client(s3_bucket.endpoint_url or "")
    head = raw.head_object(Bucket=s3_bucket.bucket, Key="repo/k")
    assert head["StorageClass"] == "STANDARD_IA"
    assert await t.get("k") == b"cold"
    await t.aclose()


async def test_s3_archived_object_needs_restore(s3_bucket: S3TargetConfig) -> None:
    t = S3Target("cloud", replace(s3_bucket, storage_class="GLACIER"))
    await t.put("k", b"frozen")
    with pytest.raises(TargetError, match="restored") as info:
        await t.get("k")
    assert not info.value.retryable
    await t.aclose()


async def test_s3_missing_bucket_is_unavailable(s3_server: str) -> None:
    secret = "very-secret-key-5f3a"
    cfg = S3TargetConfig(
        bucket="no-such-bucket-here",
        endpoint_url=s3_server,
        access_key_id="testing",
        secret_access_key=secret,
    )
    t = S3Target("offsite", cfg)
    assert secret not in t.describe()
    calls: list[Callable[[], Awaitable[object]]] = [
        t.check,
        lambda: t.put("k", b"x"),
        lambda: t.get("k"),
        lambda: t.get_range("k", 0, 1),
        lambda: t.stat("k"),
        lambda: t.exists("k"),
        lambda: t.delete("k"),
        lambda: keys_of(t),
    ]
    for call in calls:
        with pytest.raises(TargetUnavailable) as info:
            await call()
        message = str(info.value)
        assert "'no-such-bucket-here' does not exist" in message
        assert "targets.offsite.bucket" in message
        assert secret not in message
        assert not info.value.retryable
    await t.aclose()


async def test_s3_unreachable_endpoint_is_retryable() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = S3TargetConfig(
        bucket="some-bucket",
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key_id="testing",
        secret_access_key="hush-hush-secret",
    )
    t = S3Target("offsite", cfg, max_attempts=1, connect_timeout=2)
    with pytest.raises(TargetUnavailable) as info:
        await t.get("k")
    assert info.value.retryable
    assert "hush-hush-secret" not in str(info.value)
    await t.aclose()


# --- SFTP ------------------------------------------------------------------------------


async def test_sftp_put_is_atomic_rename_and_list_hides_temp_files(
    sftp_target_cfg: SftpTargetConfig,
) -> None:
    t = SftpTarget("offsite", sftp_target_cfg)
    root = Path(sftp_target_cfg.path)  # the server runs here, so its disk is visible
    for i in range(3):
        await t.put(f"a/{i}", os.urandom(100))
    assert sorted(p.name for p in root.rglob(".tmp-*")) == []
    assert (root / "a" / "0").stat().st_size == 100
    (root / ".tmp-half").write_bytes(b"torn")
    (root / "a" / ".tmp-abc123").write_bytes(b"torn")
    assert await keys_of(t) == ["a/0", "a/1", "a/2"]
    assert await keys_of(t, "a/.tmp") == []
    await t.aclose()


async def test_sftp_check_and_describe(sftp_target_cfg: SftpTargetConfig) -> None:
    cfg = sftp_target_cfg
    t = SftpTarget("offsite", cfg)
    assert t.describe() == f"sftp:{cfg.user}@{cfg.host}:{cfg.port}{cfg.path}"
    await t.check()  # creates the missing root, as the first put would
    assert Path(cfg.path).is_dir()
    await t.aclose()
    # A root the user may not write is reported at check, not at the first backup.
    denied = SftpTarget("offsite", replace(cfg, path="/root/mosaic-not-allowed/repo"))
    with pytest.raises(TargetUnavailable, match="permission denied") as info:
        await denied.check()
    assert not info.value.retryable
    await denied.aclose()


async def test_sftp_wrong_host_key_is_refused(
    sshd_server: SshdServer, sftp_target_cfg: SftpTargetConfig, tmp_path: Path
) -> None:
    keygen(tmp_path / "other")
    algo, blob, *_ = (tmp_path / "other.pub").read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd_server.port} {algo} {blob}\n")
    t = SftpTarget("offsite", replace(sftp_target_cfg, known_hosts=str(known_hosts)))
    for call in (t.check, lambda: t.get("k")):
        with pytest.raises(TargetUnavailable) as info:
            await call()
        message = str(info.value)
        assert f"host key of 127.0.0.1 port {sshd_server.port}" in message
        assert "known_hosts" in message
        assert "\n" not in message
        assert not info.value.retryable
    await t.aclose()


@pytest.mark.parametrize("who", ["unauthorised key", "unknown user"])
async def test_sftp_refused_login_is_unavailable(
    sshd_server: SshdServer, sftp_target_cfg: SftpTargetConfig, tmp_path: Path, who: str
) -> None:
    if who == "unknown user":
        cfg = replace(sftp_target_cfg, user="nosuchuser")
    else:
        keygen(tmp_path / "stranger")
        cfg = replace(sftp_target_cfg, key_file=str(tmp_path / "stranger"))
    t = SftpTarget("offsite", cfg)
    with pytest.raises(TargetUnavailable) as info:
        await t.put("k", b"x")
    message = str(info.value)
    assert f"127.0.0.1 port {sshd_server.port} refused login as {cfg.user!r}" in message
    assert cfg.key_file in message
    assert not info.value.retryable
    await t.aclose()


async def test_sftp_unreachable_server_is_retryable(sftp_target_cfg: SftpTargetConfig) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = SftpTarget("offsite", replace(sftp_target_cfg, port=port))
    with pytest.raises(TargetUnavailable, match=f"cannot reach 127.0.0.1 port {port}") as info:
        await t.get("k")
    assert info.value.retryable
    await t.aclose()


async def test_sftp_reconnects_after_the_server_drops_the_connection(
    sshd_server: SshdServer, sftp_target_cfg: SftpTargetConfig
) -> None:
    t = SftpTarget("offsite", sftp_target_cfg)
    await t.put("before", b"1")
    sessions = sshd_server.session_pids()
    assert sessions, "the target holds no connection to sshd"
    for pid in sessions:  # the server side of our connection goes away
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while sessions & sshd_server.session_pids():
        assert time.monotonic() < deadline, "sshd sessions did not end"
        await anyio.sleep(0.05)
    await t.put("after", b"2")
    assert await t.get("before") == b"1"
    assert await keys_of(t) == ["after", "before"]
    assert sshd_server.session_pids() - sessions  # served by a new connection
    await t.aclose()

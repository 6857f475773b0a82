"""S3 Object Lock retention (targets.NAME.object_lock_mode / object_lock_days).

Against the real moto HTTP server: every object written carries the retention, single-part
and multipart alike; a delete either removes every version of the key or fails loudly while
a version is locked, leaving the object readable; ``check`` refuses a bucket without Object
Lock; the config insists on both fields or neither.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from msgspec.structs import replace

from engine.storage.s3 import S3Target
from shared.config.agent import AgentConfig
from shared.config.load import load
from shared.config.targets import S3TargetConfig
from shared.errors import ConfigError, ObjectNotFound, TargetError, TargetUnavailable
from tests.fixtures.s3 import s3_client

MiB = 1 << 20
MODES = ["GOVERNANCE", "COMPLIANCE"]


def _raw_versions(cfg: S3TargetConfig, key: str) -> tuple[list[str], list[str]]:
    """(version ids, delete-marker ids) of ``repo/<key>``, straight from the bucket."""
    listing = s3_client(cfg.endpoint_url or "").list_object_versions(
        Bucket=cfg.bucket, Prefix=f"repo/{key}"
    )
    full = f"repo/{key}"
    return (
        [v["VersionId"] for v in listing.get("Versions", []) if v["Key"] == full],
        [m["VersionId"] for m in listing.get("DeleteMarkers", []) if m["Key"] == full],
    )


def _assert_retained(cfg: S3TargetConfig, key: str, mode: str, before: datetime) -> datetime:
    head = s3_client(cfg.endpoint_url or "").head_object(Bucket=cfg.bucket, Key=f"repo/{key}")
    assert head.get("ObjectLockMode") == mode
    until = head.get("ObjectLockRetainUntilDate")
    assert until is not None
    days = timedelta(days=cfg.object_lock_days or 0)
    # Stores keep the date to the second.
    assert before + days - timedelta(seconds=1) <= until <= datetime.now(UTC) + days
    return until


# --- puts carry the retention --------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "size"),
    [
        ("GOVERNANCE", 1000),
        ("GOVERNANCE", 7 * MiB),  # multipart: 5 + 2 MiB
        ("COMPLIANCE", 1000),  # COMPLIANCE objects outlive the test: keep them small
    ],
    ids=["governance-single", "governance-multipart", "compliance-single"],
)
async def test_put_carries_retention(
    s3_locked_bucket: S3TargetConfig, mode: str, size: int
) -> None:
    cfg = replace(s3_locked_bucket, object_lock_mode=mode)
    t = S3Target("vault", cfg, multipart_threshold=5 * MiB, part_size=5 * MiB)
    data = os.urandom(size)
    before = datetime.now(UTC)
    await t.put("packs/p", data)
    until = _assert_retained(cfg, "packs/p", mode, before)
    assert await t.retention("packs/p") == (mode, until)
    head = s3_client(cfg.endpoint_url or "").head_object(Bucket=cfg.bucket, Key="repo/packs/p")
    assert head["ETag"].strip('"').endswith("-2") == (size > 5 * MiB)
    assert await t.get("packs/p") == data
    await t.aclose()


async def test_overwrite_keeps_every_version_locked(s3_locked_bucket: S3TargetConfig) -> None:
    t = S3Target("vault", s3_locked_bucket)
    await t.put("index/1", b"first")
    await t.put("index/1", b"second")
    versions, markers = _raw_versions(s3_locked_bucket, "index/1")
    assert len(versions) == 2 and markers == []
    raw = s3_client(s3_locked_bucket.endpoint_url or "")
    for version_id in versions:
        head = raw.head_object(
            Bucket=s3_locked_bucket.bucket, Key="repo/index/1", VersionId=version_id
        )
        assert head.get("ObjectLockMode") == "GOVERNANCE"
    await t.aclose()


async def test_retention_of_unlocked_and_missing_objects(s3_locked_bucket: S3TargetConfig) -> None:
    raw = s3_client(s3_locked_bucket.endpoint_url or "")
    raw.put_object(Bucket=s3_locked_bucket.bucket, Key="repo/plain", Body=b"x")  # no retention
    t = S3Target("vault", s3_locked_bucket)
    assert await t.retention("plain") is None
    with pytest.raises(ObjectNotFound, match="missing"):
        await t.retention("missing")
    await t.aclose()


# --- delete ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_delete_of_locked_object_fails_and_keeps_it(
    s3_locked_bucket: S3TargetConfig, mode: str
) -> None:
    cfg = replace(s3_locked_bucket, object_lock_mode=mode)
    t = S3Target("vault", cfg)
    await t.put("data/ab/locked", b"keep me")
    retention = await t.retention("data/ab/locked")
    assert retention is not None and retention[0] == mode
    with pytest.raises(TargetError) as info:
        await t.delete("data/ab/locked")
    message = str(info.value)
    assert type(info.value) is TargetError
    assert not info.value.retryable
    assert "'data/ab/locked'" in message
    assert f"locked ({mode}) until {retention[1]:%Y-%m-%d %H:%M:%S} UTC" in message
    assert "\n" not in message
    # Still there, and no delete marker hides it.
    assert await t.get("data/ab/locked") == b"keep me"
    assert [info.key async for info in t.list()] == ["data/ab/locked"]
    versions, markers = _raw_versions(cfg, "data/ab/locked")
    assert len(versions) == 1 and markers == []
    await t.aclose()


async def test_failed_delete_leaves_the_current_value(s3_locked_bucket: S3TargetConfig) -> None:
    t = S3Target("vault", s3_locked_bucket)
    await t.put("index/2", b"old")
    await t.put("index/2", b"new")
    with pytest.raises(TargetError, match="locked"):
        await t.delete("index/2")
    assert await t.get("index/2") == b"new"
    await t.aclose()


async def test_delete_removes_every_unlocked_version(s3_locked_bucket: S3TargetConfig) -> None:
    # Objects without retention (written behind the target's back) in the locked bucket:
    # a delete must free the data, not just hide it behind a delete marker.
    cfg = s3_locked_bucket
    raw = s3_client(cfg.endpoint_url or "")
    for body in (b"v1", b"v2"):
        raw.put_object(Bucket=cfg.bucket, Key="repo/tmp/x", Body=body)
    raw.delete_object(Bucket=cfg.bucket, Key="repo/tmp/x")  # a delete marker on top
    raw.put_object(Bucket=cfg.bucket, Key="repo/tmp/x", Body=b"v3")
    raw.put_object(Bucket=cfg.bucket, Key="repo/tmp/xy", Body=b"neighbour")  # same prefix
    t = S3Target("vault", cfg)
    assert len(_raw_versions(cfg, "tmp/x")[0]) == 3
    await t.delete("tmp/x")
    assert _raw_versions(cfg, "tmp/x") == ([], [])
    assert await t.exists("tmp/x") is False
    assert await t.get("tmp/xy") == b"neighbour"
    await t.delete("tmp/x")  # deleting a missing key is still fine
    await t.delete("never/was")
    await t.aclose()


async def test_delete_under_legal_hold_says_so(s3_locked_bucket: S3TargetConfig) -> None:
    cfg = s3_locked_bucket
    raw = s3_client(cfg.endpoint_url or "")
    put = raw.put_object(
        Bucket=cfg.bucket, Key="repo/held", Body=b"x", ObjectLockLegalHoldStatus="ON"
    )
    t = S3Target("vault", cfg)
    try:
        with pytest.raises(TargetError, match=r"'held'.*legal hold") as info:
            await t.delete("held")
        assert not info.value.retryable
        assert await t.get("held") == b"x"
    finally:
        raw.put_object_legal_hold(
            Bucket=cfg.bucket,
            Key="repo/held",
            VersionId=put["VersionId"],
            LegalHold={"Status": "OFF"},
        )
    await t.delete("held")  # no hold and no retention left: really removed
    assert _raw_versions(cfg, "held") == ([], [])
    await t.aclose()


# --- check -----------------------------------------------------------------------------


async def test_check_accepts_a_locked_bucket(
    s3_locked_bucket: S3TargetConfig, s3_bucket: S3TargetConfig
) -> None:
    cfg = s3_locked_bucket
    t = S3Target("vault", cfg)
    await t.check()
    # accepted for the right reason: a put then carries the retention ...
    before = datetime.now(UTC)
    await t.put("data/ab/checked", b"x")
    assert cfg.object_lock_mode is not None
    _assert_retained(cfg, "data/ab/checked", cfg.object_lock_mode, before)
    await t.aclose()
    # ... and the same lock settings on a bucket without Object Lock are refused
    other = S3Target(
        "vault",
        replace(
            s3_bucket, object_lock_mode=cfg.object_lock_mode, object_lock_days=cfg.object_lock_days
        ),
    )
    with pytest.raises(TargetUnavailable, match="does not have Object Lock"):
        await other.check()
    await other.aclose()


async def test_check_refuses_a_bucket_without_object_lock(s3_bucket: S3TargetConfig) -> None:
    cfg = replace(s3_bucket, object_lock_mode="COMPLIANCE", object_lock_days=30)
    t = S3Target("vault", cfg)
    with pytest.raises(TargetUnavailable) as info:
        await t.check()
    message = str(info.value)
    assert f"s3 bucket {s3_bucket.bucket!r}" in message
    assert "does not have Object Lock enabled" in message
    assert "create the bucket with Object Lock enabled" in message
    assert "remove object_lock_mode from targets.vault" in message
    assert "\n" not in message
    assert not info.value.retryable
    # Without a mode the same bucket is fine.
    plain = S3Target("vault", s3_bucket)
    await plain.check()
    await plain.aclose()
    await t.aclose()


def test_target_refuses_half_a_lock_config(s3_bucket: S3TargetConfig) -> None:
    with pytest.raises(ValueError, match="object_lock_days"):
        S3Target("vault", replace(s3_bucket, object_lock_mode="GOVERNANCE"))


# --- config ----------------------------------------------------------------------------

AGENT = """\
name = "host1"
key_file = "/k"
[targets.vault]
type = "s3"
bucket = "backups"
"""


def _load(tmp_path: Path, extra: str) -> AgentConfig:
    p = tmp_path / "agent.toml"
    p.write_text(AGENT + extra)
    return load(p, AgentConfig)


def test_config_with_both_fields(tmp_path: Path) -> None:
    cfg = _load(tmp_path, 'object_lock_mode = "COMPLIANCE"\nobject_lock_days = 90\n')
    target = cfg.targets["vault"]
    assert isinstance(target, S3TargetConfig)
    assert (target.object_lock_mode, target.object_lock_days) == ("COMPLIANCE", 90)
    plain = _load(tmp_path, "")
    target = plain.targets["vault"]
    assert isinstance(target, S3TargetConfig)
    assert (target.object_lock_mode, target.object_lock_days) == (None, None)


@pytest.mark.parametrize(
    ("extra", "field", "hint"),
    [
        ('object_lock_mode = "GOVERNANCE"\n', "object_lock_days", "add object_lock_days"),
        ("object_lock_days = 7\n", "object_lock_mode", "add object_lock_mode"),
        ('object_lock_mode = "governance"\nobject_lock_days = 7\n', "object_lock_mode", "Invalid"),
        ('object_lock_mode = "GOVERNANCE"\nobject_lock_days = 0\n', "object_lock_days", ">= 1"),
        (
            'object_lock_mode = "GOVERNANCE"\nobject_lock_days = 36501\n',
            "object_lock_days",
            "<= 36500",
        ),
    ],
)
def test_bad_lock_config_names_the_field(tmp_path: Path, extra: str, field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, extra)
    message = str(info.value)
    assert f"field 'targets.vault.{field}'" in message
    assert str(tmp_path / "agent.toml") in message
    assert hint in message
    assert "\n" not in message

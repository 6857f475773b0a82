"""3-2-1 evaluation with plain values: copies, media and offsite counted separately."""

from __future__ import annotations

from coordinator.compliance import PRODUCTION, Copy, copy_of, evaluate
from shared.config.targets import LocalTargetConfig, S3TargetConfig

NAS = Copy("nas", "disk", "onsite")
S3 = Copy("s3", "object", "offsite")
TAPE = Copy("tape", "tape", "offsite")


def test_production_local_and_offsite_object_store_is_compliant() -> None:
    c = evaluate([NAS, S3])
    assert (c.copies, c.media, c.offsite) == (3, ("disk", "object"), 1)
    assert c.compliant and c.reasons == ()


def test_one_backup_copy_is_two_copies() -> None:
    c = evaluate([S3])
    assert not c.compliant
    assert c.reasons == ("only 2 copies",)


def test_all_onsite_disks_lack_medium_and_offsite() -> None:
    c = evaluate([NAS, Copy("usb", "disk", "onsite")])
    assert c.copies == 3
    assert c.reasons == ("one medium", "no offsite copy")


def test_no_backup_at_all() -> None:
    assert evaluate([]).reasons == ("only 1 copy", "one medium", "no offsite copy")
    assert evaluate([], production=None).reasons == ("no copies", "no medium", "no offsite copy")


def test_production_not_counted_when_absent() -> None:
    c = evaluate([NAS, S3], production=None)
    assert c.copies == 2 and c.reasons == ("only 2 copies",)
    assert evaluate([NAS, S3, TAPE], production=None).compliant


def test_offsite_disk_gives_offsite_but_not_a_second_medium() -> None:
    c = evaluate([NAS, Copy("remote-sftp", "disk", "offsite")])
    assert c.offsite == 1 and c.reasons == ("one medium",)


def test_copies_tagged_from_target_config() -> None:
    local = copy_of("l", LocalTargetConfig(path="/srv/b"))
    s3 = copy_of("s", S3TargetConfig(bucket="bucket"))
    assert local == Copy("l", "disk", "onsite")
    assert s3 == Copy("s", "object", "offsite")
    assert evaluate([local, s3], production=PRODUCTION).compliant

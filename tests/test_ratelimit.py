"""Per-target upload and download rate limits (engine/storage/ratelimit.py).

What the limiter asks to sleep is checked with an injected clock and sleep, never the
wall clock: N bytes at R bytes/s ask for N/R seconds, less the burst the bucket starts
with; concurrent uploads of one target share one budget; a time-of-day window changes
the rate. The wrapped target passes the storage-target contract suite (local, S3, SFTP,
opened by the real factory from a config with limits), and bad limits in agent.toml are
refused in one line naming the field. Real throughput is bench/ratelimit.py's job.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from msgspec.structs import replace

from engine.storage.base import Target
from engine.storage.local import LocalTarget
from engine.storage.open import open_target, unwrap
from engine.storage.ratelimit import RateLimitedTarget, TokenBucket, rate_limited
from engine.storage.s3 import S3Target
from engine.storage.sftp import SftpTarget
from shared.config.agent import AgentConfig
from shared.config.limits import LimitWindow, RatePlan, TargetLimits
from shared.config.load import load
from shared.config.targets import LocalTargetConfig
from shared.config.units import parse_rate, parse_size
from shared.errors import ConfigError
from tests import test_target_contract as contract
from tests.harness import cli

MiB = 1 << 20


class FakeTime:
    """A clock that only moves when the limiter sleeps (one uploader at a time), or not
    at all (``frozen``: concurrent uploaders, each sleep recorded)."""

    def __init__(self, *, frozen: bool = False) -> None:
        self.now = 1000.0
        self.frozen = frozen
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if not self.frozen:
            self.now += seconds
        await anyio.lowlevel.checkpoint()


# --- sizes and rates as written in agent.toml ---------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("20MiB", 20 * MiB),
        ("20 MiB", 20 * MiB),
        ("20M", 20 * MiB),
        ("512KiB/s", 512 << 10),
        ("1.5GiB", 3 << 29),
        ("10MB", 10_000_000),
        ("1kb", 1000),
        (4096, 4096),
        ("4096", 4096),
    ],
)
def test_rates_parse(text: str | int, value: int) -> None:
    assert parse_rate(text) == value


@pytest.mark.parametrize("text", ["", "fast", "20 MiBs", "-1M", "0", "1XB", "1/s/s"])
def test_bad_rates_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a rate in bytes per second \(write \"20MiB\""):
        parse_rate(text)
    with pytest.raises(ValueError):
        parse_size(0)


def test_rate_plan_by_time_of_day() -> None:
    limits = TargetLimits(
        upload_limit="20MiB",
        download_limit="50MiB",
        limit_schedule=[
            LimitWindow(hours="08:00-18:00", upload="2MiB", download="10MiB"),
            LimitWindow(hours="22:00-02:00", upload="unlimited"),  # wraps midnight
        ],
    )
    plan = limits.rate_plan()
    at = {h: (plan.upload_at(h * 60), plan.download_at(h * 60)) for h in (7, 8, 17, 18, 23, 1, 2)}
    assert at[7] == (20 * MiB, 50 * MiB)  # outside every window: the target's own
    assert at[8] == at[17] == (2 * MiB, 10 * MiB)  # start inclusive
    assert at[18] == (20 * MiB, 50 * MiB)  # end exclusive
    assert at[23] == at[1] == (None, 50 * MiB)  # upload lifted, download kept
    assert at[2] == (20 * MiB, 50 * MiB)
    assert not TargetLimits().rate_plan().limited()


# --- the token bucket, with a fake clock ---------------------------------------------


async def test_n_bytes_at_r_ask_for_n_over_r_seconds() -> None:
    t = FakeTime()
    rate = 2 * MiB
    bucket = TokenBucket(lambda: rate, burst_s=0.0, clock=t.clock, sleep=t.sleep)
    for _ in range(10):
        await bucket.take(4 * MiB)  # ten 4 MiB packs at 2 MiB/s: 20 s
    assert sum(t.sleeps) == pytest.approx(20.0)
    assert bucket.taken == 40 * MiB


async def test_the_burst_is_spent_once_then_the_rate_holds() -> None:
    t = FakeTime()
    bucket = TokenBucket(lambda: MiB, burst_s=1.0, clock=t.clock, sleep=t.sleep)
    await bucket.take(MiB // 2)
    assert t.sleeps == []  # within the burst the bucket starts with
    for _ in range(9):
        await bucket.take(MiB)
    # 9.5 MiB at 1 MiB/s, less the 1 MiB burst
    assert sum(t.sleeps) == pytest.approx(8.5)


async def test_time_on_the_wire_is_not_charged_twice() -> None:
    """An uploader that spends 0.5 s sending each 1 MiB at 1 MiB/s sleeps only the rest:
    its tenth upload starts 9 s after the first (10 MiB at 1 MiB/s, less the burst)."""
    t = FakeTime()
    start = t.now
    bucket = TokenBucket(lambda: MiB, burst_s=1.0, clock=t.clock, sleep=t.sleep)
    for i in range(10):
        await bucket.take(MiB)
        if i < 9:
            t.now += 0.5  # the transfer itself
    assert t.now - start == pytest.approx(9.0)
    assert sum(t.sleeps) == pytest.approx(9.0 - 9 * 0.5)


async def test_concurrent_uploads_share_one_budget(tmp_path: Path) -> None:
    """Eight uploads of one target that start together: the last one waits for all."""
    t = FakeTime(frozen=True)
    target = rate_limited(
        LocalTarget("disk", tmp_path),
        TargetLimits(upload_limit="1MiB").rate_plan(),
        clock=t.clock,
        sleep=t.sleep,
        burst_s=0.0,
    )
    assert isinstance(target, RateLimitedTarget) and target.upload is not None
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(target.upload.take, 2 * MiB)
    assert sorted(t.sleeps) == pytest.approx([2.0 * i for i in range(1, 9)])


async def test_a_cancelled_upload_gives_its_bytes_back() -> None:
    """An upload cancelled while it waits never sent its bytes: the next one does not pay
    for them."""
    t = FakeTime(frozen=True)
    waiting = anyio.Event()

    async def sleep(seconds: float) -> None:
        if not waiting.is_set():  # the first upload waits until it is cancelled
            waiting.set()
            await anyio.sleep_forever()
        await t.sleep(seconds)

    bucket = TokenBucket(lambda: MiB, burst_s=0.0, clock=t.clock, sleep=sleep)
    async with anyio.create_task_group() as tg:
        tg.start_soon(bucket.take, 8 * MiB)
        await waiting.wait()  # the marker: it is waiting for its 8 s
        tg.cancel_scope.cancel()
    await bucket.take(MiB)
    assert t.sleeps == [pytest.approx(1.0)]  # its own 1 MiB only, not 9 MiB
    assert bucket.taken == MiB


async def test_a_window_changes_the_rate_from_the_next_transfer(tmp_path: Path) -> None:
    t = FakeTime()
    minute = [7 * 60 + 59]
    plan = TargetLimits(
        upload_limit="8MiB", limit_schedule=[LimitWindow(hours="08:00-18:00", upload="1MiB")]
    ).rate_plan()
    target = rate_limited(
        LocalTarget("disk", tmp_path / "repo"),
        plan,
        clock=t.clock,
        sleep=t.sleep,
        minute=lambda: minute[0],
        burst_s=0.0,
    )
    await target.put("a", b"x" * (4 * MiB))
    assert t.sleeps == [pytest.approx(0.5)]  # 4 MiB at 8 MiB/s
    minute[0] = 8 * 60
    await target.put("b", b"y" * (4 * MiB))
    assert t.sleeps[1:] == [pytest.approx(4.0)]  # 4 MiB at 1 MiB/s
    assert await target.get("b") == b"y" * (4 * MiB)  # downloads are not limited here
    assert len(t.sleeps) == 2


async def test_downloads_are_charged_by_the_bytes_returned(tmp_path: Path) -> None:
    t = FakeTime()
    cfg = LocalTargetConfig(path=str(tmp_path / "repo"), download_limit="1MiB")
    target = rate_limited(
        LocalTarget("disk", cfg.path), cfg.rate_plan(), clock=t.clock, sleep=t.sleep
    )
    data = os.urandom(3 * MiB)
    await target.put("obj", data)
    assert t.sleeps == []  # uploads are not limited here
    assert await target.get_range("obj", MiB, 10 * MiB) == data[MiB:]  # 2 MiB came back
    assert await target.get("obj") == data
    assert isinstance(target, RateLimitedTarget) and target.download is not None
    assert target.download.taken == 5 * MiB
    assert sum(t.sleeps) == pytest.approx(5.0 - 1.0)  # less the 1 s burst


# --- the contract suite, through the wrapper ----------------------------------------


@pytest.fixture(params=["local", "s3", "sftp"])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """Opened by the real factory from a section with limits. The local one is slow
    enough (4 MiB/s, 1 s burst) that the 5 MiB round trip really waits."""
    if request.param == "local":
        cfg = LocalTargetConfig(
            path=str(tmp_path / "repo"), upload_limit="4MiB", download_limit="4MiB/s"
        )
        t = open_target("disk", cfg)
        assert isinstance(unwrap(t), LocalTarget)
    elif request.param == "s3":
        cfg_s3 = replace(request.getfixturevalue("s3_bucket"), upload_limit="64MiB")
        t = open_target("cloud", cfg_s3)
        assert isinstance(unwrap(t), S3Target)
    else:
        cfg_sftp = replace(request.getfixturevalue("sftp_target_cfg"), download_limit="64MiB")
        t = open_target("offsite", cfg_sftp)
        assert isinstance(unwrap(t), SftpTarget)
    assert isinstance(t, RateLimitedTarget)
    yield t
    await t.aclose()


test_put_get_round_trip = contract.test_put_get_round_trip
test_overwrite_replaces_whole_value = contract.test_overwrite_replaces_whole_value
test_get_missing_raises_object_not_found = contract.test_get_missing_raises_object_not_found
test_get_range = contract.test_get_range
test_get_range_of_empty_object = contract.test_get_range_of_empty_object
test_exists_and_stat_never_raise_for_missing = contract.test_exists_and_stat_never_raise_for_missing
test_list_empty_target = contract.test_list_empty_target
test_list_is_ascending_with_sizes = contract.test_list_is_ascending_with_sizes
test_list_prefix_is_a_key_prefix = contract.test_list_prefix_is_a_key_prefix
test_delete = contract.test_delete
test_delete_missing_is_fine = contract.test_delete_missing_is_fine
test_invalid_keys_rejected = contract.test_invalid_keys_rejected
test_concurrent_puts = contract.test_concurrent_puts
test_create_only_if_absent = contract.test_create_only_if_absent
test_concurrent_creates_have_exactly_one_winner = (
    contract.test_concurrent_creates_have_exactly_one_winner
)
test_space = contract.test_space
test_protocol_describe_and_idempotent_aclose = contract.test_protocol_describe_and_idempotent_aclose


async def test_remote_listings_still_resume_through_the_wrapper(target: Target) -> None:
    """The retry wrapper under the limiter still finds the backend's ``list_after``."""
    resume = getattr(target, "list_after", None)
    if isinstance(unwrap(target), LocalTarget):
        assert resume is None
        return
    assert resume is not None
    for key in ("a/1", "a/2", "b/1"):
        await target.put(key, b"x")
    assert [o.key async for o in resume("", "a/1")] == ["a/2", "b/1"]


def test_no_limit_no_wrapper(tmp_path: Path) -> None:
    t = open_target("disk", LocalTargetConfig(path=str(tmp_path)))
    assert isinstance(t, LocalTarget)
    assert RatePlan(upload=None, download=None).limited() is False


# --- bad input -----------------------------------------------------------------------


def _agent_toml(tmp_path: Path, target_lines: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(
        f'name = "a"\nkey_file = "{tmp_path}/k"\n'
        f'[targets.disk]\ntype = "local"\npath = "{tmp_path}/repo"\n{target_lines}\n'
    )
    return p


@pytest.mark.parametrize(
    ("lines", "field", "fix"),
    [
        ('upload_limit = "20 MiBs"', "targets.disk.upload_limit", 'write "20MiB"'),
        ("download_limit = 0", "targets.disk.download_limit", 'write "20MiB"'),
        (
            '[[targets.disk.limit_schedule]]\nhours = "8-18"\nupload = "2MiB"',
            "targets.disk.limit_schedule[0].hours",
            'write "HH:MM-HH:MM"',
        ),
        (
            '[[targets.disk.limit_schedule]]\nhours = "08:00-24:30"\nupload = "2MiB"',
            "targets.disk.limit_schedule[0].hours",
            "does not exist",
        ),
        (
            '[[targets.disk.limit_schedule]]\nhours = "08:00-08:00"\nupload = "2MiB"',
            "targets.disk.limit_schedule[0].hours",
            "starts where it ends",
        ),
        (
            '[[targets.disk.limit_schedule]]\nhours = "08:00-09:00"\nupload = "2 parsecs"',
            "targets.disk.limit_schedule[0].upload",
            'or "unlimited"',
        ),
        (
            '[[targets.disk.limit_schedule]]\nhours = "08:00-09:00"',
            "targets.disk.limit_schedule[0].hours",
            "sets no limit",
        ),
        (
            'limit_schedule = [{ hours = "22:00-06:00", upload = "1M" },'
            ' { hours = "05:00-07:00", upload = "2M" }]',
            "targets.disk.limit_schedule",
            "overlap at 05:00; make their hours disjoint",
        ),
    ],
)
def test_bad_limits_are_one_line_naming_the_field(
    tmp_path: Path, lines: str, field: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load(_agent_toml(tmp_path, lines), AgentConfig)
    text = str(exc.value)
    assert "\n" not in text and f"field '{field}'" in text and fix in text


def test_schedule_as_written_in_the_docs_loads(tmp_path: Path) -> None:
    lines = (
        'upload_limit = "20MiB"\ndownload_limit = "50MiB"\n'
        '[[targets.disk.limit_schedule]]\nhours = "08:00-18:00"\n'
        'upload = "2MiB"\ndownload = "10MiB"\n'
    )
    cfg = load(_agent_toml(tmp_path, lines), AgentConfig)
    plan = cfg.targets["disk"].rate_plan()
    assert (plan.upload_at(9 * 60), plan.upload_at(19 * 60)) == (2 * MiB, 20 * MiB)


def test_agent_refuses_a_bad_rate_at_start(tmp_path: Path) -> None:
    res = cli("agent", "run", "--config", str(_agent_toml(tmp_path, 'upload_limit = "fast"')))
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "field 'targets.disk.upload_limit'" in lines[0], res.stderr

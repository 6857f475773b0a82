"""Bad input gets one clear line and a nonzero exit, and nothing stored is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.keys.files import create_key_file
from engine.repository import Repository
from engine.storage.local import LocalTarget
from shared.config.targets import LocalTargetConfig, S3TargetConfig
from shared.natsserver import free_port
from tests.harness import agent_toml, cli, make_tree, running_stack, snapshot, unique, write_toml


def one_line_error(proc: object) -> str:
    err = proc.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert proc.returncode == 1, proc  # type: ignore[attr-defined]
    assert len(err) == 1, err
    assert err[0].startswith("mosaic-backup: error: ")
    assert "Traceback" not in proc.stderr  # type: ignore[attr-defined]
    return err[0]


async def _repo_with_key(tmp_path: Path) -> tuple[Path, Path]:
    repo_dir, key = tmp_path / "repo", tmp_path / "good.key"
    master = create_key_file(key)
    await Repository.open(LocalTarget("t", repo_dir), master, create=True)
    return repo_dir, key


async def test_wrong_key_is_refused_and_writes_nothing(nats_url: str, tmp_path: Path) -> None:
    repo_dir, _ = await _repo_with_key(tmp_path)
    wrong = tmp_path / "wrong.key"
    create_key_file(wrong)
    before = snapshot(repo_dir)
    cfg = agent_toml(
        tmp_path / "agent.toml",
        name=unique("a"),
        nats_url=nats_url,
        key_file=wrong,
        targets={"t": LocalTargetConfig(path=str(repo_dir))},
    )
    line = one_line_error(cli("agent", "run", "--config", str(cfg)))
    assert "wrong key" in line and str(wrong) in line
    assert snapshot(repo_dir) == before


async def test_missing_key_file_next_to_a_repository(nats_url: str, tmp_path: Path) -> None:
    repo_dir, _ = await _repo_with_key(tmp_path)
    missing = tmp_path / "nope.key"
    cfg = agent_toml(
        tmp_path / "agent.toml",
        name=unique("a"),
        nats_url=nats_url,
        key_file=missing,
        targets={"t": LocalTargetConfig(path=str(repo_dir))},
    )
    line = one_line_error(cli("agent", "run", "--config", str(cfg)))
    assert str(missing) in line and "does not exist" in line
    assert not missing.exists()


def test_bad_config_field_is_named(tmp_path: Path) -> None:
    cfg = write_toml(
        tmp_path / "agent.toml",
        'name = "a"\nkey_file = "k"\n[targets.offsite]\ntype = "s3"\nbucket = 5\n',
    )
    line = one_line_error(cli("agent", "run", "--config", str(cfg)))
    assert "targets.offsite.bucket" in line and str(cfg) in line

    cfg2 = write_toml(
        tmp_path / "coordinator.toml",
        '[datasets.etc]\nagent = "a"\ntarget = "t"\nsource = { type = "files" }\n',
    )
    line = one_line_error(cli("coordinator", "run", "--config", str(cfg2)))
    assert "datasets.etc.source.path" in line and "missing" in line


def test_nats_unreachable_names_the_url() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    line = one_line_error(cli("status", "--nats", url, "--connect-timeout", "2"))
    # the connect timeout given is the one used (the default is longer)
    assert url in line and "unreachable after 2s" in line


async def test_unknown_dataset(nats_url: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    async with running_stack(nats_url, tmp_path, target, src, with_agent=False):
        proc = await _acli("backup", "--dataset", "no-such-dataset", "--nats", nats_url)
        line = one_line_error(proc)
        assert "unknown dataset 'no-such-dataset'" in line


async def test_missing_s3_bucket(nats_url: str, tmp_path: Path, s3_bucket: S3TargetConfig) -> None:
    import msgspec

    missing = msgspec.structs.replace(s3_bucket, bucket="no-such-bucket-" + unique("b")[2:])
    cfg = agent_toml(
        tmp_path / "agent.toml",
        name=unique("a"),
        nats_url=nats_url,
        key_file=tmp_path / "k.key",
        targets={"offsite": missing},
    )
    line = one_line_error(cli("agent", "run", "--config", str(cfg)))
    assert missing.bucket in line and "does not exist" in line
    assert str(missing.secret_access_key) not in line


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["coordinator", "run"],
        ["agent", "run"],
        ["backup"],
        ["list"],
        ["restore"],
        ["status"],
        ["quickstart"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    proc = cli(*command, "--help")
    assert proc.returncode == 0 and "usage: mosaic-backup" in proc.stdout


async def _acli(*args: str) -> object:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(lambda: cli(*args))


def test_a_bad_log_level_is_one_line(tmp_path: Path) -> None:
    p = cli(
        "repo", "list", "--config", str(tmp_path / "none.toml"), env={"MOSAIC_LOG_LEVEL": "loud"}
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == (
        "mosaic-backup: error: MOSAIC_LOG_LEVEL='loud' is not a log level; "
        "use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    )
    ok = cli(
        "repo", "list", "--config", str(tmp_path / "none.toml"), env={"MOSAIC_LOG_LEVEL": "debug"}
    )
    assert "MOSAIC_LOG_LEVEL" not in ok.stderr  # lower case is accepted

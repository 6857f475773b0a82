"""Secret files stay secret on the way back: when a restore or a verify meets damage in a
secret file (the files source's ``secret`` globs: ``.env``, ``*.key`` …), the output
names it ``folder/<secret>``, never by its name, and its content is printed nowhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.backup.dataset import BackupSpec, backup_dataset
from engine.backup.walk import shown_names
from engine.format import spec as fmt
from engine.format.manifest import Node
from engine.keys.files import create_key_file
from engine.repository import Repository
from engine.restore.tree import check_paths
from engine.storage.local import LocalTarget
from shared.config.targets import LocalTargetConfig
from shared.errors import UnsafePathError
from shared.wire.sources import FilesSource
from tests.harness import agent_toml, cli

MARKER = "mosaic-test-secret-9f3c1e"  # in the secret files' content only


async def test_damaged_secret_file_is_named_secret_in_verify_and_restore(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "app").mkdir(parents=True)
    (src / "tls").mkdir()
    (src / "app" / "config.txt").write_text("listen = 8080\n" * 200)
    (src / "app" / ".env").write_text(f"API_TOKEN={MARKER}-env\n" * 50)
    (src / "tls" / "server.key").write_text(f"-----BEGIN KEY-----\n{MARKER}-key\n")
    key_file = tmp_path / "repo.key"
    master = create_key_file(key_file)
    repo_dir = tmp_path / "repo"
    repo = await Repository.open(LocalTarget("t", repo_dir), master, create=True)
    spec = BackupSpec(backup_id="b1", dataset="d", agent="a", source=FilesSource(path=str(src)))
    manifest = await backup_dataset(repo, spec)

    # flip a byte inside the .env file's chunk, in its pack
    env = next(n for n in await repo.read_tree(manifest) if n.path == b"app/.env")
    entry = repo.index[env.chunks[0]]
    pack = repo_dir / fmt.pack_key(entry.pack_id)
    data = bytearray(pack.read_bytes())
    data[entry.offset + entry.length // 2] ^= 0x01
    pack.write_bytes(bytes(data))

    config = agent_toml(
        tmp_path / "agent.toml",
        name="a",
        nats_url="nats://127.0.0.1:1",
        key_file=key_file,
        targets={"t": LocalTargetConfig(path=str(repo_dir))},
    )
    verify = cli("repo", "verify", "--config", str(config), "--all", "--read-data", "--detailed")
    restore = cli(
        "repo", "restore", "--config", str(config), "b1", "--to", str(tmp_path / "restored")
    )
    export = cli("repo", "export", "--config", str(config), "b1", "--out", str(tmp_path / "b1.tar"))
    assert verify.returncode != 0 and restore.returncode != 0 and export.returncode != 0
    assert "app/<secret>" in verify.stdout  # the damaged file, named without its name
    # one line per damaged file, then the summary; the file is named without its name
    lines = restore.stderr.strip().splitlines()
    assert lines[0].startswith("damaged: app/<secret>: ") and "app/<secret>.damaged" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("mosaic-backup: error: ")
    assert "app/<secret>" in export.stderr, export.stderr
    for proc in (verify, restore, export):
        output = proc.stdout + proc.stderr
        assert "Traceback" not in output, output
        assert ".env" not in output and "server.key" not in output
        assert MARKER not in output


def test_unsafe_path_error_withholds_a_secret_name() -> None:
    name = shown_names(FilesSource(path="/srv"))
    node = Node(path=b"../deploy/.env", type="file", mode=0o600, mtime_ns=0)
    with pytest.raises(UnsafePathError) as exc:
        check_paths([node], "b1", name)
    assert "../deploy/<secret>" in str(exc.value) and ".env" not in str(exc.value)
    # other sources have no secret globs: paths are shown as stored
    assert shown_names(FilesSource(path="/srv", secret=[]))(os.fsencode("a/.env")) == "a/.env"

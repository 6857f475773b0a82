"""The single-host tools (`mosaic-backup repo …`) on the paths that used to fail or leak.

- `repo backup` with a write-only key failed on every backup after a dataset's first.
- The agent's ``state_dir`` was created 0755, though the example promises 0700.
- The tools published audit events to the default ``nats_url``, a NATS on loopback that
  nobody chose (on a tools-only host, possibly someone else's server).
- Two first backups at once could tell the loser that its key file "does not exist".
"""

from __future__ import annotations

import io
import subprocess
import threading
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
from rich.console import Console

from agent.keysetup import create_atomically, prepare_key
from engine.keys.files import load_any_key_file
from engine.storage.open import open_target
from mosaic.commands.repo import local_audit
from mosaic.compare import tree_differences
from shared.config.agent import AgentConfig
from shared.config.load import is_set, load
from shared.config.targets import LocalTargetConfig
from shared.natsserver import free_port, nats_server_binary
from tests.harness import agent_toml, cli, make_tree, write_toml


def _agent_file(path: Path, key: Path, repo: Path, state: Path, extra: str = "") -> Path:
    """An agent.toml as a tools-only host writes it: no nats_url."""
    return write_toml(
        path,
        f'name = "host1"\nkey_file = "{key}"\nstate_dir = "{state}"\n{extra}\n'
        f'[targets.t]\ntype = "local"\npath = "{repo}"\n',
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    return proc


def _write_only_host(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(source, repository, full-key config, write-only key file): the full key made the
    repository, the host keeps only a write-only key (as tests/test_write_only.py)."""
    src = make_tree(tmp_path / "src", big_mib=1)
    repo = tmp_path / "repo"
    full = _agent_file(tmp_path / "full.toml", tmp_path / "full.key", repo, tmp_path / "st-full")
    _ok(cli("repo", "backup", "--config", str(full), str(src), "--dataset", "d", "--type", "full"))
    wo_key = tmp_path / "write-only.key"
    _ok(cli("repo", "keys", "write-only-export", "--config", str(full), "--out", str(wo_key)))
    return src, repo, full, wo_key


def test_write_only_key_backs_up_again_and_again(tmp_path: Path) -> None:
    src, repo, full, wo_key = _write_only_host(tmp_path)
    state = tmp_path / "state"
    wo = _agent_file(tmp_path / "wo.toml", wo_key, repo, state)

    _ok(cli("repo", "backup", "--config", str(wo), str(src), "--dataset", "d"))
    assert oct(state.stat().st_mode & 0o777) == "0o700"  # created 0700, as promised
    (src / "a" / "hello.txt").write_text("changed between the daily runs\n")
    (src / "new.txt").write_text("new\n")
    second = _ok(cli("repo", "backup", "--config", str(wo), str(src), "--dataset", "d"))
    assert "needs the full key file" not in second.stderr
    third = _ok(cli("repo", "backup", "--config", str(wo), str(src), "--dataset", "d"))
    assert "incremental" in third.stdout

    # what the last run stored is the source, read back with the full key
    listed = _ok(cli("repo", "list", "--config", str(full))).stdout
    ids = sorted(w for w in listed.split() if w.startswith("local-d-"))
    assert len(ids) == 4, listed
    _ok(cli("repo", "restore", "--config", str(full), ids[-1], "--to", str(tmp_path / "out")))
    assert tree_differences(src, tmp_path / "out") == []


def test_an_existing_open_state_dir_is_narrowed_with_a_warning(tmp_path: Path) -> None:
    src, repo, _, wo_key = _write_only_host(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    cfg = _agent_file(tmp_path / "a.toml", wo_key, repo, state)
    proc = _ok(cli("repo", "backup", "--config", str(cfg), str(src), "--dataset", "d"))
    assert (
        f"state_dir {state} was mode 0755" in proc.stderr and "narrowed it to 0700" in proc.stderr
    )
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    again = _ok(cli("repo", "backup", "--config", str(cfg), str(src), "--dataset", "d"))
    assert "state_dir" not in again.stderr


class MonitoredNats:
    """A nats-server whose monitoring port tells how many clients ever connected."""

    def __init__(self, work: Path) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log = open(work / "nats.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-m",
                str(self.http_port),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    async def get(self, path: str) -> Any:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{self.http_port}{path}") as r,
        ):
            r.raise_for_status()
            return msgspec.json.decode(await r.read())

    async def ready(self) -> None:
        with anyio.fail_after(15):  # readiness via HTTP: it opens no client connection
            while True:
                try:
                    if (await self.get("/healthz")).get("status") == "ok":
                        return
                except aiohttp.ClientError:
                    await anyio.sleep(0.05)

    async def connections_ever(self) -> int:
        """Open plus closed client connections (the server remembers closed ones)."""
        return int((await self.get("/connz?state=all"))["total"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


async def test_audit_never_goes_to_a_default_or_unauthenticated_nats(tmp_path: Path) -> None:
    nats = MonitoredNats(tmp_path)
    try:
        await nats.ready()
        base = _agent_file(tmp_path / "a.toml", tmp_path / "k", tmp_path / "r", tmp_path / "s")
        cfg = load(base, AgentConfig)
        # The default now points at this real server, as 127.0.0.1:4222 may point at a
        # server that is not ours: the file did not set nats_url, so nothing is sent.
        msgspec.structs.force_setattr(cfg, "nats_url", nats.url)
        err = Console(record=True, width=400, file=io.StringIO())
        assert not await local_audit.report(cfg, "keys_rotated", "data key 01 is current", err)
        line = err.export_text()
        assert "the audit event stays local" in line and "nats_url is not set" in line
        assert "data key 01 is current" in line and line.count("\n") == 1
        assert await nats.connections_ever() == 0

        # set in the file, but the server would be reached without any authentication
        plain = load(
            _agent_file(
                tmp_path / "b.toml",
                tmp_path / "k",
                tmp_path / "r",
                tmp_path / "s",
                extra=f'nats_url = "{nats.url}"',
            ),
            AgentConfig,
        )
        err = Console(record=True, width=400, file=io.StringIO())
        assert not await local_audit.report(plain, "pruned", "forgot 1 backup", err)
        line = err.export_text()
        assert "without credentials or TLS" in line and "audit_plain_nats = true" in line
        assert await nats.connections_ever() == 0

        # the positive control: opted in, the tool does connect to that server
        trusted = load(
            _agent_file(
                tmp_path / "c.toml",
                tmp_path / "k",
                tmp_path / "r",
                tmp_path / "s",
                extra=f'nats_url = "{nats.url}"\naudit_plain_nats = true',
            ),
            AgentConfig,
        )
        await local_audit.report(trusted, "pruned", "forgot 1 backup", Console(quiet=True))
        # The server files a closed connection under "closed" a moment after the client
        # has gone: wait until it is listed. Exactly one then also proves that neither
        # refused report above made a connection the zeros might have been read too
        # early to see.
        for _ in range(200):
            if await nats.connections_ever() >= 1:
                break
            await anyio.sleep(0.05)
        assert await nats.connections_ever() == 1
    finally:
        nats.stop()


def test_repo_tool_without_nats_url_says_the_audit_stayed_local(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", big_mib=1)
    cfg = _agent_file(tmp_path / "a.toml", tmp_path / "k", tmp_path / "repo", tmp_path / "s")
    _ok(cli("repo", "backup", "--config", str(cfg), str(src), "--dataset", "d"))
    rotated = _ok(cli("repo", "keys", "rotate", "--config", str(cfg)))
    assert "is now current" in rotated.stdout
    assert rotated.stderr.count("\n") == 1, rotated.stderr
    assert "keys rotated is done but not audited on NATS (nats_url is not set" in rotated.stderr
    assert "the audit event stays local" in rotated.stderr


def test_two_first_backups_at_once_share_one_key(tmp_path: Path) -> None:
    """Threads race to create the same key file, 30 rounds: every one ends with the
    same complete key, exactly one creator, and no 'does not exist' error."""
    errors: list[BaseException] = []
    for round_ in range(30):
        work = tmp_path / f"r{round_}"
        cfg = AgentConfig(
            name="a",
            key_file=str(work / "keys" / "repository.key"),
            targets={"t": LocalTargetConfig(path=str(work / "repo"))},
        )
        results: list[tuple[object, bool]] = []
        start = threading.Barrier(2)

        def first_backup(
            cfg: AgentConfig = cfg, results: list[Any] = results, start: Any = start
        ) -> None:
            async def go() -> None:
                target = open_target("t", cfg.targets["t"])
                start.wait()
                results.append(await prepare_key(cfg, {"t": target}))

            try:
                anyio.run(go)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=first_backup) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [], errors
        (k1, c1), (k2, c2) = results
        assert k1 == k2 == load_any_key_file(cfg.key_file)
        assert sorted([c1, c2]) == [False, True]
        assert [p.name for p in (work / "keys").iterdir()] == ["repository.key"]  # no leftovers


def test_a_second_creator_gets_the_first_key(tmp_path: Path) -> None:
    """The losing side of the race, made deterministic: the file appeared meanwhile."""
    path = str(tmp_path / "repository.key")
    first, created = create_atomically(path, None)
    assert created
    second, created = create_atomically(path, None)
    assert not created and second == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repository.key"]


def test_is_set_tells_a_key_in_the_file_from_a_default(tmp_path: Path) -> None:
    """What decides whether the tools may publish: nats_url written in the file."""
    written = agent_toml(
        tmp_path / "t.toml",
        name="n",
        nats_url="nats://127.0.0.1:4222",  # the default's value, but chosen
        key_file=tmp_path / "k",
        targets={"t": LocalTargetConfig(path=str(tmp_path / "r"))},
    )
    assert is_set(load(written, AgentConfig), "nats_url")
    left_out = _agent_file(tmp_path / "x.toml", tmp_path / "k", tmp_path / "r", tmp_path / "s")
    assert not is_set(load(left_out, AgentConfig), "nats_url")

"""The three backup tools as command builders: each on its own fresh local repository, with
its state (key, cache, config) under the benchmark's work folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from proc import Cmd, fresh, output

PASSWORD = "bench"


def mosaic_argv() -> list[str]:
    """``mosaic-backup`` next to this interpreter (the venv), else ``python -m mosaic.cli``."""
    script = Path(sys.executable).parent / "mosaic-backup"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mosaic.cli"]


class Tool:
    """One tool's commands. ``reset()`` gives it a fresh repository and state."""

    name = ""

    def __init__(self, work: Path, src: Path) -> None:
        self.work = work
        self.src = src
        self.repo = work / "repos" / self.name
        self.home = work / "state" / self.name

    def reset(self) -> None:
        fresh(self.repo)
        fresh(self.home).mkdir(parents=True)
        self.repo.parent.mkdir(parents=True, exist_ok=True)

    def version(self) -> str:
        raise NotImplementedError

    def init(self) -> list[Cmd]:
        """Untimed commands that create the repository."""
        return []

    def backup(self, n: int) -> Cmd:
        """The ``n``-th backup (1 = first, full) of ``src``."""
        raise NotImplementedError

    def checks(self) -> list[Cmd]:
        """Untimed commands run after the last backup (must succeed)."""
        return []

    def restore(self, dest: Path) -> Cmd:
        """Restore the newest backup into the empty folder ``dest``."""
        raise NotImplementedError

    def restored_root(self, dest: Path) -> Path:
        """Where ``src`` itself ends up under ``dest``."""
        return dest / self.src.relative_to("/")


class Mosaic(Tool):
    name = "mosaic"

    @property
    def config(self) -> Path:
        return self.home / "agent.toml"

    def version(self) -> str:
        code = "import importlib.metadata as m; print('mosaic-backup', m.version('mosaic-backup'))"
        return output([sys.executable, "-c", code])

    def reset(self) -> None:
        super().reset()
        self.config.write_text(
            f'name = "bench"\nkey_file = "{self.home / "key"}"\n'
            f'[targets.local]\ntype = "local"\npath = "{self.repo}"\n'
        )

    def _repo_cmd(self, *args: str) -> Cmd:
        return Cmd([*mosaic_argv(), "repo", args[0], "--config", str(self.config), *args[1:]])

    def backup(self, n: int) -> Cmd:
        # --type incremental: the first backup of a dataset is full anyway; later ones use
        # the parent backup's file entries (path, size, mtime, ctime, inode) as a file cache.
        return self._repo_cmd("backup", "--dataset", "data", "--type", "incremental", str(self.src))

    def checks(self) -> list[Cmd]:
        return [self._repo_cmd("list")]

    def newest_backup(self) -> str:
        names = sorted(os.listdir(self.repo / "manifests"))
        if not names:
            raise RuntimeError(f"no manifests in {self.repo / 'manifests'}")
        return names[-1]

    def restore(self, dest: Path) -> Cmd:
        return self._repo_cmd("restore", self.newest_backup(), "--to", str(dest))

    def restored_root(self, dest: Path) -> Path:
        return dest


class Restic(Tool):
    name = "restic"

    @property
    def env(self) -> dict[str, str]:
        return {"RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(self.home / "cache")}

    def version(self) -> str:
        return output(["restic", "version"])

    def init(self) -> list[Cmd]:
        # Repository format 2: compressed, zstd "auto" by default.
        argv = ["restic", "init", "--repo", str(self.repo), "--repository-version", "2"]
        return [Cmd(argv, self.env)]

    def backup(self, n: int) -> Cmd:
        return Cmd(["restic", "backup", "--repo", str(self.repo), str(self.src)], self.env)

    def restore(self, dest: Path) -> Cmd:
        argv = ["restic", "restore", "latest", "--repo", str(self.repo), "--target", str(dest)]
        return Cmd(argv, self.env)


class Borg(Tool):
    name = "borg"
    last = 0

    @property
    def env(self) -> dict[str, str]:
        return {
            "BORG_PASSPHRASE": PASSWORD,
            "BORG_BASE_DIR": str(self.home),  # cache, security and config dirs: fresh per run
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def version(self) -> str:
        return output(["borg", "--version"])

    def init(self) -> list[Cmd]:
        return [Cmd(["borg", "init", "--encryption=repokey-blake2", str(self.repo)], self.env)]

    def backup(self, n: int) -> Cmd:
        self.last = n
        argv = ["borg", "create", "--compression", "zstd,3", f"{self.repo}::a{n}", str(self.src)]
        return Cmd(argv, self.env)

    def restore(self, dest: Path) -> Cmd:
        # borg extracts relative to the working directory, stripping the leading '/'.
        return Cmd(["borg", "extract", f"{self.repo}::a{self.last}"], self.env, cwd=dest)


TOOLS: dict[str, type[Tool]] = {t.name: t for t in (Mosaic, Restic, Borg)}

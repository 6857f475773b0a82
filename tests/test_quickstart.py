"""The README's first command: quickstart backs up, restores and compares for real."""

from __future__ import annotations

from pathlib import Path

from tests.harness import cli


def test_quickstart_end_to_end(tmp_path: Path) -> None:
    src = tmp_path / "mine"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("data\n" * 1000)
    (src / "empty").write_bytes(b"")
    proc = cli("quickstart", "--path", str(src), "--workdir", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stderr
    assert "identical" in proc.stdout
    assert "Keep a copy of this key file" in proc.stderr
    assert (tmp_path / "work" / "repository" / "config").is_file()
    assert (tmp_path / "work" / "restored" / "sub" / "f.txt").read_text() == "data\n" * 1000


def test_quickstart_sample(tmp_path: Path) -> None:
    proc = cli("quickstart")
    assert proc.returncode == 0, proc.stderr
    assert "identical" in proc.stdout and "dedup ratio" in proc.stdout

"""Benchmark mosaic-backup against restic and borg on the same data, on this machine, in one run.

    /tmp/venv/bin/python bench/run.py [--size-mib 1536] [--runs 3] [--workdir DIR]
                                      [--tools mosaic,restic,borg] [--verbose]

Quick smoke test: ``--size-mib 64 --runs 1``. Each run gives every tool, in a rotated order
(run 1: mosaic, restic, borg; run 2: restic, borg, mosaic; …), a fresh copy of the generated
dataset at the same path and a fresh local repository, then measures: full backup,
no-change backup, incremental backup after the same deterministic 1 % mutation, full
restore (checked byte for byte), repository size and peak RSS. The table shows medians and
ratios against restic. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import dataset
import proc
import report
from tools import TOOLS, Tool

MB = 1_000_000
HERE = Path(__file__).resolve().parent
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1536, help="dataset size (default 1536)")
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs (default 3)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mosaic-bench"))
    ap.add_argument("--tools", default="mosaic,restic,borg", help="comma-separated")
    ap.add_argument("--seed", type=int, default=42, help="dataset seed (mutation: seed+1)")
    ap.add_argument("--results", type=Path, default=HERE, help="where results.md/json go")
    ap.add_argument("--verbose", "-v", action="store_true", help="print every command")
    args = ap.parse_args()
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in args.tools if t not in TOOLS]
    if unknown or not args.tools:
        ap.error(f"unknown tool(s) {unknown}; choose from {', '.join(TOOLS)}")
    if args.runs < 1 or args.size_mib < 8:
        ap.error("--runs must be >= 1 and --size-mib >= 8")
    args.workdir = args.workdir.resolve()
    return args


def ensure_dataset(work: Path, size_mib: int, seed: int) -> tuple[Path, int, int]:
    """The pristine dataset (generated once, reused while size and seed match)."""
    base = work / f"dataset-{size_mib}mib-seed{seed}"
    marker = base.with_suffix(".json")
    if not (base.is_dir() and marker.exists()):
        say(f"generating the {size_mib} MiB dataset (seed {seed}) in {base}")
        proc.fresh(base)
        tmp = proc.fresh(base.with_name(base.name + ".tmp"))
        dataset.generate(tmp, size_mib, seed)
        tmp.rename(base)
        files = dataset.walk(base)
        marker.write_text(json.dumps({"files": len(files), "bytes": sum(n for _, n in files)}))
    meta = json.loads(marker.read_text())
    return base, int(meta["bytes"]), int(meta["files"])


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.workdir
        self.src = self.work / "src"  # every tool backs up this same path
        self.fingerprint: list[tuple[str, int]] | None = None

    def step(self, label: str, tool: Tool, cmd: proc.Cmd, log: Path) -> proc.Result:
        if self.args.verbose:
            say(f"  $ {cmd.show()}")
        res = proc.run(cmd, log)
        rss = res.peak_rss_mib
        say(f"  {tool.name:6} {label:22} {res.seconds:8.2f} s   peak RSS {rss:7.1f} MiB")
        return res

    def one(self, run: int, tool: Tool, base: Path, base_bytes: int) -> dict[str, Any]:
        """One tool, one run: full, no-change, incremental, restore, size, RSS."""
        log = self.work / "logs" / f"run{run}-{tool.name}.log"
        say(f"run {run}/{self.args.runs} {tool.name}: fresh copy of the dataset at {self.src}")
        proc.copy_tree(base, self.src)
        tool.reset()
        proc.sync()
        say(f"run {run}/{self.args.runs} {tool.name}: warm-up read of the dataset (untimed)")
        proc.warm(self.src)
        for cmd in tool.init():
            if self.args.verbose:
                say(f"  $ {cmd.show()}")
            proc.run(cmd, log)

        rss: dict[str, float] = {}
        full = self.step("full backup", tool, tool.backup(1), log)
        proc.sync()
        same = self.step("no-change backup", tool, tool.backup(2), log)
        proc.sync()
        changes = dataset.mutate(self.src, 0.01, self.args.seed + 1)
        proc.sync()
        self.check_same_mutation(tool)
        if self.args.verbose:
            say(f"  mutation: {changes}")
        incr = self.step("incremental backup", tool, tool.backup(3), log)
        proc.sync()
        for cmd in tool.checks():
            if self.args.verbose:
                say(f"  $ {cmd.show()}")
            proc.run(cmd, log)
        repo_mib = proc.du_bytes(tool.repo) / (1 << 20)

        dest = proc.fresh(self.work / "restore")
        dest.mkdir()
        rest = self.step("restore", tool, tool.restore(dest), log)
        proc.sync()
        restored_bytes = sum(n for _, n in self.fingerprint or [])
        diffs = proc.compare_trees(self.src, tool.restored_root(dest))
        if diffs:
            shown = "\n  ".join(diffs[:20])
            raise SystemExit(
                f"FAIL: {tool.name} run {run}: restore differs from the source "
                f"({len(diffs)} differences; kept in {dest}):\n  {shown}"
            )
        say(f"  {tool.name:6} restore verified byte for byte; repository {repo_mib:,.1f} MiB")
        for name, res in (("full", full), ("nochange", same), ("incr", incr), ("restore", rest)):
            rss[name] = res.peak_rss_mib
        proc.fresh(dest)
        proc.fresh(tool.repo)
        proc.fresh(tool.home)
        return {
            "run": run,
            "tool": tool.name,
            "full_s": full.seconds,
            "full_mbps": base_bytes / MB / full.seconds,
            "nochange_s": same.seconds,
            "incr_s": incr.seconds,
            "restore_s": rest.seconds,
            "restore_mbps": restored_bytes / MB / rest.seconds,
            "repo_mib": repo_mib,
            "rss_mib": max(rss.values()),
            "rss_by_step_mib": rss,
            "mutation": changes,
        }

    def check_same_mutation(self, tool: Tool) -> None:
        """Every tool must see the same mutated tree (names and sizes)."""
        files = dataset.walk(self.src)
        if self.fingerprint is None:
            self.fingerprint = files
        elif files != self.fingerprint:
            raise SystemExit(f"FAIL: the mutated dataset differs for {tool.name}")

    def main(self) -> int:
        args = self.args
        self.work.mkdir(parents=True, exist_ok=True)
        proc.fresh(self.work / "logs")
        tools = [TOOLS[name](self.work, self.src) for name in args.tools]
        missing = [t.name for t in tools if t.name != "mosaic" and not shutil.which(t.name)]
        if missing:
            raise SystemExit(
                f"not installed: {', '.join(missing)} (apt-get install restic borgbackup)"
            )
        machine = proc.machine_info(self.work)
        versions = {t.name: t.version() for t in tools}
        for k, v in machine.items():
            say(f"{k}: {v}")
        for v in versions.values():
            say(f"version: {v}")
        base, base_bytes, nfiles = ensure_dataset(self.work, args.size_mib, args.seed)
        say(f"dataset: {base_bytes / (1 << 20):,.1f} MiB in {nfiles:,} files ({base})")
        say(
            "page cache: not dropped (shared machine); every tool's source is read once, "
            "untimed, right before its first backup, so all tools start from a warm cache"
        )

        runs: list[dict[str, Any]] = []
        for run in range(1, args.runs + 1):
            shift = (run - 1) % len(tools)
            order = tools[shift:] + tools[:shift]
            say(f"=== run {run}/{args.runs}: order {', '.join(t.name for t in order)}")
            runs.extend(self.one(run, tool, base, base_bytes) for tool in order)
        proc.fresh(self.src)

        baseline = "restic" if "restic" in args.tools else args.tools[0]
        med = report.medians(runs, args.tools)
        info: dict[str, Any] = {
            "command": " ".join(sys.argv),
            "runs": args.runs,
            "dataset": f"{base_bytes / (1 << 20):,.1f} MiB, {nfiles:,} files, seed {args.seed}",
            "cache": "warm (one untimed read of the source before each tool's first backup)",
            "MB": "10^6 bytes; throughput = dataset bytes / wall seconds",
            "machine": machine,
            "versions": versions,
        }
        md, js = report.write(args.results, info, runs, med, baseline)
        print()
        print(f"Medians of {args.runs} interleaved run(s), {info['dataset']}; warm page cache.")
        print(f"Ratios are tool/{baseline}; last column: which direction is better.")
        print(report.text_table(med, baseline))
        print(f"\nwritten: {md} and {js}; command logs in {self.work / 'logs'}")
        return 0


if __name__ == "__main__":
    sys.exit(Bench(parse_args()).main())

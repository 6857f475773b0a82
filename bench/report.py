"""Medians, ratios against the baseline tool, and the result table as text, Markdown and JSON."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    digits: int = 2


METRICS = [
    Metric("full_s", "full backup (s)", False),
    Metric("full_mbps", "full backup (MB/s)", True, 1),
    Metric("nochange_s", "no-change backup (s)", False),
    Metric("incr_s", "1% incremental backup (s)", False),
    Metric("restore_s", "full restore (s)", False),
    Metric("restore_mbps", "full restore (MB/s)", True, 1),
    Metric("repo_mib", "repository size (MiB)", False, 1),
    Metric("rss_mib", "peak RSS, max of commands (MiB)", False, 1),
]


def medians(runs: list[dict[str, Any]], tools: list[str]) -> dict[str, dict[str, float]]:
    """tool → metric → median over the runs."""
    out: dict[str, dict[str, float]] = {}
    for tool in tools:
        rows = [r for r in runs if r["tool"] == tool]
        out[tool] = {m.key: statistics.median(r[m.key] for r in rows) for m in METRICS}
    return out


def ratios(med: dict[str, dict[str, float]], baseline: str) -> dict[str, dict[str, float | None]]:
    """tool → metric → tool median / baseline median (None if the baseline is 0)."""
    out: dict[str, dict[str, float | None]] = {}
    for tool, values in med.items():
        if tool == baseline:
            continue
        base = med[baseline]
        out[tool] = {k: (v / base[k] if base[k] else None) for k, v in values.items()}
    return out


def _rows(med: dict[str, dict[str, float]], baseline: str) -> tuple[list[str], list[list[str]]]:
    tools = list(med)
    others = [t for t in tools if t != baseline]
    rat = ratios(med, baseline)
    header = ["metric (median)", *tools, *(f"{t}/{baseline}" for t in others), "ratio: better if"]
    rows = []
    for m in METRICS:
        cells = [m.label, *(f"{med[t][m.key]:,.{m.digits}f}" for t in tools)]
        for t in others:
            r = rat[t][m.key]
            cells.append("n/a" if r is None else f"{r:.2f}x")
        cells.append("higher" if m.higher_is_better else "lower")
        rows.append(cells)
    return header, rows


def text_table(med: dict[str, dict[str, float]], baseline: str) -> str:
    header, rows = _rows(med, baseline)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:-1], widths[1:-1], strict=True))
        return "  ".join([first, *rest, cells[-1].ljust(widths[-1])]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def markdown_table(med: dict[str, dict[str, float]], baseline: str) -> str:
    header, rows = _rows(med, baseline)
    align = ["---", *(["---:"] * (len(header) - 2)), "---"]
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, align, *rows])


def write(
    out_dir: Path,
    info: dict[str, Any],
    runs: list[dict[str, Any]],
    med: dict[str, dict[str, float]],
    baseline: str,
) -> tuple[Path, Path]:
    """``results.md`` and ``results.json`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "results.md"
    lines = [
        "# Backup benchmark: mosaic-backup vs restic vs borg",
        "",
        f"Median of {info['runs']} interleaved run(s); ratios are tool/{baseline} medians "
        "(the last column says whether a higher or a lower ratio is better).",
        "",
        markdown_table(med, baseline),
        "",
        "## Setup",
        "",
        *(f"- {k}: {v}" for k, v in info.items() if not isinstance(v, dict)),
        *(f"- {k}: {v}" for k, v in info.get("machine", {}).items()),
        *(f"- version: {v}" for v in info.get("versions", {}).values()),
        "",
    ]
    md.write_text("\n".join(lines))
    js = out_dir / "results.json"
    doc = {
        "info": info,
        "baseline": baseline,
        "metrics": {
            m.key: {"label": m.label, "higher_is_better": m.higher_is_better} for m in METRICS
        },
        "medians": med,
        "ratios_vs_baseline": ratios(med, baseline),
        "runs": runs,
    }
    js.write_text(json.dumps(doc, indent=2) + "\n")
    return md, js

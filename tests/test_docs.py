"""The manual stays true to the code: every config field has a row in
docs/configuration.md with the code's default, the README stays short, relative links
resolve, and the figures the docs state are the ones in the code."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import msgspec.inspect as mi

from engine.backup import pipeline
from engine.format.repoconfig import RepoConfig
from engine.repository import WriteOptions
from shared.config.agent import AgentConfig
from shared.config.coordinator import CoordinatorConfig
from tests.harness import REPO_ROOT

DOCS = REPO_ROOT / "docs"
README = REPO_ROOT / "README.md"
MiB = 1 << 20


def config_structs() -> list[type[msgspec.Struct]]:
    """Every Struct a config file can hold, tagged-union members included."""
    found: list[type[msgspec.Struct]] = []
    stack: list[mi.Type] = [mi.type_info(AgentConfig), mi.type_info(CoordinatorConfig)]
    while stack:
        t = stack.pop()
        if isinstance(t, mi.Metadata):
            stack.append(t.type)
        elif isinstance(t, mi.StructType):
            if t.cls not in found:
                found.append(t.cls)
                stack.extend(f.type for f in t.fields)
        elif isinstance(t, mi.UnionType):
            stack.extend(t.types)
        elif isinstance(t, mi.DictType):
            stack.append(t.value_type)
        elif isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
            stack.append(t.item_type)
    return found


def struct_fields(cls: type[msgspec.Struct]) -> tuple[mi.Field, ...]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return info.fields


def owner(cls: type[msgspec.Struct], field: str) -> type[msgspec.Struct]:
    """The most basic Struct class declaring ``field``: inherited NATS keys are
    documented once, in NatsClientConfig's table."""
    bases = [b for b in cls.__mro__ if issubclass(b, msgspec.Struct) and b is not msgspec.Struct]
    return [b for b in bases if field in getattr(b, "__struct_fields__", ())][-1]


def sections(text: str) -> dict[str, dict[str, str]]:
    """Heading naming a class in backticks and parentheses → {field: default cell}."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            m = re.search(r"\(`(\w+)`\)\s*$", line)
            current = out.setdefault(m.group(1), {}) if m else None
        elif current is not None:
            row = re.match(r"^\| `(\w+)` \| ([^|]*) \|", line)
            if row:
                current[row.group(1)] = row.group(2).strip()
    return out


def rendered_default(f: mi.Field) -> str:
    """How configuration.md writes a default (see its introduction)."""
    if f.required:
        return "required"
    value = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
    if value is None:
        return "unset"
    if isinstance(value, msgspec.Struct):
        return "defaults"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, int | float):
        return f"`{value!r}`"
    return f"`{json.dumps(value)}`"


def test_every_config_field_has_a_row_with_the_codes_default() -> None:
    documented = sections((DOCS / "configuration.md").read_text())
    problems = []
    structs = config_structs()
    assert {"S3TargetConfig", "DockerExecSource", "BtrfsSnapshot", "NatsClientConfig"} <= {
        owner(c, f).__name__ for c in structs for f in c.__struct_fields__
    }
    for cls in structs:
        for f in struct_fields(cls):
            home = owner(cls, f.name).__name__
            rows = documented.get(home)
            if rows is None:
                problems.append(f"no section headed (`{home}`) for {cls.__name__}.{f.name}")
            elif f.name not in rows:
                problems.append(f"section `{home}` has no row for field `{f.name}`")
            elif rows[f.name] != rendered_default(f):
                problems.append(
                    f"section `{home}` field `{f.name}`: default {rows[f.name]!r}, "
                    f"code says {rendered_default(f)!r}"
                )
    assert not problems, "docs/configuration.md:\n" + "\n".join(problems)


def test_readme_is_short() -> None:
    lines = README.read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move the detail into docs/"


def test_relative_links_point_at_existing_files() -> None:
    broken = []
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(REPO_ROOT)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_anchors_of_links_between_pages_exist() -> None:
    def slugs(page: Path) -> set[str]:
        heads = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
        return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}

    broken = []
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)\s#:]*\.md)?#([^)\s]+)\)", page.read_text()):
            dest = (page.parent / target).resolve() if target else page
            if dest.suffix == ".md" and anchor not in slugs(dest):
                broken.append(f"{page.relative_to(REPO_ROOT)}: {target}#{anchor}")
    assert not broken, "links to missing headings:\n" + "\n".join(broken)


def figures() -> dict[str, str]:
    """The figures the manual states, from the code."""
    chunker = {f.name: f.default for f in struct_fields(RepoConfig)}
    apt = re.search(r"^APT_PACKAGES := (.+)$", (REPO_ROOT / "Makefile").read_text(), re.M)
    assert apt is not None
    return {
        "pack": f"{WriteOptions().pack_size // MiB} MiB",
        "min": f"{chunker['chunker_min'] >> 10} KiB",
        "avg": f"{chunker['chunker_avg'] >> 10} KiB",
        "max": f"{chunker['chunker_max'] // MiB} MiB",
        "batch": f"{pipeline.READ_BATCH_BYTES // MiB} MiB",
        "apt": apt.group(1).strip(),
    }


def test_stated_figures_are_the_codes() -> None:
    f = figures()
    assert f["pack"] == "4 MiB" and f["avg"] == "768 KiB", f  # the rows below say so
    concepts = (DOCS / "concepts.md").read_text()
    row = f"| chunks (FastCDC) | min {f['min']}, average {f['avg']}, max {f['max']} |"
    assert row in concepts, f"docs/concepts.md lacks {row!r}"
    assert f"| pack files | {f['pack']} (`pack_size`) |" in concepts
    assert f"| read batch | {f['batch']} (`READ_BATCH_BYTES`) |" in concepts
    testing = (DOCS / "testing.md").read_text()
    packages = " ".join(f"`{p}`" for p in f["apt"].split())
    assert packages in testing, f"docs/testing.md must list the Makefile's packages: {packages}"


def test_exit_codes_in_the_quickstart_are_the_clis(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "mosaic.cli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    text = (DOCS / "quickstart.md").read_text()
    assert run("no-such-command").returncode == 2
    missing = run("repo", "list", "--config", str(tmp_path / "agent.toml"))
    assert missing.returncode == 1, missing.stderr
    assert missing.stderr.count("\n") == 1, missing.stderr
    for code, meaning in ((0, "success"), (1, "an error you can fix"), (2, "bad command line")):
        assert f"| {code} | {meaning}" in text, f"docs/quickstart.md: exit code {code}"


def test_module_paths_named_in_the_manual_exist() -> None:
    """A file named in prose (``engine/backup/pipeline.py``) survives the next move."""
    named = re.compile(
        r"(?<![\w./-])((?:shared|engine|agent|coordinator|mosaic|tests|bench|deploy)"
        r"/[\w/-]*(?:\.\w+|/))"
    )
    missing = [
        f"{page.relative_to(REPO_ROOT)}: {path}"
        for page in [README, *sorted(DOCS.glob("*.md"))]
        for path in sorted(set(named.findall(page.read_text())))
        if not (REPO_ROOT / path).exists()
    ]
    assert not missing, "files named in the manual that do not exist:\n" + "\n".join(missing)


def resolves(name: str) -> bool:
    """``a.b.c`` is a module, or an attribute path inside the longest module prefix."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True
    return False


NATS_SUBJECT = re.compile(r"^mosaic\.(job|event|api|heartbeat|audit|alert)\.")


def test_dotted_names_in_the_manual_resolve() -> None:
    """``agent.sources.streams_for`` in prose is a module or an attribute of one."""
    dotted = re.compile(r"`((?:shared|engine|agent|coordinator|mosaic)(?:\.\w+)+)`")
    missing = [
        f"{page.relative_to(REPO_ROOT)}: {name}"
        for page in [README, *sorted(DOCS.glob("*.md"))]
        for name in sorted(set(dotted.findall(page.read_text())))
        if name not in {"agent.toml", "coordinator.toml"}
        and not NATS_SUBJECT.match(name)
        and not resolves(name)
    ]
    assert not missing, "names in the manual that do not resolve:\n" + "\n".join(missing)

"""``[priority]``: nice and ionice of the agent and of the dump processes it starts.

Checked on real processes, read back the way an operator would: the nice value from
``/proc/<pid>/stat`` and the I/O class from ``ionice -p``. A real ``mosaic-backup agent
run`` process with ``[priority]`` backs up a real Redis server: the ``redis-cli --rdb``
dump it starts and the dataset's pre-hook run at the configured priorities, and so does
every thread of the agent itself. Bad values are refused in one line naming the field.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from agent import priority
from agent.sources.command import CommandStream
from engine.keys.files import create_key_file
from mosaic import operator
from shared.config.agent import AgentConfig
from shared.config.load import load
from shared.config.priority import PriorityConfig
from shared.config.targets import LocalTargetConfig
from shared.errors import ConfigError
from shared.wire.events import BackupCompleted
from shared.wire.sources import RedisSource
from tests.fixtures.redis import RedisServer
from tests.harness import REPO_ROOT, agent_toml, cli, running_stack, unique

QUIET = Console(quiet=True)


def nice_of(pid: int) -> int:
    """Field 19 of /proc/<pid>/stat (after the command name, which may hold spaces)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[16])


def ionice_of(pid: int) -> str:
    return subprocess.run(
        ["ionice", "-p", str(pid)], capture_output=True, text=True, check=True
    ).stdout.strip()


def threads_of(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def test_a_dump_process_gets_the_priority_right_after_its_spawn() -> None:
    """CommandStream (pg_dump, pg_basebackup, mariabackup, redis-cli) sets it by pid;
    this test process itself stays as it was."""
    own = (nice_of(os.getpid()), ionice_of(os.getpid()))
    priority.for_children(PriorityConfig(nice=7, ionice_class="idle"))
    try:
        stream = CommandStream(["sleep", "60"], "sleep")
        try:
            pid = stream._proc.pid
            assert nice_of(pid) == 7
            assert ionice_of(pid) == "idle"
        finally:
            stream.abort()
        priority.for_children(PriorityConfig(ionice_class="best-effort", ionice_level=2))
        stream = CommandStream(["sleep", "60"], "sleep")
        try:
            assert ionice_of(stream._proc.pid) == "best-effort: prio 2"
            assert nice_of(stream._proc.pid) == own[0]  # nice unset: left alone
        finally:
            stream.abort()
    finally:
        priority.for_children(None)
    assert (nice_of(os.getpid()), ionice_of(os.getpid())) == own


def test_applying_to_a_process_sets_every_thread_and_children_inherit(tmp_path: Path) -> None:
    """What the agent does at its start, in a separate interpreter with threads."""
    script = (
        "import os, subprocess, sys, threading, time\n"
        "from agent import priority\n"
        "from shared.config.priority import PriorityConfig\n"
        "ev = threading.Event()\n"
        "ts = [threading.Thread(target=ev.wait) for _ in range(3)]\n"
        "[t.start() for t in ts]\n"
        "priority.apply_to_agent(PriorityConfig(nice=12, ionice_class='realtime', "
        "ionice_level=5))\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "print(child.pid, flush=True)\n"
        "sys.stdin.readline()\n"
        "child.kill(); ev.set()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        child = int(proc.stdout.readline())  # the marker: applied, child spawned
        tids = threads_of(proc.pid)
        assert len(tids) >= 4
        assert {nice_of(t) for t in tids} == {12}
        assert {ionice_of(t) for t in tids} == {"realtime: prio 5"}
        assert (nice_of(child), ionice_of(child)) == (12, "realtime: prio 5")
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0


def start_agent(cfg: Path, bin_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``mosaic-backup agent run`` with ``bin_dir`` first on its PATH."""
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "mosaic.cli", "agent", "run", "--config", str(cfg)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


RECORDER = """#!/bin/sh
# a redis-cli in front of the real one: the --rdb dump writes down its own priority
case " $* " in
  *" --rdb "*) cat /proc/$$/stat > {out}/dump.stat; ionice -p $$ > {out}/dump.ionice ;;
esac
exec {real} "$@"
"""


async def test_agent_and_its_dumps_run_at_the_configured_priority(
    nats_url: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    out = tmp_path / "seen"
    out.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = subprocess.run(["which", "redis-cli"], capture_output=True, text=True, check=True)
    wrapper = bin_dir / "redis-cli"
    wrapper.write_text(RECORDER.format(out=out, real=real.stdout.strip()))
    wrapper.chmod(0o755)
    redis_server.cli("SET", "k", "v")

    target = LocalTargetConfig(path=str(tmp_path / "repo"))
    name = unique("agent")
    source = RedisSource(port=redis_server.port, aof=False)
    async with running_stack(
        nats_url, tmp_path, target, source, with_agent=False, agent_name=name
    ) as st:
        hook = f"cat /proc/$$/stat > {out}/hook.stat; ionice -p $$ > {out}/hook.ionice"
        extra = (
            '[priority]\nnice = 10\nionice_class = "best-effort"\nionice_level = 6\n'
            f"[hooks.{st.dataset}]\npre = ['{hook}']\n"  # a TOML literal string
        )
        cfg = agent_toml(
            tmp_path / "agent.toml",
            name=name,
            nats_url=nats_url,
            key_file=tmp_path / "repo.key",
            targets={"t": target},
            extra=extra,
        )
        create_key_file(str(tmp_path / "repo.key"), None)
        agent = start_agent(cfg, bin_dir, tmp_path / "agent.log")
        try:
            done = await operator.backup(st.bus, st.dataset, "full", QUIET, QUIET, timeout=60)
            assert isinstance(done, BackupCompleted), (tmp_path / "agent.log").read_text()
            tids = threads_of(agent.pid)  # the agent itself, every thread it has by now
            assert {nice_of(t) for t in tids} == {10}
            assert {ionice_of(t) for t in tids} == {"best-effort: prio 6"}
        finally:
            agent.send_signal(signal.SIGINT)
            agent.wait(20)

    for what in ("dump", "hook"):
        stat = (out / f"{what}.stat").read_text()
        assert int(stat.rpartition(")")[2].split()[16]) == 10, what
        assert (out / f"{what}.ionice").read_text().strip() == "best-effort: prio 6", what


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "field", "fix"),
    [
        ("nice = 25", "priority.nice", "write a number from -20"),
        ("nice = -21", "priority.nice", "write a number from -20"),
        ('ionice_class = "low"', "priority.ionice_class", 'write one of "idle"'),
        ('ionice_class = "best-effort"\nionice_level = 8', "priority.ionice_level", "0 (first)"),
        ('ionice_class = "idle"\nionice_level = 3', "priority.ionice_level", "or remove"),
        ("ionice_level = 3", "priority.ionice_level", "needs ionice_class"),
        ("renice = 3", "priority.renice", "did you mean `nice`?"),
    ],
)
def test_bad_priority_is_one_line_naming_the_field(
    tmp_path: Path, lines: str, field: str, fix: str
) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(
        f'name = "a"\nkey_file = "{tmp_path}/k"\n[targets.disk]\ntype = "local"\n'
        f'path = "{tmp_path}/repo"\n[priority]\n{lines}\n'
    )
    with pytest.raises(ConfigError) as exc:
        load(p, AgentConfig)
    text = str(exc.value)
    assert "\n" not in text and f"field '{field}'" in text and fix in text, text


def test_agent_refuses_nice_out_of_range_at_start(tmp_path: Path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(
        f'name = "a"\nkey_file = "{tmp_path}/k"\n[targets.disk]\ntype = "local"\n'
        f'path = "{tmp_path}/repo"\n[priority]\nnice = 40\n'
    )
    res = cli("agent", "run", "--config", str(p))
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "field 'priority.nice': 40 is out of range" in lines[0], res.stderr


def test_a_priority_the_user_may_not_take_is_one_line(tmp_path: Path) -> None:
    """As an unprivileged user a negative nice is refused by the kernel: the agent says
    which field and what to do instead (run in a child that drops root first)."""
    script = (
        "import os\n"
        "from agent import priority\n"
        "from shared.config.priority import PriorityConfig\n"
        "from shared.errors import ConfigError\n"
        "if os.geteuid() == 0:\n"
        "    os.setuid(65534)\n"
        "try:\n"
        "    priority.apply_to_agent(PriorityConfig(nice=-5))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert res.stdout.strip().startswith("field 'priority.nice': -5 is not permitted")
    assert "use a higher value" in res.stdout

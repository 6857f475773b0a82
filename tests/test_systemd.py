"""install-systemd writes units that systemd accepts, that run as shipped, with the
strategy's timers.

"As shipped" is checked the way systemd would start the coordinator, since no systemd
runs as PID 1 here: the files ``pki`` and ``nats-config`` write (root, 0600) are copied
into a credentials folder exactly as the unit's ``LoadCredential=`` lines name them,
and the coordinator command of the unit's ``ExecStart=`` runs as an unprivileged user
(``setpriv``) in a private mount namespace whose /var/lib holds only its state folder —
and connects to a real TLS nats-server (client certificates verified, password login)
configured by those same files. The same user, given the original paths, is refused:
that is the defect the credentials fix.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from engine.keys.files import PASSPHRASE_ENV, create_key_file
from mosaic.services import PASSPHRASE_CREDENTIAL, start_agent
from shared.config.load import CREDENTIAL_FIELDS
from shared.natsserver import free_port, nats_server_binary
from tests.harness import cli

NOBODY = 65534
WAIT_S = 60.0  # upper bound for the coordinator to report ready


def _verify(files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=files[0].parent,
    )


def exposure(unit: Path) -> float:
    """``systemd-analyze security``'s overall exposure (0 safe … 10 exposed) of a file."""
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit.parent,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1))


def settings(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def write_private(path: Path, text: str) -> Path:
    """As an operator writes a config holding paths to secrets: root, 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def agent_config(tmp: Path, *, state_dir: str = "/var/lib/mosaic-backup-agent") -> Path:
    return write_private(
        tmp / "etc" / "agent.toml",
        f'name = "web1"\nkey_file = "{tmp / "keys" / "repository.key"}"\n'
        f'state_dir = "{state_dir}"\n'
        f'[targets.disk]\ntype = "local"\npath = "{tmp / "repo"}"\n',
    )


def coordinator_config(tmp: Path, extra: str = "") -> Path:
    return write_private(
        tmp / "etc" / "coordinator.toml",
        f'name = "coord"\n{extra}[catalog]\nurl = "sqlite:///var/lib/mosaic-backup/catalog.db"\n',
    )


def test_agent_and_coordinator_units_pass_systemd_analyze(tmp_path: Path) -> None:
    out = tmp_path / "units"
    proc = cli(
        "install-systemd",
        "--dir",
        str(out),
        "--agent-config",
        str(agent_config(tmp_path)),
        "--coordinator-config",
        str(coordinator_config(tmp_path)),
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [
        "mosaic-backup-agent.service",
        "mosaic-backup-coordinator.service",
    ]
    check = _verify(files)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    assert f"agent run --config {tmp_path / 'etc' / 'agent.toml'}" in files[0].read_text()
    assert "DynamicUser=yes" in files[1].read_text()


def test_units_are_hardened_as_measured_by_systemd_analyze_security(tmp_path: Path) -> None:
    """Before issue 15: agent 8.3 EXPOSED, coordinator 6.9 MEDIUM (docs/deployment.md)."""
    out = tmp_path / "units"
    proc = cli(
        "install-systemd",
        "--dir",
        str(out),
        "--agent-config",
        str(agent_config(tmp_path)),
        "--coordinator-config",
        str(coordinator_config(tmp_path)),
    )
    assert proc.returncode == 0, proc.stderr
    agent = out / "mosaic-backup-agent.service"
    assert exposure(agent) <= 4.0
    assert exposure(out / "mosaic-backup-coordinator.service") <= 2.0
    s = settings(agent)
    asked = {
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",  # /home is backed up: readable, not writable
        "PrivateDevices": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "SystemCallFilter": "@system-service",
    }
    assert {k: s.get(k) for k in asked} == {k: [v] for k, v in asked.items()}


def test_agent_may_write_only_its_state_key_targets_and_restore_destinations(
    tmp_path: Path,
) -> None:
    out = tmp_path / "units"
    proc = cli(
        "install-systemd",
        "--dir",
        str(out),
        "--agent-config",
        str(agent_config(tmp_path, state_dir=str(tmp_path / "state"))),
        "--restore-to",
        "/srv/restore",
        "--restore-to",
        "/var/lib/postgresql",
        "--passphrase-file",
        "/etc/mosaic-backup/passphrase",
    )
    assert proc.returncode == 0, proc.stderr
    s = settings(out / "mosaic-backup-agent.service")
    assert s["ReadWritePaths"] == [
        f"-{tmp_path / 'state'}",
        f"-{tmp_path / 'keys'}",
        f"-{tmp_path / 'repo'}",
        "-/srv/restore",
        "-/var/lib/postgresql",
    ]
    assert s["LoadCredential"] == ["passphrase:/etc/mosaic-backup/passphrase"]
    assert "StateDirectory" not in s
    assert _verify([out / "mosaic-backup-agent.service"]).stderr == ""

    # the default kind of state_dir, under /var/lib: systemd creates it, 0700
    snap = tmp_path / "snap"
    proc = cli(
        "install-systemd",
        "--dir",
        str(snap),
        "--agent-config",
        str(tmp_path / "etc" / "agent.toml"),
        "--snapshots",
        "--force",
    )
    assert proc.returncode == 0, proc.stderr
    s = settings(snap / "mosaic-backup-agent.service")
    assert s["PrivateDevices"] == ["no"]  # LVM/ZFS/btrfs need /dev and mount(2)
    assert s["SystemCallFilter"] == ["@system-service @mount"]


def test_agent_unit_takes_its_state_folder_from_systemd(tmp_path: Path) -> None:
    out = tmp_path / "units"
    assert (
        cli(
            "install-systemd", "--dir", str(out), "--agent-config", str(agent_config(tmp_path))
        ).returncode
        == 0
    )
    s = settings(out / "mosaic-backup-agent.service")
    assert s["StateDirectory"] == ["mosaic-backup-agent"]
    assert s["StateDirectoryMode"] == ["0700"]


def test_agent_reads_the_key_passphrase_from_its_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--passphrase-file``: systemd hands the file over as the credential
    ``passphrase``; the agent opens a protected key file with it, no environment needed."""
    cfg = agent_config(tmp_path, state_dir=str(tmp_path / "state"))
    key_file = tmp_path / "keys" / "repository.key"
    key_file.parent.mkdir()
    master = create_key_file(key_file, "correct horse battery staple")
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / PASSPHRASE_CREDENTIAL).write_text("correct horse battery staple\n")
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    runner = anyio.run(start_agent, str(cfg), Console(file=io.StringIO()))
    try:
        assert runner.key == master
    finally:
        anyio.run(runner.aclose)


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """What an operator has after ``pki`` and ``nats-config --tls-verify``, a coordinator
    config naming those files, and a running nats-server on that config. The folder is
    open to all like /etc (pytest's own is not), so only the files' modes keep the
    service user out."""
    base = Path(tempfile.mkdtemp(prefix="mosaic-deployed-"))
    os.chmod(base, 0o755)
    etc = base / "etc"
    pki, nats = etc / "pki", etc / "nats"
    for args in (
        ("pki", "init", str(pki)),
        ("pki", "issue", str(pki), "nats", "--server", "--host", "127.0.0.1"),
        ("pki", "issue", str(pki), "coordinator"),
    ):
        done = cli(*args)
        assert done.returncode == 0, done.stderr
    port = free_port()
    done = cli(
        "nats-config",
        "--agents",
        "web1",
        "--out",
        str(nats),
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--tls-cert",
        str(pki / "nats.crt"),
        "--tls-key",
        str(pki / "nats.key"),
        "--tls-ca",
        str(pki / "ca.crt"),
        "--tls-verify",
    )
    assert done.returncode == 0, done.stderr
    conf = coordinator_config(
        base,
        f'nats_url = "nats://127.0.0.1:{port}"\nnats_user = "coordinator"\n'
        f'nats_password_file = "{nats / "creds" / "coordinator.password"}"\n'
        f'nats_tls_ca = "{pki / "ca.crt"}"\nnats_tls_cert = "{pki / "coordinator.crt"}"\n'
        f'nats_tls_key = "{pki / "coordinator.key"}"\n',
    )
    log = tmp_path / "nats.log"
    with open(log, "wb") as f:
        server = subprocess.Popen(
            [nats_server_binary(), "-c", str(nats / "nats-server.conf")], stdout=f, stderr=f
        )
    try:
        deadline = time.monotonic() + 15
        while "Server is ready" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield conf, port
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(base)


def _reachable_interpreter(hold: Path) -> str:
    """Shell lines that make this test's Python reachable for an unprivileged user inside
    the namespace: it may live under a folder others cannot enter (/root/.pyenv here),
    where a deployed one (/opt/mosaic-backup/venv) is readable by all. Only that folder
    is opened; nothing the coordinator reads is."""
    real = Path(os.path.realpath(sys.executable))
    for folder in real.parents:
        if folder != Path("/") and not stat.S_IMODE(folder.stat().st_mode) & stat.S_IXOTH:
            child = real.relative_to(folder).parts[0]
            hold.mkdir(mode=0o755)
            return (
                f"mount --bind {folder / child} {hold}\n"
                f"mount -t tmpfs -o mode=0755 tmpfs {folder}\n"
                f"mkdir {folder / child}\nmount --bind {hold} {folder / child}\n"
            )
    return ""


def _as_service_user(
    argv: list[str], state: str, env: dict[str, str], scratch: Path
) -> subprocess.Popen[str]:
    """Run ``argv`` as an unprivileged user, as systemd runs a DynamicUser= service with
    StateDirectory=: a private /var/lib holding only the state folder, owned by it."""
    script = (
        "set -e\n"
        + _reachable_interpreter(scratch / f"hold-{len(list(scratch.iterdir()))}")
        + "mount -t tmpfs -o mode=0755 tmpfs /var/lib\n"
        + f"install -d -o {NOBODY} -g {NOBODY} -m 0700 /var/lib/{state}\n"
        + f'exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "$@"\n'
    )
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HOME": "/nonexistent", "MOSAIC_LOG_LEVEL": "INFO", **env},
        cwd="/",
    )


def _load_credentials(creds: dict[str, str]) -> Path:
    """What systemd does for LoadCredential=: copy each file, readable by the unit's
    user only, into a folder of the unit's own."""
    folder = Path(tempfile.mkdtemp(prefix="mosaic-credentials-"))
    for name, source in creds.items():
        shutil.copyfile(source, folder / name)
        os.chown(folder / name, NOBODY, NOBODY)
        os.chmod(folder / name, 0o400)
    os.chown(folder, NOBODY, NOBODY)
    os.chmod(folder, 0o500)
    return folder


def test_coordinator_unit_runs_as_its_dynamic_user_with_tls_and_password(
    tmp_path: Path, deployed: tuple[Path, int]
) -> None:
    conf, port = deployed
    scratch = conf.parent.parent
    out = tmp_path / "units"
    proc = cli("install-systemd", "--dir", str(out), "--coordinator-config", str(conf))
    assert proc.returncode == 0, proc.stderr
    unit = settings(out / "mosaic-backup-coordinator.service")
    creds = dict(c.split(":", 1) for c in unit["LoadCredential"])
    # every file the coordinator reads is handed over; each is root's alone, as written
    assert set(creds) == {"coordinator.toml", *CREDENTIAL_FIELDS} - {"nats_nkey_seed_file"}
    for name in ("coordinator.toml", "nats_password_file", "nats_tls_key"):
        st = os.stat(creds[name])
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), creds[name]
    (state,) = unit["StateDirectory"]
    argv = shlex.split(unit["ExecStart"][0])

    # the unit as it was before: the service user reading the files where they are
    before = _as_service_user([*argv[:-1], str(conf)], state, {}, scratch)
    said, _ = before.communicate(timeout=WAIT_S)
    assert before.returncode != 0
    assert f"config file {conf} cannot be read: Permission denied" in said, said

    folder = _load_credentials(creds)
    try:
        argv = [a.replace("${CREDENTIALS_DIRECTORY}", str(folder)) for a in argv]
        service = _as_service_user(argv, state, {"CREDENTIALS_DIRECTORY": str(folder)}, scratch)
        try:
            assert service.stdout is not None
            seen = []
            deadline = time.monotonic() + WAIT_S
            for line in service.stdout:  # ends when the process does
                seen.append(line)
                if "coordinator coord ready on" in line or time.monotonic() > deadline:
                    break
            assert any(f"ready on nats://127.0.0.1:{port}" in s for s in seen), "".join(seen)
            service.send_signal(signal.SIGTERM)
            rest, _ = service.communicate(timeout=WAIT_S)
            assert service.returncode == 0, "".join(seen) + rest
        finally:
            if service.poll() is None:
                service.kill()
                service.wait()
    finally:
        shutil.rmtree(folder)


def test_single_host_timers_follow_the_strategy(tmp_path: Path) -> None:
    out = tmp_path / "units"
    config = str(agent_config(tmp_path))
    proc = cli(
        "install-systemd",
        "--dir",
        str(out),
        "--agent-config",
        config,
        "--single-host",
        "/srv/data",
        "/etc",
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.iterdir())
    assert len(files) == 6
    check = _verify(files)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    monthly = (out / "mosaic-backup-monthly.timer").read_text()
    calendar = next(
        line.split("=", 1)[1] for line in monthly.splitlines() if line.startswith("OnCalendar=")
    )
    nxt = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=3", calendar],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    elapses = re.findall(r"(?:Next elapse|Iter\. #\d+): (\w{3}) \d{4}-\d{2}-(\d{2})", nxt)
    assert len(elapses) == 3
    assert all(day == "Sun" and 1 <= int(dom) <= 7 for day, dom in elapses)  # first Sundays
    daily = (out / "mosaic-backup-daily.service").read_text()
    assert daily.count(f"repo backup --config {config} --type incremental") == 2


def test_existing_units_are_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "units"
    out.mkdir()
    (out / "mosaic-backup-agent.service").write_text("mine")
    proc = cli("install-systemd", "--dir", str(out), "--agent-config", str(agent_config(tmp_path)))
    assert proc.returncode == 1 and "--force" in proc.stderr
    assert (out / "mosaic-backup-agent.service").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--single-host", "/srv"], "--single-host needs --agent-config"),
        ([], "nothing to write"),
        (["--agent-config", "/does/not/exist.toml"], "does not exist"),
        (["--agent-config", "AGENT", "--restore-to", "srv"], "is relative"),
        (["--agent-config", "SHARED", "--coordinator-config", "COORD"], "inside the coordinator"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    paths = {
        "AGENT": str(agent_config(tmp_path)),
        "SHARED": str(
            write_private(
                tmp_path / "shared.toml",
                f'name = "web1"\nkey_file = "{tmp_path / "k"}"\n'
                f'state_dir = "/var/lib/mosaic-backup/agent"\n'
                f'[targets.disk]\ntype = "local"\npath = "{tmp_path / "repo"}"\n',
            )
        ),
        "COORD": str(coordinator_config(tmp_path)),
    }
    proc = cli("install-systemd", "--dir", str(tmp_path / "u"), *[paths.get(a, a) for a in args])
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert says in proc.stderr
    assert not (tmp_path / "u").exists()  # nothing written

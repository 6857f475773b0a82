"""``mosaic-backup users`` and ``tokens`` as real processes against a real SQLite catalog
named by coordinator.toml: what an admin sees, what is refused, and that no secret is
stored in clear (the catalog file itself is searched)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.audit import AuditTrail
from coordinator.auth import totp
from coordinator.auth.errors import TokenRefused
from coordinator.auth.lockout import Logins
from coordinator.auth.tokens import TokenStore
from coordinator.catalog import open_catalog
from shared.config.auth import AuthConfig
from shared.vocab import utcnow
from tests.harness import REPO_ROOT, cli

PASSWORD = "a long enough passphrase"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(coordinator.toml, the catalog file, a password file)."""
    db = tmp_path / "state" / "catalog.db"
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[catalog]\nurl = "sqlite://{db}"\n')
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    return config, db, pw


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mosaic.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )


def catalog_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def refused(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mosaic-backup: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


async def test_users_add_list_disable(setup: tuple[Path, Path, Path]) -> None:
    config, db, pw = setup
    c = str(config)
    added = cli(
        "users", "add", "alice", "--role", "admin", "--password-file", str(pw), "--config", c
    )
    assert added.returncode == 0, added.stderr
    out = added.stdout
    assert "user alice added with role admin" in out
    uri = re.search(r"URI: (otpauth://totp/\S+)", out)
    assert uri and "issuer=mosaic-backup" in uri.group(1)
    assert "▀" in out or "▄" in out, "a QR code in the terminal"
    codes = re.findall(r"^  ([a-z2-9]{4}(?:-[a-z2-9]{4}){3})$", out, re.M)
    assert len(codes) == 10
    secret = re.search(r"secret=([A-Z2-7]+)", uri.group(1))
    assert secret

    viewer = run(
        "users",
        "add",
        "bob",
        "--role",
        "viewer",
        "--password-file",
        "-",
        "--config",
        c,
        stdin=PASSWORD,
    )
    assert viewer.returncode == 0 and "MFA" not in viewer.stdout, viewer.stdout + viewer.stderr
    assert cli("users", "disable", "bob", "--config", c).returncode == 0

    listed = cli("users", "list", "--config", c)
    assert listed.returncode == 0, listed.stderr
    rows = {
        line.split("│")[1].strip(): [x.strip() for x in line.split("│")[2:6]]
        for line in listed.stdout.splitlines()
        if line.startswith("│")
    }
    assert rows == {
        "alice": ["admin", "yes", "no", "never"],
        "bob": ["viewer", "no", "yes", "never"],
    }

    # the printed enrolment is the real one: a login with its code works
    catalog = await open_catalog(f"sqlite://{db}")
    try:
        logins = Logins(catalog, AuditTrail(catalog), AuthConfig())
        user = await logins.login("alice", PASSWORD, totp.code_at(secret.group(1), utcnow()), "ip")
        assert user.role == "admin"
        await logins.login("alice", PASSWORD, codes[0], "ip")  # and a recovery code
        actions = [e.action for e in await catalog.list_audit(limit=50)]
        assert {"user_added", "user_disabled", "login", "recovery_code_used"} <= set(actions)
    finally:
        await catalog.aclose()

    stored = catalog_bytes(db)
    for clear in (PASSWORD, *codes, *(c.replace("-", "") for c in codes)):
        assert clear.encode() not in stored


def test_bad_input_is_one_line_and_stores_nothing(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    config, _, pw = setup
    c = str(config)
    refused(
        cli("users", "add", "carol", "--role", "root", "--password-file", str(pw), "--config", c),
        "'root' is not a role",
        "viewer, operator, admin",
    )
    short = tmp_path / "short"
    short.write_text("eleven char")
    refused(
        cli(
            "users",
            "add",
            "carol",
            "--role",
            "viewer",
            "--password-file",
            str(short),
            "--config",
            c,
        ),
        "minimum 12",
    )
    assert "users (0)" in cli("users", "list", "--config", c).stdout, "nothing stored"
    assert (
        cli(
            "users", "add", "carol", "--role", "viewer", "--password-file", str(pw), "--config", c
        ).returncode
        == 0
    )
    refused(
        cli(
            "users", "add", "carol", "--role", "operator", "--password-file", str(pw), "--config", c
        ),
        "'carol' exists already",
    )
    refused(
        cli("users", "passwd", "nobody", "--password-file", str(pw), "--config", c),
        "no user 'nobody'",
    )
    refused(
        cli("tokens", "create", "ci", "--role", "operator", "--expires", "soon", "--config", c),
        "--expires 'soon'",
    )
    listed = cli("users", "list", "--config", c).stdout
    assert "carol" in listed and "viewer" in listed and "operator" not in listed


async def test_tokens_create_list_revoke(setup: tuple[Path, Path, Path]) -> None:
    config, db, _ = setup
    c = str(config)
    made = cli(
        "tokens", "create", "prometheus", "--role", "viewer", "--expires", "30d", "--config", c
    )
    assert made.returncode == 0, made.stderr
    tokens = re.findall(r"^mbk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$", made.stdout, re.M)
    assert len(tokens) == 1
    token = tokens[0]
    token_id, secret = token.split("_", 2)[1:]

    catalog = await open_catalog(f"sqlite://{db}")
    try:
        assert (await TokenStore(catalog, AuditTrail(catalog)).verify(token)).name == "prometheus"
    finally:
        await catalog.aclose()

    listed = cli("tokens", "list", "--config", c)
    assert listed.returncode == 0
    assert token_id in listed.stdout and "active" in listed.stdout
    assert secret not in listed.stdout and secret[:12] not in listed.stdout
    assert secret.encode() not in catalog_bytes(db)

    assert cli("tokens", "revoke", "prometheus", "--config", c).returncode == 0
    refused(cli("tokens", "revoke", "prometheus", "--config", c), "no active token 'prometheus'")
    assert "revoked" in cli("tokens", "list", "--config", c).stdout
    catalog = await open_catalog(f"sqlite://{db}")
    try:
        with pytest.raises(TokenRefused):
            await TokenStore(catalog, AuditTrail(catalog)).verify(token)
    finally:
        await catalog.aclose()

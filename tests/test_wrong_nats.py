"""An operator command pointed at a NATS that answers but is not the coordinator's says
which URL it tried, where that URL came from, and what answers there (issue 13)."""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio

from mosaic.commands._options import url_origin
from shared.bus import Bus
from shared.config.nats import DEFAULT_NATS_URL
from tests.harness import cli


def test_a_nats_without_our_streams_is_named_as_not_ours(
    private_nats_url: str, tmp_path: Path
) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), "MOSAIC_PROFILE": ""}
    r = cli("status", "--nats", private_nats_url, env=env)
    assert r.returncode == 1, r.stderr
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert f"no coordinator is answering on NATS at {private_nats_url}" in line
    assert "holds no MOSAIC_JOBS stream: it is not mosaic-backup's bus" in line
    assert "the URL is --nats's" in line

    async def make_streams() -> None:
        bus = await Bus.connect(private_nats_url, name="test")
        try:
            await bus.ensure_streams()
        finally:
            await bus.aclose()

    anyio.run(make_streams)
    r = cli("status", env={**env, "MOSAIC_NATS_URL": private_nats_url})
    assert r.returncode == 1, r.stderr
    assert "mosaic-backup's streams are there: is `mosaic-backup coordinator run` up?" in r.stderr
    assert "the URL is $MOSAIC_NATS_URL's" in r.stderr


def test_the_default_url_says_how_to_name_another(tmp_path: Path) -> None:
    args = argparse.Namespace(nats=None, profile=None)
    said = url_origin(args, {"XDG_CONFIG_HOME": str(tmp_path)})
    assert said.startswith(f"{DEFAULT_NATS_URL} is the default URL")
    assert "--nats" in said and "$MOSAIC_NATS_URL" in said
    profile = tmp_path / "op.toml"
    profile.write_text('nats_url = "nats://nats.example:4222"\n')
    args = argparse.Namespace(nats=None, profile=str(profile))
    assert url_origin(args, {}) == f"the URL is nats_url of profile {profile}"

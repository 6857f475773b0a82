"""Config files are validated on load; errors name the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config.agent import AgentConfig
from shared.config.coordinator import CoordinatorConfig
from shared.config.load import load
from shared.config.targets import LocalTargetConfig
from shared.errors import ConfigError


def _load_agent(tmp_path: Path, text: str) -> AgentConfig:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return load(p, AgentConfig)


GOOD = 'name = "host1"\nkey_file = "/k"\n[targets.local]\ntype = "local"\npath = "/r"\n'


def test_good_agent_config(tmp_path: Path) -> None:
    cfg = _load_agent(tmp_path, GOOD)
    assert cfg.targets == {"local": LocalTargetConfig(path="/r")}
    assert cfg.ack_wait_s == 30.0


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        (GOOD.replace('path = "/r"', "path = 3"), "targets.local.path", "Expected `str`"),
        (GOOD.replace('"host1"', '"host 1"'), "name", "letters, digits"),
        (GOOD.replace('key_file = "/k"\n', ""), "key_file", "missing required field"),
        ("ack_wait = 5\n" + GOOD, "ack_wait", "unknown field"),
        (GOOD + "buckett = 5\n", "targets.local.buckett", "unknown field"),
        (GOOD.replace('"local"\npath', '"ftp"\npath'), "targets.local.type", "Invalid value"),
        (
            GOOD.replace("[targets.local]", "[targets.bad]").replace(
                'type = "local"\npath = "/r"', 'type = "s3"\nbucket = "ab"'
            ),
            "targets.bad.bucket",
            "length >= 3",
        ),
        (
            GOOD.replace('key_file = "/k"', 'key_file = "/k"\nack_wait_s = -1'),
            "ack_wait_s",
            ">",
        ),
    ],
)
def test_bad_field_is_named(tmp_path: Path, text: str, field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _load_agent(tmp_path, text)
    msg = str(exc.value)
    assert f"field '{field}'" in msg and hint in msg and "agent.toml" in msg
    assert "\n" not in msg


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        _load_agent(tmp_path, "name = ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml", AgentConfig)


def test_catalog_url_scheme(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[catalog]\nurl = "mysql://u:secret@h/db"\n')
    with pytest.raises(ConfigError) as exc:
        load(p, CoordinatorConfig)
    assert "catalog.url" in str(exc.value) and "secret" not in str(exc.value)


def test_s3_secret_never_in_repr() -> None:
    from shared.config.targets import S3TargetConfig

    cfg = S3TargetConfig(bucket="bkt", access_key_id="AKIA", secret_access_key="s3cr3t-value")
    assert "s3cr3t-value" not in repr(cfg) and "s3cr3t-value" not in str(cfg)
    assert "AKIA" in repr(cfg)

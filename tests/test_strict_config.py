"""Bad input that would switch safety off silently is refused at load, in one line.

A misspelt key (``wal_spol``, ``apend_only``, ``known_host``) used to be dropped and the
agent ran without what it asked for; an S3 endpoint without a scheme gave a traceback;
an empty local path put the repository into the current folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec.inspect as mi
import pytest

from shared.config import fields as config_fields
from shared.config.agent import AgentConfig
from shared.config.coordinator import CoordinatorConfig
from shared.config.load import load
from shared.config.targets import LocalTargetConfig, S3TargetConfig
from shared.errors import ConfigError
from tests.harness import REPO_ROOT, write_toml

AGENT = 'name = "web1"\nkey_file = "/etc/mosaic-backup/repository.key"\n'
SFTP = '[targets.offsite]\ntype = "sftp"\nhost = "nas"\nuser = "u"\npath = "/b"\nkey_file = "/k"\n'


def refused(path: Path, kind: type[Any]) -> str:
    with pytest.raises(ConfigError) as exc:
        load(path, kind)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_misspelt_wal_spool_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    p = write_toml(
        tmp_path / "coordinator.toml",
        '[datasets.db]\nagent = "db1"\ntarget = "local"\n'
        'source = { type = "postgres", wal_spol = "/var/lib/mosaic-backup/wal" }\n',
    )
    msg = refused(p, CoordinatorConfig)
    assert "[datasets.db.source]" in msg and 'type "postgres"' in msg
    assert "unknown field `wal_spol`" in msg and "did you mean `wal_spool`?" in msg


def test_misspelt_append_only_on_sftp_is_refused(tmp_path: Path) -> None:
    p = write_toml(tmp_path / "agent.toml", AGENT + SFTP + "apend_only = true\n")
    msg = refused(p, AgentConfig)
    assert "[targets.offsite]" in msg and 'type "sftp"' in msg
    assert "unknown field `apend_only`" in msg and "did you mean `append_only`?" in msg


def test_misspelt_known_hosts_is_refused(tmp_path: Path) -> None:
    p = write_toml(tmp_path / "agent.toml", AGENT + SFTP + 'known_host = "/etc/kh"\n')
    msg = refused(p, AgentConfig)
    assert "field 'targets.offsite.known_host'" in msg and "did you mean `known_hosts`?" in msg


def test_an_unknown_key_without_a_close_match_lists_the_known_ones(tmp_path: Path) -> None:
    p = write_toml(
        tmp_path / "coordinator.toml",
        '[datasets.db]\nagent = "a"\ntarget = "t"\nsource = { type = "files", path = "/srv" }\n'
        'schedules = [{ cron = "0 2 * * *", backup_type = "full", colour = "red" }]\n',
    )
    msg = refused(p, CoordinatorConfig)
    assert "[datasets.db.schedules[0]]" in msg and "unknown field `colour`" in msg
    assert "did you mean" not in msg and "known: backup_type, cron, grace_s" in msg


@pytest.mark.parametrize("kind", [AgentConfig, CoordinatorConfig])
def test_every_section_refuses_unknown_fields(kind: type[Any]) -> None:
    """Walks every Struct type reachable from the file's type, so a section added later
    is covered without a test of its own."""
    found = list(config_fields.reachable_structs(mi.type_info(kind)))
    assert len(found) >= (5 if kind is AgentConfig else 12)
    for struct, steps in found:
        raw = _build(steps, {"zz_not_a_field": 1})
        with pytest.raises(config_fields.UnknownField) as exc:
            config_fields.check_unknown(raw, mi.type_info(kind))
        assert exc.value.field == "zz_not_a_field", struct.cls
        known = {f.encode_name for f in struct.fields}
        assert set(exc.value.known) == known, struct.cls
        # msgspec itself also refuses them, except in the source descriptions, which
        # are wire messages too and must stay readable by older agents
        assert struct.forbid_unknown_fields or struct.cls.__module__ == "shared.wire.sources", (
            struct.cls
        )


def _build(steps: list[config_fields.Step], leaf: dict[str, Any]) -> Any:
    """Nested dicts and lists that reach the section at ``steps``; a tag step puts the
    tag into the dict of the section it belongs to (the one being entered)."""
    root: dict[str, Any] = {}
    node: Any = root
    parent: Any = None
    last: Any = None
    for kind, value in steps:
        if kind == "tag":
            field, tag = value
            node[field] = tag
        elif kind == "key":
            node[value] = {}
            parent, last, node = node, value, node[value]
        else:
            parent[last] = [{}]
            node = parent[last][0]
    node.update(leaf)
    return root


def test_s3_endpoint_without_scheme_is_one_line(tmp_path: Path) -> None:
    p = write_toml(
        tmp_path / "agent.toml",
        AGENT + '[targets.x]\ntype = "s3"\nbucket = "bkt"\nendpoint_url = "minio:9000"\n',
    )
    msg = refused(p, AgentConfig)
    assert (
        "field 'targets.x.endpoint_url': 'minio:9000' has no scheme; write http://minio:9000 "
        "or https://minio:9000" in msg
    )
    with pytest.raises(ValueError, match="has no scheme"):
        S3TargetConfig(bucket="bkt", endpoint_url="minio:9000")
    ok = S3TargetConfig(bucket="bkt", endpoint_url="https://s3.example.net")
    assert ok.endpoint_url == "https://s3.example.net"


@pytest.mark.parametrize(
    ("path", "problem"), [("", "is empty"), ("   ", "is empty"), ("repo", "'repo' is relative")]
)
def test_local_target_path_must_be_absolute(tmp_path: Path, path: str, problem: str) -> None:
    p = write_toml(
        tmp_path / "agent.toml", AGENT + f'[targets.x]\ntype = "local"\npath = "{path}"\n'
    )
    msg = refused(p, AgentConfig)
    assert f"field 'targets.x.path': {problem}" in msg and "absolute path" in msg
    with pytest.raises(ValueError, match=problem):
        LocalTargetConfig(path=path)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO_ROOT / "deploy").rglob("*.toml*")))
def test_shipped_configs_still_load(name: str) -> None:
    path = next((REPO_ROOT / "deploy").rglob(name))
    kind = AgentConfig if "agent" in name else CoordinatorConfig
    load(path, kind)

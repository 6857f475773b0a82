"""The fault scenarios of bench/faults.py that need servers: S3 (moto) behind the fleet
proxy, and a 3-server NATS JetStream cluster. Scored exactly as the others."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.faults import Repo, Tally, judge, tree_digest, write_files
from shared.config.targets import S3TargetConfig


def s3_resets(work: Path, tries: int, seed: int = 6) -> Tally:
    """S3 (moto) behind the fleet proxy, which resets 20 % of new connections before a
    byte reaches the server: backups, verify --read-data and restores go through it and
    complete with retries (or fail in one line: scored lost, since nothing may be lost)."""
    import logging

    from moto.server import ThreadedMotoServer

    from tests.fleet.proxy import Knobs, Proxy

    t = Tally("S3 resets 20 % of connections")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        direct = f"http://{host}:{port}"
        with Proxy(host, int(port), knobs=Knobs(reset_share=0.2), seed=seed) as proxy:
            bucket = f"faults-{os.urandom(6).hex()}"
            _s3_client(direct).create_bucket(Bucket=bucket)
            cfg = S3TargetConfig(
                bucket=bucket,
                prefix="repo",
                endpoint_url=f"http://{proxy.address}",
                region="us-east-1",
                access_key_id="testing",
                secret_access_key="testing",
            )
            repo, src = Repo(work, s3=cfg), work / "src"
            for i in range(tries):
                for old in src.glob("*.bin"):
                    old.unlink()
                write_files(src, range(3000 + 100 * i, 3000 + 100 * i + 12))
                manifests = len(repo.ids())
                try:
                    repo.backup(src)
                    next_ok = True
                except RuntimeError as exc:
                    next_ok = False
                    t.notes.append(f"try {i}: {str(exc)[-300:]}")
                judge(t, repo, next_ok, manifests + 1, f"try {i}")
            t.notes.append(f"proxy: {dict(proxy.counts)}")
            if not proxy.counts["reset"]:
                t.detected = t.survived = 0  # no fault injected: the try proves nothing
                t.notes.append("no connection was reset")
    finally:
        server.stop()
    return t


def nats_kill(work: Path, tries: int, seed: int = 7) -> Tally:
    """A coordinator and an agent on a 3-server JetStream cluster; SIGKILL of the server
    leading the events stream while a backup runs (engineer N's
    tests/fixtures/cluster_faults.py); the job must complete once, its completion event
    be stored once, and the repository verify and restore."""
    del seed
    import anyio

    from tests.fixtures.cluster_faults import kill_during_backup
    from tests.fixtures.nats_cluster import NatsCluster

    t = Tally("kill 1 of 3 NATS servers during a backup")
    cluster = NatsCluster(work / "nats").start_all()
    try:
        for i in range(tries):
            here = work / f"try{i}"
            here.mkdir()
            out = anyio.run(kill_during_backup, cluster, here)
            repo = Repo(here, create=False)
            for b in repo.ids():
                repo.expected[b] = tree_digest(here / "src")
            if out.backups > 1 or out.completed_events > 1:
                t.tries += 1
                t.doubled += 1
                t.notes.append(f"try {i}: {out}")
                continue
            if not out.survived:
                t.notes.append(f"try {i}: {out}")
            judge(t, repo, out.survived, 1, f"try {i} ({out.fault})")
    finally:
        cluster.stop()
    return t


def _s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )

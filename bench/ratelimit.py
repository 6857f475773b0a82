"""Configured vs achieved rate of the per-target limits (engine/storage/ratelimit.py).

Opens a local target and an S3 target (a moto server in this process, on a free loopback
port) through the real factory from sections with ``upload_limit`` / ``download_limit``,
then uploads ``--mib`` MiB as 4 MiB objects from ``--uploaders`` concurrent tasks (as a
backup's pack uploads do) and reads them back the same way, and prints per target and
direction the configured rate, the achieved rate, and the achieved rate without the
first second's burst (the bucket starts full, so a short transfer goes faster than the
limit: that column should be close to the configured rate). Not part of the test suite;
the limiter's arithmetic is tested with a fake clock in tests/test_ratelimit.py.

    .venv/bin/python bench/ratelimit.py [--mib 64] [--upload 16MiB] [--download 32MiB]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import uuid

import anyio
import boto3
from moto.server import ThreadedMotoServer

from engine.storage.base import Target
from engine.storage.open import open_target
from shared.config.targets import LocalTargetConfig, S3TargetConfig, TargetConfig
from shared.config.units import parse_rate

MiB = 1 << 20
OBJECT = 4 * MiB


async def _transfer(target: Target, keys: list[str], uploaders: int, *, upload: bool) -> float:
    """Seconds to put (or get) every key, ``uploaders`` at a time."""
    blob = os.urandom(OBJECT)
    todo = list(keys)

    async def worker() -> None:
        while todo:
            key = todo.pop()
            if upload:
                await target.put(key, blob)
            else:
                assert len(await target.get(key)) == OBJECT

    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(uploaders):
            tg.start_soon(worker)
    return time.monotonic() - start


async def _measure(name: str, cfg: TargetConfig, args: argparse.Namespace) -> list[str]:
    target = open_target(name, cfg)
    keys = [f"data/{i:04d}" for i in range(max(1, args.mib * MiB // OBJECT))]
    nbytes = len(keys) * OBJECT
    rows = []
    try:
        for direction, limit in (("upload", args.upload), ("download", args.download)):
            secs = await _transfer(target, keys, args.uploaders, upload=direction == "upload")
            want = parse_rate(limit)
            got = nbytes / secs
            steady = max(0, nbytes - want) / secs  # less the 1 s burst
            rows.append(
                f"| {name} | {direction} | {want / MiB:.1f} | {got / MiB:.1f} | "
                f"{steady / MiB:.1f} | {steady / want:.2f} | "
                f"{nbytes / MiB:.0f} MiB in {secs:.2f} s |"
            )
    finally:
        await target.aclose()
    return rows


def _s3_bucket(endpoint: str) -> S3TargetConfig:
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ).create_bucket(Bucket=bucket)
    return S3TargetConfig(
        bucket=bucket,
        endpoint_url=endpoint,
        access_key_id="bench",
        secret_access_key="bench",
    )


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    limits = {"upload_limit": args.upload, "download_limit": args.download}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = _s3_bucket(f"http://{host}:{port}")
        with tempfile.TemporaryDirectory(prefix="mosaic-ratelimit-") as work:
            targets: list[tuple[str, TargetConfig]] = [
                ("local", LocalTargetConfig(path=f"{work}/repo", **limits)),
                ("s3", S3TargetConfig(**{**_fields(s3), **limits})),
            ]
            rows = []
            for name, cfg in targets:
                rows += await _measure(name, cfg, args)
    finally:
        server.stop()
    print(f"{args.uploaders} concurrent transfers of {OBJECT // MiB} MiB objects (1 s burst)")
    print(
        "| target | direction | configured MiB/s | achieved MiB/s | without the burst | "
        "ratio | moved |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def _fields(cfg: S3TargetConfig) -> dict[str, object]:
    return {f: getattr(cfg, f) for f in cfg.__struct_fields__}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="MiB moved per direction")
    parser.add_argument("--upload", default="16MiB", help="upload_limit of both targets")
    parser.add_argument("--download", default="32MiB", help="download_limit of both targets")
    parser.add_argument("--uploaders", type=int, default=4, help="concurrent transfers")
    anyio.run(main, parser.parse_args())

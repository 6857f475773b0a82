"""S3-compatible target: one object per key under a prefix of a bucket.

S3 already gives the contract's atomicity: an object appears only when PutObject or
CompleteMultipartUpload succeeds, so readers never see a prefix. Large values go through
multipart upload so one slow or failed request does not resend the whole value, and a
failed upload is aborted so no orphan parts stay billed in the bucket.

boto3 is blocking, so every call runs in a worker thread behind a per-target
:class:`anyio.CapacityLimiter` sized like the HTTP connection pool. botocore retries
throttling and transient faults (adaptive mode); what still fails is translated at the
boundary (s3_errors.py) into :mod:`shared.errors` with messages that name the bucket and
key and never carry credentials. A body cut short after a 200 is not retried by botocore;
the read retries of retry.py, wrapped around this target by ``open_target``, handle it.

With ``object_lock_mode`` / ``object_lock_days`` set, every object is written with an S3
Object Lock retention (mode, now + days), and ``check`` refuses a bucket without Object
Lock. Such a bucket is versioned, where a plain DeleteObject only hides the data behind a
delete marker; ``delete`` therefore removes each version of the key by id, so it either
frees the data or fails loudly (non-retryable) while the retention lasts. The credentials
then also need s3:PutObjectRetention, s3:GetObjectRetention, s3:ListBucketVersions,
s3:DeleteObjectVersion and s3:GetBucketObjectLockConfiguration.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.to_thread
import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from engine.storage.base import Capabilities, ObjectInfo, SpaceInfo, TemporaryInfo, check_key
from engine.storage.s3_errors import S3Errors
from engine.storage.s3_versions import delete_version, versions_of
from shared.config.targets import S3TargetConfig
from shared.errors import ObjectNotFound, TargetError, TargetUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import (
        CompletedPartTypeDef,
        HeadObjectOutputTypeDef,
        ListObjectsV2OutputTypeDef,
        PaginatorConfigTypeDef,
    )

T = TypeVar("T")

MiB = 1 << 20
_MAX_PARTS = 10_000  # S3's limit per multipart upload
# GetObjectLockConfiguration on a bucket without Object Lock, or on a store without it.
_NO_LOCK_CONFIG = frozenset({"ObjectLockConfigurationNotFoundError", "NotImplemented"})


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _strip_userinfo(url: str) -> str:
    """Drop ``user:password@`` from a URL so it is safe for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class S3Target:
    def __init__(
        self,
        name: str,
        cfg: S3TargetConfig,
        *,
        multipart_threshold: int = 64 * MiB,
        part_size: int = 8 * MiB,
        max_connections: int = 10,
        max_attempts: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        list_page_size: int = 1000,
    ) -> None:
        # S3 itself rejects parts below 5 MiB (except the last) with EntityTooSmall; the
        # value is not clamped here so that the message comes from the store.
        if part_size < 1 or multipart_threshold < 1 or max_connections < 1:
            raise ValueError("part_size, multipart_threshold and max_connections must be ≥ 1")
        if (cfg.object_lock_mode is None) != (cfg.object_lock_days is None):
            raise ValueError(
                f"targets.{name}: set both object_lock_mode and object_lock_days, or neither"
            )
        self.name = name
        self.cfg = cfg
        self.capabilities = Capabilities()
        prefix = cfg.prefix.strip("/")
        self._prefix = f"{prefix}/" if prefix else ""
        self._multipart_threshold = multipart_threshold
        self._part_size = part_size
        self._page_size = list_page_size
        sc = cfg.storage_class
        self._extra: dict[str, Any] = {"StorageClass": sc} if sc else {}
        self._limiter = anyio.CapacityLimiter(max_connections)
        self._bucket_ok = False
        self._closed = False
        config = Config(
            retries={"max_attempts": max_attempts, "mode": "adaptive"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_connections,
            # S3-compatible stores (MinIO, Ceph, moto) expect path-style addressing.
            s3={"addressing_style": "path" if cfg.endpoint_url else "auto"},
        )
        # A private session: the default one is shared and not safe to build clients from
        # several threads at once. The client itself is thread-safe.
        session = boto3.session.Session()
        self._client: S3Client = session.client(
            "s3",
            endpoint_url=cfg.endpoint_url,
            region_name=cfg.region,
            aws_access_key_id=cfg.access_key_id,
            aws_secret_access_key=cfg.secret_access_key,
            config=config,
        )
        self._endpoint = _strip_userinfo(self._client.meta.endpoint_url)
        self._errors = S3Errors(
            name=name,
            bucket=cfg.bucket,
            endpoint=self._endpoint,
            where=self.describe(),
            secret=cfg.secret_access_key,
        )

    def describe(self) -> str:
        where = f"{self.cfg.bucket}/{self._prefix.rstrip('/')}" if self._prefix else self.cfg.bucket
        return f"s3:{where} at {self._endpoint}"

    def _key(self, key: str) -> str:
        return self._prefix + check_key(key)

    def _bucket_missing(self) -> TargetUnavailable:
        return self._errors.bucket_missing()

    def _translate(self, exc: Exception, op: str, key: str | None) -> TargetError:
        return self._errors.translate(exc, op, key)

    async def _call(self, op: str, key: str | None, fn: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(fn, limiter=self._limiter)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, op, key) from exc

    async def _check_bucket(self) -> None:
        await self._call("check", None, lambda: self._client.head_bucket(Bucket=self.cfg.bucket))
        self._bucket_ok = True

    def _lock_enabled(self) -> bool:
        try:
            resp = self._client.get_object_lock_configuration(Bucket=self.cfg.bucket)
        except ClientError as exc:
            if _code(exc) in _NO_LOCK_CONFIG:
                return False
            raise
        return resp.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    async def check(self) -> None:
        """Fail fast (at agent start) if the bucket is missing or the credentials refused.

        With a lock mode configured, also if the bucket does not have Object Lock enabled:
        every put would be refused there.
        """
        await self._check_bucket()
        if self.cfg.object_lock_mode is not None and not await self._call(
            "check", None, self._lock_enabled
        ):
            raise TargetUnavailable(
                f"s3 bucket {self.cfg.bucket!r} at {self._endpoint} does not have Object Lock "
                f"enabled, but targets.{self.name}.object_lock_mode is set: create the bucket "
                f"with Object Lock enabled, or remove object_lock_mode from targets.{self.name}",
                retryable=False,
            )

    def _retain_until(self) -> datetime | None:
        days = self.cfg.object_lock_days
        return None if days is None else datetime.now(UTC) + timedelta(days=days)

    def _lock_args(self, until: datetime | None) -> dict[str, Any]:
        if until is None or self.cfg.object_lock_mode is None:
            return {}
        return {"ObjectLockMode": self.cfg.object_lock_mode, "ObjectLockRetainUntilDate": until}

    async def put(self, key: str, data: bytes) -> None:
        k = self._key(key)
        if len(data) <= self._multipart_threshold:
            extra = {**self._extra, **self._lock_args(self._retain_until())}
            await self._call(
                "put",
                key,
                lambda: self._client.put_object(Bucket=self.cfg.bucket, Key=k, Body=data, **extra),
            )
        else:
            await self._put_multipart(key, k, data)

    async def create(self, key: str, data: bytes) -> bool:
        """PutObject with ``If-None-Match: *``: S3 refuses it when the key exists."""
        k = self._key(key)
        extra = {**self._extra, **self._lock_args(self._retain_until())}

        def put() -> bool:
            try:
                self._client.put_object(
                    Bucket=self.cfg.bucket, Key=k, Body=data, IfNoneMatch="*", **extra
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                    return False
                raise
            return True

        return await self._call("create", key, put)

    async def _put_multipart(self, key: str, k: str, data: bytes) -> None:
        bucket = self.cfg.bucket
        size = max(self._part_size, -(-len(data) // _MAX_PARTS))
        until = self._retain_until()
        extra = {**self._extra, **self._lock_args(until)}
        created = await self._call(
            "put",
            key,
            lambda: self._client.create_multipart_upload(Bucket=bucket, Key=k, **extra),
        )
        upload_id = created["UploadId"]
        try:
            parts: list[CompletedPartTypeDef] = []
            for number, start in enumerate(range(0, len(data), size), start=1):
                upload = partial(
                    self._client.upload_part,
                    Bucket=bucket,
                    Key=k,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data[start : start + size],
                )
                resp = await self._call("put", key, upload)
                parts.append({"PartNumber": number, "ETag": resp["ETag"]})
            done = await self._call(
                "put",
                key,
                lambda: self._client.complete_multipart_upload(
                    Bucket=bucket, Key=k, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
            )
        except BaseException as exc:
            # Also on cancellation: an upload left open keeps its parts stored and billed.
            with anyio.CancelScope(shield=True):
                try:
                    await self._call(
                        "abort upload of",
                        key,
                        lambda: self._client.abort_multipart_upload(
                            Bucket=bucket, Key=k, UploadId=upload_id
                        ),
                    )
                except TargetError as abort_exc:
                    exc.add_note(f"aborting multipart upload {upload_id} failed: {abort_exc}")
            raise
        if until is not None:
            await self._ensure_retention(key, k, done.get("VersionId"), until)

    async def _ensure_retention(
        self, key: str, k: str, version_id: str | None, until: datetime
    ) -> None:
        """Make sure the completed upload is locked, or fail the put.

        S3 takes the retention from CreateMultipartUpload, but some S3-compatible stores
        (moto among them) drop it there and would leave a large pack silently deletable.
        One HEAD per multipart put is cheap next to the upload; if the retention is missing
        or shorter, it is set with PutObjectRetention (which may only extend it).
        """
        mode = self.cfg.object_lock_mode
        assert mode is not None
        version: dict[str, Any] = {"VersionId": version_id} if version_id else {}
        head = await self._call(
            "put",
            key,
            partial(self._client.head_object, Bucket=self.cfg.bucket, Key=k, **version),
        )
        held = head.get("ObjectLockRetainUntilDate")
        # Stores keep the date to the second: allow for the dropped fraction.
        if head.get("ObjectLockMode") == mode and held and held >= until - timedelta(seconds=1):
            return
        await self._call(
            "put",
            key,
            partial(
                self._client.put_object_retention,
                Bucket=self.cfg.bucket,
                Key=k,
                Retention={"Mode": mode, "RetainUntilDate": until},
                **version,
            ),
        )

    def _fetch(self, k: str, byte_range: str | None) -> bytes:
        try:
            if byte_range is None:
                resp = self._client.get_object(Bucket=self.cfg.bucket, Key=k)
            else:
                resp = self._client.get_object(Bucket=self.cfg.bucket, Key=k, Range=byte_range)
        except ClientError as exc:
            # 416: the object exists but the range starts at or after its end.
            if (
                byte_range is not None
                and exc.response.get("Error", {}).get("Code") == "InvalidRange"
            ):
                return b""
            raise
        body = resp["Body"]
        try:
            return body.read()
        finally:
            body.close()

    async def get(self, key: str) -> bytes:
        k = self._key(key)
        return await self._call("get", key, lambda: self._fetch(k, None))

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        k = self._key(key)
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length} for {key!r}")
        if length == 0:
            if await self.stat(key) is None:
                raise ObjectNotFound(f"{self.describe()}: object {key!r} not found")
            return b""
        byte_range = f"bytes={offset}-{offset + length - 1}"
        return await self._call("get", key, lambda: self._fetch(k, byte_range))

    async def _head(self, op: str, key: str) -> HeadObjectOutputTypeDef:
        k = self._key(key)
        try:
            return await self._call(
                op, key, lambda: self._client.head_object(Bucket=self.cfg.bucket, Key=k)
            )
        except ObjectNotFound:
            # HEAD answers a bare 404 for a missing bucket too: tell the two apart once.
            if not self._bucket_ok:
                await self._check_bucket()
            raise

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            resp = await self._head("stat", key)
        except ObjectNotFound:
            return None
        return ObjectInfo(key, resp["ContentLength"])

    async def retention(self, key: str) -> tuple[str, datetime] | None:
        """The Object Lock retention of the current version of ``key``: (mode, until, UTC).

        None when the object carries no retention (whether or not it has expired). Raises
        ObjectNotFound for a missing key. The credentials need s3:GetObjectRetention, else
        S3 leaves the retention out of the answer and this returns None.
        """
        head = await self._head("read retention of", key)
        mode = head.get("ObjectLockMode")
        until = head.get("ObjectLockRetainUntilDate")
        if mode is None or until is None:
            return None
        return str(mode), until.astimezone(UTC)

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        return self.list_after(prefix, "")

    async def list_after(self, prefix: str, start_after: str) -> AsyncIterator[ObjectInfo]:
        """``list``, from the first key after ``start_after`` (ListObjectsV2 StartAfter),
        so the retry wrapper resumes a broken listing where it stopped."""

        # Building the paginator reads botocore's model files and each page is a request:
        # both stay off the event loop.
        def first() -> Iterator[ListObjectsV2OutputTypeDef]:
            paginator = self._client.get_paginator("list_objects_v2")
            config: PaginatorConfigTypeDef = {"PageSize": self._page_size}
            if start_after:
                return iter(
                    paginator.paginate(
                        Bucket=self.cfg.bucket,
                        Prefix=self._prefix + prefix,
                        StartAfter=self._prefix + start_after,
                        PaginationConfig=config,
                    )
                )
            return iter(
                paginator.paginate(
                    Bucket=self.cfg.bucket, Prefix=self._prefix + prefix, PaginationConfig=config
                )
            )

        pages = await self._call("list", prefix, first)
        skip = len(self._prefix)
        while True:
            page = await self._call("list", prefix, lambda: next(pages, None))
            if page is None:
                return
            for obj in page.get("Contents", []):
                name = obj["Key"]
                if name.endswith("/"):  # folder markers made by consoles are not objects
                    continue
                yield ObjectInfo(name[skip:], obj["Size"])

    async def delete(self, key: str) -> None:
        k = self._key(key)
        if self.cfg.object_lock_mode is None:
            await self._call(
                "delete", key, lambda: self._client.delete_object(Bucket=self.cfg.bucket, Key=k)
            )
            return
        # Non-current versions first and the current one last: the key keeps its value (or
        # stays absent behind a delete marker) until every version is gone, so a delete
        # stopped by a locked version changes nothing that readers see.
        versions = await self._call(
            "delete", key, lambda: versions_of(self._client, self.cfg.bucket, k)
        )
        for version_id, _latest in sorted(versions, key=lambda v: v[1]):
            why = await self._call(
                "delete", key, partial(delete_version, self._client, self.cfg.bucket, k, version_id)
            )
            if why is not None:
                raise TargetError(
                    f"{self.describe()}: cannot delete {key!r}: it is {why} (version "
                    f"{version_id}); S3 Object Lock refuses to delete it before then",
                    retryable=False,
                )

    async def list_temporary(self) -> AsyncIterator[TemporaryInfo]:
        """Multipart uploads under this target's prefix never completed or aborted (a
        killed writer's): they hold storage that no listing shows."""
        bucket, marker = self.cfg.bucket, {"KeyMarker": "", "UploadIdMarker": ""}
        while True:
            args: dict[str, Any] = {k: v for k, v in marker.items() if v}
            page = await self._call(
                "list",
                None,
                partial(
                    self._client.list_multipart_uploads, Bucket=bucket, Prefix=self._prefix, **args
                ),
            )
            for up in page.get("Uploads", []):
                key = up["Key"][len(self._prefix) :]
                yield TemporaryInfo(key, 0, up["Initiated"], up["UploadId"])
            if not page.get("IsTruncated"):
                return
            marker = {
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }

    async def delete_temporary(self, item: TemporaryInfo) -> None:
        k = self._key(item.key)
        abort = partial(
            self._client.abort_multipart_upload,
            Bucket=self.cfg.bucket,
            Key=k,
            UploadId=item.upload_id,
        )
        await self._call("delete", item.key, abort)

    async def space(self) -> SpaceInfo | None:
        return None  # a bucket has no fixed size

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await anyio.to_thread.run_sync(self._client.close, limiter=self._limiter)

"""Translating botocore errors into :mod:`shared.errors`, for the S3 target (s3.py).

At the boundary, so every caller sees the shared tree: a missing key, a missing bucket,
refused credentials, an archived object, a body cut short, an unreachable endpoint. Each
message names the bucket and key and says whether retrying can help (``retryable``); the
secret key is scrubbed from everything that comes from botocore.
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from shared.errors import ObjectNotFound, TargetError, TargetUnavailable

_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_REFUSED = frozenset(
    "AccessDenied 403 Forbidden InvalidAccessKeyId SignatureDoesNotMatch AllAccessDisabled "
    "ExpiredToken InvalidToken AccountProblem".split()
)
_TRANSIENT = frozenset("SlowDown RequestTimeout ServiceUnavailable InternalError".split())


@dataclass(frozen=True)
class S3Errors:
    """What a message needs to know of its target: config name, bucket, endpoint (no
    credentials), the target's description, and the secret to scrub."""

    name: str
    bucket: str
    endpoint: str
    where: str
    secret: str | None

    def bucket_missing(self) -> TargetUnavailable:
        return TargetUnavailable(
            f"s3 bucket {self.bucket!r} does not exist at {self.endpoint}: "
            f"create it or fix targets.{self.name}.bucket",
            retryable=False,
        )

    def scrub(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    def translate(self, exc: Exception, op: str, key: str | None) -> TargetError:
        """Map a botocore error to the shared tree; the caller chains it with ``from``."""
        what = f"{op} {key!r}" if key is not None else op
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "Unknown"))
            detail = self.scrub(str(err.get("Message", "")))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchBucket" or (key is None and code in _NOT_FOUND):
                return self.bucket_missing()
            if code in _NOT_FOUND:
                return ObjectNotFound(f"{self.where}: object {key!r} not found")
            if code in _REFUSED:
                return TargetUnavailable(
                    f"{self.where}: {what} refused ({code}): check the credentials "
                    f"and permissions of targets.{self.name}",
                    retryable=False,
                )
            if code == "InvalidObjectState":
                return TargetError(
                    f"{self.where}: {what}: object is in an archive storage class "
                    "and must be restored before it can be read",
                    retryable=False,
                )
            retry = code in _TRANSIENT or status >= 500
            return TargetError(f"{self.where}: {what} failed: {code} {detail}", retryable=retry)
        if isinstance(exc, NoCredentialsError):
            return TargetUnavailable(
                f"{self.where}: no credentials: set targets.{self.name}.access_key_id "
                "and secret_access_key",
                retryable=False,
            )
        if isinstance(exc, ResponseStreamingError | IncompleteReadError):
            # A 200 whose body stopped early: botocore does not retry these (the retry
            # wrapper of engine/storage/retry.py does).
            inner = exc.kwargs.get("error")
            args = getattr(inner, "args", ())
            detail = str(args[0]) if args else str(exc)
            return TargetError(
                f"{self.where}: {what}: the answer was cut short ({self.scrub(detail)})",
                retryable=True,
            )
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return TargetUnavailable(
                f"{self.where}: {what}: cannot reach {self.endpoint}: {self.scrub(str(exc))}",
                retryable=True,
            )
        return TargetError(
            f"{self.where}: {what} failed: {self.scrub(str(exc))}",
            retryable=not isinstance(exc, ParamValidationError),
        )

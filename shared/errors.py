"""The exception tree of mosaic-backup.

::

    MosaicError                    code, retryable
    ├── ConfigError                a config file is wrong (names the file and the field)
    ├── BusError                   NATS unreachable or a stream/consumer problem
    ├── TargetError                a storage target failed
    │   ├── ObjectNotFound         the key does not exist (permanent)
    │   └── TargetUnavailable      bucket/folder missing, auth refused, network down
    ├── RepositoryError            the repository format
    │   ├── KeyFileError           key file missing or unreadable
    │   ├── WrongKeyError          the key does not open this repository
    │   ├── IntegrityError         an object failed authentication or hashing (names it)
    │   └── UnsafePathError        a manifest path would escape the restore destination
    ├── SourceError                a source could not be read
    ├── CatalogError               the catalog database failed
    └── OperatorError              the coordinator refused a request, or a job failed

Every error carries a stable ``code`` (for alert routing and events) and whether retrying
can help. Messages carry actual values and never credentials.
"""

from __future__ import annotations


class MosaicError(Exception):
    code = "error"
    retryable = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ConfigError(MosaicError):
    code = "config"


class BusError(MosaicError):
    code = "bus"
    retryable = True


class TargetError(MosaicError):
    code = "target"
    retryable = True


class ObjectNotFound(TargetError):
    code = "target.not_found"
    retryable = False


class TargetUnavailable(TargetError):
    code = "target.unavailable"


class RepositoryError(MosaicError):
    code = "repository"


class KeyFileError(RepositoryError):
    code = "repository.key_file"


class WrongKeyError(RepositoryError):
    code = "repository.wrong_key"


class IntegrityError(RepositoryError):
    code = "repository.integrity"


class UnsafePathError(RepositoryError):
    code = "repository.unsafe_path"


class SourceError(MosaicError):
    code = "source"


class CatalogError(MosaicError):
    code = "catalog"
    retryable = True


class OperatorError(MosaicError):
    """The coordinator refused an operator's request or a job failed (message says which)."""

    code = "operator"

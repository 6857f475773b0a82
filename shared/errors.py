"""The exception tree of mosaic-backup.

::

    MosaicError                    code, retryable
    ├── ConfigError                a config file is wrong (names the file and the field)
    ├── BusError                   NATS unreachable or a stream/consumer problem
    ├── TargetError                a storage target failed
    │   ├── ObjectNotFound         the key does not exist (permanent)
    │   └── TargetUnavailable      bucket/folder missing, auth refused, network down
    │       └── TargetUnreadable   a read kept failing with transient faults (retries spent)
    ├── RepositoryError            the repository format
    │   ├── KeyFileError           key file missing or unreadable
    │   ├── WrongKeyError          the key does not open this repository
    │   ├── IntegrityError         an object failed authentication or hashing (names it)
    │   │   └── PartialRestoreError  a restore finished with some files damaged (lists them)
    │   ├── DamagedRepositoryError objects present but config or a key missing: repair
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


class NoCoordinator(BusError):
    """NATS answered, but nothing answers the operator API there (no coordinator, or a
    NATS that is not mosaic-backup's bus)."""

    code = "bus.no_coordinator"


class TargetError(MosaicError):
    code = "target"
    retryable = True


class ObjectNotFound(TargetError):
    code = "target.not_found"
    retryable = False


class TargetUnavailable(TargetError):
    code = "target.unavailable"


class TargetUnreadable(TargetUnavailable):
    """A read failed with a transient fault (cut-short body, reset, timeout) on every
    attempt of the retry wrapper (engine/storage/retry.py).

    It says nothing about the stored bytes: the object may be intact, so verify reports
    it as "could not read, try again", never as damage. ``key`` is the object (or the
    listing prefix), ``attempts`` how many reads were made, ``cause`` the last fault and
    ``reason`` that fault in one line without the target's name.
    """

    code = "target.unreadable"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        key: str,
        attempts: int,
        cause: BaseException | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.key = key
        self.attempts = attempts
        self.cause = cause
        self.reason = reason or message


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


class DamagedRepositoryError(RepositoryError):
    """The location holds repository objects but an object every command needs (the
    ``config``, a data key) is missing or unreadable: never "empty", never initialised
    over; the message names the ``repo repair`` command that brings it back."""

    code = "repository.damaged"


class PartialRestoreError(IntegrityError):
    """A restore wrote every file it could, but some content was damaged or missing;
    ``damaged`` lists one line per affected file (path, byte ranges, object)."""

    code = "repository.partial_restore"

    def __init__(self, message: str, damaged: list[str], summary: str = "") -> None:
        super().__init__(message)
        self.damaged = damaged
        self.summary = summary or message  # the message without the examples


class SourceError(MosaicError):
    code = "source"


class CatalogError(MosaicError):
    code = "catalog"
    retryable = True


class OperatorError(MosaicError):
    """The coordinator refused an operator's request or a job failed (message says which)."""

    code = "operator"

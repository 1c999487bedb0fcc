"""Exceptions raised by privzoo's datamodules when data is missing or damaged.

Both carry a message that names the offending path(s) and says how to obtain or repair the data.
"""

from __future__ import annotations


class DatasetError(Exception):
    """Base class of the datamodules' data errors."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """Files of a dataset are missing (and could not be downloaded / extracted)."""

    def __init__(self, message: str) -> None:
        # FileNotFoundError(str) keeps ``str(err) == message`` (no errno formatting).
        super().__init__(message)


class DatasetCorruptedError(DatasetError, RuntimeError):
    """A dataset file exists but is truncated, corrupt or has an unexpected checksum."""


class DatasetNotWritableError(DatasetError, PermissionError):
    """Files of a dataset are missing and its folder does not take new ones (read-only / unwritable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

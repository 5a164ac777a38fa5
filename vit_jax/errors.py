"""The exception for bad input: what a user gave (a file, a config value, a name) is at fault.

Every message is one line that names the culprit (the file, key or value) and, where it can,
what to do instead. The CLIs print `UserError`s as `prog: error: <message>` and exit 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a file, a config value, a name or an argument that cannot be used as given."""

    def __str__(self) -> str:
        return ' '.join(super().__str__().split())


class ConfigError(UserError):
    """A config value that is missing, of the wrong type or out of range (the message names the key)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model (the message names the file/key)."""


class DataError(UserError):
    """A data set, image or label list that cannot be used (the message names the file or split)."""


class DownloadError(UserError):
    """A download that failed or could not be verified (the message names the URL and the remedy)."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, ...): the work failed, not the input; the message
    says what to do. vit-train exits 1."""

"""User-facing error types.

Every error a user can cause (a bad flag, a bad file, a bad checkpoint) is a subclass of
:class:`NoPropError`, which is a ``ValueError``. The CLI turns these into one line on stderr and
exit code 2; internal invariants use ``assert`` and are bugs if they fire.
"""

from __future__ import annotations


class NoPropError(ValueError):
    """Base class of all errors a user can cause. The message is one line, naming the problem."""


class DataError(NoPropError):
    """A data set is missing, malformed, truncated or inconsistent."""


class DataNotFound(DataError):
    """A data set's files are not in ``where``, the place they were looked for (and nothing was
    downloaded there). Its own type so that a reader of a run can tell "the data are elsewhere" (it
    asks for ``--data-dir``) from "the data are wrong" (it reports the problem as it is)."""

    def __init__(self, message: str, where: object = "") -> None:  # "": pickle passes args only
        super().__init__(message)
        self.where = str(where)


class ConfigError(NoPropError):
    """A configuration value (flag) is invalid or conflicts with another."""


class CheckpointError(NoPropError):
    """A checkpoint or run directory is missing, corrupt, unsafe or incompatible."""


class DivergenceError(NoPropError):
    """A loss or gradient became NaN or infinite during training."""

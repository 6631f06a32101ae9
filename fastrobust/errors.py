"""Exceptions for bad user input.

Every error a user can fix (a config key, a data file, a tensor argument) is a
``FastrobustError``; the CLI prints its one-line message and exits with code 2
instead of a traceback. They subclass ``ValueError`` so library callers that
already catch ``ValueError`` keep working.
"""

from __future__ import annotations


class FastrobustError(ValueError):
    """Base class: a problem with the user's input, described in one line."""


class ConfigError(FastrobustError):
    """A config file, key or value is wrong (the message names the key)."""


class DataError(FastrobustError):
    """A data file, row, label or language is wrong (the message names the file/line/language)."""


class RunError(FastrobustError):
    """A run that could not finish as asked; ``exit_code`` is what ``fastrobust`` exits with.

    Not an input mistake (those exit with 2): the message says what happened, what was kept
    and what to do next, in one line.
    """

    exit_code = 1


class DivergenceError(RunError):
    """Training diverged: non-finite losses/gradients beyond ``optim.nonfinite_patience`` steps, or
    non-finite weights. Nothing of the diverged method is saved or reported as a result."""

    exit_code = 3


class OutputError(RunError):
    """A result could not be written (disk full, permissions); the message names the path and where
    the in-memory results were rescued to."""

    exit_code = 1


class Interrupted(RunError):
    """SIGINT or SIGTERM stopped training after a checkpoint was written; exit code 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum

    def __reduce__(self) -> tuple:
        # pickled with both arguments: it must survive the trip back from a worker process
        return (type(self), (str(self), self.signum))

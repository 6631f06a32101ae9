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

"""The errors every layer shares: bad input that a person can fix, explained in one line.

:class:`UserError` marks an *expected* failure (a bad params file, a malformed table, a missing
key, an unreachable Hub): the ``sp2dpo`` command and the DVC stage scripts print its message as
one ``sp2dpo: error: ...`` line and exit with status 2, without a traceback. Anything else is a
bug and keeps its traceback. Errors of the upper layers (a rejected API key, bad input data)
subclass it, so the entry helpers in :mod:`sp2dpo.core.entry` need not import them.
"""

from __future__ import annotations


class UserError(Exception):
    """An expected, explained failure: the message names the file, row or field to fix."""


class ConfigError(UserError, ValueError):
    """A params file (or a value in it) that does not match the typed configuration."""


class SchemaViolation(UserError, ValueError):
    """A table that breaks its schema; the message names file, column, rule and first rows."""


class OutputPathError(UserError, ValueError):
    """An output path that cannot be written: under a file, an existing folder, or an input."""


class InputPathError(UserError, ValueError):
    """An input path that is not a readable file (a folder given as a file)."""

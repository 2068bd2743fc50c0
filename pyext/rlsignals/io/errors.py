"""Errors that are the user's to fix, not bugs.

Library code raises ``UserError`` (a ``ValueError``, so ``except ValueError``
keeps working) for a mistake in what it was given: a missing or corrupt file,
a tensor of the wrong shape, an option out of range. The command line prints
such an error as one line and exits 1; ``UsageError`` (a bad flag or flag
value) exits 2. The message names what is wrong, which file/tensor/flag, and
what was expected.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the inputs or options; the message says what, where and what was expected."""

    exit_code = 1


class UsageError(UserError):
    """A bad command-line flag or flag value (exit status 2, like argparse's own errors)."""

    exit_code = 2


class OutputExistsError(UserError):
    """An output path holds something this command did not write (or was not asked to replace)."""

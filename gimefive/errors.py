"""Errors that the CLI turns into one clear line and a non-zero exit status."""


class GimefiveError(Exception):
    """A user-facing problem: bad input, a missing file, an impossible option.

    The message must stand on its own as one line, naming the offending thing
    (a path, a row, an option) and what was expected.
    """

    exit_code = 2


class DataError(GimefiveError):
    """A dataset problem: missing CSV or folder, unreadable image, bad label."""


class StageError(GimefiveError):
    """A pipeline stage failed; the message names the stage and why."""

    exit_code = 3

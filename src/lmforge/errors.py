"""The one exception type for mistakes a user can make (bad recipe, unreadable file, ...).

The CLI prints its message without a stack trace (unless `--debug`); anything else is a bug.
"""


class LmforgeError(Exception):
    """A user-facing error: the message names the file, line or key and what was expected."""

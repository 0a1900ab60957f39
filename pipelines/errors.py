"""The one exception type for mistakes a user can make and fix: shown as one line, exit 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the thing and the fix. The CLI prints it and exits 2."""


#: Exit statuses of the `nst` command.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a tool its reader left

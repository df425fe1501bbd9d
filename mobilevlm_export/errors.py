"""Error types that the CLI maps to exit codes.

``UserError``: bad input (a file, key or flag is wrong). Exit code 2, one line on stderr, no traceback.
``CheckFailed``: the inputs were fine but a check (parity, a tolerance) failed. Exit code 1.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input. The message is one line that names the file, key or flag at fault."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class CheckFailed(Exception):
    """A verification did not meet its tolerance."""

    exit_code = 1

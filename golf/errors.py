"""One error type for everything a user can get wrong: the CLI prints its message as one line and exits non-zero."""

from __future__ import annotations


class GolfError(Exception):
    """A user-facing failure. The message names the file or key at fault and the fix, on one line.

    ``exit_code`` lets callers distinguish "input is bad" (2) from "a constraint failed" (3).
    """

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(" ".join(message.split()))
        if exit_code is not None:
            self.exit_code = exit_code


class ConstraintViolation(GolfError):
    """A run broke a rule (artifact over the cap, too many parameters, eval too slow)."""

    exit_code = 3

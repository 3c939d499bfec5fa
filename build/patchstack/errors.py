"""One error type for everything the user can fix: what failed, where, and what to do."""

from __future__ import annotations

# The exit codes of every command (docs/tool.md, "Exit codes"); each means one thing everywhere.
EXIT_OK = 0  # everything asked for was done, and held
EXIT_FAILED = 1  # something checked does not hold: a patch does not fit, a test failed
EXIT_ERROR = 2  # bad input or a missing prerequisite: the message says what to do
EXIT_INCOMPLETE = 3  # a check asked for was skipped (its source could not be reached); the rest held
EXIT_UNDECIDED = 4  # a patch did not fit after an earlier entry was skipped: it may or may not be at fault
EXIT_NOT_RUN = 6  # a test tier asked for cannot run on this host (5 is pytest's "no tests collected")


class StackError(Exception):
    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  what to do: {self.hint}"


class SourceUnavailable(StackError):
    """An upstream source could not be reached; checks that need it are skipped, not failed."""

    def __init__(self, upstream: str, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.upstream = upstream

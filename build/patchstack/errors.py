"""One error type for everything the user can fix: what failed, where, and what to do."""

from __future__ import annotations


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

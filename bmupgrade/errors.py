"""Exit codes and the error types that map to them.

Every error a user can cause is a `BmError` with a one-line message; the CLI prints it and
exits with its code. Tracebacks are for `--debug` only.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a step failed or the run was aborted
EXIT_USAGE = 2  # bad input or usage; nothing on any node changed
EXIT_PREFLIGHT = 3  # refused before any change (preflight, or another run holds the lock)
EXIT_DEADLINE = 4  # stopped by the maintenance-window deadline
EXIT_HA_OFF = 5  # stopped with HA handling left off (the restore command is printed)
EXIT_INTERRUPTED = 130  # second Ctrl-C


class BmError(Exception):
    """An error with a message meant for a person and the exit code a scheduler acts on."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self)


class UsageError(BmError):
    """Bad input (runbook, variables, flags). Exit 2, nothing on any node changed."""

    exit_code = EXIT_USAGE


class RunbookError(UsageError):
    """One or more validation problems in a runbook, each located at file:line:column."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))

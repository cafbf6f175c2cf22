"""Error kinds. Each is caught at the CLI edge and printed as one line with its fix.

Exit codes: 2 for bad input (the user can fix the input), 1 for a failed operation, 3 for a
performance regression (the operation worked, the result is slower than this host's baseline).
"""

from __future__ import annotations


class Gh200Error(Exception):
    """Base of every expected failure: a message naming the thing, and the fix."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def one_line(self) -> str:
        text = self.message if not self.fix else f"{self.message} (fix: {self.fix})"
        return " ".join(text.split())


class BadInput(Gh200Error):
    """The input is wrong: a profile, a path, a flag. Exit code 2."""

    exit_code = 2


class OperationFailed(Gh200Error):
    """The input was fine but the operation did not succeed. Exit code 1."""

    exit_code = 1


class ProfileError(BadInput):
    """A profile (or stack) fails to load or validate."""


class LockError(BadInput):
    """A pin is missing from images.lock / models.lock where one is required."""


class EngineUnavailable(OperationFailed):
    """No container engine answers and none could be started."""


class Regression(OperationFailed):
    """A new version measured slower than this host's accepted baseline (and was rolled back). Exit 3.

    Its own code so that scripts and the fleet playbook tell "slower, restored" from "broken".
    """

    exit_code = 3

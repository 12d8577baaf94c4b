"""Error types: user errors are reported as one line and exit code 2, mismatches as exit code 1."""

from __future__ import annotations


class Net2NetError(Exception):
    """A problem with the user's input (model, target, width, path): reported without traceback."""

    exit_code = 2


class VerificationError(Net2NetError):
    """The rewritten model does not reproduce the original's outputs; carries the report (and
    the unwritten result, so `--json` can still describe what was tried)."""

    exit_code = 1

    def __init__(self, message: str, report: object | None = None, result: object | None = None) -> None:
        super().__init__(message)
        self.report = report
        self.result = result

"""User errors versus bugs.

A UserError is something the user can fix (a bad flag, a missing file): the CLI prints its one-line
message and exits with code 2, without a traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """An error the user can fix. The message is one line: what, where, and what to do."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class GateFailure(Exception):
    """Raised (or reported) when a built artifact fails a numeric check or an accuracy gate."""

    exit_code = 1

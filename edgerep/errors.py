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


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-blank line of an exception's message, cut at `limit` characters ("" when it has none)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else ""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one line for a user-facing message: its type and the first line of its message."""
    text = first_line(exc, limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

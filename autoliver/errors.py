"""Errors that speak to the user: ``where: what must be rule, got value. how to fix``.

Raise :class:`UserError` for anything the user can fix (bad input, missing folders, wrong flags);
the CLI prints it as one line and exits non-zero. Several problems found together are reported
together with :class:`UserErrors`.
"""
from __future__ import annotations

import difflib


class UserError(Exception):
    """A problem with the user's input, files or options; the message says what and how to fix it."""


class UserErrors(UserError):
    """Several input problems found in one pass, each one line."""

    def __init__(self, problems: list[str], headline: str = "found problems"):
        self.problems = list(problems)
        super().__init__(f"{headline} ({len(self.problems)}):\n" + "\n".join(f"  - {p}" for p in self.problems))


def did_you_mean(value: str, choices) -> str:
    """A ' Did you mean X?' suffix for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def choose(where: str, value: str, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a UserError listing them."""
    choices = list(choices)
    if value in choices:
        return value
    raise UserError(
        f"{where}: must be one of {', '.join(map(str, choices))}, got {value!r}.{did_you_mean(value, choices)}"
    )

"""Progress bars for long work (per case, per iteration), silenced by ``--no-progress``, and the
status lines of long work, through Python's ``logging`` (logger ``"autoliver"``).

Library code never prints: :func:`say` logs at INFO. A program that imports autoliver routes or
silences those lines like any other library's (``logging.getLogger("autoliver")``); without a
handler they are not shown. The ``autoliver`` command installs :func:`log_to_stderr`, plain
lines on stderr, so stdout stays machine-readable.
"""
from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm

_ENABLED = os.environ.get("AUTOLIVER_NO_PROGRESS", "0") != "1"


def set_enabled(enabled: bool) -> None:
    global _ENABLED
    _ENABLED = enabled


def enabled() -> bool:
    return _ENABLED


def bar(iterable=None, *, total=None, desc: str = "", unit: str = "it", leave: bool = True, disable: bool = False,
        **kw):
    """A tqdm bar on stderr, or a silent pass-through when progress is disabled."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=disable or not _ENABLED,
                file=sys.stderr, dynamic_ncols=True, **kw)


log = logging.getLogger("autoliver")
log.addHandler(logging.NullHandler())  # a library's default: nothing shown until the application asks


def say(message: str) -> None:
    """A status line for the user: logged at INFO on the ``autoliver`` logger."""
    log.info(message)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged (a test's capture, a notebook's
    redirect), not the stream that existed when the handler was made."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # logging.StreamHandler.__init__ assigns it; the property ignores it
        pass


def log_to_stderr(level: int = logging.INFO) -> None:
    """The command line's logging: every status line of the ``autoliver`` logger, plain, on stderr
    (idempotent; the lines are not passed on to the root logger, so they appear once)."""
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
    log.setLevel(level)
    log.propagate = False

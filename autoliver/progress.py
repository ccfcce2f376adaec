"""Progress bars for long work (per case, per iteration), silenced by ``--no-progress``."""
from __future__ import annotations

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


def say(message: str) -> None:
    """A status line for the user (on stderr, so stdout stays machine-readable)."""
    print(message, file=sys.stderr, flush=True)

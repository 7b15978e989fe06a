"""Signals a long-running command handles itself for a while (Ctrl-C, SIGTERM)."""

from __future__ import annotations

import signal
from contextlib import contextmanager


@contextmanager
def handled(signums, handler):
    """handler for the signals during the block, then the handlers from before. Outside
    the main thread nothing is set: signals cannot reach it anyway."""
    previous = {}
    try:
        for signum in signums:
            previous[signum] = signal.signal(signum, handler)
    except ValueError:
        pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            if old is not None:  # None: set from outside Python, which Python cannot restore
                signal.signal(signum, old)

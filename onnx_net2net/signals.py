"""Stop signals as exceptions: SIGTERM unwinds like Ctrl-C (temporary files are removed on the
way out), and a few system calls that must not be split (creating a temporary file and
recording it, renaming a model and its data file into place) finish before a signal acts."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the program was; it exits with 128 + `signum`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def exit_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C (SIGINT), 143 for SIGTERM: the shell's 128 + signal number."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def name(exc: KeyboardInterrupt) -> str:
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def raising() -> Iterator[None]:
    """Within this block SIGINT and SIGTERM raise Interrupted (main thread only)."""
    previous: dict[int, object] = {}
    try:
        if _main_thread():
            for signum in STOP_SIGNALS:
                previous[signum] = signal.signal(signum, raise_interrupted)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then act on the first one as its own
    handler would have (main thread only: signals are handled there)."""
    pending: list[int] = []
    previous: dict[int, object] = {}
    try:
        if _main_thread():
            for signum in STOP_SIGNALS:
                previous[signum] = signal.signal(signum, lambda number, frame: pending.append(number))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if pending:
            handler = previous[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(pending[0])

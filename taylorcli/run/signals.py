"""SIGTERM and SIGUSR1 (SLURM's preemption and time-limit signals): recorded, never fatal.

The `taylorcli` command installs the handlers before it imports anything heavy, so a signal
in the first seconds is not lost; the training loop checks `asked()` at step boundaries,
checkpoints and exits 75. A library caller gets the handlers only while a run trains.
"""

from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_asked: list[int] = []
_installed: dict[int, object] = {}


def _record(signum, frame) -> None:
    _asked.append(signum)


def install() -> bool:
    """Record SIGTERM/SIGUSR1 from now on (main thread only); True if this call installed them.

    Also puts the handler back where something else replaced it since (JAX's distributed
    runtime installs a preemption notifier of its own on SIGTERM).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    first = not _installed
    for sig in STOP_SIGNALS:
        previous = signal.signal(sig, _record)
        if first:
            _installed[sig] = previous
    return first


def uninstall() -> None:
    """Put back the handlers that were there before `install`."""
    for sig, handler in _installed.items():
        signal.signal(sig, handler)
    _installed.clear()


def asked() -> bool:
    """Whether a stop signal has arrived."""
    return bool(_asked)


def forget() -> None:
    """Clear recorded signals (a new run in the same process starts afresh)."""
    _asked.clear()


@contextlib.contextmanager
def watching():
    """Record stop signals for the duration (if the command line has not already)."""
    mine = install()
    try:
        yield
    finally:
        if mine:
            uninstall()
            forget()


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C ignored while a checkpoint is finalized, so a second one cannot cut it short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)

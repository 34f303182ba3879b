"""SIGTERM, SIGUSR1 (SLURM's preemption and time-limit signals) and SIGINT: every command stops
promptly with its documented exit code, and a training run checkpoints first.

The `taylorcli` command installs the handlers before it imports anything heavy, so a signal
in the first seconds is not lost. The handlers only record the signal (an exception raised at
an arbitrary point inside JAX's tracing can leave its runtime unable to shut down cleanly).
While a run trains (`watching`), the loop checks `asked()` at step boundaries, checkpoints and
exits 75 (Ctrl-C: 130).

Everything else is the watchdog's, a thread the command line starts, woken by the signal
itself (signal.set_wakeup_fd) even while the main thread is blocked in native code (XLA
compiling a large step): outside training (a report, a dry run, a plan) it ends the process at
once; in a run that is not yet at a point where it answers by itself (loading, building, the
first compilation) it gives the main thread a few seconds, then ends the process. It says so
in one line and exits with the documented code. Files are only ever replaced atomically, so
nothing is left half-written. A library caller (`taylorcli.train` in a notebook) gets the
recording handlers while a run trains, and no watchdog.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
STOPPED, INTERRUPTED = 75, 130  # the exit codes the command line documents
GRACE_S = 3.0  # how long a starting run's main thread has to end the command itself

_asked: list[int] = []
_installed: dict[int, object] = {}
_state = {"polled": 0, "responsive": False, "handled": False, "watchdog": False}


def _record(signum, frame) -> None:
    _asked.append(signum)


def _interrupt(signum, frame) -> None:
    # A training loop turns Ctrl-C into a checkpoint-safe exit (KeyboardInterrupt, as Python's
    # own handler); anywhere else the watchdog ends the command.
    if _state["polled"]:
        raise KeyboardInterrupt
    _asked.append(signum)


def install(watchdog: bool = False) -> bool:
    """Handle SIGTERM/SIGUSR1 from now on (main thread only); True if this call installed them.

    Also puts the handler back where something else replaced it since (JAX's distributed
    runtime installs a preemption notifier of its own on SIGTERM). `watchdog`: the command
    line's, see the module's docstring.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    first = not _installed
    for sig in STOP_SIGNALS:
        previous = signal.signal(sig, _record)
        if first:
            _installed[sig] = previous
    if watchdog and not _state["watchdog"]:
        _start_watchdog()
        previous = signal.signal(signal.SIGINT, _interrupt)
        _installed.setdefault(signal.SIGINT, previous)
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
    _state["handled"] = False


def handled() -> None:
    """The main thread is ending the command because of a signal: the watchdog stays quiet."""
    _state["handled"] = True


@contextlib.contextmanager
def watching():
    """While a run trains: stop signals are recorded for the loop to act on (the handlers are
    installed if the command line has not already)."""
    mine = install()
    _state["polled"] += 1
    try:
        yield
    finally:
        _state["polled"] -= 1
        _state["responsive"] = False
        if mine:
            uninstall()
            forget()


def responsive(on: bool = True) -> None:
    """The training loop is (or no longer is) at a point where it answers a signal itself."""
    _state["responsive"] = on


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C ignored while a checkpoint is finalized, so a second one cannot cut it short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    was = _state["responsive"]
    _state["responsive"] = True
    try:
        yield
    finally:
        _state["responsive"] = was
        signal.signal(signal.SIGINT, old)


def _start_watchdog() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except ValueError:  # not the main thread of the main interpreter
        os.close(read_end)
        os.close(write_end)
        return
    _state["watchdog"] = True
    threading.Thread(target=_watch, args=(read_end,), daemon=True,
                     name="taylorcli-signals").start()


def _watch(read_end: int) -> None:
    watched = {int(s) for s in (*STOP_SIGNALS, signal.SIGINT)}
    while True:
        try:
            data = os.read(read_end, 64)
        except OSError:
            return
        for signum in data:
            if signum not in watched:
                continue
            if _state["polled"]:
                time.sleep(GRACE_S)  # a starting run ends itself where it can
            if _state["handled"] or (_state["polled"] and _state["responsive"]):
                continue
            interrupted = signum == signal.SIGINT
            what = "interrupted" if interrupted else \
                f"signal {signal.Signals(signum).name} received while taylorcli was busy " \
                f"(compiling, loading or writing); nothing half-written; rerun the same command"
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.write(f"taylorcli: stopped: {what}\n")
                sys.stderr.flush()
            os._exit(INTERRUPTED if interrupted else STOPPED)

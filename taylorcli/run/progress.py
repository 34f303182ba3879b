"""Training progress: a live rich display on a terminal, plain low-volume lines elsewhere.

The loop tells a progress object when the run starts, when its first step is done (compiling
included: rates count from there), after every step, at every evaluation, and at the end. A
step's statistics are handed over as a function that returns them only once the device has
computed them, so showing progress never makes the loop wait for the device.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table


def _fmt(v) -> str:
    return "-" if v is None or v != v else f"{v:.4f}"


class PlainProgress:
    """One line per evaluation point, plus a heartbeat line at most every `every_s` seconds."""

    def __init__(self, stream=None, every_s: float = 60.0):
        self.stream = stream or sys.stdout
        self.every_s = every_s

    def start(self, total_steps: int, steps_per_epoch: int, names, first_step: int = 0) -> None:
        """Called once before the first step."""
        self._begin(total_steps, steps_per_epoch, names, first_step)
        self._print(f"training {', '.join(self.names)}: {total_steps - first_step} steps "
                    f"({steps_per_epoch} per epoch); compiling the lockstep step ...")

    def compiled(self, step: int, startup_s: float) -> None:
        """Called once the first step is done: rates are counted from here."""
        self._compiled(step)
        self._print(f"first step done {startup_s:.1f} s after the start (data, model and "
                    f"compilation); training")

    def step(self, step: int, latest: Callable[[], dict | None]) -> None:
        """Called after each optimizer step; `latest()` gives that step's minibatch losses, or
        None while the device is still computing them (it never waits)."""
        self.recent.append((step, latest))
        now = time.monotonic()
        if now - self.last >= self.every_s:
            found = self._newest_ready()
            if found is None:
                return
            self.last = now
            at, values = found
            losses = " ".join(f"{n}={_fmt(v[0])}" for n, v in values.items())
            self._print(f"step {at}/{self.total} epoch {at / self.spe:.2f} "
                        f"{self._rate(step, now)} loss {losses}")

    def evaluation(self, step: int, epoch: float, rows: list[dict]) -> None:
        """Called at each evaluation point with its metrics rows."""
        self.last = time.monotonic()
        parts = " | ".join(f"{r['model']} acc {_fmt(r['test_acc'])} cos_f {_fmt(r['cos_func'])}"
                           for r in rows)
        self._print(f"eval epoch {epoch:g} step {step}: {parts}")

    def finish(self, message: str) -> None:
        """Called once at the end."""
        self._print(message)

    def close(self) -> None:
        """Called however the run ends (also on errors and signals)."""

    def _begin(self, total_steps: int, steps_per_epoch: int, names, first_step: int) -> None:
        self.total, self.spe, self.names = total_steps, steps_per_epoch, list(names)
        self.last = time.monotonic()
        self.t0, self.first = None, first_step
        self.recent: deque = deque(maxlen=16)

    def _compiled(self, step: int) -> None:
        self.t0, self.first = time.monotonic(), step

    def _newest_ready(self):
        # The step just dispatched is rarely done yet; an earlier one usually is.
        for at, latest in reversed(self.recent):
            values = latest()
            if values is not None:
                return at, values
        return None

    def _rate(self, step: int, now: float) -> str:
        if self.t0 is None or step <= self.first or now <= self.t0:
            return "compiling"
        return f"{(step - self.first) / (now - self.t0):.2f} steps/s"

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class RichProgress(PlainProgress):
    """A live table: epoch, step rate, and each model's latest minibatch loss and evaluation."""

    def __init__(self, console: Console, refresh_s: float = 0.5):
        super().__init__(stream=None)
        self.console = console
        self.refresh_s = refresh_s

    def start(self, total_steps: int, steps_per_epoch: int, names, first_step: int = 0) -> None:
        """Open the live display."""
        self._begin(total_steps, steps_per_epoch, names, first_step)
        self.loss: dict = {}
        self.evals: dict = {}
        self.step_now = first_step
        self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
        self.live.start(refresh=True)

    def compiled(self, step: int, startup_s: float) -> None:
        """Start counting the rate."""
        self._compiled(step)
        self.startup_s = startup_s

    def step(self, step: int, latest: Callable[[], dict | None]) -> None:
        """Refresh the running losses a few times a second."""
        self.recent.append((step, latest))
        now = time.monotonic()
        if now - self.last >= self.refresh_s:
            self.last = now
            self.step_now = step
            found = self._newest_ready()
            if found is not None:
                self.loss = {n: float(v[0]) for n, v in found[1].items()}
            self.live.update(self._table(), refresh=True)

    def evaluation(self, step: int, epoch: float, rows: list[dict]) -> None:
        """Show the newest evaluation of every model."""
        self.step_now = step
        self.evals = {r["model"]: r for r in rows}
        self.live.update(self._table(), refresh=True)

    def finish(self, message: str) -> None:
        """Close the display and print the closing line."""
        self.close()
        self.console.print(message, highlight=False)

    def close(self) -> None:
        """Show the last state and stop the live display (it hides the cursor while it runs)."""
        live = getattr(self, "live", None)
        if live is not None and live.is_started:
            live.update(self._table(), refresh=True)
            live.stop()

    def _table(self) -> Table:
        now = time.monotonic()
        title = (f"step {self.step_now}/{self.total}  epoch {self.step_now / self.spe:.2f}  "
                 f"{self._rate(self.step_now, now)}")
        table = Table(title=title, title_justify="left")
        for col in ("model", "batch loss", "train loss", "train acc", "test loss", "test acc",
                    "cos_param", "cos_func"):
            table.add_column(col, justify="right" if col != "model" else "left")
        for n in self.names:
            e = self.evals.get(n, {})
            table.add_row(n, _fmt(self.loss.get(n)), _fmt(e.get("train_loss")),
                          _fmt(e.get("train_acc")), _fmt(e.get("test_loss")),
                          _fmt(e.get("test_acc")), _fmt(e.get("cos_param")),
                          _fmt(e.get("cos_func")))
        return table


def make_progress(console: Console | None = None):
    """Rich live display on a terminal, plain lines otherwise (CI, SLURM logs, notebooks)."""
    console = console or Console()
    return RichProgress(console) if console.is_terminal else PlainProgress()


class QuietProgress:
    """Progress of a process other than 0 (or of a caller who wants none): silent."""

    def start(self, *args, **kwargs) -> None:
        """Nothing."""

    def compiled(self, step: int, startup_s: float) -> None:
        """Nothing."""

    def step(self, step: int, latest) -> None:
        """Nothing (and no device fetch)."""

    def evaluation(self, *args) -> None:
        """Nothing."""

    def finish(self, message: str) -> None:
        """Nothing."""

    def close(self) -> None:
        """Nothing."""

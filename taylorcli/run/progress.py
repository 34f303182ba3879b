"""Training progress: a live rich display on a terminal, plain low-volume lines elsewhere."""

from __future__ import annotations

import sys
import time
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
        self._print(f"training {', '.join(self.names)}: {total_steps} steps "
                    f"({steps_per_epoch} per epoch)")

    def step(self, step: int, latest: Callable[[], dict]) -> None:
        """Called after each optimizer step; `latest()` gives the newest minibatch losses, or
        None while the device is still computing them (it never waits)."""
        now = time.monotonic()
        if now - self.last >= self.every_s:
            values = latest()
            if values is None:  # still computing: the next step will tell
                return
            self.last = now
            losses = " ".join(f"{n}={_fmt(v[0])}" for n, v in values.items())
            self._print(f"step {step}/{self.total} epoch {step / self.spe:.2f} "
                        f"{self._rate(step, now):.2f} steps/s loss {losses}")

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
        self.t0 = self.last = time.monotonic()
        self.first = first_step

    def _rate(self, step: int, now: float) -> float:
        return (step - self.first) / max(now - self.t0, 1e-9)

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class RichProgress(PlainProgress):
    """A live table: epoch, step rate, and each model's latest loss and evaluation."""

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
        self.live.start()

    def step(self, step: int, latest: Callable[[], dict]) -> None:
        """Refresh the running losses a few times a second."""
        now = time.monotonic()
        if now - self.last >= self.refresh_s:
            self.last = now
            self.step_now = step
            values = latest()
            if values is not None:  # None: the device is still computing; keep the last ones
                self.loss = {n: float(v[0]) for n, v in values.items()}
            self.live.update(self._table())

    def evaluation(self, step: int, epoch: float, rows: list[dict]) -> None:
        """Show the newest evaluation of every model."""
        self.step_now = step
        self.evals = {r["model"]: r for r in rows}
        self.live.update(self._table())

    def finish(self, message: str) -> None:
        """Close the display and print the closing line."""
        self.close()
        self.console.print(message)

    def close(self) -> None:
        """Show the last state and stop the live display (it hides the cursor while it runs)."""
        live = getattr(self, "live", None)
        if live is not None and live.is_started:
            live.update(self._table())
            live.stop()

    def _table(self) -> Table:
        now = time.monotonic()
        title = (f"step {self.step_now}/{self.total}  epoch {self.step_now / self.spe:.2f}  "
                 f"{self._rate(self.step_now, now):.2f} steps/s")
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
    """Rich live display on a terminal, plain lines otherwise (CI, SLURM logs)."""
    console = console or Console()
    return RichProgress(console) if console.is_terminal else PlainProgress()


class QuietProgress:
    """Progress of a process other than 0 (or of a caller who wants none): silent."""

    def start(self, *args, **kwargs) -> None:
        """Nothing."""

    def step(self, step: int, latest) -> None:
        """Nothing (and no device fetch)."""

    def evaluation(self, *args) -> None:
        """Nothing."""

    def finish(self, message: str) -> None:
        """Nothing."""

    def close(self) -> None:
        """Nothing."""

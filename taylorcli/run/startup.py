"""Where a run's time goes before and around its steps: the start-up phases (from the command's
launch, or the API call, to the first step done) and the time spent evaluating, recorded in
run.json (`timings`) and read by `python -m taylorcli.bench`."""

from __future__ import annotations

import time

_launched: list[float] = []


def mark_launch() -> None:
    """The command line started now (before its imports): start-up is counted from here."""
    _launched[:] = [time.monotonic()]


class StartupClock:
    """Named phases of a run's start, each the seconds since the previous mark."""

    def __init__(self):
        now = time.monotonic()
        # The launch belongs to the process's first run only: the later runs of one process
        # (`paper local`, a notebook) count from their own call, not from the launch.
        launched = _launched.pop() if _launched else None
        self.t0 = launched if launched is not None else now
        self.phases: dict[str, float] = {}
        if launched is not None:
            self.phases["imports"] = now - self.t0
        self.last = now
        self.evaluating = 0.0  # seconds spent in evaluations (and the analyses beside them)

    def mark(self, phase: str) -> None:
        """The phase just ended."""
        now = time.monotonic()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last
        self.last = now

    def since_launch(self) -> float:
        """Seconds from the launch (or the call) until now."""
        return time.monotonic() - self.t0

    def record(self, start_step: int, steps: int, training_s: float) -> dict:
        """This process's timings, as run.json keeps them (one entry per start or resume)."""
        return {"start_step": start_step, "steps": steps,
                "phases_s": {k: round(v, 3) for k, v in self.phases.items()},
                "to_first_step_s": round(sum(self.phases.values()), 3),
                "training_s": round(training_s, 3), "evaluating_s": round(self.evaluating, 3)}

"""`taylorcli paper --status`: per run done / partial (last epoch) / missing / failed (its last
log line), and which tables and figures the report can already show."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import RunDirError
from ..run.reading import load_run
from .plan import Plan, PlanRun

DONE, PARTIAL, MISSING, FAILED = "done", "partial", "missing", "failed"


def log_path(out: Path, run: PlanRun) -> Path:
    """Where the run's output goes (the SLURM task's, or --local's record of it)."""
    return out / "logs" / f"{run.slug}.log"


def failed_path(out: Path, run: PlanRun) -> Path:
    """Present while the run's last attempt ended in failure (holds its exit code)."""
    return out / "logs" / f"{run.slug}.failed"


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


@dataclass
class RunStatus:
    """One run's state in the folder."""

    run: PlanRun
    state: str
    detail: str = ""
    last_epoch: float | None = None


def run_status(out: Path, run: PlanRun) -> RunStatus:
    """done, partial (its last epoch), missing, or failed (its last log line)."""
    folder = out / run.folder
    state, detail, last = MISSING, "", None
    if (folder / "metrics.csv").is_file():
        try:
            r = load_run(folder)
            last = r.last_epoch
            state = DONE if r.complete else PARTIAL
            if state == PARTIAL:
                detail = f"epoch {last:g} of {r.config.train.epochs}"
        except RunDirError as e:
            detail = str(e)
    if failed_path(out, run).is_file():  # its last attempt failed (a success removes it)
        line = _last_line(log_path(out, run)) or f"exit {_last_line(failed_path(out, run))}"
        return RunStatus(run, FAILED, line, last)
    return RunStatus(run, state, detail, last)


def statuses(plan: Plan, out: Path) -> list[RunStatus]:
    """Every run's status, in plan order."""
    return [run_status(out, r) for r in plan.runs]


def status_table(states: list[RunStatus]) -> pd.DataFrame:
    """One row per run: run, kind, state, detail."""
    return pd.DataFrame([{"run": s.run.name, "kind": s.run.kind, "state": s.state,
                          "detail": s.detail} for s in states],
                        columns=["run", "kind", "state", "detail"])


def report_readiness(states: list[RunStatus]) -> pd.DataFrame:
    """Per table or figure the runs feed: ready (all done), partial (some shown as far as they
    got) or waiting (none yet)."""
    items: dict[str, list[RunStatus]] = {}
    for s in states:
        for item in s.run.feeds:
            items.setdefault(item, []).append(s)
    rows = []
    for item, group in items.items():
        done = sum(s.state == DONE for s in group)
        shown = sum(s.state in (DONE, PARTIAL) for s in group)
        state = "ready" if done == len(group) else "partial" if shown else "waiting"
        rows.append({"report": item, "state": state, "runs_done": f"{done} of {len(group)}",
                     "runs_shown": f"{shown} of {len(group)}"})
    return pd.DataFrame(rows, columns=["report", "state", "runs_done", "runs_shown"])

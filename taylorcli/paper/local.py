"""`taylorcli paper --local`: the plan's runs here, one after another, then the report.

Resumable: a finished run is skipped, a partial one continues from its newest checkpoint (the
runs' own resume). A run that fails is recorded (logs/RUN.failed, its last line in
logs/RUN.log) and the others still run; a stop signal or Ctrl-C ends the whole plan (rerun it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import FullDiverged, InputError
from .folder import claim_folder, folder, lock, write_file
from .plan import Plan, PlanRun, plan_csv
from .report import PaperReport, write_report
from .status import DONE, failed_path, log_path, run_status


@dataclass
class LocalResult:
    """What --local did: runs trained (with their wall seconds), skipped, failed; the report."""

    trained: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    report: PaperReport | None = None
    wall_s: float = 0.0


def _log(out: Path, run: PlanRun, line: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    folder(out).append_line(log_path(out, run).relative_to(out), f"{stamp} {line}")


def run_one(plan: Plan, run: PlanRun, out: Path, progress=None) -> None:
    """Train one run of the plan into its folder (continuing it if it is partial)."""
    if run.kind == "train":
        from ..analyses.training import train_recipe

        train_recipe(run.recipe, out / run.folder, progress, resume=True, source=run.recipe_arg)
        return
    from ..spawn.sweep import spawn

    parent = plan.by_name()[run.recipe_arg]
    if run_status(out, parent).state != DONE:
        raise InputError(f"{run.name}: its parent run {parent.name} is not finished")
    spawn(out / parent.folder, [run.at], list(run.orders), children=run.children,
          out=out / run.sweep, progress=progress, resume=True, source=str(out / parent.folder))


def run_local(plan: Plan, out: Path, progress=None, say=print) -> LocalResult:
    """Run every unfinished run of the plan here, in order, and write the report."""
    claim_folder(plan, out)
    with lock(out):
        return _run_all(plan, out, progress, say)


def _run_all(plan: Plan, out: Path, progress, say) -> LocalResult:
    write_file(out, "plan.csv", plan_csv(plan))
    result = LocalResult()
    start = time.perf_counter()
    for i, run in enumerate(plan.runs):
        if run_status(out, run).state == DONE:
            result.skipped.append(run.name)
            say(f"[{i + 1}/{len(plan.runs)}] {run.name}: finished, skipped")
            continue
        say(f"[{i + 1}/{len(plan.runs)}] {run.name}: {run.shell(out)}")
        _log(out, run, f"started: {run.shell(out)}")
        t0 = time.perf_counter()
        try:
            run_one(plan, run, out, progress)
        except (InputError, FullDiverged) as e:
            line = f"taylorcli: error: {e}"
            _log(out, run, line)
            write_file(out, failed_path(out, run).relative_to(out).as_posix(),
                       "2\n" if isinstance(e, InputError) else "3\n")
            result.failed[run.name] = str(e)
            say(f"[{i + 1}/{len(plan.runs)}] {run.name}: failed: {e}")
            continue
        seconds = time.perf_counter() - t0
        folder(out).remove(failed_path(out, run).relative_to(out))  # an earlier attempt's record
        _log(out, run, f"done in {seconds:.1f} s")
        result.trained[run.name] = seconds
        say(f"[{i + 1}/{len(plan.runs)}] {run.name}: done in {seconds:.1f} s")
    result.report = write_report(plan, out)
    result.wall_s = time.perf_counter() - start
    return result
